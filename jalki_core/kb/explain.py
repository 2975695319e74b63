"""``explain``: which interpretations of an entry hold for given field values.

The ``field=value`` pairs become one event of the entry's type; each
per-event rule is evaluated on it. A windowed rule cannot hold on one event:
the verdict says how many matching events it needs, in how many seconds, and
whether this event would count.
"""

from __future__ import annotations

import difflib
import errno as _errno
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from jalki_core.errors import UsageError
from jalki_core.events import Rfc3339Formatter
from jalki_core.kb.conditions import Window, check_value, holds, referenced_fields
from jalki_core.kb.model import Interpretation, KbEntry, KnowledgeBase, Vocabulary

_TRUE = {"true", "yes", "1"}
_FALSE = {"false", "no", "0"}


@dataclass(frozen=True)
class Verdict:
    """The outcome of one interpretation for the explained event.

    :param holds: the rule holds for this one event (always false for windows).
    :param needs_events: for a window, the matching events it needs within ``window_seconds``.
    :param counts_toward: for a window, whether this event matches its ``where``.
    :param missing_fields: fields the rule reads that were not given.
    """

    interpretation: Interpretation
    holds: bool
    needs_events: int | None
    window_seconds: float | None
    group_by: tuple[str, ...]
    counts_toward: bool | None
    missing_fields: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        rule = self.interpretation
        return {
            "interpretation": rule.id, "severity": rule.severity, "holds": self.holds,
            "needs_events": self.needs_events, "window_seconds": self.window_seconds,
            "group_by": list(self.group_by), "counts_toward": self.counts_toward,
            "missing_fields": list(self.missing_fields), "conclusion": rule.conclusion, "action": rule.action,
            **dict(rule.names), "condition": rule.raw_condition,
        }


@dataclass(frozen=True)
class Explanation:
    """An entry, the event built from the given values, and one verdict per interpretation."""

    entry: KbEntry
    event: dict[str, Any]
    verdicts: tuple[Verdict, ...]

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {"entry": self.entry.id, "event": self.event, "verdicts": [v.as_dict() for v in self.verdicts]}


def parse_value(field_type: str, text: str, vocabulary: Vocabulary) -> Any:
    """Convert command-line text to a value of ``field_type``; symbolic types also take kernel numbers.

    :raises UsageError: when the text is not a value of that type.
    """
    value: Any = text
    try:
        if field_type == "integer":
            value = int(text)
        elif field_type == "number":
            value = float(text)
        elif field_type == "boolean":
            if text.lower() not in _TRUE | _FALSE:
                raise ValueError(text)
            value = text.lower() in _TRUE
        elif field_type == "errno":
            value = _errno.errorcode.get(int(text), text) if text.isdigit() else text.upper()
        elif field_type == "ip":
            value = str(ipaddress.ip_address(text))
        elif field_type in vocabulary.value_sets:
            value_set = vocabulary.value_sets[field_type]
            value = (value_set.name_of(int(text)) or text) if text.isdigit() else text
            if value not in value_set.names and value.upper() in value_set.names:
                value = value.upper()
    except ValueError as exc:
        raise UsageError(f"{text!r} is not a valid {field_type}") from exc
    message = check_value(field_type, value, vocabulary)
    if message:
        raise UsageError(f"{text!r}: {message}")
    return value


def parse_assignments(entry: KbEntry, assignments: Iterable[str] | Mapping[str, str],
                      vocabulary: Vocabulary) -> dict[str, Any]:
    """``["error.code=ECONNREFUSED", ...]`` (or a mapping) → ``{path: typed value}``.

    :raises UsageError: for a malformed pair, a field the entry does not declare, or a bad value.
    """
    pairs: list[tuple[str, str]] = []
    if isinstance(assignments, Mapping):
        pairs = [(str(key), str(value)) for key, value in assignments.items()]
    else:
        for item in assignments:
            name, sep, text = item.partition("=")
            if not sep or not name:
                raise UsageError(f"expected field=value, got {item!r}", hint="e.g. error.code=ECONNREFUSED")
            pairs.append((name.strip(), text.strip()))
    values: dict[str, Any] = {}
    for name, text in pairs:
        spec = entry.field_spec(name)
        if spec is None:
            known = ", ".join(spec.name for spec in entry.fields)
            raise UsageError(f"entry {entry.id!r} has no field {name!r}; its fields: {known}")
        if name in values:
            raise UsageError(f"field {name!r} is given twice")
        values[name] = parse_value(spec.type, text, vocabulary)
    return values


def build_event(entry: KbEntry, values: Mapping[str, Any]) -> dict[str, Any]:
    """One event of the entry's type carrying ``values`` at their dotted paths."""
    event: dict[str, Any] = {"type": entry.event_type, "timestamp": Rfc3339Formatter()(0)}
    for path, value in values.items():
        node = event
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return event


def _verdict(interpretation: Interpretation, event: Mapping[str, Any], given: set[str]) -> Verdict:
    rule = interpretation.rule
    missing = tuple(name for name in referenced_fields(rule) if name not in given)
    if isinstance(rule, Window):
        counts = rule.where is None or holds(rule.where, event)
        return Verdict(interpretation, False, rule.at_least, rule.seconds, rule.group_by, counts, missing)
    return Verdict(interpretation, rule is None or holds(rule, event), None, None, (), None, missing)


def explain(entry_id: str, assignments: Iterable[str] | Mapping[str, str],
            kb: KnowledgeBase | None = None) -> Explanation:
    """Evaluate every interpretation of ``entry_id`` on one event built from ``field=value`` pairs.

    :raises UsageError: for an unknown entry (the hint names close ids) or bad pairs.
    """
    if kb is None:
        from jalki_core.kb.load import default_kb

        kb = default_kb()
    entry = kb.get(entry_id)
    if entry is None:
        close = difflib.get_close_matches(entry_id, [other.id for other in kb], n=3)
        hint = f"did you mean {', '.join(close)}?" if close else "run 'jalki list' for the entry ids"
        raise UsageError(f"unknown knowledge-base entry {entry_id!r}", hint=hint)
    values = parse_assignments(entry, assignments, kb.vocabulary)
    event = build_event(entry, values)
    verdicts = tuple(_verdict(rule, event, set(values)) for rule in entry.interpretations)
    return Explanation(entry, event, verdicts)

