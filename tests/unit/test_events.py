"""Event context: ids, RFC 3339 timestamps from kernel time."""

from __future__ import annotations

import datetime as dt
import time

from jalki_core.events import (
    ADDRESS_CACHE_SIZE,
    EventContext,
    Rfc3339Formatter,
    address_texts,
    event_time_ns,
    format_ip,
    kernel_comm,
    monotonic_to_realtime_offset,
    timestamp_ns,
)


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


def test_timestamps_read_back_exactly_and_bad_ones_refused() -> None:
    fmt = Rfc3339Formatter()
    for ns in (0, 1_700_000_000_123_456_789, 1_700_000_000_999_999_999, 1_700_000_001_000_000_000,
               1_699_999_999_000_000_001):
        assert timestamp_ns(fmt(ns)) == ns
    # written by someone else: parsed, not looked up
    assert timestamp_ns("2023-11-14T22:13:20Z") == 1_700_000_000 * 10**9
    assert timestamp_ns("2023-11-14T22:13:20.5Z") == 1_700_000_000_500_000_000
    assert timestamp_ns("2001-02-03T04:05:06.000000007Z") == 981_173_106_000_000_007
    for bad in (None, 5, "", "2023-11-14T22:13:20", "2023-11-14T22:13:20.+12345678Z",
                "2023-11-14T22:13:20.1234567890Z", "2023-13-14T22:13:20Z", "x" * 30):
        assert timestamp_ns(bad) is None, bad
    assert event_time_ns({"timestamp": fmt(42)}) == 42 and event_time_ns({}) is None


def test_new_events_equal_new_event_one_by_one() -> None:
    times = [1_000, 999_999_999, 1_000_000_000, 5, 3_000_000_123]  # crosses seconds, back and forth
    one, batch = (EventContext("p", "tp_btf", cluster="c", node="n", clock_offset_ns=7, run_id="r")
                  for _ in range(2))
    expected = [one.new_event("kernel.x", t, severity="error", outcome="failure") for t in times]
    assert batch.new_events("kernel.x", times, severity="error", outcome="failure") == expected
    assert batch.new_event("kernel.x", 1)["id"] == one.new_event("kernel.x", 1)["id"] == "r-p-6"
    assert "outcome" not in batch.new_events("kernel.x", [1])[0]


def test_address_caches_are_bounded() -> None:
    address_texts.cache_clear()
    format_ip.cache_clear()
    for i in range(ADDRESS_CACHE_SIZE + 100):
        raw = i.to_bytes(4, "big") + bytes(12)
        text = f"{i >> 24}.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
        assert address_texts(2, raw) == (text, text) and format_ip(2, raw) == text
    for cached in (address_texts, format_ip):
        info = cached.cache_info()
        assert info.maxsize == ADDRESS_CACHE_SIZE and info.currsize == ADDRESS_CACHE_SIZE
    assert address_texts(10, b"\0" * 15 + b"\1") == ("::1", "[::1]")
