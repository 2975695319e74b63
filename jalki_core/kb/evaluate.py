"""Evaluate interpretations over events: findings with evidence, ranked.

Each interpretation applies only to events whose ``type`` is its entry's
``event_type``. A per-event rule gives one finding with one evidence group (all
matching events); a windowed rule gives one finding whose evidence has one
group per ``group_by`` value that reached ``at_least`` matching events within
``seconds`` (``last - first <= seconds``). Events without a parseable RFC 3339
``timestamp`` count for per-event rules but cannot place themselves in a
window. Nothing here raises on odd events: a malformed event matches nothing.
"""

from __future__ import annotations

import calendar
import functools
import re
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jalki_core.kb.conditions import Window, get_path, holds
from jalki_core.kb.model import SEVERITY_RANK, Interpretation, named
from jalki_core.kb.summarize import (
    CommandGroup,
    FieldSummary,
    PodGroup,
    decisive_fields,
    detail_phrase,
    group_by_command,
    group_by_pod,
    pinned_values,
    summarize_fields,
    values_phrase,
)

if TYPE_CHECKING:
    from jalki_core.kb.model import KbEntry, KnowledgeBase

MAX_LISTED = 20
"""Most destinations and processes listed per evidence group (the busiest first)."""

MAX_EVIDENCE_IDS = 20
"""Most event ids (and ``seq`` numbers) listed per evidence group: its first events; ``events`` counts them all."""

_TIMESTAMP_RE = re.compile(
    r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})$"
)


@functools.lru_cache(maxsize=4096)
def _epoch_seconds(prefix: str) -> int:
    return calendar.timegm(time.strptime(prefix, "%Y-%m-%dT%H:%M:%S"))


def parse_timestamp(text: Any) -> int | None:
    """Nanoseconds since the epoch of an RFC 3339 timestamp, or ``None`` if it is not one."""
    if not isinstance(text, str):
        return None
    match = _TIMESTAMP_RE.match(text)
    if match is None:
        return None
    prefix, fraction, zone = match.groups()
    try:
        seconds = _epoch_seconds(prefix)
    except ValueError:
        return None
    if zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        seconds -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    return seconds * 1_000_000_000 + int((fraction or "0").ljust(9, "0"))


@dataclass(frozen=True)
class Destination:
    """A destination ``ip:port`` (IPv6 in brackets) and how many matching events went there."""

    address: str
    events: int


@dataclass(frozen=True)
class ProcessRef:
    """A process the events were attributed to, and how many."""

    pid: int
    command: str | None
    events: int


@dataclass(frozen=True)
class Evidence:
    """The events behind one group of a finding.

    :param group: ``(field, value)`` pairs of the window's ``group_by`` (empty for per-event rules).
    :param peak_in_window: most matching events inside one window (windowed rules only).
    :param unattributed: events whose process the kernel could not tell (``process_data.pid`` null).
    :param fields: the values of the finding's decisive fields over these events, with their counts.
    :param commands: the attributed events grouped by command (short-lived processes: one line per program).
    :param event_ids: the ``id`` of the group's first :data:`MAX_EVIDENCE_IDS` events (those that have one),
        in the group's order: as received for per-event rules, by time for windows.
    :param event_seqs: the daemon's ``seq`` of those same events, for those that carry one (events a
        daemon collected); empty for events observed in-process, which have no ``seq``.
    :param pods: the events that name their Kubernetes pod (``k8s``, ``--enrich k8s``), grouped by pod.
    """

    group: tuple[tuple[str, Any], ...]
    events: int
    peak_in_window: int | None
    first: str | None
    last: str | None
    destinations: tuple[Destination, ...]
    processes: tuple[ProcessRef, ...]
    unattributed: int
    fields: tuple[FieldSummary, ...] = ()
    commands: tuple[CommandGroup, ...] = ()
    event_ids: tuple[str, ...] = ()
    event_seqs: tuple[int, ...] = ()
    pods: tuple[PodGroup, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {
            "group": dict(self.group),
            "events": self.events,
            "peak_in_window": self.peak_in_window,
            "first": self.first,
            "last": self.last,
            "destinations": [{"address": d.address, "events": d.events} for d in self.destinations],
            "processes": [{"pid": p.pid, "command": p.command, "events": p.events} for p in self.processes],
            "unattributed": self.unattributed,
            "fields": [summary.as_dict() for summary in self.fields],
            "commands": [command.as_dict() for command in self.commands],
            "event_ids": list(self.event_ids),
            "event_seqs": list(self.event_seqs),
            "pods": [pod.as_dict() for pod in self.pods],
        }


@dataclass(frozen=True)
class Finding:
    """An interpretation that holds over the events, with its evidence.

    :param detail: the decisive values, destination and process in a few words
        (``SIGSEGV (exit 139, core dumped) from crashy (13 processes)``).
    :param decisive_fields: the fields whose values the evidence carries: those
        the rule tests, then those the entry marks important.
    :param names: the interpretation's stated names by kind (``errno`` and the
        vocabulary's ``reported_names``; see :class:`Interpretation`), each
        also an attribute (``finding.errno``, ``finding.tcp_state``).
    """

    entry_id: str
    interpretation_id: str
    severity: str
    conclusion: str
    action: str
    names: tuple[tuple[str, str | None], ...]
    windowed: bool
    evidence: tuple[Evidence, ...]
    detail: str = ""
    decisive_fields: tuple[str, ...] = ()

    def __getattr__(self, kind: str) -> str | None:
        return named(self, kind)

    @property
    def errno(self) -> str | None:
        """The errno name the interpretation states, if any."""
        return dict(self.names).get("errno")

    def name(self, kind: str) -> str | None:
        """The name of this kind the interpretation states (``"errno"``, a reported value set), or ``None``."""
        return dict(self.names).get(kind)

    @property
    def events(self) -> int:
        """Matching events over every evidence group."""
        return sum(group.events for group in self.evidence)

    def rank_key(self) -> tuple[int, int, str, str]:
        """Most severe first, then most events, then entry and interpretation id."""
        return (-SEVERITY_RANK[self.severity], -self.events, self.entry_id, self.interpretation_id)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {
            "entry": self.entry_id,
            "interpretation": self.interpretation_id,
            "severity": self.severity,
            "conclusion": self.conclusion,
            "action": self.action,
            **dict(self.names),
            "windowed": self.windowed,
            "events": self.events,
            "detail": self.detail,
            "decisive_fields": list(self.decisive_fields),
            "evidence": [group.as_dict() for group in self.evidence],
        }


def _destination(event: Mapping[str, Any]) -> str | None:
    ip, port = get_path(event, "network_data.dst_ip"), get_path(event, "network_data.dst_port")
    if not isinstance(ip, str):
        return None
    host = f"[{ip}]" if ":" in ip else ip
    return f"{host}:{port}" if isinstance(port, int) else host


def _evidence(events: Sequence[Mapping[str, Any]], group: tuple[tuple[str, Any], ...],
              peak: int | None, fields: Sequence[tuple[str, str]] = ()) -> Evidence:
    destinations: Counter[str] = Counter()
    processes: Counter[tuple[int, str | None]] = Counter()
    unattributed = 0
    stamped: list[tuple[int, str]] = []
    for event in events:
        address = _destination(event)
        if address is not None:
            destinations[address] += 1
        pid, command = get_path(event, "process_data.pid"), get_path(event, "process_data.command")
        if isinstance(pid, int) and not isinstance(pid, bool):
            processes[(pid, command if isinstance(command, str) else None)] += 1
        else:
            unattributed += 1
        ns = parse_timestamp(event.get("timestamp"))
        if ns is not None:
            stamped.append((ns, event["timestamp"]))
    listed = events[:MAX_EVIDENCE_IDS]
    return Evidence(
        group=group,
        events=len(events),
        peak_in_window=peak,
        first=min(stamped)[1] if stamped else None,
        last=max(stamped)[1] if stamped else None,
        destinations=tuple(Destination(address, count) for address, count in
                           sorted(destinations.items(), key=lambda item: (-item[1], item[0]))[:MAX_LISTED]),
        processes=tuple(ProcessRef(pid, command, count) for (pid, command), count in
                        sorted(processes.items(), key=lambda item: (-item[1], item[0][0]))[:MAX_LISTED]),
        unattributed=unattributed,
        fields=summarize_fields(fields, events),
        commands=group_by_command(events),
        event_ids=tuple(event["id"] for event in listed if isinstance(event.get("id"), str)),
        event_seqs=tuple(event["seq"] for event in listed
                         if isinstance(event.get("seq"), int) and not isinstance(event.get("seq"), bool)),
        pods=group_by_pod(events),
    )


def _group_value(value: Any) -> Any:
    return value if value is None or isinstance(value, str | int | float | bool) else repr(value)


def _peak(stamps: Sequence[int], window_ns: int) -> int:
    """Most stamps (sorted) inside any interval of ``window_ns``."""
    best, start = 0, 0
    for end, stamp in enumerate(stamps):
        while stamp - stamps[start] > window_ns:
            start += 1
        best = max(best, end - start + 1)
    return best


def _window_evidence(window: Window, events: Sequence[Mapping[str, Any]], fields: Sequence[tuple[str, str]]
                     ) -> list[tuple[Evidence, list[Mapping[str, Any]]]]:
    """One evidence group (with its events) per window group that reached ``at_least``, the biggest first."""
    groups: dict[tuple[Any, ...], list[tuple[int, int, Mapping[str, Any]]]] = {}
    for order, event in enumerate(events):
        if window.where is not None and not holds(window.where, event):
            continue
        ns = parse_timestamp(event.get("timestamp"))
        if ns is None:
            continue
        key = tuple(_group_value(get_path(event, name)) for name in window.group_by)
        groups.setdefault(key, []).append((ns, order, event))
    window_ns = round(window.seconds * 1_000_000_000)
    result = []
    for key, members in groups.items():
        members.sort(key=lambda item: (item[0], item[1]))
        peak = _peak([ns for ns, _, _ in members], window_ns)
        if peak >= window.at_least:
            in_group = [event for _, _, event in members]
            result.append((_evidence(in_group, tuple(zip(window.group_by, key, strict=True)), peak, fields),
                           in_group))
    result.sort(key=lambda item: (-item[0].events, repr(item[0].group)))
    return result


def _detail(interpretation: Interpretation, fields: Sequence[tuple[str, str]],
            groups: Sequence[tuple[Evidence, Sequence[Mapping[str, Any]]]]) -> str:
    """The finding's phrase, over its biggest evidence group.

    The groups of a window are separate occurrences (a crash loop of each
    program): mixing them would blur what each one was. A per-event rule has
    one group, all its events.
    """
    evidence, events = groups[0]
    values = values_phrase(summarize_fields(fields, events), len(events), pinned_values(interpretation.rule),
                           kept=[value for _, value in interpretation.names if value])
    phrase = detail_phrase(values, [d.address for d in evidence.destinations], evidence.commands,
                           evidence.unattributed, evidence.pods)
    more = len(groups) - 1
    return phrase + (f"; {more} more group{'s' if more > 1 else ''}" if more else "")


def evaluate_interpretation(interpretation: Interpretation, events: Sequence[Mapping[str, Any]],
                            entry: KbEntry | None = None) -> Finding | None:
    """The finding of one interpretation over events of its entry's type, or ``None``.

    The caller passes only events of the entry's ``event_type`` (see :func:`evaluate`).
    With ``entry``, the evidence also carries the values of the entry's
    important fields (else only those the rule tests).
    """
    rule = interpretation.rule
    fields = decisive_fields(interpretation, entry)
    if isinstance(rule, Window):
        groups = _window_evidence(rule, events, fields)
    else:
        matching = [event for event in events if rule is None or holds(rule, event)]
        groups = [(_evidence(matching, (), None, fields), matching)] if matching else []
    if not groups:
        return None
    evidence = [group for group, _ in groups]
    return Finding(
        entry_id=interpretation.entry_id,
        interpretation_id=interpretation.id,
        severity=interpretation.severity,
        conclusion=interpretation.conclusion,
        action=interpretation.action,
        names=interpretation.names,
        windowed=isinstance(rule, Window),
        evidence=tuple(evidence),
        detail=_detail(interpretation, fields, groups),
        decisive_fields=tuple(name for name, _ in fields),
    )


def evaluate(events: Iterable[Mapping[str, Any]], kb: KnowledgeBase | None = None, *,
             entries: Iterable[str] | None = None) -> list[Finding]:
    """Every finding the KB's interpretations produce over ``events``, most important first.

    :param events: event objects as jalki emits them (see ``specs/event.schema.json``).
    :param kb: the knowledge base; default: :func:`jalki_core.kb.default_kb`.
    :param entries: only evaluate the interpretations of these entry ids.
    """
    if kb is None:
        from jalki_core.kb.load import default_kb

        kb = default_kb()
    by_type: dict[str, list[Mapping[str, Any]]] = {}
    for event in events:
        if isinstance(event, Mapping) and isinstance(event.get("type"), str):
            by_type.setdefault(event["type"], []).append(event)
    wanted = set(entries) if entries is not None else None
    findings = []
    for entry, interpretation in kb.interpretations():
        if wanted is not None and entry.id not in wanted:
            continue
        of_type = by_type.get(entry.event_type)
        if of_type:
            finding = evaluate_interpretation(interpretation, of_type, entry)
            if finding is not None:
                findings.append(finding)
    return sorted(findings, key=Finding.rank_key)
