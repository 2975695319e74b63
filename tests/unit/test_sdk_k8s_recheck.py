"""The SDK applies the Kubernetes filters again to what comes back: a daemon older than them ignores the fields
(unknown fields are ignored, the protocol version is the same) and answers with every event; the SDK's (and so
the CLI's) ``events``, ``recent`` and ``stream`` still give only the matching ones.

The peer here answers as such a daemon does, frame for frame: it ignores ``pod``/``namespace``/… ."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from jalki_core.errors import RequestError
from jalki_core.sdk import AsyncClient, Client, Event, Gap


def event(seq: int, pod: str | None) -> dict[str, Any]:
    result: dict[str, Any] = {"id": f"e{seq}", "timestamp": "2026-01-01T00:00:00.000000000Z",
                              "source": "jalki/tcp_connect", "type": "kernel.tcp.connect", "seq": seq,
                              "process_data": {"pid": seq, "command": "curl"}}
    if pod is not None:
        result["k8s"] = {"k8s.pod.name": pod, "k8s.namespace.name": "payments"}
        if pod.startswith("checkout-"):
            result["k8s"]["k8s.deployment.name"] = "checkout"
    return result


EVENTS = [event(1, "checkout-7f9c"), event(2, "ledger-0"), event(3, None), event(4, "checkout-7f9c")]


def _serve_like_an_older_daemon(listener: socket.socket) -> None:
    """Answer every request of one connection without the Kubernetes filters, as a daemon older than them."""
    conn, _ = listener.accept()
    with conn, conn.makefile("rb") as lines:
        for line in lines:
            request = orjson.loads(line)
            kind, request_id = request["type"], request["id"]
            if kind in ("get_events", "recent"):
                result: dict[str, Any] = {"events": EVENTS, "count": len(EVENTS)}
            elif kind == "subscribe":
                result = {"subscription": 1, "filters": {}, "seq": 0}
            else:
                result = {"subscription": 1, "sent": len(EVENTS), "dropped": 0, "replayed": 0}
            frames = [{"v": 1, "id": request_id, "ok": True, "result": result}]
            if kind == "subscribe":
                frames += [{"v": 1, "push": "event", "subscription": 1, "event": e} for e in EVENTS]
                frames.append({"v": 1, "push": "dropped", "subscription": 1, "count": 2, "reason": "slow"})
            conn.sendall(b"".join(orjson.dumps(frame) + b"\n" for frame in frames))


@pytest.fixture
def older_daemon(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "jalki.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    thread = threading.Thread(target=_serve_like_an_older_daemon, args=(listener,), daemon=True)
    thread.start()
    yield path
    listener.close()
    thread.join(10)


def pids(items: list[Event]) -> list[int]:
    return [item["process_data"]["pid"] for item in items]


def test_listings_apply_the_k8s_filters_again(older_daemon: Path) -> None:
    with Client(older_daemon, timeout=30) as client:
        assert pids(client.recent(pod="checkout-7f9c")) == [1, 4]
        assert pids(client.events(workload="deployment/checkout", namespace="payments")) == [1, 4]
        assert pids(client.events(pod="ledger-0")) == [2]
        assert pids(client.recent()) == [1, 2, 3, 4]  # no Kubernetes filter: nothing checked here


def test_a_stream_applies_the_k8s_filters_again_and_keeps_its_gaps(older_daemon: Path) -> None:
    items: list[Event | Gap] = []
    with Client(older_daemon, timeout=30) as client:
        for item in client.stream(workload="Deployment/checkout"):
            items.append(item)
            if isinstance(item, Gap):
                break
    assert pids([item for item in items if isinstance(item, Event)]) == [1, 4]
    assert isinstance(items[-1], Gap) and items[-1].count == 2 and items[-1].since_seq == 4


def test_the_async_client_applies_them_too(older_daemon: Path) -> None:
    async def main() -> list[Event]:
        async with AsyncClient(older_daemon, timeout=30) as client:
            return await client.recent(container=None, pod="ledger-0")

    assert pids(asyncio.run(main())) == [2]


def test_a_name_no_pod_can_have_is_refused_before_asking(tmp_path: Path) -> None:
    path = tmp_path / "jalki.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    try:
        with Client(path, timeout=30) as client, pytest.raises(RequestError) as caught:
            client.recent(workload="pods/x")
        assert caught.value.code == "bad_request"
        assert "field 'workload' kind 'pods' is not one of" in caught.value.reason
    finally:
        listener.close()
