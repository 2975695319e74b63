"""The evidence summariser: decisive fields from the KB, their values with counts, processes by command.

Real KB, real evaluation over constructed events; the engine's collection is
replaced only in the last tests, as in ``test_ask.py``.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from rich.console import Console

from jalki_core.ask import engine as ask_engine
from jalki_core.ask.engine import MAX_EVENTS_KEPT, ask
from jalki_core.cli.ask import print_answer
from jalki_core.kb import default_kb, evaluate, load_kb
from jalki_core.kb.summarize import (
    MAX_PIDS,
    MAX_VALUES,
    CommandGroup,
    ValueCount,
    decisive_fields,
    group_by_command,
    summarize_field,
)
from jalki_core.session import ProbeRunStats, SessionSummary

REPO = Path(__file__).resolve().parents[2]
ASK_SCHEMA = json.loads((REPO / "specs" / "ask.schema.json").read_text())
START = "2026-11-22T10:00:"


def exit_event(second: int, pid: int, *, signal: str | None = "SIGSEGV", exit_code: int = 139,
               core_dumped: bool = True, command: str = "crashy") -> dict[str, Any]:
    return {"type": "kernel.process.exit", "timestamp": f"{START}{second:02d}.000000000Z",
            "process_data": {"pid": pid, "command": command},
            "data": {"exit_code": exit_code, "signal": signal, "core_dumped": core_dumped,
                     "abnormal": True, "oom_killed": False, "runtime_ns": 1_000_000 + pid}}


def refused(second: int, *, pid: int = 4242, latency_ns: int = 31_000) -> dict[str, Any]:
    return {"type": "kernel.tcp.connect", "timestamp": f"{START}{second:02d}.000000000Z", "outcome": "failure",
            "error": {"code": "ECONNREFUSED"}, "network_data": {"dst_ip": "10.0.0.5", "dst_port": 5432},
            "process_data": {"pid": pid, "command": "api"},
            "data": {"latency_ns": latency_ns, "abandoned_by_application": False}}


def crash_loop_events(count: int = 13) -> list[dict[str, Any]]:
    return [exit_event(second, 812 + 3 * second) for second in range(count)]


def by_rule(findings: list[Any]) -> dict[str, Any]:
    return {finding.interpretation_id: finding for finding in findings}


def test_decisive_fields_are_the_rules_fields_then_the_entrys_important_ones() -> None:
    kb = default_kb()
    exits = kb.get("process_exit")
    assert exits is not None
    rules = {rule.id: rule for rule in exits.interpretations}
    crashed = [name for name, _ in decisive_fields(rules["exit_crashed"], exits)]
    assert crashed[0] == "data.signal"  # the field the rule tests comes first
    assert {"data.exit_code", "data.core_dumped", "data.oom_killed"} <= set(crashed)
    assert "data.runtime_ns" not in crashed  # not tested, not important
    assert next(name for name, _ in decisive_fields(rules["crash_loop"], exits)) == "data.exit_code"
    connect = kb.get("tcp_connect")
    assert connect is not None
    refused_rule = next(rule for rule in connect.interpretations if rule.id == "connect_refused")
    fields = dict(decisive_fields(refused_rule, connect))
    assert list(fields)[:2] == ["outcome", "error.code"] and fields["error.code"] == "errno"
    # shown as destinations and processes instead
    assert not {"network_data.dst_ip", "network_data.dst_port", "process_data.pid", "process_data.command"} & set(
        fields)


def test_a_new_kb_entry_is_summarised_from_its_own_marks(tmp_path: Path) -> None:
    entry = {
        "id": "demo_probe", "summary": "A demo probe.", "tracepoint": "demo:demo_event", "implemented_by": None,
        "attach": ["tracepoint"], "event_type": "kernel.demo.event", "event_rate": "low",
        "answers": ["Is the demo failing?"], "keywords": ["demo"],
        "fields": [
            {"name": "error.code", "type": "errno", "meaning": "why it failed", "important": False},
            {"name": "data.count", "type": "integer", "meaning": "how many", "important": False},
            {"name": "data.state", "type": "tcp_state", "meaning": "socket state", "important": True},
            {"name": "data.path", "type": "string", "meaning": "the file", "important": True},
        ],
        "use_when": "Always.", "not_when": "Never.", "combine_with": [],
        "interpretations": [{"id": "demo_denied", "condition": {"field": "error.code", "in": ["EACCES", "EPERM"]},
                             "conclusion": "Denied.", "severity": "error", "action": "Fix the mode."}],
    }
    path = tmp_path / "demo.json"
    path.write_text(json.dumps({"kb_version": 1, "layer": "demo", "entries": [entry]}))
    kb = load_kb([REPO / "kb" / "vocabulary.json", path])
    assert not kb.problems
    events = [{"type": "kernel.demo.event", "timestamp": f"{START}0{i}.000000000Z", "error": {"code": code},
               "process_data": {"pid": 7, "command": "app"},
               "data": {"count": i, "state": "CLOSE_WAIT", "path": "/srv/data"}}
              for i, code in enumerate(["EACCES", "EACCES", "EPERM"])]
    [finding] = evaluate(events, kb)
    assert finding.decisive_fields == ("error.code", "data.state", "data.path")  # data.count: neither tested nor marked
    group = finding.evidence[0]
    assert [(s.field, s.values) for s in group.fields] == [
        ("error.code", (ValueCount("EACCES", 2), ValueCount("EPERM", 1))),
        ("data.state", (ValueCount("CLOSE_WAIT", 3),)),
        ("data.path", (ValueCount("/srv/data", 3),)),
    ]
    # names speak for themselves; a free-form string says which field it is
    assert finding.detail == "EACCES ×2/EPERM ×1, CLOSE_WAIT, path /srv/data from app (pid 7)"


def test_crash_loop_names_the_signal_exit_status_core_and_the_command() -> None:
    findings = evaluate(crash_loop_events())
    assert [f.interpretation_id for f in findings[:2]] == ["crash_loop", "exit_crashed"]
    for finding in findings[:2]:
        assert finding.detail == "SIGSEGV (exit 139, core dumped) from crashy (13 processes)"
        [group] = finding.evidence
        assert group.commands == (CommandGroup("crashy", 13, 13, tuple(812 + 3 * i for i in range(MAX_PIDS))),)
        assert group.commands[0].phrase() == "crashy ×13 (pids 812, 815, 818, 821, 824, 827, 830, 833, …, 13 in all)"
        values = {summary.field: summary.values for summary in group.fields}
        assert values["data.signal"] == (ValueCount("SIGSEGV", 13),)
        assert values["data.exit_code"] == (ValueCount(139, 13),)
        assert values["data.core_dumped"] == (ValueCount(True, 13),)
        assert values["data.oom_killed"] == (ValueCount(False, 13),)


def test_mixed_failures_give_counts_and_missing_values() -> None:
    events = [exit_event(s, 900 + s) for s in range(10)]
    events += [exit_event(10 + s, 950 + s, signal=None, exit_code=1, core_dumped=False) for s in range(3)]
    loop = by_rule(evaluate(events))["crash_loop"]
    assert loop.detail == "SIGSEGV ×10 (exit 139 ×10/1 ×3, core dumped ×10) from crashy (13 processes)"
    signal = next(s for s in loop.evidence[0].fields if s.field == "data.signal")
    assert (signal.values, signal.missing, signal.other) == ((ValueCount("SIGSEGV", 10),), 3, 0)
    assert by_rule(evaluate(events))["exit_crashed"].detail == (
        "SIGSEGV (exit 139, core dumped) from crashy (10 processes)")


def test_a_windowed_finding_is_phrased_from_its_biggest_group() -> None:
    events = crash_loop_events()
    events += [exit_event(20 + s, 700 + s, signal=None, exit_code=1, core_dumped=False, command="worker")
               for s in range(3)]
    findings = by_rule(evaluate(events))
    loop = findings["crash_loop"]
    assert [group.group for group in loop.evidence] == [(("process_data.command", "crashy"),),
                                                        (("process_data.command", "worker"),)]
    assert loop.detail == "SIGSEGV (exit 139, core dumped) from crashy (13 processes); 1 more group"
    assert findings["exit_failure_status"].detail == "exit 1 from worker (3 processes)"


def test_refused_names_errno_destination_and_process_not_what_the_rule_pins() -> None:
    finding = by_rule(evaluate([refused(s, latency_ns=31_000 + s) for s in range(4)]))["connect_refused"]
    # outcome=failure is what the rule pins: it restates the conclusion; the errno is the kernel's name for it
    assert finding.detail == "ECONNREFUSED to 10.0.0.5:5432 from api (pid 4242)"
    latency = next(s for s in finding.evidence[0].fields if s.field == "data.latency_ns")
    assert (latency.minimum, latency.maximum) == (31_000, 31_003)  # a measurement: in the evidence, not the phrase


def test_summarize_field_lists_the_busiest_values_and_counts_the_rest() -> None:
    events = [{"data": {"v": value}} for value in [1, 1, 1, 2, 2, 3, 4, 5, 6, 7, True, None]] + [{}]
    summary = summarize_field("data.v", "", events)
    assert summary.values[:2] == (ValueCount(1, 3), ValueCount(2, 2))
    assert len(summary.values) == MAX_VALUES
    assert (summary.other, summary.missing, summary.present) == (3, 2, 11)
    assert (summary.minimum, summary.maximum) == (1, 7)  # true is not the number 1
    assert summarize_field("data.argv", "string", [{"data": {"argv": ["sh", "-c", "x"]}}]).values == (
        ValueCount("sh -c x", 1),)


def test_group_by_command_counts_processes_and_keeps_the_lowest_pids() -> None:
    events = [{"process_data": {"pid": pid, "command": "crashy"}} for pid in range(120, 100, -1)]
    events += [{"process_data": {"pid": 7, "command": "api"}}] * 3 + [{"process_data": {"pid": None}}]
    assert group_by_command(events) == (CommandGroup("crashy", 20, 20, tuple(range(101, 101 + MAX_PIDS))),
                                        CommandGroup("api", 3, 1, (7,)))
    assert group_by_command(events)[1].phrase() == "api ×3 (pid 7)"


class _Collection:
    def __init__(self, events: list[dict[str, Any]]) -> None:
        self.events = events

    def __call__(self, probes: Any, seconds: float, *_: Any) -> tuple[Any, SessionSummary]:
        collector = ask_engine.EventCollector(MAX_EVENTS_KEPT)
        collector(self.events)
        return collector, SessionSummary([ProbeRunStats(r.probe.name, rung="tp_btf") for r in probes], {}, seconds)


@pytest.fixture
def crash_answer(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setattr("jalki_core.privileges.require_bpf_privileges", lambda: None)
    monkeypatch.setattr("jalki_core.privileges.require_btf", lambda: None)
    monkeypatch.setattr(ask_engine, "collect_in_process", _Collection(crash_loop_events()))
    result = ask("why does my app keep crashing?", seconds=1)
    answer: dict[str, Any] = result.as_dict()
    return answer


def test_answer_sentence_and_json_carry_the_decisive_values(crash_answer: dict[str, Any]) -> None:
    jsonschema.validate(crash_answer, ASK_SCHEMA)
    top = crash_answer["findings"][0]
    assert (top["interpretation"], crash_answer["findings"][1]["interpretation"]) == ("crash_loop", "exit_crashed")
    assert crash_answer["answer"].endswith(
        "(13 process_exit events: SIGSEGV (exit 139, core dumped) from crashy (13 processes))")
    [group] = top["evidence"]
    assert group["commands"] == [{"command": "crashy", "events": 13, "processes": 13,
                                  "pids": [812 + 3 * i for i in range(MAX_PIDS)]}]
    assert {"field": "data.signal", "type": "signal", "values": [{"value": "SIGSEGV", "events": 13}], "other": 0,
            "missing": 0, "min": None, "max": None} in group["fields"]


def test_cli_prints_the_detail_and_one_line_per_command(crash_answer: dict[str, Any]) -> None:
    out = io.StringIO()
    print_answer(crash_answer, Console(file=out, width=80, highlight=False, color_system=None))
    text = " ".join(out.getvalue().split())
    assert "seen: SIGSEGV (exit 139, core dumped) from crashy (13 processes)" in text
    assert "signal SIGSEGV ×13" in text and "core_dumped true ×13" in text
    assert "from crashy ×13 (pids 812, 815, 818, 821, 824, 827, 830, 833, …, 13 in all)" in text
    assert "(pid 815)" not in text  # not one line per short-lived process
