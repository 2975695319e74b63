"""The delivery core: queue, batcher and bounded retry for emitters that send events off the node.

How an emitter plugin uses it
-----------------------------
Subclass :class:`DeliveryEmitter` and implement :meth:`DeliveryEmitter.send`;
register a factory through ``jalki_register_emitters`` as for any emitter::

    class MyEmitter(DeliveryEmitter):
        name = "mine"

        def send(self, events: list[Event], time_left: float | None) -> int:
            # Deliver the whole batch, within time_left seconds when it is not None
            # (the shutdown deadline is near). Return how many of the events the
            # receiver rejected (0: all taken; e.g. OTLP partial_success).
            # Raise RetryableSendError(message, retry_after=seconds or None) for a
            # failure worth retrying (connection error, timeout, HTTP 408/429/502/503/504:
            # see classify_http_status), RejectedSendError(message) for a refusal.
            ...

    def factory(argument: str | None) -> MyEmitter:
        target, options = split_argument(argument)        # jalki_core.emitters.selection
        settings, options = DeliverySettings.take(options)  # the keys below, parsed
        ...                                                 # the emitter's own keys; refuse the rest
        return MyEmitter(settings)

The session runs it on a :class:`DeliveryWorker` (from
:meth:`DeliveryEmitter.make_worker`), a thread of its own, so a slow or dead
receiver never stalls the ring-buffer drain:

- a queue bounded in events and bytes (``queue_events``, ``queue_bytes``):
  a batch that does not fit is dropped whole, newest first, counted ``queue_full``;
- a batcher: ``send`` gets at most ``batch_events`` events / about ``batch_bytes``
  JSON bytes, and waits at most ``batch_age`` seconds for a batch to fill;
- bounded retry (:class:`RetryPolicy`): exponential backoff with jitter, at most
  ``max_attempts`` tries and ``max_elapsed`` seconds per batch, only for
  :class:`RetryableSendError`, never sooner than its ``retry_after``;
- shutdown (:meth:`DeliveryWorker.stop`) keeps delivering until
  ``--emit-drain-seconds`` and counts what is left as ``shutdown``.

Every event lost is counted by reason (:data:`DROP_REASONS`); sent, retries,
queue depth and the last success time come too. They reach the run summary
(``emitters.<name>.dropped_by_reason``), ``jalki status``/``health`` and the
daemon's metrics through :meth:`DeliveryWorker.as_dict`. The shared keys
``types``, ``skip_types``, ``min_severity`` and ``rate`` are taken out of the
argument by the CLI before the factory sees it (:mod:`jalki_core.emitters.selection`).
"""

from __future__ import annotations

import email.utils
import logging
import math
import queue
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any

from jalki_core.emitters.base import (
    Emitter,
    EmitterStats,
    EmitterWorker,
    EventBatch,
)
from jalki_core.errors import RejectedSendError, RetryableSendError, UsageError
from jalki_core.events import Event

log = logging.getLogger("jalki.emitters.delivery")

DROP_REASONS = ("queue_full", "rate_limited", "retry_exhausted", "rejected", "shutdown", "sink_error")
"""Why a delivery emitter lost events: its queue was full; over its rate limit; the retries ran out; the
receiver refused them (a non-retryable reply, or a partial success naming them); the drain deadline came at
shutdown; the emitter's own code failed (a bug)."""

DEFAULT_DRAIN_SECONDS = 5.0
"""How long a stopping session keeps delivering queued events (``--emit-drain-seconds``)."""

RETRYABLE_HTTP_STATUSES = frozenset({408, 429, 502, 503, 504})
"""HTTP replies worth retrying (the OTLP/HTTP specification's list)."""

RETRYABLE_GRPC_CODES = frozenset({"UNAVAILABLE", "RESOURCE_EXHAUSTED"})
"""gRPC status codes worth retrying (RESOURCE_EXHAUSTED: when the server says it can recover)."""

MAX_RETRY_AFTER_S = 3600.0
"""A ``Retry-After`` beyond this is taken as this (a receiver's typo must not park an emitter for days)."""


def classify_http_status(status: int) -> str:
    """``"ok"`` (2xx), ``"retry"`` (:data:`RETRYABLE_HTTP_STATUSES`) or ``"reject"`` (anything else)."""
    if 200 <= status < 300:
        return "ok"
    return "retry" if status in RETRYABLE_HTTP_STATUSES else "reject"


def retryable_grpc_code(code: str) -> bool:
    """Whether a gRPC status code name (``UNAVAILABLE``) is worth retrying."""
    return code.upper() in RETRYABLE_GRPC_CODES


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from an HTTP ``Retry-After`` (delay seconds or an HTTP date), else ``None``.

    :param now: wall-clock seconds (``time.time()``) for a date value.
    """
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return min(float(text), MAX_RETRY_AFTER_S)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    seconds = when.timestamp() - (time.time() if now is None else now)
    return min(max(0.0, seconds), MAX_RETRY_AFTER_S)


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retry: exponential backoff with jitter, at most ``max_attempts`` tries in ``max_elapsed`` s.

    The n-th retry waits ``initial_backoff * multiplier**(n-1)``, at most
    ``max_backoff``, times a random factor in ``[1 - jitter, 1]``; a
    receiver's ``Retry-After`` makes it wait at least that long.
    """

    initial_backoff: float = 0.2
    max_backoff: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.5
    max_attempts: int = 6
    max_elapsed: float = 30.0

    def backoff(self, retry: int, draw: float) -> float:
        """The wait before retry number ``retry`` (1 for the first) for a random ``draw`` in [0, 1)."""
        base = min(self.max_backoff, self.initial_backoff * self.multiplier ** (retry - 1))
        return base * (1.0 - self.jitter * draw)

    def next_delay(self, attempts: int, elapsed: float, retry_after: float | None, draw: float) -> float | None:
        """How long to wait before the next try, or ``None`` to give up (the batch is ``retry_exhausted``).

        :param attempts: tries made so far (1 after the first failed).
        :param elapsed: seconds since the first try began.
        :param retry_after: the receiver's ``Retry-After`` in seconds, if it sent one.
        """
        if attempts >= self.max_attempts:
            return None
        delay = self.backoff(attempts, draw)
        if retry_after is not None:
            delay = max(delay, retry_after)
        if elapsed + delay > self.max_elapsed:
            return None
        return delay


_SECONDS = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m)?$")


def parse_seconds(text: str, key: str) -> float:
    """``1.5``, ``1.5s``, ``200ms``, ``2m`` → seconds (positive, finite)."""
    match = _SECONDS.match(text.strip())
    value = 0.0
    if match:
        value = float(match.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}[match.group(2)]
    if match is None or not math.isfinite(value) or value <= 0:
        raise UsageError(f"bad --emit {key}={text!r}: give a positive time, e.g. {key}=2s or {key}=500ms")
    return value


def _positive_int(text: str, key: str) -> int:
    if not text.isdigit() or int(text) <= 0:
        raise UsageError(f"bad --emit {key}={text!r}: give a positive whole number, e.g. {key}=100")
    return int(text)


@dataclass(frozen=True)
class DeliverySettings:
    """The ``--emit`` keys of every delivery emitter, with their defaults."""

    batch_events: int = 512
    batch_bytes: int = 1 << 20
    batch_age: float = 1.0
    # A receiver that is down fills the queue first: it holds each batch's events and their JSON (about 2 KiB of
    # memory an event), so the default keeps a few seconds of a busy node (32,768 events, 16 MiB of JSON),
    # not the local sinks' bounds; queue_events= / queue_bytes= raise it where memory allows.
    queue_events: int = 32_768
    queue_bytes: int = 16 << 20
    max_attempts: int = 6
    max_elapsed: float = 30.0
    initial_backoff: float = 0.2
    max_backoff: float = 5.0
    unhealthy_after: float = 30.0
    """Seconds of failing sends (no success since the first failure) after which ``health`` says unhealthy."""

    KEYS = ("batch_events", "batch_bytes", "batch_age", "queue_events", "queue_bytes", "max_attempts",
            "max_elapsed", "initial_backoff", "max_backoff", "unhealthy_after")

    @classmethod
    def take(cls, options: list[tuple[str, str]]) -> tuple[DeliverySettings, list[tuple[str, str]]]:
        """Parse the delivery keys out of ``options``; return the settings and the options left."""
        values: dict[str, Any] = {}
        rest = []
        types = {f.name: f.type for f in fields(cls)}
        for key, value in options:
            if key not in cls.KEYS:
                rest.append((key, value))
            elif types[key] in ("int", int):
                values[key] = _positive_int(value, key)
            else:
                values[key] = parse_seconds(value, key)
        return cls(**values), rest

    @property
    def retry(self) -> RetryPolicy:
        """The retry policy these settings give."""
        return RetryPolicy(initial_backoff=self.initial_backoff, max_backoff=self.max_backoff,
                           max_attempts=self.max_attempts, max_elapsed=self.max_elapsed)

    def with_changes(self, **changes: Any) -> DeliverySettings:
        """A copy with some settings changed."""
        return replace(self, **changes)


class DeliveryEmitter(Emitter):
    """An emitter that sends batches off the node; subclasses implement :meth:`send`.

    :param settings: batching, queue bounds and retry (``--emit`` keys, :class:`DeliverySettings`).
    """

    def __init__(self, settings: DeliverySettings | None = None) -> None:
        self.settings = settings or DeliverySettings()

    def send(self, events: list[Event], time_left: float | None) -> int:
        """Deliver one batch; return how many of its events the receiver rejected.

        :param time_left: seconds until the shutdown deadline (finish or fail by then), or ``None``.
        :raises RetryableSendError: worth another try (after ``retry_after`` when given).
        :raises RejectedSendError: refused for good; the batch is counted ``rejected``.
        """
        raise NotImplementedError

    def emit(self, batch: EventBatch) -> None:
        """One try, no retry (the worker retries); a partial rejection raises :class:`RejectedSendError`."""
        rejected = self.send(list(batch.events), None)
        if rejected:
            raise RejectedSendError(f"the receiver rejected {rejected} of {len(batch)} events")

    def make_worker(self) -> EmitterWorker:
        """A :class:`DeliveryWorker` with this emitter's settings."""
        return DeliveryWorker(self)


@dataclass
class DeliveryStats(EmitterStats):
    """The counters of a :class:`DeliveryWorker` (``events_emitted`` counts events the receiver took).

    ``errors`` counts batches lost to a failure; failed tries that a retry
    made good are ``retries``.
    """

    retries: int = 0
    retry_exhausted: int = 0
    rejected: int = 0
    shutdown: int = 0
    last_success: float | None = None
    """Wall-clock time of the latest delivered batch."""
    failing_since: float | None = None
    """Monotonic time of the first failed try or lost batch since the latest success (``None``: none)."""

    @property
    def drops_by_cause(self) -> dict[str, int]:
        """Events lost, by every reason in :data:`DROP_REASONS`."""
        return {"queue_full": self.queue_dropped, "rate_limited": self.rate_dropped,
                "retry_exhausted": self.retry_exhausted, "rejected": self.rejected, "shutdown": self.shutdown,
                "sink_error": self.sink_dropped}


_STOP = object()


class DeliveryWorker(EmitterWorker):
    """Runs a :class:`DeliveryEmitter`: bounded queue, batcher and bounded retry on its own thread.

    :param clock: monotonic seconds; :param sleep: wait up to N seconds (returns early when a stop is
        requested); :param draw: a random number in [0, 1) for the jitter. Tests pass fake ones and call
        :meth:`deliver` directly.
    """

    stats: DeliveryStats

    def __init__(self, emitter: DeliveryEmitter, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], object] | None = None,
                 draw: Callable[[], float] = random.random) -> None:
        self.stats = DeliveryStats()
        settings = emitter.settings
        super().__init__(emitter, max_batches=settings.queue_events, max_events=settings.queue_events,
                         max_bytes=settings.queue_bytes)
        self.sender = emitter
        self.settings = settings
        self.policy = settings.retry
        self._clock = clock
        self._stop_requested = threading.Event()
        self._sleep = sleep if sleep is not None else self._nap
        self._draw = draw
        self._deadline: float | None = None
        self._pending_events = 0

    # ---- the drain thread's side: EmitterWorker.submit / _enqueue --------------------------------------

    def as_dict(self) -> dict[str, object]:
        """:meth:`EmitterWorker.as_dict` plus sent, retries, last success and how long sends have failed."""
        data = super().as_dict()
        stats = self.stats
        failing = stats.failing_since
        queue_now = dict(data["queue"])  # type: ignore[call-overload]
        queue_now["pending"] = self._pending_events
        data.update({
            "sent": stats.events_emitted,
            "retries": stats.retries,
            "last_success": stats.last_success,
            "failing_for_s": None if failing is None else round(max(0.0, self._clock() - failing), 3),
            "unhealthy_after_s": self.settings.unhealthy_after,
            "queue": queue_now,
        })
        return data

    # ---- the worker thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        settings = self.settings
        pending: list[Event] = []
        pending_bytes = 0.0
        oldest = 0.0
        while True:
            timeout = None if not pending else max(0.0, oldest + settings.batch_age - time.monotonic())
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                item = None
            if item is None or item is _STOP:  # the batch is old enough, or the session stops: send it
                if pending:
                    self._pending_events = len(pending)
                    self.deliver(pending)
                    pending, pending_bytes = [], 0.0
                    self._pending_events = 0
                if item is _STOP:
                    return
                continue
            assert isinstance(item, EventBatch)
            size = len(item.ndjson)
            with self._lock:
                self._batches -= 1
                self._events -= len(item)
                self._bytes -= size
            if self._past_deadline():
                self.stats.shutdown += len(item)
                continue
            per_event = size / max(1, len(item))
            events = item.events
            while events:
                if not pending:
                    oldest = time.monotonic()
                room = settings.batch_events - len(pending)
                if per_event > 0:
                    room = min(room, max(1, int((settings.batch_bytes - pending_bytes) / per_event)))
                pending.extend(events[:room])
                pending_bytes += per_event * len(events[:room])
                events = events[room:]
                self._pending_events = len(pending) + len(events)
                if len(pending) >= settings.batch_events or pending_bytes >= settings.batch_bytes:
                    self.deliver(pending)
                    pending, pending_bytes = [], 0.0
            self._pending_events = len(pending)

    def _nap(self, seconds: float) -> None:
        # Before a stop, a backoff ends early when the stop comes (to weigh it against the deadline).
        if self._stop_requested.is_set():
            time.sleep(seconds)
        else:
            self._stop_requested.wait(seconds)

    def _past_deadline(self) -> bool:
        deadline = self._deadline
        return deadline is not None and self._clock() >= deadline

    def deliver(self, events: list[Event]) -> str | None:
        """Send one batch with bounded retry, counting every event; return why it was lost, or ``None``.

        Runs on the worker thread (or in a test, with fake clock and sleep).
        """
        stats, policy = self.stats, self.policy
        started = self._clock()
        attempts = 0
        while True:
            if self._past_deadline():
                return self._lose(events, "shutdown", None)
            deadline = self._deadline
            time_left = None if deadline is None else max(0.0, deadline - self._clock())
            attempts += 1
            try:
                rejected = self.sender.send(events, time_left)
            except RetryableSendError as exc:
                now = self._clock()
                if stats.failing_since is None:
                    stats.failing_since = now
                stats.last_error = f"{type(exc).__name__}: {exc.one_line()}"
                delay = policy.next_delay(attempts, now - started, exc.retry_after, self._draw())
                if delay is None:
                    return self._lose(events, "retry_exhausted", exc)
                if not self._wait(now + delay):
                    return self._lose(events, "shutdown", exc)
                stats.retries += 1
                continue
            except RejectedSendError as exc:
                return self._lose(events, "rejected", exc)
            except Exception as exc:  # the emitter's own bug: isolate it, count it
                return self._lose(events, "sink_error", exc)
            rejected = max(0, min(int(rejected or 0), len(events)))
            stats.events_emitted += len(events) - rejected
            stats.last_success = time.time()
            stats.failing_since = None
            if rejected:
                stats.rejected += rejected
                stats.errors += 1
                stats.last_error = f"the receiver rejected {rejected} of {len(events)} events"
                return "rejected"
            return None

    def _wait(self, until: float) -> bool:
        """Wait until ``until`` (monotonic); ``False`` when the shutdown deadline comes first."""
        while True:
            now = self._clock()
            deadline = self._deadline
            if deadline is not None and until > deadline:
                return False
            if now >= until:
                return True
            self._sleep(until - now)

    def _lose(self, events: list[Event], reason: str, exc: BaseException | None) -> str:
        stats = self.stats
        count = len(events)
        if reason == "shutdown":
            stats.shutdown += count
        elif reason == "retry_exhausted":
            stats.retry_exhausted += count
        elif reason == "rejected":
            stats.rejected += count
        else:
            stats.sink_dropped += count
        if reason != "shutdown" and stats.failing_since is None:  # failing until a batch gets through
            stats.failing_since = self._clock()
        if exc is not None:
            stats.errors += 1
            stats.last_error = f"{type(exc).__name__}: {exc}"
            if stats.errors == 1 or reason == "sink_error":
                log.error("emitter %s lost %d events (%s): %s", self.emitter.name, count, reason, stats.last_error)
        return reason

    def stop(self, drain_seconds: float | None = None) -> None:
        """Keep delivering what is queued for up to ``drain_seconds`` (default
        :data:`DEFAULT_DRAIN_SECONDS`), then count what is left as ``shutdown``; close the emitter."""
        if not self._started:
            return
        seconds = DEFAULT_DRAIN_SECONDS if drain_seconds is None else drain_seconds
        self._deadline = self._clock() + seconds
        self._stop_requested.set()
        self._queue.put(_STOP)
        self._thread.join(seconds + 30.0)  # send() is given the time left; this bounds a sender that ignores it
        if self._thread.is_alive():
            log.error("emitter %s did not stop within %gs of its drain deadline", self.emitter.name, 30.0)
        self._close_emitter()
