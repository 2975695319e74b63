"""KB-5 … KB-8: validation of KB documents, located problems, isolation, plugin documents.

Documents are written to a temporary directory and loaded with the public
``load_kb`` (with the shipped ``kb/vocabulary.json``) or found by the CLI
through ``JALKI_KB_PATH`` and through a plugin installed on ``PYTHONPATH``.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from conformance_support import (
    KB_DIR,
    SPECS,
    VOCABULARY_FILE,
    Json,
    demo_entry,
    jalki,
    layer_document,
    listed_entries,
    new_warnings,
    read_json,
    write_json,
)

from jalki_core.kb import KbDocument, KnowledgeBase, default_kb, load_kb

VALIDATOR = jsonschema.Draft202012Validator(read_json(SPECS / "kb.schema.json"))
DELETE: Any = object()


def load_one(tmp_path: Path, document: Any) -> tuple[KnowledgeBase, Path]:
    path = write_json(tmp_path / "demo.json", document)
    return load_kb([VOCABULARY_FILE, path]), path


def change(path: str, value: Any) -> Callable[[Json], None]:
    """Set (or with DELETE remove) ``a/b/0/c`` inside an entry."""
    def mutate(item: Json) -> None:
        *parents, leaf = path.split("/")
        node: Any = item
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if value is DELETE:
            del node[leaf]
        elif isinstance(node, list):
            node[int(leaf)] = value
        else:
            node[leaf] = value
    return mutate


def builtin_entry() -> Json | None:
    """An entry of the built-in kb/ directory (not a plugin's), if any."""
    return next((item for item in listed_entries() if item["source"].startswith(str(KB_DIR))), None)


def lines(problems: Any) -> list[str]:
    return [problem.one_line() for problem in problems]


# KB-5 -----------------------------------------------------------------------------------------------------------

def test_demo_document_is_valid_for_the_schema_and_the_loader(tmp_path: Path) -> None:
    document = layer_document(demo_entry())
    assert VALIDATOR.is_valid(document)
    kb, _ = load_one(tmp_path, document)
    assert (kb.problems, list(kb.entries)) == ((), ["demo_probe"])
    loaded = kb.entries["demo_probe"]
    assert (loaded.layer, loaded.event_type, [rule.id for rule in loaded.interpretations]) == (
        "demo", "kernel.demo.event", ["demo_refused"])


# (mutation, entry label in the problem, field path): both the schema and the loader reject these.
STRUCTURAL = [
    (change("answers", DELETE), "demo_probe", "answers"),
    (change("anwsers", ["x"]), "demo_probe", "anwsers"),
    (change("id", "Demo-Probe"), "#0", "id"),
    (change("keywords", ["Demo"]), "demo_probe", "keywords[0]"),
    (change("event_rate", "sometimes"), "demo_probe", "event_rate"),
    (change("attach", []), "demo_probe", "attach"),
    (change("tracepoint", DELETE), "demo_probe", "function"),
    (change("implemented_by", {"plugin": "tcp"}), "demo_probe", "implemented_by"),
    (change("fields/1/important", "yes"), "demo_probe", "fields[1].important"),
    (change("interpretations/0/severity", "fatal"), "demo_probe", "interpretations[0].severity"),
    (change("interpretations/0/action", DELETE), "demo_probe", "interpretations[0].action"),
    (change("interpretations/0/condition", {"field": "error.code", "eq": "ECONNREFUSED", "in": ["EPIPE"]}),
     "demo_probe", "interpretations[0].condition"),
    (change("interpretations/0/condition", {"all": []}), "demo_probe", "interpretations[0].condition.all"),
    (change("interpretations/0/condition", {"window": {"seconds": 10, "at_least": 1}}), "demo_probe",
     "interpretations[0].condition.window.at_least"),
    (change("interpretations/0/condition", {"window": {"seconds": 0, "at_least": 3}}), "demo_probe",
     "interpretations[0].condition.window.seconds"),
]


@pytest.mark.parametrize(("mutate", "label", "path"), STRUCTURAL, ids=[case[2] + "/" + str(i)
                                                                      for i, case in enumerate(STRUCTURAL)])
def test_structural_errors_are_rejected_by_schema_and_loader(tmp_path: Path, mutate: Callable[[Json], None],
                                                             label: str, path: str) -> None:
    bad = demo_entry()
    mutate(bad)
    document = layer_document(bad)
    assert not VALIDATOR.is_valid(document)
    kb, file = load_one(tmp_path, document)
    assert list(kb.entries) == []
    assert [(p.source, p.entry, p.path) for p in kb.problems][:1] == [(str(file), label, path)], lines(kb.problems)


# KB-6 -----------------------------------------------------------------------------------------------------------

# Conditions the schema cannot judge: the loader locates each problem and drops the entry.
SEMANTIC = [
    ({"field": "error.code", "matches": "refus"}, "interpretations[0].condition", "matches"),
    ({"field": "error.code", "eq": "ECONNREFUSD"}, "interpretations[0].condition.eq", "'ECONNREFUSD'"),
    ({"field": "error.code", "eq": "EWOULDBLOCK"}, "interpretations[0].condition.eq", "'EAGAIN'"),
    ({"field": "data.state", "eq": "CLOSED_WAIT"}, "interpretations[0].condition.eq", "'CLOSED_WAIT'"),
    ({"field": "data.state", "in": ["ESTABLISHED", 8]}, "interpretations[0].condition.in[1]", "8"),
    ({"field": "data.nope", "eq": 1}, "interpretations[0].condition.field", "'data.nope'"),
    ({"field": "error.code", "gt": 3}, "interpretations[0].condition.gt", "'error.code'"),
    ({"field": "data.count", "eq": "three"}, "interpretations[0].condition.eq", "'three'"),
    ({"all": [{"window": {"seconds": 1, "at_least": 2}}]}, "interpretations[0].condition.all[0].window", "window"),
]


@pytest.mark.parametrize(("condition", "path", "named"), SEMANTIC, ids=[case[2] for case in SEMANTIC])
def test_condition_errors_are_located_and_drop_the_entry(tmp_path: Path, condition: Json, path: str,
                                                         named: str) -> None:
    bad = demo_entry()
    bad["interpretations"][0]["condition"] = condition
    kb, file = load_one(tmp_path, layer_document(bad))
    assert "demo_probe" not in kb.entries
    [problem] = kb.problems
    assert (problem.source, problem.entry, problem.path) == (str(file), "demo_probe", path)
    assert named in problem.message


@pytest.mark.parametrize(("mutate", "path"), [
    (change("fields/0/type", "integer"), "fields[0].type"),
    (change("fields/1/name", "count"), "fields[1].name"),
    (change("fields/1/type", "color"), "fields[1].type"),
    (change("event_type", "kernel.other.event"), "event_type"),
    (change("attach", ["fentry2"]), "attach[0]"),
    (change("interpretations/0/errno", "EFOO"), "interpretations[0].errno"),
    (change("interpretations/0/tcp_state", "SYN_SEND"), "interpretations[0].tcp_state"),
], ids=lambda value: value if isinstance(value, str) else "")
def test_entry_level_errors_are_located(tmp_path: Path, mutate: Callable[[Json], None], path: str) -> None:
    bad = demo_entry()
    mutate(bad)
    kb, file = load_one(tmp_path, layer_document(bad))
    assert "demo_probe" not in kb.entries
    assert [(p.source, p.entry, p.path) for p in kb.problems][:1] == [(str(file), "demo_probe", path)]


def test_unreachable_rule_is_dropped_and_reported(tmp_path: Path) -> None:
    item = demo_entry()
    item["interpretations"].append({
        "id": "demo_never", "condition": {"all": [{"field": "data.count", "gt": 10}, {"field": "data.count", "lt": 5}]},
        "conclusion": "Never.", "severity": "info", "action": "Nothing."})
    kb, file = load_one(tmp_path, layer_document(item))
    assert [rule.id for rule in kb.entries["demo_probe"].interpretations] == ["demo_refused"]
    [problem] = kb.problems
    assert (problem.source, problem.entry, problem.path) == (str(file), "demo_probe", "interpretations[1].condition")
    assert "'demo_never'" in problem.message


# KB-7 -----------------------------------------------------------------------------------------------------------

def test_a_problem_is_one_line_naming_file_entry_and_field(tmp_path: Path) -> None:
    bad = demo_entry()
    bad["interpretations"][0]["condition"] = {"any": [{"field": "error.code", "eq": "EPIPE"},
                                                      {"field": "error.code", "eq": "ECONNREFUSD"}]}
    path = write_json(tmp_path / "mine.json", layer_document(bad))
    result = jalki("list", "--json", env={"JALKI_KB_PATH": str(path)})
    assert result.returncode == 0
    assert new_warnings(result.stderr) == [
        f"warning: {path}: entry 'demo_probe': interpretations[0].condition.any[1].eq: unknown errno name 'ECONNREFUSD'"
    ]
    assert [item["id"] for item in json.loads(result.stdout)] == [item["id"] for item in listed_entries()]


def test_bad_files_documents_and_entries_never_stop_the_others(tmp_path: Path) -> None:
    broken = demo_entry("broken_probe", "broken_rule")
    broken["interpretations"][0]["severity"] = "fatal"
    good = write_json(tmp_path / "a_good.json", layer_document(broken, demo_entry()))
    invalid = write_json(tmp_path / "b_invalid.json", '{"kb_version": 1, "layer": "x", "entries": [')
    version = write_json(tmp_path / "c_version.json", {"kb_version": 2, "layer": "demo", "entries": []})
    not_object = write_json(tmp_path / "d_list.json", [1, 2])
    missing = tmp_path / "missing.json"
    result = jalki("list", "--json", env={"JALKI_KB_PATH": os.pathsep.join([str(tmp_path), str(missing)])})
    assert result.returncode == 0
    ids = [item["id"] for item in json.loads(result.stdout)]
    assert sorted(ids) == sorted([*(item["id"] for item in listed_entries()), "demo_probe"])
    warnings = new_warnings(result.stderr)
    prefixes = [f"warning: {good}: entry 'broken_probe': interpretations[0].severity: ",
                f"warning: {invalid}: invalid JSON", f"warning: {version}: kb_version: ",
                f"warning: {not_object}: ", f"warning: {missing}: "]
    assert len(warnings) == len(prefixes)
    for prefix in prefixes:
        assert [line for line in warnings if line.startswith(prefix)], prefix


def test_duplicates_and_dangling_references_are_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = demo_entry(combine_with=["no_such_entry", "tcp_connect"])
    second = copy.deepcopy(demo_entry(rule_id="other_rule"))
    third = demo_entry("third_probe")  # reuses the interpretation id demo_refused
    a = write_json(tmp_path / "a.json", layer_document(first))
    b = write_json(tmp_path / "b.json", layer_document(second, third))
    documents = [a, b]
    builtin = builtin_entry()
    if builtin is not None:  # an entry of the built-in kb/ loads before JALKI_KB_PATH: it wins
        clash = demo_entry(builtin["id"], "clash_rule", event_type=f"kernel.{builtin['layer']}.conformance_clash")
        documents.append(write_json(tmp_path / "c.json", layer_document(clash, layer=builtin["layer"])))
    monkeypatch.setenv("JALKI_KB_PATH", str(tmp_path))
    kb = default_kb()
    assert kb.entries["demo_probe"].combine_with == ("tcp_connect",)
    assert [rule.id for rule in kb.entries["demo_probe"].interpretations] == ["demo_refused"]
    assert "third_probe" not in kb.entries
    expected = [(str(b), "demo_probe", "id"), (str(b), "third_probe", "interpretations")]
    if builtin is not None:
        assert kb.entries[builtin["id"]].source == builtin["source"]
        expected.append((str(documents[2]), builtin["id"], "id"))
    mine = [p for p in kb.problems if p.source.startswith(str(tmp_path))]
    assert [(p.source, p.entry, p.path) for p in mine] == [*expected, (str(a), "demo_probe", "combine_with[0]")]
    result = jalki("list", "--json", env={"JALKI_KB_PATH": str(tmp_path)})
    assert result.returncode == 0 and new_warnings(result.stderr) == [f"warning: {line}" for line in lines(mine)]


# KB-8 -----------------------------------------------------------------------------------------------------------

PLUGIN_MODULE = '''
from pathlib import Path

from jalki_core import hookimpl

HERE = Path(__file__).resolve().parent


@hookimpl
def jalki_register_kb(registry):
    registry.register_file(HERE / "conf_demo.json")
    registry.register_file(HERE / "absent.json")
    registry.register_document({"kb_version": 1, "layer": "demo", "entries": [{"id": "half_entry"}]}, name="inline")
'''
RAISING_MODULE = '''
from jalki_core import hookimpl


@hookimpl
def jalki_register_kb(registry):
    raise RuntimeError("boom")
'''


def install_plugin(site: Path, plugin: str, distribution: str, version: str, module: str, source: str) -> None:
    """A plugin as pip would install it: the module and a dist-info with a ``jalki`` entry point."""
    (site / f"{module}.py").write_text(source)
    info = site / f"{distribution.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[jalki]\n{plugin} = {module}\n")


def test_plugin_documents_load_last_and_their_problems_never_stop_anything(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    builtin = builtin_entry()
    install_plugin(site, "confdemo", "jalki-conf-demo", "1.0", "jalki_conf_demo", PLUGIN_MODULE)
    install_plugin(site, "confraiser", "jalki-conf-raiser", "2.0", "jalki_conf_raiser", RAISING_MODULE)
    write_json(site / "conf_demo.json", layer_document(
        demo_entry("plugin_probe", "plugin_rule"), demo_entry("user_probe", "user_rule_from_plugin"),
        *([demo_entry(builtin["id"], "plugin_clash_rule", event_type="kernel.demo.clash")] if builtin else [])))
    user = write_json(tmp_path / "user.json", layer_document(demo_entry("user_probe", "user_rule")))
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
           "JALKI_KB_PATH": str(user)}
    plugins = {row["plugin"]: row for row in json.loads(jalki("plugins", "--json", env=env).stdout)}
    assert plugins["confdemo"]["status"] == plugins["confraiser"]["status"] == "ok"
    result = jalki("list", "--json", env=env)
    assert result.returncode == 0
    listed = {item["id"]: item for item in json.loads(result.stdout)}
    origin = "plugin confdemo (jalki-conf-demo 1.0)"
    assert listed["plugin_probe"]["source"] == f"{origin}: conf_demo.json"
    assert listed["user_probe"]["source"] == str(user)  # JALKI_KB_PATH loads before plugins
    builtin = builtin_entry()
    if builtin is not None:  # the built-in KB loads first
        assert listed[builtin["id"]]["source"] == builtin["source"]
    assert set(listed) == {*(item["id"] for item in listed_entries()), "plugin_probe", "user_probe"}
    warnings = new_warnings(result.stderr)
    expected = [f"warning: {origin}: conf_demo.json: entry 'user_probe': id: ",
                *([f"warning: {origin}: conf_demo.json: entry '{builtin['id']}': id: "] if builtin else []),
                f"warning: {origin}: absent.json: cannot read",
                f"warning: {origin}: inline: entry 'half_entry': ",
                "warning: plugin confraiser (jalki-conf-raiser 2.0): jalki_register_kb raised RuntimeError: boom"]
    for prefix in expected:
        assert [line for line in warnings if line.startswith(prefix)], (prefix, warnings)
    assert all(line.startswith(f"warning: {origin}: ") or "confraiser" in line for line in warnings)


def test_documents_handed_to_the_loader_load_after_files_and_never_raise(tmp_path: Path) -> None:
    files = write_json(tmp_path / "files.json", layer_document(demo_entry()))
    documents = [
        KbDocument("plugin x (x 1): data", data=layer_document(demo_entry("data_probe", "data_rule"),
                                                                demo_entry(rule_id="dup_rule"))),
        KbDocument("plugin x (x 1): text", text=json.dumps(layer_document(demo_entry("text_probe", "text_rule")))),
        KbDocument("plugin x (x 1): bad.json", text="{"),
        KbDocument("plugin x (x 1): gone.json", error="cannot read: gone"),
    ]
    kb = load_kb([VOCABULARY_FILE, files], documents)
    assert list(kb.entries) == ["data_probe", "demo_probe", "text_probe"]
    assert kb.entries["demo_probe"].source == str(files)
    assert [(p.source, p.entry) for p in kb.problems] == [
        ("plugin x (x 1): bad.json", None), ("plugin x (x 1): gone.json", None),
        ("plugin x (x 1): data", "demo_probe")]
