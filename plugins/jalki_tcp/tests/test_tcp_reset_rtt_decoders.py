"""tcp_reset and tcp_rtt decoders: raw records as the kernel writes them → exact events (no root)."""

from __future__ import annotations

import socket
from typing import Any

from jalki_tcp import layouts
from jalki_tcp.probes import TcpResetProbe, TcpRttProbe

from jalki_core.events import OWNER_KNOWN
from jalki_core.testing import (
    FIXED_CLOCK_OFFSET_NS,
    FakeMap,
    FakeRingBuffer,
    decode_all,
    event_validator,
    make_event_context,
)

validate = event_validator()
OWNER = {"pid": 4242, "flags": OWNER_KNOWN, "comm": b"api-server", "cgroup_id": 99}
LOCAL = socket.inet_pton(socket.AF_INET, "10.42.0.5") + b"\0" * 12
PEER = socket.inet_pton(socket.AF_INET, "10.42.2.8") + b"\0" * 12
SECOND = 1_000_000_000


def _decode(probe: Any, **values: Any) -> dict[str, Any]:
    ring = FakeRingBuffer(probe.layout)
    ring.push_values(**values)
    [event] = decode_all(probe, ring, make_event_context(probe.name, "tp_btf"))
    validate(event)
    return event


def test_layout_sizes_match_the_c_header() -> None:
    assert (layouts.RESET.size, layouts.RTT.size, layouts.RTT_KEY.size, layouts.RTT_AGG.size) == (96, 184, 24, 112)


def test_reset_received_on_an_established_connection() -> None:
    event = _decode(TcpResetProbe(), ts_ns=SECOND, **OWNER, saddr=LOCAL, daddr=PEER, sport=40000, dport=5432,
                    family=socket.AF_INET, state=1, netns=4026531840, direction=layouts.RESET_RECEIVED)
    assert event == {
        "id": "00000000-tcp_reset-1", "timestamp": "2023-11-14T22:13:21.000000000Z", "source": "jalki/tcp_reset",
        "type": "kernel.tcp.reset", "severity": "info", "cluster": "test", "node": "test-node", "attach": "tp_btf",
        "correlation_keys": ["10.42.0.5:40000->10.42.2.8:5432"],
        "network_data": {"src_ip": "10.42.0.5", "dst_ip": "10.42.2.8", "src_port": 40000, "dst_port": 5432,
                         "protocol": "tcp", "family": "ipv4", "netns": 4026531840},
        "process_data": {"pid": 4242, "command": "api-server", "cgroup_id": 99},
        "data": {"direction": "received", "tcp_state": "ESTABLISHED"},
    }


def test_reset_sent_with_no_socket_has_no_state_and_no_process() -> None:
    event = _decode(TcpResetProbe(), ts_ns=SECOND, saddr=LOCAL, daddr=PEER, sport=9, dport=51000,
                    family=socket.AF_INET, state=0, netns=7, direction=layouts.RESET_SENT)
    assert event["data"] == {"direction": "sent", "tcp_state": None}
    assert event["process_data"] == {"pid": None, "command": None, "cgroup_id": None}
    assert event["network_data"]["src_port"] == 9 and event["network_data"]["netns"] == 7


def test_reset_ipv6_and_time_wait_state() -> None:
    local6 = socket.inet_pton(socket.AF_INET6, "fd00::5")
    event = _decode(TcpResetProbe(), ts_ns=SECOND, saddr=local6, daddr=socket.inet_pton(socket.AF_INET6, "fd00::8"),
                    sport=443, dport=50000, family=socket.AF_INET6, state=6, netns=1, direction=layouts.RESET_SENT)
    assert event["data"]["tcp_state"] == "TIME_WAIT"
    assert event["correlation_keys"] == ["[fd00::5]:443->[fd00::8]:50000"]
    assert event["network_data"]["family"] == "ipv6"


def _rtt_values(**overrides: Any) -> dict[str, Any]:
    values = {"ts_ns": 5 * SECOND, "raddr": PEER, "port": 5432, "family": socket.AF_INET,
              "direction": layouts.RTT_ACTIVE, "window": 3, "first_ns": 3 * SECOND + 100,
              "last_ns": 3 * SECOND + 900_000_000, "sum_us": 30_000 + 50_000 + 70_000, "samples": 3,
              "min_us": 30_000, "max_us": 70_000, "peer_zero_wnd": 1, "local_zero_wnd": 0,
              "owner_tgid": 4242, "owner0": 4242, "owner_comm": b"psql", "owner_cgroup_id": 99,
              "interval_ns": SECOND, "netns": 4026531840}
    values.update(overrides)
    return values


def test_rtt_active_aggregate_names_the_remote_service_and_its_one_process() -> None:
    event = _decode(TcpRttProbe(), **_rtt_values())
    assert event == {
        "id": "00000000-tcp_rtt-1", "timestamp": "2023-11-14T22:13:23.900000000Z", "source": "jalki/tcp_rtt",
        "type": "kernel.tcp.rtt", "severity": "info", "cluster": "test", "node": "test-node", "attach": "tp_btf",
        "network_data": {"dst_ip": "10.42.2.8", "dst_port": 5432, "protocol": "tcp", "family": "ipv4",
                         "netns": 4026531840},
        "process_data": {"pid": 4242, "command": "psql", "cgroup_id": 99},
        "data": {"direction": "active", "srtt_us_avg": 50_000, "srtt_us_min": 30_000, "srtt_us_max": 70_000,
                 "samples": 3, "processes": 1, "unattributed_samples": 0,
                 "peer_zero_window_samples": 1, "local_zero_window_samples": 0, "interval_ms": 1000,
                 "window_start": "2023-11-14T22:13:23.000000000Z", "window_end": "2023-11-14T22:13:24.000000000Z",
                 "first_sample": "2023-11-14T22:13:23.000000100Z"},
    }


def test_rtt_passive_aggregate_has_the_local_port_and_no_remote_port() -> None:
    event = _decode(TcpRttProbe(), **_rtt_values(direction=layouts.RTT_PASSIVE, port=8080))
    assert event["network_data"] == {"dst_ip": "10.42.2.8", "protocol": "tcp", "family": "ipv4",
                                     "netns": 4026531840}
    assert (event["data"]["direction"], event["data"]["local_port"]) == ("passive", 8080)
    assert "correlation_keys" not in event  # an aggregate names no connection


def test_rtt_unknown_direction_is_keyed_like_an_active_socket() -> None:
    event = _decode(TcpRttProbe(), **_rtt_values(direction=layouts.RTT_UNKNOWN))
    assert event["data"]["direction"] == "unknown" and "local_port" not in event["data"]
    assert event["network_data"]["dst_port"] == 5432


def test_rtt_process_is_named_only_when_one_process_owned_every_sample() -> None:
    foreign = _decode(TcpRttProbe(), **_rtt_values(foreign=1, owner1=77))
    assert "process_data" not in foreign
    assert (foreign["data"]["processes"], foreign["data"]["unattributed_samples"]) == (2, 0)
    unowned = _decode(TcpRttProbe(), **_rtt_values(unowned=1))
    assert "process_data" not in unowned
    assert (unowned["data"]["processes"], unowned["data"]["unattributed_samples"]) == (1, 1)
    nobody = _decode(TcpRttProbe(), **_rtt_values(owner_tgid=0, owner0=0, unowned=3))
    assert "process_data" not in nobody and nobody["data"]["processes"] == 0
    many = _decode(TcpRttProbe(), **_rtt_values(foreign=5, owner1=5, owner2=6, owner3=7, owners_overflow=1))
    assert many["data"]["processes"] == 4 and many["data"]["processes_at_least"] is True
    assert "processes_at_least" not in foreign["data"]


def test_rtt_average_rounds_and_ipv6() -> None:
    event = _decode(TcpRttProbe(), **_rtt_values(raddr=socket.inet_pton(socket.AF_INET6, "fd00::8"),
                                                   family=socket.AF_INET6, sum_us=10, samples=4))
    assert event["data"]["srtt_us_avg"] == 2  # 2.5 rounds to even
    assert event["network_data"]["dst_ip"] == "fd00::8" and event["network_data"]["family"] == "ipv6"
    assert "src_ip" not in event["network_data"]


def test_final_events_read_the_windows_left_in_the_map() -> None:
    probe = TcpRttProbe()
    key = layouts.RTT_KEY.pack(raddr=PEER, port=8080, family=socket.AF_INET, direction=layouts.RTT_PASSIVE,
                               netns=9)
    value = layouts.RTT_AGG.pack(window=7, first_ns=7 * SECOND, last_ns=7 * SECOND + 5, sum_us=900, samples=3,
                                 min_us=200, max_us=400, owner_tgid=31, owner0=31, owner_comm=b"nginx")
    empty_key = layouts.RTT_KEY.pack(raddr=PEER, port=1, family=socket.AF_INET, netns=9)
    ctx = make_event_context(probe.name, "tracepoint")
    events = probe.final_events({"rtt_agg": FakeMap({key: value, empty_key: layouts.RTT_AGG.pack()})}, ctx)
    [event] = events
    validate(event)
    assert event["timestamp"] == "2023-11-14T22:13:27.000000005Z"
    assert event["data"]["srtt_us_avg"] == 300 and event["data"]["samples"] == 3
    assert (event["data"]["direction"], event["data"]["local_port"]) == ("passive", 8080)
    assert event["data"]["window_start"] == "2023-11-14T22:13:27.000000000Z"
    assert event["network_data"]["netns"] == 9
    assert event["process_data"] == {"pid": 31, "command": "nginx", "cgroup_id": 0}
    assert probe.final_events({}, ctx) == []
    assert FIXED_CLOCK_OFFSET_NS == 1_700_000_000 * SECOND
