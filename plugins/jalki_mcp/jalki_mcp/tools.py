"""The toolset of ``jalki mcp``, without MCP: each tool returns a short text summary and a typed result.

:mod:`jalki_mcp.server` publishes these as MCP tools (output schemas from the
pydantic models below). The daemon is reached through the SDK
(:class:`jalki_core.sdk.AsyncClient`, one connection per call, so a daemon
restarted meanwhile is found again); with no daemon, ``ask`` answers from the
knowledge base and every result says ``daemon: false`` and why.

Output is bounded whatever the daemon holds: ``get_events`` reads at most
:data:`SCAN_EVENTS` events per call, summarises them (counts by type,
destination and process) and lists at most ``limit`` (default 50, at most
500), with ``truncated``, ``next_cursor`` (the last ``seq`` listed, for
``cursor``) and ``dropped`` (what the daemon lost for these probes, so counts
are lower bounds); ``ask`` lists at most :data:`MAX_FINDINGS` findings, each
with the ``seq`` and ``id`` of at most :data:`MAX_EVIDENCE_IDS` evidence events,
as the answer's evidence names them (``specs/ask.md``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, Field

from jalki_core.errors import DaemonUnavailable, JalkiError, UsageError

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
SCAN_EVENTS = 1000
"""Events read from the daemon per ``get_events`` call (one reply frame holds about 1,400)."""
MAX_FINDINGS = 10
MAX_EVIDENCE_IDS = 20
"""Evidence events named per finding: the first its groups list, group by group."""
MAX_GROUPS = 10
"""Destinations and processes listed in a summary."""
MAX_SECONDS = 300.0


class Daemon(Protocol):
    """What the tools use of :class:`jalki_core.sdk.AsyncClient`."""

    async def status(self) -> Any: ...
    async def probes(self) -> Any: ...
    async def events(self, **filters: Any) -> Any: ...
    async def recent(self, **filters: Any) -> Any: ...
    async def ask(self, question: str, seconds: float = 10, **options: Any) -> Any: ...
    async def deploy(self, probe: str, **options: Any) -> Any: ...
    async def undeploy(self, probe: str) -> Any: ...


class Connector(Protocol):
    """Opens a daemon connection for one tool call."""

    def __call__(self) -> AbstractAsyncContextManager[Any]: ...


def sdk_connector(socket: Path | None) -> Connector:
    """Connections through the SDK to the daemon at ``socket`` (default ``$JALKI_SOCKET``, else the default path)."""
    from jalki_core.sdk import AsyncClient

    def connect() -> AbstractAsyncContextManager[Any]:
        return AsyncClient(socket)

    return connect


def plain(value: Any) -> Any:
    """A JSON value from an SDK result (its protocol object), a mapping or a list."""
    raw = getattr(value, "raw", None)
    if isinstance(raw, dict):
        return raw
    if isinstance(value, Mapping):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    return value


# ---- results ----------------------------------------------------------------------------------------------

class DaemonNote(BaseModel):
    """Whether the daemon answered, and if not why."""

    daemon: bool = Field(description="True when a jalki daemon answered this call.")
    note: str | None = Field(default=None, description="Why the daemon was not used (no daemon, not allowed), if so.")


class ProbeMatch(BaseModel):
    entry: str
    layer: str
    score: int
    summary: str
    event_type: str
    plugin: str | None
    probe: str | None


class FindProbesResult(BaseModel):
    question: str
    matches: list[ProbeMatch]
    understood_words: list[str] = Field(default_factory=list, description="When nothing matched: words to use.")


class ProbeInfoOut(BaseModel):
    name: str
    plugin: str
    observes: str
    event_types: list[str]
    deployed: bool | None = Field(description="Deployed in the daemon now; null without a daemon.")


class ListProbesResult(DaemonNote):
    probes: list[ProbeInfoOut]


class ProbeStatus(BaseModel):
    probe: str
    attach: str | None
    events: int
    dropped: int
    drops: dict[str, int]
    filters: dict[str, int]
    ttl_remaining_s: float | None


class StatusResult(DaemonNote):
    socket: str
    version: str | None = None
    uptime_s: float | None = None
    seq: int | None = Field(default=None, description="The latest event sequence number the daemon assigned.")
    probes: list[ProbeStatus] = Field(default_factory=list)
    history_state: str | None = None
    subscribers_dropped_total: int | None = None
    installed_probes: list[str] = Field(default_factory=list)


K8S_NOTE = ("Only events of {} (Kubernetes names; the daemon must run with --enrich k8s, and events "
            "without Kubernetes names never match).")


def check_k8s(**values: str | None) -> None:
    """Refuse a ``pod``/``namespace``/``container``/``workload`` no Kubernetes object can have, in one line
    (before any daemon is asked, so the answer is the same without one)."""
    from jalki_core.daemon.protocol import k8s_name_problem

    for name, value in values.items():
        if value is not None and (problem := k8s_name_problem(name, value)) is not None:
            raise UsageError(problem)


class EventFilters(BaseModel):
    """Filters of ``get_events``; every one that is set must match."""

    probe: str | None = None
    event_type: str | None = None
    pid: int | None = Field(default=None, ge=1, le=4_194_304)
    command: str | None = Field(default=None, min_length=1, max_length=15)
    src_ip: str | None = None
    dst_ip: str | None = None
    src_port: int | None = Field(default=None, ge=1, le=65535)
    dst_port: int | None = Field(default=None, ge=1, le=65535)
    pod: str | None = Field(default=None, description=K8S_NOTE.format("this pod name (k8s.pod.name)"))
    namespace: str | None = Field(default=None, description=K8S_NOTE.format("this namespace (k8s.namespace.name)"))
    container: str | None = Field(default=None, description=K8S_NOTE.format("this container name "
                                                                            "(k8s.container.name)"))
    workload: str | None = Field(default=None, description=K8S_NOTE.format(
        "this workload: NAME of any kind, or KIND/NAME (e.g. deployment/checkout)"))
    since: str | float | None = Field(default=None, description="RFC 3339 time, or seconds ago.")
    history: bool = Field(default=False, description="Read the daemon's SQLite history instead of its in-memory rings.")


class Count(BaseModel):
    key: str
    events: int


class EventsSummary(BaseModel):
    scanned: int = Field(description="Events read for this call (the summary covers these).")
    by_type: list[Count]
    by_destination: list[Count]
    by_process: list[Count]
    by_pod: list[Count] = Field(default_factory=list, description="pod/namespace of events with Kubernetes names.")


class EventsResult(DaemonNote):
    summary: EventsSummary
    events: list[dict[str, Any]]
    returned: int
    truncated: bool = Field(description="More matching events exist than were listed: page with next_cursor.")
    next_cursor: int | None = Field(description="Pass as cursor to list the events after the last one here.")
    dropped: int = Field(description="Events the kernel or daemon lost for these probes: counts are lower bounds.")
    dropped_by_cause: dict[str, int]


class FindingOut(BaseModel):
    entry: str
    interpretation: str
    severity: str
    conclusion: str
    action: str
    errno: str | None = Field(default=None, description="The errno the finding states (ECONNREFUSED…), if any.")
    detail: str
    events: int
    destinations: list[str]
    processes: list[str]
    pods: list[str] = Field(default_factory=list, description="pod/namespace (workload) of the evidence events, "
                                                              "when the daemon runs with --enrich k8s.")
    evidence_ids: list[int] = Field(description="seq of the first evidence events: get_events with cursor=seq-1 "
                                                "lists the event seq first.")
    evidence_event_ids: list[str] = Field(description="The id of those same events, in the same order.")
    evidence_ids_total: int = Field(description="Evidence events in all (those named and the rest).")


class AskToolResult(DaemonNote):
    question: str
    mode: str = Field(description="observed, kb_only or no_match.")
    answer: str
    problem_found: bool
    findings: list[FindingOut]
    findings_total: int
    possible_causes: list[dict[str, Any]]
    notes: list[str]


class VerdictOut(BaseModel):
    interpretation: str
    severity: str
    holds: bool
    needs_events: int | None
    counts_toward: bool | None
    missing_fields: list[str]
    conclusion: str
    action: str


class ExplainResult(BaseModel):
    entry: str
    event: dict[str, Any]
    verdicts: list[VerdictOut]


class DeployResult(BaseModel):
    probe: str
    changed: bool | None
    attach: str | None
    deployment: dict[str, Any]


# ---- the tools --------------------------------------------------------------------------------------------

Summary = str


class JalkiTools:
    """The tools' logic over a daemon connector and the knowledge base.

    :param connect: opens a daemon connection per call (default: the SDK at ``socket``).
    """

    def __init__(self, socket: Path | None = None, *, connect: Connector | None = None) -> None:
        from jalki_core.daemon.protocol import socket_path_from_env

        self.socket = socket_path_from_env(socket)
        self.connect = connect or sdk_connector(socket)

    # -- knowledge base (no daemon needed) --

    def find_probes(self, question: str) -> tuple[Summary, FindProbesResult]:
        from jalki_core.kb import default_kb, find, understood_words

        kb = default_kb()
        matches = find(question, kb, limit=10)
        rows = [ProbeMatch(entry=m.entry.id, layer=m.entry.layer, score=m.score, summary=m.entry.summary,
                           event_type=m.entry.event_type,
                           plugin=m.entry.implemented_by.plugin if m.entry.implemented_by else None,
                           probe=m.entry.implemented_by.probe if m.entry.implemented_by else None)
                 for m in matches]
        if not rows:
            words = understood_words(kb)[:40]
            return (f"No knowledge-base entry matches {question!r}; ask with words such as: "
                    f"{', '.join(words[:12])}.", FindProbesResult(question=question, matches=[],
                                                                   understood_words=words))
        best = ", ".join(f"{r.entry} ({r.probe or 'no probe'})" for r in rows[:3])
        return f"{len(rows)} entries match, best first: {best}.", FindProbesResult(question=question, matches=rows)

    def explain(self, entry: str, fields: Mapping[str, str]) -> tuple[Summary, ExplainResult]:
        from jalki_core.kb.explain import explain

        explanation = explain(entry, dict(fields))
        verdicts = [VerdictOut(interpretation=v.interpretation.id, severity=v.interpretation.severity,
                               holds=v.holds, needs_events=v.needs_events, counts_toward=v.counts_toward,
                               missing_fields=list(v.missing_fields), conclusion=v.interpretation.conclusion,
                               action=v.interpretation.action) for v in explanation.verdicts]
        holding = [v.interpretation for v in verdicts if v.holds]
        text = (f"{entry}: {', '.join(holding)} hold{'s' if len(holding) == 1 else ''} for these values."
                if holding else f"{entry}: no interpretation holds for these values alone.")
        return text, ExplainResult(entry=entry, event=explanation.event, verdicts=verdicts)

    # -- daemon-backed --

    def _no_daemon(self, exc: DaemonUnavailable) -> str:
        return exc.one_line()

    async def list_probes(self) -> tuple[Summary, ListProbesResult]:
        try:
            async with self.connect() as daemon:
                probes = [plain(p) for p in await daemon.probes()]
            rows = [ProbeInfoOut(name=p["name"], plugin=p.get("plugin", ""), observes=p.get("observes", ""),
                                 event_types=list(p.get("event_types") or ()), deployed=bool(p.get("deployed")))
                    for p in probes]
            deployed = [row.name for row in rows if row.deployed]
            return (f"{len(rows)} probes installed; deployed: {', '.join(deployed) or 'none'}.",
                    ListProbesResult(daemon=True, probes=rows))
        except DaemonUnavailable as exc:
            from jalki_core.plugins import JalkiPlugins

            note = self._no_daemon(exc)
            rows = [ProbeInfoOut(name=e.probe.name, plugin=e.owner.plugin, observes=e.probe.observes,
                                 event_types=list(e.probe.event_types), deployed=None)
                    for e in sorted(JalkiPlugins().probes, key=lambda e: e.probe.name)]
            return (f"{len(rows)} probes installed here (no daemon: {note}).",
                    ListProbesResult(daemon=False, note=note, probes=rows))

    async def status(self) -> tuple[Summary, StatusResult]:
        try:
            async with self.connect() as daemon:
                status = plain(await daemon.status())
        except DaemonUnavailable as exc:
            from jalki_core.plugins import JalkiPlugins

            note = self._no_daemon(exc)
            names = sorted(entry.probe.name for entry in JalkiPlugins().probes)
            return (f"No daemon: {note}. {len(names)} probes are installed.",
                    StatusResult(daemon=False, note=note, socket=str(self.socket), installed_probes=names))
        probes = [_probe_status(name, deployment) for name, deployment in sorted(status.get("probes", {}).items())]
        history = status.get("history") or {}
        dropped = sum(p.dropped for p in probes)
        text = (f"Daemon {status.get('version')} up {status.get('uptime_s', 0):.0f}s; "
                f"{len(probes)} probes deployed ({', '.join(p.probe for p in probes) or 'none'}); "
                f"{dropped} events lost.")
        return text, StatusResult(daemon=True, socket=status.get("socket") or str(self.socket),
                                  version=status.get("version"), uptime_s=status.get("uptime_s"),
                                  seq=status.get("seq"), probes=probes, history_state=history.get("state"),
                                  subscribers_dropped_total=(status.get("subscribers") or {}).get("dropped_total"))

    async def get_events(self, filters: EventFilters | None, limit: int = DEFAULT_LIMIT,
                         cursor: int | None = None) -> tuple[Summary, EventsResult]:
        if not 1 <= limit <= MAX_LIMIT:
            raise UsageError(f"limit {limit} is out of range", hint=f"use 1 to {MAX_LIMIT}")
        filters = filters or EventFilters()
        check_k8s(pod=filters.pod, namespace=filters.namespace, container=filters.container,
                  workload=filters.workload)
        query = filters.model_dump(exclude={"history"}, exclude_none=True)
        empty = EventsSummary(scanned=0, by_type=[], by_destination=[], by_process=[])
        try:
            async with self.connect() as daemon:
                read = daemon.recent if filters.history else daemon.events
                if cursor is None:
                    scanned = [plain(e) for e in await read(**query, limit=SCAN_EVENTS)]
                else:
                    scanned = [plain(e) for e in await read(**query, after=cursor, limit=SCAN_EVENTS)]
                status = plain(await daemon.status())
        except DaemonUnavailable as exc:
            note = self._no_daemon(exc)
            return (f"No events: {note}.", EventsResult(daemon=False, note=note, summary=empty, events=[],
                                                        returned=0, truncated=False, next_cursor=None, dropped=0,
                                                        dropped_by_cause={}))
        if cursor is not None:
            scanned = [e for e in scanned if _seq(e) > cursor]
        scanned = scanned[:SCAN_EVENTS]  # bounded even if a daemon ignored the limit
        listed = scanned[:limit]
        more = len(scanned) > len(listed) or len(scanned) >= SCAN_EVENTS
        next_cursor = _seq(listed[-1]) if listed and more else None
        drops = _drops_for(status, filters.probe)
        summary = summarise(scanned)
        types = ", ".join(f"{c.key} {c.events}" for c in summary.by_type[:3]) or "none"
        text = (f"{len(scanned)} events read ({types}); {len(listed)} listed"
                f"{', more with cursor=' + str(next_cursor) if next_cursor is not None else ''}; "
                f"{sum(drops.values())} lost by the daemon or kernel for these probes.")
        return text, EventsResult(daemon=True, summary=summary, events=listed, returned=len(listed), truncated=more,
                                  next_cursor=next_cursor, dropped=sum(drops.values()), dropped_by_cause=drops)

    async def ask(self, question: str, seconds: float = 10, pid: int | None = None, port: int | None = None,
                  pod: str | None = None, namespace: str | None = None, container: str | None = None,
                  workload: str | None = None) -> tuple[Summary, AskToolResult]:
        if not 0 < seconds <= MAX_SECONDS:
            raise UsageError(f"seconds {seconds:g} is out of range",
                             hint=f"use more than 0 and at most {MAX_SECONDS:g}")
        k8s = {"pod": pod, "namespace": namespace, "container": container, "workload": workload}
        check_k8s(**k8s)
        try:
            async with self.connect() as daemon:
                answer = plain(await daemon.ask(question, seconds, pid=pid, port=port,
                                                **{k: v for k, v in k8s.items() if v is not None}))
            return answer["answer"], _ask_result(answer, daemon=True)
        except DaemonUnavailable as exc:
            note = self._no_daemon(exc)
        from jalki_core.ask.engine import ask as ask_here

        def no_daemon(*_: Any) -> Any:
            raise JalkiError(f"no daemon ({note})")

        result = ask_here(question, seconds=seconds, pid=pid, port=port, collect=no_daemon).as_dict()
        return str(result["answer"]), _ask_result(result, daemon=False, note=note)

    async def deploy_probe(self, probe: str, ttl: float | None = None, sample: float | None = None,
                           pid: int | None = None, port: int | None = None) -> tuple[Summary, DeployResult]:
        async with self.connect() as daemon:
            deployment = plain(await daemon.deploy(probe, ttl=ttl, sample=sample, pid=pid, port=port))
        changed = deployment.get("changed")
        text = (f"{probe} {'attached' if changed else 'already deployed as asked'} on "
                f"{deployment.get('attach')}.")
        return text, DeployResult(probe=probe, changed=changed, attach=deployment.get("attach"),
                                  deployment=deployment)

    async def undeploy_probe(self, probe: str) -> tuple[Summary, DeployResult]:
        async with self.connect() as daemon:
            deployment = plain(await daemon.undeploy(probe))
        text = f"{probe} detached after {deployment.get('events', 0)} events."
        return text, DeployResult(probe=probe, changed=True, attach=None, deployment=deployment)


# ---- helpers ----------------------------------------------------------------------------------------------

def _seq(event: Mapping[str, Any]) -> int:
    seq = event.get("seq")
    return seq if isinstance(seq, int) else 0


def _probe_status(name: str, deployment: Mapping[str, Any]) -> ProbeStatus:
    drops = {cause: int(n) for cause, n in (deployment.get("drops") or {}).items() if n}
    return ProbeStatus(probe=name, attach=deployment.get("attach"), events=int(deployment.get("events") or 0),
                       dropped=sum(drops.values()), drops=drops, filters=dict(deployment.get("filters") or {}),
                       ttl_remaining_s=deployment.get("ttl_remaining_s"))


def _drops_for(status: Mapping[str, Any], probe: str | None) -> dict[str, int]:
    """Losses by cause over the deployed probes (or one), plus events dropped for slow subscribers."""
    total: Counter[str] = Counter()
    for name, deployment in (status.get("probes") or {}).items():
        if probe is None or name == probe:
            total.update({cause: int(n) for cause, n in (deployment.get("drops") or {}).items() if n})
    handoff = (status.get("subscribers") or {}).get("handoff_dropped")
    if handoff:
        total["handoff_dropped"] += int(handoff)
    return dict(total)


def _address(network: Mapping[str, Any] | None) -> str | None:
    if not network or not isinstance(network.get("dst_ip"), str):
        return None
    ip, port = network["dst_ip"], network.get("dst_port")
    host = f"[{ip}]" if ":" in ip else ip
    return f"{host}:{port}" if isinstance(port, int) else host


def _process(process: Mapping[str, Any] | None) -> str | None:
    if not process or not isinstance(process.get("pid"), int):
        return None
    return f"{process.get('command') or '?'} (pid {process['pid']})"


def _top(counter: Counter[str]) -> list[Count]:
    return [Count(key=key, events=n) for key, n in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))
            [:MAX_GROUPS]]


def summarise(events: Sequence[Mapping[str, Any]]) -> EventsSummary:
    """Counts by type, destination, process and pod (the busiest :data:`MAX_GROUPS` of each)."""
    types: Counter[str] = Counter()
    destinations: Counter[str] = Counter()
    processes: Counter[str] = Counter()
    pods: Counter[str] = Counter()
    for event in events:
        k8s = event.get("k8s")
        if isinstance(k8s, Mapping) and k8s.get("k8s.pod.name"):
            pods[f"{k8s['k8s.pod.name']}/{k8s.get('k8s.namespace.name')}"] += 1
        types[str(event.get("type"))] += 1
        if (address := _address(event.get("network_data"))) is not None:
            destinations[address] += 1
        if (process := _process(event.get("process_data"))) is not None:
            processes[process] += 1
    return EventsSummary(scanned=len(events), by_type=_top(types), by_destination=_top(destinations),
                         by_process=_top(processes), by_pod=_top(pods))


def _named(evidence: Sequence[Mapping[str, Any]], key: str) -> list[Any]:
    """The ``key`` list (``event_seqs``, ``event_ids``) of each evidence group in turn, at most
    :data:`MAX_EVIDENCE_IDS` in all (answers of an older daemon name none)."""
    return [item for group in evidence for item in group.get(key) or ()][:MAX_EVIDENCE_IDS]


def _ask_result(answer: Mapping[str, Any], *, daemon: bool, note: str | None = None) -> AskToolResult:
    findings = list(answer.get("findings") or ())
    rows = []
    for finding in findings[:MAX_FINDINGS]:
        evidence = list(finding.get("evidence") or ())
        destinations = _names((d.get("address"), d.get("events"))
                              for g in evidence for d in g.get("destinations", ()))
        processes = _names((f"{p.get('command') or '?'} (pid {p.get('pid')})", p.get("events"))
                           for g in evidence for p in g.get("processes", ()))
        pods = _names((_pod_name(p), p.get("events")) for g in evidence for p in g.get("pods") or ())
        rows.append(FindingOut(entry=finding["entry"], interpretation=finding["interpretation"],
                               severity=finding["severity"], conclusion=finding.get("conclusion", ""),
                               action=finding.get("action", ""), errno=finding.get("errno"),
                               detail=finding.get("detail", ""),
                               events=int(finding.get("events") or 0), destinations=destinations,
                               processes=processes, pods=pods, evidence_ids=_named(evidence, "event_seqs"),
                               evidence_event_ids=_named(evidence, "event_ids"),
                               evidence_ids_total=sum(int(group.get("events") or 0) for group in evidence)))
    notes = list(answer.get("notes") or ())
    if note:
        notes.insert(0, f"no daemon: {note}; answered from the knowledge base")
    return AskToolResult(daemon=daemon, note=note, question=str(answer.get("question", "")),
                         mode=str(answer.get("mode", "")), answer=str(answer.get("answer", "")),
                         problem_found=bool(answer.get("problem_found")), findings=rows,
                         findings_total=len(findings),
                         possible_causes=list(answer.get("possible_causes") or ())[:MAX_FINDINGS], notes=notes)


def _pod_name(pod: Mapping[str, Any]) -> str:
    """``checkout-7f9c/payments (Deployment checkout)``."""
    owner = f" ({pod.get('workload_kind')} {pod.get('workload')})" if pod.get("workload_kind") else ""
    return f"{pod.get('pod')}/{pod.get('namespace')}{owner}"


def _names(pairs: Iterable[tuple[Any, Any]]) -> list[str]:
    counts: Counter[str] = Counter()
    for name, events in pairs:
        if name:
            counts[str(name)] += int(events or 0)
    return [name for name, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_GROUPS]]
