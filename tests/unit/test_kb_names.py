"""Names an interpretation states (``"tcp_state": "CLOSE_WAIT"``) come from the vocabulary, not from code.

The core KB model has no field of one probe family: the vocabulary's
``reported_names`` lists the value sets an interpretation may name beside its
conclusion (as it may an errno), and findings and verdicts carry each.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jalki_core.kb import evaluate, explain, load_kb
from jalki_core.kb.model import Interpretation, KbEntry

REPO = Path(__file__).resolve().parents[2]
VOCABULARY = json.loads((REPO / "kb" / "vocabulary.json").read_text())


def kill_entry(**stated: str) -> dict[str, Any]:
    return {
        "id": "demo_kill", "summary": "A process was killed.", "tracepoint": "signal:signal_generate",
        "implemented_by": None, "attach": ["tracepoint"], "event_type": "kernel.demo.kill", "event_rate": "low",
        "answers": ["Who killed my process?"], "keywords": ["killed"],
        "fields": [{"name": "data.signal", "type": "signal", "meaning": "the signal", "important": True}],
        "use_when": "A process vanished.", "not_when": "It exited by itself.", "combine_with": [],
        "interpretations": [{"id": "demo_killed", "condition": {"field": "data.signal", "eq": "SIGKILL"},
                             "conclusion": "Killed.", "severity": "error", "action": "Find who.", **stated}],
    }


def load(tmp_path: Path, vocabulary: dict[str, Any], entry: dict[str, Any]) -> Any:
    (tmp_path / "vocabulary.json").write_text(json.dumps(vocabulary))
    (tmp_path / "demo.json").write_text(json.dumps({"kb_version": 1, "layer": "demo", "entries": [entry]}))
    return load_kb([tmp_path / "vocabulary.json", tmp_path / "demo.json"])


def test_the_model_declares_no_field_of_one_probe_family() -> None:
    for model in (Interpretation, KbEntry):
        assert not [name for name in model.__dataclass_fields__ if "tcp" in name], model
    assert VOCABULARY["reported_names"] == ["tcp_state"]


def test_a_value_set_listed_in_reported_names_is_stated_and_reported(tmp_path: Path) -> None:
    kb = load(tmp_path, {**VOCABULARY, "reported_names": ["tcp_state", "signal"]}, kill_entry(signal="SIGKILL"))
    assert kb.problems == ()
    rule = kb.entries["demo_kill"].interpretations[0]
    assert rule.names == (("errno", None), ("tcp_state", None), ("signal", "SIGKILL"))
    assert (rule.name("signal"), rule.signal, rule.errno) == ("SIGKILL", "SIGKILL", None)
    event = {"type": "kernel.demo.kill", "timestamp": "2026-11-22T10:00:00Z", "data": {"signal": "SIGKILL"}}
    [finding] = evaluate([event], kb)
    assert finding.signal == "SIGKILL"
    assert {key: finding.as_dict()[key] for key in ("errno", "tcp_state", "signal")} == {
        "errno": None, "tcp_state": None, "signal": "SIGKILL"}
    [verdict] = explain("demo_kill", ["data.signal=9"], kb=kb).verdicts
    assert verdict.holds and verdict.as_dict()["signal"] == "SIGKILL"


def test_a_name_the_vocabulary_does_not_report_is_refused_with_the_allowed_kinds(tmp_path: Path) -> None:
    kb = load(tmp_path, VOCABULARY, kill_entry(signal="SIGKILL"))
    assert "demo_kill" not in kb.entries
    assert [(p.path, p.message) for p in kb.problems] == [
        ("interpretations[0].signal", "unknown field; an interpretation may state a name of: errno, tcp_state "
                                      "(the vocabulary's reported_names)")]
    kb = load(tmp_path, {**VOCABULARY, "reported_names": ["signal"]}, kill_entry(signal="SIGKILLED"))
    assert [p.path for p in kb.problems] == ["interpretations[0].signal"]
    assert kb.problems[0].message.startswith("unknown signal name 'SIGKILLED'")


def test_reported_names_must_be_value_sets(tmp_path: Path) -> None:
    kb = load(tmp_path, {**VOCABULARY, "reported_names": ["tcp_state", "colour"]}, kill_entry())
    assert [(p.path, p.message) for p in kb.problems if p.path.startswith("reported_names")] == [
        ("reported_names[1]", "'colour' is not a value set of this document")]
    assert "demo_kill" not in kb.entries  # the vocabulary was refused, so its value sets are unknown
