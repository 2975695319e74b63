"""The loader's own validator: KB documents → typed entries, or located problems.

It enforces what ``specs/kb.schema.json`` describes (checked against each other
in the tests) plus what a JSON Schema cannot say: condition fields declared by
the entry, values of the right type (errno names, the vocabulary's value
sets …), event types in the document's layer, attach kinds, value sets and
the names an interpretation may state from the vocabulary. Every problem
names the source, the entry and the field path; an entry with a problem is
left out, its siblings still load.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from jalki_core.kb.conditions import check_value, compile_rule
from jalki_core.kb.model import (
    EVENT_RATES,
    SEVERITIES,
    FieldSpec,
    Implementation,
    Interpretation,
    KbEntry,
    KbProblem,
    ValueSet,
    Vocabulary,
)

KB_VERSION = 1
NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
FUNCTION_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")
TRACEPOINT_RE = re.compile(r"^[a-z0-9_]+:[a-z0-9_]+$")
EVENT_TYPE_RE = re.compile(r"^kernel\.([a-z0-9_]+)\.[a-z0-9_]+$")
KEYWORD_RE = re.compile(r"^[a-z0-9_]+( [a-z0-9_]+)*$")
FIELD_PATH_RE = re.compile(r"^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)*$")
ERRNO_RE = re.compile(r"^E[A-Z0-9]+$")

LAYER_KEYS = frozenset({"$schema", "kb_version", "layer", "description", "entries"})
VOCABULARY_KEYS = frozenset({"$schema", "kb_version", "description", "value_sets", "attach_kinds", "envelope_fields",
                             "reported_names"})
ENTRY_KEYS = frozenset({
    "id", "summary", "function", "tracepoint", "implemented_by", "implements", "attach", "event_type", "event_rate",
    "answers", "keywords", "fields", "use_when", "not_when", "combine_with", "interpretations",
})
REQUIRED_ENTRY_KEYS = ENTRY_KEYS - {"function", "tracepoint", "implements"}
INTERPRETATION_KEYS = frozenset({"id", "condition", "conclusion", "severity", "action"})
"""An interpretation's own keys; it may also state a name of each kind :meth:`Vocabulary.name_kinds` lists."""
FIELD_KEYS = frozenset({"name", "type", "meaning", "important"})


def is_vocabulary_document(data: Any) -> bool:
    """A vocabulary document carries ``value_sets``; a layer document carries ``layer``."""
    return isinstance(data, Mapping) and "value_sets" in data and "layer" not in data


class _Checker:
    """Collects problems for one entry (or document) at field paths."""

    def __init__(self, source: str, entry: str | None) -> None:
        self.source = source
        self.entry = entry
        self.problems: list[KbProblem] = []

    def fail(self, path: str, message: str) -> None:
        self.problems.append(KbProblem(self.source, self.entry, path, message))

    def keys(self, raw: Mapping[str, Any], path: str, allowed: frozenset[str], required: frozenset[str],
             hint: str = "") -> None:
        for key in sorted(required - set(raw)):
            self.fail(f"{path}.{key}".lstrip("."), "required field is missing")
        for key in sorted(set(raw) - allowed):
            self.fail(f"{path}.{key}".lstrip("."), "unknown field" + hint)

    def text(self, raw: Mapping[str, Any], key: str, path: str = "", pattern: re.Pattern[str] | None = None) -> str:
        value = raw.get(key)
        where = f"{path}.{key}".lstrip(".")
        if key not in raw:
            return ""
        if not isinstance(value, str) or not value.strip():
            self.fail(where, f"expected a non-empty string, got {value!r}")
            return ""
        if pattern is not None and not pattern.match(value):
            self.fail(where, f"{value!r} does not match {pattern.pattern}")
        return value

    def texts(self, raw: Mapping[str, Any], key: str, pattern: re.Pattern[str] | None = None,
              *, non_empty: bool = True) -> tuple[str, ...]:
        value = raw.get(key)
        if key not in raw:
            return ()
        if not isinstance(value, list) or (non_empty and not value):
            self.fail(key, "expected a non-empty list of strings" if non_empty else "expected a list of strings")
            return ()
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item.strip():
                self.fail(f"{key}[{i}]", f"expected a non-empty string, got {item!r}")
            elif pattern is not None and not pattern.match(item):
                self.fail(f"{key}[{i}]", f"{item!r} does not match {pattern.pattern}")
        if len(set(map(repr, value))) != len(value):
            self.fail(key, "items must be unique")
        return tuple(item for item in value if isinstance(item, str))


def check_vocabulary(data: Any, source: str) -> tuple[Vocabulary | None, list[KbProblem]]:
    """Validate a vocabulary document (``kb/vocabulary.json``)."""
    check = _Checker(source, None)
    if not isinstance(data, Mapping):
        check.fail("", "a vocabulary document must be a JSON object")
        return None, check.problems
    check.keys(data, "", VOCABULARY_KEYS, frozenset({"kb_version", "value_sets"}))
    if data.get("kb_version") != KB_VERSION:
        check.fail("kb_version", f"expected {KB_VERSION}, got {data.get('kb_version')!r}")
    value_sets: dict[str, ValueSet] = {}
    raw_sets = data.get("value_sets")
    if not isinstance(raw_sets, Mapping):
        check.fail("value_sets", "expected an object of value sets")
        raw_sets = {}
    for name, raw in raw_sets.items():
        value_set = _value_set(check, name, raw)
        if value_set is not None:
            value_sets[name] = value_set
    check.text(data, "description")
    attach = check.texts(data, "attach_kinds", NAME_RE)
    envelope: dict[str, str] = {}
    raw_envelope = data.get("envelope_fields", {})
    if not isinstance(raw_envelope, Mapping):
        check.fail("envelope_fields", "expected an object of field path → type")
        raw_envelope = {}
    vocabulary = Vocabulary(value_sets, attach, {})
    for path, field_type in raw_envelope.items():
        if not FIELD_PATH_RE.match(path) or field_type not in vocabulary.field_types():
            check.fail(f"envelope_fields.{path}", f"expected a field path and one of {vocabulary.field_types()}")
        else:
            envelope[path] = field_type
    reported = check.texts(data, "reported_names", NAME_RE, non_empty=False)
    for i, name in enumerate(reported):
        if name not in value_sets:
            check.fail(f"reported_names[{i}]", f"{name!r} is not a value set of this document")
    if check.problems:
        return None, check.problems
    return Vocabulary(value_sets, attach, envelope, reported), []


def _value_set(check: _Checker, name: str, raw: Any) -> ValueSet | None:
    path = f"value_sets.{name}"
    if not NAME_RE.match(name) or name in ("string", "integer", "number", "boolean", "ip", "errno"):
        check.fail(path, "a value set name must be a lowercase identifier other than a base type")
        return None
    if not isinstance(raw, Mapping) or set(raw) - {"description", "values"} or "values" not in raw:
        check.fail(path, "expected {description, values}")
        return None
    values = raw["values"]
    if isinstance(values, list) and values and all(isinstance(v, str) and v for v in values):
        names, numbers = tuple(values), {}
    elif isinstance(values, Mapping) and values and all(
        isinstance(v, int) and not isinstance(v, bool) for v in values.values()
    ):
        names, numbers = tuple(values), dict(values)
    else:
        check.fail(f"{path}.values", "expected a non-empty list of names or an object name → kernel number")
        return None
    if len(set(names)) != len(names) or (numbers and len(set(numbers.values())) != len(numbers)):
        check.fail(f"{path}.values", "names and numbers must be unique")
        return None
    return ValueSet(name, names, numbers, str(raw.get("description", "")))


def check_layer_header(data: Any, source: str) -> tuple[str | None, list[Any], list[KbProblem]]:
    """Validate a layer document's top level; return its layer and raw entries."""
    check = _Checker(source, None)
    if not isinstance(data, Mapping):
        check.fail("", "a KB document must be a JSON object with layer and entries")
        return None, [], check.problems
    check.keys(data, "", LAYER_KEYS, frozenset({"kb_version", "layer", "entries"}))
    if data.get("kb_version") != KB_VERSION:
        check.fail("kb_version", f"expected {KB_VERSION}, got {data.get('kb_version')!r}")
    layer = check.text(data, "layer", pattern=NAME_RE) or None
    check.text(data, "description")
    entries = data.get("entries")
    if not isinstance(entries, list):
        check.fail("entries", "expected a list of entries")
        entries = []
    if check.problems:
        return None, [], check.problems
    return layer, entries, []


def check_entry(raw: Any, index: int, layer: str, source: str, vocabulary: Vocabulary) -> tuple[
        KbEntry | None, list[KbProblem]]:
    """Validate one entry; return it, or ``None`` and the problems that keep it out."""
    entry_id = raw.get("id") if isinstance(raw, Mapping) else None
    label = entry_id if isinstance(entry_id, str) and NAME_RE.match(entry_id) else f"#{index}"
    check = _Checker(source, label)
    if not isinstance(raw, Mapping):
        check.fail("", "an entry must be a JSON object")
        return None, check.problems
    check.keys(raw, "", ENTRY_KEYS, REQUIRED_ENTRY_KEYS)
    check.text(raw, "id", pattern=NAME_RE)
    function = check.text(raw, "function", pattern=FUNCTION_RE) or None
    tracepoint = check.text(raw, "tracepoint", pattern=TRACEPOINT_RE) or None
    if "function" not in raw and "tracepoint" not in raw:
        check.fail("function", "an entry names a kernel function, a tracepoint, or both")
    implemented_by = _implementation(check, raw.get("implemented_by"))
    implements = check.text(raw, "implements", pattern=NAME_RE) or None
    if implements is not None and raw.get("implemented_by") is None:
        check.fail("implements", "only an implemented entry (implemented_by a plugin and probe) can implement "
                                 "a placeholder")
    attach = check.texts(raw, "attach", NAME_RE)
    for i, kind in enumerate(attach):
        if kind not in vocabulary.attach_kinds:
            check.fail(f"attach[{i}]", f"unknown attach kind {kind!r}; known: {', '.join(vocabulary.attach_kinds)}")
    event_type = check.text(raw, "event_type", pattern=EVENT_TYPE_RE)
    match = EVENT_TYPE_RE.match(event_type)
    if match and match.group(1) != layer:
        check.fail("event_type", f"{event_type!r} is not in this document's layer {layer!r} (kernel.{layer}.<name>)")
    event_rate = raw.get("event_rate")
    if "event_rate" in raw and event_rate not in EVENT_RATES:
        check.fail("event_rate", f"expected one of {', '.join(EVENT_RATES)}, got {event_rate!r}")
    fields = _fields(check, raw.get("fields"), vocabulary)
    interpretations = _interpretations(check, raw.get("interpretations"), label, fields, vocabulary)
    entry = KbEntry(
        id=label, layer=layer, source=source, summary=check.text(raw, "summary"),
        function=function, tracepoint=tracepoint, implemented_by=implemented_by, attach=attach,
        event_type=event_type, event_rate=str(event_rate), answers=check.texts(raw, "answers"),
        keywords=check.texts(raw, "keywords", KEYWORD_RE), fields=fields,
        use_when=check.text(raw, "use_when"), not_when=check.text(raw, "not_when"),
        combine_with=check.texts(raw, "combine_with", NAME_RE, non_empty=False),
        interpretations=interpretations, raw=raw, implements=implements,
    )
    return (None, check.problems) if check.problems else (entry, [])


def _implementation(check: _Checker, raw: Any) -> Implementation | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping) or set(raw) != {"plugin", "probe"}:
        check.fail("implemented_by", 'expected null or {"plugin": ..., "probe": ...}')
        return None
    plugin = check.text(raw, "plugin", "implemented_by", NAME_RE)
    probe = check.text(raw, "probe", "implemented_by", NAME_RE)
    return Implementation(plugin, probe)


def _fields(check: _Checker, raw: Any, vocabulary: Vocabulary) -> tuple[FieldSpec, ...]:
    if not isinstance(raw, list) or not raw:
        check.fail("fields", "expected a non-empty list of {name, type, meaning, important}")
        return ()
    specs: list[FieldSpec] = []
    for i, item in enumerate(raw):
        path = f"fields[{i}]"
        if not isinstance(item, Mapping):
            check.fail(path, "expected an object {name, type, meaning, important}")
            continue
        before = len(check.problems)
        check.keys(item, path, FIELD_KEYS, FIELD_KEYS)
        name = check.text(item, "name", path, FIELD_PATH_RE)
        field_type = item.get("type")
        if field_type not in vocabulary.field_types():
            check.fail(f"{path}.type", f"unknown type {field_type!r}; known: {', '.join(vocabulary.field_types())}")
        envelope_type = vocabulary.envelope_fields.get(name)
        if name and envelope_type is None and not name.startswith("data."):
            check.fail(f"{path}.name", f"{name!r} is not an event envelope field; probe-specific fields "
                                       "are under data. (see specs/events.md)")
        elif envelope_type is not None and field_type != envelope_type:
            check.fail(f"{path}.type", f"{name!r} is {envelope_type} in every event, not {field_type!r}")
        if not isinstance(item.get("important"), bool):
            check.fail(f"{path}.important", "expected true or false")
        check.text(item, "meaning", path)
        if any(spec.name == name for spec in specs):
            check.fail(f"{path}.name", f"field {name!r} is declared twice")
        if len(check.problems) == before:
            specs.append(FieldSpec(name, str(field_type), str(item["meaning"]), bool(item["important"])))
    return tuple(specs)


def _interpretations(check: _Checker, raw: Any, entry_id: str, fields: tuple[FieldSpec, ...],
                     vocabulary: Vocabulary) -> tuple[Interpretation, ...]:
    if not isinstance(raw, list):
        check.fail("interpretations", "expected a list of interpretations")
        return ()
    field_types = {spec.name: spec.type for spec in fields}
    result: list[Interpretation] = []
    for i, item in enumerate(raw):
        path = f"interpretations[{i}]"
        if not isinstance(item, Mapping):
            check.fail(path, "expected an interpretation object")
            continue
        before = len(check.problems)
        kinds = vocabulary.name_kinds()
        check.keys(item, path, INTERPRETATION_KEYS | set(kinds), frozenset({"id", "conclusion", "severity", "action"}),
                   f"; an interpretation may state a name of: {', '.join(kinds)} (the vocabulary's reported_names)")
        rule_id = check.text(item, "id", path, NAME_RE)
        check.text(item, "conclusion", path)
        check.text(item, "action", path)
        if any(other.id == rule_id for other in result):
            check.fail(f"{path}.id", f"interpretation id {rule_id!r} is used twice in this entry")
        if item.get("severity") not in SEVERITIES:
            check.fail(f"{path}.severity", f"expected one of {', '.join(SEVERITIES)}, got {item.get('severity')!r}")
        names = tuple((kind, _stated_name(check, item, kind, path, vocabulary)) for kind in kinds)
        rule = None
        if "condition" in item:
            rule = compile_rule(item["condition"], field_types, vocabulary, check.fail, f"{path}.condition")
        if len(check.problems) == before:
            result.append(Interpretation(
                id=rule_id, entry_id=entry_id, rule=rule, conclusion=str(item["conclusion"]),
                severity=str(item["severity"]), action=str(item["action"]), names=names,
                raw_condition=item.get("condition"),
            ))
    return tuple(result)


def _stated_name(check: _Checker, item: Mapping[str, Any], kind: str, path: str,
                 vocabulary: Vocabulary) -> str | None:
    """The name of ``kind`` an interpretation states (``"errno": "ECONNRESET"``), checked; ``None`` when absent."""
    name = check.text(item, kind, path, ERRNO_RE if kind == "errno" else None) or None
    if name is None:
        return None
    if kind == "errno" and not ERRNO_RE.match(name):
        return None  # the pattern failure is reported
    message = check_value(kind, name, vocabulary)
    if message:
        check.fail(f"{path}.{kind}", message)
    return name
