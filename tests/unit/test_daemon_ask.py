"""What a question asked through the daemon sees of the daemon's event stream."""

from __future__ import annotations

from typing import Any

from jalki_core.ask.engine import EventCollector
from jalki_core.daemon.ask import QuestionTap, _passes
from jalki_core.daemon.protocol import EventFilter
from jalki_core.kb import parse_timestamp

ASKED = "2026-12-03T07:15:12.000000000Z"
ASKED_NS = parse_timestamp(ASKED) or 0


def event(pid: int | None = 7, dst_port: int = 6379, window_start: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {} if window_start is None else {"window_start": window_start, "count": 5}
    return {"timestamp": "2026-12-03T07:15:13.000000000Z", "process_data": {"pid": pid},
            "network_data": {"src_port": 40000, "dst_port": dst_port}, "data": data}


def test_filters_by_pid_and_either_port() -> None:
    assert _passes(event(), None, None, ASKED_NS)
    assert _passes(event(), 7, 6379, ASKED_NS) and _passes(event(), 7, 40000, ASKED_NS)
    assert not _passes(event(), 8, None, ASKED_NS) and not _passes(event(), None, 5432, ASKED_NS)


def test_an_anomaly_window_that_began_before_the_question_is_not_evidence() -> None:
    assert not _passes(event(window_start="2026-12-03T07:15:04.508072326Z"), None, None, ASKED_NS)
    assert _passes(event(window_start=ASKED), None, None, ASKED_NS)
    assert _passes(event(window_start="2026-12-03T07:15:14.599499066Z"), None, None, ASKED_NS)


def sourced(source: str, pid: int, pod: str | None = None) -> dict[str, Any]:
    result = {**event(pid), "source": f"jalki/{source}"}
    if pod is not None:
        result["k8s"] = {"k8s.pod.name": pod}
    return result


def test_a_mixed_source_batch_is_kept_event_by_event_and_credited_to_each_probe() -> None:
    # an enricher releases a new pod's held events late, together with other sources' events
    collector = EventCollector(100, EventFilter(pod="web-1"))
    tap = QuestionTap(["tcp_connect", "tcp_reset"], collector, lambda: 50, None, None, ASKED_NS)
    tap([sourced("oom_kill", 1, "web-1"), sourced("tcp_connect", 2, "web-1"), sourced("tcp_reset", 3, "web-1"),
         sourced("tcp_connect", 4, "db-0"), sourced("tcp_reset", 5, "web-1")])
    assert [e["process_data"]["pid"] for e in collector.events] == [2, 3, 5]
    assert all("seq" not in e for e in collector.events)  # numbered source by source: no seq to name
    assert tap.per_probe == {"tcp_connect": 2, "tcp_reset": 2}
    assert collector.left_out == 1


def test_a_one_source_batch_is_numbered_and_one_of_another_probe_is_left_alone() -> None:
    collector = EventCollector(100)
    tap = QuestionTap(["tcp_connect"], collector, lambda: 50, 7, None, ASKED_NS)
    tap([sourced("tcp_reset", 7), sourced("tcp_reset", 7)])
    assert not collector.events and tap.per_probe == {"tcp_connect": 0}
    tap([sourced("tcp_connect", 7), sourced("tcp_connect", 8), sourced("tcp_connect", 7)])
    assert [e["seq"] for e in collector.events] == [48, 50] and tap.per_probe == {"tcp_connect": 2}
