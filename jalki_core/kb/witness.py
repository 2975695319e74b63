"""Event sequences derived from a rule: one that must fire, near-misses that must not.

Used by the tests (every interpretation is checked on sequences generated from
the rule itself, so a new rule is covered the moment it is written) and by the
loader (a rule whose condition no event can satisfy is unreachable and is
reported). Plugin authors can run the same check on their own KB files.

A condition is brought to disjunctive normal form; each conjunction is solved
field by field from candidate values (the rule's own constants and their
boundaries first, then values of the field's type). A near-miss takes the
firing event and changes only the fields of one conjunction of the negated
condition, so it differs from the firing event as little as possible. For a
window the near-misses are: one event too few, the same events spread wider
than the window, the events split across two groups, and one event failing
``where``.
"""

from __future__ import annotations

import itertools
import math
import operator
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jalki_core.events import Event, Rfc3339Formatter
from jalki_core.kb.conditions import (
    ERRNO_NAMES,
    AllOf,
    Condition,
    FieldTest,
    Not,
    Rule,
    Window,
    check_value,
)
from jalki_core.kb.model import Interpretation, KbEntry, Vocabulary

MAX_CONJUNCTIONS = 256
BASE_TIME_NS = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z
_NEGATED = {"eq": "ne", "in": "not_in", "gt": "le", "ge": "lt", "lt": "ge", "le": "gt"}
_ABSENT = object()
_COMPARE = {"gt": operator.gt, "ge": operator.ge, "lt": operator.lt, "le": operator.le}


@dataclass(frozen=True)
class Atom:
    """One constraint on one field; ``absent_ok`` when a missing field also satisfies it."""

    field: str
    op: str
    value: Any
    absent_ok: bool = False


Conjunction = tuple[Atom, ...]


@dataclass(frozen=True)
class Scenario:
    """A named event sequence and whether the rule must fire on it."""

    name: str
    events: tuple[Event, ...]
    should_fire: bool


class UnsatisfiableRule(ValueError):
    """No event sequence can make this rule fire (an unreachable rule)."""


def _dnf(condition: Condition | None, negate: bool) -> list[Conjunction]:
    if condition is None:
        return [] if negate else [()]
    if isinstance(condition, FieldTest):
        if not negate:
            return [(Atom(condition.field, condition.op, condition.value),)]
        if condition.op == "exists":
            return [(Atom(condition.field, "exists", not condition.value),)]
        return [(Atom(condition.field, _NEGATED[condition.op], condition.value, absent_ok=True),)]
    if isinstance(condition, Not):
        return _dnf(condition.item, not negate)
    children = [_dnf(item, negate) for item in condition.items]
    conjunctive = isinstance(condition, AllOf) != negate
    if not conjunctive:
        return list(itertools.islice(itertools.chain.from_iterable(children), MAX_CONJUNCTIONS))
    combos = itertools.islice(itertools.product(*children), MAX_CONJUNCTIONS)
    return [tuple(itertools.chain.from_iterable(combo)) for combo in combos]


def _atom_ok(value: Any, atom: Atom) -> bool:
    if value is _ABSENT:
        return atom.absent_ok or (atom.op == "exists" and atom.value is False)
    op, expected = atom.op, atom.value
    if op == "exists":
        return bool(expected)
    if op in ("eq", "ne"):
        same = value is expected if isinstance(value, bool) or isinstance(expected, bool) else value == expected
        return bool(same) == (op == "eq")
    if op in ("in", "not_in"):
        inside = any(_atom_ok(value, Atom(atom.field, "eq", option)) for option in expected)
        return inside == (op == "in")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return bool(_COMPARE[op](value, expected))


def _domain(field_type: str, vocabulary: Vocabulary) -> list[Any]:
    if field_type == "integer":
        return [1, 2, 0, 3, 10, 100]
    if field_type == "number":
        return [1.0, 2.0, 0.0, 10.0]
    if field_type == "boolean":
        return [True, False]
    if field_type == "ip":
        return ["192.0.2.10", "192.0.2.11", "2001:db8::10"]
    if field_type == "errno":
        return sorted(ERRNO_NAMES)
    if field_type in vocabulary.value_sets:
        return list(vocabulary.value_sets[field_type].names)
    return ["witness-a", "witness-b", "witness-c"]


def _candidates(atoms: list[Atom], field_type: str, vocabulary: Vocabulary) -> list[Any]:
    values: list[Any] = []
    for atom in atoms:
        if atom.op in ("eq", "ne"):
            values.append(atom.value)
        elif atom.op in ("in", "not_in"):
            values.extend(atom.value)
    numbers = sorted({atom.value for atom in atoms if atom.op in ("gt", "ge", "lt", "le")})
    step = 1 if field_type == "integer" else 0.5
    for number in numbers:
        values.extend([number, number + step, number - step])
    for low, high in itertools.pairwise(numbers):
        values.append((low + high) // 2 if field_type == "integer" else (low + high) / 2)
    values.extend(_domain(field_type, vocabulary))
    if field_type in ("integer", "number"):
        values.extend(value + step for value in list(values) if isinstance(value, int | float))
    return [value for value in values if check_value(field_type, value, vocabulary) is None]


def solve(conjunction: Conjunction, field_types: Mapping[str, str], vocabulary: Vocabulary) -> dict[str, Any] | None:
    """Field values (``_ABSENT`` for "leave out") satisfying every atom, or ``None``."""
    by_field: dict[str, list[Atom]] = {}
    for atom in conjunction:
        by_field.setdefault(atom.field, []).append(atom)
    solution: dict[str, Any] = {}
    for name, atoms in by_field.items():
        options = _candidates(atoms, field_types[name], vocabulary)
        options.append(_ABSENT)  # last resort: leave the field out, if every atom allows that
        chosen = next((value for value in options if all(_atom_ok(value, atom) for atom in atoms)), None)
        if chosen is None:
            return None
        solution[name] = chosen
    return solution


def first_solution(rule_part: Condition | None, field_types: Mapping[str, str], vocabulary: Vocabulary,
                   extra: Conjunction = ()) -> dict[str, Any] | None:
    """The solution of the first satisfiable conjunction of ``rule_part`` (and ``extra``)."""
    for conjunction in _dnf(rule_part, negate=False):
        solution = solve(conjunction + extra, field_types, vocabulary)
        if solution is not None:
            return solution
    return None


def satisfiable(rule: Rule | None, field_types: Mapping[str, str], vocabulary: Vocabulary) -> bool:
    """Whether some event sequence makes the rule fire."""
    where = rule.where if isinstance(rule, Window) else rule
    return first_solution(where, field_types, vocabulary) is not None


def _set_path(event: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    node = event
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    if value is _ABSENT:
        node.pop(parts[-1], None)
    else:
        node[parts[-1]] = value


class _Builder:
    """Builds events for one entry's rules."""

    def __init__(self, entry: KbEntry, vocabulary: Vocabulary) -> None:
        self.entry = entry
        self.vocabulary = vocabulary
        self.field_types = {spec.name: spec.type for spec in entry.fields}
        self.format = Rfc3339Formatter()

    def event(self, values: Mapping[str, Any], offset_ns: int = 0, index: int = 0,
              event_type: str | None = None) -> Event:
        event: dict[str, Any] = {
            "id": f"witness-{index}",
            "timestamp": self.format(BASE_TIME_NS + offset_ns),
            "type": event_type or self.entry.event_type,
        }
        for name, value in sorted(values.items()):
            _set_path(event, name, value)
        return event

    def near_misses(self, condition: Condition | None, base: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        result = []
        for conjunction in _dnf(condition, negate=True)[:16]:
            override = solve(conjunction, self.field_types, self.vocabulary)
            if override is None:
                continue
            label = " and ".join(f"{atom.field} {atom.op} {atom.value!r}" for atom in conjunction)
            result.append((label, {**base, **override}))
        return result

    def sequence(self, values: list[Mapping[str, Any]], step_ns: int) -> tuple[Event, ...]:
        return tuple(self.event(v, i * step_ns, i) for i, v in enumerate(values))


def scenarios(entry: KbEntry, interpretation: Interpretation, vocabulary: Vocabulary) -> list[Scenario]:
    """The firing sequence and the near-misses of one interpretation.

    :raises UnsatisfiableRule: when no event can satisfy the rule.
    """
    build = _Builder(entry, vocabulary)
    rule = interpretation.rule
    other_type = entry.event_type.rsplit(".", 1)[0] + ".witness_other_type"
    if not isinstance(rule, Window):
        base = first_solution(rule, build.field_types, vocabulary)
        if base is None:
            raise UnsatisfiableRule(f"{entry.id}/{interpretation.id}: no event satisfies the condition")
        result = [Scenario("fires", (build.event(base),), True),
                  Scenario("other event type", (build.event(base, event_type=other_type),), False)]
        result += [Scenario(f"near miss: {label}", (build.event(values),), False)
                   for label, values in build.near_misses(rule, base)]
        return result
    base = first_solution(rule.where, build.field_types, vocabulary)
    if base is None:
        raise UnsatisfiableRule(f"{entry.id}/{interpretation.id}: no event satisfies the window's where")
    for name in rule.group_by:
        base.setdefault(name, _domain(build.field_types[name], vocabulary)[0])
    window_ns = int(rule.seconds * 1_000_000_000)
    n = rule.at_least
    inside = window_ns // n
    outside = math.ceil(window_ns / (n - 1)) + 1
    result = [
        Scenario("fires", build.sequence([base] * n, inside), True),
        Scenario("one event too few", build.sequence([base] * (n - 1), inside), False),
        Scenario("spread wider than the window", build.sequence([base] * n, outside), False),
        Scenario("other event type", tuple(build.event(base, i * inside, i, other_type) for i in range(n)), False),
    ]
    for name in rule.group_by:
        other = first_solution(rule.where, build.field_types, vocabulary,
                               extra=(Atom(name, "ne", base[name]),))
        if other is not None:
            other = {**base, **other}
            result.append(Scenario(f"split across two {name} groups",
                                   build.sequence([base, other] * (n // 2) + [base] * (n % 2), inside), False))
            break
    misses = build.near_misses(rule.where, base)
    if misses:
        label, miss = misses[0]
        result.append(Scenario(f"one event fails where ({label})", build.sequence([base] * (n - 1) + [miss], inside),
                               False))
    return result
