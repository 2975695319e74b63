"""The daemon cases: ``jalki run --serve`` under connection churn, with subscribers; its RSS under load.

Two parts:

- :func:`daemon_tracer` plugs the daemon into the churn harness of
  ``_churn.py`` as one more tracer (cases ``churn_daemon``,
  ``churn_daemon_sub1``, ``churn_daemon_sub10``). Its process is a small
  *host* (``python bench/_daemon.py host …``) that starts the daemon
  (``-p tcp``, file emitter, SQLite history, metrics on a free port) and N
  subscriber processes, and says ready once the probes are attached and every
  subscription is live. On SIGTERM it waits until the emitter and the
  subscribers have caught up, writes the daemon's ``status`` as the summary
  JSON that :func:`_churn.count_jalki` reads, stops the daemon (SIGTERM),
  reaps everything and exits. The harness's ``wait4`` of the host therefore
  counts the daemon's and the subscribers' CPU time; the host also records
  them apart.
- :func:`measure_rss`: the daemon under a steady churn load for a while, its
  RSS sampled at an interval, and where that memory is at the end
  (:func:`rss_breakdown`).

Standard library only, plus ``jalki_core.sdk`` in the host.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _churn import TRACERS, Tracer, count_jalki
from _common import Tools, _prog_ids_of, private_netns

THIS = Path(__file__).resolve()
SUBSCRIBER_COUNTS = {"daemon": 0, "daemon_sub1": 1, "daemon_sub10": 10}
"""Churn tracer name -> subscribers reading every event."""
START_TIMEOUT_S = 60.0
SETTLE_TIMEOUT_S = 30.0


def _die_with_parent() -> None:
    """preexec_fn: SIGTERM this child when the process that started it dies (even by SIGKILL)."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def start_subscribers(socket_path: Path, count: int) -> list[subprocess.Popen[bytes]]:
    """``count`` subscriber processes reading every event of the daemon at ``socket_path``."""
    return [subprocess.Popen([sys.executable, str(THIS), "subscribe", "--socket", str(socket_path)],
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, preexec_fn=_die_with_parent)
            for _ in range(count)]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


# ---------------------------------------------------------------------------
# The churn tracer
# ---------------------------------------------------------------------------


def daemon_tracer(tools: Tools, tmp: Path, tag: str, *, subscribers: int) -> Tracer:
    """The daemon with ``subscribers`` subscriptions, as a churn :class:`Tracer`."""
    events = tmp / f"{tag}.ndjson"
    summary = tmp / f"{tag}.summary.json"
    ready_file = tmp / f"{tag}.ready"
    stderr = tmp / f"{tag}.stderr"
    work = tmp / f"{tag}.d"
    argv = [sys.executable, str(THIS), "host", "--dir", str(work), "--events", str(events), "--summary",
            str(summary), "--ready-file", str(ready_file), "--subscribers", str(subscribers), "--", *tools.jalki]

    def ready(_proc: subprocess.Popen[bytes]) -> bool:
        return ready_file.exists()

    def count(port: int, connections: int, client_pid: int) -> dict[str, Any]:
        result = count_jalki(events, summary, port, connections, client_pid)
        if summary.exists():
            data = json.loads(summary.read_text())
            result.update(data.get("host", {}))
            host = data.get("host", {})
            # the daemon's final count (its stop line): events drained at shutdown reach the subscribers too
            lines = host.get("events_emitted_final") or host.get("events_emitted")
            received = result.get("subscriber_events") or []
            if lines is not None and received:
                # what the slowest subscriber missed of what the daemon emitted
                result["subscriber_lost_max"] = lines - min(received)
        return result

    return Tracer("daemon", argv, signal.SIGTERM, ready, count, stdout=None, stderr=stderr,
                  files=[events, summary, ready_file, stderr])


def register_tracers() -> None:
    """Add the daemon cases to the churn harness's tracers (``run_churn_case`` looks them up there)."""
    for name, subscribers in SUBSCRIBER_COUNTS.items():
        TRACERS.setdefault(name, functools.partial(daemon_tracer, subscribers=subscribers))


# ---------------------------------------------------------------------------
# The host process
# ---------------------------------------------------------------------------


class DaemonProcess:
    """A ``jalki run --serve -p tcp`` subprocess with its socket, history and metrics in ``work``."""

    def __init__(self, jalki: list[str], work: Path, events: Path, stderr: Any = None, emit_options: str = "",
                 extra: tuple[str, ...] = ()) -> None:
        work.mkdir(parents=True, exist_ok=True)
        self.socket = work / "jalki.sock"
        self.history = work / "h.db"
        self.metrics = f"127.0.0.1:{free_port()}"
        self.proc = subprocess.Popen(
            [*jalki, "run", "--serve", "-p", "tcp", "--socket", str(self.socket), "--history", str(self.history),
             "--metrics-addr", self.metrics, "--emit", f"file:{events}{emit_options}", *extra],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr, preexec_fn=_die_with_parent,
        )

    def client(self) -> Any:
        from jalki_core.sdk import Client

        return Client(self.socket, timeout=30)

    def status(self) -> dict[str, Any]:
        with self.client() as client:
            result: dict[str, Any] = client.status().raw
            return result

    def wait_ready(self, subscribers: int = 0) -> dict[str, Any]:
        """Wait until it answers with its probes attached and ``subscribers`` subscriptions; return status."""
        from jalki_core.errors import JalkiError

        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the daemon exited with {self.proc.returncode} at start")
            with contextlib.suppress(JalkiError, OSError):
                status = self.status()
                if status["probes"] and status["subscribers"].get("count", 0) >= subscribers:
                    return status
            time.sleep(0.1)
        raise SystemExit(f"the daemon was not ready after {START_TIMEOUT_S:.0f}s")

    def rss_kib(self) -> dict[str, int]:
        """VmRSS and VmHWM (peak) of the daemon, in KiB."""
        found = {}
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    found[key] = int(rest.split()[0])
        return found


def rss_breakdown(pid: int) -> dict[str, int]:
    """The resident KiB of ``pid`` by kind of mapping (``/proc/PID/smaps``): ``heap`` (C heap: Python objects
    over 512 bytes, libbpf, SQLite), ``anon`` (other anonymous memory: Python's small-object arenas, thread
    stacks), ``bpf_maps`` (ring buffers and maps mapped into the process), ``files`` (the interpreter and
    shared libraries)."""
    found = {"heap": 0, "anon": 0, "bpf_maps": 0, "files": 0}
    kind = "anon"
    with contextlib.suppress(OSError), Path(f"/proc/{pid}/smaps").open() as smaps:
        for line in smaps:
            fields = line.split()
            if "-" in fields[0] and len(fields) >= 5:  # a mapping's header line
                name = fields[5] if len(fields) > 5 else ""
                kind = ("heap" if name == "[heap]" else "bpf_maps" if name.startswith("anon_inode:bpf")
                        else "files" if name.startswith("/") else "anon")
            elif fields[0] == "Rss:":
                found[kind] += int(fields[1])
    return found


def _host(args: argparse.Namespace) -> int:
    stop = {"requested": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(requested=True))
    daemon_stderr_path = args.dir.parent / f"{args.dir.name}.daemon.stderr"
    daemon_stderr = daemon_stderr_path.open("wb")
    daemon = DaemonProcess(args.jalki, args.dir, args.events, stderr=daemon_stderr)
    subscribers: list[subprocess.Popen[bytes]] = []
    try:
        daemon.wait_ready()
        subscribers = start_subscribers(daemon.socket, args.subscribers)
        daemon.wait_ready(args.subscribers)
        prog_ids = sorted(_prog_ids_of(daemon.proc.pid))
        args.ready_file.touch()
        while not stop["requested"]:
            time.sleep(0.05)
        status = _settled_status(daemon, args.subscribers)
        rss = daemon.rss_kib()
        daemon.proc.send_signal(signal.SIGTERM)
        _, daemon_status, daemon_usage = os.wait4(daemon.proc.pid, 0)
        daemon.proc.returncode = os.waitstatus_to_exitcode(daemon_status)
        received, subscriber_cpu = [], 0.0
        for sub in subscribers:
            assert sub.stdout is not None
            output = sub.stdout.read()
            _, _, usage = os.wait4(sub.pid, 0)
            sub.returncode = 0
            subscriber_cpu += usage.ru_utime + usage.ru_stime
            with contextlib.suppress(ValueError):
                received.append(int(json.loads(output)["events"]))
        emitted = sum(e["events_emitted"] for e in status["emitters"].values())
        daemon_stderr.flush()
        final = re.search(rb"emitter file: (\d+) written", daemon_stderr_path.read_bytes())
        summary = {
            "probes": [{"probe": name, **probe} for name, probe in status["probes"].items()],
            "emitters": status["emitters"],
            "host": {
                "daemon_exit": daemon.proc.returncode,
                "daemon_cpu_s": round(daemon_usage.ru_utime + daemon_usage.ru_stime, 3),
                "subscriber_cpu_s": round(subscriber_cpu, 3),
                "subscribers": args.subscribers,
                "subscriber_events": received,
                "subscriber_sent": status["subscribers"].get("sent", 0),
                "subscriber_dropped": status["subscribers"].get("dropped", 0),
                "events_emitted": emitted,
                "events_emitted_final": None if final is None else int(final.group(1)),
                "history_written": (status.get("history") or {}).get("written"),
                "history_dropped": (status.get("history") or {}).get("dropped"),
                "daemon_rss_kib": rss.get("VmRSS"),
                "daemon_peak_rss_kib": rss.get("VmHWM"),
                "daemon_prog_ids": prog_ids,
            },
        }
        args.summary.write_text(json.dumps(summary))
        return 0
    finally:
        for proc in (daemon.proc, *subscribers):
            if proc.poll() is None and proc.returncode is None:
                proc.kill()
                proc.wait()
        daemon_stderr.close()


def _settled_status(daemon: DaemonProcess, subscribers: int) -> dict[str, Any]:
    """``status`` once the emitter, history and subscribers stopped moving (they drain after the load ends)."""
    previous: tuple[int, ...] | None = None
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    status = daemon.status()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        status = daemon.status()
        probes = sum(p["events"] for p in status["probes"].values())
        emitted = sum(e["events_emitted"] + e["events_dropped"] for e in status["emitters"].values())
        subs = status["subscribers"]
        marker = (probes, emitted, subs.get("sent", 0), subs.get("dropped", 0),
                  (status.get("history") or {}).get("written", 0))
        caught_up = emitted == probes and subs.get("sent", 0) + subs.get("dropped", 0) >= subscribers * probes
        if marker == previous and caught_up:
            break
        previous = marker
    return status


def _subscribe(args: argparse.Namespace) -> int:
    """One subscription to every event; print how many arrived when the daemon closes the connection."""
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(str(args.socket))
    sock.sendall(b'{"v":1,"id":1,"type":"subscribe"}\n')
    signal.signal(signal.SIGTERM, lambda *_: sock.shutdown(socket.SHUT_RDWR))
    events = dropped = 0
    with contextlib.suppress(OSError), sock.makefile("rb", buffering=1 << 20) as stream:
        for line in stream:
            if line.startswith(b'{"v":1,"push":"event"'):
                events += 1
            elif b'"push":"dropped"' in line:
                dropped += int(json.loads(line)["count"])
    print(json.dumps({"events": events, "dropped": dropped}), flush=True)
    return 0


# ---------------------------------------------------------------------------
# RSS under load
# ---------------------------------------------------------------------------


def measure_rss(tools: Tools, tmp: Path, seconds: float, interval: float = 5.0, *, subscribers: int = 1,
                burst: int = 4000, burst_every_s: float = 2.0, history_max_mb: int | None = None) -> dict[str, Any]:
    """Run the daemon for ``seconds`` under churn bursts (``burst`` connections every ``burst_every_s``),
    with ``subscribers`` reading every event; sample its RSS and its history's size on disk every
    ``interval`` seconds; break the RSS down at the end (:func:`rss_breakdown`)."""
    events = tmp / "rss.ndjson"
    extra = () if history_max_mb is None else ("--history-max-mb", str(history_max_mb))
    daemon = DaemonProcess(tools.jalki, tmp / "rss.d", events, stderr=(tmp / "rss.stderr").open("wb"),
                           emit_options=",max_bytes=50000000,backups=1", extra=extra)  # at most 100 MB on disk
    subs: list[subprocess.Popen[bytes]] = []
    samples: list[dict[str, Any]] = []
    connections = 0
    try:
        daemon.wait_ready()
        subs = start_subscribers(daemon.socket, subscribers)
        daemon.wait_ready(subscribers)
        started = time.monotonic()
        next_sample = started
        with private_netns(f"jalkibench-rss-{os.getpid()}") as netns:
            while True:
                now = time.monotonic()
                if now >= next_sample:
                    rss = daemon.rss_kib()
                    samples.append({"t_s": round(now - started, 1), "rss_kib": rss.get("VmRSS"),
                                    "history_bytes": _disk_bytes(daemon.history)})
                    next_sample += interval
                    if now - started >= seconds:
                        break
                churn = subprocess.run(["ip", "netns", "exec", netns, str(tools.churn), "-n", str(burst), "-b", "64"],
                                       capture_output=True, check=True)
                connections += int(json.loads(churn.stdout)["connections"])
                time.sleep(max(0.0, burst_every_s - (time.monotonic() - now)))
        status = daemon.status()
        breakdown = rss_breakdown(daemon.proc.pid)
        peak = daemon.rss_kib().get("VmHWM")
        events_emitted = sum(e["events_emitted"] for e in status["emitters"].values())
        daemon.proc.send_signal(signal.SIGTERM)
        daemon.proc.wait(60)
        for sub in subs:
            sub.wait(30)
    finally:
        for proc in (daemon.proc, *subs):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    values = [s["rss_kib"] for s in samples if s["rss_kib"]]
    quarter = max(1, len(values) // 4)
    history = status.get("history") or {}
    kernel_drops: dict[str, int] = {}
    for probe in status["probes"].values():
        for cause, count in probe["drops"].items():
            kernel_drops[cause] = kernel_drops.get(cause, 0) + count
    return {
        "seconds": seconds,
        "interval_s": interval,
        "subscribers": subscribers,
        "connections": connections,
        "connections_per_s": round(connections / seconds, 1),
        "events_emitted": events_emitted,
        "ring_events": status["ring"]["events"],
        "history_written": history.get("written"),
        "history_dropped": history.get("dropped"),
        "history_pruned": history.get("pruned"),
        "history_max_bytes": history.get("max_bytes"),
        "history_bytes_max": max((s["history_bytes"] for s in samples), default=None),
        "drops": kernel_drops,
        "subscriber_dropped": status["subscribers"].get("dropped_total"),
        "daemon_exit": daemon.proc.returncode,
        "rss_first_mib": round(values[0] / 1024, 1),
        "rss_last_mib": round(values[-1] / 1024, 1),
        "rss_max_mib": round(max(values) / 1024, 1),
        "rss_peak_mib": None if peak is None else round(peak / 1024, 1),  # VmHWM: between samples too
        # growth over the last three quarters: after the rings (10,000 events per probe) have filled
        "rss_growth_after_first_quarter_mib": round((values[-1] - values[quarter]) / 1024, 1),
        # flatness: the largest sample of the last quarter against that of the second
        "rss_max_last_quarter_mib": round(max(values[-quarter:]) / 1024, 1),
        "rss_max_second_quarter_mib": round(max(values[quarter:2 * quarter] or values[-1:]) / 1024, 1),
        "rss_breakdown_kib": breakdown,
        "samples": samples,
    }


def _disk_bytes(database: Path) -> int:
    """A SQLite database and its WAL on disk."""
    total = 0
    for path in (database, database.with_name(database.name + "-wal")):
        with contextlib.suppress(OSError):
            total += path.stat().st_size
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="helper processes of the daemon benchmark")
    sub = parser.add_subparsers(dest="command", required=True)
    host = sub.add_parser("host")
    host.add_argument("--dir", type=Path, required=True)
    host.add_argument("--events", type=Path, required=True)
    host.add_argument("--summary", type=Path, required=True)
    host.add_argument("--ready-file", type=Path, required=True)
    host.add_argument("--subscribers", type=int, default=0)
    host.add_argument("jalki", nargs="+")
    subscribe = sub.add_parser("subscribe")
    subscribe.add_argument("--socket", type=Path, required=True)
    args = parser.parse_args(argv)
    return _host(args) if args.command == "host" else _subscribe(args)


if __name__ == "__main__":
    sys.exit(main())
