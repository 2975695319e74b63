"""Request validation of the daemon's protocol (``jalki_core/daemon/protocol.py``) without a daemon.

Every field check either returns a value inside the field's documented range or
raises ``ProtocolError("bad_request")``: never another exception (which the
server would answer ``internal``), never a boolean taken for an integer, never
an integer the kernel or SQLite cannot hold. Hypothesis throws booleans, huge
and negative integers, floats and strings at every field.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jalki_core.daemon import protocol
from jalki_core.daemon.protocol import (
    MAX_EVENTS_PER_REPLY,
    MAX_ID_CHARS,
    MAX_SINCE_NS,
    PID_MAX,
    ProtocolError,
    parse_deploy,
    parse_filter,
    parse_frame,
    parse_limit,
    parse_since,
    parse_subscription,
)

INT_FIELDS = ("pid", "port", "src_port", "dst_port", "limit", "subscription", "ttl", "sample", "since")

hostile_numbers = st.one_of(
    st.booleans(),
    st.integers(-(2**64), 2**64 - 1),
    st.sampled_from([0, -1, 2**31, 2**32, 2**32 + 1, 2**63 - 1, 2**63, 2**64 - 1, PID_MAX, PID_MAX + 1, 65535, 65536]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([1e308, -1e308, 1.0, 0.5, 5e-324]),
)
json_values = hostile_numbers | st.none() | st.text(max_size=40) | st.sampled_from(
    ["0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "2262-04-11T23:47:17Z", "1969-12-31T23:59:59Z",
     "2030-01-01T00:00:00Z"])


def bad_request(call: Callable[[], Any]) -> str:
    with pytest.raises(ProtocolError) as caught:
        call()
    assert caught.value.code == "bad_request", caught.value.code
    return caught.value.message


def checked(call: Callable[[], Any]) -> Any:
    """The parser's result, or ``None`` when it refused with ``bad_request`` (any other exception fails)."""
    try:
        return call()
    except ProtocolError as exc:
        assert exc.code == "bad_request", exc.code
        return None


@settings(max_examples=500, deadline=None)
@given(fields=st.dictionaries(st.sampled_from(INT_FIELDS), json_values, max_size=6))
def test_every_parser_returns_in_range_values_or_refuses_with_bad_request(fields: dict[str, Any]) -> None:
    fields = {"probe": "tcp_connect", **fields}
    spec = checked(lambda: parse_deploy(fields))
    if spec is not None:
        assert spec.pid is None or (type(spec.pid) is int and 0 < spec.pid <= PID_MAX)
        assert spec.port is None or (type(spec.port) is int and 0 < spec.port < 65536)
        assert type(spec.sample) is not bool and 0 < spec.sample <= 1
        assert spec.ttl_s is None or (type(spec.ttl_s) is not bool and 0 < spec.ttl_s <= 7 * 86400)
    where = checked(lambda: parse_filter(fields))
    if where is not None:
        for name in ("pid", "src_port", "dst_port"):
            value = getattr(where, name)
            assert value is None or (type(value) is int and value > 0), (name, value)
    limit = checked(lambda: parse_limit(fields))
    if limit is not None:
        assert type(limit) is int and 0 < limit <= MAX_EVENTS_PER_REPLY
    since = checked(lambda: parse_since(fields))
    if since is not None:
        assert type(since) is int and 0 <= since <= MAX_SINCE_NS
    number = checked(lambda: parse_subscription(fields))
    if number is not None:
        assert type(number) is int and number > 0


@pytest.mark.parametrize("parse,field", [(parse_deploy, "pid"), (parse_deploy, "port"), (parse_filter, "pid"),
                                         (parse_filter, "src_port"), (parse_filter, "dst_port"),
                                         (parse_limit, "limit"), (parse_subscription, "subscription"),
                                         (parse_deploy, "ttl"), (parse_deploy, "sample"), (parse_since, "since")])
@pytest.mark.parametrize("value", [True, False])
def test_a_boolean_is_never_taken_for_a_number(parse: Callable[[Mapping[str, Any]], Any], field: str,
                                               value: bool) -> None:
    message = bad_request(lambda: parse({"probe": "tcp_connect", field: value}))
    assert repr(field) in message


def test_subscription_true_is_not_subscription_1() -> None:
    assert parse_subscription({"subscription": 1}) == 1
    bad_request(lambda: parse_subscription({"subscription": True}))
    bad_request(lambda: parse_subscription({"subscription": 1.0}))
    bad_request(lambda: parse_subscription({"subscription": "1"}))
    assert "required" in bad_request(lambda: parse_subscription({}))


@pytest.mark.parametrize("pid", [2**32, 2**32 + 1, 2**63, 2**64 - 1, PID_MAX + 1, 0, -1])
def test_a_pid_the_kernel_cannot_hand_out_is_refused(pid: int) -> None:
    assert str(PID_MAX) in bad_request(lambda: parse_deploy({"probe": "tcp_connect", "pid": pid}))
    bad_request(lambda: parse_filter({"pid": pid}))
    assert parse_deploy({"probe": "tcp_connect", "pid": PID_MAX}).pid == PID_MAX


@pytest.mark.parametrize("since", [1e308, 2**64, 2**63, 10**30, -1, -1e308, "0001-01-01T00:00:00Z",
                                   "9999-12-31T23:59:59Z", "1969-12-31T23:59:59Z"])
def test_a_since_out_of_range_is_bad_request_not_an_overflow(since: Any) -> None:
    bad_request(lambda: parse_since({"since": since}))


def test_since_in_range() -> None:
    assert parse_since({"since": "1970-01-01T00:00:00Z"}) == 0
    assert parse_since({"since": "2262-04-11T23:47:16Z"}) == 9_223_372_036 * 1_000_000_000
    assert parse_since({"since": 0}) is not None


@pytest.mark.parametrize("limit", [2**63, 2**64 - 1, 0, -5])
def test_a_limit_out_of_range_is_refused(limit: int) -> None:
    bad_request(lambda: parse_limit({"limit": limit}))


def test_a_huge_limit_in_range_is_capped() -> None:
    assert parse_limit({"limit": 2**63 - 1}) == MAX_EVENTS_PER_REPLY


def test_a_long_request_id_is_refused_so_no_reply_can_outgrow_a_frame() -> None:
    fits = "i" * MAX_ID_CHARS
    assert parse_frame(orjson.dumps({"v": 1, "id": fits, "type": "ping"})).id == fits
    with pytest.raises(ProtocolError) as caught:
        parse_frame(orjson.dumps({"v": 1, "id": "i" * (MAX_ID_CHARS + 1), "type": "ping"}))
    assert caught.value.code == "bad_request" and caught.value.request_id is None
    with pytest.raises(ProtocolError) as caught:
        parse_frame(orjson.dumps({"v": 1, "id": "i" * (1 << 20), "type": "ping"}))
    assert caught.value.code == "bad_request"
    # the reply to the longest id allowed is far below the frame limit
    reply = protocol.encode(protocol.reply_error(fits, ProtocolError("bad_request", "x" * 200)))
    assert len(reply) < protocol.MAX_FRAME_BYTES // 100
