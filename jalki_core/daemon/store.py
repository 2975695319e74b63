"""Where the daemon keeps events: a bounded ring per probe, and an optional SQLite history.

The rings serve ``get_events`` (recent events, newest last) and are filled on
the drain thread under a lock held only for an append. The history is an
embedded SQLite database in WAL mode written by its own thread from a bounded
queue: the drain thread never waits for the disk. A full queue drops the batch
and counts it (``History.dropped``); pruning keeps the database within its row
and age bounds.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from jalki_core.daemon.protocol import EventFilter
from jalki_core.errors import JalkiError
from jalki_core.kb import parse_timestamp

log = logging.getLogger("jalki.daemon.store")

DEFAULT_RING_EVENTS = 10_000
"""Events kept in memory per probe for ``get_events``."""


class EventRings:
    """One bounded ring of recent events per probe; thread-safe."""

    def __init__(self, capacity: int = DEFAULT_RING_EVENTS) -> None:
        self.capacity = capacity
        self._rings: dict[str, deque[Mapping[str, Any]]] = {}
        self._lock = threading.Lock()

    def add(self, probe: str, events: Sequence[Mapping[str, Any]]) -> None:
        """Append a batch of ``probe``'s events (the oldest fall out)."""
        with self._lock:
            ring = self._rings.get(probe)
            if ring is None:
                ring = self._rings[probe] = deque(maxlen=self.capacity)
            ring.extend(events)

    def query(self, where: EventFilter, *, since_ns: int | None = None, limit: int = 100) -> list[Mapping[str, Any]]:
        """The newest ``limit`` events passing ``where`` (and newer than ``since_ns``), oldest first."""
        with self._lock:
            rings = [list(self._rings.get(where.probe, ()))] if where.probe else [list(r) for r in self._rings.values()]
        found: list[tuple[int, Mapping[str, Any]]] = []
        for ring in rings:
            for event in reversed(ring):
                stamp = parse_timestamp(event.get("timestamp")) or 0
                if since_ns is not None and stamp < since_ns:
                    break  # a ring is in time order: everything older follows
                if where.matches(event):
                    found.append((stamp, event))
        found.sort(key=lambda item: item[0])
        return [event for _, event in found[-limit:]]

    def sizes(self) -> dict[str, int]:
        """Events held per probe."""
        with self._lock:
            return {probe: len(ring) for probe, ring in self._rings.items()}


@dataclass(frozen=True)
class HistoryLimits:
    """Bounds of the SQLite history: it never grows past them."""

    max_rows: int = 1_000_000
    max_age_s: float = 7 * 86400
    queue_batches: int = 1024


class History:
    """The embedded event history (SQLite, WAL), written by its own thread.

    :param path: the database file (its directory is created, mode 0750).
    """

    SCHEMA = (
        "CREATE TABLE IF NOT EXISTS events (id TEXT PRIMARY KEY, ts_ns INTEGER NOT NULL, type TEXT NOT NULL,"
        " probe TEXT NOT NULL, event BLOB NOT NULL)",
        "CREATE INDEX IF NOT EXISTS events_ts ON events (ts_ns)",
        "CREATE INDEX IF NOT EXISTS events_type_ts ON events (type, ts_ns)",
    )
    PRUNE_EVERY_S = 30.0

    def __init__(self, path: Path, limits: HistoryLimits | None = None) -> None:
        self.path = path
        self.limits = limits or HistoryLimits()
        self.written = 0
        self.dropped = 0
        self.errors = 0
        self.last_error: str | None = None
        self._queue: queue.Queue[list[Mapping[str, Any]] | None] = queue.Queue(self.limits.queue_batches)
        self._thread = threading.Thread(target=self._write_loop, name="jalki-history", daemon=True)
        try:
            path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
            path.touch(mode=0o640, exist_ok=True)  # events name processes and peers: not for everyone
            self._db = self._connect()
            for statement in self.SCHEMA:
                self._db.execute(statement)
            self._db.commit()
        except (OSError, sqlite3.Error) as exc:
            raise JalkiError(f"cannot open the event history {path}: {exc}",
                             hint="give --history a writable path, or --history off") from exc
        self._last_prune = 0.0

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    def start(self) -> None:
        """Start the writer thread."""
        self._thread.start()

    def add(self, events: Sequence[Mapping[str, Any]]) -> None:
        """Queue a batch for writing; when the writer is behind, drop it and count (never block)."""
        try:
            self._queue.put_nowait(list(events))
        except queue.Full:
            self.dropped += len(events)

    def _write_loop(self) -> None:
        while True:
            batch = self._queue.get()
            if batch is None:
                return
            batches = [batch]
            while len(batches) < 64:  # coalesce what is waiting into one transaction
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._write(batches)
                    return
                batches.append(more)
            self._write(batches)

    def _write(self, batches: Iterable[list[Mapping[str, Any]]]) -> None:
        rows = [
            (event.get("id"), parse_timestamp(event.get("timestamp")) or 0, event.get("type", ""),
             str(event.get("source", "")).removeprefix("jalki/"), orjson.dumps(event))
            for batch in batches for event in batch
        ]
        try:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?, ?)", rows)
            self._db.execute("COMMIT")
            self.written += len(rows)
        except sqlite3.Error as exc:
            self.errors += 1
            self.last_error = str(exc)
            self.dropped += len(rows)
            log.error("history write failed: %s", exc)
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            return
        now = time.monotonic()
        if now - self._last_prune >= self.PRUNE_EVERY_S:
            self._last_prune = now
            self.prune()

    def prune(self) -> None:
        """Delete rows older than the age bound and the oldest rows beyond the row bound."""
        try:
            cutoff = time.time_ns() - int(self.limits.max_age_s * 1_000_000_000)
            self._db.execute("DELETE FROM events WHERE ts_ns < ?", (cutoff,))
            (count,) = self._db.execute("SELECT count(*) FROM events").fetchone()
            if count > self.limits.max_rows:
                self._db.execute("DELETE FROM events WHERE rowid IN (SELECT rowid FROM events ORDER BY ts_ns "
                                 "LIMIT ?)", (count - self.limits.max_rows,))
        except sqlite3.Error as exc:
            self.errors += 1
            self.last_error = str(exc)
            log.error("history prune failed: %s", exc)

    def query(self, where: EventFilter, *, since_ns: int | None, limit: int) -> list[dict[str, Any]]:
        """Events from the history, oldest first (the newest ``limit`` after ``since_ns``)."""
        clauses: list[str] = []
        params: list[int | str] = []
        if since_ns is not None:
            clauses.append("ts_ns >= ?")
            params.append(since_ns)
        if where.type is not None:
            clauses.append("type = ?")
            params.append(where.type)
        if where.probe is not None:
            clauses.append("probe = ?")
            params.append(where.probe)
        sql = "SELECT event FROM events" + (" WHERE " + " AND ".join(clauses) if clauses else "")
        sql += " ORDER BY ts_ns DESC"
        reader = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        try:
            found = []
            for (blob,) in reader.execute(sql, params):
                event = orjson.loads(blob)
                if where.matches(event):
                    found.append(event)
                    if len(found) >= limit:
                        break
        finally:
            reader.close()
        found.reverse()
        return found

    def close(self) -> None:
        """Write what is queued, checkpoint the WAL, fsync, close."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.close()
        except sqlite3.Error as exc:
            log.error("history close failed: %s", exc)

    def stats(self) -> dict[str, Any]:
        """Rows written and dropped, queue depth, errors."""
        return {"path": str(self.path), "written": self.written, "dropped": self.dropped,
                "queued_batches": self._queue.qsize(), "errors": self.errors, "last_error": self.last_error}
