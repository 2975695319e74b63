"""The OTLP emitter cases (issue 13): throughput to a live receiver, and the daemon's RSS with a dead one.

- :func:`run_otlp_throughput` (``otlp_throughput``): jalki-tcp events, decoded
  in advance by jalki's own pipeline from drain_tcp's packed records (their
  NDJSON encoded too, as the session does at submit), are handed to the real
  otlp emitter's :class:`~jalki_core.emitters.delivery.DeliveryWorker` (the
  emitter ``--emit otlp:URL`` builds: batcher, protobuf encoding, ``httpx``
  POST) as fast as its queue takes them; a receiver in another process
  (:class:`ReceiverProcess`) decodes every ``ExportLogsServiceRequest`` and
  counts its log records. Measured: events the receiver counted per second of
  this process's CPU time (the submitting thread and the emitter's thread).
- :func:`run_otlp_dead_receiver` (``otlp_dead_receiver``): ``jalki serve -p tcp
  --emit otlp:http://127.0.0.1:PORT`` with nothing listening on PORT, under a
  steady connection churn in a private namespace; its RSS and the emitter's
  queue sampled at an interval; the emitter's drops by reason and the
  kernel's drops at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from _common import Tools, private_netns
from _daemon import DaemonProcess, _die_with_parent, free_port, rss_breakdown

THIS = Path(__file__).resolve()
DEFAULT_CONNECTIONS = 20_000
"""otlp_throughput: drain_tcp connections whose events are sent (~5 events each)."""
DEAD_SECONDS = 300.0
DEAD_BURST = 500
"""otlp_dead_receiver: connections per churn burst, one burst a second (~500 conn/s)."""
DEAD_BURST_EVERY_S = 1.0
RECEIVER_START_TIMEOUT_S = 30.0


# ---------------------------------------------------------------------------
# Counting (unit-tested in test_bench.py)
# ---------------------------------------------------------------------------


def count_log_records(body: bytes, gzipped: bool = False) -> int:
    """Log records in one OTLP/HTTP ``ExportLogsServiceRequest`` body (protobuf, gzip when ``gzipped``)."""
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    request = ExportLogsServiceRequest()
    request.ParseFromString(gzip.decompress(body) if gzipped else body)
    return sum(len(scope.log_records) for resource in request.resource_logs for scope in resource.scope_logs)


def otlp_accounting(produced: int, received: int, dropped_by_reason: dict[str, int]) -> dict[str, Any]:
    """produced = received + every drop? ``unaccounted`` (negative: the receiver got more, i.e. duplicates
    from a retried batch the receiver had taken), ``lossless`` (nothing dropped, nothing unaccounted)."""
    dropped = sum(dropped_by_reason.values())
    unaccounted = produced - received - dropped
    return {"produced": produced, "received": received, "dropped": dropped, "unaccounted": unaccounted,
            "lossless": dropped == 0 and unaccounted == 0}


def slope_per_minute(points: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of ``(seconds, value)`` points, in value per minute (``None``: under 2 times)."""
    if len({t for t, _ in points}) < 2:
        return None
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    num = sum((t - mean_t) * (v - mean_v) for t, v in points)
    den = sum((t - mean_t) ** 2 for t, _ in points)
    return num / den * 60.0


def rss_summary(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """First, last, min, max RSS (MiB) of ``{"t_s", "rss_kib"}`` samples; slopes (MiB/min) over all of
    them and over the second half (after the queue had time to fill)."""
    points = [(float(s["t_s"]), s["rss_kib"] / 1024) for s in samples if s.get("rss_kib")]
    if not points:
        return {}
    values = [v for _, v in points]
    half = points[len(points) // 2:]
    slope_all, slope_half = slope_per_minute(points), slope_per_minute(half)
    return {
        "rss_first_mib": round(values[0], 1),
        "rss_last_mib": round(values[-1], 1),
        "rss_min_mib": round(min(values), 1),
        "rss_max_mib": round(max(values), 1),
        "rss_slope_mib_per_min": None if slope_all is None else round(slope_all, 2),
        "rss_slope_second_half_mib_per_min": None if slope_half is None else round(slope_half, 2),
    }


def sum_drops(probes: dict[str, Any]) -> dict[str, int]:
    """The daemon's kernel-side drops by cause, summed over its probes (``status``'s ``probes``)."""
    total: dict[str, int] = {}
    for probe in probes.values():
        for cause, count in probe.get("drops", {}).items():
            total[cause] = total.get(cause, 0) + int(count)
    return total


# ---------------------------------------------------------------------------
# The receiver process
# ---------------------------------------------------------------------------


class _Counts:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests = self.records = self.bytes = self.bad = 0


def _serve(counts: _Counts) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as a Collector serves it

        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            try:
                records = count_log_records(body, self.headers.get("Content-Encoding") == "gzip")
                status = 200
            except Exception:  # not a request: answer 400 (the emitter counts it rejected)
                records, status = 0, 400
            with counts.lock:  # counted before answering: once the emitter has its reply, the count is final
                counts.requests += 1
                counts.records += records
                counts.bytes += len(body)
                counts.bad += status != 200
            self.send_response(status)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")  # an empty ExportLogsServiceResponse: all taken
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    return server


def _receive() -> int:
    """Print ``{"port": N}``, count records until SIGTERM, then print the counts and this process's CPU."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # every thread started from here blocks it
    counts = _Counts()
    server = _serve(counts)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(json.dumps({"port": server.server_address[1]}), flush=True)
    signal.sigwait({signal.SIGTERM})
    with counts.lock:
        result = {"requests": counts.requests, "records": counts.records, "bytes": counts.bytes,
                  "bad_requests": counts.bad, "cpu_s": round(time.process_time(), 3)}
    print(json.dumps(result), flush=True)
    os._exit(0)  # handler threads may still sit in keep-alive reads


class ReceiverProcess:
    """``python bench/_otlp.py receive``: an OTLP/HTTP logs receiver on 127.0.0.1 counting log records."""

    def __init__(self, cpu: int | None = None) -> None:
        prefix = ["taskset", "-c", str(cpu)] if cpu is not None else []
        self.proc = subprocess.Popen([*prefix, sys.executable, str(THIS), "receive"], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, preexec_fn=_die_with_parent)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the OTLP receiver exited with {self.proc.wait(RECEIVER_START_TIMEOUT_S)} at start")
        self.port = int(json.loads(line)["port"])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> dict[str, Any]:
        """SIGTERM it; its final counts."""
        assert self.proc.stdout is not None
        self.proc.send_signal(signal.SIGTERM)
        out = self.proc.stdout.read()
        self.proc.wait(30)
        result: dict[str, Any] = json.loads(out)
        return result

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# ---------------------------------------------------------------------------
# otlp_throughput
# ---------------------------------------------------------------------------


def decoded_batches(connections: int, rate: int) -> list[Any]:
    """drain_tcp's records for ``connections`` connections, decoded and derived by a ``TraceSession`` (as
    ``jalki run --plugin tcp`` does), as the ``EventBatch``es the session hands its emitters, their NDJSON
    encoded (the session encodes a batch once at submit, whatever the emitters)."""
    from _drain_tcp import make_workload, replay

    from jalki_core.emitters.base import Emitter, EventBatch

    batches: list[EventBatch] = []

    class Capture(Emitter):
        name = "capture"

        def emit(self, batch: EventBatch) -> None:
            batches.append(batch)

    replay(make_workload(connections, rate), Path(os.devnull), emitter=Capture())
    for batch in batches:
        batch.ndjson  # noqa: B018 (already encoded at submit; make sure)
    return batches


def otlp_emitter(url: str) -> Any:
    """The emitter ``--emit otlp:URL`` builds, from the installed jalki-otlp plugin."""
    from jalki_core.plugins import JalkiPlugins

    registered = JalkiPlugins().emitters.get("otlp")
    if registered is None:
        raise RuntimeError("the otlp emitter is not registered (pip install -e plugins/jalki_otlp)")
    return registered.factory(url)


def run_otlp_throughput(connections: int = DEFAULT_CONNECTIONS, rate: int = 20_000,
                        receiver_cpu: int | None = None, consumer_cpu: int | None = None) -> dict[str, Any]:
    """Send drain_tcp's decoded events through the otlp emitter to a counting receiver; events per cpu-s."""
    batches = decoded_batches(connections, rate)
    produced = sum(len(b) for b in batches)
    json_bytes = sum(len(b.ndjson) for b in batches)
    receiver = ReceiverProcess(receiver_cpu)
    affinity = os.sched_getaffinity(0)
    try:
        if consumer_cpu is not None:
            os.sched_setaffinity(0, {consumer_cpu})
        emitter = otlp_emitter(receiver.url)
        worker = emitter.make_worker()
        half_queue = worker.max_events // 2
        waits = 0
        cpu_before, wall_before = time.process_time(), time.perf_counter()
        worker.start()
        for batch in batches:
            while worker.queued["events"] > half_queue:  # the producer waits (no CPU) rather than overflow
                waits += 1
                time.sleep(0.002)
            worker.submit(batch)
        worker.stop(60.0)  # everything queued is delivered (or counted) before this returns
        cpu = time.process_time() - cpu_before
        wall = time.perf_counter() - wall_before
        stats = worker.as_dict()
    finally:
        os.sched_setaffinity(0, affinity)
        try:
            got = receiver.stop()
        finally:
            receiver.kill()
    drops: dict[str, int] = dict(stats["dropped_by_reason"])
    result: dict[str, Any] = {"case": "otlp_throughput", "connections": connections, "batches_in": len(batches),
                              "json_bytes": json_bytes}
    result.update(otlp_accounting(produced, got["records"], drops))
    result.update(
        dropped_by_reason=drops,
        sent=stats["sent"],
        retries=stats["retries"],
        errors=stats["errors"],
        last_error=stats["last_error"],
        requests=got["requests"],
        bad_requests=got["bad_requests"],
        records_per_request=round(got["records"] / got["requests"], 1) if got["requests"] else None,
        protobuf_bytes=got["bytes"],
        protobuf_bytes_per_event=round(got["bytes"] / got["records"], 1) if got["records"] else None,
        producer_waits=waits,
        consumer_cpu_s=round(cpu, 3),
        receiver_cpu_s=got["cpu_s"],
        wall_s=round(wall, 3),
        events_per_cpu_s=round(got["records"] / cpu, 1) if cpu else None,
        events_per_s_wall=round(got["records"] / wall, 1) if wall else None,
        us_per_event=round(cpu / got["records"] * 1e6, 2) if got["records"] else None,
    )
    return result


# ---------------------------------------------------------------------------
# otlp_dead_receiver
# ---------------------------------------------------------------------------


class OtlpDaemon(DaemonProcess):
    """``jalki serve -p tcp --emit otlp:URL`` (no file emitter, no history: the emitter's memory is what
    is measured) with its socket and metrics in ``work``."""

    def __init__(self, jalki: list[str], work: Path, url: str, stderr: Any = None) -> None:
        work.mkdir(parents=True, exist_ok=True)
        self.socket = work / "jalki.sock"
        self.history = work / "h.db"  # not used: --history off
        self.metrics = f"127.0.0.1:{free_port()}"
        self.proc = subprocess.Popen(
            [*jalki, "serve", "-p", "tcp", "--socket", str(self.socket), "--history", "off",
             "--metrics-addr", self.metrics, "--emit", f"otlp:{url}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr, preexec_fn=_die_with_parent,
        )


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed: connecting to it is refused)."""
    return free_port()


def _otlp_status(status: dict[str, Any]) -> dict[str, Any]:
    return next((e for name, e in status.get("emitters", {}).items() if name.startswith("otlp")), {})


def run_otlp_dead_receiver(tools: Tools, tmp: Path, seconds: float = DEAD_SECONDS, interval: float = 5.0,
                           burst: int = DEAD_BURST, burst_every_s: float = DEAD_BURST_EVERY_S) -> dict[str, Any]:
    """The daemon sending to a closed port for ``seconds`` under churn bursts; RSS every ``interval`` s."""
    port = closed_port()
    stderr_path = tmp / "otlp_dead.stderr"
    stderr = stderr_path.open("wb")
    daemon = OtlpDaemon(tools.jalki, tmp / "otlp_dead.d", f"http://127.0.0.1:{port}", stderr=stderr)
    samples: list[dict[str, Any]] = []
    connections = failed = 0
    try:
        daemon.wait_ready()
        started = time.monotonic()
        next_sample = started
        with private_netns(f"jalkibench-otlp-{os.getpid()}") as netns:
            while True:
                now = time.monotonic()
                if now >= next_sample:
                    emitter = _otlp_status(daemon.status())
                    queue = emitter.get("queue", {})
                    samples.append({"t_s": round(now - started, 1), "rss_kib": daemon.rss_kib().get("VmRSS"),
                                    "queue_events": queue.get("events"), "queue_bytes": queue.get("bytes"),
                                    "dropped": emitter.get("events_dropped")})
                    next_sample += interval
                    if now - started >= seconds:
                        break
                churn = subprocess.run(["ip", "netns", "exec", netns, str(tools.churn), "-n", str(burst), "-b", "64"],
                                       capture_output=True, check=True)
                out = json.loads(churn.stdout)
                connections += int(out["connections"])
                failed += int(out.get("failed", 0))
                time.sleep(max(0.0, burst_every_s - (time.monotonic() - now)))
        elapsed = time.monotonic() - started
        status = daemon.status()
        breakdown = rss_breakdown(daemon.proc.pid)
        peak = daemon.rss_kib().get("VmHWM")
        stop_started = time.monotonic()
        daemon.proc.send_signal(signal.SIGTERM)
        daemon.proc.wait(120)
        stop_s = time.monotonic() - stop_started
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait()
        stderr.close()
    emitter = _otlp_status(status)
    events = sum(p["events"] for p in status["probes"].values())
    queue = emitter.get("queue", {})
    result: dict[str, Any] = {
        "case": "otlp_dead_receiver",
        "seconds": round(elapsed, 1),
        "interval_s": interval,
        "dead_port": port,
        "connections": connections,
        "connections_failed": failed,
        "connections_per_s": round(connections / elapsed, 1) if elapsed else None,
        "events": events,
        "events_per_s": round(events / elapsed, 1) if elapsed else None,
        "kernel_drops": sum_drops(status["probes"]),
        "emitter_sent": emitter.get("sent"),
        "emitter_retries": emitter.get("retries"),
        "dropped_by_reason": emitter.get("dropped_by_reason"),
        "emitter_last_error": emitter.get("last_error"),
        "emitter_failing_for_s": emitter.get("failing_for_s"),
        "queue_at_end": {k: queue.get(k) for k in ("events", "bytes", "pending", "max_events", "max_bytes")},
        "rss_peak_mib": None if peak is None else round(peak / 1024, 1),
        "rss_breakdown_kib": breakdown,
        "daemon_exit": daemon.proc.returncode,
        "daemon_stop_s": round(stop_s, 2),
        "daemon_stderr_tail": stderr_path.read_text(errors="replace").splitlines()[-5:],
        "samples": samples,
    }
    result.update(rss_summary(samples))
    return result


OTLP_CASES = ("otlp_throughput", "otlp_dead_receiver")


def run_otlp_case(name: str, tools: Tools, tmp: Path, args: argparse.Namespace, load_cpu: int | None,
                  consumer_cpu: int | None) -> dict[str, Any]:
    """One run of an OTLP case with run_bench's options (``--otlp-connections``, ``--otlp-dead-seconds``)."""
    if name == "otlp_throughput":
        return run_otlp_throughput(args.otlp_connections, args.drain_tcp_rate, receiver_cpu=load_cpu,
                                   consumer_cpu=consumer_cpu)
    return run_otlp_dead_receiver(tools, tmp, args.otlp_dead_seconds)


def _n(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}" if isinstance(value, int | float) else str(value)


def _reasons(drops: dict[str, int] | None) -> str:
    """The non-zero drop reasons, ``retry_exhausted 1,024, queue_full 0`` style (``none``: all zero)."""
    found = [f"{reason} {count:,}" for reason, count in (drops or {}).items() if count]
    return ", ".join(found) or "none"


def print_otlp(results: Sequence[dict[str, Any]]) -> None:
    """The OTLP cases' tables, one line per run (80 columns)."""
    runs = [r for r in results if r.get("case") == "otlp_throughput" and "error" not in r]
    if runs:
        print("\notlp_throughput: jalki-tcp events -> otlp emitter -> receiver (other process)")
        header = f"{'round':>5}{'events':>10}{'received':>10}{'drops':>7}{'per cpu-s':>11}{'µs/event':>10}{'wall/s':>9}"
        print(header)
        print("-" * len(header))
        for r in runs:
            print(f"{r.get('round', 0):>5}{_n(r['produced']):>10}{_n(r['received']):>10}{_n(r['dropped']):>7}"
                  f"{_n(r['events_per_cpu_s']):>11}{_n(r['us_per_event'], 1):>10}{_n(r['events_per_s_wall']):>9}")
        for r in runs:
            if r["dropped"] or r["unaccounted"]:
                print(f"  round {r.get('round', 0)}: drops {_reasons(r['dropped_by_reason'])}; "
                      f"unaccounted {r['unaccounted']:,}")
    for r in results:
        if r.get("case") != "otlp_dead_receiver" or "error" in r:
            continue
        print(f"\notlp_dead_receiver: jalki serve -p tcp --emit otlp:(closed port), {r['seconds']:g} s")
        rows = [
            ("connections (per s)", f"{r['connections']:,} ({_n(r['connections_per_s'])})"),
            ("events (per s)", f"{r['events']:,} ({_n(r['events_per_s'])})"),
            ("RSS first / last MiB", f"{_n(r.get('rss_first_mib'), 1)} / {_n(r.get('rss_last_mib'), 1)}"),
            ("RSS min / max MiB", f"{_n(r.get('rss_min_mib'), 1)} / {_n(r.get('rss_max_mib'), 1)}"),
            ("RSS peak (VmHWM) MiB", _n(r.get("rss_peak_mib"), 1)),
            ("slope MiB/min: all / 2nd half", f"{_n(r.get('rss_slope_mib_per_min'), 2)} / "
                                               f"{_n(r.get('rss_slope_second_half_mib_per_min'), 2)}"),
            ("emitter sent / retries", f"{_n(r['emitter_sent'])} / {_n(r['emitter_retries'])}"),
            ("emitter drops", _reasons(r["dropped_by_reason"])),
            ("queue at end (events)", f"{_n(r['queue_at_end'].get('events'))} of "
                                       f"{_n(r['queue_at_end'].get('max_events'))}"),
            ("kernel drops", _reasons(r["kernel_drops"])),
            ("daemon stop s / exit", f"{r['daemon_stop_s']} / {r['daemon_exit']}"),
        ]
        for label, value in rows:
            print(f"  {label:<30}{value}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="helper processes of the OTLP benchmark")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("receive")
    parser.parse_args(argv)
    return _receive()


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
