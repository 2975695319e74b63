"""An AsyncClient request cancelled while it waits is forgotten, and the connection goes on serving.

A stand-in daemon on a Unix socket (the real protocol's frames) holds its
reply to the first ping until the client has cancelled that request (and a
second one still waiting for its turn), then sends it, late, and answers the
next ping at once. The late reply must be
dropped like a timed-out one (kept, it would stay in the client for as long
as the connection lives), and the next request must get its own answer.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from pathlib import Path

from jalki_core.sdk import AsyncClient


def test_a_cancelled_request_is_forgotten_and_the_next_one_is_answered(tmp_path: Path) -> None:
    path = tmp_path / "peer.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    received, cancelled = threading.Event(), threading.Event()

    def serve() -> None:
        conn, _ = listener.accept()
        with conn, conn.makefile("rb") as lines:
            first = json.loads(lines.readline())
            received.set()
            cancelled.wait(10)
            second = json.loads(lines.readline())
            for request, answer in ((first, "late"), (second, "current")):
                conn.sendall(json.dumps({"v": 1, "id": request["id"], "ok": True,
                                         "result": {"answer": answer}}).encode() + b"\n")
            lines.read()  # until the client closes

    peer = threading.Thread(target=serve, daemon=True)
    peer.start()

    async def scenario() -> tuple[object, int, int]:
        async with AsyncClient(path, timeout=10) as client:
            waiting = asyncio.create_task(client.ping())
            assert await asyncio.to_thread(received.wait, 10)  # the request is out, its reply awaited
            queued = asyncio.create_task(client.ping())  # waits for the first one's turn to end
            await asyncio.sleep(0.05)
            for task in (queued, waiting):
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
            cancelled.set()
            answer = await client.ping()
            session = client._session
            return answer, len(session._waiting), len(session._replies)

    answer, waiting, replies = asyncio.run(scenario())
    peer.join(10)
    listener.close()
    assert answer == {"answer": "current"}
    assert (waiting, replies) == (0, 0)  # nothing of the cancelled request is kept
