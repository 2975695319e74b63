"""What a question asked through the daemon sees of the daemon's event stream."""

from __future__ import annotations

from typing import Any

from jalki_core.daemon.ask import _passes
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
