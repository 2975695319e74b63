"""The condition language of interpretations: compiled, validated, evaluated.

A condition is JSON, compiled once at load into small immutable objects::

    {"all": [c, ...]}    every sub-condition holds
    {"any": [c, ...]}    at least one holds
    {"not": c}           c does not hold
    {"field": "error.code", "eq": "ECONNREFUSED"}       equality
    {"field": "data.tcp_state", "in": ["SYN_SENT", "SYN_RECV"]}
    {"field": "data.latency_ns", "gt": 1000000000}      also ge, lt, le (numbers only)
    {"field": "process_data.pid", "exists": true}       present and not null

An interpretation's top level may instead be a windowed aggregate::

    {"window": {"seconds": 10, "at_least": 3,
                "group_by": ["network_data.dst_ip", "network_data.dst_port"],
                "where": c}}

which holds for each group of events (same values of ``group_by``) that has at
least ``at_least`` events matching ``where`` within some interval of
``seconds`` seconds. Fields are dotted paths into the event; a missing field or
``null`` fails every test except ``{"exists": false}``. Values are checked at
load against the field's declared type: errno names against Python's
:mod:`errno` (canonical names, as events carry them), symbolic names against
the vocabulary's value sets, numbers against numeric types.
"""

from __future__ import annotations

import errno as _errno
import ipaddress
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from jalki_core.kb.vocabulary import Vocabulary

Scalar = str | int | float | bool
Report = Callable[[str, str], None]
"""``report(path, message)``: records one problem at a field path."""

COMPARISONS: tuple[str, ...] = ("gt", "ge", "lt", "le")
FIELD_OPERATORS: tuple[str, ...] = ("eq", "in", *COMPARISONS, "exists")
NUMERIC_TYPES: tuple[str, ...] = ("integer", "number")
ERRNO_NAMES: frozenset[str] = frozenset(_errno.errorcode.values())
"""Canonical errno names: the ones :func:`jalki_core.errors.errno_name` puts in events."""

_MISSING = object()
_COMPARE: dict[str, Callable[[Any, Any], Any]] = {"gt": operator.gt, "ge": operator.ge, "lt": operator.lt,
                                                 "le": operator.le}


@dataclass(frozen=True)
class FieldTest:
    """``{"field": path, op: value}``."""

    field: str
    op: str
    value: Any


@dataclass(frozen=True)
class AllOf:
    """``{"all": [...]}``."""

    items: tuple[Condition, ...]


@dataclass(frozen=True)
class AnyOf:
    """``{"any": [...]}``."""

    items: tuple[Condition, ...]


@dataclass(frozen=True)
class Not:
    """``{"not": ...}``."""

    item: Condition


Condition = FieldTest | AllOf | AnyOf | Not


@dataclass(frozen=True)
class Window:
    """``{"window": {...}}``: at least ``at_least`` matching events within ``seconds``, per group."""

    seconds: float
    at_least: int
    group_by: tuple[str, ...]
    where: Condition | None


Rule = Condition | Window


def get_path(event: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted path, or ``None`` when any part is missing or not an object."""
    value: Any = event
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part, _MISSING)
        if value is _MISSING:
            return None
    return value


def _same(value: Any, expected: Any) -> bool:
    # JSON true is not 1: a boolean only equals a boolean.
    if isinstance(expected, bool) or isinstance(value, bool):
        return value is expected
    return bool(value == expected)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def holds(condition: Condition, event: Mapping[str, Any]) -> bool:
    """Whether ``condition`` holds for one event."""
    if isinstance(condition, FieldTest):
        value = get_path(event, condition.field)
        if condition.op == "exists":
            return (value is not None) is condition.value
        if value is None:
            return False
        if condition.op == "eq":
            return _same(value, condition.value)
        if condition.op == "in":
            return any(_same(value, option) for option in condition.value)
        if not _is_number(value):
            return False
        return bool(_COMPARE[condition.op](value, condition.value))
    if isinstance(condition, AllOf):
        return all(holds(item, event) for item in condition.items)
    if isinstance(condition, AnyOf):
        return any(holds(item, event) for item in condition.items)
    return not holds(condition.item, event)


def referenced_fields(rule: Rule | None) -> tuple[str, ...]:
    """Every field path a rule reads (window grouping included), in first-use order."""
    seen: dict[str, None] = {}

    def walk(node: Rule | None) -> None:
        if isinstance(node, FieldTest):
            seen.setdefault(node.field)
        elif isinstance(node, AllOf | AnyOf):
            for item in node.items:
                walk(item)
        elif isinstance(node, Not):
            walk(node.item)
        elif isinstance(node, Window):
            walk(node.where)
            for name in node.group_by:
                seen.setdefault(name)

    walk(rule)
    return tuple(seen)


def check_value(field_type: str, value: Any, vocabulary: Vocabulary) -> str | None:
    """Why ``value`` is not a valid value of ``field_type``, or ``None`` when it is."""
    if field_type in NUMERIC_TYPES:
        if field_type == "integer" and not (isinstance(value, int) and not isinstance(value, bool)):
            return f"expected an integer, got {value!r}"
        if not _is_number(value):
            return f"expected a number, got {value!r}"
        return None
    if field_type == "boolean":
        return None if isinstance(value, bool) else f"expected true or false, got {value!r}"
    if not isinstance(value, str):
        return f"expected a string ({field_type}), got {value!r}"
    if field_type == "errno":
        if value in ERRNO_NAMES:
            return None
        alias = getattr(_errno, value, None)
        if isinstance(alias, int) and alias in _errno.errorcode:
            return f"{value!r} is an alias; events carry the canonical name {_errno.errorcode[alias]!r}"
        return f"unknown errno name {value!r}"
    if field_type == "ip":
        try:
            ipaddress.ip_address(value)
        except ValueError:
            return f"not an IP address: {value!r}"
        return None
    value_set = vocabulary.value_sets.get(field_type)
    if value_set is not None and value not in value_set.names:
        return f"unknown {field_type} name {value!r}; known: {', '.join(value_set.names)}"
    return None


class _Compiler:
    """Compiles one interpretation's condition against an entry's declared fields."""

    def __init__(self, fields: Mapping[str, str], vocabulary: Vocabulary, report: Report) -> None:
        self.fields = fields
        self.vocabulary = vocabulary
        self.report = report
        self.ok = True

    def fail(self, path: str, message: str) -> None:
        self.ok = False
        self.report(path, message)

    def field_type(self, name: Any, path: str) -> str | None:
        if not isinstance(name, str):
            self.fail(path, f"expected a field path (string), got {name!r}")
            return None
        field_type = self.fields.get(name)
        if field_type is None:
            known = ", ".join(sorted(self.fields)) or "none"
            self.fail(path, f"field {name!r} is not declared in this entry's fields (declared: {known})")
        return field_type

    def condition(self, raw: Any, path: str) -> Condition | None:
        if not isinstance(raw, Mapping):
            self.fail(path, f"expected a condition object, got {raw!r}")
            return None
        if "window" in raw:
            self.fail(f"{path}.window", "a window is only allowed at the top of an interpretation's condition")
            return None
        if "field" in raw:
            return self.field_test(raw, path)
        keys = sorted(raw)
        if len(keys) != 1 or keys[0] not in ("all", "any", "not"):
            self.fail(path, f"expected exactly one of all, any, not, field, window; got keys {keys}")
            return None
        key = keys[0]
        if key == "not":
            item = self.condition(raw["not"], f"{path}.not")
            return Not(item) if item is not None else None
        items_raw = raw[key]
        if not isinstance(items_raw, list) or not items_raw:
            self.fail(f"{path}.{key}", "expected a non-empty list of conditions")
            return None
        items = [self.condition(item, f"{path}.{key}[{i}]") for i, item in enumerate(items_raw)]
        if any(item is None for item in items):
            return None
        compiled = tuple(item for item in items if item is not None)
        return AllOf(compiled) if key == "all" else AnyOf(compiled)

    def field_test(self, raw: Mapping[str, Any], path: str) -> FieldTest | None:
        operators = [key for key in raw if key != "field"]
        if len(operators) != 1 or operators[0] not in FIELD_OPERATORS:
            self.fail(path, f"a field test needs exactly one operator of {', '.join(FIELD_OPERATORS)}; "
                            f"got {sorted(operators)}")
            return None
        op = operators[0]
        field_type = self.field_type(raw["field"], f"{path}.field")
        if field_type is None:
            return None
        value = raw[op]
        where = f"{path}.{op}"
        if op == "exists":
            if not isinstance(value, bool):
                self.fail(where, f"expected true or false, got {value!r}")
                return None
            return FieldTest(raw["field"], op, value)
        if op in COMPARISONS:
            if field_type not in NUMERIC_TYPES:
                self.fail(where, f"{op} needs a numeric field; {raw['field']!r} is {field_type}")
                return None
            if not _is_number(value):
                self.fail(where, f"expected a number, got {value!r}")
                return None
            return FieldTest(raw["field"], op, value)
        if op == "in":
            if not isinstance(value, list) or not value:
                self.fail(where, "expected a non-empty list of values")
                return None
            problems = [(i, check_value(field_type, item, self.vocabulary)) for i, item in enumerate(value)]
            for i, message in problems:
                if message:
                    self.fail(f"{where}[{i}]", message)
            if len({repr(item) for item in value}) != len(value):
                self.fail(where, "values must be unique")
            if not self.ok:
                return None
            return FieldTest(raw["field"], op, tuple(value))
        message = check_value(field_type, value, self.vocabulary)
        if message:
            self.fail(where, message)
            return None
        return FieldTest(raw["field"], op, value)

    def window(self, raw: Any, path: str) -> Window | None:
        if not isinstance(raw, Mapping):
            self.fail(path, f"expected a window object, got {raw!r}")
            return None
        unknown = sorted(set(raw) - {"seconds", "at_least", "group_by", "where"})
        if unknown:
            self.fail(path, f"unknown window key(s) {unknown}")
        seconds: Any = raw.get("seconds")
        at_least: Any = raw.get("at_least")
        group_by: Any = raw.get("group_by", [])
        if not _is_number(seconds) or float(seconds) <= 0:
            self.fail(f"{path}.seconds", f"expected a positive number of seconds, got {seconds!r}")
        if not isinstance(at_least, int) or isinstance(at_least, bool) or at_least < 2:
            self.fail(f"{path}.at_least", f"expected an integer >= 2 (use a plain condition for one event), "
                                          f"got {at_least!r}")
        if not isinstance(group_by, list) or len(set(map(repr, group_by))) != len(group_by):
            self.fail(f"{path}.group_by", "expected a list of distinct field paths")
            group_by = []
        for i, name in enumerate(group_by):
            self.field_type(name, f"{path}.group_by[{i}]")
        where = self.condition(raw["where"], f"{path}.where") if "where" in raw else None
        if not self.ok:
            return None
        return Window(float(seconds), int(at_least), tuple(group_by), where)


def compile_rule(raw: Any, fields: Mapping[str, str], vocabulary: Vocabulary, report: Report,
                 path: str = "condition") -> Rule | None:
    """Compile and validate an interpretation's condition; ``None`` (with problems reported) if invalid.

    :param fields: the entry's declared fields, ``path → type``.
    :param report: called with ``(field path, message)`` for each problem.
    """
    compiler = _Compiler(fields, vocabulary, report)
    if isinstance(raw, Mapping) and "window" in raw:
        if len(raw) != 1:
            compiler.fail(path, "a window condition has no other keys")
            return None
        return compiler.window(raw["window"], f"{path}.window")
    return compiler.condition(raw, path)
