"""jalki-tcp decoders fed with raw records through the fake ring buffer (no root)."""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest
from jalki_tcp.probes import TcpCloseProbe, TcpConnectProbe, TcpRetransmitProbe

from jalki_core.events import Event
from jalki_core.testing import FakeRingBuffer, decode_all, event_validator, make_event_context

V4_SRC = socket.inet_pton(socket.AF_INET, "10.42.0.5") + b"\0" * 12
V4_DST = socket.inet_pton(socket.AF_INET, "10.42.2.8") + b"\0" * 12
V6_LOOP = socket.inet_pton(socket.AF_INET6, "::1")
OWNER = {"pid": 4242, "flags": 1, "comm": b"api-server", "cgroup_id": 99}


def tuple_v4(sport: int = 40000, dport: int = 5432) -> dict[str, object]:
    return {"saddr": V4_SRC, "daddr": V4_DST, "sport": sport, "dport": dport, "family": socket.AF_INET}


def test_refused_connect_is_a_failure_with_errno_name(jalki_validate_event: Callable[[Event], None]) -> None:
    probe = TcpConnectProbe()
    ring = FakeRingBuffer(probe.layout)
    ring.push_values(ts_ns=1_000_000_123, latency_ns=51_000, error=111, netns=4026531840, **OWNER, **tuple_v4())
    [event] = decode_all(probe, ring, make_event_context("tcp_connect", "tp_btf"))
    jalki_validate_event(event)
    assert event["type"] == "kernel.tcp.connect"
    assert event["outcome"] == "failure" and event["severity"] == "error"
    assert event["error"] == {"code": "ECONNREFUSED", "message": "Connection refused"}
    assert event["network_data"] == {
        "src_ip": "10.42.0.5", "dst_ip": "10.42.2.8", "src_port": 40000, "dst_port": 5432,
        "protocol": "tcp", "family": "ipv4", "netns": 4026531840,
    }
    assert event["process_data"] == {"pid": 4242, "command": "api-server", "cgroup_id": 99}
    assert event["correlation_keys"] == ["10.42.0.5:40000->10.42.2.8:5432"]
    assert event["data"] == {"latency_ns": 51_000}
    assert event["source"] == "jalki/tcp_connect" and event["attach"] == "tp_btf"
    assert event["timestamp"] == "2023-11-14T22:13:21.000000123Z"


def test_successful_and_timed_out_connects(jalki_validate_event: Callable[[Event], None]) -> None:
    probe = TcpConnectProbe()
    ring = FakeRingBuffer(probe.layout)
    ring.push_values(ts_ns=5, latency_ns=80_000, error=0, **OWNER, **tuple_v4())
    ring.push_values(ts_ns=6, latency_ns=3_000_000_000, error=110, **OWNER, **tuple_v4(40001))
    success, timeout = decode_all(probe, ring)
    for event in (success, timeout):
        jalki_validate_event(event)
    assert success["outcome"] == "success" and "error" not in success
    assert timeout["error"]["code"] == "ETIMEDOUT" and timeout["outcome"] == "failure"
    assert success["id"] != timeout["id"]


def test_ipv6_addresses_and_brackets_in_correlation_key(jalki_validate_event: Callable[[Event], None]) -> None:
    probe = TcpConnectProbe()
    ring = FakeRingBuffer(probe.layout)
    ring.push_values(ts_ns=1, error=111, saddr=V6_LOOP, daddr=V6_LOOP, sport=50000, dport=9,
                     family=socket.AF_INET6, **OWNER)
    [event] = decode_all(probe, ring)
    jalki_validate_event(event)
    assert event["network_data"]["src_ip"] == "::1" and event["network_data"]["family"] == "ipv6"
    assert event["correlation_keys"] == ["[::1]:50000->[::1]:9"]


def test_close_event_carries_bytes_duration_and_state_name(jalki_validate_event: Callable[[Event], None]) -> None:
    probe = TcpCloseProbe()
    ring = FakeRingBuffer(probe.layout)
    ring.push_values(ts_ns=9, duration_ns=2_500_000, bytes_sent=1000, bytes_received=5000, oldstate=9,
                     **OWNER, **tuple_v4())
    [event] = decode_all(probe, ring)
    jalki_validate_event(event)
    assert event["type"] == "kernel.tcp.close" and "outcome" not in event
    assert event["data"] == {"duration_ns": 2_500_000, "bytes_sent": 1000, "bytes_received": 5000,
                             "tcp_state": "LAST_ACK"}


def test_retransmit_state_names_use_kernel_numbering(jalki_validate_event: Callable[[Event], None]) -> None:
    probe = TcpRetransmitProbe()
    ring = FakeRingBuffer(probe.layout)
    for state in (1, 2, 7, 8):
        ring.push_values(ts_ns=1, state=state, **OWNER, **tuple_v4())
    events = decode_all(probe, ring)
    for event in events:
        jalki_validate_event(event)
    assert [e["data"]["tcp_state"] for e in events] == ["ESTABLISHED", "SYN_SENT", "CLOSE", "CLOSE_WAIT"]
    assert all(e["severity"] == "warning" for e in events)


def test_unknown_owner_is_null_never_a_guess(jalki_validate_event: Callable[[Event], None]) -> None:
    probe = TcpRetransmitProbe()
    ring = FakeRingBuffer(probe.layout)
    ring.push_values(ts_ns=1, state=1, pid=0, flags=0, comm=b"swapper/0", **tuple_v4())
    [event] = decode_all(probe, ring)
    jalki_validate_event(event)
    assert event["process_data"] == {"pid": None, "command": None, "cgroup_id": None}


def test_fake_ring_buffer_batches_and_counts_wrong_sizes() -> None:
    probe = TcpConnectProbe()
    ring = FakeRingBuffer(probe.layout, batch_records=3)
    for index in range(7):
        ring.push_values(ts_ns=index, **OWNER, **tuple_v4(40000 + index))
    ring.push(b"short")
    assert ring.size_mismatches == 1
    sizes = []
    while batch := ring.consume():
        sizes.append(len(batch) // probe.layout.size)
    assert sizes == [3, 3, 1]


def test_tcp_events_are_checked_by_the_plugins_own_schema(jalki_validate_event: Callable[[Event], None]) -> None:
    """The core envelope knows nothing of TCP; the plugin's fragment is what rejects a bad close event."""
    import jsonschema

    probe = TcpCloseProbe()
    ring = FakeRingBuffer(probe.layout)
    ring.push_values(ts_ns=9, duration_ns=1, bytes_sent=1, bytes_received=1, oldstate=1, **OWNER, **tuple_v4())
    [event] = decode_all(probe, ring)
    del event["data"]["tcp_state"]
    with pytest.raises(jsonschema.ValidationError, match="tcp_state"):
        jalki_validate_event(event)
    event_validator(probes=())(event)  # the envelope alone accepts it
