"""Event context: ids, RFC 3339 timestamps from kernel time."""

from __future__ import annotations

import datetime as dt
import time

from jalki_core.events import EventContext, Rfc3339Formatter, format_ip, kernel_comm, monotonic_to_realtime_offset


def test_rfc3339_nanoseconds_utc() -> None:
    fmt = Rfc3339Formatter()
    assert fmt(0) == "1970-01-01T00:00:00.000000000Z"
    assert fmt(1_700_000_000_123_456_789) == "2023-11-14T22:13:20.123456789Z"
    assert fmt(1_700_000_001_000_000_001) == "2023-11-14T22:13:21.000000001Z"


def test_monotonic_offset_maps_kernel_time_to_now() -> None:
    offset = monotonic_to_realtime_offset()
    now = time.clock_gettime_ns(time.CLOCK_MONOTONIC) + offset
    assert abs(now - time.time_ns()) < 50_000_000
    ctx = EventContext("p", "tp_btf", clock_offset_ns=offset)
    event = ctx.new_event("kernel.x.y", time.clock_gettime_ns(time.CLOCK_MONOTONIC))
    parsed = dt.datetime.fromisoformat(event["timestamp"][:26] + "+00:00")
    assert abs(parsed.timestamp() - time.time()) < 1


def test_ids_are_unique_and_carry_run_and_probe() -> None:
    ctx = EventContext("tcp_connect", "tp_btf", cluster="prod", run_id="abcd1234")
    ids = {ctx.new_event("kernel.tcp.connect", 1)["id"] for _ in range(1000)}
    assert len(ids) == 1000
    event = ctx.new_event("kernel.tcp.connect", 1, outcome="success")
    assert event["id"].startswith("abcd1234-tcp_connect-")
    assert event["cluster"] == "prod" and event["source"] == "jalki/tcp_connect" and event["outcome"] == "success"


def test_helpers() -> None:
    assert kernel_comm(b"curl\0\0\0garbage") == "curl"
    assert format_ip(2, bytes([127, 0, 0, 1]) + b"\0" * 12) == "127.0.0.1"
    assert format_ip(10, b"\0" * 15 + b"\1") == "::1"
