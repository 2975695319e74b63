"""The core's ``Probe.prepare(maps)`` hook (added for jalki-cpu): when the loader calls it, and what failures mean.

A fake BPF object stands in for libbpf and records the order of operations,
so this runs without root; tests/kernel/test_cpu_probes.py shows the hook
filling real PERF_EVENT_ARRAY maps.
"""

from __future__ import annotations

import errno
from collections.abc import Mapping
from typing import Any, ClassVar

import pytest

import jalki_core._libbpf as libbpf
from jalki_core.errors import BpfMapError, ProbeError, ProbeUnavailableError
from jalki_core.events import Event, EventContext
from jalki_core.loader import ProbeLoader
from jalki_core.probe import AttachRung, Probe, ProbeResource, RecordLayout


class FakeMap:
    def __init__(self, journal: list[str], name: str) -> None:
        self.journal, self.name, self.max_entries = journal, name, 0

    def update(self, key: bytes, value: bytes) -> None:
        self.journal.append(f"update {self.name}")


class FakeProgram:
    def __init__(self, journal: list[str], name: str) -> None:
        self.journal, self.name, self.autoload = journal, name, True

    def attach(self) -> FakeLink:
        self.journal.append(f"attach {self.name}")
        return FakeLink()


class FakeLink:
    def destroy(self) -> None:
        pass


class FakeObject:
    """Just enough of ``BpfObject`` for ``ProbeLoader``."""

    journal: ClassVar[list[str]] = []
    instances: ClassVar[list[FakeObject]] = []

    def __init__(self) -> None:
        self.journal.append("open")
        self.instances.append(self)
        self.programs = {name: FakeProgram(self.journal, name) for name in ("best", "fallback")}
        self.maps = {name: FakeMap(self.journal, name) for name in ("events", "jalki_config", "counters")}

    @classmethod
    def open_memory(cls, data: bytes, name: str) -> FakeObject:
        return cls()

    def btf_struct_size(self, name: str) -> int | None:
        return None

    def btf_struct_members(self, name: str) -> list[Any] | None:
        return None

    def set_rodata(self, var: str, value: int | bytes) -> None:
        pass

    def load(self) -> None:
        self.journal.append("load")

    def close(self) -> None:
        self.journal.append("close")


class HookProbe(Probe):
    name = "hook_probe"
    observes = "nothing"
    event_types = ("kernel.test.hook",)
    bpf_object = ProbeResource("jalki_core", "__init__.py")  # any readable package file: the object is faked
    layout = RecordLayout("hook_event", "<Q", ("ts_ns",), 8)
    ladder = (AttachRung("tp_btf", ("best",)), AttachRung("tracepoint", ("fallback",)))

    def __init__(self, fail_on: dict[str, Exception] | None = None) -> None:
        self.fail_on = fail_on or {}
        self.seen: list[tuple[str, ...]] = []

    def decode(self, batch: bytes, ctx: EventContext) -> list[Event]:
        return []

    def prepare(self, maps: Mapping[str, Any]) -> None:
        FakeObject.journal.append("prepare")
        self.seen.append(tuple(sorted(maps)))
        programs = FakeObject.instances[-1].programs
        autoloaded = next(name for name, program in programs.items() if program.autoload)
        if autoloaded in self.fail_on:
            raise self.fail_on[autoloaded]
        maps["counters"].update(b"k", b"v")


@pytest.fixture(autouse=True)
def fake_libbpf(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeObject.journal = []
    FakeObject.instances = []
    monkeypatch.setattr(libbpf, "BpfObject", FakeObject)


def test_prepare_runs_after_load_and_config_and_before_attach() -> None:
    probe = HookProbe()
    loaded = ProbeLoader().load(probe)
    assert loaded.rung.name == "tp_btf"
    assert FakeObject.journal == ["open", "load", "update jalki_config", "prepare", "update counters", "attach best"]
    assert probe.seen == [("counters", "events", "jalki_config")]


def test_a_libbpf_error_in_prepare_fails_the_rung_and_the_next_is_tried() -> None:
    probe = HookProbe({"best": BpfMapError("bpf_map_update_elem", errno.EBADF, obj="hook_probe")})
    loaded = ProbeLoader().load(probe)
    assert loaded.rung.name == "tracepoint"
    [failure] = loaded.failures
    assert (failure.rung, failure.stage, failure.errno_name) == ("tp_btf", "prepare", "EBADF")
    assert FakeObject.journal.count("close") == 1 and "attach best" not in FakeObject.journal


def test_a_probe_error_in_prepare_fails_the_probe_and_frees_the_object() -> None:
    unavailable = ProbeUnavailableError("probe hook_probe is unavailable here: no counters")
    with pytest.raises(ProbeError, match="no counters"):
        ProbeLoader().load(HookProbe({"best": unavailable}))
    assert FakeObject.journal[-1] == "close" and FakeObject.journal.count("open") == 1


def test_the_default_prepare_does_nothing() -> None:
    class Plain(HookProbe):
        prepare = Probe.prepare

    loaded = ProbeLoader().load(Plain())
    assert loaded.rung.name == "tp_btf"
    assert FakeObject.journal == ["open", "load", "update jalki_config", "attach best"]
