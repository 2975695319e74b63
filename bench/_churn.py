"""The churn cases: loopback connect/close throughput, bare and under each tracer.

Every case runs ``churn`` in a fresh private network namespace for a fixed
time, either pinned to one CPU (the tracer's user space can use the other) or
left to the scheduler (client and server threads then use both CPUs and
compete with the tracer). A
tracer is started first and churn only begins once the tracer is attached;
after churn exits (it waits until the server side has closed everything) the
tracer is stopped with the signal it flushes on, and its output is counted.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import (
    Tools,
    cpu_fractions,
    cpu_times,
    ndjson_events,
    private_netns,
    tracing_programs,
    wait_with_rusage,
)

CHURN_BYTES = 64
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 120.0

# bpftrace peer: the same two moments jalki reports (connect = CLOSE -> SYN_SENT,
# close = -> CLOSE), printed one line each. BEGIN runs after every probe is
# attached; it touches a file because bpftrace's output to a file is buffered.
BPFTRACE_SCRIPT = """
BEGIN { system("touch %(ready)s"); }
tracepoint:sock:inet_sock_set_state
/args->protocol == 6 && (args->newstate == 2 || args->newstate == 7)/
{
    printf("%%d %%s %%d %%d %%d %%d\\n", pid, comm, args->oldstate, args->newstate, args->sport, args->dport);
}
"""


@dataclass
class Tracer:
    """How to start, recognise as ready, stop and count one tracer."""

    name: str
    argv: list[str]
    stop_signal: int
    is_ready: Callable[[subprocess.Popen[bytes]], bool]
    count: Callable[[int, int, int], dict[str, Any]]  # (port, connections, client_pid) -> counts
    stdout: Path | None = None
    stderr: Path | None = None
    files: list[Path] = field(default_factory=list)


def _has_bpf_link(proc: subprocess.Popen[bytes]) -> bool:
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{proc.pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                if "bpf_link" in str(fd.readlink()):
                    return True
    return False


def _tail(path: Path | None, limit: int = 600) -> str:
    if path is None or not path.exists():
        return ""
    return path.read_text(errors="replace")[-limit:]


# ---------------------------------------------------------------------------
# jalki
# ---------------------------------------------------------------------------


def jalki_tracer(tools: Tools, tmp: Path, tag: str) -> Tracer:
    """``jalki run --plugin tcp --emit file:...`` with a summary JSON."""
    events = tmp / f"{tag}.ndjson"
    summary = tmp / f"{tag}.summary.json"
    stderr = tmp / f"{tag}.stderr"
    argv = [*tools.jalki, "run", "--plugin", "tcp", "--emit", f"file:{events}", "--summary-json", str(summary)]

    def ready(_proc: subprocess.Popen[bytes]) -> bool:
        return "tracing" in _tail(stderr, 100_000)

    def count(port: int, connections: int, client_pid: int) -> dict[str, Any]:
        return count_jalki(events, summary, port, connections, client_pid)

    return Tracer(
        "jalki", argv, signal.SIGTERM, ready, count, stdout=None, stderr=stderr, files=[events, summary, stderr]
    )


def count_jalki(events: Path, summary: Path, port: int, connections: int, client_pid: int) -> dict[str, Any]:
    """Count the churn's events in jalki's NDJSON and read its drop counters."""
    connect = connect_failed = close_client = close_server = retransmit = other = wrong_owner = 0
    for event in ndjson_events(events):
        kind = event.get("type")
        net = event.get("network_data") or {}
        sport, dport = net.get("src_port"), net.get("dst_port")
        if kind == "kernel.tcp.connect" and dport == port:
            connect += 1
            connect_failed += event.get("outcome") != "success"
        elif kind == "kernel.tcp.close" and dport == port:
            close_client += 1
        elif kind == "kernel.tcp.close" and sport == port:
            close_server += 1
        elif kind == "kernel.tcp.retransmit" and port in (sport, dport):
            retransmit += 1
        else:
            other += 1
            continue
        if (event.get("process_data") or {}).get("pid") != client_pid:
            wrong_owner += 1
    result: dict[str, Any] = {
        "connect_events": connect,
        "connect_failed_events": connect_failed,
        "close_events_client": close_client,
        "close_events_server": close_server,
        "retransmit_events": retransmit,
        "other_events": other,
        "wrong_owner_events": wrong_owner,
        "expected_events": 3 * connections,
        "received_events": connect + close_client + close_server,
        "lost_connect": connections - connect,
        "lost_close": 2 * connections - close_client - close_server,
    }
    result["lost_events"] = result["lost_connect"] + result["lost_close"]
    if summary.exists():
        data = json.loads(summary.read_text())
        drops: dict[str, int] = {}
        run_ns = run_count = 0
        for probe in data.get("probes", []):
            for cause, value in (probe.get("drops") or {}).items():
                drops[cause] = drops.get(cause, 0) + int(value)
            run_ns += int(probe.get("run_time_ns") or 0)
            run_count += int(probe.get("run_count") or 0)
        result["kernel_drops"] = drops
        result["drops_total"] = sum(drops.values())
        emitters = data.get("emitters", {}).values()
        result["emitter_events_dropped"] = sum(int(e.get("events_dropped", 0)) for e in emitters)
        result["emitter_errors"] = sum(int(e.get("errors", 0)) for e in emitters)
        result["attach"] = {p["probe"]: p.get("attach") for p in data.get("probes", [])}
        result["bpf_run_time_s"] = round(run_ns / 1e9, 4)
        result["bpf_ns_per_run"] = round(run_ns / run_count, 1) if run_count else None
        result["bpf_runs"] = run_count
    else:
        result["summary_missing"] = True
    return result


# ---------------------------------------------------------------------------
# libbpf-tools tcplife
# ---------------------------------------------------------------------------


def tcplife_tracer(tools: Tools, tmp: Path, tag: str) -> Tracer:
    """libbpf-tools ``tcplife`` with stdout to a file (block-buffered)."""
    assert tools.tcplife is not None
    out = tmp / f"{tag}.txt"
    stderr = tmp / f"{tag}.stderr"

    def count(port: int, connections: int, client_pid: int) -> dict[str, Any]:
        client = server = 0
        for line in out.read_text(errors="replace").splitlines()[1:]:
            cols = line.split()
            # PID COMM LADDR LPORT RADDR RPORT TX_KB RX_KB MS (COMM may hold spaces: index from the right)
            if len(cols) < 9:
                continue
            lport, rport = cols[-6], cols[-4]
            if rport == str(port):
                client += 1
            elif lport == str(port):
                server += 1
        return {
            "close_events_client": client,
            "close_events_server": server,
            "expected_events": 2 * connections,
            "received_events": client + server,
            "lost_events": 2 * connections - client - server,
        }

    return Tracer(
        "tcplife", [tools.tcplife], signal.SIGINT, _has_bpf_link, count, stdout=out, stderr=stderr, files=[out, stderr]
    )


# ---------------------------------------------------------------------------
# bpftrace
# ---------------------------------------------------------------------------


def bpftrace_tracer(tools: Tools, tmp: Path, tag: str) -> Tracer:
    """bpftrace on ``sock:inet_sock_set_state`` printing connects and closes to a file."""
    assert tools.bpftrace is not None
    out = tmp / f"{tag}.txt"
    # bpftrace strings are at most 64 bytes: keep the touch command short.
    ready_file = tmp / f"{zlib.crc32(tag.encode()):08x}.rdy"
    stderr = tmp / f"{tag}.stderr"
    script = BPFTRACE_SCRIPT % {"ready": ready_file}
    argv = [tools.bpftrace, "--unsafe", "-o", str(out), "-e", script]

    def ready(_proc: subprocess.Popen[bytes]) -> bool:
        return ready_file.exists()

    def count(port: int, connections: int, client_pid: int) -> dict[str, Any]:
        connect = client = server = lost_reported = 0
        for line in out.read_text(errors="replace").splitlines():
            if line.startswith("Lost "):
                with contextlib.suppress(ValueError, IndexError):
                    lost_reported += int(line.split()[1])
                continue
            cols = line.split()
            if len(cols) < 6 or not cols[-1].isdigit():
                continue
            oldstate, newstate, sport, dport = (int(c) for c in cols[-4:])
            if newstate == 2 and dport == port:
                connect += 1
            elif newstate == 7 and oldstate != 10 and dport == port:
                client += 1
            elif newstate == 7 and oldstate != 10 and sport == port:
                server += 1
        return {
            "connect_events": connect,
            "close_events_client": client,
            "close_events_server": server,
            "expected_events": 3 * connections,
            "received_events": connect + client + server,
            "lost_events": 3 * connections - connect - client - server,
            "lost_reported_by_bpftrace": lost_reported,
        }

    return Tracer(
        "bpftrace", argv, signal.SIGINT, ready, count, stdout=None, stderr=stderr, files=[out, ready_file, stderr]
    )


TRACERS: dict[str, Callable[[Tools, Path, str], Tracer]] = {
    "jalki": jalki_tracer,
    "tcplife": tcplife_tracer,
    "bpftrace": bpftrace_tracer,
}


# ---------------------------------------------------------------------------
# One churn case
# ---------------------------------------------------------------------------


def _start(tracer: Tracer) -> subprocess.Popen[bytes]:
    with contextlib.ExitStack() as stack:
        stdout = stack.enter_context(tracer.stdout.open("wb")) if tracer.stdout else subprocess.DEVNULL
        stderr = stack.enter_context(tracer.stderr.open("wb")) if tracer.stderr else subprocess.DEVNULL
        return subprocess.Popen(tracer.argv, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr)


def run_churn_case(
    tools: Tools,
    tmp: Path,
    case: str,
    tracer_name: str | None,
    seconds: float,
    tag: str,
    churn_cpu: int | None,
    keep_files: bool = False,
) -> dict[str, Any]:
    """Run churn for ``seconds`` bare (``tracer_name`` None) or under a tracer; return its numbers.

    ``churn_cpu``: pin churn to this CPU, or None to leave it to the scheduler.
    """
    result: dict[str, Any] = {"case": case}
    tracer = TRACERS[tracer_name](tools, tmp, tag) if tracer_name else None
    proc: subprocess.Popen[bytes] | None = None
    try:
        with private_netns(f"jalkibench-{os.getpid()}-{tag}") as netns:
            if tracer is not None:
                started = time.monotonic()
                proc = _start(tracer)
                while not tracer.is_ready(proc):
                    if proc.poll() is not None:
                        result["error"] = f"{tracer.name} exited with {proc.returncode}: {_tail(tracer.stderr)}"
                        return result
                    if time.monotonic() - started > READY_TIMEOUT_S:
                        result["error"] = f"{tracer.name} not ready after {READY_TIMEOUT_S:.0f}s"
                        return result
                    time.sleep(0.05)
                result["tracer_startup_s"] = round(time.monotonic() - started, 2)
            exclude = [proc.pid] if proc is not None else []
            foreign_start = tracing_programs(exclude)

            argv = ["ip", "netns", "exec", netns]
            if churn_cpu is not None:
                argv += ["taskset", "-c", str(churn_cpu)]
            argv += [str(tools.churn), "-s", str(seconds), "-b", str(CHURN_BYTES)]
            cpu_before = cpu_times()
            churn = subprocess.Popen(argv, stdout=subprocess.PIPE)
            assert churn.stdout is not None
            output = churn.stdout.read()
            status, churn_user_s, churn_sys_s = wait_with_rusage(churn, seconds + 60)
            churn_cpu_s = churn_user_s + churn_sys_s
            cpu_after = cpu_times()
            foreign_end = tracing_programs(exclude)
            if status != 0:
                result["error"] = f"churn exited with {status}"
                return result
            stats = json.loads(output)
            connections = int(stats["connections"])
            result.update(
                rate=stats["rate"],
                connections=connections,
                failed_connects=stats["failed"],
                server_closed=stats["server_closed"],
                seconds=stats["seconds"],
                churn_cpu_s=round(churn_cpu_s, 3),
                churn_cpu_us_per_conn=round(churn_cpu_s / connections * 1e6, 2) if connections else None,
                **cpu_fractions(cpu_before, cpu_after),
                foreign_bpf_programs=sorted(set(foreign_start) | set(foreign_end)),
            )

            if tracer is not None and proc is not None:
                stop_started = time.monotonic()
                proc.send_signal(tracer.stop_signal)
                status, tracer_user_s, tracer_sys_s = wait_with_rusage(proc, STOP_TIMEOUT_S)
                tracer_cpu_s = tracer_user_s + tracer_sys_s
                result["tracer_stop_s"] = round(time.monotonic() - stop_started, 2)
                result["tracer_exit"] = status
                result["tracer_cpu_s"] = round(tracer_cpu_s, 3)
                result["tracer_user_s"] = round(tracer_user_s, 3)
                result["tracer_sys_s"] = round(tracer_sys_s, 3)
                result["tracer_cpu_us_per_conn"] = round(tracer_cpu_s / connections * 1e6, 2) if connections else None
                proc = None
                result.update(tracer.count(int(stats["port"]), connections, int(stats["client_pid"])))
                received = result.get("received_events")
                if received:
                    result["tracer_cpu_us_per_event"] = round(tracer_cpu_s / received * 1e6, 2)
        return result
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        if tracer is not None and not keep_files:
            for path in tracer.files:
                with contextlib.suppress(OSError):
                    path.unlink()
