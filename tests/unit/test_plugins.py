"""Plugin manager: discovery, isolation of broken plugins, duplicate names, listing."""

from __future__ import annotations

import types
from typing import Any

import pytest

from jalki_core import hookimpl
from jalki_core.errors import UnknownPluginError
from jalki_core.events import Event, EventContext
from jalki_core.plugins import JalkiPlugins, PluginSource
from jalki_core.probe import AttachRung, Probe, ProbeResource, RecordLayout
from jalki_core.registry import PluginIdentity

LAYOUT = RecordLayout("demo_event", "<Q", ("ts_ns",), 8)


def make_probe(probe_name: str) -> Probe:
    class DemoProbe(Probe):
        name = probe_name
        observes = "tracepoint/demo/demo"
        event_types = ("kernel.demo.event",)
        bpf_object = ProbeResource("demo", "demo.bpf.o")
        layout = LAYOUT
        ladder = (AttachRung("tracepoint", ("tp_demo",)),)

        def decode(self, batch: bytes, ctx: EventContext) -> list[Event]:
            return []

    return DemoProbe()


def module_with(name: str, **functions: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    for attr, function in functions.items():
        setattr(module, attr, function)
    return module


def source(plugin: str, dist: str, version: str, load: Any) -> PluginSource:
    return PluginSource(PluginIdentity(plugin, dist, version), load)


def probes_plugin(*names: str) -> types.ModuleType:
    @hookimpl
    def jalki_register_probes(registry: Any) -> None:
        for probe_name in names:
            registry.register(make_probe(probe_name))

    return module_with("probes_plugin", jalki_register_probes=jalki_register_probes)


def failing_import() -> types.ModuleType:
    raise ImportError("No module named 'missing_dependency'")


def test_good_plugin_registers_probes_and_defaults_register_emitters() -> None:
    plugins = JalkiPlugins([source("demo", "jalki-demo", "1.2.3", lambda: probes_plugin("demo_a", "demo_b"))])
    assert [entry.probe.name for entry in plugins.probes_for(["demo"])] == ["demo_a", "demo_b"]
    assert {entry.name for entry in plugins.emitters} == {"stdout", "file"}
    assert plugins.broken == []
    assert plugins.plugin_names() == ["demo"]


def test_broken_import_is_one_line_naming_distribution_and_others_still_load() -> None:
    plugins = JalkiPlugins([
        source("broken", "jalki-broken", "0.9.1", failing_import),
        source("demo", "jalki-demo", "1.0", lambda: probes_plugin("demo_a")),
    ])
    assert len(plugins.broken) == 1
    line = plugins.broken[0].one_line()
    assert "jalki-broken 0.9.1" in line and "import failed" in line and "missing_dependency" in line
    assert "\n" not in line
    assert [entry.probe.name for entry in plugins.probes_for(["demo"])] == ["demo_a"]
    with pytest.raises(UnknownPluginError, match="installed but broken"):
        plugins.probes_for(["broken"])


def test_duplicate_probe_names_both_distributions() -> None:
    plugins = JalkiPlugins([
        source("first", "jalki-first", "1.0", lambda: probes_plugin("same")),
        source("second", "jalki-second", "2.0", lambda: probes_plugin("same")),
    ])
    assert len(plugins.broken) == 1
    reason = plugins.broken[0].one_line()
    assert "jalki-second 2.0" in reason and "jalki-first 1.0" in reason and "'same'" in reason
    assert plugins.probes_for(["first"])[0].owner.distribution == "jalki-first"


def test_unknown_hook_is_rejected() -> None:
    @hookimpl
    def jalki_register_things(registry: Any) -> None:  # not in hookspecs
        pass

    plugins = JalkiPlugins([
        source("odd", "jalki-odd", "0.1", lambda: module_with("odd", jalki_register_things=jalki_register_things)),
        source("demo", "jalki-demo", "1.0", lambda: probes_plugin("demo_a")),
    ])
    assert len(plugins.broken) == 1
    assert "unknown hook" in plugins.broken[0].reason and "jalki_register_things" in plugins.broken[0].reason
    assert plugins.probes_for(["demo"])


def test_hook_with_wrong_arguments_is_rejected() -> None:
    @hookimpl
    def jalki_register_probes(wrong_name: Any) -> None:
        pass

    plugins = JalkiPlugins([source("bad", "jalki-bad", "3.0", lambda: module_with(
        "bad", jalki_register_probes=jalki_register_probes))])
    assert len(plugins.broken) == 1
    assert "invalid hook implementation" in plugins.broken[0].reason
    assert "jalki-bad 3.0" in plugins.broken[0].one_line()


def test_hook_that_raises_is_isolated() -> None:
    @hookimpl
    def jalki_register_probes(registry: Any) -> None:
        raise RuntimeError("boom")

    plugins = JalkiPlugins([
        source("raises", "jalki-raises", "1.0", lambda: module_with("r", jalki_register_probes=jalki_register_probes)),
        source("demo", "jalki-demo", "1.0", lambda: probes_plugin("demo_a")),
    ])
    assert [b.identity.plugin for b in plugins.broken] == ["raises"]
    assert "RuntimeError: boom" in plugins.broken[0].reason


def test_unknown_plugin_lists_installed_ones() -> None:
    plugins = JalkiPlugins([source("demo", "jalki-demo", "1.0", lambda: probes_plugin("demo_a"))])
    with pytest.raises(UnknownPluginError) as info:
        plugins.probes_for(["nope"])
    assert "unknown plugin 'nope'" in info.value.message and "demo" in info.value.message


def test_single_probe_name_selects_one_probe() -> None:
    plugins = JalkiPlugins([source("demo", "jalki-demo", "1.0", lambda: probes_plugin("demo_a", "demo_b"))])
    assert [e.probe.name for e in plugins.probes_for(["demo_b"])] == ["demo_b"]


def test_disable_and_allow_list(monkeypatch: pytest.MonkeyPatch) -> None:
    sources = [
        source("one", "jalki-one", "1.0", lambda: probes_plugin("p1")),
        source("two", "jalki-two", "1.0", lambda: probes_plugin("p2")),
    ]
    monkeypatch.setenv("JALKI_DISABLE_PLUGINS", "one")
    assert JalkiPlugins(sources).plugin_names() == ["two"]
    monkeypatch.delenv("JALKI_DISABLE_PLUGINS")
    monkeypatch.setenv("JALKI_PLUGINS", "one")
    assert JalkiPlugins(sources).plugin_names() == ["one"]


def test_describe_lists_distributions_versions_probes_emitters() -> None:
    plugins = JalkiPlugins([
        source("demo", "jalki-demo", "1.0", lambda: probes_plugin("demo_a")),
        source("broken", "jalki-broken", "0.1", failing_import),
    ])
    rows = {row["plugin"]: row for row in plugins.describe()}
    assert rows["core"]["distribution"] == "jalki" and rows["core"]["emitters"] == ["stdout", "file"]
    assert rows["demo"]["version"] == "1.0" and rows["demo"]["probes"][0]["name"] == "demo_a"
    assert rows["demo"]["probes"][0]["ladder"] == ["tracepoint"]
    assert rows["broken"]["status"] == "broken"


def test_installed_tcp_plugin_is_discovered_through_entry_points() -> None:
    plugins = JalkiPlugins()
    assert "tcp" in plugins.plugin_names(), plugins.broken
    names = {entry.probe.name for entry in plugins.probes_for(["tcp"])}
    assert names == {"tcp_connect", "tcp_close", "tcp_retransmit_skb", "tcp_reset", "tcp_rtt"}
    owner = plugins.probes_for(["tcp"])[0].owner
    assert owner.distribution == "jalki-tcp"


def test_plugin_failing_half_way_registers_nothing() -> None:
    @hookimpl
    def jalki_register_probes(registry: Any) -> None:
        registry.register(make_probe("half_a"))
        raise RuntimeError("second probe import failed")

    plugins = JalkiPlugins([
        source("half", "jalki-half", "1.0", lambda: module_with("half", jalki_register_probes=jalki_register_probes)),
    ])
    assert plugins.probes.get("half_a") is None
    assert "half" not in plugins.loaded
    assert [b.identity.plugin for b in plugins.broken] == ["half"]
    with pytest.raises(UnknownPluginError, match="installed but broken"):
        plugins.probes_for(["half"])


def test_duplicate_rejects_the_whole_second_plugin() -> None:
    plugins = JalkiPlugins([
        source("first", "jalki-first", "1.0", lambda: probes_plugin("same")),
        source("second", "jalki-second", "2.0", lambda: probes_plugin("own", "same")),
    ])
    assert plugins.probes.get("own") is None
    assert "second" not in plugins.loaded
