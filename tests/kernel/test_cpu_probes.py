"""jalki-cpu on the real kernel: no PMU here, so the probe says why; the same code on software counters, for real.

This VM has no hardware performance counters (perf_event_open(PERF_TYPE_HARDWARE)
fails with ENOENT), so ``cpu_ipc`` must report itself unavailable with that
reason and ``jalki run`` must fail without inventing numbers. Everything else
is exercised by :class:`SoftwareIpcProbe`, the same probe (same BPF object,
rungs, map wiring, decoder) with software events in the counter slots:
PERF_COUNT_SW_CPU_CLOCK where cycles go and PERF_COUNT_SW_TASK_CLOCK where
instructions go. Both count nanoseconds while a task runs, so each of them
must equal the on-CPU time the kernel side measures, and the sum of that over
a child process must equal the CPU time the kernel charged to it (wait4's
rusage). On a machine with a PMU the hardware test runs as well.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from jalki_cpu import perf
from jalki_cpu.probes import CpuIpcProbe
from netns_helpers import Trace, tracing
from rung_helpers import RUNGS, check_rung, on_rung

from jalki_core.loader import ProbeOptions
from jalki_core.testing import event_validator

pytestmark = pytest.mark.kernel
validate = event_validator()
JALKI = str(Path(sys.executable).with_name("jalki"))
MS = 1_000_000
ENOENT_LINE = ("perf_event_open(PERF_TYPE_HARDWARE, CPU_CYCLES) failed with ENOENT: this machine exposes no "
               "hardware performance counters (a VM without a virtual PMU)")

# Two threads hash a 1 MiB buffer (hashlib releases the GIL) until each used
# `seconds` of CPU time; it waits for a line on stdin before it starts.
BURN = """
import hashlib, sys, threading, time
sys.stdin.readline()
def burn():
    data = b"x" * (1 << 20)
    end = time.thread_time() + {seconds}
    while time.thread_time() < end:
        hashlib.sha256(data).digest()
threads = [threading.Thread(target=burn) for _ in range({threads})]
for t in threads:
    t.start()
for t in threads:
    t.join()
"""


class SoftwareIpcProbe(CpuIpcProbe):
    """Test-only variant: cpu-clock and task-clock software events in the cycles and instructions slots."""

    counters = (perf.SW_CPU_CLOCK, perf.SW_TASK_CLOCK, None, None)
    counter_type = "software"


def _steal_ns() -> int:
    """Steal time of all CPUs so far (/proc/stat, USER_HZ ticks of 10 ms): the hypervisor ran something else."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return int(fields[8]) * 10 * MS


class Burner:
    """A child process that burns CPU in ``threads`` threads once told to (:meth:`go`)."""

    def __init__(self, threads: int = 2, seconds: float = 0.3) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", BURN.format(threads=threads, seconds=seconds)],
                                     stdin=subprocess.PIPE, text=True)
        self.pid = self.proc.pid
        self.cpu_ns = 0
        self.steal_ns = 0

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Wait until it started up and sleeps on stdin, so no time slice of it straddles an attach."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
            if stat.rsplit(")", 1)[1].split()[0] == "S" and "read" in Path(f"/proc/{self.pid}/wchan").read_text():
                return
            time.sleep(0.01)
        raise AssertionError(f"burner {self.pid} did not start up")

    def _cpu_so_far(self) -> int:
        """CPU time of every thread so far (ns, the scheduler's sum_exec_runtime)."""
        return sum(int(Path(task, "schedstat").read_text().split()[0])
                   for task in Path(f"/proc/{self.pid}/task").iterdir())

    def go(self) -> None:
        """Start burning and wait for the exit; ``cpu_ns`` is then the CPU time it used from now on."""
        assert self.proc.stdin is not None
        before, steal_before = self._cpu_so_far(), _steal_ns()
        self.proc.stdin.write("go\n")
        self.proc.stdin.close()
        _, status, usage = os.wait4(self.pid, 0)
        self.steal_ns = _steal_ns() - steal_before
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        assert self.proc.returncode == 0
        self.cpu_ns = round((usage.ru_utime + usage.ru_stime) * 1e9) - before

    def close(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            self.proc.wait()


@contextmanager
def burner(threads: int = 2, seconds: float = 0.3) -> Iterator[Burner]:
    """A :class:`Burner`, killed if the test leaves before it exited."""
    child = Burner(threads, seconds)
    try:
        yield child
    finally:
        child.close()


def ipc_events_of(trace: Trace, pid: int) -> list[dict[str, Any]]:
    return [e for e in trace.events("kernel.cpu.ipc") if e["process_data"]["pid"] == pid]


def check_software_counts(events: list[dict[str, Any]], child: Burner, trace: Trace) -> None:
    """Clock counters equal the counted run time per event; the run time adds up to the child's CPU time.

    ``run_ns`` is the scheduler's run time (``sum_exec_runtime``), per thread,
    so the child's records add up to the CPU time wait4 reports, even when
    the tracepoint did not report some switches: on the project's VMs it
    never reports some tasks' switch-outs (the VM agent's threads), and the
    task switched in at such a switch is then seen leaving a CPU it was not
    seen enter (``switch_unseen``). Such a slice has no counter deltas, so
    ``counted_ratio`` may be below 1 in a session that counted such switches
    (exactly 1 otherwise, unless a slice was scaled) and the counters equal
    the counted share of ``run_ns``. The clock counters run from switch-in to
    switch-out, through the time the hypervisor ran something else (steal,
    which is not run time), so they may exceed it by the steal that fell into
    their slices: at most the steal of all CPUs meanwhile, plus a tick of its
    counter (also when the counter did not move: its ticks truncate a running
    total).

    The process's records end with its one ``exit`` record, unless the stretch
    it ran after its last ``interval`` record was shorter than the probe's
    ``min_run_ns`` (such an interval is not emitted, exit or not; documented):
    the kernel cannot promise the child's final stretch is longer (its last
    interval may close at any switch-out near its end), so then it ends with an
    ``interval`` and the run-time sum, within that 1 ms, still checks the tail.
    """
    assert trace.summary is not None
    unseen = sum(stats.kernel_drops.get("switch_unseen", 0) for stats in trace.summary.probes)
    # /proc/stat counts steal in 10 ms ticks of a running total: a delta of 0 ticks may still be up to one tick
    steal = child.steal_ns + 10 * MS
    for event in events:
        validate(event)
        data = event["data"]
        assert data["counter_type"] == "software" and 0 < data["counted_ratio"] <= 1.0
        assert data["counted_ratio"] == 1.0 or unseen or data["multiplexed_switches"], data
        assert data["stalled_cycles_frontend"] is None and data["stalled_cycles_backend"] is None
        # counted share of run_ns; a slice the perf event ran only part of is scaled up to all of it (the
        # counts then estimate the whole slice, multiplexed_switches says so)
        counted_ns = data["counted_ratio"] * data["run_ns"]
        most = data["run_ns"] if data["multiplexed_switches"] else counted_ns
        for counter in ("cycles", "instructions"):
            tolerance = 0.02 * data["run_ns"] + MS
            assert counted_ns - tolerance <= data[counter] <= most + tolerance + steal, (counter, data, steal)
        assert event["process_data"]["command"]
    reasons = [e["data"]["reason"] for e in events]
    assert reasons.count("exit") <= 1 and reasons.count("session_end") == 0, reasons
    assert reasons[-1] == "exit" or reasons.count("exit") == 0, reasons
    # the scheduler's run time of every thread, summed: what wait4 reports (within its microseconds), less at
    # most the final stretch under min_run_ns; on the tracepoint rung, which cannot reach the thread switched in,
    # a thread's first slice is timed from its switch-in to its switch-out, through any steal that fell into it
    total, cpu_ns = sum(e["data"]["run_ns"] for e in events), child.cpu_ns
    assert 0.97 * cpu_ns - 5 * MS <= total <= 1.03 * cpu_ns + 5 * MS + steal, (total, cpu_ns, child.steal_ns, unseen)
    ipcs = [e["data"]["ipc"] for e in events if e["data"]["cycles"] >= 10 * MS]
    assert ipcs and all(0.95 <= ipc <= 1.05 for ipc in ipcs), ipcs


# -- hardware counters: measured where they exist, reported unavailable where not (this VM) ----------


def test_hardware_counters_measure_or_the_probe_says_why(tmp_path: Path) -> None:
    reason = CpuIpcProbe().unavailable_reason()
    if reason is None:
        _measure_hardware_counters()
        return
    if "ENOENT" in reason:
        assert reason == ENOENT_LINE
    summary_path = tmp_path / "summary.json"
    proc = subprocess.run([JALKI, "run", "--plugin", "cpu", "--seconds", "1", "--summary-json", str(summary_path)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1, proc.stderr
    assert "no probe could be attached" in proc.stderr and "not attached" in proc.stderr
    assert proc.stdout == ""  # not one event
    [stats] = json.loads(summary_path.read_text())["probes"]
    assert (stats["probe"], stats["attach"], stats["events"], stats["failed_rungs"]) == ("cpu_ipc", None, 0, [])
    assert stats["error"].startswith(f"probe cpu_ipc is unavailable here: {reason} (")
    # no rung was tried, so the summary's note for the probe is its error, whole (wrapped at spaces to fit
    # the terminal's width, so compared with the line breaks folded)
    assert f"cpu_ipc: not attached: {stats['error']}" in " ".join(proc.stderr.split()), proc.stderr


def test_doctor_is_unaffected_by_the_cpu_plugin() -> None:
    proc = subprocess.run([JALKI, "doctor", "--json"], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    checks = {check["name"]: check["status"] for check in json.loads(proc.stdout)["checks"]}
    assert checks["attach tp_btf"] == "ok" and checks["attach tracepoint"] == "ok"


# -- the same probe on software counters: real attach, real map wiring, real numbers ---


@pytest.mark.parametrize("rung", RUNGS)
def test_software_counters_measure_a_busy_child_exactly(rung: str) -> None:
    probe = on_rung(SoftwareIpcProbe(interval_ns=100 * MS), rung)
    assert probe.unavailable_reason() is None
    with burner(threads=2, seconds=0.3) as child:
        child.wait_ready()
        with tracing([probe]) as trace:
            child.go()
            time.sleep(0.1)  # let the drain thread take the exit record
    events = ipc_events_of(trace, child.pid)
    check_rung(probe, rung, events)
    check_software_counts(events, child, trace)
    # two threads burned 0.3 s each: the process ran about 0.6 s in total
    assert sum(e["data"]["run_ns"] for e in events) >= 500 * MS
    assert isinstance(probe, SoftwareIpcProbe)
    assert probe.opened == {"cycles": len(perf.online_cpus()), "instructions": len(perf.online_cpus()),
                            "stalled_cycles_frontend": 0, "stalled_cycles_backend": 0}
    assert trace.summary is not None
    [stats] = trace.summary.probes
    assert stats.rung == events[0]["attach"] and stats.error is None
    assert stats.kernel_drops["ringbuf_full"] == 0 and stats.kernel_drops["tracking_full"] == 0


def test_pid_filter_applies_in_the_kernel_and_open_intervals_end_the_session() -> None:
    probe = SoftwareIpcProbe(interval_ns=10_000 * MS)  # longer than the test: only exit / session_end
    with burner(threads=1, seconds=0.2) as child:
        child.wait_ready()
        with tracing([probe], ProbeOptions(filter_pid=child.pid)) as trace:
            child.go()
            time.sleep(0.1)
        events = trace.events("kernel.cpu.ipc")
    assert events and {e["process_data"]["pid"] for e in events} == {child.pid}
    assert [e["data"]["reason"] for e in events] == ["exit"]
    check_software_counts(events, child, trace)
    # a process still running when the session stops is reported from the kernel's map
    late: Burner | None = None
    steal_before = _steal_ns()
    try:
        with tracing([SoftwareIpcProbe(interval_ns=10_000 * MS)]) as trace:
            late = Burner(threads=1)
            time.sleep(0.3)  # it starts up (tens of ms of CPU), then waits on stdin
    finally:
        if late is not None:
            late.close()
    [pending] = ipc_events_of(trace, late.pid)
    validate(pending)
    assert pending["data"]["reason"] == "session_end"
    assert 1 * MS <= pending["data"]["run_ns"] <= 300 * MS
    # counted_ratio < 1 where a slice's switch-in went unreported; the clock counters run through steal, which
    # is not run time (see check_software_counts)
    counted_ns = pending["data"]["counted_ratio"] * pending["data"]["run_ns"]
    most = pending["data"]["run_ns"] if pending["data"]["multiplexed_switches"] else counted_ns
    steal = _steal_ns() - steal_before + 10 * MS
    assert counted_ns - 0.02 * pending["data"]["run_ns"] - MS <= pending["data"]["cycles"] <= most + 2 * MS + steal


def _measure_hardware_counters() -> None:
    """Where the machine has a PMU: real cycles and instructions of a busy child."""
    probe = CpuIpcProbe(interval_ns=100 * MS)
    with burner(threads=2, seconds=0.3) as child:
        child.wait_ready()
        with tracing([probe]) as trace:
            child.go()
            time.sleep(0.1)
    events = ipc_events_of(trace, child.pid)
    reasons = [e["data"]["reason"] for e in events]  # exit last, unless its last stretch was < min_run_ns
    assert events and reasons.count("exit") <= 1 and (reasons[-1] == "exit" or "exit" not in reasons), reasons
    for event in events:
        validate(event)
        data = event["data"]
        assert data["counter_type"] == "hardware" and data["counted_ratio"] > 0
        assert data["cycles"] > 0 and data["instructions"] > 0 and data["ipc"] > 0
    cycles = sum(e["data"]["cycles"] for e in events)
    run_ns = sum(e["data"]["run_ns"] for e in events)
    assert 0.1 <= cycles / run_ns <= 10.0  # between 100 MHz and 10 GHz while it ran
