"""``jalki run --plugin tcp --emit nats:...`` against a real nats-server, with real refused connects in a netns.

Received is what the server holds (a live subscription, or a file-stored stream that outlives a restart);
produced is what the probes emitted (the run summary). Every test checks received + dropped = produced.
"""

from __future__ import annotations

import asyncio
import json
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests" / "kernel"))
from jalki_nats.subjects import token
from nats_test_server import NatsServer, add_stream, run, stream_messages
from netns_helpers import NetNs, netns  # noqa: F401  (netns: the fixture)

pytestmark = pytest.mark.kernel

JALKI = str(Path(sys.executable).with_name("jalki"))
NODE = token(socket.gethostname())


@pytest.fixture
def server(tmp_path: Path) -> Iterator[NatsServer]:
    srv = NatsServer(tmp_path / "js")
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


class Jalki:
    """A ``jalki run`` subprocess whose stderr is read line by line."""

    def __init__(self, emit: str, summary: Path) -> None:
        self.summary_path = summary
        self.proc = subprocess.Popen(
            [JALKI, "run", "--plugin", "tcp", "--port", "9", "--cluster", "ci", "--emit", emit,
             "--summary-json", str(summary)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.stderr: list[str] = []
        if not self.wait_for_line("tracing", 30):
            self.proc.kill()
            raise AssertionError(f"jalki did not start: {''.join(self.stderr)}{self.proc.stderr.read()}")  # type: ignore[union-attr]

    def wait_for_line(self, words: str, seconds: float) -> bool:
        assert self.proc.stderr is not None
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stderr], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            line = self.proc.stderr.readline()
            if not line:
                return False
            self.stderr.append(line)
            if words in line:
                return True
        return False

    def stop(self) -> dict[str, Any]:
        self.proc.send_signal(signal.SIGTERM)
        _, rest = self.proc.communicate(timeout=60)
        stderr = "".join(self.stderr) + rest
        summary: dict[str, Any] = json.loads(self.summary_path.read_text())
        lost = sum(summary["emitters"]["nats"]["dropped_by_reason"].values())
        assert self.proc.returncode == (1 if lost else 0), stderr  # a run that lost events says so
        assert lost == 0 or "emitter nats lost" in stderr
        return summary


def accounts(summary: dict[str, Any]) -> tuple[int, int, dict[str, int]]:
    """(produced, sent, dropped by reason) from a run summary."""
    produced = sum(probe["events"] for probe in summary["probes"])
    nats_emitter = summary["emitters"]["nats"]
    return produced, nats_emitter["sent"], nats_emitter["dropped_by_reason"]


def until(check: Any, seconds: float = 30) -> Any:
    """Poll ``check()`` until it returns something true; return it (or the last value)."""
    deadline = time.monotonic() + seconds
    value = check()
    while not value and time.monotonic() < deadline:
        time.sleep(0.1)
        value = check()
    return value


def mine(messages: list[tuple[str, dict[str, Any]]], ns: NetNs) -> list[tuple[str, dict[str, Any]]]:
    return [(subject, event) for subject, event in messages if event.get("network_data", {}).get("netns") == ns.inode]


def held_ports(server: NatsServer, stream: str, ns: NetNs) -> set[int]:
    """Source ports of this namespace's events that the stream holds."""
    return {event["network_data"]["src_port"] for _, event in mine(run(stream_messages(server.url, stream)), ns)}


def stored_once_sent(server: NatsServer, stream: str, sent: int) -> list[tuple[str, dict[str, Any]]]:
    """The stream's messages once it holds ``sent`` of them (it stores core publishes as it gets them)."""
    stored: list[tuple[str, dict[str, Any]]] = until(
        lambda: (messages := run(stream_messages(server.url, stream))) and len(messages) >= sent and messages)
    return stored or run(stream_messages(server.url, stream))


class Subscriber:
    """A live nats-py subscription on ``jalki.>`` in a thread of its own."""

    def __init__(self, url: str) -> None:
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(url),), daemon=True)
        self._thread.start()
        assert self._ready.wait(30), "the subscriber did not connect"

    async def _main(self, url: str) -> None:
        nc = await nats.connect(url)
        sub = await nc.subscribe("jalki.>")
        await nc.flush()
        self._ready.set()
        while not self._stop.is_set():
            try:
                msg = await sub.next_msg(timeout=0.2)
            except nats.errors.TimeoutError:
                continue
            self.messages.append((msg.subject, json.loads(msg.data)))
        await nc.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)


def test_refused_connects_arrive_on_their_subjects(server: NatsServer, netns: NetNs, tmp_path: Path) -> None:  # noqa: F811
    subscriber = Subscriber(server.url)
    try:
        jalki = Jalki(f"nats:{server.url},batch_age=100ms", tmp_path / "summary.json")
        report = netns.traffic("connect", "--port", "9", "--count", "5")
        summary = jalki.stop()
        produced, sent, dropped = accounts(summary)
        assert until(lambda: len(subscriber.messages) >= sent), (len(subscriber.messages), sent)
    finally:
        subscriber.close()
    assert len(subscriber.messages) == sent and sent + sum(dropped.values()) == produced
    assert dropped == dict.fromkeys(dropped, 0)
    for subject, event in subscriber.messages:
        assert subject == f"jalki.ci.{token(event['node'])}.{event['type']}"
    ports = {result["sport"] for result in report["results"]}
    refused = [(subject, event) for subject, event in mine(subscriber.messages, netns)
               if event["type"] == "kernel.tcp.connect" and event["network_data"]["src_port"] in ports]
    assert len(refused) == 5
    assert {subject for subject, _ in refused} == {f"jalki.ci.{NODE}.kernel.tcp.connect"}
    assert {event["error"]["code"] for _, event in refused} == {"ECONNREFUSED"}


def test_server_stopped_and_restarted_counts_add_up(server: NatsServer, netns: NetNs, tmp_path: Path) -> None:  # noqa: F811
    # the stream is the receiver: file-stored, it keeps what the server took across the restart
    run(add_stream(server.url, "ALL", ["jalki.>"]))
    jalki = Jalki(f"nats:{server.url},max_attempts=1,batch_age=100ms,timeout=2s", tmp_path / "summary.json")
    before = netns.traffic("connect", "--port", "9", "--count", "3")
    ports = {result["sport"] for result in before["results"]}
    assert until(lambda: held_ports(server, "ALL", netns) >= ports), "the first events never reached the server"
    server.stop()
    netns.traffic("connect", "--port", "9")
    # one try only (max_attempts=1): a batch tried while the server is down is lost for certain, and logged
    assert jalki.wait_for_line("emitter nats lost", 60), "".join(jalki.stderr)
    server.start()
    after = netns.traffic("connect", "--port", "9", "--count", "3")
    ports |= {result["sport"] for result in after["results"]}
    assert until(lambda: held_ports(server, "ALL", netns) >= ports), "events after the restart never reached the server"
    summary = jalki.stop()
    produced, sent, dropped = accounts(summary)
    assert dropped["retry_exhausted"] >= 1
    assert sent + sum(dropped.values()) == produced
    stored = stored_once_sent(server, "ALL", sent)
    assert len(stored) == sent
    assert len({event["id"] for _, event in stored}) == sent  # none twice


def test_jetstream_confirms_delivery_across_a_restart(server: NatsServer, netns: NetNs, tmp_path: Path) -> None:  # noqa: F811
    run(add_stream(server.url, "JALKI", ["jalki.>"]))
    jalki = Jalki(f"nats:{server.url},jetstream=true,stream=JALKI,batch_age=100ms,timeout=2s,"
                  "max_attempts=100000,max_elapsed=600s,max_backoff=200ms", tmp_path / "summary.json")
    def connects() -> set[int]:
        return {result["sport"] for result in netns.traffic("connect", "--port", "9", "--count", "3")["results"]}

    ports = connects()
    assert until(lambda: held_ports(server, "JALKI", netns) >= ports), "the first events never reached the stream"
    server.stop()
    ports |= connects()
    time.sleep(1.0)  # the batcher tries them against the stopped server meanwhile
    server.start()
    ports |= connects()
    summary = jalki.stop()
    produced, sent, dropped = accounts(summary)
    assert dropped == dict.fromkeys(dropped, 0) and sent == produced
    stored = run(stream_messages(server.url, "JALKI"))
    assert len(stored) == sent  # every acknowledged event is in the stream, once
    assert len({event["id"] for _, event in stored}) == sent
    refused = [event for _, event in mine(stored, netns) if event["type"] == "kernel.tcp.connect"]
    assert {event["network_data"]["src_port"] for event in refused} == ports and len(refused) == 9
