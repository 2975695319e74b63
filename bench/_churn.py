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
    root_tw_buckets,
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

# churn_full's bpftrace peer: the same two moments plus every reset, like jalki-tcp's tcp_reset
# (sent: the socket's ports, inet_sport kept after close unhashed it; received: the tracepoint's).
BPFTRACE_FULL_SCRIPT = (
    BPFTRACE_SCRIPT
    + """
tracepoint:tcp:tcp_send_reset
{
    $sk = (struct sock *)args->skaddr;
    if ($sk != 0) {
        $s = ((struct inet_sock *)$sk)->inet_sport;
        $d = $sk->__sk_common.skc_dport;
        printf("%%d %%s rst_sent %%d %%d %%d\\n", pid, comm, args->state,
               (($s & 0xff) << 8) | ($s >> 8), (($d & 0xff) << 8) | ($d >> 8));
    } else {
        printf("%%d %%s rst_sent 0 0 0\\n", pid, comm);
    }
}
tracepoint:tcp:tcp_receive_reset
{
    printf("%%d %%s rst_received 0 %%d %%d\\n", pid, comm, args->sport, args->dport);
}
"""
)


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


def jalki_tracer(tools: Tools, tmp: Path, tag: str, full: bool = False) -> Tracer:
    """``jalki run --plugin tcp --emit file:...`` with a summary JSON.

    ``full``: count every event type of an ``SO_LINGER {1,0}`` churn (:func:`count_jalki_full`).
    """
    events = tmp / f"{tag}.ndjson"
    summary = tmp / f"{tag}.summary.json"
    stderr = tmp / f"{tag}.stderr"
    argv = [*tools.jalki, "run", "--plugin", "tcp", "--emit", f"file:{events}", "--summary-json", str(summary)]

    def ready(_proc: subprocess.Popen[bytes]) -> bool:
        return "tracing" in _tail(stderr, 100_000)

    def count(port: int, connections: int, client_pid: int) -> dict[str, Any]:
        if full:
            return count_jalki_full(events, summary, port, connections, client_pid)
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
    result.update(read_jalki_summary(summary))
    return result


def read_jalki_summary(summary: Path) -> dict[str, Any]:
    """Drops by cause (all probes, and per probe), emitter drops and BPF run time from ``--summary-json``."""
    if not summary.exists():
        return {"summary_missing": True}
    data = json.loads(summary.read_text())
    drops: dict[str, int] = {}
    by_probe: dict[str, dict[str, int]] = {}
    run_ns = run_count = 0
    for probe in data.get("probes", []):
        mine = by_probe.setdefault(probe["probe"], {})
        for cause, value in (probe.get("drops") or {}).items():
            drops[cause] = drops.get(cause, 0) + int(value)
            if int(value):
                mine[cause] = int(value)
        run_ns += int(probe.get("run_time_ns") or 0)
        run_count += int(probe.get("run_count") or 0)
    emitters = data.get("emitters", {}).values()
    return {
        "kernel_drops": drops,
        "drops_by_probe": by_probe,
        "drops_total": sum(drops.values()),
        "emitter_events_dropped": sum(int(e.get("events_dropped", 0)) for e in emitters),
        "emitter_errors": sum(int(e.get("errors", 0)) for e in emitters),
        "attach": {p["probe"]: p.get("attach") for p in data.get("probes", [])},
        "probe_errors": {p["probe"]: p["error"] for p in data.get("probes", []) if p.get("error")},
        "bpf_run_time_s": round(run_ns / 1e9, 4),
        "bpf_ns_per_run": round(run_ns / run_count, 1) if run_count else None,
        "bpf_runs": run_count,
    }


# What one SO_LINGER {1,0} connection of churn makes in jalki-tcp (bench/README.md, "churn_full"):
# (type, side, direction) -> events per connection. Side: client = dst_port is churn's port,
# server = src_port is. rtt aggregates are per key and window, not per connection.
FULL_EXPECTED_PER_CONNECTION: dict[str, int] = {
    "connect": 1,
    "close_client": 1,
    "close_server": 1,
    "reset_sent": 1,
    "reset_received": 1,
}


def classify_full_event(event: dict[str, Any], port: int) -> str | None:
    """The :data:`FULL_EXPECTED_PER_CONNECTION` key (or ``rtt_active``/``rtt_passive``) of one of churn's events.

    ``None`` for events of other traffic, and ``other:<type>`` for events of
    churn's port that no connection should make (e.g. a failed connect,
    a retransmit, a reset in an unexpected direction).
    """
    kind = event.get("type")
    net = event.get("network_data") or {}
    data = event.get("data") or {}
    sport, dport = net.get("src_port"), net.get("dst_port")
    if kind == "kernel.tcp.rtt":
        if data.get("direction") == "passive" and data.get("local_port") == port:
            return "rtt_passive"
        if data.get("direction") in ("active", "unknown") and dport == port:
            return "rtt_active"
        return None
    client, server = dport == port, sport == port
    if not (client or server):
        return None
    if kind == "kernel.tcp.connect" and client and event.get("outcome") == "success":
        return "connect"
    if kind == "kernel.tcp.close":
        return "close_client" if client else "close_server"
    if kind == "kernel.tcp.reset":
        if client and data.get("direction") == "sent":
            # tcp_state null: a RST sent with no socket, e.g. answering the server's segment that
            # reached the client after its socket was gone; not one per connection.
            return "reset_sent" if data.get("tcp_state") is not None else "other:kernel.tcp.reset(no socket)"
        if server and data.get("direction") == "received":
            return "reset_received"
    return f"other:{kind}"


def rtt_window_gaps(window_starts: list[str], interval_ms: int) -> tuple[int, int]:
    """(windows received, windows missing between the first and the last) of one RTT key.

    Churn samples every window it runs through, so a key's windows are
    contiguous: a gap is a lost aggregate. ``window_starts`` are RFC 3339
    timestamps (``2026-12-06T22:28:50.292847478Z``), duplicates counted once.
    """
    if not window_starts:
        return 0, 0
    step_ns = interval_ms * 1_000_000
    indexes = {_rfc3339_ns(text) // step_ns for text in window_starts}
    return len(indexes), (max(indexes) - min(indexes) + 1) - len(indexes)


def _rfc3339_ns(text: str) -> int:
    import datetime as dt

    whole, _, fraction = text.rstrip("Z").partition(".")
    seconds = dt.datetime.fromisoformat(whole).replace(tzinfo=dt.UTC).timestamp()
    return int(seconds) * 1_000_000_000 + int((fraction + "000000000")[:9])


def count_jalki_full(events: Path, summary: Path, port: int, connections: int, client_pid: int) -> dict[str, Any]:
    """Count churn_full's events in jalki's NDJSON by type and side; lost per type; drops by cause and probe."""
    received = dict.fromkeys(FULL_EXPECTED_PER_CONNECTION, 0)
    unexpected: dict[str, int] = {}
    unowned_server = unowned_client = wrong_owner = other = 0
    rtt_windows: dict[str, list[str]] = {"rtt_active": [], "rtt_passive": []}
    rtt_samples = dict.fromkeys(rtt_windows, 0)
    interval_ms = 1000
    for event in ndjson_events(events):
        key = classify_full_event(event, port)
        if key is None:
            other += 1
            continue
        if key in rtt_windows:
            data = event.get("data") or {}
            rtt_windows[key].append(str(data.get("window_start")))
            rtt_samples[key] += int(data.get("samples") or 0)
            interval_ms = int(data.get("interval_ms") or interval_ms)
            continue
        if key.startswith("other:"):
            unexpected[key[6:]] = unexpected.get(key[6:], 0) + 1
            continue
        received[key] += 1
        pid = (event.get("process_data") or {}).get("pid")
        if pid is None:
            if key in ("close_server", "reset_received"):
                unowned_server += 1
            else:
                unowned_client += 1
        elif pid != client_pid:
            wrong_owner += 1
    lost = {key: per * connections - received[key] for key, per in FULL_EXPECTED_PER_CONNECTION.items()}
    result: dict[str, Any] = {
        "events_by_kind": received,
        "expected_by_kind": {key: per * connections for key, per in FULL_EXPECTED_PER_CONNECTION.items()},
        "lost_by_kind": lost,
        "unexpected_events": unexpected,
        "other_events": other,
        "unowned_server_events": unowned_server,
        "unowned_client_events": unowned_client,
        "wrong_owner_events": wrong_owner,
        "expected_events": sum(FULL_EXPECTED_PER_CONNECTION.values()) * connections,
        "received_events": sum(received.values()),
        "lost_events": sum(lost.values()),
        "lost_connect": lost["connect"],
        "lost_close": lost["close_client"] + lost["close_server"],
        "lost_reset": lost["reset_sent"] + lost["reset_received"],
    }
    rtt: dict[str, dict[str, int]] = {}
    for key, starts in rtt_windows.items():
        windows, gaps = rtt_window_gaps(starts, interval_ms)
        rtt[key] = {"events": len(starts), "windows": windows, "missing_windows": gaps, "samples": rtt_samples[key]}
    result["rtt"] = rtt
    result["lost_rtt_windows"] = sum(entry["missing_windows"] for entry in rtt.values())
    result.update(read_jalki_summary(summary))
    for cause, value in result.get("kernel_drops", {}).items():
        result[f"drops_{cause}"] = value  # flat, so that run_bench takes medians per cause
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


def bpftrace_tracer(tools: Tools, tmp: Path, tag: str, full: bool = False) -> Tracer:
    """bpftrace on ``sock:inet_sock_set_state`` printing connects and closes to a file.

    ``full``: also every reset sent and received (``tcp:tcp_send_reset``, ``tcp:tcp_receive_reset``),
    expected one of each per ``SO_LINGER {1,0}`` connection.
    """
    assert tools.bpftrace is not None
    out = tmp / f"{tag}.txt"
    # bpftrace strings are at most 64 bytes: keep the touch command short.
    ready_file = tmp / f"{zlib.crc32(tag.encode()):08x}.rdy"
    stderr = tmp / f"{tag}.stderr"
    script = (BPFTRACE_FULL_SCRIPT if full else BPFTRACE_SCRIPT) % {"ready": ready_file}
    argv = [tools.bpftrace, "--unsafe", "-o", str(out), "-e", script]

    def ready(_proc: subprocess.Popen[bytes]) -> bool:
        return ready_file.exists()

    def count(port: int, connections: int, client_pid: int) -> dict[str, Any]:
        connect = client = server = lost_reported = rst_sent = rst_received = 0
        for line in out.read_text(errors="replace").splitlines():
            if line.startswith("Lost "):
                with contextlib.suppress(ValueError, IndexError):
                    lost_reported += int(line.split()[1])
                continue
            cols = line.split()
            if len(cols) < 6 or not cols[-1].isdigit():
                continue
            if cols[-4] in ("rst_sent", "rst_received"):
                rsport, rdport = int(cols[-2]), int(cols[-1])
                if cols[-4] == "rst_sent" and rdport == port:
                    rst_sent += 1
                elif cols[-4] == "rst_received" and rsport == port:
                    rst_received += 1
                continue
            oldstate, newstate, sport, dport = (int(c) for c in cols[-4:])
            if newstate == 2 and dport == port:
                connect += 1
            elif newstate == 7 and oldstate != 10 and dport == port:
                client += 1
            elif newstate == 7 and oldstate != 10 and sport == port:
                server += 1
        result = {
            "connect_events": connect,
            "close_events_client": client,
            "close_events_server": server,
            "expected_events": 3 * connections,
            "received_events": connect + client + server,
            "lost_events": 3 * connections - connect - client - server,
            "lost_reported_by_bpftrace": lost_reported,
        }
        if full:
            result.update(
                reset_sent_events=rst_sent,
                reset_received_events=rst_received,
                expected_events=5 * connections,
                received_events=result["received_events"] + rst_sent + rst_received,
                lost_events=result["lost_events"] + 2 * connections - rst_sent - rst_received,
                lost_connect=connections - connect,
                lost_close=2 * connections - client - server,
                lost_reset=2 * connections - rst_sent - rst_received,
            )
        return result

    return Tracer(
        "bpftrace", argv, signal.SIGINT, ready, count, stdout=None, stderr=stderr, files=[out, ready_file, stderr]
    )


TRACERS: dict[str, Callable[[Tools, Path, str], Tracer]] = {
    "jalki": jalki_tracer,
    "tcplife": tcplife_tracer,
    "bpftrace": bpftrace_tracer,
}
FULL_TRACERS: dict[str, Callable[[Tools, Path, str], Tracer]] = {
    "jalki": lambda tools, tmp, tag: jalki_tracer(tools, tmp, tag, full=True),
    "tcplife": tcplife_tracer,  # one line per closed connection, RST or not: 2 per connection
    "bpftrace": lambda tools, tmp, tag: bpftrace_tracer(tools, tmp, tag, full=True),
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
    full: bool = False,
    profile_dir: Path | None = None,
) -> dict[str, Any]:
    """Run churn for ``seconds`` bare (``tracer_name`` None) or under a tracer; return its numbers.

    ``churn_cpu``: pin churn to this CPU, or None to leave it to the scheduler.
    ``full`` (churn_full): every client socket closed with ``SO_LINGER {1,0}`` (a RST),
    ``tcp_max_tw_buckets`` as in the root namespace, every event type counted.
    ``profile_dir``: record the tracer with py-spy while churn runs (jalki only).
    """
    result: dict[str, Any] = {"case": case}
    tracers = FULL_TRACERS if full else TRACERS
    tracer = tracers[tracer_name](tools, tmp, tag) if tracer_name else None
    proc: subprocess.Popen[bytes] | None = None
    recorder: Any = None
    tw_buckets = root_tw_buckets() if full else 0
    if full:
        result.update(linger_rst=True, tcp_max_tw_buckets=tw_buckets)
    try:
        with private_netns(f"jalkibench-{os.getpid()}-{tag}", tw_buckets) as netns:
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
                if profile_dir is not None:
                    from _profile import PySpyRecorder

                    profile_dir.mkdir(parents=True, exist_ok=True)
                    recorder = PySpyRecorder(proc.pid, profile_dir / f"{case}.collapsed.txt")
            exclude = [proc.pid] if proc is not None else []
            foreign_start = tracing_programs(exclude)

            argv = ["ip", "netns", "exec", netns]
            if churn_cpu is not None:
                argv += ["taskset", "-c", str(churn_cpu)]
            argv += [str(tools.churn), "-s", str(seconds), "-b", str(CHURN_BYTES)]
            if full:
                argv.append("-L")
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
                if recorder is not None:  # py-spy ends with its target; this waits for its output
                    from _profile import format_top

                    top = format_top(recorder.stop())
                    (recorder.out.parent / f"{case}.top.txt").write_text(top)
                    result["profile"] = {"tool": "py-spy", "path": str(recorder.out)}
                    recorder = None
                result.update(tracer.count(int(stats["port"]), connections, int(stats["client_pid"])))
                received = result.get("received_events")
                if received:
                    result["tracer_cpu_us_per_event"] = round(tracer_cpu_s / received * 1e6, 2)
        return result
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        if recorder is not None:
            recorder.stop()
        if tracer is not None and not keep_files:
            for path in tracer.files:
                with contextlib.suppress(OSError):
                    path.unlink()
