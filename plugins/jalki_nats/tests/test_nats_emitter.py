"""The nats emitter against a real nats-server: subjects, a server that is down then up, JetStream acks."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from jalki_nats.emitter import parse_nats_argument
from nats_test_server import NatsServer, add_stream, run, stream_messages

from jalki_core.emitters.base import EventBatch
from jalki_core.emitters.delivery import DeliveryWorker
from jalki_core.errors import UsageError


@pytest.fixture
def server(tmp_path: Path) -> Iterator[NatsServer]:
    srv = NatsServer(tmp_path / "js")
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def make_events(count: int, *, cluster: str | None = "prod eu", node: str = "n1.example.com",
                event_type: str = "kernel.tcp.connect") -> list[dict[str, Any]]:
    return [{"id": secrets.token_hex(8), "timestamp": "2026-12-06T00:00:00.000000000Z", "source": "test",
             "type": event_type, "severity": "warning", "cluster": cluster, "node": node, "attach": "tp",
             "data": {"n": n}} for n in range(count)]


def worker_for(argument: str) -> DeliveryWorker:
    worker = parse_nats_argument(argument).make_worker()
    assert isinstance(worker, DeliveryWorker)
    worker.start()
    return worker


async def collect(url: str, subject: str, started: asyncio.Event, want: int, into: list[Any]) -> None:
    nc = await nats.connect(url)
    sub = await nc.subscribe(subject)
    await nc.flush()
    started.set()
    try:
        while len(into) < want:
            msg = await sub.next_msg(timeout=30)
            into.append((msg.subject, json.loads(msg.data)))
    finally:
        await nc.close()


def test_events_arrive_once_on_sanitised_subjects(server: NatsServer) -> None:
    events = make_events(3) + make_events(2, cluster=None, node="a*b>c", event_type="kernel.process.exit")
    received: list[Any] = []

    async def scenario() -> None:
        started = asyncio.Event()
        task = asyncio.create_task(collect(server.url, "jalki.>", started, len(events), received))
        await started.wait()
        worker = worker_for(f"{server.url},batch_age=100ms")
        worker.submit(EventBatch(events))
        await asyncio.to_thread(worker.stop, 10)
        await asyncio.wait_for(task, 30)
        assert worker.stats.events_emitted == len(events)
        assert worker.stats.drops_by_cause == dict.fromkeys(worker.stats.drops_by_cause, 0)

    run(scenario())
    subjects = [subject for subject, _ in received]
    assert subjects == (["jalki.prod_eu.n1_example_com.kernel.tcp.connect"] * 3
                        + ["jalki._.a_b_c.kernel.process.exit"] * 2)
    assert [payload for _, payload in received] == events


def test_server_down_then_up_counts_add_up_and_the_retry_delivers(server: NatsServer) -> None:
    run(add_stream(server.url, "ALL", ["jalki.>"]))
    server.stop()
    # no server: one try only, so these are lost for certain (retry_exhausted), nothing sent
    lost = make_events(4)
    worker = worker_for(f"{server.url},max_attempts=1,batch_age=50ms,timeout=1s")
    worker.submit(EventBatch(lost))
    worker.stop(10)
    assert worker.stats.events_emitted == 0 and worker.stats.retry_exhausted == len(lost)
    # no server at first, then one: the retries deliver once it is back
    kept = make_events(5)
    worker = worker_for(f"{server.url},max_attempts=1000,max_elapsed=120s,max_backoff=200ms,batch_age=50ms")
    worker.submit(EventBatch(kept))
    while worker.stats.failing_since is None:  # a first try failed: the server is down for it
        time.sleep(0.01)
    server.start()
    worker.stop(120)
    assert worker.stats.events_emitted == len(kept) and worker.stats.events_dropped == 0
    assert worker.stats.retries >= 1
    stored = run(stream_messages(server.url, "ALL"))
    assert [payload for _, payload in stored] == kept  # the lost ones never reached it


def test_jetstream_confirms_each_event_once(server: NatsServer) -> None:
    run(add_stream(server.url, "JALKI", ["acme.>"]))
    events = make_events(700)  # more than one batch (batch_events=512)
    worker = worker_for(f"{server.url},subject_prefix=acme,jetstream=true,stream=JALKI")
    worker.submit(EventBatch(events))
    worker.stop(30)
    assert worker.stats.events_emitted == len(events) and worker.stats.events_dropped == 0
    # the same events again (a retry after a lost acknowledgement): the stream keeps one copy of each
    again = worker_for(f"{server.url},subject_prefix=acme,jetstream=true,stream=JALKI")
    again.submit(EventBatch(events[:10]))
    again.stop(30)
    assert again.stats.events_emitted == 10
    stored = run(stream_messages(server.url, "JALKI"))
    assert [payload for _, payload in stored] == events
    assert {subject for subject, _ in stored} == {"acme.prod_eu.n1_example_com.kernel.tcp.connect"}


def test_jetstream_without_a_stream_is_retried_then_counted(server: NatsServer) -> None:
    # no stream holds the subjects: no responder, a retryable failure until the retries run out
    worker = worker_for(f"{server.url},jetstream=true,max_attempts=2,initial_backoff=50ms,batch_age=50ms,timeout=1s")
    worker.submit(EventBatch(make_events(3)))
    worker.stop(10)
    assert worker.stats.retry_exhausted == 3 and worker.stats.events_emitted == 0
    assert "not confirmed" in (worker.stats.last_error or "")


def test_a_stream_that_is_not_the_expected_one_rejects(server: NatsServer) -> None:
    run(add_stream(server.url, "OTHER", ["jalki.>"]))
    worker = worker_for(f"{server.url},jetstream=true,stream=JALKI,batch_age=50ms")
    worker.submit(EventBatch(make_events(3)))
    worker.stop(10)
    assert worker.stats.rejected == 3 and worker.stats.events_emitted == 0


@pytest.mark.parametrize(("argument", "words"), [
    (None, "needs a server URL"),
    ("http://127.0.0.1:4222", "bad NATS URL"),
    ("nats://127.0.0.1:99999", "bad port"),
    ("nats://127.0.0.1:4222,stream=S", "only with jetstream=true"),
    ("nats://127.0.0.1:4222,jetstream=maybe", "true or false"),
    ("nats://127.0.0.1:4222,subject_prefix=a..b", "subject prefix"),
    ("nats://127.0.0.1:4222,subject_prefix=a.*", "subject prefix"),
    ("nats://127.0.0.1:4222,colour=red", "unknown nats emitter option 'colour'"),
    ("nats://127.0.0.1:4222,timeout=0", "positive time"),
])
def test_bad_arguments_are_one_clear_line(argument: str | None, words: str) -> None:
    with pytest.raises(UsageError, match=words.replace("*", r"\*").replace("(", r"\(")):
        parse_nats_argument(argument)


def test_credentials_stay_out_of_messages() -> None:
    emitter = parse_nats_argument("nats://user:secret@127.0.0.1:1")
    assert emitter.nats.shown == "nats://127.0.0.1:1" and "secret" in emitter.nats.url
