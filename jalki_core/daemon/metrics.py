"""Prometheus exposition of the daemon: ``/metrics``, ``/healthz`` (alive), ``/readyz`` (draining).

The figures are read at scrape time from the agent (a custom collector, the
way node exporters do it), so every counter is the real running total: events
per probe and type, drops per probe and cause, attach state and rung, program
run time and run count (``bpf_enable_stats``), ring-buffer fill, emitter
events and errors, subscribers, history rows, and API requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from jalki_core.daemon.emitter_metrics import emitter_families
from jalki_core.daemon.enrich_metrics import enrich_families
from jalki_core.errors import JalkiError

if TYPE_CHECKING:
    from jalki_core.daemon.agent import Agent

log = logging.getLogger("jalki.daemon.metrics")


class AgentCollector:
    """Reads the agent's figures at each scrape.

    Counters never go back: a probe's drops and program runs add up over its
    deployments (a redeploy with other options starts new programs), and the
    subscriber counters include ended subscriptions. A probe that was deployed
    once and is not now stays in ``jalki_probe_attached`` with ``rung="none"``
    and value 0.
    """

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self._seen_probes: set[str] = set()

    def collect(self) -> Iterator[Metric]:
        agent = self.agent
        try:
            snapshot = agent.snapshot()
        except Exception as exc:  # shutting down: expose what does not need the drain thread
            log.debug("snapshot unavailable: %s", exc)
            snapshot = {"probes": {}, "emitters": {}}
        # Copies first: the drain and API threads keep adding keys while we read.
        events_by_type = dict(agent.events_by_type)
        ring_fill_peak = _take_fill_peaks(agent)
        retired = dict(agent.retired)
        events = CounterMetricFamily("jalki_events", "Events emitted, by probe and event type.",
                                     labels=["probe", "type"])
        for (probe, event_type), count in sorted(events_by_type.items()):
            events.add_metric([probe, event_type], count)
        yield events
        drops = CounterMetricFamily("jalki_drops", "Records lost, by probe and cause (ring buffer full, "
                                    "sampled, tracking table full, size mismatch, decoder error).",
                                    labels=["probe", "cause"])
        attached = GaugeMetricFamily("jalki_probe_attached", "1 while the probe is attached, with its attach rung; "
                                     "0 (rung none) for a probe deployed earlier and not now.",
                                     labels=["probe", "rung"])
        run_time = CounterMetricFamily("jalki_program_run_time_seconds", "Time the probe's BPF programs ran "
                                       "in the kernel (bpf_enable_stats).", labels=["probe"])
        run_count = CounterMetricFamily("jalki_program_runs", "Runs of the probe's BPF programs.", labels=["probe"])
        fill = GaugeMetricFamily("jalki_ringbuffer_fill_ratio", "Largest share of the probe's ring buffer "
                                 "found filled (written by the kernel, not yet read) before a drain, since the "
                                 "previous scrape (0 to 1).", labels=["probe"])
        live = snapshot["probes"]
        self._seen_probes.update(live, retired)
        for name in sorted(self._seen_probes):
            probe = live.get(name)
            ended = retired.get(name, {})
            causes: Counter[str] = Counter(ended.get("drops", {}))
            causes.update(probe["drops"] if probe else {})
            for cause, count in sorted(causes.items()):
                drops.add_metric([name, cause], count)
            if probe is not None and probe["attach"]:
                attached.add_metric([name, probe["attach"]], 1)
            else:
                attached.add_metric([name, "none"], 0)
            run_time.add_metric([name], (ended.get("run_time_ns", 0) + (probe["run_time_ns"] if probe else 0)) / 1e9)
            run_count.add_metric([name], ended.get("run_count", 0) + (probe["run_count"] if probe else 0))
        for name, ratio in sorted(ring_fill_peak.items()):
            fill.add_metric([name], ratio)
        yield from (drops, attached, run_time, run_count, fill)
        emitted = CounterMetricFamily("jalki_emitter_events", "Events written by each emitter.", labels=["emitter"])
        emitter_errors = CounterMetricFamily("jalki_emitter_errors", "Emitter write errors.", labels=["emitter"])
        emitter_dropped = CounterMetricFamily("jalki_emitter_dropped", "Events an emitter could not write, by "
                                              "reason (queue_full, sink_error; off the node also rate_limited, "
                                              "retry_exhausted, rejected, shutdown).", labels=["emitter", "reason"])
        for name, stats in sorted(snapshot["emitters"].items()):
            emitted.add_metric([name], stats["events_emitted"])
            emitter_errors.add_metric([name], stats["errors"])
            for reason, count in sorted(stats["dropped_by_reason"].items()):
                emitter_dropped.add_metric([name, reason], count)
        yield from (emitted, emitter_errors, emitter_dropped)
        yield from emitter_families(snapshot["emitters"])
        server = agent._server
        subscribers = server.subscriber_stats() if server is not None else {}
        yield GaugeMetricFamily("jalki_subscribers", "Live event subscriptions.", value=subscribers.get("count", 0))
        yield CounterMetricFamily("jalki_subscriber_events_sent", "Events pushed to subscribers.",
                                  value=subscribers.get("sent_total", 0))
        yield CounterMetricFamily("jalki_subscriber_dropped", "Events subscribers lost (they read too slowly).",
                                  value=subscribers.get("dropped_total", 0))
        requests = CounterMetricFamily("jalki_api_requests", "API requests by type and outcome.",
                                       labels=["type", "outcome"])
        for (kind, outcome), count in sorted(dict(server.requests if server is not None else {}).items()):
            requests.add_metric([kind, outcome], count)
        yield requests
        if agent.history is not None:
            stats = agent.history.stats()
            yield CounterMetricFamily("jalki_history_written", "Events written to the history.",
                                      value=stats["written"])
            history_dropped = CounterMetricFamily("jalki_history_dropped", "Events the history did not write, by "
                                                  "cause (queue_full, write_failed, writer_stopped).",
                                                  labels=["cause"])
            for cause, count in sorted(stats["dropped_by_cause"].items()):
                history_dropped.add_metric([cause], count)
            yield history_dropped
            yield CounterMetricFamily("jalki_history_errors", "Failed history writes and prunes.",
                                      value=stats["errors"])
        yield from enrich_families(snapshot.get("enrich"))
        yield GaugeMetricFamily("jalki_ready", "1 while probes are attached and draining (and every enricher "
                                "is ready).", value=1 if is_ready(agent) else 0)


def _take_fill_peaks(agent: Agent) -> dict[str, float]:
    """Per probe, the largest ring fill since the previous scrape; starts the next window (drain thread).

    The fill is read from the ring's producer and consumer positions before
    each drain, so a burst between two scrapes shows however short it was.
    The window also holds the fill at the scrape itself, so an idle probe
    reads 0 and a ring filling up with no drain running still shows. Two
    scrapers each see the peaks since the other's scrape.
    """
    def take() -> dict[str, float]:
        peaks = dict(agent.ring_fill_peak)
        # the latest drain (no tick has seen it yet), and the fill now (no drain runs while the ring is idle)
        for fills in (agent.session.ring_fill, agent.session.ring_fill_now()):
            for name, fill in fills.items():
                peaks[name] = max(peaks.get(name, 0.0), fill)
        # a new window: drains before this scrape are not seen again (the tick copies session.ring_fill)
        agent.ring_fill_peak.clear()
        agent.session.ring_fill.clear()
        return peaks

    try:
        taken: dict[str, float] = agent.on_drain_thread(take)
    except Exception as exc:  # shutting down: the peaks as they stand
        log.debug("ring fill unavailable: %s", exc)
        return dict(agent.ring_fill_peak)
    return taken


def liveness(agent: Agent) -> tuple[int, str]:
    """``/healthz``: 503 when a part only a restart repairs has stopped (the history writer thread); else 200,
    with ``ok``, or what is degraded (a history that fails or is disabled: a restart would not help)."""
    history = agent.history_stats()
    failing = _failing_emitters(agent)  # a receiver that is down: a restart would not help either
    if (history is None or history["state"] == "ok") and not failing:
        return 200, "ok\n"
    lines = [f"history {history['state']}: {'; '.join(history['problems'])}\n"] \
        if history is not None and history["state"] != "ok" else []
    lines += [f"emitter {name} failing for {seconds:.0f}s\n" for name, seconds in failing]
    return (503 if history is not None and history["state"] == "stopped" else 200), "".join(lines)


def _failing_emitters(agent: Agent) -> list[tuple[str, float]]:
    """Emitters sending off the node whose sends have failed longer than their ``unhealthy_after``."""
    failing = []
    for worker in list(agent.session.workers):
        stats = worker.as_dict()
        seconds, threshold = stats.get("failing_for_s"), stats.get("unhealthy_after_s")
        if isinstance(seconds, float | int) and isinstance(threshold, float | int) and seconds >= threshold:
            failing.append((worker.emitter.name, float(seconds)))
    return failing


def is_ready(agent: Agent) -> bool:
    """Ready: the agent is draining, at least one probe is attached and every enricher is ready (k8s: the
    pods of this node were listed once) (``/readyz``, ``jalki_ready``)."""
    return not not_ready_reason(agent)


def not_ready_reason(agent: Agent) -> str:
    """Why the agent is not ready (``""``: it is)."""
    if not agent.ready:
        return "not draining"
    if not any(d.stats.rung for d in list(agent.deployments.values())):
        return "no probe attached"
    enrich = agent.session.enrich
    waiting = enrich.not_ready() if enrich is not None else []
    return "enricher " + "; ".join(waiting) if waiting else ""


MAX_CONNECTIONS = 64
"""Connections the metrics port holds open at once. A connection beyond it closes the oldest one still
sending its request (``evicted``), or is itself closed (``limit``) when every open one is being answered,
so clients that hold connections half-sent can never keep a scraper out."""

REQUEST_TIMEOUT_S = 10.0
"""Time a client has to send its whole request head; a connection still sending after it is closed."""

WRITE_TIMEOUT_S = 30.0
"""Time a client has to read its reply."""

SHUTDOWN_TIMEOUT_S = 30.0
"""Time closing the port waits for its connections to end once they are cancelled; they end at their
next step, so only a starved loop thread comes near it."""

MAX_HEAD_BYTES = 8192
"""Longest request line or header line, and the most header lines times this, a request head may have."""

SCRAPE_THREADS = 2
"""Threads that build ``/metrics`` replies (the only threads the metrics port ever uses besides its own)."""

LOG_EVERY_S = 60.0
"""Closed connections are logged at most this often, as one summary line."""

CLOSE_REASONS = ("limit", "evicted", "timeout", "bad_request", "disconnect")
"""Why the metrics port closed a connection without a complete reply (``jalki_metrics_connections_closed``)."""


class _Pending:
    """An open connection of the metrics port."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.reading = True  # still sending its request: the one to close first when the port is full


class _ServerCollector:
    """The metrics port's own figures."""

    def __init__(self, server: MetricsServer) -> None:
        self.server = server

    def collect(self) -> Iterator[Metric]:
        closed = CounterMetricFamily("jalki_metrics_connections_closed", "Metrics-port connections closed "
                                     "without a reply: over the connection limit, evicted (the oldest one still "
                                     "sending when the port was full), request timeout, bad request, client "
                                     "gone.", labels=["reason"])
        for reason in CLOSE_REASONS:
            closed.add_metric([reason], self.server.closed[reason])
        yield closed
        yield GaugeMetricFamily("jalki_metrics_connections", "Open metrics-port connections.",
                                value=len(self.server._open))


class MetricsServer:
    """The HTTP exposition server: one asyncio thread, bounded in connections, time and threads.

    One request per connection (HTTP/1.0 semantics, ``Connection: close``):
    ``GET``/``HEAD`` of ``/metrics``, ``/healthz``, ``/readyz``. The host may
    be an IPv4 or IPv6 literal or a name (every address it resolves to is
    bound).
    """

    def __init__(self, agent: Agent, address: tuple[str, int]) -> None:
        self.agent = agent
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(AgentCollector(agent))
        self.registry.register(_ServerCollector(self))
        self.closed: Counter[str] = Counter()
        self._open: dict[asyncio.Task[None], _Pending] = {}
        self._unlogged: Counter[str] = Counter()
        self._next_log = 0.0
        self._pool = ThreadPoolExecutor(SCRAPE_THREADS, thread_name_prefix="jalki-scrape")
        self._loop = asyncio.new_event_loop()
        host, port = address[0].strip("[]"), address[1]
        try:
            self._server = self._loop.run_until_complete(asyncio.start_server(
                self._on_client, host or None, port, limit=MAX_HEAD_BYTES, reuse_address=True))
        except OSError as exc:
            self._loop.close()
            self._pool.shutdown(wait=False)
            shown = f"[{host}]" if ":" in host else host
            raise JalkiError(f"cannot serve metrics on {shown}:{port}: {exc.strerror or exc}",
                             hint="give --metrics-addr a free HOST:PORT, or --metrics-addr off") from exc
        bound = self._server.sockets[0].getsockname()
        self.address: tuple[str, int] = (str(bound[0]), int(bound[1]))
        self._thread = threading.Thread(target=self._loop.run_forever, name="jalki-metrics", daemon=True)

    def start(self) -> None:
        """Serve in the background."""
        self._thread.start()

    def close(self) -> None:
        """Stop serving: close the port and every connection."""
        async def shutdown() -> None:
            self._server.close()
            tasks = list(self._open)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        # queued renders first: a connection waiting for one is then cancelled at once, and the loop
        # thread is not starved of the GIL by renders nobody will read
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(SHUTDOWN_TIMEOUT_S)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
        elif not self._loop.is_closed():
            self._loop.run_until_complete(shutdown())
        if not self._thread.is_alive() and not self._loop.is_closed():
            self._loop.close()

    # ---- connections (the metrics thread) ------------------------------------------

    def _note(self, reason: str) -> None:
        """Count a connection closed without a reply; log a summary at most every LOG_EVERY_S."""
        self.closed[reason] += 1
        if reason == "disconnect":  # clients going away is not news
            return
        self._unlogged[reason] += 1
        now = time.monotonic()
        if now >= self._next_log:
            self._next_log = now + LOG_EVERY_S
            summary = ", ".join(f"{count} {reason}" for reason, count in sorted(self._unlogged.items()))
            self._unlogged.clear()
            log.warning("metrics port: closed connections without a reply (%s); at most %d open at once, "
                        "%gs to send a request", summary, MAX_CONNECTIONS, REQUEST_TIMEOUT_S)

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._open) >= MAX_CONNECTIONS:
            oldest = next((t for t, pending in self._open.items() if pending.reading), None)
            if oldest is None:
                self._note("limit")
                writer.transport.abort()
                return
            self._note("evicted")
            self._open.pop(oldest).writer.transport.abort()
            oldest.cancel()
        pending = self._open[task] = _Pending(writer)
        try:
            try:
                # asyncio.timeout, not wait_for: wait_for runs the read or drain as a task of its own, and
                # one cancelled at shutdown can end with an exception nobody retrieves (asyncio logs a
                # traceback at exit)
                async with asyncio.timeout(REQUEST_TIMEOUT_S):
                    method, path = await _read_head(reader)
            except TimeoutError:
                self._note("timeout")
                return
            except (ValueError, asyncio.LimitOverrunError):
                self._note("bad_request")
                with contextlib.suppress(Exception):
                    writer.write(_response(400, b"bad request\n"))
                    async with asyncio.timeout(WRITE_TIMEOUT_S):
                        await writer.drain()
                return
            pending.reading = False
            if writer.transport.is_closing():  # sent a request and left: render nothing for nobody
                self._note("disconnect")
                return
            writer.write(await self._reply(method, path))
            async with asyncio.timeout(WRITE_TIMEOUT_S):
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            self._note("disconnect")
        except Exception as exc:  # never a traceback per connection: one line, and keep serving
            self._note("disconnect")
            log.debug("metrics port: %s: %s", type(exc).__name__, exc)
        finally:
            self._open.pop(task, None)
            writer.transport.abort()

    async def _reply(self, method: str, path: str) -> bytes:
        if method not in ("GET", "HEAD"):
            return _response(405, b"only GET and HEAD\n", head_only=method == "HEAD")
        head_only = method == "HEAD"
        path = path.split("?", 1)[0]
        if path == "/metrics":
            body = await self._loop.run_in_executor(self._pool, generate_latest, self.registry)
            return _response(200, body, CONTENT_TYPE_LATEST, head_only=head_only)
        if path == "/healthz":
            code, text = liveness(self.agent)
            return _response(code, text.encode(), head_only=head_only)
        if path == "/readyz":
            why = not_ready_reason(self.agent)
            return _response(503 if why else 200, f"not ready: {why}\n".encode() if why else b"ready\n",
                             head_only=head_only)
        return _response(404, b"not found: try /metrics, /healthz, /readyz\n", head_only=head_only)


async def _read_head(reader: asyncio.StreamReader) -> tuple[str, str]:
    """The method and target of an HTTP request; its headers are read and ignored.

    :raises ValueError: not an HTTP request line, or too many header lines.
    """
    request_line = (await reader.readuntil(b"\n")).decode("latin-1").split()
    if len(request_line) != 3 or not request_line[2].startswith("HTTP/"):
        raise ValueError("not an HTTP request")
    for _ in range(64):
        if not (await reader.readuntil(b"\n")).strip():
            return request_line[0], request_line[1]
    raise ValueError("too many header lines")


def _response(code: int, body: bytes, content_type: str = "text/plain; charset=utf-8", *,
              head_only: bool = False) -> bytes:
    head = (f"HTTP/1.1 {code} {HTTPStatus(code).phrase}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    return head.encode("latin-1") + (b"" if head_only else body)
