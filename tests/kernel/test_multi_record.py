"""A probe with two record kinds on one ring and a periodic tick reading its maps, loaded for real.

tests/kernel/bpf/multi_record.bpf.c writes a 48-byte record (kind 1) on
getppid, an 80-byte record (kind 7) carrying getpgid's argument on getpgid,
and a record of an undeclared kind (99) on getsid, all filtered to this
process; getppid also counts into a per-CPU array the probe's ``tick``
reads. The session must hand each run of same-kind records to
``decode_records`` in arrival order, count undeclared kinds as
``unknown_kind`` drops, and deliver tick events while it runs.
"""

from __future__ import annotations

import os
import struct
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from jalki_core.errors import LayoutMismatchError
from jalki_core.events import Event, EventContext
from jalki_core.loader import ProbeLoader, ProbeOptions
from jalki_core.probe import AttachRung, Probe, RecordLayout, check_probe_contract
from jalki_core.session import TraceSession
from jalki_core.testing import FileResource

pytestmark = pytest.mark.kernel

SOURCE = Path(__file__).with_name("bpf") / "multi_record.bpf.c"
SMALL = RecordLayout.with_header("multi_small", "II", ("kind", "tid"), 48)
LARGE = RecordLayout.with_header("multi_large", "II4Q", ("kind", "tid", "v1", "v2", "v3", "v4"), 80)
# __u64 values[4] read as eight __u32: the right size, the wrong element width
LARGE_HALVED = RecordLayout.with_header("multi_large", "II8I", ("kind", "tid", *(f"w{i}" for i in range(8))), 80)
KIND_SMALL, KIND_LARGE = 1, 7
DEADLINE_S = 60.0  # generous: the loop stops as soon as what it waits for is seen


@pytest.fixture(scope="module")
def multi_object(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from jalki_core.bpf_build import compile_source

    return compile_source(SOURCE, tmp_path_factory.mktemp("bpf") / "multi_record.bpf.o")


def getppid_calls(maps: Mapping[str, Any]) -> int:
    """The per-CPU getppid counter, summed over CPUs."""
    return sum(struct.unpack("<Q", value)[0] for value in maps["calls"].lookup_per_cpu(b"\0\0\0\0"))


def make_probe(path: Path, large: RecordLayout = LARGE) -> Probe:
    class MultiRecordProbe(Probe):
        name = "multi_record"
        observes = "getppid(2), getpgid(2), getsid(2)"
        event_types = ("kernel.test.small", "kernel.test.large", "kernel.test.tick", "kernel.test.final")
        bpf_object = FileResource(path)
        ring_buffer_bytes = 1 << 16
        layouts = MappingProxyType({KIND_SMALL: SMALL, KIND_LARGE: large})
        tick_interval_s = 0.05
        ladder = (AttachRung("tracepoint", ("multi_getppid", "multi_getpgid", "multi_getsid")),)

        def decode_records(self, kind: int, batch: bytes, ctx: EventContext) -> list[Event]:
            layout = self.layouts[kind]
            events = []
            for record in layout.struct.iter_unpack(batch):
                values = dict(zip(layout.fields, record, strict=True))
                event = ctx.from_header("kernel.test.small" if kind == KIND_SMALL else "kernel.test.large", record)
                event["data"] = {name: value for name, value in values.items()
                                 if name in ("kind", "tid", "v1", "v2", "v3", "v4")}
                events.append(event)
            return events

        def tick(self, maps: Mapping[str, Any], ctx: EventContext) -> list[Event]:
            event = ctx.new_event("kernel.test.tick", time.monotonic_ns())
            event["data"] = {"calls": getppid_calls(maps)}
            return [event]

        def final_events(self, maps: Mapping[str, Any], ctx: EventContext) -> list[Event]:
            event = ctx.new_event("kernel.test.final", time.monotonic_ns())
            event["data"] = {"calls": getppid_calls(maps)}
            return [event]

    probe = MultiRecordProbe()
    check_probe_contract(probe)
    return probe


def test_two_record_kinds_decode_in_order_and_ticks_arrive_while_the_session_runs(multi_object: Path) -> None:
    events: list[dict[str, Any]] = []
    session = TraceSession([make_probe(multi_object)], options=ProbeOptions(filter_pid=os.getpid(), self_tgid=0),
                           strict=True, on_events=events.extend)
    session.start()
    try:
        assert session.attached == ["multi_record"]
        tid, pid = threading.get_native_id(), os.getpid()
        for _ in range(5):
            os.getppid()
            os.getpgid(pid)
            os.getsid(0)

        def mine(kind: str) -> list[dict[str, Any]]:
            return [e for e in events if e["type"] == kind and e["data"]["tid"] == tid]

        def ticks_after_calls() -> list[dict[str, Any]]:
            return [e for e in events if e["type"] == "kernel.test.tick" and e["data"]["calls"] >= 5]

        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline and not (
                len(mine("kernel.test.small")) >= 5 and len(mine("kernel.test.large")) >= 5
                and len(ticks_after_calls()) >= 3):
            session.run(0.2)
        ticks_while_running = [e for e in events if e["type"] == "kernel.test.tick"]
    finally:
        summary = session.stop()

    small, large = mine("kernel.test.small"), mine("kernel.test.large")
    assert len(small) == 5 and len(large) == 5, [e["type"] for e in events]
    # Arrival order survives the split into runs: small, large, small, large…
    decoded = [e["type"] for e in events if e["type"] in ("kernel.test.small", "kernel.test.large")
               and e["data"]["tid"] == tid]
    assert decoded == ["kernel.test.small", "kernel.test.large"] * 5
    assert all(e["data"]["kind"] == KIND_SMALL and e["process_data"]["pid"] == pid for e in small)
    assert all(e["data"]["kind"] == KIND_LARGE and e["process_data"]["pid"] == pid for e in large)
    assert all([e["data"][f"v{i}"] for i in (1, 2, 3, 4)] == [pid, 2 * pid, 3 * pid, 4 * pid] for e in large)

    assert len(ticks_after_calls()) >= 3 and len(ticks_while_running) >= 3
    counts = [e["data"]["calls"] for e in ticks_while_running]
    assert counts == sorted(counts)  # a counter read again and again never goes back
    # The final read of the counter agrees with the records: one per getppid of this process.
    final = [e for e in events if e["type"] == "kernel.test.final"]
    all_small = [e for e in events if e["type"] == "kernel.test.small"]
    assert len(final) == 1 and final[0]["data"]["calls"] == len(all_small) >= 5

    stats = summary.probes[0]
    assert stats.rung == "tracepoint" and stats.ticks >= 3
    assert stats.records == len(all_small) + len([e for e in events if e["type"] == "kernel.test.large"])
    assert stats.drops_by_cause["unknown_kind"] >= 5  # the getsid records: counted, not decoded
    assert stats.drops_by_cause["size_mismatch"] == 0 and stats.drops_by_cause["decode_error"] == 0
    assert stats.derive_errors == 0
    assert stats.as_dict()["drops"]["unknown_kind"] == stats.unknown_kinds


def test_a_failing_tick_is_counted_and_the_drain_goes_on(multi_object: Path) -> None:
    class FailingTick(type(make_probe(multi_object))):  # type: ignore[misc]
        def tick(self, maps: Mapping[str, Any], ctx: EventContext) -> list[Event]:
            raise RuntimeError("tick bug")

    events: list[dict[str, Any]] = []
    session = TraceSession([FailingTick()], options=ProbeOptions(filter_pid=os.getpid(), self_tgid=0),
                           strict=True, on_events=events.extend)
    session.start()
    try:
        tid = threading.get_native_id()
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline and not (
                session.stats["multi_record"].derive_errors >= 2
                and any(e["type"] == "kernel.test.small" and e["data"]["tid"] == tid for e in events)):
            os.getppid()
            session.run(0.1)
    finally:
        summary = session.stop()
    stats = summary.probes[0]
    assert stats.derive_errors >= 2 and stats.ticks >= stats.derive_errors  # every tick failed, each counted
    assert any(e["type"] == "kernel.test.small" and e["data"]["tid"] == tid for e in events)
    assert not any(e["type"] == "kernel.test.tick" for e in events)


def test_every_layout_is_checked_against_the_btf(multi_object: Path) -> None:
    with pytest.raises(LayoutMismatchError) as info:
        ProbeLoader(ProbeOptions(filter_pid=os.getpid(), self_tgid=0)).load(make_probe(multi_object, LARGE_HALVED))
    message = info.value.message
    assert message.startswith("probe multi_record: record layout multi_large: field 'w0' is at offset 48 (4 bytes)")
    assert "the C struct multi_large (BTF of multi_record.bpf.o) has 'values' at offset 48 (32 bytes)" in message


def test_the_reader_splits_kinds_into_runs_in_arrival_order_across_full_batches(multi_object: Path) -> None:
    from jalki_core._libbpf import RingBufferReader

    loaded = ProbeLoader(ProbeOptions(filter_pid=os.getpid(), self_tgid=0)).load(make_probe(multi_object))
    try:
        # A 100-byte batch: after any record, fewer than 80 bytes (the largest kind) are left, so every
        # drain stops after one record and the next drain must resume with the following one.
        reader = RingBufferReader(loaded.obj.maps["events"], {KIND_SMALL: SMALL.size, KIND_LARGE: LARGE.size},
                                  100, kind_offset=40)
        assert reader.kinds == (KIND_SMALL, KIND_LARGE) and reader.record_size == LARGE.size
        tid = threading.get_native_id()
        expected = []
        for call in ("small", "small", "large", "small", "large", "large", "unknown", "small"):
            if call == "small":
                os.getppid()
                expected.append(KIND_SMALL)
            elif call == "large":
                os.getpgid(0)
                expected.append(KIND_LARGE)
            else:
                os.getsid(0)
        seen: list[tuple[int, int]] = []
        drains = 0
        while len([kind for kind, t in seen if t == tid]) < len(expected) and drains < 1000:
            drains += 1
            for kind, records in reader.consume_runs():
                layout = SMALL if kind == KIND_SMALL else LARGE
                assert len(records) % layout.size == 0 and len(records) <= 100
                for record in layout.struct.iter_unpack(records):
                    assert record[layout.fields.index("kind")] == kind
                    seen.append((kind, record[layout.fields.index("tid")]))
        assert [kind for kind, t in seen if t == tid] == expected
        assert reader.unknown_kinds >= 1 and reader.size_mismatches == 0 and reader.records_lost == 0
        reader.close()
    finally:
        loaded.close()
