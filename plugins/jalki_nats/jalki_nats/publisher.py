"""Publishing batches of events to NATS with nats-py, from one thread that owns an asyncio loop.

nats-py is asyncio; the emitter's sender thread is not. :class:`NatsPublisher`
makes its own event loop and runs it (``run_until_complete``) only inside its
calls, all from one thread: the emitter's worker. The ring-buffer drain never
runs it.

Delivery is confirmed per batch:

- core NATS: every event is published, then one flush (PING/PONG) confirms
  that the server processed them all. A flush that times out, or a connection
  lost while publishing, leaves the batch unconfirmed: it is handed back for
  retry (on a fresh connection) and counted as lost when the retries run out.
  Core NATS cannot tell whether a server that answered too late had the
  batch, so such a retry may deliver an event twice (at least once, as an
  HTTP timeout in OTLP).
- JetStream: every event is published with a ``Nats-Msg-Id`` (the event's id)
  and its acknowledgement awaited. Events not acknowledged in time, or refused
  with a retryable status, are handed back for retry; a resend is safe
  because the stream drops a duplicate id within its duplicate window.

The client never reconnects by itself (``allow_reconnect=False``): nats-py
would otherwise hold publishes in its buffer across a reconnect and send
them later, outside any confirmation. A lost connection is closed, and the
next batch connects afresh. Its pending buffer is capped (``pending_bytes``).
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js.client import JetStreamContext

from jalki_core.errors import EmitterError

T = TypeVar("T")

DEFAULT_TIMEOUT = 5.0
"""Seconds to wait for a connection, a flush (core NATS) or a batch's acknowledgements (JetStream)."""
DEFAULT_PENDING_BYTES = 8 << 20
"""nats-py's pending (outbound) buffer cap: a batch larger than this is written out in parts."""
PROBE_AFTER_IDLE = 1.0
"""Seconds without a call after which a batch first checks that the connection still answers.

The loop runs only inside calls, so a server that closed the connection
meanwhile is noticed here, before any event is written to a dead socket."""
CLOSE_TIMEOUT = 2.0
MSG_ID_HEADER = "Nats-Msg-Id"
RETRYABLE_API_CODES = frozenset({408, 429, 503, 504})
"""JetStream API error codes worth a retry (timeouts, no stream leader or storage yet, overload)."""


class NatsUnavailable(EmitterError):
    """No connection to the NATS server: nothing of the batch was sent (safe to retry)."""


@dataclass
class PublishResult:
    """What became of one try at a list of messages, by the messages' positions in that list."""

    delivered: list[int] = field(default_factory=list)
    """Confirmed: the flush after them answered (core NATS), or the stream acknowledged them (JetStream)."""
    retry: list[int] = field(default_factory=list)
    """Not confirmed, worth another try (no connection, a failed flush, no acknowledgement in time, a
    retryable JetStream error)."""
    rejected: list[int] = field(default_factory=list)
    """Refused for good: larger than the server's max payload, or a JetStream error a retry cannot fix."""
    error: str | None = None
    """The first failure's text, if any."""
    retry_after: float | None = None
    """Seconds the server asked to wait (JetStream 429), if it did."""


@dataclass(frozen=True)
class NatsSettings:
    """How to reach the server and publish.

    :param url: ``nats://HOST:PORT`` (or ``tls://``), credentials included.
    :param shown: the URL as messages name it (no credentials).
    :param jetstream: publish with acknowledgements (the subjects must be bound to a stream).
    :param stream: with ``jetstream``: the stream expected to store the events (the server refuses others).
    :param timeout: seconds for connecting, a flush, or a batch's acknowledgements.
    :param pending_bytes: nats-py's outbound buffer cap.
    """

    url: str
    shown: str = ""
    jetstream: bool = False
    stream: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    pending_bytes: int = DEFAULT_PENDING_BYTES


class NatsPublisher:
    """Publishes batches of (subject, payload, msg_id) from one thread, on a loop it owns.

    Every method must be called from the same thread (the first caller's).
    """

    def __init__(self, settings: NatsSettings) -> None:
        self.settings = settings
        self.connects = 0
        """Connections made (the first, then one per reconnect)."""
        self.last_error: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: int | None = None
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self._max_payload = 0
        self._last_call = 0.0

    # -- the loop ------------------------------------------------------------------------------------------

    def _run(self, work: Callable[[], Awaitable[T]]) -> T:
        me = threading.get_ident()
        if self._loop is None:
            self._loop, self._thread = asyncio.new_event_loop(), me
        elif self._thread != me:
            raise RuntimeError("NatsPublisher used from a second thread; its loop belongs to the first")
        try:
            return self._loop.run_until_complete(work())
        finally:
            self._last_call = time.monotonic()

    # -- connection ----------------------------------------------------------------------------------------

    async def _error_cb(self, exc: Exception) -> None:
        self.last_error = _text(exc)

    async def _connection(self, wait: float) -> NatsClient:
        """The open connection, or a new one.

        :raises NatsUnavailable: the server did not answer within ``wait`` seconds.
        """
        nc = self._nc
        if nc is not None and nc.is_connected and time.monotonic() - self._last_call >= PROBE_AFTER_IDLE:
            try:  # the loop slept since the last call: does the server still answer?
                await nc.flush(timeout=wait)  # type: ignore[arg-type]  # nats-py takes float seconds
            except Exception:
                await self._discard()
                nc = None
        if nc is not None and nc.is_connected:
            return nc
        if nc is not None:
            await self._discard()
        nc = NatsClient()
        self.last_error = None  # the refused tries report here (error_cb) for the message below
        try:
            # nats-py tries a server max_reconnect_attempts + 1 times even for the first connect: two quick
            # tries here; the delivery core's backoff spaces the next ones
            await asyncio.wait_for(nc.connect(
                servers=[self.settings.url], name="jalki", allow_reconnect=False, max_reconnect_attempts=1,
                reconnect_time_wait=0, connect_timeout=max(1, math.ceil(wait)),
                pending_size=self.settings.pending_bytes, flush_timeout=self.settings.timeout,
                error_cb=self._error_cb,
            ), wait)
        except Exception as exc:
            text = self.last_error if isinstance(exc, nats.errors.NoServersError) and self.last_error else _text(exc)
            self.last_error = f"cannot connect to {self.settings.shown or 'the NATS server'}: {text}"
            try:
                await asyncio.wait_for(nc.close(), CLOSE_TIMEOUT)
            except Exception:
                pass
            raise NatsUnavailable(self.last_error) from exc
        self.connects += 1
        self._nc, self._max_payload = nc, nc.max_payload
        self._js = nc.jetstream(timeout=self.settings.timeout) if self.settings.jetstream else None
        return nc

    async def _discard(self) -> None:
        """Close the connection (bounded in time) so the next batch starts on a fresh one."""
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None:
            try:
                await asyncio.wait_for(nc.close(), CLOSE_TIMEOUT)
            except Exception:
                pass

    # -- publishing ----------------------------------------------------------------------------------------

    def publish(self, messages: Sequence[tuple[str, bytes, str]], timeout: float | None = None) -> PublishResult:
        """Publish ``(subject, payload, msg_id)`` messages and confirm them (one flush, or acknowledgements).

        :param timeout: seconds for this try (default: the settings' timeout).
        :raises NatsUnavailable: no connection could be made; nothing was sent.
        """
        wait = self.settings.timeout if timeout is None else max(0.05, min(timeout, self.settings.timeout))
        if self.settings.jetstream:
            return self._run(lambda: self._publish_jetstream(messages, wait))
        return self._run(lambda: self._publish_core(messages, wait))

    def _split_too_large(self, messages: Sequence[tuple[str, bytes, str]], result: PublishResult) -> list[int]:
        """The positions that fit the server's max payload; the others go to ``result.rejected``."""
        limit = self._max_payload
        fitting = []
        for position, (_, payload, _) in enumerate(messages):
            if limit and len(payload) > limit:
                result.rejected.append(position)
            else:
                fitting.append(position)
        if result.rejected:
            result.error = (f"{len(result.rejected)} events larger than the server's max payload "
                            f"({limit} bytes)")
        return fitting

    async def _publish_core(self, messages: Sequence[tuple[str, bytes, str]], wait: float) -> PublishResult:
        nc = await self._connection(wait)
        result = PublishResult()
        fitting = self._split_too_large(messages, result)
        try:
            for position in fitting:
                subject, payload, _ = messages[position]
                await nc.publish(subject, payload)
            if fitting:
                await nc.flush(timeout=wait)  # type: ignore[arg-type]  # nats-py takes float seconds
        except Exception as exc:  # the flush timed out or the connection went: none of them is confirmed
            self.last_error = result.error = f"publish not confirmed: {_text(exc)}"
            await self._discard()
            result.retry = fitting
            return result
        result.delivered = fitting
        return result

    async def _publish_jetstream(self, messages: Sequence[tuple[str, bytes, str]], wait: float) -> PublishResult:
        await self._connection(wait)
        js = self._js
        assert js is not None
        result = PublishResult()
        fitting = self._split_too_large(messages, result)
        stream = self.settings.stream
        # One request per event, all in flight at once, each awaiting its own acknowledgement. (Not
        # publish_async: nats-py 2.x leaves its future unresolved when the stream answers an error.)
        answers = await asyncio.gather(*(
            js.publish(messages[position][0], messages[position][1], timeout=wait, stream=stream,
                       headers={MSG_ID_HEADER: messages[position][2]})
            for position in fitting
        ), return_exceptions=True)
        for position, answer in zip(fitting, answers, strict=True):
            if not isinstance(answer, BaseException):
                result.delivered.append(position)
            elif _retryable_js(answer):
                result.retry.append(position)
                result.error = result.error or _text(answer)
                if getattr(answer, "code", None) == 429:
                    result.retry_after = 1.0
            else:
                result.rejected.append(position)
                result.error = result.error or _text(answer)
        if any(isinstance(answer, nats.errors.ConnectionClosedError) for answer in answers):
            await self._discard()
        if result.error:
            self.last_error = result.error
        return result

    def close(self) -> None:
        """Close the connection and the loop.

        Called after the publishing thread has ended (at shutdown), from any thread but the one
        draining rings: the close runs on a short-lived thread of its own.
        """
        loop = self._loop
        if loop is None or loop.is_running():
            return

        def close_here() -> None:
            try:
                loop.run_until_complete(self._discard())
            finally:
                loop.close()

        closer = threading.Thread(target=close_here, name="jalki-emitter-nats-close", daemon=True)
        closer.start()
        closer.join(CLOSE_TIMEOUT + 1.0)
        self._loop = None


def _retryable_js(exc: BaseException) -> bool:
    if isinstance(exc, nats.js.errors.APIError):
        return exc.code in RETRYABLE_API_CODES
    # no stream answered (503 no responders: a restarting server), timeouts, a lost connection
    return isinstance(exc, nats.js.errors.NoStreamResponseError | nats.errors.Error | asyncio.TimeoutError)


def _text(exc: BaseException) -> str:
    message = str(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
