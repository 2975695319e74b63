"""Prometheus exposition of the daemon: ``/metrics``, ``/healthz`` (alive), ``/readyz`` (draining).

The figures are read at scrape time from the agent (a custom collector, the
way node exporters do it), so every counter is the real running total: events
per probe and type, drops per probe and cause, attach state and rung, program
run time and run count (``bpf_enable_stats``), ring-buffer fill, emitter
events and errors, subscribers, history rows, and API requests.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

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
        ring_fill_peak = dict(agent.ring_fill_peak)
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
        fill = GaugeMetricFamily("jalki_ringbuffer_fill_ratio", "Largest share of the probe's ring buffer a "
                                 "drain has found filled (0 to 1).", labels=["probe"])
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
        emitter_dropped = CounterMetricFamily("jalki_emitter_dropped", "Events an emitter could not write.",
                                              labels=["emitter"])
        for name, stats in sorted(snapshot["emitters"].items()):
            emitted.add_metric([name], stats["events_emitted"])
            emitter_errors.add_metric([name], stats["errors"])
            emitter_dropped.add_metric([name], stats["events_dropped"])
        yield from (emitted, emitter_errors, emitter_dropped)
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
            yield CounterMetricFamily("jalki_history_dropped", "Events the history could not keep up with "
                                      "or failed to write.", value=stats["dropped"])
            yield CounterMetricFamily("jalki_history_errors", "Failed history writes and prunes.",
                                      value=stats["errors"])
        yield GaugeMetricFamily("jalki_ready", "1 while probes are attached and draining.",
                                value=1 if is_ready(agent) else 0)


def is_ready(agent: Agent) -> bool:
    """Ready: the agent is draining and at least one probe is attached (``/readyz``, ``jalki_ready``)."""
    return agent.ready and any(d.stats.rung for d in list(agent.deployments.values()))


def _handler(agent: Agent, registry: CollectorRegistry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                self._send(200, b"ok\n")
            elif path == "/readyz":
                ready = is_ready(agent)
                self._send(200 if ready else 503, b"ready\n" if ready else b"not ready: no probe attached\n")
            else:
                self._send(404, b"not found: try /metrics, /healthz, /readyz\n")

        def _send(self, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug(format, *args)

    return Handler


class MetricsServer:
    """The HTTP exposition server on its own thread."""

    def __init__(self, agent: Agent, address: tuple[str, int]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(AgentCollector(agent))
        try:
            self._httpd = ThreadingHTTPServer(address, _handler(agent, self.registry))
        except OSError as exc:
            raise JalkiError(f"cannot serve metrics on {address[0]}:{address[1]}: {exc.strerror}",
                             hint="give --metrics-addr a free HOST:PORT, or --metrics-addr off") from exc
        self._httpd.daemon_threads = True
        self.address = self._httpd.server_address
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="jalki-metrics", daemon=True)

    def start(self) -> None:
        """Serve in the background."""
        self._thread.start()

    def close(self) -> None:
        """Stop serving."""
        self._httpd.shutdown()
        self._httpd.server_close()
