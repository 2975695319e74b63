"""jalki-storage on the real kernel: direct I/O on a loop device, exact per-request events and histograms.

No device-mapper here (no dm-delay): the tests set the probe's thresholds
instead (warning 0 ns: every request is reported; or 1000 s: none is).
An I/O error is real: a loop device over a sparse file larger than the small
tmpfs that holds it fails the first write the tmpfs cannot store (ENOSPC).
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from jalki_storage.probes import BlockIoProbe
from netns_helpers import tracing
from rung_helpers import RUNGS, check_rung, on_rung

from jalki_core.events import Event
from jalki_core.testing import event_validator

pytestmark = pytest.mark.kernel
validate = event_validator()
NEVER_NS = 1_000_000_000_000  # 1000 s: no request is that slow, so no per-request event


@dataclass
class Loop:
    """A loop device over a file on a private tmpfs."""

    path: str
    device: str  # "major:minor"
    disk: str    # "loop3"


@contextmanager
def loop_device(tmpfs_size: str = "16m", file_size: str = "8M") -> Iterator[Loop]:
    """A loop device over a sparse file on a tmpfs of ``tmpfs_size``; always detached and unmounted."""
    mount_dir = tempfile.mkdtemp(prefix="jalki-storage-")
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={tmpfs_size}", "tmpfs", mount_dir], check=True)
    device = None
    try:
        backing = Path(mount_dir, "disk.img")
        subprocess.run(["truncate", "-s", file_size, str(backing)], check=True)
        device = subprocess.run(["losetup", "--find", "--show", str(backing)], check=True,
                                capture_output=True, text=True).stdout.strip()
        rdev = Path(device).stat().st_rdev
        yield Loop(device, f"{os.major(rdev)}:{os.minor(rdev)}", Path(device).name)
    finally:
        if device:
            subprocess.run(["losetup", "-d", device], check=False)
        subprocess.run(["umount", mount_dir], check=False)
        Path(mount_dir).rmdir()


def direct_io(*args: str) -> subprocess.CompletedProcess[str]:
    """Run dd (4 KiB blocks, O_DIRECT) in a child process, so jalki's self filter does not apply."""
    return subprocess.run(["dd", "bs=4096", *args], capture_output=True, text=True)


def records_out(dd: subprocess.CompletedProcess[str]) -> int:
    match = re.search(r"^(\d+)\+0 records out", dd.stderr, re.M)
    assert match, dd.stderr
    return int(match.group(1))


def of_device(events: list[Event], event_type: str, loop: Loop) -> list[Event]:
    return [e for e in events if e["type"] == event_type and e["data"]["device"] == loop.device]


@pytest.mark.parametrize("rung", RUNGS)
def test_every_request_reported_and_counted_in_the_histogram(rung: str) -> None:
    writes, reads = 12, 7
    probe = on_rung(BlockIoProbe(warning_ns=0, critical_ns=NEVER_NS), rung)
    with loop_device() as loop:
        with tracing([probe]) as trace:
            wrote = direct_io("if=/dev/zero", f"of={loop.path}", f"count={writes}", "oflag=direct", "conv=fsync")
            read = direct_io(f"if={loop.path}", "of=/dev/null", f"count={reads}", "skip=100", "iflag=direct")
        assert wrote.returncode == 0 and read.returncode == 0, (wrote.stderr, read.stderr)
        events = trace.events()
    for event in events:
        validate(event)
    latency = [e for e in events if e["type"] == "kernel.storage.io_latency"]
    check_rung(probe, rung, latency)

    write_events = [e for e in of_device(latency, "kernel.storage.io_latency", loop)
                    if e["data"]["operation"] == "write"]
    read_events = [e for e in of_device(latency, "kernel.storage.io_latency", loop)
                   if e["data"]["operation"] == "read"]
    assert [e["data"]["sector"] for e in write_events] == [8 * i for i in range(writes)]
    assert [e["data"]["sector"] for e in read_events] == [8 * (100 + i) for i in range(reads)]
    for event in write_events + read_events:
        assert event["severity"] == "warning" and "error" not in event
        assert event["data"]["bytes"] == 4096 and event["data"]["disk"] == loop.disk
        assert event["data"]["latency_ns"] > 0
        assert event["process_data"]["command"] == "dd"
    assert {e["process_data"]["pid"] for e in write_events} == {wrote_pid(write_events)}

    histograms = {e["data"]["operation"]: e["data"]
                  for e in of_device(events, "kernel.storage.io_latency_histogram", loop)}
    assert histograms["write"]["count"] == writes and histograms["read"]["count"] == reads
    assert histograms["write"]["total_latency_ns"] == sum(e["data"]["latency_ns"] for e in write_events)
    assert histograms["read"]["total_latency_ns"] == sum(e["data"]["latency_ns"] for e in read_events)
    assert sum(b["count"] for b in histograms["write"]["buckets"]) == writes
    assert histograms["write"]["disk"] == loop.disk
    assert trace.summary is not None
    [stats] = trace.summary.probes
    assert stats.rung == (probe.ladder[0].name) and stats.kernel_drops["ringbuf_full"] == 0


def wrote_pid(events: list[Event]) -> int:
    """The one pid the write events name (dd's)."""
    pids = {e["process_data"]["pid"] for e in events}
    assert len(pids) == 1 and None not in pids, pids
    return int(next(iter(pids)))


@pytest.mark.parametrize("rung", RUNGS)
def test_below_the_threshold_only_the_histogram_counts(rung: str) -> None:
    writes = 9
    probe = on_rung(BlockIoProbe(warning_ns=NEVER_NS, critical_ns=NEVER_NS), rung)
    with loop_device() as loop:
        with tracing([probe]) as trace:
            wrote = direct_io("if=/dev/zero", f"of={loop.path}", f"count={writes}", "oflag=direct")
        assert wrote.returncode == 0, wrote.stderr
        events = trace.events()
    assert not [e for e in events if e["type"] in ("kernel.storage.io_latency", "kernel.storage.io_error")]
    [write_hist] = [e for e in of_device(events, "kernel.storage.io_latency_histogram", loop)
                    if e["data"]["operation"] == "write"]
    validate(write_hist)
    assert write_hist["data"]["count"] == writes and write_hist["attach"] == (
        probe.ladder[0].name if rung == "best" else "tracepoint")


@pytest.mark.parametrize("rung", RUNGS)
def test_write_past_the_backing_store_is_one_enospc_error(rung: str) -> None:
    probe = on_rung(BlockIoProbe(warning_ns=NEVER_NS, critical_ns=NEVER_NS), rung)
    with loop_device(tmpfs_size="256k", file_size="8M") as loop:
        with tracing([probe]) as trace:
            wrote = direct_io("if=/dev/urandom", f"of={loop.path}", "count=200", "oflag=direct")
        events = trace.events()
    assert wrote.returncode != 0
    stored = records_out(wrote)
    assert 0 < stored < 200
    errors = of_device(events, "kernel.storage.io_error", loop)
    for event in errors:
        validate(event)
    check_rung(probe, rung, errors)
    [error] = errors
    assert error["error"] == {"code": "ENOSPC", "message": "No space left on device"}
    assert (error["severity"], error["outcome"]) == ("critical", "failure")
    assert error["data"]["operation"] == "write" and error["data"]["sector"] == 8 * stored
    assert error["data"]["bytes"] == 4096 and error["data"]["disk"] == loop.disk
    assert error["process_data"]["command"] == "dd"
    [write_hist] = [e for e in of_device(events, "kernel.storage.io_latency_histogram", loop)
                    if e["data"]["operation"] == "write"]
    assert write_hist["data"]["count"] == stored + 1  # the failed request completed too
