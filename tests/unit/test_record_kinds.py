"""Probes with several record kinds: the contract checks and the session's dispatch of runs to decoders."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import pytest

from jalki_core.errors import ProbeError
from jalki_core.events import Event, EventContext
from jalki_core.probe import AttachRung, Probe, RecordLayout, check_probe_contract
from jalki_core.session import ProbeRunStats, decode_runs

SMALL = RecordLayout.with_header("small_rec", "II", ("kind", "tid"), 48)
LARGE = RecordLayout.with_header("large_rec", "IIQ", ("kind", "tid", "value"), 56)
NO_KIND = RecordLayout.with_header("no_kind_rec", "II", ("tid", "cpu"), 48)
KIND_LATER = RecordLayout.with_header("late_rec", "II", ("tid", "kind"), 48)
SHORT_KIND = RecordLayout.with_header("short_rec", "HHI", ("kind", "port", "tid"), 48)


class Multi(Probe):
    name = "multi"
    observes = "test"
    event_types = ("t.small", "t.large")
    bpf_object = "multi.bpf.o"
    layouts = MappingProxyType({1: SMALL, 7: LARGE})
    ladder = (AttachRung("tracepoint", ("prog",)),)

    def __init__(self, fail_kind: int | None = None) -> None:
        self.fail_kind = fail_kind
        self.calls: list[tuple[int, int]] = []

    def decode_records(self, kind: int, batch: bytes, ctx: EventContext) -> list[Event]:
        layout = self.layouts[kind]
        self.calls.append((kind, len(batch) // layout.size))
        if kind == self.fail_kind:
            raise ValueError("decoder bug")
        return [{"type": "t.small" if kind == 1 else "t.large", "tid": record[6]}
                for record in layout.struct.iter_unpack(batch)]


class Single(Probe):
    name = "single"
    observes = "test"
    event_types = ("t.one",)
    bpf_object = "single.bpf.o"
    layout = NO_KIND
    ladder = (AttachRung("tracepoint", ("prog",)),)

    def decode(self, batch: bytes, ctx: EventContext) -> list[Event]:
        return [{"type": "t.one", "tid": record[5]} for record in self.layout.struct.iter_unpack(batch)]


def ctx() -> EventContext:
    return EventContext("multi", "tracepoint", clock_offset_ns=0, run_id="r")


def small(tid: int) -> bytes:
    return SMALL.pack(kind=1, tid=tid, comm=b"x")


def large(tid: int) -> bytes:
    return LARGE.pack(kind=7, tid=tid, value=tid * 10, comm=b"x")


def test_runs_go_to_decode_records_in_arrival_order() -> None:
    probe, stats = Multi(), ProbeRunStats("multi")
    runs = [(1, small(1) + small(2)), (7, large(3)), (1, small(4))]
    count, events = decode_runs(probe, runs, dict(probe.layouts), ctx(), stats)
    assert count == 4 and stats.records == 4 and stats.decode_errors == 0
    assert probe.calls == [(1, 2), (7, 1), (1, 1)]
    assert [(e["type"], e["tid"]) for e in events] == [("t.small", 1), ("t.small", 2), ("t.large", 3),
                                                       ("t.small", 4)]


def test_a_failing_decoder_costs_only_its_own_runs() -> None:
    probe, stats = Multi(fail_kind=7), ProbeRunStats("multi")
    runs = [(1, small(1)), (7, large(2) + large(3)), (1, small(4))]
    count, events = decode_runs(probe, runs, dict(probe.layouts), ctx(), stats)
    assert count == 4 and stats.records == 4
    assert stats.decode_errors == 2 and stats.drops_by_cause["decode_error"] == 2
    assert [e["tid"] for e in events] == [1, 4]


def test_record_kinds_of_one_layout_and_of_several() -> None:
    assert Single().record_kinds() == ({0: NO_KIND}, 0)
    assert Multi().record_kinds() == ({1: SMALL, 7: LARGE}, 40)
    check_probe_contract(Single())
    check_probe_contract(Multi())


def test_decode_records_of_a_one_layout_probe_is_its_decode() -> None:
    record = NO_KIND.pack(tid=5, cpu=1, comm=b"x")
    assert Single().decode_records(0, record, ctx()) == [{"type": "t.one", "tid": 5}]


@pytest.mark.parametrize(("layouts", "message"), [
    ({1: SMALL, 2: NO_KIND}, "record layout no_kind_rec has no field 'kind' (4 bytes)"),
    ({1: SMALL, 2: SHORT_KIND}, "record layout short_rec has a 2-byte field 'kind'"),
    ({1: SMALL, 2: KIND_LATER}, "field 'kind' lies at different offsets (small_rec at 40, late_rec at 44)"),
    ({-1: SMALL}, "record kind -1 (small_rec) is not a uint32"),
    ({i: SMALL for i in range(17)}, "17 record layouts, at most 16"),
])
def test_malformed_layouts_are_refused_with_the_reason(layouts: Mapping[int, RecordLayout], message: str) -> None:
    probe = type("Bad", (Multi,), {"layouts": layouts})()
    with pytest.raises(ProbeError) as info:
        check_probe_contract(probe)
    assert message in info.value.message and info.value.message.startswith("probe multi: ")
    assert info.value.hint and "__u32 kind" in info.value.hint


def test_a_probe_must_implement_the_decoder_its_layouts_need() -> None:
    no_decode_records: Any = type("NoDecodeRecords", (Probe,), {
        k: getattr(Multi, k) for k in ("name", "observes", "event_types", "bpf_object", "layouts", "ladder")})
    with pytest.raises(ProbeError, match="declares layouts but implements no decode_records"):
        check_probe_contract(no_decode_records())
    no_decode: Any = type("NoDecode", (Probe,), {
        k: getattr(Single, k) for k in ("name", "observes", "event_types", "bpf_object", "layout", "ladder")})
    with pytest.raises(ProbeError, match="implements no decode"):
        check_probe_contract(no_decode())
    with pytest.raises(NotImplementedError):
        no_decode_records().decode_records(1, small(1), ctx())


@pytest.mark.parametrize("interval", [0, -1.0])
def test_tick_interval_must_be_positive(interval: float) -> None:
    probe = type("Ticking", (Single,), {"tick_interval_s": interval})()
    with pytest.raises(ProbeError, match="tick_interval_s must be a positive"):
        check_probe_contract(probe)


def test_tick_defaults_to_no_events() -> None:
    assert Single.tick_interval_s is None
    assert Single().tick({}, ctx()) == []


def test_unknown_kind_drops_show_only_for_probes_with_several_kinds() -> None:
    assert "unknown_kind" not in ProbeRunStats("single").drops_by_cause
    stats = ProbeRunStats("multi", unknown_kinds=3)
    assert stats.drops_by_cause["unknown_kind"] == 3 and stats.dropped == 3
