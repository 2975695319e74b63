"""The emitter contract and the worker that keeps slow sinks off the drain path.

An emitter is opened once, receives batches of events, is flushed, and closed.
:class:`EmitterWorker` runs each emitter on its own thread behind a bounded
queue, bounded in batches, events and bytes: the ring-buffer drain never waits
for a sink; when a sink falls behind, whole batches are dropped and counted by
cause (never silently).
"""

from __future__ import annotations

import logging
import queue
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import orjson

from jalki_core.emitters.selection import Selection
from jalki_core.errors import EmitterClosedError
from jalki_core.events import Event

log = logging.getLogger("jalki.emitters")


def _encode(events: list[Event], default: Callable[[Any], Any] | None) -> bytes:
    # Each orjson result is appended and let go at once: a list of them would keep one 4 KiB
    # buffer per event alive (orjson's output buffer) and touch fresh memory for every event.
    buffer = bytearray()
    extend, dumps = buffer.extend, orjson.dumps
    for event in events:
        extend(dumps(event, default))
        extend(b"\n")
    return bytes(buffer)


class EventBatch:
    """A batch of events, serialised to NDJSON at most once for all emitters.

    Made from event objects, or (:meth:`encoded`) from lines already written, whose objects are
    then parsed only if an emitter asks for :attr:`events`.
    """

    __slots__ = ("_count", "_events", "_ndjson")

    def __init__(self, events: list[Event]) -> None:
        self._events: list[Event] | None = events
        self._count = len(events)
        self._ndjson: bytes | None = None

    @classmethod
    def encoded(cls, ndjson: bytes, count: int) -> EventBatch:
        """A batch of ``count`` events given as NDJSON lines (each ending with a newline)."""
        batch = cls.__new__(cls)
        batch._events, batch._count, batch._ndjson = None, count, ndjson
        return batch

    @property
    def events(self) -> list[Event]:
        """The events as objects (parsed from the lines on first use for an :meth:`encoded` batch)."""
        if self._events is None:
            assert self._ndjson is not None
            self._events = [orjson.loads(line) for line in self._ndjson.splitlines()]
        return self._events

    def __len__(self) -> int:
        return self._count

    @property
    def ndjson(self) -> bytes:
        """The events as newline-delimited JSON, ending with a newline (encoded on first use, then kept)."""
        if self._ndjson is None:
            events = self.events
            try:
                self._ndjson = _encode(events, None)
            except TypeError:  # a value JSON cannot hold (a decoder's bug): write it as text, lose nothing
                self._ndjson = _encode(events, str)
        return self._ndjson


class Emitter(ABC):
    """A sink for events. Subclasses implement :meth:`emit`; the others are optional.

    A sink that sends events off the node (with batching and bounded retry)
    subclasses :class:`jalki_core.emitters.delivery.DeliveryEmitter` instead.
    """

    name: str = "emitter"
    selection: Selection | None = None
    """The events this emitter takes and its rate limit (``--emit ...,types=...,rate=...``), set by the CLI."""

    def make_worker(self) -> EmitterWorker:
        """The worker that runs this emitter (a session makes one per emitter)."""
        return EmitterWorker(self)

    def open(self) -> None:
        """Acquire the sink (open files, connect). Raise :class:`EmitterError` on failure."""

    @abstractmethod
    def emit(self, batch: EventBatch) -> None:
        """Write one batch. Called from the emitter's own worker thread."""

    def flush(self) -> None:
        """Make everything emitted so far durable or visible (fsync for files)."""

    def close(self) -> None:
        """Flush and release the sink."""
        self.flush()

    def __enter__(self) -> Emitter:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@dataclass
class EmitterStats:
    """Counters of one emitter worker.

    Each counter has one writer thread: ``queue_dropped`` and
    ``batches_dropped`` the draining thread, the others the worker thread.
    """

    events_emitted: int = 0
    queue_dropped: int = 0
    """Events dropped because the queue was full (cause ``queue_full``)."""
    sink_dropped: int = 0
    """Events the sink failed to take, or that arrived after it closed for good (cause ``sink_error``)."""
    rate_dropped: int = 0
    """Events over the emitter's rate limit (cause ``rate_limited``; drain thread)."""
    filtered: int = 0
    """Events its ``types``/``skip_types``/``min_severity`` left out (not a loss; drain thread)."""
    batches_dropped: int = 0
    errors: int = 0
    last_error: str | None = None
    closed: bool = False
    extra: dict[str, int] = field(default_factory=dict)

    rate_limited: bool = False
    """The emitter has a rate limit (``rate_limited`` is then one of its causes)."""

    @property
    def events_dropped(self) -> int:
        """Events lost, whatever the cause."""
        return sum(self.drops_by_cause.values())

    @property
    def drops_by_cause(self) -> dict[str, int]:
        """Events lost, by cause: ``queue_full`` and ``sink_error`` (and ``rate_limited`` with a rate limit)."""
        drops = {"queue_full": self.queue_dropped, "sink_error": self.sink_dropped}
        if self.rate_limited:
            drops["rate_limited"] = self.rate_dropped
        return drops


DEFAULT_MAX_BATCHES = 4096
DEFAULT_MAX_EVENTS = 1 << 18
"""Events an emitter's queue holds at most (about a second of a busy node's TCP events)."""
DEFAULT_MAX_BYTES = 128 << 20
"""JSON bytes an emitter's queue holds at most."""

_STOP = object()


class EmitterWorker:
    """Runs one emitter on a thread behind a queue bounded in batches, events and bytes.

    A batch is encoded (:attr:`EventBatch.ndjson`, once for every emitter) when
    it is submitted, so that its bytes count against ``max_bytes``. A batch
    that would take the queue past any bound is dropped whole and its events
    counted (``queue_full``); the drain never waits.

    :param emitter: the sink.
    :param max_batches: most batches queued.
    :param max_events: most events queued.
    :param max_bytes: most JSON bytes queued.
    """

    stats: EmitterStats

    def __init__(self, emitter: Emitter, *, max_batches: int = DEFAULT_MAX_BATCHES,
                 max_events: int = DEFAULT_MAX_EVENTS, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.emitter = emitter
        self.selection = emitter.selection
        if not hasattr(self, "stats"):
            self.stats = EmitterStats()
        self.stats.rate_limited = self.selection is not None and self.selection.rate is not None
        self.max_batches, self.max_events, self.max_bytes = max_batches, max_events, max_bytes
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._lock = threading.Lock()  # the queued totals: added by the drain thread, taken by the worker
        self._batches = self._events = self._bytes = 0
        self._thread = threading.Thread(
            target=self._run, name=f"jalki-emitter-{emitter.name}", daemon=True
        )
        self._started = False

    @property
    def queued(self) -> dict[str, int]:
        """Batches, events and JSON bytes waiting in the queue now."""
        with self._lock:
            return {"batches": self._batches, "events": self._events, "bytes": self._bytes}

    def as_dict(self) -> dict[str, object]:
        """The worker's counters for summaries and ``status``: emitted, dropped (total and by cause), errors."""
        stats = self.stats
        drops = stats.drops_by_cause
        return {
            "events_emitted": stats.events_emitted,
            "events_dropped": sum(drops.values()),
            "drops": drops,
            "dropped_by_reason": drops,
            "filtered": stats.filtered,
            "errors": stats.errors,
            "last_error": stats.last_error,
            "queue": {**self.queued, "max_batches": self.max_batches, "max_events": self.max_events,
                      "max_bytes": self.max_bytes},
        }

    def start(self) -> None:
        """Open the sink and start the worker thread."""
        self.emitter.open()
        self._thread.start()
        self._started = True

    def submit(self, batch: EventBatch) -> None:
        """Queue a batch without blocking; count its events as ``queue_full`` drops when it does not fit.

        The emitter's :attr:`Emitter.selection` is applied first (drain thread): a batch it changes is
        re-made from the events kept; events over the rate limit are counted (``rate_limited``).
        """
        if self.selection is not None:
            kept, filtered, limited = self.selection.select(batch.events)
            self.stats.filtered += filtered
            self.stats.rate_dropped += limited
            if not kept:
                return
            if len(kept) != len(batch):
                batch = EventBatch(kept)
        self._enqueue(batch)

    def _enqueue(self, batch: EventBatch) -> None:
        events, size = len(batch), len(batch.ndjson)
        with self._lock:
            fits = (self._batches < self.max_batches and self._events + events <= self.max_events
                    and self._bytes + size <= self.max_bytes)
            if fits:
                self._batches += 1
                self._events += events
                self._bytes += size
        if not fits:
            self.stats.queue_dropped += events
            self.stats.batches_dropped += 1
            return
        self._queue.put(batch)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            assert isinstance(item, EventBatch)
            try:
                self._emit(item)
            finally:
                with self._lock:
                    self._batches -= 1
                    self._events -= len(item)
                    self._bytes -= len(item.ndjson)

    def _emit(self, item: EventBatch) -> None:
        if self.stats.closed:
            self.stats.sink_dropped += len(item)
            return
        try:
            self.emitter.emit(item)
            self.stats.events_emitted += len(item)
        except Exception as exc:  # isolate a failing sink; count and report it
            self.stats.errors += 1
            self.stats.sink_dropped += len(item)
            if self.stats.errors == 1:  # the summary carries the count; log the first
                log.error("emitter %s failed: %s: %s", self.emitter.name, type(exc).__name__, exc)
            self.stats.last_error = f"{type(exc).__name__}: {exc}"
            if isinstance(exc, EmitterClosedError):
                self.stats.closed = True

    def stop(self, drain_seconds: float | None = None) -> None:
        """Deliver everything queued, then flush and close the sink.

        :param drain_seconds: how long a sink that sends off the node may keep delivering (see
            :class:`jalki_core.emitters.delivery.DeliveryWorker`); a local sink writes everything.
        """
        if not self._started:
            return
        self._queue.put(_STOP)
        self._thread.join()
        self._close_emitter()

    def _close_emitter(self) -> None:
        """Close the sink once the thread has stopped; a failing close is an error counted, never raised."""
        try:
            self.emitter.close()
        except Exception as exc:
            self.stats.errors += 1
            self.stats.last_error = f"{type(exc).__name__}: {exc}"
            log.error("emitter %s failed to close: %s", self.emitter.name, self.stats.last_error)
        self._started = False
