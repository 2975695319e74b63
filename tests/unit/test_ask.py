"""The ask engine without a kernel: the collection step is replaced, everything else is real.

The real plugins and KB are used; only ``collect_in_process`` (attach + drain) and the
privilege checks are stood in for, so ranking, notes and answer sentences
can be checked on exact, constructed events.
"""

from __future__ import annotations

from typing import Any

import pytest

from jalki_core.ask import engine as ask_engine
from jalki_core.ask.engine import MAX_EVENTS_KEPT, ask, first_sentence
from jalki_core.loader import RungFailure
from jalki_core.session import ProbeRunStats, SessionSummary

START = "2026-11-22T10:00:"


def connect_failure(second: int, errno_name: str, pid: int = 4242, dport: int = 5432) -> dict[str, Any]:
    return {"type": "kernel.tcp.connect", "timestamp": f"{START}{second:02d}.000000000Z", "outcome": "failure",
            "error": {"code": errno_name},
            "network_data": {"dst_ip": "10.42.2.8", "dst_port": dport},
            "process_data": {"pid": pid, "command": "api-server"}, "data": {"latency_ns": 1000}}


def retransmit(second: float, state: str, pid: int | None = 4242) -> dict[str, Any]:
    return {"type": "kernel.tcp.retransmit", "timestamp": f"{START}{second:012.9f}Z",
            "network_data": {"dst_ip": "10.42.2.8", "dst_port": 5432},
            "process_data": {"pid": pid, "command": "api-server" if pid else None}, "data": {"tcp_state": state}}


class FakeCollection:
    """Stands in for attach + drain: hands the engine these events and this summary."""

    def __init__(self, events: list[dict[str, Any]], *, drops: dict[str, int] | None = None,
                 not_kept: int = 0, failed: set[str] | None = None) -> None:
        self.events, self.drops, self.not_kept, self.failed = events, drops or {}, not_kept, failed or set()

    def __call__(self, probes: Any, seconds: float, *_: Any) -> tuple[Any, SessionSummary]:
        collector = ask_engine.EventCollector(MAX_EVENTS_KEPT)
        collector(self.events)
        collector.not_kept += self.not_kept
        stats = []
        for registered in probes:
            name = registered.probe.name
            failed = name in self.failed
            stats.append(ProbeRunStats(
                name, rung=None if failed else "tp_btf",
                events=sum(1 for e in self.events if e["type"] in registered.probe.event_types),
                kernel_drops=dict(self.drops) if name == "tcp_retransmit_skb" else {},
                failed_rungs=[RungFailure("fexit", "load", "EPERM", "refused", hint="no fentry here")],
                error="every rung failed" if failed else None))
        return collector, SessionSummary(stats, {}, seconds)


@pytest.fixture
def collection(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr("jalki_core.privileges.require_bpf_privileges", lambda: None)
    monkeypatch.setattr("jalki_core.privileges.require_btf", lambda: None)

    def use(fake: FakeCollection) -> None:
        monkeypatch.setattr(ask_engine, "collect_in_process", fake)

    return use


def test_findings_rank_by_severity_then_events(collection: Any) -> None:
    events = [connect_failure(s, "ECONNREFUSED") for s in range(3)]
    events += [retransmit(10 + s / 4, "ESTABLISHED") for s in range(25)]  # 25 within 10 s: severe (error)
    events += [retransmit(40, "SYN_SENT")]  # one SYN retransmit: a warning
    collection(FakeCollection(events))
    result = ask("why are connections to my database failing", seconds=1)
    assert result.mode == "observed"
    ranked = [(f.severity, f.interpretation_id, f.events) for f in result.findings]
    assert ranked[:3] == [("error", "retransmit_established_severe", 25), ("error", "connect_refused", 3),
                          ("warning", "retransmit_established_loss", 25)]
    assert ranked[-1] == ("warning", "retransmit_syn", 1)
    assert result.problem_found is True
    assert result.top is result.findings[0]


def test_problem_found_only_for_error_or_critical(collection: Any) -> None:
    collection(FakeCollection([retransmit(1, "SYN_SENT")]))
    result = ask("why are connections to my database failing", seconds=1)
    assert [f.severity for f in result.findings] == ["warning"]
    assert result.problem_found is False
    assert result.as_dict()["problem_found"] is False


def test_drops_and_unkept_events_are_noted(collection: Any) -> None:
    collection(FakeCollection([retransmit(1, "ESTABLISHED")], drops={"ringbuf_full": 7}, not_kept=3,
                              failed={"tcp_close"}))
    result = ask("why are connections to my database failing", seconds=1)
    by_probe = {probe.probe: probe for probe in result.probes}
    assert by_probe["tcp_retransmit_skb"].drops == {"ringbuf_full": 7}
    assert by_probe["tcp_retransmit_skb"].attach == "tp_btf"
    assert by_probe["tcp_connect"].failed_rungs == ("fexit: load failed with EPERM (no fentry here)",)
    assert "probe tcp_retransmit_skb lost 7 records (ringbuf_full=7): counts are lower bounds" in result.notes
    assert f"3 events beyond the first {MAX_EVENTS_KEPT} were counted but not evaluated" in result.notes
    assert result.events_not_kept == 3
    unobserved = {item.entry: item for item in result.unobserved}
    assert unobserved["tcp_close"].code == "not_attachable"
    assert "every rung failed" in unobserved["tcp_close"].reason


def test_collector_keeps_at_most_its_limit() -> None:
    collector = ask_engine.EventCollector(limit=5)
    collector([retransmit(1, "ESTABLISHED")] * 3)
    collector([retransmit(2, "ESTABLISHED")] * 4)
    assert len(collector.events) == 5 and collector.not_kept == 2
    assert collector.by_type == {"kernel.tcp.retransmit": 7}


def test_answer_sentences(collection: Any) -> None:
    collection(FakeCollection([connect_failure(s, "ECONNREFUSED") for s in range(4)]))
    answer = ask("connection refused", seconds=1).answer
    assert answer == ("ERROR: Nothing is listening on the destination port: the destination answered the SYN "
                      "with a reset (RST). (4 tcp_connect events: ECONNREFUSED to 10.42.2.8:5432 from api-server "
                      "(pid 4242))")

    collection(FakeCollection([retransmit(s, "ESTABLISHED", pid=None) for s in range(4)]))
    answer = ask("packet loss", seconds=1).answer
    assert answer.startswith("WARNING: Data segments to this destination are retransmitted on established "
                             "connections: packets are lost on the network path")
    assert answer.endswith("(4 tcp_retransmit_skb events: ESTABLISHED to 10.42.2.8:5432 from no single known "
                           "process)")

    collection(FakeCollection([]))
    answer = ask("packet loss", seconds=2).answer
    assert answer.startswith("No problem seen, but nothing happened to judge: ")
    assert "saw no events in 2 s" in answer

    healthy = dict(connect_failure(1, "ECONNREFUSED"), outcome="success")
    del healthy["error"]
    collection(FakeCollection([healthy]))
    answer = ask("connection refused", seconds=2).answer
    assert answer.startswith("No problem found: 1 events from ") and "matched no knowledge-base rule" in answer


def test_first_sentence_keeps_abbreviations_and_parentheses() -> None:
    assert first_sentence("One (RST). Two.") == "One (RST)."
    assert first_sentence("Path lost (e.g. a NIC). Then more.") == "Path lost (e.g. a NIC)."
    assert first_sentence("No period here") == "No period here"
