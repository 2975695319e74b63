"""tcp_connect records of connect() calls that failed before SYN_SENT (JALKI_TCP_SYNC_FAILURE), decoded
through the fake ring buffer (no root): same event type and schema as the state path's failures."""

from __future__ import annotations

import re
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
from jalki_tcp import layouts
from jalki_tcp.probes import TcpConnectProbe

from jalki_core.events import OWNER_KNOWN, Event
from jalki_core.kb import default_kb, evaluate
from jalki_core.testing import FakeRingBuffer, decode_all, make_event_context

BPF_DIR = Path(__file__).resolve().parents[3] / "plugins" / "jalki_tcp" / "jalki_tcp" / "bpf"
OWNER = {"pid": 4242, "flags": OWNER_KNOWN | layouts.SYNC_FAILURE, "comm": b"api-server",
         "cgroup_id": 99}
UNSPECIFIED_V4 = b"\0" * 16
NETNS = 4026532177


def v4(dst: str) -> bytes:
    return socket.inet_pton(socket.AF_INET, dst) + b"\0" * 12


def sync_failures(*records: dict[str, object]) -> list[Event]:
    probe = TcpConnectProbe()
    ring = FakeRingBuffer(probe.layout)
    for record in records:
        ring.push_values(**{"ts_ns": 1_000_000_123, "latency_ns": 42_000, "netns": NETNS, **OWNER, **record})
    return decode_all(probe, ring, make_event_context("tcp_connect", "tp_btf"))


def test_unreachable_route_is_a_failure_from_an_unspecified_source(
    jalki_validate_event: Callable[[Event], None],
) -> None:
    [event] = sync_failures({"error": 113, "saddr": UNSPECIFIED_V4, "daddr": v4("10.9.9.1"), "sport": 0,
                             "dport": 5432, "family": socket.AF_INET})
    jalki_validate_event(event)
    assert (event["type"], event["outcome"], event["severity"]) == ("kernel.tcp.connect", "failure", "error")
    assert event["error"] == {"code": "EHOSTUNREACH", "message": "No route to host"}
    assert event["network_data"] == {
        "src_ip": "0.0.0.0", "dst_ip": "10.9.9.1", "src_port": 0, "dst_port": 5432,
        "protocol": "tcp", "family": "ipv4", "netns": NETNS,
    }
    assert event["correlation_keys"] == ["0.0.0.0:0->10.9.9.1:5432"]
    assert event["process_data"] == {"pid": 4242, "command": "api-server", "cgroup_id": 99}
    assert event["data"] == {"latency_ns": 42_000}  # the same data as the state path's events
    assert event["source"] == "jalki/tcp_connect" and event["attach"] == "tp_btf"


def test_ipv6_no_route_and_a_bound_source_port(jalki_validate_event: Callable[[Event], None]) -> None:
    [no_route, prohibited] = sync_failures(
        {"error": 101, "saddr": b"\0" * 16, "daddr": socket.inet_pton(socket.AF_INET6, "2001:db8:5::1"),
         "sport": 0, "dport": 443, "family": socket.AF_INET6},
        {"error": 13, "saddr": UNSPECIFIED_V4, "daddr": v4("10.8.8.1"), "sport": 41000, "dport": 443,
         "family": socket.AF_INET},
    )
    for event in (no_route, prohibited):
        jalki_validate_event(event)
    assert no_route["error"]["code"] == "ENETUNREACH"
    assert no_route["correlation_keys"] == ["[::]:0->[2001:db8:5::1]:443"]
    assert no_route["network_data"]["family"] == "ipv6" and no_route["network_data"]["src_ip"] == "::"
    assert prohibited["error"] == {"code": "EACCES", "message": "Permission denied"}
    assert prohibited["network_data"]["src_port"] == 41000  # bound before connect()


@pytest.mark.parametrize(("errno_value", "rule_id"), [(113, "connect_host_unreachable"),
                                                      (101, "connect_network_unreachable")])
def test_the_kb_reads_them_as_routing_problems(errno_value: int, rule_id: str) -> None:
    events = sync_failures({"error": errno_value, "daddr": v4("10.9.9.1"), "dport": 5432, "family": socket.AF_INET})
    [finding] = evaluate(events, default_kb())
    assert finding.interpretation_id == rule_id and finding.severity == "error"
    assert "A routing or interface problem" in finding.conclusion


def test_they_count_as_unreachable_in_connect_failures() -> None:
    probe = TcpConnectProbe()
    ring = FakeRingBuffer(probe.layout)
    for index in range(5):
        ring.push_values(ts_ns=index * 100_000_000, latency_ns=30_000, error=113, daddr=v4("10.9.9.1"), dport=5432,
                         family=socket.AF_INET, netns=NETNS, **OWNER)
    ctx = make_event_context("tcp_connect", "tp_btf")
    events = decode_all(probe, ring, ctx)
    [window] = probe.derive(events, ctx) + probe.final_events({}, ctx)
    assert window["type"] == "kernel.network.connect_failures"
    assert (window["data"]["count"], window["data"]["unreachable"]) == (5, 5)


def test_flag_and_programs_match_the_bpf_source() -> None:
    header = (BPF_DIR / "tcp_events.h").read_text()
    [value] = re.findall(r"#define JALKI_TCP_SYNC_FAILURE \(1u << (\d+)\)", header)
    assert int(value) == layouts.SYNC_FAILURE.bit_length() - 1
    assert layouts.SYNC_FAILURE not in (OWNER_KNOWN, layouts.BIRTH_UNSEEN, layouts.ABANDONED)
    source = (BPF_DIR / "tcp_connect.bpf.c").read_text()
    syscall_programs = {"tp_connect_enter": "sys_enter_connect", "tp_connect_exit": "sys_exit_connect"}
    for program, tracepoint in syscall_programs.items():
        assert f'SEC("tracepoint/syscalls/{tracepoint}")\nint {program}(' in source
    rungs = {rung.name: rung for rung in TcpConnectProbe.ladder}
    assert set(syscall_programs) <= set(rungs["fexit"].programs)
    for name in ("tp_btf", "tracepoint"):
        assert rungs[name].optional == tuple(syscall_programs)
        assert not set(syscall_programs) & set(rungs[name].programs)
