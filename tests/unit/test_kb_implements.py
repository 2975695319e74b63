"""A plugin's KB entry implements a core placeholder entry: one entry, the plugin's rules, one finding.

The core's ``kb/<layer>.planned.json`` hold entries no plugin implemented yet
(``implemented_by`` null). A plugin entry that declares ``"implements":
"<placeholder id>"`` (or has the placeholder's own id) replaces it; without the
declaration both entries load and both rule sets fire on the same events.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from jalki_core.ask import engine as ask_engine
from jalki_core.ask.engine import ask
from jalki_core.kb import KbDocument, KnowledgeBase, evaluate, find, load_kb
from jalki_core.session import ProbeRunStats, SessionSummary

REPO = Path(__file__).resolve().parents[2]
KB_DIR = REPO / "kb"
SHIPPED = [KB_DIR, *sorted(REPO.glob("plugins/*/*/kb/*.json"))]  # the core's placeholders and the plugins' entries
ORIGIN = "plugin example (jalki-example 0.1.0): runqslow.json"
QUESTION = "Is my process waiting for CPU?"
JALKI = str(Path(sys.executable).with_name("jalki"))


def placeholder() -> dict[str, Any]:
    document = json.loads((KB_DIR / "sched.planned.json").read_text())
    entry: dict[str, Any] = next(e for e in document["entries"] if e["id"] == "sched_wakeup")
    assert entry["implemented_by"] is None
    return entry


def implementer(*, implements: str | None = "sched_wakeup", entry_id: str = "runqslow",
                rule_prefix: str = "runqslow_") -> dict[str, Any]:
    """The example plugin's run-queue probe written as a KB entry, as its author would copy the placeholder."""
    entry = copy.deepcopy(placeholder())
    entry.update(id=entry_id, implemented_by={"plugin": "example", "probe": "runqslow"},
                 attach=["tp_btf", "tracepoint"], summary="Run-queue latency of threads that waited long.")
    if implements is not None:
        entry["implements"] = implements
    entry["interpretations"] = [dict(rule, id=rule_prefix + rule["id"]) for rule in entry["interpretations"]]
    return entry


def document(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"kb_version": 1, "layer": "sched", "entries": list(entries)}


def load(*entries: dict[str, Any]) -> KnowledgeBase:
    return load_kb(SHIPPED, [KbDocument(ORIGIN, data=document(*entries))])


def runq_events(count: int = 5, latency_ns: int = 20_000_000) -> list[dict[str, Any]]:
    return [{"type": "kernel.sched.runq_latency", "timestamp": f"2026-11-22T10:00:0{i}.000000000Z",
             "process_data": {"pid": 4242, "command": "api-server"},
             "data": {"latency_ns": latency_ns, "tid": 4242, "cpu": 1, "cause": "wakeup", "prev_tid": 0,
                      "prev_command": "swapper/1"}} for i in range(count)]


def test_without_implements_both_entries_fire_near_identical_findings() -> None:
    kb = load(implementer(implements=None))  # what a plugin author got before `implements`
    assert {"sched_wakeup", "runqslow"} <= set(kb.entries) and kb.problems == ()
    fired = [f.interpretation_id for f in evaluate(runq_events(), kb)]
    assert sorted(fired) == ["runq_wait_high", "runqslow_runq_wait_high"]


def test_implementing_entry_replaces_the_placeholder() -> None:
    base = load_kb(SHIPPED)
    kb = load(implementer())
    assert kb.problems == ()
    assert "sched_wakeup" not in kb.entries and len(kb) == len(base)
    assert kb.implemented == {"sched_wakeup": "runqslow"}
    entry = kb.get("sched_wakeup")  # the placeholder's id leads to the entry that implements it
    assert entry is not None and entry.id == "runqslow" and entry.source == ORIGIN
    assert entry.as_dict()["implements"] == "sched_wakeup"
    # References to the placeholder now name the implementation.
    for referrer in ("direct_reclaim", "offcpu_blocked", "sched_switch"):
        combined = kb.entries[referrer].combine_with
        assert "runqslow" in combined and "sched_wakeup" not in combined, referrer
    assert [f.interpretation_id for f in evaluate(runq_events(), kb)] == ["runqslow_runq_wait_high"]
    assert [m.entry.id for m in find(QUESTION, kb)].count("runqslow") == 1
    assert "sched_wakeup" not in [m.entry.id for m in find(QUESTION, kb)]


def test_an_entry_with_the_placeholders_id_replaces_it_and_may_reuse_its_rule_ids() -> None:
    kb = load(implementer(implements=None, entry_id="sched_wakeup", rule_prefix=""))
    assert kb.problems == ()  # before: "entry id already defined in kb/sched.planned.json; ignored"
    entry = kb.entries["sched_wakeup"]
    assert entry.implemented_by is not None and entry.implemented_by.plugin == "example"
    assert kb.implemented == {"sched_wakeup": "sched_wakeup"} and entry.implements == "sched_wakeup"
    assert [f.interpretation_id for f in evaluate(runq_events(), kb)] == ["runq_wait_high"]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (implementer(implements="no_such_entry"), "no placeholder entry 'no_such_entry' (implemented_by null) "
                                                  "is loaded; nothing replaced"),
        (implementer(implements="tcp_connect"), "entry 'tcp_connect' is not a placeholder: "
                                                f"{REPO}/plugins/jalki_tcp/jalki_tcp/kb/tcp.json implements it "
                                                "with tcp/tcp_connect; nothing replaced"),
    ],
)
def test_implements_naming_no_placeholder_is_reported_and_the_entry_still_loads(entry: dict[str, Any],
                                                                                 message: str) -> None:
    kb = load(entry)
    assert "runqslow" in kb.entries and "sched_wakeup" in kb.entries
    assert kb.implemented == {} and kb.entries["runqslow"].implements is None
    assert [(p.source, p.entry, p.path) for p in kb.problems if message in p.message] == [
        (ORIGIN, "runqslow", "implements")], [p.one_line() for p in kb.problems]


def test_a_placeholder_cannot_implement_and_a_second_implementer_is_reported() -> None:
    bad = dict(implementer(), implemented_by=None)
    kb = load(bad)
    assert "runqslow" not in kb.entries and "sched_wakeup" in kb.entries
    assert [p.path for p in kb.problems] == ["implements"]
    assert "only an implemented entry" in kb.problems[0].message
    kb = load(implementer(), implementer(entry_id="runqslow2", rule_prefix="runqslow2_"))
    assert kb.implemented == {"sched_wakeup": "runqslow"} and {"runqslow", "runqslow2"} <= set(kb.entries)
    assert [p.one_line() for p in kb.problems] == [
        f"{ORIGIN}: entry 'runqslow2': implements: placeholder 'sched_wakeup' is already implemented by entry "
        "'runqslow'; nothing replaced"]


class _Collect:
    """Stands in for attaching and draining: hands the ask engine fixed events."""

    def __init__(self, events: list[dict[str, Any]]) -> None:
        self.events = events

    def __call__(self, probes: Any, seconds: float, *_: Any) -> tuple[Any, SessionSummary]:
        collector = ask_engine.EventCollector(ask_engine.MAX_EVENTS_KEPT)
        collector(self.events)
        stats = [ProbeRunStats(registered.probe.name, rung="tp_btf", events=len(self.events), kernel_drops={},
                               failed_rungs=[], error=None) for registered in probes]
        return collector, SessionSummary(stats, {}, seconds)


def test_ask_observes_with_the_plugin_probe_and_reports_one_finding(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("jalki_core.privileges.require_bpf_privileges", lambda: None)
    monkeypatch.setattr("jalki_core.privileges.require_btf", lambda: None)
    kb = load(implementer())
    result = ask(QUESTION, seconds=1, kb=kb, collect=_Collect(runq_events()))
    assert result.mode == "observed"
    assert [use.probe for use in result.probes if "runqslow" in use.entries] == ["runqslow"]
    assert [(f.entry_id, f.interpretation_id) for f in result.findings] == [("runqslow", "runqslow_runq_wait_high")]
    answer = result.as_dict()
    jsonschema.validate(answer, json.loads((REPO / "specs" / "ask.schema.json").read_text()))
    assert (answer["findings"][0]["errno"], answer["findings"][0]["tcp_state"]) == (None, None)


def _jalki(tmp_path: Path, *argv: str) -> Any:
    (tmp_path / "runqslow.json").write_text(json.dumps(document(implementer())))
    env = {**os.environ, "JALKI_KB_PATH": str(tmp_path / "runqslow.json"), "COLUMNS": "200"}
    done = subprocess.run([JALKI, *argv, "--json"], capture_output=True, text=True, env=env, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert "warning" not in done.stderr, done.stderr  # no KB problem: nothing duplicated or dangling
    return json.loads(done.stdout)


def test_cli_list_find_and_explain_show_one_entry(tmp_path: Path) -> None:
    listed = [entry["id"] for entry in _jalki(tmp_path, "list", "--layer", "sched")]
    assert "runqslow" in listed and "sched_wakeup" not in listed
    found = [match["entry"] for match in _jalki(tmp_path, "find", QUESTION)["matches"]]
    assert found.count("runqslow") == 1 and "sched_wakeup" not in found
    explained = _jalki(tmp_path, "explain", "sched_wakeup", "data.latency_ns=20000000")
    assert explained["entry"] == "runqslow"
    assert explained["verdicts"][0]["interpretation"] == "runqslow_runq_wait_high"
