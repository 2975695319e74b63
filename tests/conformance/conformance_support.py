"""Helpers shared by the conformance tests (specs/conformance.md).

Everything here reads only what the conformance suite may read: KB and schema
files on disk, the ``jalki`` CLI run as a subprocess, and the public API. The
condition oracle below is written from the prose of specs/kb.md ("Condition
language"), independently of ``jalki_core.kb``: the suite compares jalki's
``evaluate`` with it.
"""

from __future__ import annotations

import calendar
import functools
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from jalki_core.testing import example_kb_entry

REPO = Path(__file__).resolve().parents[2]
SPECS = REPO / "specs"
KB_DIR = REPO / "kb"
VOCABULARY_FILE = KB_DIR / "vocabulary.json"
JALKI = Path(sys.executable).with_name("jalki")
SECOND = 1_000_000_000
BASE_NS = 1_767_225_600 * SECOND  # 2026-01-01T00:00:00Z

Json = dict[str, Any]


# --- the CLI -----------------------------------------------------------------------------------------------------

def jalki(*args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``jalki ARGS`` with a wide terminal and no user KB path unless ``env`` names one."""
    environment = {key: value for key, value in os.environ.items() if key != "JALKI_KB_PATH"}
    environment.update({"COLUMNS": "250", **(env or {})})
    return subprocess.run([str(JALKI), *args], capture_output=True, text=True, timeout=120, env=environment,
                          check=False)


def jalki_json(*args: str, env: Mapping[str, str] | None = None) -> Any:
    """``jalki ARGS --json``: exit 0, parsed stdout (KB warnings on stderr are checked where they matter)."""
    result = jalki(*args, "--json", env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@functools.cache
def baseline_warnings() -> tuple[str, ...]:
    """Warning lines ``jalki list`` prints for the default KB as installed (none when the KB is sound, KB-1)."""
    return tuple(jalki("list", "--json").stderr.splitlines())


def new_warnings(stderr: str) -> list[str]:
    """The warning lines of ``stderr`` that the default KB alone does not cause."""
    baseline = set(baseline_warnings())
    return [line for line in stderr.splitlines() if line not in baseline]


def table_rows(text: str) -> list[list[str]]:
    """The body rows of a rich table printed by the CLI, as stripped cells; wrapped cells are joined with a space."""
    rows: list[list[str]] = []
    for line in text.splitlines():
        if not line.startswith("│"):
            continue
        cells = [cell.strip() for cell in line.split("│")[1:-1]]
        if cells and cells[0]:
            rows.append(cells)
        elif rows:  # a continuation line of the previous row
            rows[-1] = [" ".join(filter(None, pair)) for pair in zip(rows[-1], cells, strict=True)]
    return rows


@functools.cache
def listed_entries() -> tuple[Json, ...]:
    """``jalki list --json``: every entry of the default KB (built-in + installed plugins), as written in its file."""
    return tuple(jalki_json("list"))


@functools.cache
def installed_plugins() -> tuple[Json, ...]:
    """``jalki plugins --json``."""
    return tuple(jalki_json("plugins"))


def entry(entry_id: str) -> Json:
    """One listed entry by id."""
    [found] = [item for item in listed_entries() if item["id"] == entry_id]
    return found


def entry_of_type(event_type: str) -> Json:
    """The listed entry documenting an event type (exactly one)."""
    [found] = [item for item in listed_entries() if item["event_type"] == event_type]
    return found


def interpretations() -> list[tuple[Json, Json]]:
    """Every (entry, interpretation) of the default KB, from ``jalki list --json``."""
    return [(item, rule) for item in listed_entries() for rule in item["interpretations"]]


# --- files on disk ----------------------------------------------------------------------------------------------

def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def vocabulary() -> Json:
    """``kb/vocabulary.json``."""
    data: Json = read_json(VOCABULARY_FILE)
    return data


def value_names(value_set: str) -> list[str]:
    """The names of a vocabulary value set."""
    return list(vocabulary()["value_sets"][value_set]["values"])  # a list, or an object name → number


def value_numbers(value_set: str) -> dict[str, int]:
    """``name → kernel number`` of a numbered value set."""
    values = vocabulary()["value_sets"][value_set]["values"]
    assert isinstance(values, dict), value_set
    return dict(values)


def installed_plugin_kb_files() -> list[Path]:
    """KB files of this repository's plugins (``plugins/<dir>/<package>/kb/*.json``) whose distribution is installed."""
    installed = {row["distribution"] for row in installed_plugins()}
    return sorted(path for path in REPO.glob("plugins/*/*/kb/*.json")
                  if path.parents[2].name.replace("_", "-") in installed)


def shipped_kb_files() -> list[Path]:
    """The core's ``kb/*.json`` and the installed plugins' KB files from this checkout."""
    return [*sorted(KB_DIR.glob("*.json")), *installed_plugin_kb_files()]


# --- events ---------------------------------------------------------------------------------------------------

def stamp(ns: int) -> str:
    """RFC 3339 UTC with nanoseconds, as events carry it."""
    seconds, nanos = divmod(ns, SECOND)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanos:09d}Z"


MISSING: Any = object()
"""Leave the field out of the event (``null`` reads the same, per specs/kb.md)."""


def set_path(event: Json, path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    node = event
    for part in parents:
        node = node.setdefault(part, {})
    if value is MISSING:
        node.pop(leaf, None)
    else:
        node[leaf] = value


def make_event(event_type: str, offset_ns: int = 0, values: Mapping[str, Any] | None = None, **fields: Any) -> Json:
    """An event as jalki emits it: ``values`` by dotted path, ``fields`` with ``__`` for dots (``data__signal``)."""
    event: Json = {"id": f"conformance-{offset_ns}", "type": event_type, "timestamp": stamp(BASE_NS + offset_ns)}
    for path, value in sorted({**(values or {}), **{k.replace("__", "."): v for k, v in fields.items()}}.items()):
        set_path(event, path, value)
    return event


# --- the condition oracle (specs/kb.md, "Condition language") ------------------------------------------------

def get(event: Any, path: str) -> Any:
    node = event
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return MISSING
        node = node[part]
    return MISSING if node is None else node


def _same(value: Any, expected: Any) -> bool:
    if isinstance(value, bool) or isinstance(expected, bool):
        return isinstance(value, bool) and isinstance(expected, bool) and value is expected
    return bool(value == expected)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def holds(condition: Json | None, event: Any) -> bool:
    """Whether a per-event condition holds for one event, read from the spec's prose."""
    if condition is None:
        return True
    if "all" in condition:
        return all(holds(item, event) for item in condition["all"])
    if "any" in condition:
        return any(holds(item, event) for item in condition["any"])
    if "not" in condition:
        return not holds(condition["not"], event)
    value = get(event, condition["field"])
    if "exists" in condition:
        return bool((value is not MISSING) == condition["exists"])
    if value is MISSING:
        return False
    if "eq" in condition:
        return _same(value, condition["eq"])
    if "in" in condition:
        return any(_same(value, option) for option in condition["in"])
    [(op, bound)] = [(op, condition[op]) for op in ("gt", "ge", "lt", "le") if op in condition]
    if not _number(value):
        return False
    return bool({"gt": value > bound, "ge": value >= bound, "lt": value < bound, "le": value <= bound}[op])


def _parse_stamp(text: Any) -> int | None:
    if not isinstance(text, str) or not text.endswith("Z") or "." not in text:
        return None
    prefix, _, fraction = text[:-1].partition(".")
    try:
        seconds = calendar.timegm(time.strptime(prefix, "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None
    return seconds * SECOND + int(fraction.ljust(9, "0")[:9]) if fraction.isdigit() else None


def window_fires(window: Json, events: Sequence[Json], event_type: str) -> bool:
    """Whether a window holds for some group (specs/kb.md): ``at_least`` matching events with last − first ≤ seconds."""
    groups: dict[tuple[str, ...], list[int]] = {}
    for event in events:
        if event.get("type") != event_type or not holds(window.get("where"), event):
            continue
        ns = _parse_stamp(event.get("timestamp"))
        if ns is None:
            continue
        key = tuple(repr(get(event, name)) for name in window.get("group_by", []))
        groups.setdefault(key, []).append(ns)
    limit = round(window["seconds"] * SECOND)
    for stamps in groups.values():
        stamps.sort()
        start = 0
        for end, ns in enumerate(stamps):
            while ns - stamps[start] > limit:
                start += 1
            if end - start + 1 >= window["at_least"]:
                return True
    return False


def rule_fires(condition: Json | None, events: Sequence[Json], event_type: str) -> bool:
    """Whether an interpretation's condition holds over ``events`` according to the spec."""
    if condition is not None and "window" in condition:
        return window_fires(condition["window"], events, event_type)
    return any(event.get("type") == event_type and holds(condition, event) for event in events)


# --- values and witnesses ---------------------------------------------------------------------------------------

def referenced_fields(condition: Json | None) -> list[str]:
    """Field paths a condition reads, first occurrence order."""
    if condition is None:
        return []
    if "window" in condition:
        return referenced_fields(condition["window"].get("where"))
    if "field" in condition:
        return [condition["field"]]
    children: Iterable[Json] = condition.get("all") or condition.get("any") or [condition.get("not")]
    return list(dict.fromkeys(path for child in children for path in referenced_fields(child)))


def constants(condition: Json | None, path: str) -> list[Any]:
    """The constants a condition compares ``path`` with (numeric bounds with their neighbours)."""
    if condition is None:
        return []
    if "window" in condition:
        return constants(condition["window"].get("where"), path)
    if "field" in condition:
        if condition["field"] != path:
            return []
        if "eq" in condition:
            return [condition["eq"]]
        if "in" in condition:
            return list(condition["in"])
        for op in ("gt", "ge", "lt", "le"):
            if op in condition:
                bound = condition[op]
                step = 1 if isinstance(bound, int) else 0.5
                return [bound, bound + step, bound - step]
        return []
    children: Iterable[Json] = condition.get("all") or condition.get("any") or [condition.get("not")]
    return list(itertools.chain.from_iterable(constants(child, path) for child in children))


def typed_values(field_type: str) -> list[Any]:
    """A few valid values of a field type (base types, errno names, vocabulary value sets)."""
    base: dict[str, list[Any]] = {
        "integer": [0, 1, 2, 137], "number": [0.0, 1.5], "boolean": [True, False],
        "ip": ["192.0.2.10", "2001:db8::10"], "errno": ["EPERM", "ENOENT", "EIO"],
        "string": ["conformance-a", "conformance-b"],
    }
    if field_type in base:
        return base[field_type]
    return value_names(field_type)[:3]


def wrong_typed(field_type: str) -> list[Any]:
    """Values of the wrong JSON type for a field (``true`` is never ``1``; numbers in strings are not numbers)."""
    if field_type in ("integer", "number"):
        return ["1", True]
    if field_type == "boolean":
        return [1, "true"]
    return [1]


def candidates(field_type: str, rule_constants: Sequence[Any]) -> list[Any]:
    """The rule's own constants first, then typed values, then leaving the field out."""
    values = [*rule_constants, *typed_values(field_type)]
    unique: list[Any] = []
    for value in values:
        if not any(type(value) is type(seen) and value == seen for seen in unique):
            unique.append(value)
    return [*unique, MISSING]


def field_types(listed: Json) -> dict[str, str]:
    return {spec["name"]: spec["type"] for spec in listed["fields"]}


def first_witness(listed: Json, condition: Json | None) -> dict[str, Any] | None:
    """Field values under which a per-event condition holds (searched over candidate values), or None."""
    types = field_types(listed)
    paths = referenced_fields(condition)
    options = [candidates(types[path], constants(condition, path)) for path in paths]
    for combination in itertools.product(*options):
        values = dict(zip(paths, combination, strict=True))
        if holds(condition, make_event(listed["event_type"], values=values)):
            return values
    return None


def field_variants(listed: Json, condition: Json | None, base: Mapping[str, Any],
                   arity: int = 2) -> Iterator[tuple[str, dict[str, Any]]]:
    """``base`` with one (up to ``arity``) read fields changed to other candidates (absent, wrongly typed included)."""
    types = field_types(listed)
    others: dict[str, list[Any]] = {}
    for path in referenced_fields(condition):
        current = base.get(path, MISSING)
        others[path] = [value for value in [*candidates(types[path], constants(condition, path)),
                                            *wrong_typed(types[path])]
                        if not (value is current or (type(value) is type(current) and value == current))]
    for count in range(1, arity + 1):
        for paths in itertools.combinations(others, count):
            for values in itertools.product(*(others[path] for path in paths)):
                label = ", ".join(f"{path}={'absent' if value is MISSING else repr(value)}"
                                  for path, value in zip(paths, values, strict=True))
                yield label, {**base, **dict(zip(paths, values, strict=True))}


# --- KB documents for tests ----------------------------------------------------------------------------------

def demo_entry(entry_id: str = "demo_probe", rule_id: str = "demo_refused", **overrides: Any) -> Json:
    """A complete, valid layer-``demo`` entry (specs/kb.md, "Entry"): :func:`jalki_core.testing.example_kb_entry`."""
    return example_kb_entry(entry_id, rule_id, **overrides)


def layer_document(*entries: Json, layer: str = "demo") -> Json:
    return {"kb_version": 1, "layer": layer, "description": "Conformance test layer.", "entries": list(entries)}


def write_json(path: Path, document: Any) -> Path:
    path.write_text(document if isinstance(document, str) else json.dumps(document), encoding="utf-8")
    return path
