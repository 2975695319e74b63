"""jalki-tcp on the real kernel: connect()s that fail before the socket ever reaches SYN_SENT.

tcp_v4_connect/tcp_v6_connect look the route up before the socket enters SYN_SENT,
so an unreachable or prohibit route, or no route at all, fails connect() with no
state change. tcp_connect reports those from the syscall tracepoints: one event
per call, the errno the caller got, the caller's destination, pid and command.
Attempts that reached SYN_SENT stay with the state path, reported once.
The ground truth is the errno traffic.py's plain connect() meets.
"""

from __future__ import annotations

import errno
import os
import socket
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from netns_helpers import NetNs, tracing
from tcp_helpers import CLOSED_PORT, COMMAND, Pick, check_rung, only, tcp_probes, validate
from test_ask_scenarios import asking, evidence_of, top_finding

from jalki_core.loader import ProbeOptions

pytestmark = pytest.mark.kernel

PORT = 5432

DESTINATIONS = {
    # destination: (route that makes it fail, or None for no route at all; errno connect() returns)
    "10.9.9.1": (("route", "add", "unreachable", "10.9.9.0/24"), "EHOSTUNREACH"),
    "10.8.8.1": (("route", "add", "prohibit", "10.8.8.0/24"), "EACCES"),
    "192.0.2.1": (None, "ENETUNREACH"),
    "2001:db8:9::1": (("-6", "route", "add", "unreachable", "2001:db8:9::/48"), "EHOSTUNREACH"),
    "2001:db8:5::1": (None, "ENETUNREACH"),
}
"""The namespace has only loopback: every destination but the routed ones has no route."""


def add_routes(netns: NetNs) -> None:
    for route, _ in DESTINATIONS.values():
        if route is not None:
            netns.run("ip", *route)


def connects(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return only(events, type="kernel.tcp.connect")


def test_connects_failing_before_syn_sent_are_one_event_each(netns: NetNs, pick: Pick) -> None:
    add_routes(netns)
    with tracing(pick("tcp_connect")) as trace:
        reports = {host: netns.traffic("connect-modes", "--host", host, "--port", str(PORT),
                                       "--modes", "blocking,nonblocking,bound", "--count", "2")
                   for host in DESTINATIONS}
    events = connects(trace.events(netns=netns.inode))
    for event in events:
        validate(event)
    check_rung(pick, events)
    for host, (_, errno_name) in DESTINATIONS.items():
        report = reports[host]
        assert [r["error"] for r in report["results"]] == [errno_name] * 6, report  # what the kernel returns
        assert [r["first"] for r in report["results"]] == [errno_name] * 6, report  # ... at once, non-blocking too
        mine = only(events, network_data__dst_ip=host)
        assert len(mine) == 6, mine  # one per connect() call, never two
        ipv6 = ":" in host
        for event in mine:
            assert event["outcome"] == "failure" and event["severity"] == "error"
            assert event["error"]["code"] == errno_name
            assert event["network_data"]["dst_port"] == PORT
            assert event["network_data"]["family"] == ("ipv6" if ipv6 else "ipv4")
            assert event["network_data"]["src_ip"] == ("::" if ipv6 else "0.0.0.0")  # no source chosen yet
            assert event["process_data"]["pid"] == report["pid"]
            assert event["process_data"]["command"] == COMMAND
            assert event["process_data"]["cgroup_id"] > 0
            assert 0 < event["data"]["latency_ns"] < 1_000_000_000  # the duration of the call
        # unbound sockets have no local port; bound ones report theirs
        bound_ports = sorted(r["sport"] for r in report["results"] if r["mode"] == "bound")
        assert all(bound_ports)
        assert sorted(e["network_data"]["src_port"] for e in mine) == [0, 0, 0, 0, *bound_ports]
        local = "[::]:{}" if ipv6 else "0.0.0.0:{}"
        remote = f"[{host}]:{PORT}" if ipv6 else f"{host}:{PORT}"
        assert {e["correlation_keys"][0] for e in mine} == {f"{local.format(p)}->{remote}" for p in [0, *bound_ports]}
    assert len(events) == 6 * len(DESTINATIONS), events
    assert trace.summary is not None
    [stats] = trace.summary.probes
    assert stats.dropped == 0
    assert not stats.failed_rungs or all(f.rung == "fexit" for f in stats.failed_rungs), stats.failed_rungs


def test_udp_connects_failing_the_same_way_are_not_reported(netns: NetNs, pick: Pick) -> None:
    add_routes(netns)
    with tracing(pick("tcp_connect")) as trace:
        reports = {host: netns.traffic("connect-modes", "--host", host, "--port", str(PORT), "--modes", "udp,udp")
                   for host in DESTINATIONS}
        marker = netns.traffic("connect-modes", "--host", "10.9.9.1", "--port", str(PORT))
    for host, (_, errno_name) in DESTINATIONS.items():
        assert [r["error"] for r in reports[host]["results"]] == [errno_name] * 2
    # the session saw the TCP connect made after the UDP ones, and nothing else
    [event] = connects(trace.events(netns=netns.inode))
    assert event["process_data"]["pid"] == marker["pid"] and event["error"]["code"] == "EHOSTUNREACH"
    check_rung(pick, [event])


def test_refused_connects_are_reported_once_by_the_state_path(netns: NetNs, pick: Pick) -> None:
    """Blocking and non-blocking refused connects reach SYN_SENT: one ECONNREFUSED each, with the
    local port the kernel bound. The second connect() of the non-blocking socket returns the error
    again, after the fact: not a new attempt, not a second event."""
    with tracing(pick("tcp_connect")) as trace:
        report = netns.traffic("connect-modes", "--port", str(CLOSED_PORT),
                               "--modes", "blocking,nonblocking,bound", "--count", "2")
    results = report["results"]
    assert [r["error"] for r in results] == ["ECONNREFUSED"] * 6
    assert [r["first"] for r in results if r["mode"] == "nonblocking"] == ["EINPROGRESS"] * 2
    events = connects(trace.events(netns=netns.inode))
    for event in events:
        validate(event)
        assert event["error"]["code"] == "ECONNREFUSED"
        assert event["process_data"]["pid"] == report["pid"]
    assert sorted(e["network_data"]["src_port"] for e in events) == sorted(r["sport"] for r in results)
    assert all(e["network_data"]["src_port"] for e in events)
    check_rung(pick, events)


def test_no_free_local_port_is_reported_once(netns: NetNs, pick: Pick) -> None:
    """EADDRNOTAVAIL from inet_hash_connect() comes after SYN_SENT: the state path reports it, once."""
    netns.sysctl("net.ipv4.ip_local_port_range", "40000 40001")
    server = netns.server("--hold", "30")
    holder, hello = netns.spawn("request-and-wait", "--port", str(server["port"]), "--linger", "10")
    with tracing(pick("tcp_connect")) as trace:
        report = netns.traffic("connect-modes", "--port", str(server["port"]), "--modes", "blocking,nonblocking")
    holder.kill()
    assert [r["error"] for r in report["results"]] == ["EADDRNOTAVAIL"] * 2, (report, hello)
    events = only(connects(trace.events(netns=netns.inode)), process_data__pid=report["pid"])
    assert [e["error"]["code"] for e in events] == ["EADDRNOTAVAIL"] * 2, events
    for event in events:
        validate(event)
        assert event["network_data"]["dst_port"] == server["port"]
    check_rung(pick, events)


def test_successful_and_in_progress_connects_have_no_failure(netns: NetNs, pick: Pick) -> None:
    server = netns.server()
    with tracing(pick("tcp_connect")) as trace:
        report = netns.traffic("connect-modes", "--port", str(server["port"]),
                               "--modes", "blocking,nonblocking,bound", "--count", "2")
    results = report["results"]
    assert [r["error"] for r in results] == [None] * 6
    assert [r["first"] for r in results if r["mode"] == "nonblocking"] == ["EINPROGRESS"] * 2
    events = only(connects(trace.events(netns=netns.inode)), process_data__pid=report["pid"])
    assert Counter(e["outcome"] for e in events) == {"success": 6}, events
    assert sorted(e["network_data"]["src_port"] for e in events) == sorted(r["sport"] for r in results)
    check_rung(pick, events)


def test_port_and_pid_filters_sampling_and_self(netns: NetNs, tmp_path: Path) -> None:
    add_routes(netns)
    go_file = tmp_path / "go"
    other, waiting = netns.spawn("connect-modes", "--host", "10.9.9.1", "--port", str(PORT), "--go-file", str(go_file))
    with tracing(tcp_probes("tcp_connect"), ProbeOptions(filter_port=PORT)) as trace:
        netns.traffic("connect-modes", "--host", "10.9.9.1", "--port", str(PORT + 1))
        kept = netns.traffic("connect-modes", "--host", "10.9.9.1", "--port", str(PORT))
    assert [e["process_data"]["pid"] for e in connects(trace.events(netns=netns.inode))] == [kept["pid"]]

    with tracing(tcp_probes("tcp_connect"), ProbeOptions(filter_pid=waiting["pid"])) as trace:
        netns.traffic("connect-modes", "--host", "10.9.9.1", "--port", str(PORT))
        go_file.touch()
        other.wait(timeout=30)
    [event] = connects(trace.events(netns=netns.inode))
    assert event["process_data"]["pid"] == waiting["pid"] and event["error"]["code"] == "EHOSTUNREACH"

    attempts = 300
    with tracing(tcp_probes("tcp_connect"), ProbeOptions(sample_rate=0.5, filter_port=PORT)) as trace:
        report = netns.traffic("connect-modes", "--host", "10.9.9.1", "--port", str(PORT),
                               "--count", str(attempts))
    assert all(r["error"] == "EHOSTUNREACH" for r in report["results"])
    kept_events = len(connects(trace.events(netns=netns.inode)))
    assert trace.summary is not None
    [stats] = trace.summary.probes
    assert kept_events + stats.kernel_drops["sampled"] == attempts
    assert 80 <= kept_events <= 220, (kept_events, stats.kernel_drops)

    # jalki's own connects are never reported (the session runs in this process). A TCP connect to
    # the limited broadcast address fails at once (ENETUNREACH) in any namespace, sending nothing.
    port = PORT + 2
    with tracing(tcp_probes("tcp_connect"), ProbeOptions(filter_port=port)) as trace:
        with socket.socket() as own:
            assert own.connect_ex(("255.255.255.255", port)) == errno.ENETUNREACH
        other_report = netns.traffic("connect-modes", "--host", "255.255.255.255", "--port", str(port))
    assert other_report["results"][0]["error"] == "ENETUNREACH"
    [event] = [e for e in trace.events("kernel.tcp.connect") if e["network_data"]["dst_ip"] == "255.255.255.255"]
    assert event["process_data"]["pid"] == other_report["pid"] != os.getpid()


def test_ask_names_the_unreachable_route_with_destination_and_process(netns: NetNs) -> None:
    add_routes(netns)
    with asking("why are connections to my database failing", seconds=3) as running:
        report = netns.traffic("connect-modes", "--host", "10.9.9.1", "--port", str(PORT), "--count", "6")
        answer = running.answer()
    assert [r["error"] for r in report["results"]] == ["EHOSTUNREACH"] * 6
    top = top_finding(answer)
    assert (top["interpretation"], top["severity"], top["errno"]) == ("connect_host_unreachable", "error",
                                                                      "EHOSTUNREACH")
    destinations, pids = evidence_of(top)
    assert f"10.9.9.1:{PORT}" in destinations
    assert report["pid"] in pids
    assert answer["problem_found"] is True
