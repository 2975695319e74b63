"""jalki-storage: block_io decoders, histogram summaries, thresholds and KB entries (no root)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from jalki_storage import layouts
from jalki_storage.probes import BlockIoProbe, DeviceHistogram, device_number, disk_name, operation_name

from jalki_core.errors import ProbeError
from jalki_core.events import Event
from jalki_core.kb import default_kb
from jalki_core.kb.conditions import get_path
from jalki_core.plugins import JalkiPlugins
from jalki_core.testing import FakeMap, FakeRingBuffer, decode_all, make_event_context

ISSUER = {"pid": 4242, "flags": 1, "comm": b"postgres", "cgroup_id": 99}
LOOP0 = 7 << 20  # dev_t 7:0 in the kernel's encoding
SYSFS_MISSING = "/nonexistent-sysfs"


def hist_value(slots: dict[int, int], total_ns: int) -> bytes:
    counts = [slots.get(i, 0) for i in range(layouts.HIST_SLOTS)]
    return layouts.HIST_VALUE.pack(*counts, sum(counts), total_ns)


def decode_one(probe: BlockIoProbe, attach: str = "tp_btf", **values: object) -> Event:
    ring = FakeRingBuffer(probe.layout)
    ring.push_values(**values)
    [event] = decode_all(probe, ring, make_event_context("block_io", attach))
    return event


def test_slow_write_is_a_warning_with_device_and_operation(jalki_validate_event: Callable[[Event], None]) -> None:
    probe = BlockIoProbe(warning_ns=50_000_000, critical_ns=200_000_000)
    event = decode_one(probe, ts_ns=1_000_000_123, latency_ns=73_000_000, sector=2048, dev=LOOP0, bytes=4096,
                       op=1, error=0, **ISSUER)
    jalki_validate_event(event)
    assert event["type"] == "kernel.storage.io_latency" and event["severity"] == "warning"
    assert "outcome" not in event and "error" not in event
    assert event["process_data"] == {"pid": 4242, "command": "postgres", "cgroup_id": 99}
    assert event["data"] == {"device": "7:0", "disk": disk_name(LOOP0), "operation": "write",
                             "latency_ns": 73_000_000, "bytes": 4096, "sector": 2048}
    assert event["source"] == "jalki/block_io" and event["attach"] == "tp_btf"
    assert event["timestamp"] == "2023-11-14T22:13:21.000000123Z"


def test_latency_at_the_critical_threshold_is_critical(jalki_validate_event: Callable[[Event], None]) -> None:
    probe = BlockIoProbe(warning_ns=50_000_000, critical_ns=200_000_000)
    event = decode_one(probe, ts_ns=5, latency_ns=200_000_000, sector=8, dev=(259 << 20) | 1, bytes=131072,
                       op=0, error=0, **ISSUER)
    jalki_validate_event(event)
    assert event["severity"] == "critical"
    assert event["data"]["device"] == "259:1" and event["data"]["operation"] == "read"


def test_io_error_is_critical_failure_with_errno_name(jalki_validate_event: Callable[[Event], None]) -> None:
    probe = BlockIoProbe()
    event = decode_one(probe, "tracepoint", ts_ns=9, latency_ns=120_000, sector=512, dev=LOOP0, bytes=4096, op=1,
                       error=28, **ISSUER)
    jalki_validate_event(event)
    assert event["type"] == "kernel.storage.io_error"
    assert (event["severity"], event["outcome"]) == ("critical", "failure")
    assert event["error"] == {"code": "ENOSPC", "message": "No space left on device"}
    assert event["data"]["sector"] == 512 and event["data"]["operation"] == "write"
    assert event["attach"] == "tracepoint"


def test_interrupt_context_issuer_is_null_never_a_guess(jalki_validate_event: Callable[[Event], None]) -> None:
    probe = BlockIoProbe()
    event = decode_one(probe, ts_ns=1, latency_ns=60_000_000, dev=LOOP0, op=2, error=0)
    jalki_validate_event(event)
    assert event["process_data"] == {"pid": None, "command": None, "cgroup_id": None}
    assert event["data"]["operation"] == "flush"


def test_operation_and_device_names() -> None:
    assert [operation_name(op) for op in (0, 1, 2, 3, 5, 9, 255, 77)] == [
        "read", "write", "flush", "discard", "secure_erase", "write_zeroes", "other", "other"]
    assert device_number((8 << 20) | 17) == "8:17"
    assert disk_name(LOOP0, sysfs=SYSFS_MISSING) is None


def test_histogram_summary_events(jalki_validate_event: Callable[[Event], None]) -> None:
    probe = BlockIoProbe()
    maps = {"storage_hist": FakeMap({
        layouts.HIST_KEY.pack(LOOP0, 1): hist_value({6: 3, 9: 2, 31: 1}, 7_000_000_000),
        layouts.HIST_KEY.pack(LOOP0, 0): hist_value({0: 4}, 2_000),
    })}
    [read, write] = BlockIoProbe.read_histograms(maps)
    assert read == DeviceHistogram(LOOP0, 0, tuple([4] + [0] * 31), 4, 2_000)
    assert (write.device, write.operation, write.count, write.total_ns) == ("7:0", "write", 6, 7_000_000_000)
    assert write.buckets() == [{"min_us": 64, "max_us": 128, "count": 3}, {"min_us": 512, "max_us": 1024, "count": 2},
                               {"min_us": 2**31, "max_us": None, "count": 1}]
    events = probe.final_events(maps, make_event_context("block_io", "tp_btf"))
    for event in events:
        jalki_validate_event(event)
    assert [(e["type"], e["severity"]) for e in events] == [("kernel.storage.io_latency_histogram", "info")] * 2
    assert events[0]["data"] == {"device": "7:0", "disk": disk_name(LOOP0), "operation": "read", "count": 4,
                                 "total_latency_ns": 2_000, "buckets": [{"min_us": 0, "max_us": 2, "count": 4}]}
    assert events[1]["data"]["count"] == 6 and len(events[1]["data"]["buckets"]) == 3


def test_thresholds_from_arguments_environment_and_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JALKI_STORAGE_WARNING_MS", raising=False)
    monkeypatch.delenv("JALKI_STORAGE_CRITICAL_MS", raising=False)
    probe = BlockIoProbe()
    assert (probe.warning_ns, probe.critical_ns) == (50_000_000, 200_000_000)
    monkeypatch.setenv("JALKI_STORAGE_WARNING_MS", "2.5")
    monkeypatch.setenv("JALKI_STORAGE_CRITICAL_MS", "10")
    probe = BlockIoProbe()
    assert (probe.warning_ns, probe.critical_ns) == (2_500_000, 10_000_000)
    assert BlockIoProbe(warning_ns=0, critical_ns=0).warning_ns == 0
    assert probe.describe()["warning_ns"] == 2_500_000
    with pytest.raises(ProbeError, match="below the warning threshold"):
        BlockIoProbe(warning_ns=10, critical_ns=5)
    monkeypatch.setenv("JALKI_STORAGE_WARNING_MS", "soon")
    with pytest.raises(ProbeError, match="not a number of milliseconds"):
        BlockIoProbe()


def test_thresholds_go_to_the_object_rodata() -> None:
    """The loader writes rodata() into .rodata; the kernel tests show the kernel side obeys it."""
    assert BlockIoProbe(warning_ns=1234, critical_ns=5678).rodata() == {
        "storage_warning_ns": 1234, "storage_critical_ns": 5678}


def test_record_layout_matches_the_c_header() -> None:
    header = (Path(__file__).resolve().parents[3] / "plugins/jalki_storage/jalki_storage/bpf/block_io.h").read_text()
    assert "sizeof(struct block_io_event) == 72" in header and layouts.BLOCK_IO.size == 72
    assert "sizeof(struct block_io_hist) == 272" in header and layouts.HIST_VALUE.size == 272
    assert f"JALKI_STORAGE_HIST_SLOTS {layouts.HIST_SLOTS}" in header


def test_kb_entries_name_the_probe_and_real_event_paths() -> None:
    kb = default_kb()
    probe = JalkiPlugins().probes.get("block_io")
    assert probe is not None and probe.owner.plugin == "storage"
    events = {
        "kernel.storage.io_latency": decode_one(BlockIoProbe(), latency_ns=60_000_000, dev=LOOP0, op=1, **ISSUER),
        "kernel.storage.io_error": decode_one(BlockIoProbe(), latency_ns=1, dev=LOOP0, op=1, error=5, **ISSUER),
    }
    for entry_id in ("block_rq_complete", "block_io_error"):
        entry = kb.entries[entry_id]
        assert entry.layer == "storage" and entry.implemented_by is not None
        assert (entry.implemented_by.plugin, entry.implemented_by.probe) == ("storage", "block_io")
        assert entry.attach == tuple(rung.name for rung in probe.probe.ladder)
        assert entry.event_type in probe.probe.event_types
        event = events[entry.event_type]
        missing = [spec.name for spec in entry.fields
                   if get_path(event, spec.name) is None and spec.name != "data.disk"]
        assert missing == [], entry_id
    assert not [p for p in kb.problems if "storage" in p.source]
