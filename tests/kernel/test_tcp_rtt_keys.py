"""tcp_rtt keys on the real kernel: active and passive keys, process attribution, no map fill under churn.

A server in its own process (it calls listen() itself) and a client make
thousands of short connections to one service port in a fresh namespace.
Each connection gives the server one sample per segment it receives in
ESTABLISHED (the request and the client's FIN) and the client one (the
server's ACK of the request), so the exact sample totals are known. The
client's one holds only because it half-closes after that ACK has arrived:
tcp:tcp_probe fires for segments received in ESTABLISHED, and under load a
loopback softirq may run after the client's shutdown(), the ACK then reaching
a FIN_WAIT1 socket (no sample). Without that wait the kernel really makes
fewer than 9,000 client samples, and the count looked like a loss.
"""

from __future__ import annotations

import time

import pytest
from netns_helpers import NetNs, Trace, tracing
from tcp_helpers import Pick, check_rung, only, validate

from jalki_core.events import Event

pytestmark = pytest.mark.kernel

CHURN = 9000
"""More connections than rtt_agg has entries (8,192): keyed by the clients' ephemeral ports, the
server side would fill the map (tracking_full); keyed by the service port, it is one key."""


def _samples(events: list[Event]) -> int:
    return sum(e["data"]["samples"] for e in events)


def _rtt(trace: Trace, netns: NetNs, **fields: object) -> list[Event]:
    return only(trace.events("kernel.tcp.rtt", netns=netns.inode), **fields)


def _wait_for_samples(trace: Trace, netns: NetNs, port: int, active: int, passive: int) -> None:
    """Make one connection to another port in later windows until the sweep has emitted every churn
    window through the ring (bounded wait; the assertion is on counts, not on time)."""
    other = netns.server("--reply", "10")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        netns.traffic("client", "--port", str(other["port"]), "--send", "10")
        got_active = _samples(_rtt(trace, netns, data__direction="active", network_data__dst_port=port))
        got_passive = _samples(_rtt(trace, netns, data__direction="passive", data__local_port=port))
        if (got_active, got_passive) == (active, passive):
            return
        time.sleep(0.5)


def test_churn_to_one_service_port_makes_two_keys_and_never_fills_the_map(netns: NetNs, pick: Pick) -> None:
    with tracing(pick("tcp_rtt")) as trace:
        report = netns.traffic("churn", "--count", str(CHURN), timeout=600)
        port, server_pid, client_pid = report["port"], report["server_pid"], report["pid"]
        # The churn keys get no sample after the churn: their last windows leave the map through
        # the kernel's sweep, while the session runs (before any read at stop).
        _wait_for_samples(trace, netns, port, active=CHURN, passive=2 * CHURN)
        running = _rtt(trace, netns)
    assert _samples(only(running, data__direction="passive", data__local_port=port)) == 2 * CHURN
    assert _samples(only(running, data__direction="active", network_data__dst_port=port)) == CHURN

    events = trace.events(netns=netns.inode)
    for event in events:
        validate(event)
    check_rung(pick, events)
    assert trace.summary is not None
    [stats] = trace.summary.probes
    assert stats.kernel_drops["tracking_full"] == 0, stats.kernel_drops
    assert stats.kernel_drops["ringbuf_full"] == 0, stats.kernel_drops

    passive = only(events, type="kernel.tcp.rtt", data__direction="passive", data__local_port=port)
    active = only(events, type="kernel.tcp.rtt", data__direction="active", network_data__dst_port=port)
    assert _samples(passive) == 2 * CHURN and _samples(active) == CHURN
    windows = [e["data"]["window_start"] for e in passive]
    assert len(set(windows)) == len(windows)  # one key: one aggregate per window, not one per client port
    for event in passive:
        # only the real remote side: the clients' address; the service port is data.local_port
        assert event["network_data"] == {"dst_ip": "127.0.0.1", "protocol": "tcp", "family": "ipv4",
                                         "netns": netns.inode}
        assert "correlation_keys" not in event
        # the server process owns every accepted socket (inherited from its listen() until it reads)
        assert event["process_data"]["pid"] == server_pid, event
        assert (event["data"]["processes"], event["data"]["unattributed_samples"]) == (1, 0)
    for event in active:
        assert event["network_data"]["dst_port"] == port and "src_ip" not in event["network_data"]
        assert "local_port" not in event["data"]
        assert event["process_data"]["pid"] == client_pid, event


def test_one_key_shared_by_two_processes_names_neither(netns: NetNs, pick: Pick) -> None:
    server = netns.server("--reply", "100")
    probes = pick("tcp_rtt")
    for probe in probes:
        probe.interval_ns = 60_000_000_000  # both connections in one window (unless a boundary falls between)
    with tracing(probes) as trace:
        first = netns.traffic("client", "--port", str(server["port"]), "--send", "100")
        second = netns.traffic("client", "--port", str(server["port"]), "--send", "100")
    assert first["pid"] != second["pid"]
    events = only(trace.events(netns=netns.inode), type="kernel.tcp.rtt", data__direction="active",
                  network_data__dst_port=server["port"])
    for event in events:
        validate(event)
    assert _samples(events) == 2
    clients = {first["pid"], second["pid"]}
    for event in events:
        assert event["data"]["interval_ms"] == 60_000
        if event["data"]["samples"] == 2:  # both connections in one window: two owners, no process_data
            assert "process_data" not in event and event["data"]["processes"] == 2
        else:
            assert event["process_data"]["pid"] in clients
