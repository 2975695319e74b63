"""Prometheus families of the enricher stage (``--enrich``), read from the daemon's status at each scrape.

Separate from :mod:`.metrics` because they exist only while an enricher runs (a daemon without
``--enrich`` exposes none of them).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric


def enrich_families(status: Mapping[str, Any] | None) -> Iterator[Metric]:
    """The families of one :meth:`jalki_core.enrich.EnrichStage.status`; none when it is ``None``."""
    if status is None:
        return
    events = CounterMetricFamily("jalki_enrich_events", "Events each enricher saw, by result (its own counters, "
                                 "e.g. k8s: hit, late, miss, host_process, unresolved, container_only, "
                                 "api_unavailable; tombstone and pending_overflow are parts of hit+late and "
                                 "unresolved).", labels=["enricher", "result"])
    errors = CounterMetricFamily("jalki_enrich_errors", "Batches an enricher raised on (they went on "
                                 "unenriched).", labels=["enricher"])
    unenriched = CounterMetricFamily("jalki_enrich_events_unenriched", "Events that went on unenriched because "
                                     "their enricher raised.", labels=["enricher"])
    ready = GaugeMetricFamily("jalki_enrich_ready", "1 once the enricher is ready (k8s: the first pod list of "
                              "this node is done).", labels=["enricher"])
    pending = GaugeMetricFamily("jalki_enrich_pending", "Events an enricher holds back now (waiting for their "
                                "pod).", labels=["enricher"])
    for name, info in sorted(status["enrichers"].items()):
        for result, count in sorted(info.get("counters", {}).items()):
            if isinstance(count, int):
                events.add_metric([name, result], count)
        errors.add_metric([name], info["errors"])
        unenriched.add_metric([name], info["events_unenriched"])
        ready.add_metric([name], 1 if info["ready"] else 0)
        if isinstance(info.get("pending"), int):
            pending.add_metric([name], info["pending"])
    yield from (events, errors, unenriched, ready, pending)
    if status["namespaces"] is not None:
        yield CounterMetricFamily("jalki_emitter_out_of_scope", "Events the emitters did not write because their "
                                  "namespace is not in --namespace (a scope, not a loss).",
                                  value=status["out_of_scope"])
