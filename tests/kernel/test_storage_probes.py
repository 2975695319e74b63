"""jalki-storage on the real kernel: direct I/O on a loop device, exact per-request events and histograms.

Slow I/O is not simulated: the tests set the probe's thresholds instead
(warning 0 ns: every request is reported; or 1000 s: none is).

I/O errors: the one real block-layer error this kernel can produce is the
loop driver's. A loop device over a sparse file larger than the small tmpfs
that holds it fails the first write the tmpfs cannot store: the request
completes with BLK_STS_NOSPC, block_rq_complete carries -ENOSPC, and the
test checks the exact ``kernel.storage.io_error`` event. The usual ways to
inject an EIO are absent from this kernel (Linux 6.18, /proc/config.gz):
no device-mapper (``CONFIG_MD`` is not set, so no dm-error, dm-flakey or
dm-delay target; ``dmsetup`` finds no kernel driver), no SCSI
(``CONFIG_SCSI``: no scsi_debug), no null_blk (``CONFIG_BLK_DEV_NULL_BLK``),
no ublk, no fault injection (``CONFIG_FAULT_INJECTION``: no
fail_make_request), and no loadable modules at all (``CONFIG_MODULES`` is
not set, /lib/modules is empty).

Flush sequences: an fsync of a block device, and a journal commit, make the
kernel complete requests it never issues (the end of a REQ_PREFLUSH/REQ_FUA
write, block_rq_complete "WS 0 + 0" or "WSM <sector> + 0"). Those are not lost
events: the tests check, against the kernel's own block_rq_issue tracepoint
read through a private tracefs instance, that the histograms count exactly
the requests issued and that no completion is counted as ``issue_unseen``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from jalki_storage.probes import BlockIoProbe
from netns_helpers import tracing
from rung_helpers import RUNGS, check_rung, on_rung

from jalki_core.events import Event
from jalki_core.session import SessionSummary
from jalki_core.testing import event_validator

pytestmark = pytest.mark.kernel
validate = event_validator()
NEVER_NS = 1_000_000_000_000  # 1000 s: no request is that slow, so no per-request event
TRACEFS = Path("/sys/kernel/tracing")
ATTEMPTS = 3
"""How often a scenario may run until one run has no ``issue_unseen`` drop (see :func:`until_no_unseen`)."""


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
    return run_child(["dd", "bs=4096", *args])[0]


def run_child(argv: list[str]) -> tuple[subprocess.CompletedProcess[str], int]:
    """Run a child process to its end; its result and its pid."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(argv, proc.returncode, out, err), proc.pid


def rwbs_operation(rwbs: str) -> str:
    """The operation a block tracepoint's rwbs stands for ("FWS": write, "FF": flush), as the probe names it."""
    if len(rwbs) > 1 and rwbs[0] == "F" and rwbs[1] in "WRDNF":
        rwbs = rwbs[1:]
    return {"R": "read", "W": "write", "F": "flush"}.get(rwbs[0], "secure_erase" if rwbs.startswith("DE")
                                                          else "discard" if rwbs[0] == "D" else "other")


@dataclass
class KernelTrace:
    """What the kernel's own block tracepoints reported for one device (filled when the block ends)."""

    issued: Counter[str]
    """block_rq_issue by operation."""
    flush_sequence_ends: list[tuple[str, int]]
    """block_rq_complete of a write with no sectors (rwbs, sector): the end of a flush sequence, never issued."""


@contextmanager
def kernel_block_trace(loop: Loop) -> Iterator[KernelTrace]:
    """block_rq_issue and block_rq_complete of the loop device, traced by the kernel in a private tracefs instance."""
    if not (TRACEFS / "instances").is_dir():
        subprocess.run(["mount", "-t", "tracefs", "nodev", str(TRACEFS)], check=True)
    instance = TRACEFS / "instances" / f"jalki-test-{os.getpid()}-{loop.disk}"
    instance.mkdir()
    events = [instance / "events/block/block_rq_issue", instance / "events/block/block_rq_complete"]
    major, minor = (int(n) for n in loop.device.split(":"))
    result = KernelTrace(Counter(), [])
    try:
        for event in events:
            (event / "filter").write_text(f"dev == {major << 20 | minor}\n")
            (event / "enable").write_text("1\n")
        yield result
        for event in events:
            (event / "enable").write_text("0\n")
        for line in (instance / "trace").read_text().splitlines():
            issue = re.search(r" block_rq_issue: \d+,\d+ (\S+) \d+ \(", line)
            if issue:
                result.issued[rwbs_operation(issue.group(1))] += 1
            end = re.search(r" block_rq_complete: \d+,\d+ (\S+) \(.*?\) (\d+) \+ 0 ", line)
            if end and rwbs_operation(end.group(1)) == "write":
                result.flush_sequence_ends.append((end.group(1), int(end.group(2))))
        assert "LOST EVENTS" not in (instance / "trace").read_text()
    finally:
        for event in events:
            (event / "enable").write_text("0\n")
        instance.rmdir()


def until_no_unseen(scenario: Callable[[], SessionSummary]) -> SessionSummary:
    """Run ``scenario`` until a run counts no ``issue_unseen`` drop, at most :data:`ATTEMPTS` times.

    The drop counter is device-wide: a request that another process had in
    flight on another disk when the probe attached is a real unseen issue,
    rightly counted, and on a busy machine that happens now and then. The
    flush sequences under test recur in every run (before the fix each fsync
    was counted once on tp_btf and twice on the tracepoint rung, every time),
    so a clean run is required, and repeating cannot hide them.
    """
    unseen = []
    for _ in range(ATTEMPTS):
        summary = scenario()
        [stats] = summary.probes
        unseen.append(stats.kernel_drops["issue_unseen"])
        if unseen[-1] == 0:
            return summary
    raise AssertionError(f"issue_unseen drops in every run: {unseen}")


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
            wrote, dd_pid = run_child(["dd", "bs=4096", "if=/dev/urandom", f"of={loop.path}", "count=200",
                                       "oflag=direct"])
        events = trace.events()
    assert wrote.returncode != 0
    assert "No space left on device" in wrote.stderr
    stored = records_out(wrote)
    assert 0 < stored < 200
    errors = of_device(events, "kernel.storage.io_error", loop)
    for event in errors:
        validate(event)
    check_rung(probe, rung, errors)
    [error] = errors
    assert (error["type"], error["source"]) == ("kernel.storage.io_error", "jalki/block_io")
    assert error["error"] == {"code": "ENOSPC", "message": "No space left on device"}
    assert (error["severity"], error["outcome"]) == ("critical", "failure")
    latency_ns = error["data"]["latency_ns"]
    assert 0 < latency_ns < 10_000_000_000
    assert error["data"] == {"device": loop.device, "disk": loop.disk, "operation": "write",
                             "latency_ns": latency_ns, "bytes": 4096, "sector": 8 * stored}
    assert error["process_data"]["pid"] == dd_pid and error["process_data"]["command"] == "dd"
    assert isinstance(error["process_data"]["cgroup_id"], int)
    assert "network_data" not in error and "correlation_keys" not in error
    [write_hist] = [e for e in of_device(events, "kernel.storage.io_latency_histogram", loop)
                    if e["data"]["operation"] == "write"]
    assert write_hist["data"]["count"] == stored + 1  # the failed request completed too


FSYNC_LOOP = """
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY)
for i in range(int(sys.argv[2])):
    os.pwrite(fd, bytes([i + 1]) * 4096, 4096 * i)
    os.fsync(fd)
os.close(fd)
"""
"""Buffered 4 KiB writes to block i of a block device, each followed by fsync()."""


@pytest.mark.parametrize("rung", RUNGS)
def test_fsync_loop_flushes_are_counted_never_dropped(rung: str) -> None:
    """Each fsync is one write and one flush request; the kernel's ending of the empty flush is no drop."""
    fsyncs = 8
    probe = on_rung(BlockIoProbe(warning_ns=0, critical_ns=NEVER_NS), rung)
    seen: dict[str, object] = {}

    def scenario() -> SessionSummary:
        with loop_device() as loop:
            with kernel_block_trace(loop) as kernel, tracing([probe]) as trace:
                synced, pid = run_child([sys.executable, "-c", FSYNC_LOOP, loop.path, str(fsyncs)])
            assert synced.returncode == 0, synced.stderr
        seen.update(loop=loop, kernel=kernel, events=trace.events(), pid=pid)
        assert trace.summary is not None
        return trace.summary

    summary = until_no_unseen(scenario)
    loop, kernel, events, pid = seen["loop"], seen["kernel"], seen["events"], seen["pid"]
    assert isinstance(loop, Loop) and isinstance(kernel, KernelTrace) and isinstance(events, list)
    # what the kernel did: one write and one flush request per fsync, and the
    # original empty-flush write ended without an issue ("WS 0 + 0") each time
    assert kernel.issued == {"write": fsyncs, "flush": fsyncs}
    assert kernel.flush_sequence_ends == [("WS", 0)] * fsyncs
    [stats] = summary.probes
    assert stats.kernel_drops == {"ringbuf_full": 0, "sampled": 0, "tracking_full": 0, "issue_unseen": 0,
                                  "recursion_miss": 0}

    histograms = {e["data"]["operation"]: e["data"]
                  for e in of_device(events, "kernel.storage.io_latency_histogram", loop)}
    assert {op: h["count"] for op, h in histograms.items()} == dict(kernel.issued)
    latency = of_device(events, "kernel.storage.io_latency", loop)
    for event in latency:
        validate(event)
    check_rung(probe, rung, latency)
    by_op = {op: [e for e in latency if e["data"]["operation"] == op] for op in ("write", "flush")}
    assert [(e["data"]["sector"], e["data"]["bytes"]) for e in by_op["write"]] == [(8 * i, 4096) for i in range(fsyncs)]
    assert {e["process_data"]["pid"] for e in by_op["write"]} == {pid}  # fsync() writes the page back itself
    # the flush request has no position: sector 0 on both rungs (block_rq_issue's value), no bytes
    assert [(e["data"]["sector"], e["data"]["bytes"]) for e in by_op["flush"]] == [(0, 0)] * fsyncs
    for op, op_events in by_op.items():
        assert histograms[op]["total_latency_ns"] == sum(e["data"]["latency_ns"] for e in op_events)


@pytest.mark.parametrize("rung", RUNGS)
def test_journal_commit_flush_sequences_are_not_drops(rung: str) -> None:
    """ext4 commits with REQ_PREFLUSH|REQ_FUA writes: data issued, flushes issued, the write ended once more."""
    appends = 4
    probe = on_rung(BlockIoProbe(warning_ns=NEVER_NS, critical_ns=NEVER_NS), rung)
    seen: dict[str, object] = {}
    append = ("import os, sys\n"
              "for _ in range(int(sys.argv[2])):\n"
              "    fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)\n"
              "    os.write(fd, b'x' * 4096)\n"
              "    os.fsync(fd)\n"
              "    os.close(fd)\n")

    def scenario() -> SessionSummary:
        with loop_device(tmpfs_size="24m", file_size="16M") as loop:
            subprocess.run(["mkfs.ext4", "-q", "-E", "lazy_itable_init=0,lazy_journal_init=0,nodiscard", loop.path],
                           check=True, capture_output=True)
            mount_dir = tempfile.mkdtemp(prefix="jalki-ext4-")
            try:
                with kernel_block_trace(loop) as kernel, tracing([probe]) as trace:
                    subprocess.run(["mount", "-t", "ext4", loop.path, mount_dir], check=True)
                    try:
                        wrote, _ = run_child([sys.executable, "-c", append, f"{mount_dir}/log", str(appends)])
                    finally:
                        subprocess.run(["umount", mount_dir], check=True)
                    assert wrote.returncode == 0, wrote.stderr
            finally:
                Path(mount_dir).rmdir()
        seen.update(loop=loop, kernel=kernel, events=trace.events())
        assert trace.summary is not None
        return trace.summary

    summary = until_no_unseen(scenario)
    loop, kernel, events = seen["loop"], seen["kernel"], seen["events"]
    assert isinstance(loop, Loop) and isinstance(kernel, KernelTrace) and isinstance(events, list)
    # the journal's commit blocks were written through the flush machinery: their
    # writes ended a second time with no sectors left, at their own sector
    assert any(sector != 0 for _, sector in kernel.flush_sequence_ends), kernel.flush_sequence_ends
    assert kernel.issued["flush"] >= appends and set(kernel.issued) <= {"read", "write", "flush"}
    [stats] = summary.probes
    assert stats.kernel_drops["issue_unseen"] == 0 and stats.kernel_drops["tracking_full"] == 0
    histograms = {e["data"]["operation"]: e["data"]["count"]
                  for e in of_device(events, "kernel.storage.io_latency_histogram", loop)}
    assert histograms == dict(kernel.issued)
