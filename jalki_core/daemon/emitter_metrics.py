"""The Prometheus families of the emitters' delivery: queue depth (every emitter), and for emitters that send
off the node (otlp, nats) retries, last success and how long sends have been failing.

The emitted/dropped/errors counters are in :mod:`jalki_core.daemon.metrics`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric


def emitter_families(emitters: Mapping[str, Mapping[str, Any]]) -> Iterator[Metric]:
    """Families from the ``emitters`` part of the agent's snapshot (``EmitterWorker.as_dict`` per emitter)."""
    queue_events = GaugeMetricFamily("jalki_emitter_queue_events", "Events waiting in the emitter's queue "
                                     "(and its batch being filled or sent).", labels=["emitter"])
    queue_bytes = GaugeMetricFamily("jalki_emitter_queue_bytes", "JSON bytes waiting in the emitter's queue.",
                                    labels=["emitter"])
    retries = CounterMetricFamily("jalki_emitter_retries", "Sends tried again after a retryable failure.",
                                  labels=["emitter"])
    last_success = GaugeMetricFamily("jalki_emitter_last_success_timestamp_seconds", "When the emitter last "
                                     "delivered a batch (Unix time; absent before its first).", labels=["emitter"])
    failing = GaugeMetricFamily("jalki_emitter_failing_seconds", "How long the emitter's sends have been failing "
                                "(0 while they succeed).", labels=["emitter"])
    for name, stats in sorted(emitters.items()):
        queue = stats["queue"]
        queue_events.add_metric([name], queue["events"] + queue.get("pending", 0))
        queue_bytes.add_metric([name], queue["bytes"])
        if "retries" not in stats:
            continue
        retries.add_metric([name], stats["retries"])
        if stats.get("last_success") is not None:
            last_success.add_metric([name], stats["last_success"])
        failing.add_metric([name], stats.get("failing_for_s") or 0.0)
    yield from (queue_events, queue_bytes, retries, last_success, failing)
