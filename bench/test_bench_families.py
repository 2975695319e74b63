"""Overhead of each probe family on a workload that exercises it, against the peers that cover it.

Two benchmarks, one pytest test each (root; skipped otherwise), each under a
minute with the defaults::

    sudo .venv/bin/python -m pytest -q bench/test_bench_families.py -s

- **process** (``jalki-process``): a C loop ``fork()`` → ``execv("/bin/true")``
  → ``waitpid()``, pinned to the last CPU, measured as execs/s, bare and under
  ``jalki run --plugin process`` (exec + exit), ``jalki run --plugin
  process_exit``, libbpf-tools ``exitsnoop`` and ``execsnoop``, and bpftrace on
  ``sched:sched_process_exit``.
- **storage** (``jalki-storage``): a C loop ``pwrite(4 KiB, O_DIRECT)`` →
  ``fsync()`` on a loop device over a file on a private tmpfs, pinned to the
  last CPU, measured as fsyncs/s, bare and under ``jalki run --plugin
  block_io`` (default thresholds, histogram), libbpf-tools ``biolatency -D`` and
  ``biosnoop``, and a bpftrace issue → complete latency histogram.

The harness is bench/run_bench.py's: the tracer is started first and the
workload only once it is attached, the tracer is stopped with the signal it
flushes on, rounds are interleaved (every case once per round, the order
rotated), runs during which someone else's BPF programs ran on the workload's
path (at least once per two operations) are left out of the medians when clean
runs exist. Per operation, while the workload ran: the tracer's CPU (all its
threads, schedstat: start-up and loading are not in it) and its BPF programs'
run time (kernel.bpf_stats_enabled).

Nothing about speed is asserted. Asserted: the work done (every exec
succeeded; the device's own counters show one 4 KiB write and one flush per
fsync), jalki's events equal to it with nothing lost or dropped, and every
peer either ran or is reported as not attachable here with its error.

Environment: ``JALKI_BENCH_ROUNDS`` (default 3), ``JALKI_BENCH_EXECS``
(default 1000 per run), ``JALKI_BENCH_FSYNCS`` (default 10000 per run).
Results: printed, and saved to ``bench/results/families-<benchmark>.json``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from _churn import READY_TIMEOUT_S, STOP_TIMEOUT_S, Tracer, _has_bpf_link, _start, _tail, count_jalki
from _common import (
    BENCH_DIR,
    Tools,
    _prog_ids_of,
    _tree_state,
    build_tools,
    cpu_fractions,
    cpu_times,
    machine_facts,
    median_of,
    ndjson_events,
    spread_of,
    wait_with_rusage,
)
from run_bench import _cpus, _fmt, _rotate, _usable

ROUNDS = int(os.environ.get("JALKI_BENCH_ROUNDS", "3"))
EXECS = int(os.environ.get("JALKI_BENCH_EXECS", "1000"))
FSYNCS = int(os.environ.get("JALKI_BENCH_FSYNCS", "10000"))

# fork → exec /bin/true → wait, N times; prints its own count, time and pid
# (the parent of every /bin/true: what the tracers' output is matched on).
FORK_EXEC_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
int main(int argc, char **argv) {
    long n = atol(argv[1]), ok = 0, failed = 0;
    char *const args[] = {"true", NULL};
    double start = now();
    for (long i = 0; i < n; i++) {
        int status;
        pid_t pid = fork();
        if (pid == 0) { execv("/bin/true", args); _exit(127); }
        if (pid < 0 || waitpid(pid, &status, 0) < 0 || status != 0) failed++; else ok++;
    }
    double seconds = now() - start;
    printf("{\"ops\": %ld, \"failed\": %ld, \"seconds\": %.6f, \"rate\": %.1f, \"pid\": %d}\n",
           ok, failed, seconds, ok / seconds, getpid());
    return failed != 0;
}
"""

# pwrite 4 KiB with O_DIRECT → fsync, N times, cycling over the first 1 MiB of
# the device: on a loop device exactly one write and one flush request each.
FSYNC_C = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
int main(int argc, char **argv) {
    long n = atol(argv[2]), ops = 0;
    void *buf;
    if (posix_memalign(&buf, 4096, 4096)) return 2;
    memset(buf, 'j', 4096);
    int fd = open(argv[1], O_WRONLY | O_DIRECT);
    if (fd < 0) { perror("open"); return 2; }
    double start = now();
    for (long i = 0; i < n; i++) {
        if (pwrite(fd, buf, 4096, (i % 256) * 4096) != 4096) { perror("pwrite"); break; }
        if (fsync(fd)) { perror("fsync"); break; }
        ops++;
    }
    double seconds = now() - start;
    close(fd);
    printf("{\"ops\": %ld, \"failed\": %ld, \"seconds\": %.6f, \"rate\": %.1f, \"pid\": %d}\n",
           ops, n - ops, seconds, ops / seconds, getpid());
    return ops != n;
}
"""

BPFTRACE_EXIT = """
BEGIN { system("touch %(ready)s"); }
tracepoint:sched:sched_process_exit
{
    printf("%%d %%d %%s\\n", pid, curtask->real_parent->tgid, comm);
}
"""

BPFTRACE_BLOCK = """
BEGIN { system("touch %(ready)s"); }
tracepoint:block:block_rq_issue { @start[args->dev, args->sector] = nsecs; }
tracepoint:block:block_rq_complete /@start[args->dev, args->sector]/
{
    @usecs[args->dev] = hist((nsecs - @start[args->dev, args->sector]) / 1000);
    delete(@start[args->dev, args->sector]);
}
END { clear(@start); }
"""

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="benchmarks load BPF programs: run as root")


# ---------------------------------------------------------------------------
# Tools and the loop device
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FamilyTools:
    """The harness's tools, the two workload binaries, and the libbpf-tools found here."""

    tools: Tools
    fork_exec: Path
    fsync_loop: Path
    libbpf_tools: dict[str, str | None]
    tmp: Path


@pytest.fixture(scope="module")
def family_tools() -> Iterator[FamilyTools]:
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        pytest.skip("gcc not found")
    # Short path: bpftrace's system() strings are at most 64 bytes.
    with tempfile.TemporaryDirectory(prefix="jalki-fam-") as name:
        tmp = Path(name)
        binaries = {}
        for stem, source in (("fork_exec", FORK_EXEC_C), ("fsync_loop", FSYNC_C)):
            (tmp / f"{stem}.c").write_text(source)
            subprocess.run([gcc, "-O2", "-Wall", "-o", str(tmp / stem), str(tmp / f"{stem}.c")], check=True)
            binaries[stem] = tmp / stem
        peers = {name: _find_libbpf_tool(name) for name in ("exitsnoop", "execsnoop", "biolatency", "biosnoop")}
        from jalki_core._libbpf import enable_stats

        # Run-time stats for every tracer's programs, not only while some jalki holds them on.
        with contextlib.closing(enable_stats()):
            yield FamilyTools(build_tools(tmp), binaries["fork_exec"], binaries["fsync_loop"], peers, tmp)


def _find_libbpf_tool(name: str) -> str | None:
    return shutil.which(name) or next(
        (str(p) for p in (Path("/usr/sbin") / name, Path("/usr/sbin") / f"{name}-bpfcc") if p.is_file()), None
    )


@dataclass(frozen=True)
class LoopDevice:
    """A loop device over a file on a private tmpfs."""

    path: str
    major: int
    minor: int

    @property
    def name(self) -> str:
        return Path(self.path).name

    @property
    def tracepoint_dev(self) -> int:
        """The device number as block tracepoints carry it (major << 20 | minor)."""
        return self.major << 20 | self.minor

    def stat(self) -> list[int]:
        """/sys/block/NAME/stat: [4] write requests, [6] sectors written, [15] flush requests."""
        return [int(x) for x in Path(f"/sys/block/{self.name}/stat").read_text().split()]


@contextlib.contextmanager
def loop_device() -> Iterator[LoopDevice]:
    """A loop device over a sparse 32 MiB file on a 64 MiB tmpfs; always detached and unmounted."""
    mount_dir = tempfile.mkdtemp(prefix="jalki-fam-loop-")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", mount_dir], check=True)
    device = None
    try:
        backing = Path(mount_dir, "disk.img")
        subprocess.run(["truncate", "-s", "32M", str(backing)], check=True)
        device = subprocess.run(
            ["losetup", "--find", "--show", str(backing)], check=True, capture_output=True, text=True
        ).stdout.strip()
        rdev = Path(device).stat().st_rdev
        yield LoopDevice(device, os.major(rdev), os.minor(rdev))
    finally:
        if device:
            subprocess.run(["losetup", "-d", device], check=False)
        for _ in range(20):  # the loop driver lets go of the file asynchronously
            if subprocess.run(["umount", mount_dir], check=False, capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        with contextlib.suppress(OSError):
            Path(mount_dir).rmdir()


# ---------------------------------------------------------------------------
# Tracers: how each is started, recognised as ready, stopped and counted.
# Tracer.count(workload_pid, ops, tracepoint_dev) -> counts.
# ---------------------------------------------------------------------------


def _ready_file(tmp: Path, tag: str) -> Path:
    return tmp / f"{zlib.crc32(tag.encode()):08x}.rdy"


def _jalki(
    ft: FamilyTools, tag: str, plugin: str, count: Callable[[Path, Path, int, int, int], dict[str, Any]]
) -> Tracer:
    events, summary, stderr = (ft.tmp / f"{tag}.{ext}" for ext in ("ndjson", "summary.json", "stderr"))
    argv = [*ft.tools.jalki, "run", "--plugin", plugin, "--emit", f"file:{events}", "--summary-json", str(summary)]
    return Tracer(
        "jalki",
        argv,
        signal.SIGTERM,
        lambda _proc: "tracing" in _tail(stderr, 100_000),
        lambda pid, ops, dev: count(events, summary, pid, ops, dev),
        stderr=stderr,
        files=[events, summary, stderr],
    )


def jalki_summary(summary: Path) -> dict[str, Any]:
    """Drops by cause, emitter drops, rung and BPF run time from jalki's summary JSON (bench/_churn.py's reader)."""
    counts = count_jalki(Path("/nonexistent"), summary, 0, 0, 0)
    keys = ("kernel_drops", "drops_total", "emitter_events_dropped", "emitter_errors", "attach", "bpf_ns_per_run")
    return {key: counts[key] for key in (*keys, "bpf_runs", "summary_missing") if key in counts}


def count_jalki_process(events: Path, summary: Path, pid: int, ops: int, probes: tuple[str, ...]) -> dict[str, Any]:
    """jalki's exec events of /bin/true and exit events of ``true`` whose parent is the loop."""
    execs = exits = other = 0
    for event in ndjson_events(events):
        data = event.get("data") or {}
        if data.get("ppid") != pid:
            other += 1
        elif event["type"] == "kernel.process.exec" and data.get("filename") == "/bin/true":
            execs += 1
        elif event["type"] == "kernel.process.exit" and event["process_data"]["command"] == "true":
            exits += 1
        else:
            other += 1
    expected = {"exec": ops if "process_exec" in probes else 0, "exit": ops if "process_exit" in probes else 0}
    result: dict[str, Any] = {
        "exec_events": execs,
        "exit_events": exits,
        "other_events": other,
        "expected_events": sum(expected.values()),
        "received_events": execs + exits,
        "lost_events": expected["exec"] - execs + expected["exit"] - exits,
    }
    return result | jalki_summary(summary)


def jalki_process_tracer(ft: FamilyTools, tag: str, plugin: str) -> Tracer:
    """``jalki run --plugin process`` (both probes) or ``--plugin process_exit``."""
    probes = ("process_exec", "process_exit") if plugin == "process" else (plugin,)
    return _jalki(ft, tag, plugin, lambda ev, su, pid, ops, _dev: count_jalki_process(ev, su, pid, ops, probes))


def count_jalki_block(events: Path, summary: Path, ops: int, dev: int) -> dict[str, Any]:
    """jalki's histograms of the loop device: one write and one flush per fsync expected."""
    device = f"{dev >> 20}:{dev & 0xFFFFF}"
    histograms: dict[str, int] = {}
    slow = 0
    for event in ndjson_events(events):
        data = event.get("data") or {}
        if data.get("device") != device:
            continue
        if event["type"] == "kernel.storage.io_latency_histogram":
            histograms[data["operation"]] = histograms.get(data["operation"], 0) + int(data["count"])
        else:
            slow += 1
    result: dict[str, Any] = {
        "histogram": histograms,
        "slow_or_error_events": slow,
        "expected_events": 2 * ops,
        "received_events": histograms.get("write", 0) + histograms.get("flush", 0),
    }
    result["lost_events"] = result["expected_events"] - result["received_events"]
    result |= jalki_summary(summary)
    # The zero-byte completion that ends each fsync's flush sequence is no drop (the probe ignores it),
    # so any issue_unseen here is a real miss and counts as one.
    drops = dict(result.get("kernel_drops") or {})
    result["issue_unseen"] = drops.get("issue_unseen", 0)
    result["drops_total"] = sum(drops.values())
    return result


def jalki_block_tracer(ft: FamilyTools, tag: str) -> Tracer:
    """``jalki run --plugin block_io`` with its default thresholds."""
    return _jalki(ft, tag, "block_io", lambda ev, su, _pid, ops, dev: count_jalki_block(ev, su, ops, dev))


def count_snoop(text: str, pid: int, ops: int) -> dict[str, Any]:
    """exitsnoop/execsnoop text (``PCOMM PID PPID …``): the lines of ``true`` whose parent is the loop."""
    received = sum(1 for line in text.splitlines() if line.split()[:3:2] == ["true", str(pid)])
    return {"expected_events": ops, "received_events": received, "lost_events": ops - received}


def snoop_tracer(ft: FamilyTools, tag: str, tool: str) -> Tracer:
    """libbpf-tools ``exitsnoop`` or ``execsnoop``, stdout to a file."""
    path = ft.libbpf_tools[tool]
    assert path is not None
    out, stderr = ft.tmp / f"{tag}.txt", ft.tmp / f"{tag}.stderr"
    return Tracer(
        tool,
        [path],
        signal.SIGINT,
        _has_bpf_link,
        lambda pid, ops, _dev: count_snoop(out.read_text(errors="replace"), pid, ops),
        stdout=out,
        stderr=stderr,
        files=[out, stderr],
    )


def count_bpftrace_exit(text: str, pid: int, ops: int) -> dict[str, Any]:
    """Lines ``PID PPID COMM`` of ``true`` with the loop as parent, and bpftrace's own ``Lost N events``."""
    received = lost_reported = 0
    for line in text.splitlines():
        cols = line.split()
        if line.startswith("Lost ") and len(cols) > 1 and cols[1].isdigit():
            lost_reported += int(cols[1])
        elif cols[1:3] == [str(pid), "true"]:
            received += 1
    return {
        "expected_events": ops,
        "received_events": received,
        "lost_events": ops - received,
        "lost_reported_by_bpftrace": lost_reported,
    }


def count_bpftrace_hist(text: str, dev: int, ops: int) -> dict[str, Any]:
    """The bucket counts of ``@usecs[dev]`` in bpftrace's exit output."""
    received = 0
    current = None
    for line in text.splitlines():
        head = re.match(r"@usecs\[(\d+)\]:", line)
        if head:
            current = int(head.group(1))
            continue
        bucket = re.match(r"\[[^\]]*[\])]\s+(\d+)\s*\|", line)
        if bucket and current == dev:
            received += int(bucket.group(1))
    return {"expected_events": 2 * ops, "received_events": received, "lost_events": 2 * ops - received}


def bpftrace_tracer(ft: FamilyTools, tag: str, family: str) -> Tracer:
    """bpftrace: one line per sched_process_exit, or an issue → complete latency histogram per device."""
    assert ft.tools.bpftrace is not None
    out, stderr, ready = ft.tmp / f"{tag}.txt", ft.tmp / f"{tag}.stderr", _ready_file(ft.tmp, tag)
    if family == "process":
        script = BPFTRACE_EXIT % {"ready": ready}

        def count(pid: int, ops: int, _dev: int) -> dict[str, Any]:
            return count_bpftrace_exit(out.read_text(errors="replace"), pid, ops)
    else:
        script = BPFTRACE_BLOCK % {"ready": ready}

        def count(pid: int, ops: int, dev: int) -> dict[str, Any]:
            return count_bpftrace_hist(out.read_text(errors="replace"), dev, ops)

    argv = [ft.tools.bpftrace, "--unsafe", "-o", str(out), "-e", script]
    return Tracer(
        "bpftrace", argv, signal.SIGINT, lambda _proc: ready.exists(), count, stderr=stderr, files=[out, ready, stderr]
    )


def count_biolatency(text: str, disk: str, ops: int) -> dict[str, Any]:
    """Sum of ``biolatency -D``'s buckets under ``disk = NAME``."""
    received = 0
    current = None
    for line in text.splitlines():
        if line.strip().startswith("disk = "):
            current = line.split("=", 1)[1].strip()
            continue
        bucket = re.match(r"\s*\d+ -> \d+\s*:\s*(\d+)", line)
        if bucket and current == disk:
            received += int(bucket.group(1))
    return {"expected_events": 2 * ops, "received_events": received, "lost_events": 2 * ops - received}


def count_biosnoop(text: str, disk: str, ops: int) -> dict[str, Any]:
    """biosnoop lines naming ``disk`` (one per completed request)."""
    received = sum(1 for line in text.splitlines() if disk in line.split())
    return {"expected_events": 2 * ops, "received_events": received, "lost_events": 2 * ops - received}


def block_peer_tracer(ft: FamilyTools, tag: str, tool: str, loop: LoopDevice) -> Tracer:
    """libbpf-tools ``biolatency -D`` (histogram per disk, printed on SIGINT) or ``biosnoop``."""
    path = ft.libbpf_tools[tool]
    assert path is not None
    out, stderr = ft.tmp / f"{tag}.txt", ft.tmp / f"{tag}.stderr"
    counter = count_biolatency if tool == "biolatency" else count_biosnoop
    argv = [path, "-D"] if tool == "biolatency" else [path]
    return Tracer(
        tool,
        argv,
        signal.SIGINT,
        _has_bpf_link,
        lambda _pid, ops, _dev: counter(out.read_text(errors="replace"), loop.name, ops),
        stdout=out,
        stderr=stderr,
        files=[out, stderr],
    )


# ---------------------------------------------------------------------------
# One case, and the interleaved rounds
# ---------------------------------------------------------------------------


def attach_error(stderr: str) -> str:
    """The lines of a tracer's stderr that say why it did not attach."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    telling = [line for line in lines if re.search(r"fail|error|permi|not found|no such", line, re.I)]
    chosen = telling or lines
    return " | ".join(dict.fromkeys(chosen[:1] + chosen[-2:]))  # the first cause and the final verdict


def task_cpu_ns(pid: int) -> int:
    """CPU time of every thread of ``pid`` so far, in ns (``/proc/PID/task/*/schedstat``)."""
    total = 0
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError, IndexError):
                total += int((task / "schedstat").read_text().split()[0])
    return total


def bpf_programs() -> dict[int, dict[str, Any]]:
    """Every loaded BPF program by id, with its run_time_ns and run_cnt (kernel.bpf_stats_enabled=1)."""
    try:
        proc = subprocess.run(["bpftool", "-j", "prog", "list"], capture_output=True, text=True, timeout=10)
        return {p["id"]: p for p in json.loads(proc.stdout or "[]")}
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return {}


def bpf_deltas(before: dict[int, dict[str, Any]], after: dict[int, dict[str, Any]], ids: set[int]) -> tuple[int, int]:
    """(run_time_ns, run_cnt) the programs ``ids`` gained between two :func:`bpf_programs` snapshots."""
    ns = runs = 0
    for prog_id in ids & after.keys():
        old = before.get(prog_id, {})
        ns += int(after[prog_id].get("run_time_ns", 0)) - int(old.get("run_time_ns", 0))
        runs += int(after[prog_id].get("run_cnt", 0)) - int(old.get("run_cnt", 0))
    return ns, runs


def foreign_on_path(
    before: dict[int, dict[str, Any]], after: dict[int, dict[str, Any]], ours: set[int], ops: int
) -> list[str]:
    """Other people's programs that ran at least once per two operations during the workload: on its path.

    The machine is shared and other engineers' tests keep tracing programs
    loaded; only those the workload triggers change its numbers.
    """
    return sorted(
        f"{prog_id}:{after[prog_id].get('type')}:{after[prog_id].get('name', '?')}"
        for prog_id in after.keys() - ours
        if 2 * bpf_deltas(before, after, {prog_id})[1] >= max(ops, 1)
    )


def run_case(
    case: str, tracer: Tracer | None, workload: list[str], cpu: int | None, loop: LoopDevice | None
) -> dict[str, Any]:
    """Run ``workload`` bare or under ``tracer`` (attached first); return its numbers and the tracer's counts."""
    result: dict[str, Any] = {"case": case}
    proc: subprocess.Popen[bytes] | None = None
    try:
        if tracer is not None:
            started = time.monotonic()
            proc = _start(tracer)
            while not tracer.is_ready(proc):
                if proc.poll() is not None:
                    time.sleep(0.1)
                    stderr = tracer.stderr.read_text(errors="replace") if tracer.stderr else ""
                    result.update(
                        error=f"{tracer.name} exited with {proc.returncode} before attaching",
                        not_attachable=True,
                        attach_error=attach_error(stderr),
                    )
                    return result
                if time.monotonic() - started > READY_TIMEOUT_S:
                    result["error"] = f"{tracer.name} not ready after {READY_TIMEOUT_S:.0f}s"
                    return result
                time.sleep(0.02)
            result["tracer_startup_s"] = round(time.monotonic() - started, 2)
        argv = ["taskset", "-c", str(cpu), *workload] if cpu is not None else workload
        stat_before = loop.stat() if loop else None
        tracer_ns_before = task_cpu_ns(proc.pid) if proc is not None else 0
        programs_before = bpf_programs()
        cpu_before = cpu_times()
        work = subprocess.Popen(argv, stdout=subprocess.PIPE)
        assert work.stdout is not None
        output = work.stdout.read()
        status, user_s, sys_s = wait_with_rusage(work, 300)
        cpu_after = cpu_times()
        tracer_ns = task_cpu_ns(proc.pid) - tracer_ns_before if proc is not None else 0
        programs_after = bpf_programs()
        ours = _prog_ids_of(proc.pid) if proc is not None else set()
        if status != 0:
            result["error"] = f"workload exited with {status}: {output[-300:]!r}"
            return result
        stats = json.loads(output)
        ops = int(stats["ops"])
        result.update(
            rate=stats["rate"],
            ops=ops,
            failed_ops=stats["failed"],
            seconds=stats["seconds"],
            workload_cpu_us_per_op=round((user_s + sys_s) / ops * 1e6, 2) if ops else None,
            **cpu_fractions(cpu_before, cpu_after),
            foreign_bpf_programs=foreign_on_path(programs_before, programs_after, ours, ops),
        )
        if loop is not None and stat_before is not None:
            after = loop.stat()
            result["device_write_requests"] = after[4] - stat_before[4]
            result["device_data_writes"] = (after[6] - stat_before[6]) // 8  # 4 KiB each
            result["device_flushes"] = after[15] - stat_before[15]
        if tracer is not None and proc is not None:
            stop_started = time.monotonic()
            proc.send_signal(tracer.stop_signal)
            status, t_user_s, t_sys_s = wait_with_rusage(proc, STOP_TIMEOUT_S)
            proc = None
            tracer_cpu_s = t_user_s + t_sys_s
            result.update(
                tracer_stop_s=round(time.monotonic() - stop_started, 2),
                tracer_exit=status,
                tracer_cpu_s=round(tracer_cpu_s, 3),
                tracer_cpu_us_per_op=round(tracer_ns / ops / 1e3, 2) if ops else None,
            )
            bpf_ns, bpf_runs = bpf_deltas(programs_before, programs_after, ours)
            # Runs the kernel skipped because the program was already running on that CPU
            # (e.g. a completion in an interrupt nested inside another completion): lost to every tracer.
            result["bpf_recursion_misses"] = sum(
                int(programs_after[i].get("recursion_misses", 0))
                - int(programs_before.get(i, {}).get("recursion_misses", 0))
                for i in ours & programs_after.keys()
            )
            if bpf_runs and ops:
                # Every run of the tracer's programs while the workload ran, whoever triggered it.
                result.update(bpf_ns_per_op=round(bpf_ns / ops, 1), bpf_runs_per_op=round(bpf_runs / ops, 2))
            result.update(tracer.count(int(stats["pid"]), ops, loop.tracepoint_dev if loop else 0))
        return result
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        if tracer is not None:
            for path in tracer.files:
                with contextlib.suppress(OSError):
                    path.unlink()


def run_rounds(
    cases: dict[str, Callable[[str], Tracer | None]],
    workload: list[str],
    loop: LoopDevice | None,
) -> list[dict[str, Any]]:
    """Every case once per round, the order rotated each round; a tracer that cannot attach is tried once."""
    cpu, _ = _cpus()
    results: list[dict[str, Any]] = []
    unattachable: set[str] = set()
    names = list(cases)
    for round_index in range(ROUNDS):
        for name in _rotate(names, round_index):
            if name in unattachable:
                continue
            started = time.monotonic()
            try:
                result = run_case(name, cases[name](f"r{round_index}-{name}"), workload, cpu, loop)
            except Exception as exc:  # one broken case must not hide the others
                result = {"case": name, "error": f"{type(exc).__name__}: {exc}"}
            result.update(round=round_index, case_wall_s=round(time.monotonic() - started, 2))
            if result.get("not_attachable"):
                unattachable.add(name)
            results.append(result)
            print(f"  round {round_index} {name:<22} {_progress(result)}", file=sys.stderr)
    return results


def _progress(result: dict[str, Any]) -> str:
    if "error" in result:
        return f"error: {result['error']} {result.get('attach_error', '')}"
    line = f"{result['rate']:,.0f} ops/s"
    if "received_events" in result:
        line += f", events {result['received_events']:,}/{result['expected_events']:,}"
    if "kernel_drops" in result:
        line += f", drops {result['kernel_drops']}"
    if result.get("foreign_bpf_programs"):
        line += f" [foreign BPF programs on the path: {', '.join(result['foreign_bpf_programs'])}]"
    return line


# ---------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------

SUMMARY_KEYS = (
    "rate",
    "workload_cpu_us_per_op",
    "tracer_cpu_us_per_op",
    "received_events",
    "lost_events",
    "bpf_recursion_misses",
    "drops_total",
    "issue_unseen",
    "bpf_ns_per_op",
    "bpf_runs_per_op",
    "tracer_startup_s",
    "system_cpu_busy",
)


def summarise(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per case: medians and (min, max), the ratio of the median rate to bare's, errors."""
    by_case: dict[str, list[dict[str, Any]]] = {}
    for result in results:
        by_case.setdefault(result["case"], []).append(result)
    bare = median_of(_usable(by_case.get("bare", [])), "rate")
    summary: dict[str, dict[str, Any]] = {}
    for case, runs in by_case.items():
        ok = [r for r in runs if "error" not in r]
        usable = _usable(runs)
        entry: dict[str, Any] = {"runs": len(runs), "ok_runs": len(ok), "median_runs": len(usable)}
        for key in SUMMARY_KEYS:
            median = median_of(usable, key)
            if median is not None:
                entry[key] = median
                entry[f"{key}_range"] = spread_of(usable, key)
        if bare and entry.get("rate"):
            entry["ratio_to_bare"] = round(entry["rate"] / bare, 3)
        entry["rounds_with_foreign_bpf"] = sum(1 for r in runs if r.get("foreign_bpf_programs"))
        entry["errors"] = sorted({r["error"] for r in runs if "error" in r})
        entry["attach_errors"] = sorted({r["attach_error"] for r in runs if r.get("attach_error")})
        summary[case] = entry
    return summary


def report(benchmark: str, unit: str, results: list[dict[str, Any]], config: dict[str, Any]) -> dict[str, Any]:
    """Print the table and save everything to bench/results/families-<benchmark>.json."""
    summary = summarise(results)
    print(f"\n{benchmark}: {config['workload']}, medians of {ROUNDS} round(s)")
    header = (
        f"{'case':<22}{unit:>10}{'(min-max)':>20}{'vs bare':>9}{'work µs/op':>12}{'BPF ns/op':>11}"
        f"{'tracer µs/op':>14}{'events':>10}{'lost':>7}{'drops':>7}{'busy':>6}{'foreign':>9}"
    )
    print(header)
    print("-" * len(header))
    for case, entry in summary.items():
        spread = entry.get("rate_range")
        print(
            f"{case:<22}{_fmt(entry.get('rate')):>10}"
            f"{(f'{spread[0]:,.0f}-{spread[1]:,.0f}' if spread else '-'):>20}"
            f"{_fmt(entry.get('ratio_to_bare'), 3):>9}{_fmt(entry.get('workload_cpu_us_per_op'), 1):>12}"
            f"{_fmt(entry.get('bpf_ns_per_op')):>11}{_fmt(entry.get('tracer_cpu_us_per_op'), 2):>14}"
            f"{_fmt(entry.get('received_events')):>10}{_fmt(entry.get('lost_events')):>7}"
            f"{_fmt(entry.get('drops_total')):>7}{_fmt(entry.get('system_cpu_busy'), 2):>6}"
            f"{entry['rounds_with_foreign_bpf']:>9}"
        )
        for error in entry["errors"]:
            print(f"    error: {error}")
        for error in entry["attach_errors"]:
            print(f"    why: {error}")
    data = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_facts(),
        "jalki_tree": _tree_state(),
        "config": config | {"rounds": ROUNDS},
        "medians": summary,
        "runs": results,
    }
    output = BENCH_DIR / "results" / f"families-{benchmark}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {output}")
    return summary


def brief(run: dict[str, Any]) -> dict[str, Any]:
    """A run without its long lists, for assertion messages."""
    return {k: v for k, v in run.items() if k != "foreign_bpf_programs"}


def check_peers(results: list[dict[str, Any]], peers: list[str]) -> None:
    """Every peer ran in every round, or is reported as not attachable here with its error."""
    for peer in peers:
        runs = [r for r in results if r["case"] == peer]
        assert runs, f"{peer}: never run"
        if runs[0].get("not_attachable"):
            assert runs[0]["attach_error"], f"{peer}: not attachable, but no error captured"
            continue
        assert len(runs) == ROUNDS and all("error" not in r for r in runs), [r.get("error") for r in runs]


def _skipped_peer(results: list[dict[str, Any]], name: str, why: str) -> None:
    results.append({"case": name, "error": why, "not_attachable": True, "attach_error": why})


# ---------------------------------------------------------------------------
# The two benchmarks
# ---------------------------------------------------------------------------


@pytest.mark.kernel
@needs_root
def test_process_family_fork_exec(family_tools: FamilyTools) -> None:
    ft = family_tools
    cases: dict[str, Callable[[str], Tracer | None]] = {
        "bare": lambda _tag: None,
        "jalki_process": lambda tag: jalki_process_tracer(ft, tag, "process"),
        "jalki_process_exit": lambda tag: jalki_process_tracer(ft, tag, "process_exit"),
    }
    missing: list[tuple[str, str]] = []
    for tool in ("exitsnoop", "execsnoop"):
        if ft.libbpf_tools[tool]:
            cases[tool] = lambda tag, tool=tool: snoop_tracer(ft, tag, tool)
        else:
            missing.append((tool, f"{tool} not installed (apt install libbpf-tools)"))
    if ft.tools.bpftrace:
        cases["bpftrace_exit"] = lambda tag: bpftrace_tracer(ft, tag, "process")
    else:
        missing.append(("bpftrace_exit", "bpftrace not installed"))
    results = run_rounds(cases, [str(ft.fork_exec), str(EXECS)], None)
    for name, why in missing:
        _skipped_peer(results, name, why)
    report(
        "process",
        "execs/s",
        results,
        {"workload": f"fork → execv(/bin/true) → waitpid, {EXECS} per run, pinned", "execs": EXECS},
    )

    for result in results:
        if "error" not in result:
            assert result["ops"] == EXECS and result["failed_ops"] == 0, result
    for case in ("bare", "jalki_process", "jalki_process_exit"):
        runs = [r for r in results if r["case"] == case]
        assert len(runs) == ROUNDS and all("error" not in r for r in runs), [r.get("error") for r in runs]
    for run in (r for r in results if r["case"].startswith("jalki")):
        exec_expected = EXECS if run["case"] == "jalki_process" else 0
        assert (run["exec_events"], run["exit_events"]) == (exec_expected, EXECS), brief(run)
        assert run["lost_events"] == 0 and run["drops_total"] == 0 and run["emitter_events_dropped"] == 0, brief(run)
        assert run["emitter_errors"] == 0 and not run.get("summary_missing"), brief(run)
    check_peers(
        results,
        [name for name in (*cases, *(m[0] for m in missing)) if name not in ("bare",) and not name.startswith("jalki")],
    )


@pytest.mark.kernel
@needs_root
def test_storage_family_fsync_loop(family_tools: FamilyTools) -> None:
    ft = family_tools
    with loop_device() as loop:
        cases: dict[str, Callable[[str], Tracer | None]] = {
            "bare": lambda _tag: None,
            "jalki_block_io": lambda tag: jalki_block_tracer(ft, tag),
        }
        missing: list[tuple[str, str]] = []
        for tool in ("biolatency", "biosnoop"):
            if ft.libbpf_tools[tool]:
                cases[tool] = lambda tag, tool=tool: block_peer_tracer(ft, tag, tool, loop)
            else:
                missing.append((tool, f"{tool} not installed (apt install libbpf-tools)"))
        if ft.tools.bpftrace:
            cases["bpftrace_block"] = lambda tag: bpftrace_tracer(ft, tag, "block")
        else:
            missing.append(("bpftrace_block", "bpftrace not installed"))
        results = run_rounds(cases, [str(ft.fsync_loop), loop.path, str(FSYNCS)], loop)
    for name, why in missing:
        _skipped_peer(results, name, why)
    report(
        "storage",
        "fsyncs/s",
        results,
        {
            "workload": f"pwrite 4 KiB O_DIRECT → fsync on a tmpfs-backed loop device, {FSYNCS} per run, pinned",
            "fsyncs": FSYNCS,
        },
    )

    for result in (r for r in results if "error" not in r):
        # The work done, from the device's own counters: one data write and one flush request per fsync.
        assert result["ops"] == FSYNCS, result
        assert (result["device_data_writes"], result["device_flushes"]) == (FSYNCS, FSYNCS), result
    for case in ("bare", "jalki_block_io"):
        runs = [r for r in results if r["case"] == case]
        assert len(runs) == ROUNDS and all("error" not in r for r in runs), [r.get("error") for r in runs]
    for run in (r for r in results if r["case"] == "jalki_block_io"):
        # Every request the device served is in the histogram, but for runs the kernel skipped
        # (recursion) and the rare single request that every tracer here misses (README, "storage").
        assert 0 <= run["lost_events"] <= max(run["bpf_recursion_misses"], run["expected_events"] // 10_000), brief(run)
        assert run["histogram"].get("write", 0) <= run["device_data_writes"], brief(run)
        assert run["histogram"].get("flush", 0) <= run["device_flushes"], brief(run)
        assert run["drops_total"] == 0 and run["emitter_events_dropped"] == 0, brief(run)
        assert run["emitter_errors"] == 0 and not run.get("summary_missing"), brief(run)
    check_peers(
        results, [name for name in (*cases, *(m[0] for m in missing)) if name not in ("bare", "jalki_block_io")]
    )


# ---------------------------------------------------------------------------
# The counters, on canned output (no root needed)
# ---------------------------------------------------------------------------


def test_counters_on_canned_output() -> None:
    exitsnoop = (
        "PCOMM            PID     PPID    TID     AGE(s)  EXIT_CODE\n"
        "true             101     42      101     0.00    0\n"
        "true             102     7       102     0.00    0\n"
        "sh               103     42      103     0.00    code 1\n"
    )
    assert count_snoop(exitsnoop, 42, 2)["lost_events"] == 1
    bpftrace_exit = "Attaching 2 probes...\n101 42 true\n102 42 true\n103 42 sh\nLost 3 events\n"
    assert count_bpftrace_exit(bpftrace_exit, 42, 2) == {
        "expected_events": 2,
        "received_events": 2,
        "lost_events": 0,
        "lost_reported_by_bpftrace": 3,
    }
    dev = 7 << 20 | 3
    hist = (
        f"@usecs[{dev}]: \n[2, 4)    5 |@@@@@           |\n[4, 8)   15 |@@@@@@@@@@@@@@@@|\n\n"
        f"@usecs[{8 << 20}]: \n[1]       9 |@@@@@@@@@@@@@@@@|\n"
    )
    assert count_bpftrace_hist(hist, dev, 10)["received_events"] == 20
    biolatency = (
        "Tracing block device I/O... Hit Ctrl-C to end.\n\ndisk = loop3\n"
        "     usecs               : count    distribution\n"
        "         0 -> 1          : 0        |                                        |\n"
        "         2 -> 3          : 7        |****                                    |\n"
        "         4 -> 7          : 13       |****************************************|\n\n"
        "disk = vda\n     usecs               : count    distribution\n"
        "         8 -> 15         : 4        |****************************************|\n"
    )
    assert count_biolatency(biolatency, "loop3", 10)["received_events"] == 20
    assert "Operation not permitted" in attach_error(
        "libbpf: prog 'blk_account_io_start': BPF program load failed: Operation not permitted\n"
        "libbpf: failed to load object 'biosnoop_bpf'\nfailed to load BPF object: -1\n"
    )
