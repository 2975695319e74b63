"""Built-in emitters and the bounded emitter worker."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import orjson
import pytest

from jalki_core.emitters.base import Emitter, EmitterWorker, EventBatch
from jalki_core.emitters.builtin import FileEmitter, StdoutEmitter, parse_file_argument
from jalki_core.errors import UsageError


def events(n: int, start: int = 0) -> list[dict[str, object]]:
    return [{"id": str(i), "type": "kernel.test.event", "n": i} for i in range(start, start + n)]


def test_batch_serialises_ndjson_once() -> None:
    batch = EventBatch(events(3))
    assert batch.ndjson.count(b"\n") == 3
    assert batch.ndjson is batch.ndjson
    assert [orjson.loads(line)["n"] for line in batch.ndjson.splitlines()] == [0, 1, 2]


def test_stdout_emitter_writes_lines() -> None:
    stream = io.BytesIO()
    emitter = StdoutEmitter(stream)
    with emitter:
        emitter.emit(EventBatch(events(2)))
    assert stream.getvalue().count(b"\n") == 2


def test_file_emitter_rotates_by_size_and_keeps_everything(tmp_path: Path) -> None:
    path = tmp_path / "events.ndjson"
    emitter = FileEmitter(path, max_bytes=200, backups=10)
    with emitter:
        for start in range(0, 50, 5):
            emitter.emit(EventBatch(events(5, start)))
    files = [path, *sorted(tmp_path.glob("events.ndjson.*"))]
    assert len(files) > 2
    seen = sorted(orjson.loads(line)["n"] for f in files for line in f.read_bytes().splitlines())
    assert seen == list(range(50))
    assert all(f.stat().st_size <= 200 or f.read_bytes().count(b"\n") == 5 for f in files)


def test_file_emitter_drops_oldest_beyond_backups(tmp_path: Path) -> None:
    path = tmp_path / "e.ndjson"
    with FileEmitter(path, max_bytes=100, backups=2) as emitter:
        for start in range(0, 40, 4):
            emitter.emit(EventBatch(events(4, start)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.ndjson", "e.ndjson.1", "e.ndjson.2"]


def test_parse_file_argument_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="needs a path"):
        parse_file_argument(None)
    with pytest.raises(UsageError, match="does not exist"):
        parse_file_argument(str(tmp_path / "missing-dir" / "e.ndjson"))
    with pytest.raises(UsageError, match="is a directory"):
        parse_file_argument(str(tmp_path))
    with pytest.raises(UsageError, match="bad file emitter option"):
        parse_file_argument(f"{tmp_path}/e.ndjson,colour=blue")
    emitter = parse_file_argument(f"{tmp_path}/e.ndjson,max_bytes=1000,backups=3")
    assert emitter.max_bytes == 1000 and emitter.backups == 3


class SlowEmitter(Emitter):
    name = "slow"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.received = 0

    def emit(self, batch: EventBatch) -> None:
        self.release.wait()
        self.received += len(batch)


def test_worker_counts_drops_when_sink_is_slow_and_never_blocks() -> None:
    sink = SlowEmitter()
    worker = EmitterWorker(sink, max_batches=2)
    worker.start()
    for start in range(0, 50, 10):
        worker.submit(EventBatch(events(10, start)))  # must return at once
    sink.release.set()
    worker.stop()
    assert worker.stats.events_dropped > 0
    assert sink.received + worker.stats.events_dropped == 50
    assert worker.stats.events_emitted == sink.received


class FailingEmitter(Emitter):
    name = "failing"

    def emit(self, batch: EventBatch) -> None:
        raise OSError("disk on fire")


def test_worker_isolates_and_counts_emitter_errors() -> None:
    worker = EmitterWorker(FailingEmitter())
    worker.start()
    worker.submit(EventBatch(events(4)))
    worker.stop()
    assert worker.stats.errors == 1 and worker.stats.events_dropped == 4
    assert "disk on fire" in (worker.stats.last_error or "")


def test_stdout_closed_by_reader_stops_the_sink_and_counts_the_rest() -> None:
    class ClosedPipe(io.BytesIO):
        def write(self, data: bytes) -> int:  # type: ignore[override]
            raise BrokenPipeError(32, "Broken pipe")

    worker = EmitterWorker(StdoutEmitter(ClosedPipe()))
    worker.start()
    for start in range(0, 30, 10):
        worker.submit(EventBatch(events(10, start)))
    worker.stop()
    assert worker.stats.closed
    assert worker.stats.events_dropped == 30 and worker.stats.events_emitted == 0
    assert worker.stats.errors == 1  # later batches are counted, not retried
    assert "stdout was closed" in (worker.stats.last_error or "")


def test_queue_bounded_in_events_and_bytes_drops_counted_as_queue_full() -> None:
    one_batch = len(EventBatch(events(10)).ndjson)
    for bounds in ({"max_events": 25}, {"max_bytes": 2 * one_batch + one_batch // 2}):
        sink = SlowEmitter()  # holds the first batch in emit(): it stays counted until written
        worker = EmitterWorker(sink, **bounds)
        worker.start()
        for start in range(0, 50, 10):
            worker.submit(EventBatch(events(10, start)))  # two fit, three do not
        assert worker.queued["events"] == 20 and worker.queued["batches"] == 2
        sink.release.set()
        worker.stop()
        assert worker.stats.drops_by_cause == {"queue_full": 30, "sink_error": 0}
        assert sink.received == worker.stats.events_emitted == 20
        summary = worker.as_dict()
        assert summary["events_dropped"] == 30 and summary["drops"] == {"queue_full": 30, "sink_error": 0}
        assert summary["queue"] == {"batches": 0, "events": 0, "bytes": 0, "max_batches": 4096,
                                    "max_events": bounds.get("max_events", 1 << 18),
                                    "max_bytes": bounds.get("max_bytes", 128 << 20)}


def test_batch_with_a_value_json_cannot_hold_is_written_as_text() -> None:
    batch = EventBatch([{"n": 1}, {"n": 2, "odd": object()}])
    lines = batch.ndjson.splitlines()
    assert len(lines) == 2 and orjson.loads(lines[1])["odd"].startswith("<object object")
