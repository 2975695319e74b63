"""The daemon's event store without a kernel: the compressed rings behind ``get_events``, the raw-JSON
filters, and the SQLite history's bounds (size on disk, age, write queue).

Requirement ids refer to specs/protocol.md (DAEMON-6).
"""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from jalki_core.daemon.protocol import EventFilter
from jalki_core.daemon.store import (
    MAX_AGE_S,
    READ_CHUNK_ROWS,
    RING_BLOCK_EVENTS,
    EventRings,
    History,
    HistoryLimits,
    RawFilter,
    encode_events,
    event_stamps,
)
from jalki_core.errors import JalkiError, UsageError
from jalki_core.kb import parse_timestamp

BASE_NS = 1_790_000_000 * 1_000_000_000
COMMANDS = ("curl", "postgres", "nginx", "a b\"c")


def stamp_text(ns: int) -> str:
    seconds, fraction = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{fraction:09d}Z"


def make_event(index: int, probe: str, ns: int, rng: random.Random) -> dict[str, Any]:
    """An event shaped like jalki-tcp's, with values drawn from small sets so filters find some."""
    kind = rng.choice(("connect", "close"))
    return {
        "id": f"run-{probe}-{index}", "timestamp": stamp_text(ns), "source": f"jalki/{probe}",
        "type": f"kernel.tcp.{kind}", "severity": "info", "cluster": None, "node": "n1", "attach": "tp_btf",
        "network_data": {"src_ip": rng.choice(("10.0.0.1", "10.0.0.2", "::1")), "dst_ip": "10.0.0.9",
                         "src_port": rng.randint(40000, 40020), "dst_port": rng.choice((80, 443, 5432)),
                         "protocol": "tcp"},
        "process_data": {"pid": rng.randint(100, 110), "command": rng.choice(COMMANDS)},
        # decoys: the filtered keys also appear nested, so a needle alone would be wrong
        "data": {"pid": rng.randint(100, 110), "type": "kernel.tcp.connect", "dst_port": 80},
    }


def make_stream(count: int, seed: int = 1) -> list[dict[str, Any]]:
    """``count`` events of three probes in drain order; timestamps mostly increase, with ties and small
    reorderings within a probe (as a ring buffer shared by CPUs delivers them)."""
    rng = random.Random(seed)
    events = []
    clock = {"tcp_connect": BASE_NS, "tcp_close": BASE_NS, "tcp_rtt": BASE_NS}
    for index in range(count):
        probe = rng.choice(tuple(clock))
        clock[probe] += rng.choice((0, 1_000, 50_000, 2_000_000))
        jitter = rng.choice((0, 0, 0, -3_000))
        events.append(make_event(index, probe, clock[probe] + jitter, rng))
    return events


def fill(rings: EventRings, events: list[dict[str, Any]], seed: int = 2) -> None:
    """Add ``events`` in batches of varied sizes, one source per batch, in order."""
    rng = random.Random(seed)
    index = 0
    while index < len(events):
        size = rng.choice((1, 3, RING_BLOCK_EVENTS - 1, RING_BLOCK_EVENTS, 500, 2000))
        batch = events[index:index + size]
        index += size
        runs: list[list[dict[str, Any]]] = []
        for event in batch:
            if runs and runs[-1][0]["source"] == event["source"]:
                runs[-1].append(event)
            else:
                runs.append([event])
        for run in runs:
            rings.add(run[0]["source"], event_stamps(run), encode_events(run))


def reference(events: list[dict[str, Any]], capacity: int, where: EventFilter, since_ns: int | None,
              limit: int) -> list[dict[str, Any]]:
    """``get_events`` as specified: per probe the newest ``capacity`` events; of those, the newest ``limit``
    matching ones (by timestamp, then ring, then drain order), oldest first."""
    rings: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        rings.setdefault(event["source"], []).append(event)
    found = []
    for ring_index, ring in enumerate(rings.values()):
        for position, event in enumerate(ring[-capacity:]):
            stamp = parse_timestamp(event["timestamp"]) or 0
            if (since_ns is None or stamp >= since_ns) and where.matches(event):
                found.append(((stamp, ring_index, position), event))
    found.sort(key=lambda item: item[0])
    return [event for _, event in found[-limit:]]


# ---- raw filters ----------------------------------------------------------------------------------------------

def test_raw_filter_finds_candidates_by_their_json_and_confirms_by_decoding() -> None:
    event = make_event(1, "tcp_connect", BASE_NS, random.Random(3))
    event["process_data"] = {"pid": 42, "command": 'a b"c'}
    event["data"] = {"pid": 4242}
    raw = orjson.dumps(event)
    assert RawFilter(EventFilter(pid=42)).candidate(raw)
    assert RawFilter(EventFilter(pid=42)).confirm(raw) == event
    assert not RawFilter(EventFilter(pid=4)).candidate(raw)  # "pid":42 is not "pid":4
    assert RawFilter(EventFilter(pid=4242)).candidate(raw)  # only nested under data
    assert RawFilter(EventFilter(pid=4242)).confirm(raw) is None
    assert RawFilter(EventFilter(command='a b"c')).confirm(raw) == event  # escaped like orjson escapes it
    assert RawFilter(EventFilter(type=event["type"], dst_port=event["network_data"]["dst_port"])).confirm(raw)
    probe_only = RawFilter(EventFilter(probe="tcp_connect"))
    assert not probe_only.decode and probe_only.accepts_source("jalki/tcp_connect")
    assert not probe_only.accepts_source("jalki/tcp_close") and not probe_only.accepts_source("tcp_connect")
    assert not RawFilter(EventFilter()).decode


def test_encode_events_keeps_an_event_orjson_cannot_encode_as_text() -> None:
    assert encode_events([{"a": 1}]) == [b'{"a":1}']
    first, second = encode_events([{"a": 1}, {"b": object()}])
    assert first == b'{"a":1}' and second.startswith(b'{"b":"<object object at ')


# ---- rings (DAEMON-6) -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stream() -> list[dict[str, Any]]:
    return make_stream(9000)


@pytest.mark.parametrize("capacity", [10_000, 1000, RING_BLOCK_EVENTS, 5])
def test_rings_answer_exactly_as_the_spec_says(stream: list[dict[str, Any]], capacity: int) -> None:
    rings = EventRings(capacity)
    fill(rings, stream)
    sources: dict[str, int] = {}
    for event in stream:
        sources[event["source"]] = sources.get(event["source"], 0) + 1
    assert rings.sizes() == {source.removeprefix("jalki/"): min(count, capacity) for source, count in sources.items()}
    stamps = sorted(parse_timestamp(event["timestamp"]) or 0 for event in stream)
    sample = stream[-40]
    cases = [
        (EventFilter(), None, 100), (EventFilter(), None, 10_000), (EventFilter(), stamps[-700], 10_000),
        (EventFilter(probe="tcp_close"), None, 50), (EventFilter(probe="nope"), None, 10),
        (EventFilter(type="kernel.tcp.connect"), None, 3000), (EventFilter(pid=sample["process_data"]["pid"]),
                                                               stamps[len(stamps) // 2], 10_000),
        (EventFilter(command='a b"c', dst_port=5432), None, 77),
        (EventFilter(src_ip="::1", src_port=sample["network_data"]["src_port"]), None, 10_000),
        (EventFilter(probe="tcp_rtt", type="kernel.tcp.close", dst_ip="10.0.0.9"), stamps[100], 1),
        (EventFilter(command="absent"), None, 10),
    ]
    for where, since, limit in cases:
        assert rings.query(where, since_ns=since, limit=limit) == reference(stream, capacity, where, since, limit), (
            where, since, limit)


def test_ring_events_are_kept_compressed(stream: list[dict[str, Any]]) -> None:
    rings = EventRings(10_000)
    fill(rings, stream)
    raw_bytes = sum(len(raw) for raw in encode_events(stream))
    assert rings.stored_bytes() < raw_bytes / 4  # about 1/10 here; a dict would take ~4x the JSON


def test_a_batch_larger_than_the_ring_keeps_its_newest_events(stream: list[dict[str, Any]]) -> None:
    rings = EventRings(300)
    batch = [event for event in stream if event["source"] == "jalki/tcp_close"][:1000]
    rings.add("jalki/tcp_close", event_stamps(batch[:10]), encode_events(batch[:10]))
    rings.add("jalki/tcp_close", event_stamps(batch), encode_events(batch))
    assert rings.sizes() == {"tcp_close": 300}
    assert rings.query(EventFilter(), limit=10_000) == reference(batch, 300, EventFilter(), None, 10_000)


# ---- history bounds (DAEMON-6) --------------------------------------------------------------------------------

def disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in (path, path.with_name(path.name + "-wal")) if p.exists())


def wait_written(history: History, count: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while history.written + history.dropped < count:
        assert time.monotonic() < deadline, history.stats()
        time.sleep(0.01)


def add(history: History, events: list[dict[str, Any]]) -> None:
    history.add(events[0]["source"].removeprefix("jalki/"), events, event_stamps(events), encode_events(events))


@pytest.fixture
def recent_stream() -> Iterator[list[dict[str, Any]]]:
    """Events of one probe stamped just now (the age bound keeps them)."""
    now = time.time_ns()
    rng = random.Random(5)
    yield [make_event(index, "tcp_connect", now + index * 1000, rng) for index in range(12_000)]


def test_history_stays_within_its_size_bound_and_keeps_the_newest(tmp_path: Path,
                                                                  recent_stream: list[dict[str, Any]]) -> None:
    path = tmp_path / "h.db"
    bound = 1 << 20
    history = History(path, HistoryLimits(max_bytes=bound))
    history.start()
    largest = 0
    for start in range(0, len(recent_stream), 200):  # ~6 MiB of events into a 1 MiB bound
        add(history, recent_stream[start:start + 200])
        wait_written(history, start + 200)
        largest = max(largest, disk_bytes(path))
    history.close()
    assert history.dropped == 0 and history.errors == 0 and history.written == len(recent_stream)
    assert largest <= bound and disk_bytes(path) <= bound
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA auto_vacuum").fetchone() == (2,)  # incremental: freed pages can go back
        (kept,) = db.execute("SELECT count(*) FROM events").fetchone()
        (oldest_kept,) = db.execute("SELECT min(ts_ns) FROM events").fetchone()
    finally:
        db.close()
    assert 500 < kept < len(recent_stream) and history.pruned == len(recent_stream) - kept
    # what was pruned is the oldest
    assert oldest_kept == event_stamps(recent_stream[-kept:])[0]


def test_history_deletes_events_past_the_age_bound(tmp_path: Path, recent_stream: list[dict[str, Any]]) -> None:
    path = tmp_path / "h.db"
    history = History(path, HistoryLimits(max_age_s=3600))
    history.start()
    rng = random.Random(6)
    old = [make_event(index, "tcp_close", time.time_ns() - 2 * 3600 * 10**9, rng) for index in range(50)]
    add(history, old)
    add(history, recent_stream[:50])
    wait_written(history, 100)
    history.close()
    # pruned at the next start (and every 30 s while writing)
    again = History(path, HistoryLimits(max_age_s=3600))
    again.start()
    add(again, recent_stream[50:51])
    wait_written(again, 1)
    again.close()
    assert again.pruned == 50
    assert again.query(EventFilter(), since_ns=None, limit=1000) == recent_stream[:51]


def test_history_queue_is_bounded_in_events_and_bytes(tmp_path: Path,
                                                      recent_stream: list[dict[str, Any]]) -> None:
    history = History(tmp_path / "h.db", HistoryLimits(queue_events=1000, queue_bytes=1 << 30))
    add(history, recent_stream[:600])  # the writer is not started: nothing leaves the queue
    add(history, recent_stream[600:1500])
    assert history.stats()["queued_events"] == 1000 and history.dropped == 500
    by_bytes = History(tmp_path / "h2.db", HistoryLimits(queue_events=100_000, queue_bytes=200_000))
    add(by_bytes, recent_stream[:1000])
    queued = by_bytes.stats()["queued_events"]
    assert 100 < queued < 400 and by_bytes.dropped == 1000 - queued
    for each in (history, by_bytes):
        each.start()
        each.close()  # what was queued is written
    assert history.written == 1000 and by_bytes.written == queued


def test_history_query_applies_every_filter(tmp_path: Path, stream: list[dict[str, Any]]) -> None:
    now = time.time_ns()
    events = [dict(event, timestamp=stamp_text(now + index)) for index, event in enumerate(stream[:3000])]
    history = History(tmp_path / "h.db")
    history.start()
    for source in ("jalki/tcp_connect", "jalki/tcp_close", "jalki/tcp_rtt"):
        add(history, [event for event in events if event["source"] == source])
    wait_written(history, len(events))
    for where in (EventFilter(pid=105), EventFilter(probe="tcp_close", command="nginx"),
                  EventFilter(type="kernel.tcp.connect", src_ip="::1", dst_port=443)):
        assert history.query(where, since_ns=None, limit=10_000) == reference(events, 10_000, where, None, 10_000)
    history.close()


def test_a_history_made_without_auto_vacuum_is_converted_and_pruned_to_the_bound(
        tmp_path: Path, recent_stream: list[dict[str, Any]]) -> None:
    path = tmp_path / "h.db"
    legacy = sqlite3.connect(path, isolation_level=None)
    legacy.execute("PRAGMA journal_mode=WAL")
    for statement in History.SCHEMA:
        legacy.execute(statement)
    raws = encode_events(recent_stream)
    legacy.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?)",
                       [(event["id"], stamp, event["type"], "tcp_connect", raw)
                        for event, stamp, raw in zip(recent_stream, event_stamps(recent_stream), raws, strict=True)])
    legacy.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    legacy.close()
    assert path.stat().st_size > 4 << 20
    history = History(path, HistoryLimits(max_bytes=2 << 20))
    history.start()
    history.close()
    assert disk_bytes(path) <= 2 << 20 and history.errors == 0
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA auto_vacuum").fetchone() == (2,)
        (newest,) = db.execute("SELECT max(ts_ns) FROM events").fetchone()
    finally:
        db.close()
    assert newest == event_stamps(recent_stream[-1:])[0]


# ---- history faults: bounds, a dead writer, failures that recover, reads, stop (DAEMON-19) -----------------------

@pytest.mark.parametrize("age", [1_000_000 * 86400.0, MAX_AGE_S + 1.0, 0.0, -1.0, float("nan"), float("inf")])
def test_an_age_bound_sqlite_cannot_hold_is_refused_at_construction(age: float) -> None:
    # 1,000,000 days was accepted, then its cutoff (-8.6e19 ns) overflowed SQLite's integers in the writer
    with pytest.raises(UsageError, match="the history age bound must be more than 0 and at most 36500 days"):
        HistoryLimits(max_age_s=age)


def test_the_longest_age_bound_and_a_far_future_event_are_written(tmp_path: Path,
                                                                   recent_stream: list[dict[str, Any]]) -> None:
    history = History(tmp_path / "h.db", HistoryLimits(max_age_s=MAX_AGE_S))
    history.start()
    future = dict(recent_stream[1], id="future", timestamp="2300-01-01T00:00:00Z")  # past SQLite's integers in ns
    add(history, [recent_stream[0], future])
    wait_written(history, 2)
    history.close()
    assert (history.written, history.dropped, history.errors, history.failure) == (2, 0, 0, None)
    assert history.query(EventFilter(), since_ns=None, limit=10) == [recent_stream[0], future]


class InjectedFault(Exception):
    """A failure of the writer thread nothing in History expects (what an OverflowError was)."""


class FaultyHistory(History):
    """A real history whose writer thread dies on the batch that holds the event ``boom``."""

    def _write(self, rows: list[Any]) -> None:
        if any(row[0] == "boom" for row in rows):
            raise InjectedFault("injected writer failure")
        super()._write(rows)


def test_a_dead_writer_is_stopped_in_status_and_every_event_it_leaves_is_counted(
        tmp_path: Path, recent_stream: list[dict[str, Any]]) -> None:
    history = FaultyHistory(tmp_path / "h.db")
    history.start()
    add(history, recent_stream[:10])
    wait_written(history, 10)
    assert history.stats()["state"] == "ok" and history.problems() == []
    add(history, [*recent_stream[10:40], dict(recent_stream[40], id="boom")])
    wait_written(history, 41)
    add(history, recent_stream[41:61])  # queued after the writer died
    stats = history.stats()
    assert stats["state"] == "stopped" and stats["errors"] == 1
    assert stats["written"] == 10 and stats["dropped"] == 51
    assert stats["dropped_by_cause"] == {"queue_full": 0, "write_failed": 0, "writer_stopped": 51}
    assert stats["problems"] == ["the writer stopped (InjectedFault: injected writer failure): "
                                 "51 events not written since"]
    assert stats["last_error"] == "writer stopped: InjectedFault: injected writer failure"
    history.close()  # returns: nothing waits on the dead thread
    assert history.query(EventFilter(), since_ns=None, limit=100) == recent_stream[:10]


def test_a_failed_write_is_a_problem_until_a_write_succeeds(tmp_path: Path,
                                                            recent_stream: list[dict[str, Any]]) -> None:
    path = tmp_path / "h.db"
    history = History(path)
    history.start()
    add(history, recent_stream[:10])
    wait_written(history, 10)
    other = sqlite3.connect(path, isolation_level=None)  # another process holds the write lock: writes fail
    try:
        other.execute("BEGIN IMMEDIATE")
        add(history, recent_stream[10:30])
        wait_written(history, 30)
        stats = history.stats()
        assert stats["state"] == "failing" and stats["dropped_by_cause"]["write_failed"] == 20
        assert stats["problems"] == ["the last write failed: database is locked"]
    finally:
        other.execute("ROLLBACK")
        other.close()
    add(history, recent_stream[30:40])  # the lock is gone: the next write succeeds
    wait_written(history, 40)
    stats = history.stats()
    assert (stats["state"], stats["problems"]) == ("ok", [])  # the state now ...
    assert (stats["written"], stats["dropped"], stats["errors"]) == (20, 20, 1)  # ... and the totals
    history.close()


def test_a_full_queue_is_a_problem_for_a_window_then_not(tmp_path: Path,
                                                         recent_stream: list[dict[str, Any]]) -> None:
    history = History(tmp_path / "h.db", HistoryLimits(queue_events=100))
    add(history, recent_stream[:150])  # not started: 100 wait, 50 are dropped
    stats = history.stats()
    assert stats["state"] == "degraded" and stats["dropped_by_cause"]["queue_full"] == 50
    assert stats["problems"][0].startswith("the write queue overflowed 0s ago (50 events dropped in all)")
    history.QUEUE_FULL_WINDOW_S = 0.0  # the window has passed
    assert (history.state(), history.problems()) == ("ok", [])
    history.start()
    history.close()
    assert history.written == 100


def leaf_pages(path: Path, table: str) -> list[int]:
    db = sqlite3.connect(path)
    try:
        return [page for (page,) in db.execute("SELECT pageno FROM dbstat WHERE name = ? AND pagetype = 'leaf'",
                                                 (table,))]
    finally:
        db.close()


def test_a_corrupt_page_fails_reads_loudly_until_a_read_succeeds(tmp_path: Path,
                                                                 recent_stream: list[dict[str, Any]]) -> None:
    path = tmp_path / "h.db"
    history = History(path)
    history.start()
    add(history, recent_stream[:3000])
    wait_written(history, 3000)
    history.close()
    page = leaf_pages(path, "events")[-1]
    with path.open("r+b") as file:
        file.seek((page - 1) * 4096)
        good = file.read(4096)
        file.seek((page - 1) * 4096)
        file.write(random.Random(9).randbytes(4096))
    history = History(path)  # opens: only the rows' pages are bad
    history.start()
    with pytest.raises(JalkiError, match=r"cannot read the event history .*: database disk image is malformed"):
        history.query(EventFilter(), since_ns=None, limit=5000)
    stats = history.stats()
    assert stats["state"] == "degraded"
    assert stats["problems"] == ["the last read failed: database disk image is malformed"]
    history.close()
    with path.open("r+b") as file:  # repaired (restored from a copy, say)
        file.seek((page - 1) * 4096)
        file.write(good)
    history = History(path)
    assert len(history.query(EventFilter(), since_ns=None, limit=5000)) == 3000
    assert (history.state(), history.problems()) == ("ok", [])
    history.close()


def test_reads_in_chunks_keep_ties_in_order(tmp_path: Path, recent_stream: list[dict[str, Any]]) -> None:
    same = [dict(event, timestamp=recent_stream[0]["timestamp"]) for event in recent_stream[:READ_CHUNK_ROWS * 2 + 5]]
    history = History(tmp_path / "h.db")
    history.start()
    add(history, same)
    wait_written(history, len(same))
    history.close()
    assert history.query(EventFilter(), since_ns=None, limit=len(same)) == same
    assert history.query(EventFilter(), since_ns=None, limit=READ_CHUNK_ROWS + 1) == same[-READ_CHUNK_ROWS - 1:]


def test_scans_in_flight_neither_hold_the_wal_past_the_bound_nor_stop_close(
        tmp_path: Path, recent_stream: list[dict[str, Any]]) -> None:
    path = tmp_path / "h.db"
    bound = 1 << 20
    history = History(path, HistoryLimits(max_bytes=bound))
    history.start()
    add(history, recent_stream[:2000])
    wait_written(history, 2000)
    outcomes: list[str] = []
    stop = threading.Event()

    def scan() -> None:  # a filter no event passes: every scan reads the whole history
        while not stop.is_set():
            try:
                history.query(EventFilter(pid=1), since_ns=None, limit=10)
            except JalkiError as exc:
                outcomes.append(str(exc))
                return
        outcomes.append("stopped")

    scanners = [threading.Thread(target=scan) for _ in range(3)]
    for thread in scanners:
        thread.start()
    largest = 0
    for start in range(2000, len(recent_stream), 200):
        add(history, recent_stream[start:start + 200])
        wait_written(history, start + 200)
        largest = max(largest, disk_bytes(path))
    history.close()  # while the scans run: they are interrupted, the WAL is truncated
    stop.set()
    for thread in scanners:
        thread.join()
    wal = path.with_name(path.name + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0
    assert largest <= bound and disk_bytes(path) <= bound
    assert history.written == len(recent_stream) and history.dropped == 0 and history.errors == 0
    assert len(outcomes) == 3 and all(text in ("stopped", "the event history is closing") for text in outcomes)
