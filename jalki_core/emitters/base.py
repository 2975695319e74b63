"""The emitter contract and the worker that keeps slow sinks off the drain path.

An emitter is opened once, receives batches of events, is flushed, and closed.
:class:`EmitterWorker` runs each emitter on its own thread behind a bounded
queue: the ring-buffer drain never waits for a sink; when a sink falls behind,
whole batches are dropped and counted (never silently).
"""

from __future__ import annotations

import logging
import queue
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from types import TracebackType

import orjson

from jalki_core.errors import EmitterClosedError
from jalki_core.events import Event

log = logging.getLogger("jalki.emitters")


class EventBatch:
    """A batch of events, serialised to NDJSON at most once for all emitters."""

    __slots__ = ("_ndjson", "events")

    def __init__(self, events: list[Event]) -> None:
        self.events = events
        self._ndjson: bytes | None = None

    def __len__(self) -> int:
        return len(self.events)

    @property
    def ndjson(self) -> bytes:
        """The events as newline-delimited JSON, ending with a newline."""
        if self._ndjson is None:
            dumps = orjson.dumps
            self._ndjson = b"".join([dumps(event) + b"\n" for event in self.events])
        return self._ndjson


class Emitter(ABC):
    """A sink for events. Subclasses implement :meth:`emit`; the others are optional."""

    name: str = "emitter"

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
    sink_dropped: int = 0
    batches_dropped: int = 0
    errors: int = 0
    last_error: str | None = None
    closed: bool = False
    extra: dict[str, int] = field(default_factory=dict)

    @property
    def events_dropped(self) -> int:
        """Events lost: the queue was full, or the sink failed to take them."""
        return self.queue_dropped + self.sink_dropped


_STOP = object()


class EmitterWorker:
    """Runs one emitter on a thread behind a bounded queue of batches.

    :param emitter: the sink.
    :param max_batches: queue bound; a full queue drops the incoming batch and counts its events.
    """

    def __init__(self, emitter: Emitter, *, max_batches: int = 4096) -> None:
        self.emitter = emitter
        self.stats = EmitterStats()
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_batches)
        self._thread = threading.Thread(
            target=self._run, name=f"jalki-emitter-{emitter.name}", daemon=True
        )
        self._started = False

    def start(self) -> None:
        """Open the sink and start the worker thread."""
        self.emitter.open()
        self._thread.start()
        self._started = True

    def submit(self, batch: EventBatch) -> None:
        """Queue a batch without blocking; count it as dropped when the queue is full."""
        try:
            self._queue.put_nowait(batch)
        except queue.Full:
            self.stats.queue_dropped += len(batch)
            self.stats.batches_dropped += 1

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            assert isinstance(item, EventBatch)
            if self.stats.closed:
                self.stats.sink_dropped += len(item)
                continue
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

    def stop(self) -> None:
        """Deliver everything queued, then flush and close the sink."""
        if not self._started:
            return
        self._queue.put(_STOP)
        self._thread.join()
        try:
            self.emitter.close()
        except Exception as exc:
            self.stats.errors += 1
            self.stats.last_error = f"{type(exc).__name__}: {exc}"
            log.error("emitter %s failed to close: %s", self.emitter.name, self.stats.last_error)
        self._started = False
