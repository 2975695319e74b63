"""The typed SDK (``jalki_core.sdk``) against a real ``jalki serve`` subprocess and real kernel events.

Sync and async clients: deploy → refused connects in a network namespace → ``events``/``stream`` return
exactly those, each with its ``seq``; a slow async reader gets ``Gap`` items whose counts are the daemon's
subscriber drops; a resume from a cursor replays everything the daemon still holds (a ``Gap`` first when
the cursor is older than that); every typed error where the protocol says; the README's SDK examples run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import socket as sockets
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from daemon_helpers import running_daemon, wait_for
from netns_helpers import NetNs
from test_daemon import CONNECT, as_nobody, assert_refusals, closed_port, refuse

from jalki_core.errors import DaemonStopped, DaemonTimeout, DaemonUnavailable, NotAllowed, ProbeNotFound, RequestError
from jalki_core.sdk import Answer, AsyncClient, Client, Deployment, Event, Gap, ProbeInfo, Status

pytestmark = pytest.mark.kernel

ROOT = Path(__file__).resolve().parents[2]
EVENT_SCHEMA = json.loads((ROOT / "specs" / "event.schema.json").read_text())
ASK_SCHEMA = json.loads((ROOT / "specs" / "ask.schema.json").read_text())


def typed_fields(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)} - {"raw"}


def test_typed_results_are_the_schemas_fields() -> None:
    """Every field of the typed event and answer is a property of its schema (``seq`` included)."""
    assert typed_fields(Event) <= set(EVENT_SCHEMA["properties"])
    assert "seq" in EVENT_SCHEMA["properties"]
    assert typed_fields(Answer) <= set(ASK_SCHEMA["properties"])
    finding = ASK_SCHEMA["properties"]["findings"]["items"]["properties"]
    from jalki_core.sdk import Finding
    assert typed_fields(Finding) <= set(finding)


def collect(client: Client, count: int, found: list[Event | Gap], **filters: Any) -> threading.Thread:
    """Read ``count`` items of ``client.stream(**filters)`` on a thread into ``found``."""
    def run() -> None:
        for item in client.stream(seconds=30, **filters):
            found.append(item)
            if len(found) >= count:
                return
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def subscriptions(client: Client) -> int:
    count: int = client.status().subscribers["count"]
    return count


def test_sync_client_events_stream_resume_and_pages(netns: NetNs, tmp_path: Path) -> None:
    port = closed_port()
    filters: dict[str, Any] = {"probe": "tcp_connect", "event_type": CONNECT, "dst_port": port}
    with running_daemon(tmp_path) as daemon, Client(daemon.socket) as client:
        probes = client.probes()
        assert all(isinstance(p, ProbeInfo) for p in probes) and "tcp_connect" in {p.name for p in probes}
        deployed = client.deploy("tcp_connect", ttl=600)
        assert isinstance(deployed, Deployment) and (deployed.probe, deployed.changed) == ("tcp_connect", True)
        assert client.deploy("tcp_connect", ttl=600).changed is False
        streamed: list[Event | Gap] = []
        with Client(daemon.socket) as streamer:
            reader = collect(streamer, 5, streamed, **filters)
            wait_for(lambda: subscriptions(client) == 1, what="the subscription")
            report = refuse(netns, port, 5)
            reader.join(30)
        events = wait_for(lambda: len(found := client.events(**filters)) == 5 and found, what="5 events")
        assert streamed == events  # exactly those, in order, with their seq
        assert_refusals([e.raw for e in events], report, port, netns)
        seqs = [e.seq for e in events]
        assert seqs == sorted(set(seqs)) and seqs[0] > 0
        for event in events:
            jsonschema.validate(event.raw, EVENT_SCHEMA)
            assert event.probe == "tcp_connect" and event["seq"] == event.seq
        status = client.status()
        assert isinstance(status, Status) and status.seq >= seqs[-1]
        assert status.probes["tcp_connect"].events >= 5

        # resume from a cursor: what the daemon holds after it, then live; nothing lost, nothing twice
        cursor = seqs[1]
        later = refuse(netns, port, 3)
        resumed: list[Event | Gap] = []
        with Client(daemon.socket) as streamer:
            reader = collect(streamer, 3 + 3, resumed, since=cursor, **filters)
            wait_for(lambda: len(resumed) >= 6 or subscriptions(client) == 1, what="the resumed subscription")
            wait_for(lambda: len(resumed) >= 6, timeout=15, what="the replay (3 old, 3 made while away)")
            reader.join(30)
        assert all(isinstance(item, Event) for item in resumed)
        now = client.events(**filters)
        assert resumed == [e for e in now if e.seq > cursor]
        assert_refusals([e.raw for e in now[5:]], later, port, netns)

        # pages by cursor, from the rings and from the history
        first, second = client.events(after=0, limit=4, **filters), client.events(after=now[3].seq, limit=4,
                                                                                  **filters)
        assert first + second == now
        wait_for(lambda: len(client.recent(after=0, limit=100, **filters)) == 8, what="the history to have all")
        assert client.recent(after=cursor, **filters) == now[2:]
        assert client.recent(**filters) == now  # a time listing carries the same seq


def test_async_client_streams_and_a_slow_reader_gets_gaps_equal_to_the_drops(netns: NetNs,
                                                                             tmp_path: Path) -> None:
    port, total = closed_port(), 16_000  # well over a subscription queue (10,000), socket and client buffers

    async def scenario(socket: Path) -> None:
        async with AsyncClient(socket) as client, AsyncClient(socket) as reader:
            deployed = await client.deploy("tcp_connect", port=port)
            assert deployed.filters == {"port": port}
            stream = reader.stream(event_type=CONNECT, dst_port=port)
            waiting = asyncio.ensure_future(anext(stream))
            for _ in range(100):
                if (await client.status()).subscribers["count"] == 1:
                    break
                await asyncio.sleep(0.1)
            first_report = await asyncio.to_thread(refuse, netns, port, 1)
            first = await asyncio.wait_for(waiting, 30)  # subscribed, and the first event arrived
            assert isinstance(first, Event) and first.network_data is not None
            assert first.network_data["src_port"] == first_report["results"][0]["sport"]
            await asyncio.to_thread(refuse, netns, port, total)  # the reader reads nothing meanwhile

            async def behind() -> Status | None:
                status = await client.status()
                probe = status.probes["tcp_connect"]
                held = await client.events(probe="tcp_connect", event_type=CONNECT, dst_port=port, limit=1)
                return status if (status.subscribers["dropped"] > 0 and held
                                  and probe.drops.get("ringbuf_full", 0) == 0) else None
            for _ in range(200):
                if await behind():
                    break
                await asyncio.sleep(0.1)
            # now read until every matched connect is an event or counted in a gap
            received, gaps, last = 1, [], first.seq
            while received + sum(gap.count for gap in gaps) < total + 1:
                item = await asyncio.wait_for(anext(stream), 30)
                if isinstance(item, Gap):
                    assert item.reason == "slow" and item.since_seq == last
                    gaps.append(item)
                else:
                    assert item.seq > last and item.network_data is not None
                    assert item.network_data["dst_port"] == port
                    last = item.seq
                    received += 1
            status = await client.status()
            assert status.probes["tcp_connect"].drops.get("ringbuf_full", 0) == 0
            assert gaps and sum(gap.count for gap in gaps) == status.subscribers["dropped"]
            await stream.aclose()
            assert (await client.status()).subscribers["count"] == 0

            # a resume from before what the rings still hold (history off): a gap, then all that is held
            held = (await client.status()).raw["ring"]["events"]["tcp_connect"]
            replayed: list[Event] = []
            resume = reader.stream(probe="tcp_connect", since=0)
            gap = await asyncio.wait_for(anext(resume), 30)
            assert isinstance(gap, Gap) and (gap.reason, gap.since_seq) == ("not_held", 0)
            while len(replayed) < held:
                item = await asyncio.wait_for(anext(resume), 30)
                assert isinstance(item, Event), item
                replayed.append(item)
            await resume.aclose()
            assert replayed[0].seq == gap.count + 1  # the oldest held is right after what is gone
            assert [e.seq for e in replayed] == sorted({e.seq for e in replayed})
            newest = await client.events(probe="tcp_connect", after=replayed[-1000].seq - 1, limit=1000)
            assert newest == replayed[-1000:]

    with running_daemon(tmp_path, "--history", "off") as daemon:
        asyncio.run(scenario(daemon.socket))


def test_pushes_in_the_same_read_as_the_subscribe_reply_are_kept(tmp_path: Path) -> None:
    # A subscription's first pushes may reach the client in the same read as its subscribe reply (the daemon
    # writes a resume's not_held gap right after the reply; a busy client reads both at once). They used to be
    # routed before the stream existed and silently lost: a resume then began with an event and no gap. A
    # stand-in daemon writes the reply and the pushes in one send, so each client reads them in one read.
    subscription, path = 7, tmp_path / "peer.sock"
    listener = sockets.socket(sockets.AF_UNIX, sockets.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(2)
    event = {"seq": 4, "id": "x-4", "source": "jalki/tcp_connect", "type": CONNECT}

    def serve(clients: int) -> None:
        for _ in range(clients):
            conn, _ = listener.accept()
            with conn:
                request = json.loads(conn.makefile("rb").readline())
                assert request["type"] == "subscribe" and request["since_seq"] == 0
                frames = [{"v": 1, "id": request["id"], "ok": True,
                           "result": {"subscription": subscription, "filters": {}, "seq": 4}},
                          {"v": 1, "push": "dropped", "subscription": subscription, "count": 3,
                           "reason": "not_held", "after": 0},
                          {"v": 1, "push": "event", "subscription": subscription, "event": event},
                          {"v": 1, "push": "end", "subscription": subscription, "reason": "shutdown",
                           "sent": 1, "dropped": 0}]
                conn.sendall(b"".join(json.dumps(frame).encode() + b"\n" for frame in frames))
                conn.makefile("rb").read()  # until the client closes

    peer = threading.Thread(target=serve, args=(2,), daemon=True)
    peer.start()
    want = [Gap(3, 0, "not_held"), Event.from_json(event)]
    with Client(path) as client:
        got: list[Event | Gap] = []
        with pytest.raises(DaemonStopped):
            got.extend(client.stream(since=0, seconds=30))
        assert got == want

    async def read_async() -> list[Event | Gap]:
        items: list[Event | Gap] = []
        async with AsyncClient(path) as client:
            with pytest.raises(DaemonStopped):
                async for item in client.stream(since=0, seconds=30):
                    items.append(item)
        return items
    assert asyncio.run(read_async()) == want
    peer.join(10)
    listener.close()


def test_every_typed_error_where_the_protocol_says(tmp_path: Path) -> None:
    with pytest.raises(DaemonUnavailable, match="no jalki daemon"):
        Client(tmp_path / "none.sock")
    with pytest.raises(DaemonUnavailable, match="no jalki daemon"):
        asyncio.run(AsyncClient(tmp_path / "none.sock").connect())
    with running_daemon(tmp_path) as daemon, Client(daemon.socket) as client:
        with pytest.raises(ProbeNotFound) as unknown:
            client.deploy("no_such_probe")
        assert unknown.value.code == "unknown_probe"
        with pytest.raises(RequestError) as bad:
            client.deploy("tcp_connect", sample=1.5)
        assert bad.value.code == "bad_request" and not isinstance(bad.value, ProbeNotFound)
        with pytest.raises(RequestError) as detached:
            client.undeploy("tcp_connect")
        assert detached.value.code == "not_attached"
        with pytest.raises(RequestError) as ahead:
            next(client.stream(since=client.status().seq + 1000))
        assert ahead.value.code == "bad_request" and "since_seq" in str(ahead.value)
        with pytest.raises(RequestError) as both:
            client.events(since=60, after=0)
        assert both.value.code == "bad_request"
        with pytest.raises(DaemonTimeout):
            client.ask("why are connections refused", seconds=3, timeout=0.5)

        async def async_errors() -> None:
            async with AsyncClient(daemon.socket) as aclient:
                with pytest.raises(ProbeNotFound):
                    await aclient.deploy("no_such_probe")
                assert (await aclient.ping())["pid"] == daemon.proc.pid
        asyncio.run(async_errors())
        # the socket is not ours to use: a process of user nobody
        code = ("import sys\nfrom jalki_core.sdk import Client\nfrom jalki_core.errors import NotAllowed\n"
                "try:\n    Client(sys.argv[1])\nexcept NotAllowed as e:\n    print('NotAllowed', e.one_line())\n")
        result = subprocess.run([*as_nobody(), sys.executable, "-c", code, str(daemon.socket)],
                                capture_output=True, text=True, timeout=60, check=False)
        assert result.stdout.startswith("NotAllowed not allowed to use the daemon socket"), result
        assert issubclass(NotAllowed, DaemonUnavailable)


def readme_examples() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"<!-- sdk-example -->\n```python\n(.*?)```", text, re.S)


def test_the_readme_sdk_examples_run(netns: NetNs, tmp_path: Path) -> None:
    examples = readme_examples()
    assert len(examples) == 2, "the README's SDK section has a sync and an async example"
    with running_daemon(tmp_path) as daemon:
        for example in examples:
            result = subprocess.run([sys.executable, "-c", example], capture_output=True, text=True, timeout=120,
                                    check=False, env={**os.environ, "JALKI_SOCKET": str(daemon.socket)})
            assert result.returncode == 0, result.stderr
            assert "tcp_connect" in result.stdout, result.stdout
