"""The enricher stage (jalki_core.enrich): error isolation, held events, the namespace scope, the hook."""

from __future__ import annotations

import types
from typing import Any

import pytest

from jalki_core import hookimpl
from jalki_core.cli.common import build_enrich
from jalki_core.enrich import EnricherOptions, EnrichStage
from jalki_core.errors import UsageError
from jalki_core.plugins import JalkiPlugins, PluginSource
from jalki_core.registry import PluginIdentity


class Tagging:
    """Adds ``k8s`` naming the namespace in each event's ``ns``; holds events with ``hold``; can fail."""

    def __init__(self) -> None:
        self.fail_on: int | None = None
        self.held: list[dict[str, Any]] = []
        self.started = self.closed = False

    def start(self) -> None:
        self.started = True

    def enrich(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out, self.held = self.held, []
        for event in events:
            if event.get("hold"):
                self.held.append(event)  # kept before failing: must not go out twice
                continue
            if event.get("n") == self.fail_on:
                raise RuntimeError("boom")
            event["k8s"] = {"k8s.namespace.name": event["ns"]}
            out.append(event)
        return out

    def flush(self) -> list[dict[str, Any]]:
        out, self.held = self.held, []
        return out

    def close(self) -> list[dict[str, Any]]:
        self.closed = True
        return self.flush()

    @property
    def ready(self) -> bool:
        return True

    def status(self) -> dict[str, Any]:
        return {"state": "ok", "counters": {"hit": 1}}


def batch(*namespaces: str, start: int = 0) -> list[dict[str, Any]]:
    return [{"n": start + i, "ns": ns} for i, ns in enumerate(namespaces)]


def test_an_enricher_error_costs_the_batch_its_enrichment_never_its_events() -> None:
    enricher = Tagging()
    stage = EnrichStage([("tag", enricher)])
    enricher.fail_on = 1
    first = batch("a", "b", "c")
    out = stage.process(first)
    assert [e["n"] for e in out] == [0, 1, 2]  # every event goes on
    assert "k8s" not in out[1] and "k8s" not in out[2]
    info = stage.status()["enrichers"]["tag"]
    assert info["errors"] == 1 and info["events_unenriched"] == 3 and info["last_error"] == "RuntimeError: boom"
    enricher.fail_on = None
    out = stage.process(batch("d", start=10))  # the next batch is enriched again
    assert [e["k8s"]["k8s.namespace.name"] for e in out] == ["d"]
    assert stage.status()["enrichers"]["tag"]["errors"] == 1


def test_events_held_by_an_enricher_that_then_raised_go_out_once() -> None:
    enricher = Tagging()
    stage = EnrichStage([("tag", enricher)])
    enricher.fail_on = 1
    first = [{"n": 0, "ns": "a", "hold": True}, {"n": 1, "ns": "b"}]
    out = stage.process(first)
    assert [e["n"] for e in out] == [0, 1]  # unenriched, at once
    enricher.fail_on = None
    out = stage.process(batch("c", start=5))  # the enricher lets event 0 out now: not a second time
    assert [e["n"] for e in out] == [5]
    assert stage.close() == [] and enricher.closed


def test_held_events_come_out_of_empty_batches_and_close_in_order_through_later_enrichers() -> None:
    first, second = Tagging(), Tagging()
    stage = EnrichStage([("first", first), ("second", second)])
    stage.start()
    assert first.started and second.started
    out = stage.process([{"n": 0, "ns": "a", "hold": True}, {"n": 1, "ns": "b"}])
    assert [e["n"] for e in out] == [1]
    del first.held[0]["hold"]  # its pod became known
    assert [e["n"] for e in stage.process([])] == [0]  # the session's wake-up lets it out
    stage.process([{"n": 2, "ns": "c", "hold": True}])
    closed = stage.close()
    assert [e["n"] for e in closed] == [2] and first.closed and second.closed
    assert stage.status()["enrichers"]["second"]["errors"] == 0


def test_namespace_scope_is_counted_apart_from_loss() -> None:
    stage = EnrichStage([("tag", Tagging())], namespaces=["payments"])
    events = stage.process(batch("payments", "kube-system", "payments"))
    events.append({"n": 9})  # a host process: no namespace, out of scope
    assert stage.scope_mask(events) == [0, 2]
    status = stage.status()
    assert status["out_of_scope"] == 2 and status["namespaces"] == ["payments"]
    assert EnrichStage([("tag", Tagging())]).scope_mask(events) is None


def _plugins_with(module: types.ModuleType) -> JalkiPlugins:
    source = PluginSource(PluginIdentity("tagger", "jalki-tagger", "1.0"), lambda: module)
    return JalkiPlugins([source])


def test_the_hook_registers_an_enricher_and_build_enrich_refuses_unknown_names() -> None:
    made: list[EnricherOptions] = []
    module = types.ModuleType("tagger_plugin")

    def factory(options: EnricherOptions) -> Tagging:
        made.append(options)
        return Tagging()

    @hookimpl
    def jalki_register_enrichers(registry: Any) -> None:
        registry.register("tag", factory, "tags events")

    module.jalki_register_enrichers = jalki_register_enrichers  # type: ignore[attr-defined]
    plugins = _plugins_with(module)
    assert not plugins.broken and [e.name for e in plugins.enrichers] == ["tag"]
    assert plugins.loaded["tagger"].enrichers == ["tag"]
    stage = build_enrich(plugins, ["tag"], "node-1", ["payments,billing"])
    assert stage is not None and stage.names == ["tag"] and made == [EnricherOptions(node_name="node-1")]
    assert stage.namespaces == {"payments", "billing"}
    with pytest.raises(UsageError, match=r"^unknown enricher 'nope'; available enrichers: .*tag"):
        build_enrich(plugins, ["tag,nope"], None, None)
    with pytest.raises(UsageError, match="--namespace only applies with --enrich"):
        build_enrich(plugins, None, None, ["payments"])
    with pytest.raises(UsageError, match="--node-name must be a Kubernetes node name"):
        build_enrich(plugins, ["tag"], "Bad Name", None)
    assert build_enrich(plugins, None, None, None) is None


def test_a_duplicate_enricher_name_breaks_the_later_plugin_naming_both() -> None:
    def module(name: str) -> types.ModuleType:
        mod = types.ModuleType(name)

        @hookimpl
        def jalki_register_enrichers(registry: Any) -> None:
            registry.register("tag", lambda options: Tagging())

        mod.jalki_register_enrichers = jalki_register_enrichers  # type: ignore[attr-defined]
        return mod

    first, second = module("a"), module("b")
    plugins = JalkiPlugins([PluginSource(PluginIdentity("a", "dist-a", "1"), lambda: first),
                            PluginSource(PluginIdentity("b", "dist-b", "1"), lambda: second)])
    [broken] = plugins.broken
    assert broken.identity.plugin == "b" and "dist-a" in broken.reason and "dist-b" in broken.reason
