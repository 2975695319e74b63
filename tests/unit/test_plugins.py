"""Plugin manager: discovery, isolation of broken plugins, duplicate names, listing."""

from __future__ import annotations

import functools
import importlib
import json
import os
import subprocess
import sys
import textwrap
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jalki_core import hookimpl
from jalki_core.errors import UnknownPluginError
from jalki_core.events import Event, EventContext
from jalki_core.kb import default_kb
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


# --- one owner for plugin loading: probes, emitters and KB documents in one pass ---

KB_ENTRY = {
    "id": "countdemo_probe", "summary": "A demo probe.", "tracepoint": "demo:demo_event", "implemented_by": None,
    "attach": ["tracepoint"], "event_type": "kernel.demo.event", "event_rate": "low",
    "answers": ["Is the countdemo widget failing?"], "keywords": ["countdemo"],
    "fields": [{"name": "error.code", "type": "errno", "meaning": "why it failed", "important": True}],
    "use_when": "Always.", "not_when": "Never.", "combine_with": [],
    "interpretations": [{"id": "countdemo_refused", "condition": {"field": "error.code", "eq": "ECONNREFUSED"},
                         "conclusion": "Refused.", "severity": "error", "action": "Start the service."}],
}
KB_DOCUMENT = {"kb_version": 1, "layer": "demo", "entries": [KB_ENTRY]}


def kb_plugin(name: str, register: Any) -> types.ModuleType:
    @hookimpl
    def jalki_register_probes(registry: Any) -> None:
        registry.register(make_probe(f"{name}_probe"))

    @hookimpl
    def jalki_register_kb(registry: Any) -> None:
        register(registry)

    return module_with(name, jalki_register_probes=jalki_register_probes, jalki_register_kb=jalki_register_kb)


def test_one_pass_collects_probes_emitters_and_kb_documents() -> None:
    plugins = JalkiPlugins([
        source("zeta", "jalki-zeta", "1.0", lambda: kb_plugin("zeta", lambda r: r.register_document({"z": 1}, "z"))),
        source("alpha", "jalki-alpha", "1.0", lambda: kb_plugin("alpha", lambda r: r.register_document({"a": 1}))),
    ])
    assert {entry.probe.name for entry in plugins.probes} == {"zeta_probe", "alpha_probe"}
    assert {entry.name for entry in plugins.emitters} == {"stdout", "file"}
    # by plugin name, whatever the load order: the KB's "first definition wins" does not depend on it
    assert [(d.origin, d.data) for d in plugins.kb_documents()] == [
        ("plugin alpha (jalki-alpha 1.0): document", {"a": 1}), ("plugin zeta (jalki-zeta 1.0): z", {"z": 1})]


def test_a_raising_kb_hook_is_a_kb_problem_and_the_plugin_still_loads() -> None:
    def raising(registry: Any) -> None:
        raise ValueError("bad kb")

    plugins = JalkiPlugins([source("kbbug", "jalki-kbbug", "1.0", lambda: kb_plugin("kbbug", raising))])
    assert plugins.broken == [] and plugins.probes.get("kbbug_probe") is not None
    [document] = plugins.kb_documents()
    assert document.origin == "plugin kbbug (jalki-kbbug 1.0)"
    assert document.error == "jalki_register_kb raised ValueError: bad kb"


def test_a_broken_plugin_contributes_no_kb_documents() -> None:
    module = kb_plugin("twice", lambda r: r.register_document({"x": 1}))
    plugins = JalkiPlugins([source("first", "jalki-first", "1.0", lambda: probes_plugin("twice_probe")),
                            source("twice", "jalki-twice", "1.0", lambda: module)])
    assert [b.identity.plugin for b in plugins.broken] == ["twice"]
    assert plugins.kb_documents() == []


@pytest.fixture
def kb_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """``kbdemo``: a plugin package whose ``kb/`` folder has no ``__init__.py``."""
    package = tmp_path / "kbdemo"
    (package / "kb").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "kb" / "demo.json").write_text(json.dumps(KB_DOCUMENT))
    (package / "plugin.py").write_text(
        "from jalki_core import BoundKbRegistry, hookimpl\n\n\n"
        "@hookimpl\n"
        "def jalki_register_kb(registry: BoundKbRegistry) -> None:\n"
        "    registry.register_file('kb/demo.json')\n"
        "    registry.register_file('kb/absent.json')\n"
        "    registry.register_file('../kbdemo/kb/demo.json')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield package
    for name in ("kbdemo.plugin", "kbdemo"):
        sys.modules.pop(name, None)


def test_a_kb_file_is_named_relative_to_the_plugins_package(kb_package: Path) -> None:
    plugins = JalkiPlugins([source("kbdemo", "jalki-kbdemo", "1.0",
                                   functools.partial(importlib.import_module, "kbdemo.plugin"))])
    origin = "plugin kbdemo (jalki-kbdemo 1.0)"
    good, absent, outside = plugins.kb_documents()
    assert (good.origin, good.text) == (f"{origin}: kb/demo.json", (kb_package / "kb" / "demo.json").read_text())
    assert absent.origin == f"{origin}: kb/absent.json" and (absent.error or "").startswith("cannot read:")
    assert outside.origin == f"{origin}: ../kbdemo/kb/demo.json" and "without '..'" in (outside.error or "")
    kb = default_kb(plugins=plugins)  # the documents of these plugins, not of the installed ones
    assert kb.entries["countdemo_probe"].source == f"{origin}: kb/demo.json"
    assert "tcp_connect" not in kb.entries
    assert {p.source for p in kb.problems if p.source.startswith(origin)} == {absent.origin, outside.origin}


def test_a_relative_kb_file_of_a_module_without_package_is_a_problem() -> None:
    plugins = JalkiPlugins([source("mem", "jalki-mem", "1.0",
                                   lambda: kb_plugin("mem", lambda r: r.register_file("kb/x.json")))])
    [document] = plugins.kb_documents()
    assert document.error is not None and "no package" in document.error


def test_ask_loads_each_plugin_once(tmp_path: Path) -> None:
    """``ask()`` used to load every plugin twice: once for the KB, once for the probes."""
    site = tmp_path / "site"
    (site / "countdemo").mkdir(parents=True)
    (site / "countdemo" / "demo.json").write_text(json.dumps(KB_DOCUMENT))
    (site / "countdemo" / "__init__.py").write_text(textwrap.dedent('''
        import os
        from jalki_core import hookimpl

        def _count(what):
            with open(os.environ["COUNTDEMO_LOG"], "a") as log:
                log.write(what + "\\n")

        _count("import")

        @hookimpl
        def jalki_register_probes(registry):
            _count("probes")

        @hookimpl
        def jalki_register_kb(registry):
            _count("kb")
            registry.register_file("demo.json")
    '''))
    info = site / "jalki_countdemo-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: jalki-countdemo\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[jalki]\ncountdemo = countdemo\n")
    log = tmp_path / "calls.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
           "JALKI_PLUGINS": "countdemo", "COUNTDEMO_LOG": str(log)}
    script = "import jalki_core; result = jalki_core.ask('is the countdemo widget failing', seconds=1); " \
             "print(result.mode, [m.entry.id for m in result.matches])"
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    mode, matches = result.stdout.split(" ", 1)
    assert mode == "kb_only" and matches.startswith("['countdemo_probe'"), result.stderr
    assert log.read_text().split() == ["import", "probes", "kb"]
