"""What decided a finding: the values of its decisive fields, the commands behind it, one phrase.

A finding's *decisive fields* come from the knowledge base, not from a list
per finding: the fields its rule tests (window grouping included), then the
fields its entry marks ``important``. The envelope fields that the evidence
already shows as destinations and processes (``network_data.dst_ip``/
``dst_port``, ``process_data.pid``/``command``) are left out.

For each decisive field an evidence group carries the values the events had,
with their counts (:class:`FieldSummary`); the processes are grouped by
command (:class:`CommandGroup`), so 13 short-lived ``crashy`` processes are
one line, not 13. :func:`detail_phrase` turns these into a few words for
people: ``SIGSEGV (exit 139, core dumped) from crashy (13 processes)`` or
``ECONNREFUSED to 10.0.0.5:5432 from api (pid 4242)``. Events enriched with
``--enrich k8s`` are also grouped by pod (:class:`PodGroup`), and the phrase
names the pod, its namespace and workload instead of the process:
``ECONNREFUSED to 10.0.3.4:5432 from checkout-7f9c/payments (Deployment checkout)``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jalki_core.kb.conditions import AllOf, FieldTest, Window, get_path, referenced_fields
from jalki_core.kb.model import BASE_FIELD_TYPES

if TYPE_CHECKING:
    from jalki_core.kb.conditions import Rule
    from jalki_core.kb.model import Interpretation, KbEntry

SHOWN_ELSEWHERE: frozenset[str] = frozenset({
    "network_data.dst_ip", "network_data.dst_port", "process_data.pid", "process_data.command",
})
"""Envelope fields the evidence shows as destinations and processes, not as field values."""

MAX_VALUES = 5
"""Most distinct values listed per field (the most frequent first); the rest are counted in ``other``."""

MAX_PIDS = 8
"""Most pids listed per command (the lowest first: pids grow as a restart loop goes on)."""

MEASUREMENT_SUFFIXES: tuple[str, ...] = ("_ns", "_us", "_ms", "_seconds", "_bytes", "_ratio")
"""Numeric fields so named are measurements: the phrase leaves them out, the evidence gives min and max."""

_NAMED_PHRASE_PARTS = 3
_OTHER_PHRASE_PARTS = 3


@dataclass(frozen=True)
class ValueCount:
    """One value a field had, and on how many events."""

    value: Any
    events: int


@dataclass(frozen=True)
class FieldSummary:
    """The values one decisive field took over a group of events.

    :param type: the field's declared KB type (``signal``, ``errno``, ``integer``…).
    :param values: the most frequent values first, at most :data:`MAX_VALUES`.
    :param other: events whose value is not listed in ``values``.
    :param missing: events without the field (absent or null).
    :param minimum: for numeric fields, the smallest value; ``None`` otherwise.
    :param maximum: for numeric fields, the largest value; ``None`` otherwise.
    """

    field: str
    type: str
    values: tuple[ValueCount, ...]
    other: int
    missing: int
    minimum: int | float | None = None
    maximum: int | float | None = None

    @property
    def present(self) -> int:
        """Events that had the field."""
        return sum(item.events for item in self.values) + self.other

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {
            "field": self.field,
            "type": self.type,
            "values": [{"value": item.value, "events": item.events} for item in self.values],
            "other": self.other,
            "missing": self.missing,
            "min": self.minimum,
            "max": self.maximum,
        }


@dataclass(frozen=True)
class CommandGroup:
    """The events of one command, over however many processes ran it.

    :param command: the command name (``None``: the kernel did not tell it).
    :param processes: distinct pids that ran it.
    :param pids: the lowest :data:`MAX_PIDS` of them, ascending.
    """

    command: str | None
    events: int
    processes: int
    pids: tuple[int, ...]

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {"command": self.command, "events": self.events, "processes": self.processes, "pids": list(self.pids)}

    def phrase(self) -> str:
        """``crashy ×13 (pids 812, 815, …, 13 in all)`` or ``api ×12 (pid 4242)``."""
        pids = ", ".join(str(pid) for pid in self.pids)
        if self.processes > len(self.pids):
            pids += f", …, {self.processes} in all"
        return f"{self.command or '?'} ×{self.events} (pid{'s' if self.processes > 1 else ''} {pids})"


WORKLOAD_KEYS: tuple[tuple[str, str], ...] = (
    ("k8s.deployment.name", "Deployment"), ("k8s.statefulset.name", "StatefulSet"),
    ("k8s.daemonset.name", "DaemonSet"), ("k8s.cronjob.name", "CronJob"), ("k8s.job.name", "Job"),
    ("k8s.replicaset.name", "ReplicaSet"), ("k8s.replicationcontroller.name", "ReplicationController"),
)
"""The ``k8s`` keys that name a pod's workload, the one people know it by first (a Deployment, not its
ReplicaSet; a CronJob, not the Job it made)."""

MAX_PODS = 20
"""Most pods listed per evidence group (the busiest first)."""


@dataclass(frozen=True)
class PodGroup:
    """The events of one Kubernetes pod (events enriched with ``--enrich k8s``).

    :param workload_kind: ``Deployment``, ``StatefulSet``… (``None``: a bare pod, or not known).
    """

    pod: str
    namespace: str
    workload_kind: str | None
    workload: str | None
    events: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {"pod": self.pod, "namespace": self.namespace, "workload_kind": self.workload_kind,
                "workload": self.workload, "events": self.events}

    def phrase(self) -> str:
        """``checkout-7f9c/payments (Deployment checkout)``."""
        owner = f" ({self.workload_kind} {self.workload})" if self.workload_kind else ""
        return f"{self.pod}/{self.namespace}{owner}"


def group_by_pod(events: Sequence[Mapping[str, Any]]) -> tuple[PodGroup, ...]:
    """The events that name their pod (``k8s.pod.name``), grouped by pod, the busiest first."""
    counts: Counter[tuple[str, str, str | None, str | None]] = Counter()
    for event in events:
        k8s = event.get("k8s")
        if not isinstance(k8s, Mapping):
            continue
        pod, namespace = k8s.get("k8s.pod.name"), k8s.get("k8s.namespace.name")
        if not isinstance(pod, str) or not isinstance(namespace, str):
            continue
        kind = name = None
        for key, label in WORKLOAD_KEYS:
            value = k8s.get(key)
            if isinstance(value, str):
                kind, name = label, value
                break
        counts[(pod, namespace, kind, name)] += 1
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0][1], item[0][0]))
    return tuple(PodGroup(pod, namespace, kind, name, count) for (pod, namespace, kind, name), count
                 in ranked[:MAX_PODS])


def decisive_fields(interpretation: Interpretation, entry: KbEntry | None) -> tuple[tuple[str, str], ...]:
    """``(field, type)`` of the fields that decide a finding: those its rule tests, then the entry's important ones.

    Without the entry (an interpretation evaluated on its own) only the rule's
    fields are known, and their type is ``""`` (inferred from the values).
    """
    names: dict[str, None] = dict.fromkeys(referenced_fields(interpretation.rule))
    if entry is not None:
        names.update(dict.fromkeys(spec.name for spec in entry.fields if spec.important))
    result = []
    for name in names:
        if name in SHOWN_ELSEWHERE:
            continue
        spec = entry.field_spec(name) if entry is not None else None
        result.append((name, spec.type if spec is not None else ""))
    return tuple(result)


def pinned_values(rule: Rule | None) -> dict[str, Any]:
    """Fields every matching event has one value of (an ``eq`` test in the rule's top-level conjunction)."""
    pinned: dict[str, Any] = {}

    def walk(node: Rule | None) -> None:
        if isinstance(node, Window):
            walk(node.where)
        elif isinstance(node, AllOf):
            for item in node.items:
                walk(item)
        elif isinstance(node, FieldTest) and node.op == "eq":
            pinned[node.field] = node.value

    walk(rule)
    return pinned


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, list | tuple):
        return " ".join(str(item) for item in value)
    return repr(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _inferred_type(values: Counter[Any]) -> str:
    kinds = {"boolean" if isinstance(v, bool) else "integer" if isinstance(v, int) else
             "number" if isinstance(v, float) else "string" for v in values}
    if kinds <= {"integer"}:
        return "integer"
    if kinds <= {"integer", "number"}:
        return "number"
    return kinds.pop() if len(kinds) == 1 else "string"


def summarize_field(name: str, field_type: str, events: Sequence[Mapping[str, Any]]) -> FieldSummary:
    """The values ``name`` had over ``events``, most frequent first (ties: in value order)."""
    counts: Counter[Any] = Counter()
    missing = 0
    for event in events:
        value = _jsonable(get_path(event, name))
        if value is None:
            missing += 1
        else:
            # JSON true is not 1: keep booleans and numbers apart in the counts.
            counts[(isinstance(value, bool), value)] += 1
    values = Counter({value: count for (_, value), count in counts.items()})
    ranked = sorted(counts.items(), key=lambda item: (-item[1], repr(item[0][1])))
    listed = tuple(ValueCount(value, count) for (_, value), count in ranked[:MAX_VALUES])
    numbers = [value for (_, value) in counts if _is_number(value)]
    return FieldSummary(
        field=name,
        type=field_type or _inferred_type(values),
        values=listed,
        other=sum(count for _, count in ranked[MAX_VALUES:]),
        missing=missing,
        minimum=min(numbers) if numbers else None,
        maximum=max(numbers) if numbers else None,
    )


def summarize_fields(fields: Sequence[tuple[str, str]], events: Sequence[Mapping[str, Any]]
                     ) -> tuple[FieldSummary, ...]:
    """A :class:`FieldSummary` per decisive field that at least one event had."""
    summaries = (summarize_field(name, field_type, events) for name, field_type in fields)
    return tuple(summary for summary in summaries if summary.present)


def group_by_command(events: Sequence[Mapping[str, Any]]) -> tuple[CommandGroup, ...]:
    """The attributed events grouped by command, the busiest command first."""
    events_of: Counter[str | None] = Counter()
    pids_of: dict[str | None, set[int]] = {}
    for event in events:
        pid, command = get_path(event, "process_data.pid"), get_path(event, "process_data.command")
        if not isinstance(pid, int) or isinstance(pid, bool):
            continue
        key = command if isinstance(command, str) else None
        events_of[key] += 1
        pids_of.setdefault(key, set()).add(pid)
    ranked = sorted(events_of.items(), key=lambda item: (-item[1], item[0] or ""))
    return tuple(CommandGroup(command, count, len(pids_of[command]), tuple(sorted(pids_of[command])[:MAX_PIDS]))
                 for command, count in ranked)


def _label(name: str) -> str:
    """``data.exit_code`` → ``exit``; ``data.core_dumped`` → ``core dumped``."""
    return name.rsplit(".", 1)[-1].removesuffix("_code").replace("_", " ")


def _is_measurement(summary: FieldSummary) -> bool:
    return summary.type == "number" or summary.field.endswith(MEASUREMENT_SUFFIXES)


def _counted(text: str, count: int, total: int) -> str:
    return text if count == total else f"{text} ×{count}"


def _value_words(summary: FieldSummary, total: int) -> tuple[str, bool] | None:
    """The words for one field's values and whether they are a name (else a number or a flag); ``None``: say nothing."""
    if summary.type == "boolean":
        true = next((item.events for item in summary.values if item.value is True), 0)
        return (_counted(_label(summary.field), true, total), False) if true else None
    if summary.type in ("integer", "number"):
        if _is_measurement(summary) or summary.other or len(summary.values) > 2:
            return None  # a spread of measurements: the evidence has its min and max
        shown = [item for item in summary.values if item.value != 0]
        if not shown:
            return None
        values = "/".join(_counted(str(item.value), item.events, total) for item in shown)
        return f"{_label(summary.field)} {values}", False
    shown = list(summary.values[:2])
    values = "/".join(_counted(str(item.value), item.events, total) for item in shown)
    if len(summary.values) > 2 or summary.other:
        values += "/…"
    # Errno, signal, TCP state… names speak for themselves; free-form strings need their field's name.
    named_type = summary.type not in BASE_FIELD_TYPES or summary.type == "errno"
    return (values if named_type else f"{_label(summary.field)} {values}"), True


def values_phrase(summaries: Sequence[FieldSummary], total: int, pinned: Mapping[str, Any],
                  kept: Sequence[Any] = ()) -> str:
    """``SIGSEGV (exit 139, core dumped)``: names first, numbers and flags after them in parentheses.

    A value the rule pins (``outcome`` = ``failure``) only restates the
    conclusion and is left out, unless it is one of ``kept`` (the finding's
    errno and TCP state: the kernel's own name for what happened).
    """
    named: list[str] = []
    other: list[str] = []
    for summary in summaries:
        if (summary.field in pinned and pinned[summary.field] not in kept
                and [item.value for item in summary.values] == [pinned[summary.field]]):
            continue
        words = _value_words(summary, total)
        if words is not None:
            (named if words[1] else other).append(words[0])
    head, tail = ", ".join(named[:_NAMED_PHRASE_PARTS]), ", ".join(other[:_OTHER_PHRASE_PARTS])
    if head and tail:
        return f"{head} ({tail})"
    return head or tail


def processes_phrase(commands: Sequence[CommandGroup], unattributed: int) -> str:
    """``from crashy (13 processes)``, ``from api (pid 4242)``, or that no single process is known."""
    if not commands:
        return "from no single known process" if unattributed else ""
    first = commands[0]
    who = (f"{first.command or '?'} (pid {first.pids[0]})" if first.processes == 1
           else f"{first.command or '?'} ({first.processes} processes)")
    more = len(commands) - 1
    return f"from {who}" + (f" and {more} more command{'s' if more > 1 else ''}" if more else "")


def pods_phrase(pods: Sequence[PodGroup]) -> str:
    """``from checkout-7f9c/payments (Deployment checkout)`` (and how many more pods), or ``""``."""
    if not pods:
        return ""
    more = len(pods) - 1
    return f"from {pods[0].phrase()}" + (f" and {more} more pod{'s' if more > 1 else ''}" if more else "")


def detail_phrase(values: str, destinations: Sequence[str], commands: Sequence[CommandGroup],
                  unattributed: int, pods: Sequence[PodGroup] = ()) -> str:
    """The decisive values, the destination and the process (its pod, when the events name one), in one phrase."""
    parts = [values] if values else []
    if destinations:
        more = len(destinations) - 1
        parts.append(f"to {destinations[0]}" + (f" and {more} more" if more else ""))
    who = pods_phrase(pods) or processes_phrase(commands, unattributed)
    if who:
        parts.append(who)
    return " ".join(parts)
