"""KB documents: JSON Schema, the loader's own validator, located problems, isolation."""

from __future__ import annotations

import copy
import json
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from kb_inventory import ENTRY_COUNT

from jalki_core.kb import KbDocument, KbProblem, load_kb
from jalki_core.plugins import JalkiPlugins, PluginSource
from jalki_core.registry import KbRegistry, PluginIdentity
from jalki_core.testing import example_kb_entry as demo_entry

REPO = Path(__file__).resolve().parents[2]
KB_DIR = REPO / "kb"
SHIPPED = [KB_DIR, *sorted(REPO.glob("plugins/*/*/kb/*.json"))]
"""The KB this repository ships: the core's kb/ and the plugins' KB files (entries reference each other)."""
VOCABULARY = KB_DIR / "vocabulary.json"
SCHEMA = json.loads((REPO / "specs" / "kb.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def layer_doc(*entries: dict[str, Any], layer: str = "demo") -> dict[str, Any]:
    return {"kb_version": 1, "layer": layer, "entries": list(entries)}


def write(tmp_path: Path, name: str, document: Any) -> Path:
    path = tmp_path / name
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    return path


def load_one(tmp_path: Path, document: Any) -> tuple[Any, Path]:
    path = write(tmp_path, "demo.json", document)
    return load_kb([VOCABULARY, path]), path


def test_schema_is_valid_and_every_builtin_file_conforms() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    files = sorted(KB_DIR.glob("*.json"))
    assert [f.name for f in files] == ["fs.planned.json", "memory.planned.json", "network.planned.json",
                                       "process.planned.json", "sched.planned.json", "tcp.planned.json",
                                       "vocabulary.json"]
    for path in files:
        errors = [error.message for error in VALIDATOR.iter_errors(json.loads(path.read_text()))]
        assert errors == [], path


def test_core_layer_files_hold_only_placeholders_and_never_share_a_plugin_file_name() -> None:
    plugin_names = {path.name for path in SHIPPED[1:]}
    for path in KB_DIR.glob("*.json"):
        document = json.loads(path.read_text())
        if "layer" not in document:
            continue
        assert path.name == f"{document['layer']}.planned.json"
        assert path.name not in plugin_names
        assert [entry["id"] for entry in document["entries"] if entry["implemented_by"] is not None] == [], path


def test_builtin_kb_loads_without_problems() -> None:
    kb = load_kb(SHIPPED)
    assert kb.problems == ()
    assert len(kb) == ENTRY_COUNT


def test_demo_document_is_valid_for_both_validators(tmp_path: Path) -> None:
    kb, _ = load_one(tmp_path, layer_doc(demo_entry()))
    assert kb.problems == ()
    assert list(kb.entries) == ["demo_probe"]
    assert VALIDATOR.is_valid(layer_doc(demo_entry()))


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(entry: dict[str, Any]) -> None:
        *parents, leaf = path.split("/")
        node: Any = entry
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if isinstance(node, list):
            node[int(leaf)] = value
        elif value is _DELETE:
            del node[leaf]
        else:
            node[leaf] = value
    return mutate


_DELETE = object()

# (mutation, entry label in the problem, field path, message fragment): both validators reject these.
STRUCTURAL = [
    (_set("answers", _DELETE), "demo_probe", "answers", "required field is missing"),
    (_set("anwsers", ["x"]), "demo_probe", "anwsers", "unknown field"),
    (_set("id", "Demo-Probe"), "#0", "id", "does not match"),
    (_set("keywords", ["Demo"]), "demo_probe", "keywords[0]", "does not match"),
    (_set("event_rate", "sometimes"), "demo_probe", "event_rate", "expected one of low, medium, high"),
    (_set("attach", []), "demo_probe", "attach", "expected a non-empty list"),
    (_set("tracepoint", _DELETE), "demo_probe", "function", "names a kernel function, a tracepoint, or both"),
    (_set("implemented_by", {"plugin": "tcp"}), "demo_probe", "implemented_by", "expected null or"),
    (_set("fields/1/important", "yes"), "demo_probe", "fields[1].important", "expected true or false"),
    (_set("interpretations/0/severity", "fatal"), "demo_probe", "interpretations[0].severity",
     "expected one of info, warning, error, critical"),
    (_set("interpretations/0/action", _DELETE), "demo_probe", "interpretations[0].action",
     "required field is missing"),
    (_set("interpretations/0/condition", {"field": "error.code", "matches": "refus"}), "demo_probe",
     "interpretations[0].condition", "needs exactly one operator"),
    (_set("interpretations/0/condition", {"field": "error.code", "eq": "ECONNREFUSED", "in": ["EPIPE"]}),
     "demo_probe", "interpretations[0].condition", "needs exactly one operator"),
    (_set("interpretations/0/condition", {"all": []}), "demo_probe", "interpretations[0].condition.all",
     "expected a non-empty list"),
    (_set("interpretations/0/condition", {"window": {"seconds": 10, "at_least": 1}}), "demo_probe",
     "interpretations[0].condition.window.at_least", "expected an integer >= 2"),
    (_set("interpretations/0/condition", {"window": {"seconds": 0, "at_least": 3}}), "demo_probe",
     "interpretations[0].condition.window.seconds", "expected a positive number"),
    (_set("interpretations/0/condition", {"all": [{"window": {"seconds": 1, "at_least": 2}}]}), "demo_probe",
     "interpretations[0].condition.all[0].window", "a window is only allowed at the top"),
]


@pytest.mark.parametrize(("mutate", "entry", "path", "message"), STRUCTURAL)
def test_structural_errors_are_rejected_by_schema_and_loader(
    tmp_path: Path, mutate: Callable[[dict[str, Any]], None], entry: str, path: str, message: str
) -> None:
    bad = demo_entry()
    mutate(bad)
    document = layer_doc(bad)
    assert not VALIDATOR.is_valid(document)
    kb, file = load_one(tmp_path, document)
    assert "demo_probe" not in kb.entries
    assert any(p.source == str(file) and p.entry == entry and p.path == path and message in p.message
               for p in kb.problems), [p.one_line() for p in kb.problems]


# Checks a JSON Schema cannot express: the schema accepts these, the loader does not.
SEMANTIC = [
    ({"field": "error.code", "eq": "ECONNREFUSD"}, "interpretations[0].condition.eq",
     "unknown errno name 'ECONNREFUSD'"),
    ({"field": "error.code", "eq": "EWOULDBLOCK"}, "interpretations[0].condition.eq",
     "'EWOULDBLOCK' is an alias; events carry the canonical name 'EAGAIN'"),
    ({"field": "data.state", "eq": "CLOSED_WAIT"}, "interpretations[0].condition.eq",
     "unknown tcp_state name 'CLOSED_WAIT'"),
    ({"field": "data.state", "in": ["ESTABLISHED", 8]}, "interpretations[0].condition.in[1]",
     "expected a string (tcp_state), got 8"),
    ({"field": "data.nope", "eq": 1}, "interpretations[0].condition.field",
     "field 'data.nope' is not declared in this entry's fields"),
    ({"field": "error.code", "gt": 3}, "interpretations[0].condition.gt",
     "gt needs a numeric field; 'error.code' is errno"),
    ({"field": "data.count", "eq": "three"}, "interpretations[0].condition.eq", "expected an integer, got 'three'"),
    ({"all": [{"field": "data.count", "gt": 10}, {"field": "data.count", "lt": 5}]},
     "interpretations[0].condition", "no event can satisfy 'demo_refused': an unreachable rule"),
]


@pytest.mark.parametrize(("condition", "path", "message"), SEMANTIC)
def test_semantic_errors_are_located(tmp_path: Path, condition: dict[str, Any], path: str, message: str) -> None:
    bad = demo_entry()
    bad["interpretations"][0]["condition"] = condition
    assert VALIDATOR.is_valid(layer_doc(bad))
    kb, file = load_one(tmp_path, layer_doc(bad))
    assert any(p.source == str(file) and p.entry == "demo_probe" and p.path == path and p.message.startswith(message)
               for p in kb.problems), [p.one_line() for p in kb.problems]


@pytest.mark.parametrize(
    ("mutate", "path", "message"),
    [
        (_set("fields/0/type", "integer"), "fields[0].type", "'error.code' is errno in every event"),
        (_set("fields/1/name", "count"), "fields[1].name", "'count' is not an event envelope field"),
        (_set("fields/1/type", "color"), "fields[1].type", "unknown type 'color'"),
        (_set("event_type", "kernel.other.event"), "event_type", "is not in this document's layer 'demo'"),
        (_set("attach", ["fentry2"]), "attach[0]", "unknown attach kind 'fentry2'"),
        (_set("interpretations/0/errno", "EFOO"), "interpretations[0].errno", "unknown errno name 'EFOO'"),
        (_set("interpretations/0/tcp_state", "SYN_SEND"), "interpretations[0].tcp_state",
         "unknown tcp_state name 'SYN_SEND'"),
    ],
)
def test_entry_level_semantic_errors(tmp_path: Path, mutate: Callable[[dict[str, Any]], None], path: str,
                                     message: str) -> None:
    bad = demo_entry()
    mutate(bad)
    kb, _ = load_one(tmp_path, layer_doc(bad))
    assert "demo_probe" not in kb.entries
    assert [p.path for p in kb.problems if message in p.message] == [path], [p.one_line() for p in kb.problems]


def test_problem_names_file_entry_and_field(tmp_path: Path) -> None:
    bad = demo_entry()
    bad["interpretations"][0]["condition"] = {"any": [{"field": "error.code", "eq": "EPIPE"},
                                                      {"field": "error.code", "eq": "ECONNREFUSD"}]}
    kb, file = load_one(tmp_path, layer_doc(bad))
    assert [p.one_line() for p in kb.problems] == [
        f"{file}: entry 'demo_probe': interpretations[0].condition.any[1].eq: unknown errno name 'ECONNREFUSD'"
    ]


def test_one_bad_entry_does_not_drop_its_siblings(tmp_path: Path) -> None:
    good, bad = demo_entry(), demo_entry()
    bad["id"] = "broken_probe"
    bad["interpretations"][0]["id"] = "broken_rule"
    bad["interpretations"][0]["severity"] = "fatal"
    kb, _ = load_one(tmp_path, layer_doc(bad, good))
    assert list(kb.entries) == ["demo_probe"]
    assert [(p.entry, p.path) for p in kb.problems] == [("broken_probe", "interpretations[0].severity")]


def test_bad_files_never_stop_the_others(tmp_path: Path) -> None:
    broken_json = write(tmp_path, "broken.json", '{"kb_version": 1, "layer": "x", "entries": [')
    wrong_version = write(tmp_path, "v2.json", {"kb_version": 2, "layer": "demo", "entries": []})
    not_object = write(tmp_path, "list.json", [1, 2])
    kb = load_kb([*SHIPPED, broken_json, wrong_version, not_object, tmp_path / "missing.json"])
    assert len(kb) == ENTRY_COUNT
    assert [(p.source, p.entry, p.path, p.message.split(" at ")[0]) for p in kb.problems] == [
        (str(tmp_path / "missing.json"), None, "", "no such KB file or directory"),
        (str(broken_json), None, "", "invalid JSON"),
        (str(wrong_version), None, "kb_version", "expected 1, got 2"),
        (str(not_object), None, "", "a KB document must be a JSON object with layer and entries"),
    ]


def test_duplicates_and_dangling_references(tmp_path: Path) -> None:
    first = demo_entry()
    first["combine_with"] = ["no_such_entry", "tcp_connect"]
    second = copy.deepcopy(demo_entry())
    second["interpretations"][0]["id"] = "other_rule"
    third = demo_entry()
    third["id"] = "third_probe"
    a = write(tmp_path, "a.json", layer_doc(first))
    b = write(tmp_path, "b.json", layer_doc(second, third))
    kb = load_kb([*SHIPPED, a, b])
    assert kb.entries["demo_probe"].combine_with == ("tcp_connect",)
    assert "third_probe" not in kb.entries
    assert sorted(p.one_line() for p in kb.problems) == sorted([
        f"{a}: entry 'demo_probe': combine_with[0]: no entry 'no_such_entry'",
        f"{b}: entry 'demo_probe': id: entry id already defined in {a}; ignored",
        f"{b}: entry 'third_probe': interpretations: interpretation id 'demo_refused' is already used by entry "
        "'demo_probe'; entry ignored",
    ])


def test_vocabulary_is_required_and_validated(tmp_path: Path) -> None:
    path = write(tmp_path, "demo.json", layer_doc(demo_entry()))
    kb = load_kb([path])
    assert KbProblem("kb", None, "", "no vocabulary document loaded (kb/vocabulary.json)") in kb.problems
    assert "demo_probe" not in kb.entries  # tcp_state and the attach kinds are unknown without it
    bad_vocabulary = write(tmp_path, "vocab.json", {"kb_version": 1, "value_sets": {"errno": {"values": ["X"]}}})
    kb = load_kb([bad_vocabulary])
    assert [p.path for p in kb.problems if p.source == str(bad_vocabulary)] == ["value_sets.errno"]


def test_plugin_documents_load_last_and_never_raise(tmp_path: Path) -> None:
    entry = demo_entry()
    good_file = write(tmp_path, "plugin_kb.json", layer_doc(entry))
    module = types.ModuleType("demo_plugin")

    def jalki_register_kb(registry: Any) -> None:
        registry.register_file(good_file)
        registry.register_file(tmp_path / "absent.json")
        registry.register_document({"kb_version": 1, "layer": "demo", "entries": [{"id": "x"}]}, name="inline")

    def raising_hook(registry: Any) -> None:
        raise RuntimeError("boom")

    module.jalki_register_kb = jalki_register_kb  # type: ignore[attr-defined]
    raiser = types.ModuleType("raiser")
    raiser.jalki_register_kb = raising_hook  # type: ignore[attr-defined]
    plugins = JalkiPlugins([PluginSource(PluginIdentity("raiser", "r", "2"), lambda: raiser),
                            PluginSource(PluginIdentity("demo", "jalki-demo", "1.0"), lambda: module)],
                           load_defaults=False)
    assert not plugins.broken and set(plugins.loaded) == {"demo", "raiser"}  # a raising KB hook breaks nothing
    documents = plugins.kb_documents()
    assert [d.origin for d in documents] == [
        "plugin demo (jalki-demo 1.0): plugin_kb.json",
        "plugin demo (jalki-demo 1.0): absent.json",
        "plugin demo (jalki-demo 1.0): inline",
        "plugin raiser (r 2)",
    ]
    kb = load_kb(SHIPPED, documents)
    assert "demo_probe" in kb.entries and len(kb) == ENTRY_COUNT + 1
    messages = {(p.source, p.entry): p.message for p in kb.problems}
    assert messages[("plugin demo (jalki-demo 1.0): absent.json", None)].startswith("cannot read:")
    assert messages[("plugin raiser (r 2)", None)] == "jalki_register_kb raised RuntimeError: boom"
    assert ("plugin demo (jalki-demo 1.0): inline", "x") in messages


def test_registry_accepts_a_document_object() -> None:
    registry = KbRegistry()
    registry.bound_to("plugin t (t 1)").register_document({"kb_version": 1}, name="doc")
    assert registry.documents == [KbDocument("plugin t (t 1): doc", data={"kb_version": 1})]
