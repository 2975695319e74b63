"""Events lost in the hand-off from the drain thread to the subscribers: each subscription counts only the lost
events its filter (probe, Kubernetes names, …) would have let through, as the protocol promises (``dropped``
counts only matching events); the daemon's total counts them all."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pytest

from jalki_core.daemon import server as server_module
from jalki_core.daemon.protocol import parse_filter
from jalki_core.daemon.server import ApiServer, Subscription
from jalki_core.daemon.store import encode_events, with_seq

if TYPE_CHECKING:
    from jalki_core.daemon.agent import Agent


def event(n: int, pod: str | None) -> dict[str, Any]:
    result: dict[str, Any] = {"id": f"e{n}", "timestamp": "2026-01-01T00:00:00.000000000Z",
                              "source": "jalki/tcp_connect", "type": "kernel.tcp.connect",
                              "process_data": {"pid": n, "command": "curl"}}
    if pod is not None:
        result["k8s"] = {"k8s.pod.name": pod, "k8s.namespace.name": "payments"}
    return result


def test_a_subscription_counts_only_the_lost_events_its_filter_takes(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_module, "HANDOFF_EVENTS", 4)
    # the agent is never reached: publish and the fan-out only use the subscriptions
    server = ApiServer(cast("Agent", None), tmp_path / "jalki.sock", None, subscriber_queue=1000)
    try:
        everything = Subscription(1, parse_filter({}), 1000)
        checkout = Subscription(2, parse_filter({"pod": "checkout-7f9c"}), 1000)
        other_probe = Subscription(3, parse_filter({"probe": "tcp_close"}), 1000)
        replaying = Subscription(4, parse_filter({"pod": "checkout-7f9c"}), 1000)
        replaying.live_after = 8  # subscribed with since_seq: events up to 8 come from the replay
        for subscription in (everything, checkout, other_probe, replaying):
            server.subscriptions.add(subscription)
        pods = ["checkout-7f9c", None, "ledger-0", None,  # these 4 fit in the hand-off
                "checkout-7f9c", "ledger-0", None, "checkout-7f9c", "checkout-7f9c", None]  # these 6 do not
        raws = with_seq(encode_events([event(n, pod) for n, pod in enumerate(pods, 1)]), 1)
        server.publish("jalki/tcp_connect", raws, first_seq=1)
        assert server.handoff_dropped == 6
        assert (everything.dropped, everything.unreported_drops) == (6, 6)
        assert (checkout.dropped, checkout.unreported_drops) == (3, 3)  # seqs 5, 8, 9
        assert other_probe.dropped == 0
        assert replaying.dropped == 1  # seq 9; 5 and 8 are replayed
        server._fan_out()
        assert len(everything.queue) == 4 and len(checkout.queue) == 1 and not other_probe.queue
        assert not replaying.queue
    finally:
        server.close()
        server._loop.close()
