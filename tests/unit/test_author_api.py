"""The author kit: lazy re-exports from ``jalki_core``, package-relative resources, ProbeUnavailableError."""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import jalki_core
from jalki_core.errors import ProbeError, ProbeUnavailableError
from jalki_core.plugins import JalkiPlugins, PluginSource
from jalki_core.probe import Probe, ProbeResource
from jalki_core.registry import PluginIdentity
from jalki_core.testing import probe_event_schemas

KIT = ["AttachRung", "BoundEmitterRegistry", "BoundKbRegistry", "BoundProbeRegistry", "EmitterRegistry", "Event",
       "EventContext", "KbRegistry", "Probe", "ProbeError", "ProbeRegistry", "ProbeResource", "ProbeUnavailableError",
       "RecordLayout", "errno_name", "hookimpl", "kernel_comm"]

HEAVY = ("jalki_core.session", "jalki_core._libbpf", "jalki_core.loader", "jalki_core.plugins", "jalki_core.kb")


def modules_after(code: str) -> set[str]:
    """The jalki_core modules a fresh interpreter has imported after running ``code``."""
    script = f"import sys\n{code}\nprint('\\n'.join(m for m in sys.modules if m.startswith('jalki_core')))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return set(result.stdout.split())


def test_importing_jalki_core_stays_cheap() -> None:
    loaded = modules_after("import jalki_core")
    assert not [name for name in loaded if name.startswith(HEAVY)], loaded
    assert "jalki_core.probe" not in loaded and "jalki_core.events" not in loaded


def test_a_kit_name_imports_only_its_module() -> None:
    loaded = modules_after("from jalki_core import Probe, EventContext, BoundProbeRegistry")
    assert {"jalki_core.probe", "jalki_core.events", "jalki_core.registry"} <= loaded
    assert not [name for name in loaded if name.startswith(HEAVY)], loaded


@pytest.mark.parametrize("name", KIT)
def test_every_kit_name_is_exported_and_is_the_defining_object(name: str) -> None:
    assert name in jalki_core.__all__ and name in dir(jalki_core)
    home = jalki_core._AUTHOR_KIT.get(name, "jalki_core.hookspecs")  # hookimpl is defined with the hook specs
    assert getattr(jalki_core, name) is getattr(importlib.import_module(home), name)


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Probes'"):
        jalki_core.Probes  # noqa: B018


def test_every_lazy_name_is_visible_to_type_checkers() -> None:
    """mypy sees a lazy name only through the ``if TYPE_CHECKING:`` imports of ``jalki_core/__init__.py``."""
    tree = ast.parse(Path(jalki_core.__file__).read_text())
    typed = {alias.asname or alias.name
             for node in tree.body if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING"
             for child in node.body if isinstance(child, ast.ImportFrom) for alias in child.names}
    assert set(jalki_core._AUTHOR_KIT) <= typed


@pytest.fixture
def author_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """``authordemo`` (a package whose data folders have no ``__init__.py``) and a top-level ``authordemo_ext``."""
    package = tmp_path / "authordemo"
    (package / "bpf").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "bpf" / "demo.bpf.o").write_bytes(b"\x7fELF demo object")
    (package / "events.schema.json").write_text(json.dumps({"title": "authordemo events"}))
    (package / "probes.py").write_text(textwrap.dedent('''
        from jalki_core import AttachRung, Event, EventContext, Probe, RecordLayout

        class DemoProbe(Probe):
            name = "author_demo"
            observes = "tracepoint/demo/demo"
            event_types = ("kernel.demo.event",)
            bpf_object = "bpf/demo.bpf.o"
            event_schema = "events.schema.json"
            layout = RecordLayout("demo_event", "<Q", ("ts_ns",), 8)
            ladder = (AttachRung("tracepoint", ("tp_demo",)),)

            def decode(self, batch: bytes, ctx: EventContext) -> list[Event]:
                return []
    '''))
    (tmp_path / "ext.bpf.o").write_bytes(b"\x7fELF ext object")
    (tmp_path / "authordemo_ext.py").write_text(textwrap.dedent('''
        from authordemo.probes import DemoProbe

        class InheritingProbe(DemoProbe):
            name = "author_inherits"

        class OwnObjectProbe(DemoProbe):
            name = "author_own"
            bpf_object = "ext.bpf.o"
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in ("authordemo_ext", "authordemo.probes", "authordemo"):
        sys.modules.pop(name, None)


def test_a_plain_path_resolves_against_the_probes_package(author_package: Path) -> None:
    from authordemo.probes import DemoProbe  # type: ignore[import-not-found]

    probe = DemoProbe()
    assert ProbeResource.of(probe, "bpf_object") == ProbeResource("authordemo", "bpf/demo.bpf.o")
    assert ProbeResource.of(probe, "bpf_object").read_bytes() == b"\x7fELF demo object"
    assert probe_event_schemas([probe]) == [{"title": "authordemo events"}]


def test_a_path_resolves_against_the_class_that_set_it(author_package: Path) -> None:
    import authordemo_ext  # type: ignore[import-not-found]

    inheriting, own = authordemo_ext.InheritingProbe(), authordemo_ext.OwnObjectProbe()
    assert ProbeResource.of(inheriting, "bpf_object").read_bytes() == b"\x7fELF demo object"
    assert ProbeResource.of(own, "bpf_object") == ProbeResource("authordemo_ext", "ext.bpf.o")
    assert ProbeResource.of(own, "bpf_object").read_bytes() == b"\x7fELF ext object"  # top-level module: its folder
    assert ProbeResource.of(own, "event_schema") == ProbeResource("authordemo", "events.schema.json")


def test_a_probe_resource_still_names_package_and_file() -> None:
    resource = ProbeResource("jalki_memory", "bpf/oom_kill.bpf.o")
    assert resource.read_bytes()[:4] == b"\x7fELF"
    with pytest.raises(ProbeError, match=r"nope\.bpf\.o is missing from package jalki_memory") as caught:
        ProbeResource("jalki_memory", "bpf/nope.bpf.o").read_bytes()
    assert caught.value.hint is not None and "reinstall" in caught.value.hint


@pytest.mark.parametrize("path", ["/etc/passwd", "../outside.bpf.o", "bpf/../../x.bpf.o", ""])
def test_a_path_outside_the_package_is_refused_when_the_plugin_registers(author_package: Path, path: str) -> None:
    from authordemo.probes import DemoProbe  # type: ignore[import-not-found]

    bad = type("BadProbe", (DemoProbe,), {"name": "author_bad", "bpf_object": path, "__module__": "authordemo.probes"})
    with pytest.raises(ProbeError, match="bpf_object"):
        ProbeResource.of(bad(), "bpf_object")
    module = type(sys)("badplugin")
    module.jalki_register_probes = lambda registry: registry.register(bad())  # type: ignore[attr-defined]
    plugins = JalkiPlugins([PluginSource(PluginIdentity("bad", "jalki-bad", "1"), lambda: module)],
                           load_defaults=False)
    [broken] = plugins.broken
    assert "bpf_object" in broken.reason and "jalki-bad 1" in broken.one_line()


class RaisingProbe(Probe):
    """The memory plugin's oom_kill object, with hooks that say the machine lacks something."""

    name = "author_unavailable"
    observes = "tracepoint/oom/mark_victim"
    event_types = ("kernel.memory.oom_kill",)
    raise_in = "unavailable_reason"

    def decode(self, batch: bytes, ctx: jalki_core.EventContext) -> list[jalki_core.Event]:
        return []

    def unavailable_reason(self) -> str | None:
        if self.raise_in == "unavailable_reason":
            raise ProbeUnavailableError("no demo device")
        return None

    def rodata(self) -> dict[str, int | bytes]:
        if self.raise_in == "rodata":
            raise ProbeUnavailableError("no demo device", hint="attach a demo device")
        return {}


@pytest.mark.parametrize("hook", ["unavailable_reason", "rodata"])
def test_a_probe_raising_unavailable_is_reported_like_a_returned_reason(hook: str) -> None:
    from jalki_memory.probes import OomKillProbe

    from jalki_core.loader import ProbeLoader

    oom_object = ProbeResource.of(OomKillProbe(), "bpf_object")  # resolved in jalki_memory, not here
    probe = type("Raising", (RaisingProbe,), {"raise_in": hook, "bpf_object": oom_object,
                                              "layout": OomKillProbe.layout, "ladder": OomKillProbe.ladder})()
    with pytest.raises(ProbeUnavailableError) as caught:
        ProbeLoader().load(probe)
    assert caught.value.message == "probe author_unavailable is unavailable here: no demo device"
    expected_hint = "attach a demo device" if hook == "rodata" else "nothing is faked"
    assert caught.value.hint is not None and caught.value.hint.startswith(expected_hint)
