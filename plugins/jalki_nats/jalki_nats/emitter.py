"""The ``nats`` emitter: each event as JSON on ``<prefix>.<cluster>.<node>.<type>``.

``--emit nats:nats://HOST:PORT[,key=value...]``; its own keys:

- ``subject_prefix=A.B`` — the first subject levels (default ``jalki``);
- ``jetstream=true`` — publish with acknowledgements (the subjects must be bound to a stream);
- ``stream=NAME`` — with ``jetstream=true`` only: the stream expected to store them;
- ``timeout=5s`` — connecting, a flush, or a batch's acknowledgements;
- ``pending_bytes=N`` — nats-py's outbound buffer cap.

The delivery core's keys (``batch_events``, ``max_attempts``, ``max_elapsed``…,
:class:`jalki_core.emitters.delivery.DeliverySettings`) and the shared
``types``/``min_severity``/``rate`` apply as to any delivery emitter.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass

import orjson

from jalki_core.emitters.delivery import DeliveryEmitter, DeliverySettings, parse_seconds
from jalki_core.emitters.selection import split_argument
from jalki_core.errors import RejectedSendError, RetryableSendError, UsageError
from jalki_core.events import Event
from jalki_nats.publisher import DEFAULT_PENDING_BYTES, DEFAULT_TIMEOUT, NatsPublisher, NatsSettings, NatsUnavailable
from jalki_nats.subjects import DEFAULT_PREFIX, SubjectMaker, check_prefix

SCHEMES = ("nats", "tls")
DEFAULT_PORT = 4222
NATS_KEYS = ("subject_prefix", "jetstream", "stream", "timeout", "pending_bytes")
_USAGE = "e.g. --emit nats:nats://127.0.0.1:4222,subject_prefix=jalki"


@dataclass
class _Progress:
    """What earlier tries of the batch being retried achieved (the worker resends the same list)."""

    batch: list[Event]
    done: set[int]
    rejected: int = 0


class NatsEmitter(DeliveryEmitter):
    """Publishes events to NATS (core NATS, or JetStream with acknowledgements), one message per event.

    :param nats: server, mode and timeouts.
    :param prefix: the subjects' first levels.
    :param settings: batching, queue and retry (the delivery core's).
    """

    name = "nats"

    def __init__(self, nats: NatsSettings, *, prefix: str = DEFAULT_PREFIX,
                 settings: DeliverySettings | None = None) -> None:
        super().__init__(settings)
        self.nats = nats
        self.subject = SubjectMaker(prefix)
        self.publisher = NatsPublisher(nats)
        self._progress: _Progress | None = None

    def send(self, events: list[Event], time_left: float | None) -> int:
        """Publish the batch and confirm it; return how many events the server refused for good.

        A retry of the same batch sends only the events not yet confirmed (JetStream also drops a
        duplicate by its ``Nats-Msg-Id``).

        :raises RetryableSendError: no connection, or some events unconfirmed (the retry resends only those).
        """
        progress = self._progress
        if progress is None or progress.batch is not events:
            progress = self._progress = _Progress(events, set())
        todo = [index for index in range(len(events)) if index not in progress.done]
        dumps, subject = orjson.dumps, self.subject
        messages = []
        for index in todo:
            event = events[index]
            try:
                payload = dumps(event)
            except TypeError:  # a value JSON cannot hold (a decoder's bug): write it as text, lose nothing
                payload = dumps(event, default=str)
            messages.append((subject(event), payload, str(event.get("id") or "")))
        try:
            result = self.publisher.publish(messages, time_left)
        except NatsUnavailable as exc:
            raise RetryableSendError(str(exc)) from exc
        for position in result.delivered:
            progress.done.add(todo[position])
        for position in result.rejected:
            progress.done.add(todo[position])
        progress.rejected += len(result.rejected)
        if result.retry:
            raise RetryableSendError(
                f"{len(result.retry)} of {len(todo)} events not confirmed: {result.error}",
                retry_after=result.retry_after,
            )
        self._progress = None
        if progress.rejected == len(events):
            raise RejectedSendError(f"the NATS server refused every event of the batch: {result.error}")
        return progress.rejected

    def close(self) -> None:
        """Close the connection (on a thread of its own, never the caller's drain thread)."""
        self.publisher.close()


def _redacted(url: urllib.parse.SplitResult) -> str:
    """The URL without its user information (a password or token must not reach logs or summaries)."""
    host = url.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return f"{url.scheme}://{host}:{url.port or DEFAULT_PORT}"


def parse_url(text: str | None) -> tuple[str, str]:
    """``nats://HOST[:PORT]`` → (the URL to connect to, the same without credentials for messages).

    :raises UsageError: no URL, another scheme, no host, a bad port, a path.
    """
    if not text:
        raise UsageError("the nats emitter needs a server URL", hint=_USAGE)
    url = urllib.parse.urlsplit(text)
    try:
        port = url.port
    except ValueError:
        raise UsageError(f"bad port in NATS URL {text!r}", hint=_USAGE) from None
    if url.scheme not in SCHEMES or not url.hostname or url.path not in ("", "/") or url.query or url.fragment:
        raise UsageError(f"bad NATS URL {text!r}: give nats://HOST:PORT (or tls://HOST:PORT)", hint=_USAGE)
    full = text if port else text.rstrip("/") + f":{DEFAULT_PORT}"
    return full, _redacted(url)


def _flag(key: str, value: str) -> bool:
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise UsageError(f"bad --emit {key}={value!r}: give true or false", hint=f"e.g. {key}=true")


def parse_nats_argument(argument: str | None) -> NatsEmitter:
    """Build a :class:`NatsEmitter` from ``nats://HOST:PORT[,key=value...]`` (see the module's keys).

    :raises UsageError: a bad URL, key or value; ``stream=`` without ``jetstream=true``.
    """
    target, options = split_argument(argument)
    url, shown = parse_url(target)
    settings, rest = DeliverySettings.take(options)
    prefix, jetstream, stream = DEFAULT_PREFIX, False, None
    timeout, pending = DEFAULT_TIMEOUT, DEFAULT_PENDING_BYTES
    for key, value in rest:
        if key == "subject_prefix":
            prefix = check_prefix(value)
        elif key == "jetstream":
            jetstream = _flag(key, value)
        elif key == "stream":
            if not value or any(c in value for c in " \t.*>"):
                raise UsageError(f"bad --emit stream={value!r}: a JetStream stream name has no spaces, '.', '*' "
                                 "or '>'", hint="e.g. stream=JALKI")
            stream = value
        elif key == "timeout":
            timeout = parse_seconds(value, key)
        elif key == "pending_bytes":
            if not value.isdigit() or int(value) <= 0:
                raise UsageError(f"bad --emit pending_bytes={value!r}: give a positive number of bytes",
                                 hint="e.g. pending_bytes=8388608")
            pending = int(value)
        else:
            raise UsageError(
                f"unknown nats emitter option {key!r}",
                hint=f"its options are {', '.join(NATS_KEYS)}, the delivery keys "
                     f"({', '.join(DeliverySettings.KEYS)}) and types, skip_types, min_severity, rate",
            )
    if stream is not None and not jetstream:
        raise UsageError("--emit nats: stream= applies only with jetstream=true",
                         hint="add jetstream=true, or drop stream=")
    nats = NatsSettings(url=url, shown=shown, jetstream=jetstream, stream=stream, timeout=timeout,
                        pending_bytes=pending)
    return NatsEmitter(nats, prefix=prefix, settings=settings)
