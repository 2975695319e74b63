"""Evidence names its events: the ``id`` (and the daemon's ``seq``) of each group's first events, bounded.

Real KB, real evaluation over constructed events; the engine's collection is
replaced only for the ``ask`` answer, as in ``test_ask_evidence.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from jalki_core.ask import engine as ask_engine
from jalki_core.ask.engine import MAX_EVENTS_KEPT, ask
from jalki_core.kb import evaluate
from jalki_core.kb.evaluate import MAX_EVIDENCE_IDS
from jalki_core.session import ProbeRunStats, SessionSummary

REPO = Path(__file__).resolve().parents[2]
ASK_SCHEMA = json.loads((REPO / "specs" / "ask.schema.json").read_text())
START = "2026-11-22T10:00:"


def connect(second: int, number: int, *, refused: bool = True, seq: int | None = None) -> dict[str, Any]:
    event: dict[str, Any] = {
        "id": f"run1-tcp_connect-{number}", "type": "kernel.tcp.connect",
        "timestamp": f"{START}{second:02d}.{number:09d}Z",
        "outcome": "failure" if refused else "success",
        "network_data": {"dst_ip": "10.0.0.5", "dst_port": 5432},
        "process_data": {"pid": 4242, "command": "api"}, "data": {"latency_ns": 31_000},
    }
    if refused:
        event["error"] = {"code": "ECONNREFUSED"}
    if seq is not None:
        event["seq"] = seq
    return event


def crash(second: int, number: int, command: str) -> dict[str, Any]:
    return {"id": f"run1-process_exit-{number}", "type": "kernel.process.exit",
            "timestamp": f"{START}{second:02d}.000000000Z", "process_data": {"pid": 800 + number, "command": command},
            "data": {"exit_code": 139, "signal": "SIGSEGV", "core_dumped": True, "abnormal": True,
                     "oom_killed": False, "runtime_ns": 1_000_000}}


def finding(events: list[dict[str, Any]], interpretation: str) -> Any:
    return next(f for f in evaluate(events) if f.interpretation_id == interpretation)


def test_a_per_event_finding_names_exactly_its_events_in_order() -> None:
    # refused connects interleaved with successes: only the refused ones are evidence
    events = [connect(1, n, refused=n % 3 != 0) for n in range(1, 10)]
    refused = finding(events, "connect_refused")
    [group] = refused.evidence
    assert group.event_ids == tuple(f"run1-tcp_connect-{n}" for n in range(1, 10) if n % 3 != 0)
    assert group.event_seqs == ()  # observed in-process: no daemon, no seq
    assert group.as_dict()["event_ids"] == list(group.event_ids) and group.as_dict()["event_seqs"] == []


def test_ids_are_bounded_and_the_count_covers_them_all() -> None:
    total = MAX_EVIDENCE_IDS + 7
    events = [connect(1, n, seq=1000 + n) for n in range(1, total + 1)]
    [group] = finding(events, "connect_refused").evidence
    assert group.events == total
    assert group.event_ids == tuple(f"run1-tcp_connect-{n}" for n in range(1, MAX_EVIDENCE_IDS + 1))
    # events a daemon collected carry its seq: the same events, in the same order
    assert group.event_seqs == tuple(1000 + n for n in range(1, MAX_EVIDENCE_IDS + 1))


def test_each_window_group_names_its_own_events_by_time() -> None:
    # two programs in a crash loop, their exits interleaved and delivered out of time order
    events = [crash(second, number, command) for number, (second, command) in enumerate(
        [(5, "crashy"), (1, "other"), (2, "crashy"), (3, "other"), (9, "crashy"), (4, "other"), (7, "crashy")])]
    loop = finding(events, "crash_loop")
    groups = {group.group[0][1]: group for group in loop.evidence}
    assert groups["crashy"].event_ids == ("run1-process_exit-2", "run1-process_exit-0", "run1-process_exit-6",
                                          "run1-process_exit-4")
    assert groups["other"].event_ids == ("run1-process_exit-1", "run1-process_exit-3", "run1-process_exit-5")


def test_events_without_an_id_or_seq_are_counted_not_named() -> None:
    events = [connect(1, n, seq=n) for n in range(1, 4)]
    del events[1]["id"]
    events[2]["seq"] = True  # not a sequence number
    [group] = finding(events, "connect_refused").evidence
    assert group.events == 3
    assert group.event_ids == ("run1-tcp_connect-1", "run1-tcp_connect-3")
    assert group.event_seqs == (1, 2)


class _Collection:
    def __init__(self, events: list[dict[str, Any]]) -> None:
        self.events = events

    def __call__(self, probes: Any, seconds: float, *_: Any) -> tuple[Any, SessionSummary]:
        collector = ask_engine.EventCollector(MAX_EVENTS_KEPT)
        collector(self.events)
        return collector, SessionSummary([ProbeRunStats(r.probe.name, rung="tp_btf") for r in probes], {}, seconds)


def test_the_answer_carries_the_ids_and_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("jalki_core.privileges.require_bpf_privileges", lambda: None)
    monkeypatch.setattr("jalki_core.privileges.require_btf", lambda: None)
    events = [connect(1, n, seq=500 + n) for n in range(1, MAX_EVIDENCE_IDS + 6)]
    monkeypatch.setattr(ask_engine, "collect_in_process", _Collection(events))
    answer = ask("why can't my app reach port 5432", seconds=1).as_dict()
    jsonschema.validate(answer, ASK_SCHEMA)
    top = answer["findings"][0]
    assert top["interpretation"] == "connect_refused"
    [group] = top["evidence"]
    assert group["events"] == MAX_EVIDENCE_IDS + 5
    assert group["event_ids"] == [f"run1-tcp_connect-{n}" for n in range(1, MAX_EVIDENCE_IDS + 1)]
    assert group["event_seqs"] == [500 + n for n in range(1, MAX_EVIDENCE_IDS + 1)]
    assert ASK_SCHEMA["properties"]["findings"]["items"]["properties"]["evidence"]["items"]["properties"][
        "event_ids"]["maxItems"] == MAX_EVIDENCE_IDS
