"""``ask`` through a running daemon: the same engine, collecting from the daemon's session.

Probes the question needs that are not deployed are deployed for the
question's duration (with a TTL as a safety net) and removed afterwards;
probes already deployed are shared, and their events are filtered by
``pid``/``port`` in user space. Events are taken from the drain thread as they
arrive, so the answer covers exactly the observation window.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from jalki_core.ask.engine import MAX_EVENTS_KEPT, EventCollector, ProgressCallback, ask
from jalki_core.daemon.protocol import DeploySpec, EventFilter, _field, parse_k8s_fields, parse_pid
from jalki_core.errors import ProtocolError
from jalki_core.kb import parse_timestamp
from jalki_core.session import ProbeRunStats, SessionSummary

if TYPE_CHECKING:
    from jalki_core.daemon.agent import Agent
    from jalki_core.registry import RegisteredProbe

MAX_ASK_SECONDS = 300.0
"""Longest observation one ``ask`` request may ask of the daemon."""

TTL_MARGIN_S = 30.0
"""Probes deployed for a question expire this long after it ends, should the daemon lose track."""


class AgentCollect:
    """A :data:`jalki_core.ask.engine.Collect` that uses the daemon's running session."""

    def __init__(self, agent: Agent, scope: EventFilter | None = None) -> None:
        self.agent = agent
        self.scope = scope
        """Only events these Kubernetes names match are kept (``pod``, ``namespace``, ``container``, ``workload``)."""

    def __call__(self, probes: list[RegisteredProbe], seconds: float, pid: int | None, port: int | None,
                 progress: ProgressCallback | None, cancel: threading.Event | None,
                 ) -> tuple[EventCollector, SessionSummary]:
        names = [registered.probe.name for registered in probes]
        collector = EventCollector(MAX_EVENTS_KEPT, self.scope)
        before = self.agent.snapshot()["probes"]
        added: list[str] = []
        failed: dict[str, ProbeRunStats] = {}
        agent = self.agent
        tap = QuestionTap(names, collector, lambda: agent.stored_seq, pid, port, time.time_ns())
        per_probe = tap.per_probe
        # The tap is in place before the first deploy: a probe shows as deployed (status) as soon as it is
        # attached, and a client that acts on that must find its events in the answer.
        self.agent.add_tap(tap)
        try:
            for name in names:
                if name in before:
                    continue
                try:
                    self.agent.deploy(DeploySpec(name, ttl_s=seconds + TTL_MARGIN_S))
                    added.append(name)
                except ProtocolError as exc:
                    failed[name] = ProbeRunStats(name, error=exc.message)
            started = time.monotonic()
            while (elapsed := time.monotonic() - started) < seconds:
                if (cancel is not None and cancel.is_set()) or self.agent.stopping:
                    break  # the daemon is shutting down: never hold up its exit
                if progress is not None:
                    progress(elapsed, sum(per_probe.values()))
                time.sleep(min(0.2, seconds - elapsed))
            # What the kernel wrote up to now and the drain thread has not read yet (its pause between
            # drains) belongs to the window too, as an in-process ask's final drain gives it.
            try:
                self.agent.on_drain_thread(self.agent.session.drain_once)
            except ProtocolError:
                pass  # the daemon is shutting down
        finally:
            self.agent.remove_tap(tap)
            after = self.agent.snapshot()["probes"]
            for name in added:
                try:
                    after[name] = self.agent.undeploy(name)
                except ProtocolError:
                    pass  # already expired or removed by someone else
        stats = []
        for name in names:
            if name in failed:
                stats.append(failed[name])
                continue
            now, then = after.get(name, {}), before.get(name, {})
            drops = {cause: count - then.get("drops", {}).get(cause, 0)
                     for cause, count in now.get("drops", {}).items()}
            run = ProbeRunStats(name, rung=now.get("attach"), events=per_probe[name])
            run.kernel_drops = {cause: count for cause, count in drops.items()
                                if cause not in ("size_mismatch", "decode_error")}
            run.size_mismatches = drops.get("size_mismatch", 0)
            run.decode_errors = drops.get("decode_error", 0)
            stats.append(run)
        return collector, SessionSummary(stats, {}, time.monotonic() - started)


class QuestionTap:
    """A question's tap on the drain thread's batches: it keeps the events of the asked probes that the
    question's filters pass (:func:`_passes`) and credits each to its own probe.

    :param stored_seq: the agent's latest sequence number (a one-source batch ends at it when its taps see it).
    """

    def __init__(self, names: list[str], collector: EventCollector, stored_seq: Callable[[], int],
                 pid: int | None, port: int | None, asked_ns: int) -> None:
        self.sources = {f"jalki/{name}" for name in names}
        self.collector = collector
        self.stored_seq = stored_seq
        self.pid = pid
        self.port = port
        self.asked_ns = asked_ns
        self.per_probe: dict[str, int] = dict.fromkeys(names, 0)
        """Events kept, per probe name."""

    def __call__(self, events: list[dict[str, Any]]) -> None:
        sources, pid, port, asked_ns = self.sources, self.pid, self.port, self.asked_ns
        source = events[0].get("source")
        if all(event.get("source") == source for event in events):
            if source not in sources:
                return
            # The agent numbers a batch (seq) before its taps see it; one source's batch ends at stored_seq.
            # The events stay as the emitters get them (no seq): evidence names copies that carry it.
            first = self.stored_seq() - len(events) + 1
            kept = [{**event, "seq": seq} for seq, event in enumerate(events, first)
                    if _passes(event, pid, port, asked_ns)]
        else:
            # A mixed batch (an enricher releases the events it held, e.g. a new pod's, with others) is
            # numbered source by source: no seq to name; each event is checked on its own source.
            kept = [event for event in events
                    if event.get("source") in sources and _passes(event, pid, port, asked_ns)]
        if kept:
            for event in kept:
                self.per_probe[str(event["source"]).removeprefix("jalki/")] += 1
            self.collector(kept)


def _passes(event: Mapping[str, Any], pid: int | None, port: int | None, asked_ns: int) -> bool:
    """Whether the question sees ``event``: its filters, and no window that began before it was asked.

    The daemon's anomaly windows run continuously; one that opened before the
    question would bring evidence from before the observation into the answer.
    """
    window_start = (event.get("data") or {}).get("window_start")
    if isinstance(window_start, str) and (parse_timestamp(window_start) or asked_ns) < asked_ns:
        return False
    if pid is not None and (event.get("process_data") or {}).get("pid") != pid:
        return False
    if port is not None:
        network = event.get("network_data") or {}
        # As the kernel-side filter: either port of the socket. An aggregate over a local service's
        # clients (a passive tcp_rtt key) names only the remote side; its local port is data.local_port.
        local_port = (event.get("data") or {}).get("local_port")
        if port not in (network.get("src_port"), network.get("dst_port"), local_port):
            return False
    return True


def ask_through_agent(agent: Agent, fields: Mapping[str, Any]) -> dict[str, Any]:
    """Handle an ``ask`` request: the answer object of ``specs/ask.schema.json``."""
    from jalki_core.errors import UsageError

    question = fields.get("question")
    if not isinstance(question, str) or not question.strip():
        raise ProtocolError("bad_request", "field 'question' must be a non-empty string")
    seconds = fields.get("seconds", 10)
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 < seconds <= MAX_ASK_SECONDS:
        raise ProtocolError("bad_request", f"field 'seconds' must be in (0, {MAX_ASK_SECONDS:g}]")
    options = {
        "pid": parse_pid(fields),
        "port": _field(fields, "port", int, check=lambda v: 0 < v < 65536, rule="must be between 1 and 65535"),
    }
    scope = EventFilter(**parse_k8s_fields(fields))
    scope_or_none = scope if scope.has_k8s else None
    try:
        result = ask(question, seconds=float(seconds), plugins=agent.plugins,
                     collect=AgentCollect(agent, scope_or_none), scope=scope_or_none, **options)
    except UsageError as exc:
        raise ProtocolError("bad_request", exc.message) from exc
    answer = result.as_dict()
    answer["via"] = "daemon"
    return answer
