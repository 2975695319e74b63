"""Where the daemon keeps events: a bounded ring per probe, and an optional SQLite history.

Both keep events **encoded**: each event is serialised once (orjson) on the
drain thread, and the same bytes feed the rings, the history and the
subscribers. A decoded event (a Python dict) costs about 2.4 KiB, its JSON
about 550 bytes, and the JSON of a block of events compresses about 16 times:

- the rings (:class:`EventRings`) serve ``get_events``. Each ring keeps its
  newest events as bytes and seals every :data:`RING_BLOCK_EVENTS` of them
  into a zlib-compressed block, with the events' timestamps beside it, so a
  full ring of 10,000 events takes about 0.5 MiB. A query reads the
  timestamps, decompresses only the blocks that can hold an answer, skips
  events by looking for the filter's values in the raw JSON
  (:class:`RawFilter`), and decodes only the events it checks or returns.
  The drain thread holds the lock only to append (and to compress a full
  block);
- the history (:class:`History`) is an embedded SQLite database in WAL mode
  written by its own thread from a queue bounded in events and bytes: the
  drain thread never waits for the disk. What does not fit is dropped and
  counted (``History.dropped``). The database stays within its size and age
  bounds (:class:`HistoryLimits`): the oldest rows are deleted when the live
  pages pass the size bound, and freed pages are reused, or given back to
  the file system (``auto_vacuum=INCREMENTAL``) when the file is larger than
  the bound.

The history fails **loudly and alone**: a failed write, prune or read is
counted and named in :meth:`History.stats` (``state``, ``problems``) until the
same operation succeeds again; a writer thread that died is ``stopped``, and
what was queued to it, or is queued after, is dropped and counted by cause.
Reads run in short chunks, each its own read transaction, so a long scan never
pins the WAL; :meth:`History.close` interrupts the scans in flight and
truncates the WAL.
"""

from __future__ import annotations

import bisect
import functools
import heapq
import logging
import math
import sqlite3
import threading
import time
import zlib
from array import array
from collections import Counter, deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

import orjson

from jalki_core.daemon.protocol import K8S_FILTER_KEYS, WORKLOAD_KEYS, EventFilter, split_workload
from jalki_core.errors import JalkiError, UsageError
from jalki_core.kb import parse_timestamp

log = logging.getLogger("jalki.daemon.store")

MIB = 1 << 20

DEFAULT_RING_EVENTS = 10_000
"""Events kept in memory per probe for ``get_events``."""

MAX_SEQ = (1 << 63) - 1
"""Largest sequence number (64-bit, like SQLite's integers)."""

RING_BLOCK_EVENTS = 128
"""Events compressed together in a ring (about 16:1 for 128 jalki-tcp events at zlib level 1)."""


def encode_events(events: Sequence[Mapping[str, Any]]) -> list[bytes]:
    """Each event as compact JSON (orjson), exactly as the API sends it; what JSON cannot hold becomes text.

    orjson's result keeps the 4 KiB buffer it wrote into, whatever the length of the JSON (about 550
    bytes here); these bytes are kept for a while (rings, history queue, subscribers), so they are copied
    into objects of their own size.
    """
    dumps = orjson.dumps
    try:
        return [bytes(memoryview(dumps(event))) for event in events]
    except TypeError:  # a value orjson does not know (a decoder's bug): keep the event, as text
        return [bytes(memoryview(dumps(event, default=str))) for event in events]


def with_seq(raws: Sequence[bytes], first: int) -> list[bytes]:
    """Each encoded event with its sequence number (``first``, ``first + 1``, …) as a last ``"seq"`` key."""
    return [b'%s,"seq":%d}' % (raw[:-1], seq) if raw != b"{}" else b'{"seq":%d}' % seq
            for seq, raw in enumerate(raws, first)]


def event_stamps(events: Sequence[Mapping[str, Any]]) -> list[int]:
    """Each event's ``timestamp`` in nanoseconds since the epoch (0 when it has none)."""
    return [parse_timestamp(event.get("timestamp")) or 0 for event in events]


class RawFilter:
    """An :class:`EventFilter` applied to encoded events.

    The probe filter is checked per ring or batch (:meth:`accepts_source`). For
    the other filters, an event's JSON must contain each filter's value as
    orjson writes it (``"pid":42,``, ``"type":"kernel.tcp.connect"``, ``"k8s.pod.name":"web-1"``, …) to be
    a candidate (:meth:`candidate`: a substring search, no decoding); a
    candidate is then decoded and checked with :meth:`EventFilter.matches`
    (:meth:`confirm`), so the result is exactly that of the decoded filter.
    """

    __slots__ = ("decode", "needles", "source", "where")

    def __init__(self, where: EventFilter) -> None:
        self.where = where
        self.source = None if where.probe is None else f"jalki/{where.probe}"
        groups: list[tuple[bytes, ...]] = []
        for key, text in (("type", where.type), ("command", where.command), ("src_ip", where.src_ip),
                          ("dst_ip", where.dst_ip)):
            if text is not None:
                groups.append((b'"%s":%s' % (key.encode(), orjson.dumps(text)),))
        for key, number in (("pid", where.pid), ("src_port", where.src_port), ("dst_port", where.dst_port)):
            if number is not None:
                groups.append((b'"%s":%d,' % (key.encode(), number), b'"%s":%d}' % (key.encode(), number)))
        # Kubernetes names, as the k8s object holds them ("k8s.pod.name":"checkout-7f9c"); a workload by name
        # may be under any workload key
        for name, key in K8S_FILTER_KEYS.items():
            text = getattr(where, name)
            if text is not None:
                groups.append((b'"%s":%s' % (key.encode(), orjson.dumps(text)),))
        if where.workload is not None:
            kind, workload = split_workload(where.workload)
            keys = WORKLOAD_KEYS.values() if kind is None else (WORKLOAD_KEYS[kind],)
            groups.append(tuple(b'"%s":%s' % (key.encode(), orjson.dumps(workload)) for key in keys))
        self.needles = tuple(groups)
        self.decode = bool(groups)
        """Whether events must be decoded to be checked (any filter besides ``probe``)."""

    def accepts_source(self, source: str) -> bool:
        """Whether events of ``source`` (``jalki/<probe>``) can pass the probe filter."""
        return self.source is None or source == self.source

    def candidate(self, raw: bytes) -> bool:
        """Whether ``raw`` (one event, or a block of them) holds every filter value."""
        return all(any(needle in raw for needle in group) for group in self.needles)

    def confirm(self, raw: bytes) -> dict[str, Any] | None:
        """The decoded event when it passes the filter, else ``None``."""
        event: dict[str, Any] = orjson.loads(raw)
        return event if self.where.matches(event) else None


class _Block:
    """Sealed events of a ring: their timestamps, and their JSON lines compressed together."""

    __slots__ = ("data", "seqs", "stamps", "top")

    def __init__(self, stamps: array[int], seqs: array[int], data: bytes, top: int) -> None:
        self.stamps = stamps
        self.seqs = seqs
        """Each event's sequence number (increasing: a ring gets its events in drain order)."""
        self.data = data
        self.top = top
        """The largest timestamp in this block and every older one: older blocks cannot hold anything newer."""


class _Ring:
    """One probe's ring: sealed blocks, oldest first, and the newest events not yet sealed."""

    __slots__ = ("blocks", "evicted", "held", "pending", "pending_seqs", "pending_stamps", "skip", "top")

    def __init__(self, evicted: int = 0) -> None:
        self.blocks: deque[_Block] = deque()
        self.skip = 0  # events at the start of blocks[0] that have fallen out
        self.pending: list[bytes] = []
        self.pending_stamps: array[int] = array("q")
        self.pending_seqs: array[int] = array("q")
        self.held = 0
        self.top = 0  # largest timestamp sealed so far
        self.evicted = evicted
        """The largest sequence number that fell out of this ring (0: none did)."""

    def last_seq(self) -> int:
        if self.pending_seqs:
            return self.pending_seqs[-1]
        return self.blocks[-1].seqs[-1] if self.blocks else self.evicted

    def seal(self, count: int) -> None:
        raws, stamps, seqs = self.pending[:count], self.pending_stamps[:count], self.pending_seqs[:count]
        del self.pending[:count]
        del self.pending_stamps[:count]
        del self.pending_seqs[:count]
        self.top = max(self.top, max(stamps))
        self.blocks.append(_Block(stamps, seqs, zlib.compress(b"\n".join(raws), 1), self.top))

    def trim(self, capacity: int) -> None:
        while self.held > capacity:
            excess = self.held - capacity
            if not self.blocks:
                self.evicted = max(self.evicted, self.pending_seqs[excess - 1])
                del self.pending[:excess]
                del self.pending_stamps[:excess]
                del self.pending_seqs[:excess]
                self.held -= excess
                return
            first = len(self.blocks[0].stamps) - self.skip
            if first <= excess:
                self.evicted = max(self.evicted, self.blocks.popleft().seqs[-1])
                self.skip = 0
                self.held -= first
            else:
                self.skip += excess
                self.evicted = max(self.evicted, self.blocks[0].seqs[self.skip - 1])
                self.held -= excess


class EventRings:
    """One bounded ring of recent encoded events per probe; thread-safe.

    :param capacity: events kept per probe (the oldest fall out).
    """

    def __init__(self, capacity: int = DEFAULT_RING_EVENTS) -> None:
        self.capacity = capacity
        self._rings: dict[str, _Ring] = {}
        self._lock = threading.Lock()

    def add(self, source: str, stamps: Sequence[int], raws: Sequence[bytes], first_seq: int = 0) -> None:
        """Append a batch of encoded events of one ``source`` (``jalki/<probe>``), in drain order; their
        sequence numbers are ``first_seq``, ``first_seq + 1``, … (all 0 when ``first_seq`` is 0)."""
        if not raws:
            return
        seqs = array("q", range(first_seq, first_seq + len(raws))) if first_seq else array("q", bytes(8 * len(raws)))
        with self._lock:
            ring = self._rings.get(source)
            if ring is None or len(raws) >= self.capacity:  # new, or the batch alone fills it
                evicted = 0 if ring is None else ring.last_seq()
                if len(raws) > self.capacity:
                    evicted = max(evicted, seqs[len(raws) - self.capacity - 1])
                ring = self._rings[source] = _Ring(evicted)
                raws, stamps, seqs = raws[-self.capacity:], stamps[-self.capacity:], seqs[-self.capacity:]
            ring.pending.extend(raws)
            ring.pending_stamps.extend(stamps)
            ring.pending_seqs.extend(seqs)
            ring.held += len(raws)
            while len(ring.pending) >= RING_BLOCK_EVENTS:
                ring.seal(RING_BLOCK_EVENTS)
            ring.trim(self.capacity)

    def query(self, where: EventFilter, *, since_ns: int | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The newest ``limit`` events passing ``where`` (and not older than ``since_ns``), oldest first.

        Order: by timestamp, then by ring, then in drain order.
        """
        raw_filter = RawFilter(where)
        with self._lock:
            snapshot = [(list(ring.blocks), ring.skip, list(ring.pending), array("q", ring.pending_stamps))
                        for source, ring in self._rings.items() if raw_filter.accepts_source(source)]
        found: list[tuple[int, int, int, int, Any]] = []
        for ring_index, (blocks, skip, pending, pending_stamps) in enumerate(snapshot):
            found.extend((stamp, ring_index, block, index, item)
                         for stamp, block, index, item in _newest(blocks, skip, pending, pending_stamps,
                                                                  raw_filter, since_ns, limit))
        found.sort(key=lambda entry: entry[:4])
        return [orjson.loads(item) if isinstance(item, bytes) else item for *_, item in found[-limit:]]

    def after(self, where: EventFilter, after_seq: int, upto_seq: int | None = None,
              limit: int = 100) -> list[tuple[int, bytes]]:
        """The oldest ``limit`` events passing ``where`` with a sequence number above ``after_seq`` (and at most
        ``upto_seq``), as ``(seq, JSON)`` in ``seq`` order."""
        raw_filter = RawFilter(where)
        upto = MAX_SEQ if upto_seq is None else upto_seq
        with self._lock:
            snapshot = [(list(ring.blocks), ring.skip, list(ring.pending), array("q", ring.pending_seqs))
                        for source, ring in self._rings.items() if raw_filter.accepts_source(source)]
        found: list[tuple[int, bytes]] = []
        for blocks, skip, pending, pending_seqs in snapshot:
            mine: list[tuple[int, bytes]] = []
            parts: list[tuple[array[int], _Block | None, int]] = [
                (block.seqs, block, skip if index == 0 else 0) for index, block in enumerate(blocks)]
            parts.append((pending_seqs, None, 0))
            for seqs, block, start in parts:
                if len(mine) >= limit:
                    break
                if not seqs or seqs[-1] <= after_seq:
                    continue
                if seqs[start] > upto:
                    break
                raws = pending if block is None else zlib.decompress(block.data).split(b"\n")
                for index in range(max(start, bisect.bisect_right(seqs, after_seq)), len(seqs)):
                    seq = seqs[index]
                    if seq > upto or len(mine) >= limit:
                        break
                    raw = raws[index]
                    if raw_filter.decode and not (raw_filter.candidate(raw) and raw_filter.confirm(raw) is not None):
                        continue
                    mine.append((seq, raw))
            found.extend(mine)
        found.sort(key=lambda entry: entry[0])
        return found[:limit]

    def held_from(self, where: EventFilter) -> int:
        """The lowest sequence number from which every event of the rings ``where`` can match is still held
        (1 when none fell out)."""
        raw_filter = RawFilter(where)
        with self._lock:
            return 1 + max((ring.evicted for source, ring in self._rings.items()
                            if raw_filter.accepts_source(source)), default=0)

    def sizes(self) -> dict[str, int]:
        """Events held per probe."""
        with self._lock:
            return {source.removeprefix("jalki/"): ring.held for source, ring in self._rings.items()}

    def stored_bytes(self) -> int:
        """Bytes of event data the rings hold (compressed blocks and pending JSON)."""
        with self._lock:
            return sum(sum(len(b.data) + 8 * len(b.stamps) for b in ring.blocks) + sum(map(len, ring.pending))
                       for ring in self._rings.values())


def _newest(blocks: list[_Block], skip: int, pending: list[bytes], pending_stamps: array[int],
            raw_filter: RawFilter, since_ns: int | None,
            limit: int) -> list[tuple[int, int, int, bytes | dict[str, Any]]]:
    """One ring's newest ``limit`` matching events as ``(stamp, block, index, raw or decoded event)``."""
    kept: list[tuple[int, int, int, bytes | dict[str, Any]]] = []  # a min-heap on (stamp, block, index)
    since = since_ns if since_ns is not None else -1

    def scan(stamps: array[int], raws: list[bytes], block: int, start: int) -> None:
        for index in range(len(raws) - 1, start - 1, -1):
            stamp = stamps[index]
            if stamp < since or (len(kept) >= limit and stamp <= kept[0][0]):
                continue  # too old, or cannot be among the newest `limit` (ties go to the newer)
            raw = raws[index]
            item: bytes | dict[str, Any] = raw
            if raw_filter.decode:
                event = raw_filter.confirm(raw) if raw_filter.candidate(raw) else None
                if event is None:
                    continue
                item = event
            entry: tuple[int, int, int, bytes | dict[str, Any]] = (stamp, block, index, item)
            if len(kept) < limit:
                heapq.heappush(kept, entry)
            else:
                heapq.heapreplace(kept, entry)

    scan(pending_stamps, pending, len(blocks), 0)
    for block_index in range(len(blocks) - 1, -1, -1):
        block = blocks[block_index]
        if block.top < since or (len(kept) >= limit and block.top <= kept[0][0]):
            break  # nothing here or older can qualify
        data = zlib.decompress(block.data)
        if raw_filter.decode and not raw_filter.candidate(data):
            continue
        scan(block.stamps, data.split(b"\n"), block_index, skip if block_index == 0 else 0)
    return kept


MAX_AGE_S = 100 * 365 * 86400
"""Longest age bound: the cutoff, in nanoseconds, must stay within SQLite's 64-bit integers."""

_MAX_NS = (1 << 63) - 1
"""Largest timestamp SQLite stores as an integer (an event of year 2262 or later is stored with this one)."""


@dataclass(frozen=True)
class HistoryLimits:
    """Bounds of the SQLite history and of its write queue: it never grows past them.

    :raises UsageError: a bound that is not positive, or an age past :data:`MAX_AGE_S`.
    """

    max_bytes: int = 256 * MIB
    """The database file and its WAL together (``--history-max-mb``)."""
    max_age_s: float = 7 * 86400
    """Rows older than this are deleted (``--history-max-age``)."""
    queue_events: int = 16_384
    """Events waiting for the writer (a burst of a few thousand connections); more are dropped and counted."""
    queue_bytes: int = 12 * MIB
    """Bytes waiting for the writer (JSON plus a per-row estimate); more are dropped and counted."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.max_age_s) and 0 < self.max_age_s <= MAX_AGE_S):
            raise UsageError(f"the history age bound must be more than 0 and at most {MAX_AGE_S // 86400} days, "
                             f"not {self.max_age_s:g} seconds", hint="e.g. --history-max-age 7d")
        for name in ("max_bytes", "queue_events", "queue_bytes"):
            if getattr(self, name) <= 0:
                raise UsageError(f"the history bound {name} must be positive, not {getattr(self, name)}",
                                 hint="e.g. --history-max-mb 256")


_ROW_OVERHEAD = 200
"""Bytes a queued row costs besides its JSON (tuple, id, timestamp): an estimate, for the queue bound."""

_Row = tuple[Any, int, Any, str, bytes, int | None]

_ROWS_PER_INSERT = 256 if sqlite3.sqlite_version_info >= (3, 32, 0) else 128
"""Most rows per INSERT statement (6 parameters each; SQLite allows 999 parameters before 3.32.0).

Statements hold a power of two of rows, so the sqlite3 module's statement cache holds at most 9 of them
(one per size; a prepared statement of 256 rows takes about 100 KiB): a statement per distinct row count
would fill the cache (128 statements) with hundreds of MiB."""


@functools.cache
def _insert_sql(rows: int) -> str:
    return ("INSERT OR IGNORE INTO events (id, ts_ns, type, probe, event, seq) VALUES "
            + ", ".join(["(?, ?, ?, ?, ?, ?)"] * rows))


def _insert_chunks(count: int) -> Iterator[tuple[int, int]]:
    """``(start, rows)`` of the INSERT statements for ``count`` rows: full ones, then powers of two."""
    start = 0
    while start < count:
        rows = min(_ROWS_PER_INSERT, 1 << ((count - start).bit_length() - 1))
        yield start, rows
        start += rows


DROP_CAUSES = ("queue_full", "write_failed", "writer_stopped")
"""Why the history lost events: its write queue was full, a write transaction failed, or the writer thread had
stopped (what was queued to it then, and everything queued after)."""

READ_CHUNK_ROWS = 2048
"""Rows one read statement returns: each chunk is its own read transaction, so a scan never holds the WAL."""


class History:
    """The embedded event history (SQLite, WAL), written by its own thread.

    :param path: the database file (its directory is created, mode 0750).
    :raises JalkiError: the database cannot be opened or read (not a database, unwritable, corrupt).
    """

    SCHEMA = (
        "CREATE TABLE IF NOT EXISTS events (id TEXT PRIMARY KEY, ts_ns INTEGER NOT NULL, type TEXT NOT NULL,"
        " probe TEXT NOT NULL, event BLOB NOT NULL)",
        "CREATE INDEX IF NOT EXISTS events_ts ON events (ts_ns)",
        "CREATE INDEX IF NOT EXISTS events_type_ts ON events (type, ts_ns)",
    )
    SEQ_INDEX = "CREATE INDEX IF NOT EXISTS events_seq ON events (seq) WHERE seq IS NOT NULL"
    """The ``seq`` column is added to every database (new or made by an older jalki) when it is opened; rows
    of an older jalki have none (NULL): they are read by time, never by cursor."""
    PRUNE_EVERY_S = 30.0
    """How often rows past the age bound are deleted and the WAL is truncated (the size bound is checked after
    every write)."""
    PRUNE_TO = 0.95
    """Past the size bound, rows are deleted until the live pages are back under this share of it."""
    QUEUE_FULL_WINDOW_S = 60.0
    """For this long after the write queue overflowed, :meth:`problems` names the loss."""

    def __init__(self, path: Path, limits: HistoryLimits | None = None) -> None:
        self.path = path
        self.limits = limits or HistoryLimits()
        self.written = 0
        self.drops: Counter[str] = Counter({cause: 0 for cause in DROP_CAUSES})
        """Events not written, by cause (:data:`DROP_CAUSES`)."""
        self.errors = 0
        self.pruned = 0
        self.last_error: str | None = None
        self.failure: str | None = None
        """Why the writer thread stopped (``None`` while it runs or after a clean close)."""
        self._failing: dict[str, str] = {}  # operation ("write", "prune", "read", "checkpoint") → its last error
        self._queue_full_at: float | None = None  # monotonic
        self._pending: deque[list[_Row]] = deque()
        self._queued_events = 0
        self._queued_bytes = 0
        self._in_flight = 0  # rows taken by the writer and not yet written or counted as dropped
        self._closing = False
        self._cond = threading.Condition(threading.Lock())
        self._thread = threading.Thread(target=self._run, name="jalki-history", daemon=True)
        self._readers: set[sqlite3.Connection] = set()
        self._readers_done = threading.Condition(threading.Lock())
        self._reads_closed = False
        # the WAL's share of the bound: checkpointed past it, truncated back to it
        self._wal_bytes = max(256 * 1024, min(4 * MIB, self.limits.max_bytes // 8))
        # one write transaction adds at most about this much before the bound is checked again
        self._batch_bytes = max(8 * 1024, min(4 * MIB, self.limits.max_bytes // 64))
        self._rows = 0
        self._unchecked_bytes = 0  # written since the size was last checked
        self._page_size = 4096
        self._needs_vacuum = False
        try:
            path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
            path.touch(mode=0o640, exist_ok=True)  # events name processes and peers: not for everyone
            self._db = self._connect()
            try:
                for statement in self.SCHEMA:
                    self._db.execute(statement)
                columns = {row[1] for row in self._db.execute("PRAGMA table_info(events)")}
                if "seq" not in columns:  # new, or made by an older jalki
                    self._db.execute("ALTER TABLE events ADD COLUMN seq INTEGER")
                self._db.execute(self.SEQ_INDEX)
                self._page_size = self._pragma("page_size")
                self._needs_vacuum = self._pragma("auto_vacuum") != 2  # made by an older jalki: converted once
                (self._rows,) = self._db.execute("SELECT count(*) FROM events").fetchone()
            except sqlite3.Error:
                self._db.close()
                raise
        except (OSError, sqlite3.Error) as exc:
            raise JalkiError(f"cannot open the event history {path}: {exc}",
                             hint="move the file aside, give --history another path, or --history off") from exc
        self._last_prune = 0.0

    @property
    def dropped(self) -> int:
        """Events not written, all causes."""
        return self.drops.total()

    @property
    def _file_bytes(self) -> int:
        """The bound of the database file: the bound less the WAL (its share, or more while readers hold it)
        and room for one transaction (rows, index entries)."""
        wal = max(self._wal_bytes, self._wal_size())
        return max(self.limits.max_bytes - wal - 4 * self._batch_bytes, 64 * 1024)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA auto_vacuum=INCREMENTAL")  # takes effect in a new database (before its tables)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(f"PRAGMA journal_size_limit={self._wal_bytes}")
        db.execute(f"PRAGMA wal_autocheckpoint={max(16, self._wal_bytes // 4096 // 4)}")  # pages
        db.execute("PRAGMA cache_size=-2048")  # KiB
        db.execute("PRAGMA busy_timeout=1000")  # a checkpoint waits this long for readers (they read in chunks)
        return db

    def _pragma(self, name: str) -> int:
        (value,) = self._db.execute(f"PRAGMA {name}").fetchone()
        return int(value)

    def _wal_size(self) -> int:
        try:
            return Path(f"{self.path}-wal").stat().st_size
        except OSError:
            return 0

    def _failed(self, operation: str, exc: BaseException) -> None:
        """Count a failed operation and name it until the same operation succeeds again."""
        self.errors += 1
        self.last_error = f"{operation}: {exc}"
        self._failing[operation] = str(exc)
        log.error("history %s failed: %s", operation, exc)

    def _succeeded(self, operation: str) -> None:
        self._failing.pop(operation, None)

    def start(self) -> None:
        """Start the writer thread."""
        self._thread.start()

    # ---- drain-thread side -----------------------------------------------------

    def add(self, probe: str, events: Sequence[Mapping[str, Any]], stamps: Sequence[int],
            raws: Sequence[bytes], first_seq: int = 0) -> None:
        """Queue encoded events of ``probe`` for writing (sequence numbers from ``first_seq``; 0: none); what
        does not fit in the queue, or comes after the writer stopped, is dropped and counted (never blocks)."""
        limits = self.limits
        with self._cond:
            if self.failure is not None:
                self.drops["writer_stopped"] += len(raws)
                return
            room = limits.queue_events - self._queued_events
            room_bytes = limits.queue_bytes - self._queued_bytes
            rows: list[_Row] = []
            size = 0
            for index, (event, stamp, raw) in enumerate(zip(events, stamps, raws, strict=True)):
                cost = len(raw) + _ROW_OVERHEAD
                if len(rows) >= room or size + cost > room_bytes:
                    break
                rows.append((event.get("id"), stamp if stamp <= _MAX_NS else _MAX_NS, event.get("type", ""),
                             probe, raw, first_seq + index if first_seq else None))
                size += cost
            if len(rows) < len(raws):
                self.drops["queue_full"] += len(raws) - len(rows)
                self._queue_full_at = time.monotonic()
            if rows:
                self._pending.append(rows)
                self._queued_events += len(rows)
                self._queued_bytes += size
                self._cond.notify()

    # ---- writer thread ------------------------------------------------------------

    def _take(self) -> list[_Row] | None:
        """The next rows to write in one transaction; ``None`` once closed and empty."""
        with self._cond:
            while not self._pending and not self._closing:
                self._cond.wait()
            if not self._pending:
                return None
            rows: list[_Row] = []
            size = 0
            while self._pending and size < self._batch_bytes:
                batch = self._pending[0]
                taken = 0
                for row in batch:
                    if size >= self._batch_bytes:
                        break
                    size += len(row[4]) + _ROW_OVERHEAD
                    taken += 1
                if taken == len(batch):
                    self._pending.popleft()
                    rows += batch
                else:  # the rest of the batch goes into the next transaction
                    rows += batch[:taken]
                    del batch[:taken]
            self._queued_events -= len(rows)
            self._queued_bytes -= size
            self._in_flight = len(rows)
            return rows

    def _run(self) -> None:
        """The writer thread: a failure nothing below expected stops it, visibly, and nothing queued is lost
        uncounted."""
        try:
            self._write_loop()
        except BaseException as exc:  # the thread ends here: say why, and count what it leaves
            with self._cond:
                self.failure = f"{type(exc).__name__}: {exc}"
                self.errors += 1
                self.last_error = f"writer stopped: {self.failure}"
                lost = self._queued_events + self._in_flight
                self.drops["writer_stopped"] += lost
                self._pending.clear()
                self._queued_events = self._queued_bytes = self._in_flight = 0
            log.error("history writer stopped: %s; %d queued events not written, later events are dropped",
                      self.failure, lost)

    def _write_loop(self) -> None:
        self._prune(time.monotonic(), force=True)  # bounds lowered since the last run apply at once
        if self._needs_vacuum:
            self._convert()
        while (rows := self._take()) is not None:
            self._write(rows)

    def _write(self, rows: list[_Row]) -> None:
        # Many rows per INSERT: the sqlite3 module lets go of the GIL around every statement it steps, and
        # getting it back behind a busy drain thread can take a switch interval (5 ms) each time. One
        # statement per row (executemany) wrote ~200 rows/s next to a busy thread; this, ~20,000.
        try:
            self._db.execute("BEGIN")
            inserted = 0
            for start, count in _insert_chunks(len(rows)):
                cursor = self._db.execute(_insert_sql(count), list(chain.from_iterable(rows[start:start + count])))
                inserted += max(cursor.rowcount, 0)
            self._db.execute("COMMIT")
            self._in_flight = 0
            self._rows += inserted
            self._unchecked_bytes += sum(len(row[4]) for row in rows) + _ROW_OVERHEAD * len(rows)
            self._succeeded("write")
        except sqlite3.Error as exc:
            self.drops["write_failed"] += len(rows)
            self._in_flight = 0
            self._failed("write", exc)
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            return
        try:
            self._prune(time.monotonic())
            if "checkpoint" in self._failing or self._wal_size() > self._wal_bytes:  # failed before, or held
                self._checkpoint()
        finally:
            # counted once the size bound is enforced again: whoever sees these rows written sees the bound held
            self.written += len(rows)

    def _checkpoint(self) -> bool:
        """Copy the WAL into the database and truncate it; whether it is now empty."""
        try:
            (busy, _, _) = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.Error as exc:
            self._failed("checkpoint", exc)
            return False
        if busy:  # a reader held it past the busy timeout: tried again at the next write or prune
            return False
        self._succeeded("checkpoint")
        return True

    def _prune(self, now: float, *, force: bool = False) -> None:
        """Delete rows past the age bound (every :attr:`PRUNE_EVERY_S`) and, once the live pages pass the size
        bound, the oldest rows down to :attr:`PRUNE_TO` of it; give back pages beyond the bound.

        The size is checked once half a write transaction's bytes were written since the last check (each
        check is a few statements, each a wait for the GIL). Deletes go in transactions of about one write
        transaction's size, so the WAL stays within its share.
        """
        try:
            if now - self._last_prune >= self.PRUNE_EVERY_S:
                self._last_prune = now
                force = True
                cutoff = max(0, time.time_ns() - int(self.limits.max_age_s * 1_000_000_000))
                chunk = self._chunk_rows()
                while self._delete_oldest(chunk, cutoff) >= chunk:
                    pass
                self._checkpoint()
            if not force and self._unchecked_bytes < self._batch_bytes // 2 and "prune" not in self._failing:
                return
            self._unchecked_bytes = 0
            live = self._live_bytes()
            if live > self._file_bytes:
                target = self._file_bytes * self.PRUNE_TO
                while live > target and self._rows > 0:
                    count = min(self._chunk_rows(live), math.ceil((live - target) * self._rows / live))
                    if not self._delete_oldest(max(1, count)):
                        break
                    live = self._live_bytes()
            over = self._pragma("page_count") * self._page_size - self._file_bytes
            if over > 0 and not self._needs_vacuum:
                self._db.execute(f"PRAGMA incremental_vacuum({math.ceil(over / self._page_size)})").fetchall()
            self._succeeded("prune")
        except sqlite3.Error as exc:
            self._failed("prune", exc)

    def _live_bytes(self) -> int:
        return (self._pragma("page_count") - self._pragma("freelist_count")) * self._page_size

    def _chunk_rows(self, live: int | None = None) -> int:
        """Rows that take about one write transaction's bytes on disk."""
        if live is None:
            live = self._live_bytes()
        per_row = live / self._rows if self._rows > 0 else 1024.0
        return max(16, int(self._batch_bytes / max(per_row, 64.0)))

    def _delete_oldest(self, count: int, before_ns: int | None = None) -> int:
        """Delete the ``count`` oldest rows (only those older than ``before_ns``, if given); return how many."""
        if before_ns is None:
            cursor = self._db.execute("DELETE FROM events WHERE rowid IN (SELECT rowid FROM events ORDER BY ts_ns "
                                      "LIMIT ?)", (count,))
        else:
            cursor = self._db.execute("DELETE FROM events WHERE rowid IN (SELECT rowid FROM events WHERE ts_ns < ? "
                                      "ORDER BY ts_ns LIMIT ?)", (before_ns, count))
        deleted = max(cursor.rowcount, 0)
        self._rows = max(0, self._rows - deleted)
        self.pruned += deleted
        return deleted

    def _convert(self) -> None:
        """Turn a database without ``auto_vacuum`` (made by an older jalki) into one that gives pages back."""
        try:
            log.info("history %s: converting to auto_vacuum=INCREMENTAL (one VACUUM)", self.path)
            self._db.execute("PRAGMA auto_vacuum=INCREMENTAL")
            self._db.execute("VACUUM")
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._needs_vacuum = self._pragma("auto_vacuum") != 2
            self._succeeded("convert")
        except sqlite3.Error as exc:
            self._failed("convert", exc)

    # ---- any thread -----------------------------------------------------------------

    def query(self, where: EventFilter, *, since_ns: int | None, limit: int) -> list[dict[str, Any]]:
        """Events from the history, oldest first (the newest ``limit`` after ``since_ns``).

        The rows are read newest first in chunks of :data:`READ_CHUNK_ROWS`, each its own statement, so the
        writer can truncate the WAL between them; :meth:`close` interrupts a scan in flight.

        :raises JalkiError: the read failed (a corrupt page, the history closing); :meth:`problems` names it
            until a read succeeds.
        """
        clauses: list[str] = ["(ts_ns, rowid) < (?, ?)"]
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
        sql = (f"SELECT ts_ns, rowid, event FROM events WHERE {' AND '.join(clauses)}"
               f" ORDER BY ts_ns DESC, rowid DESC LIMIT {READ_CHUNK_ROWS}")
        raw_filter = RawFilter(where)
        found: list[dict[str, Any]] = []
        try:
            reader = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None,
                                     check_same_thread=False)
        except sqlite3.Error as exc:
            self._failed("read", exc)
            raise JalkiError(f"cannot read the event history {self.path}: {exc}") from exc
        with self._readers_done:
            if self._reads_closed:
                reader.close()
                raise JalkiError("the event history is closing")
            self._readers.add(reader)
        try:
            after = (_MAX_NS, _MAX_NS)  # (ts_ns, rowid) of the last row read: the next chunk starts below it
            while len(found) < limit:
                chunk = reader.execute(sql, [*after, *params]).fetchall()
                for ts_ns, rowid, blob in chunk:
                    after = (ts_ns, rowid)
                    if raw_filter.decode and not raw_filter.candidate(blob):
                        continue
                    event = orjson.loads(blob)
                    if where.matches(event):
                        found.append(event)
                        if len(found) >= limit:
                            break
                if len(chunk) < READ_CHUNK_ROWS:
                    break
        except sqlite3.Error as exc:
            if self._reads_closed:
                raise JalkiError("the event history is closing") from exc
            self._failed("read", exc)
            raise JalkiError(f"cannot read the event history {self.path}: {exc}") from exc
        finally:
            with self._readers_done:
                self._readers.discard(reader)
                self._readers_done.notify_all()
            reader.close()
        self._succeeded("read")
        found.reverse()
        return found

    def seq_bounds(self) -> tuple[int, int] | None:
        """The lowest and highest sequence number in the history; ``None`` when no row has one."""
        try:
            low, high = self._read_one("SELECT min(seq), max(seq) FROM events WHERE seq IS NOT NULL")
        except sqlite3.Error as exc:
            self._failed("read", exc)
            raise JalkiError(f"cannot read the event history {self.path}: {exc}") from exc
        return None if low is None else (int(low), int(high))

    def _read_one(self, sql: str) -> tuple[Any, ...]:
        reader = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None)
        try:
            row: tuple[Any, ...] = reader.execute(sql).fetchone()
            return row
        finally:
            reader.close()

    def after(self, where: EventFilter, after_seq: int, upto_seq: int | None = None,
              limit: int = 100) -> list[tuple[int, bytes]]:
        """The oldest ``limit`` events passing ``where`` with a sequence number above ``after_seq`` (and at most
        ``upto_seq``), as ``(seq, JSON)`` in ``seq`` order. :raises JalkiError: the read failed."""
        clauses = ["seq > ?", "seq <= ?"]
        params: list[int | str] = [MAX_SEQ if upto_seq is None else upto_seq]
        if where.type is not None:
            clauses.append("type = ?")
            params.append(where.type)
        if where.probe is not None:
            clauses.append("probe = ?")
            params.append(where.probe)
        sql = f"SELECT seq, event FROM events WHERE {' AND '.join(clauses)} ORDER BY seq LIMIT {READ_CHUNK_ROWS}"
        raw_filter = RawFilter(where)
        found: list[tuple[int, bytes]] = []
        try:
            reader = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None)
            try:
                while len(found) < limit:
                    chunk = reader.execute(sql, [after_seq, *params]).fetchall()
                    for seq, blob in chunk:
                        after_seq = seq
                        if raw_filter.decode and not (raw_filter.candidate(blob)
                                                      and raw_filter.confirm(blob) is not None):
                            continue
                        found.append((seq, bytes(blob)))
                        if len(found) >= limit:
                            break
                    if len(chunk) < READ_CHUNK_ROWS:
                        break
            finally:
                reader.close()
        except sqlite3.Error as exc:
            self._failed("read", exc)
            raise JalkiError(f"cannot read the event history {self.path}: {exc}") from exc
        self._succeeded("read")
        return found

    def close(self) -> None:
        """Interrupt the reads in flight (and refuse new ones meanwhile), write what is queued, truncate the WAL,
        close."""
        with self._readers_done:
            self._reads_closed = True
            deadline = time.monotonic() + 10.0
            while self._readers and time.monotonic() < deadline:
                for reader in self._readers:
                    reader.interrupt()  # the scan's next step fails with "interrupted"
                self._readers_done.wait(0.05)
        if self._thread.is_alive():
            with self._cond:
                self._closing = True
                self._cond.notify()
            self._thread.join()
        try:
            if not self._checkpoint():
                log.warning("history %s: the WAL could not be truncated at close: %s", self.path,
                            self._failing.get("checkpoint", "a reader held it"))
            self._db.close()
        except sqlite3.Error as exc:
            log.error("history close failed: %s", exc)
        with self._readers_done:
            self._reads_closed = False  # the file may be read again (it is not written any more)

    def size_bytes(self) -> int:
        """The database file and its WAL on disk."""
        total = 0
        for suffix in ("", "-wal"):
            try:
                total += Path(f"{self.path}{suffix}").stat().st_size
            except OSError:
                pass
        return total

    def problems(self) -> list[str]:
        """What is wrong with the history now, one phrase each (empty when it is healthy).

        Recent state, not totals: a failed write, prune or read stays a problem until the same operation
        succeeds again (a disk that was full and has room again is healthy after the next write); a full write
        queue, for :attr:`QUEUE_FULL_WINDOW_S`. A stopped writer stays a problem.
        """
        problems = []
        if self.failure is not None:
            problems.append(f"the writer stopped ({self.failure}): "
                            f"{self.drops['writer_stopped']} events not written since")
        for operation, message in list(self._failing.items()):
            problems.append(f"the last {operation} failed: {message}")
        ago = self._queue_full_lately()
        if ago is not None:
            problems.append(f"the write queue overflowed {ago:.0f}s ago ({self.drops['queue_full']} events "
                            "dropped in all)")
        return problems

    def _queue_full_lately(self) -> float | None:
        """Seconds since the write queue last overflowed, if within :attr:`QUEUE_FULL_WINDOW_S`."""
        at = self._queue_full_at
        ago = None if at is None else time.monotonic() - at
        return ago if ago is not None and ago < self.QUEUE_FULL_WINDOW_S else None

    def state(self) -> str:
        """``ok``; ``degraded`` (reads fail, or the queue overflowed lately: events are still written);
        ``failing`` (the last write, prune or checkpoint failed); ``stopped`` (the writer thread died)."""
        if self.failure is not None:
            return "stopped"
        failing = set(self._failing)
        if failing - {"read"}:
            return "failing"
        if failing or self._queue_full_lately() is not None:
            return "degraded"
        return "ok"

    def stats(self) -> dict[str, Any]:
        """Rows written, dropped (by cause) and pruned, what waits in the queue, size on disk, errors, and the
        state now with its problems."""
        with self._cond:
            queued_batches, queued_events = len(self._pending), self._queued_events
            drops = dict(self.drops)
        return {"path": str(self.path), "state": self.state(), "problems": self.problems(), "written": self.written,
                "dropped": sum(drops.values()), "dropped_by_cause": drops, "queued_batches": queued_batches,
                "queued_events": queued_events, "pruned": self.pruned, "size_bytes": self.size_bytes(),
                "wal_bytes": self._wal_size(), "max_bytes": self.limits.max_bytes,
                "max_age_s": self.limits.max_age_s, "errors": self.errors, "last_error": self.last_error}


def disabled_history_stats(path: Path, limits: HistoryLimits, reason: str) -> dict[str, Any]:
    """:meth:`History.stats` of a history the daemon could not open and runs without (state ``disabled``)."""
    return {"path": str(path), "state": "disabled", "problems": [f"disabled: {reason}"], "written": 0,
            "dropped": 0, "dropped_by_cause": dict.fromkeys(DROP_CAUSES, 0), "queued_batches": 0,
            "queued_events": 0, "pruned": 0, "size_bytes": 0, "wal_bytes": 0, "max_bytes": limits.max_bytes,
            "max_age_s": limits.max_age_s, "errors": 1, "last_error": reason}
