"""``--port`` finds tcp_rtt aggregates by the port of their key, on both sides, in the kernel and in user space.

A passive tcp_rtt key is (client address, local service port): its event names
only the remote side in ``network_data`` and the service port in
``data.local_port``. Here clients connect to :data:`FRONT`, which nft in the
namespace redirects to a server listening on :data:`SERVICE`; the clients'
active key then has port FRONT and the server's passive key local port
SERVICE, so ``--port SERVICE`` can match only passive aggregates and
``--port FRONT`` only active ones.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from daemon_helpers import running_daemon, wait_for
from netns_helpers import NetNs, tracing
from tcp_helpers import Pick, check_rung, validate

from jalki_core.loader import ProbeOptions

pytestmark = pytest.mark.kernel

SERVICE = 15461
"""The server's listening port (the passive key's local port)."""
FRONT = 15462
"""The port clients connect to (their active key's port), redirected to :data:`SERVICE`."""
CONNECTIONS = 5
QUESTION = "Did the round trip time to a destination get worse?"
"""Selects the tcp_rtt probe (its rtt_degradation KB entry answers it)."""


def _front_redirected_to_service(netns: NetNs) -> None:
    """Clients' connects to FRONT reach SERVICE (nat on output: loopback traffic is locally generated)."""
    netns.nft(
        "table ip jalki_test {\n"
        "  chain out { type nat hook output priority -100; policy accept;\n"
        f"    tcp dport {FRONT} redirect to :{SERVICE}\n"
        "  }\n"
        "}\n"
    )
    netns.server("--port", str(SERVICE), "--reply", "100")


def _connect_through_front(netns: NetNs) -> None:
    report = netns.traffic("client", "--port", str(FRONT), "--send", "100")
    assert report["received"] == 100  # the redirect really reached the server


@pytest.mark.parametrize(("port", "direction"), [(SERVICE, "passive"), (FRONT, "active")])
def test_kernel_port_filter_keeps_the_aggregates_keyed_by_that_port(netns: NetNs, pick: Pick, port: int,
                                                                    direction: str) -> None:
    _front_redirected_to_service(netns)
    with tracing(pick("tcp_rtt"), ProbeOptions(filter_port=port)) as trace:
        for _ in range(CONNECTIONS):
            _connect_through_front(netns)
    events = trace.events("kernel.tcp.rtt", netns=netns.inode)
    for event in events:
        validate(event)
    check_rung(pick, events)
    assert {event["data"]["direction"] for event in events} == {direction}
    if direction == "passive":
        assert {event["data"]["local_port"] for event in events} == {SERVICE}
        assert all("dst_port" not in event["network_data"] for event in events)
    else:
        assert {event["network_data"]["dst_port"] for event in events} == {FRONT}
    # every connection's server receives the request, its client the server's ACK or reply
    assert sum(event["data"]["samples"] for event in events) >= CONNECTIONS


def test_ask_through_the_daemon_matches_passive_aggregates_by_their_local_port(netns: NetNs,
                                                                              tmp_path: Path) -> None:
    """The daemon filters a shared probe's events in user space: by data.local_port too, as the kernel does."""
    _front_redirected_to_service(netns)
    with running_daemon(tmp_path) as daemon, daemon.client() as client:
        ask = daemon.popen("ask", "--json", "--seconds", "5", "--port", str(SERVICE), QUESTION)
        wait_for(lambda: "tcp_rtt" in client.status()["probes"], timeout=15, what="ask to deploy tcp_rtt")
        # Aggregates of windows that began before the question are not its evidence: keep connecting
        # over several windows, so that whole windows inside the question are emitted (by the sweep).
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            _connect_through_front(netns)
            time.sleep(0.1)
        stdout, stderr = ask.communicate(timeout=60)
    assert ask.returncode == 0, stderr
    answer = json.loads(stdout)
    assert answer["via"] == "daemon"
    [rtt] = [use for use in answer["probes"] if use["probe"] == "tcp_rtt"]
    # Only the server's passive aggregates carry SERVICE (the clients' active key has FRONT): before
    # data.local_port was matched, the daemon kept none of them.
    assert rtt["events"] >= 1, answer["probes"]
    assert answer["events"]["by_type"].get("kernel.tcp.rtt", 0) >= 1, answer["events"]
