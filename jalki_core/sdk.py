"""The jalki Python SDK: typed clients of the daemon's local API (``specs/protocol.md``), sync and async.

::

    from jalki_core.sdk import Client, Gap

    with Client() as jalki:                  # socket=, else $JALKI_SOCKET, else /run/jalki/jalki.sock
        jalki.deploy("tcp_connect", ttl=600)
        for item in jalki.stream(probe="tcp_connect", dst_port=5432, seconds=10):
            if isinstance(item, Gap):        # events the daemon lost for this stream, counted
                print("lost", item.count)
            else:
                print(item.seq, item.type, item.process_data)

    async with AsyncClient() as jalki:       # the same methods, awaited; stream() is an async iterator
        status = await jalki.status()

Results are frozen dataclasses of the keys this SDK knows; each is also a read-only mapping over the full
protocol object (``status["probes"]``, ``event.raw``), so keys a newer daemon adds are never out of reach.
Every event carries its ``seq``, the daemon's monotonic sequence number: pass the last one seen as
``stream(since=…)`` to resume after a reconnect, or as ``events(after=…)`` to page forward.

Errors are those of :mod:`jalki_core.errors`: :class:`DaemonUnavailable` (nothing answers at the socket, or
the connection was lost), :class:`NotAllowed` (the socket is not ours to use), :class:`DaemonTimeout` (no
reply within the timeout), :class:`DaemonStopped` (the daemon ended a stream by shutting down),
:class:`RequestError` for an error reply (``.code`` is the protocol's code; :class:`ProbeNotFound` for
``unknown_probe``).

:meth:`Client.find` and :meth:`Client.explain` are answered in this process from the knowledge base the
package ships (the daemon has the same one; it needs no kernel), so they work without a daemon too.

Both clients share one sans-IO core (:class:`_Session`): it frames requests, splits the bytes read into
frames, routes replies by ``id`` and pushes by subscription, and turns them into results, stream items or
typed errors; :class:`Client` and :class:`AsyncClient` only move bytes.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import socket as socket_module
import struct
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from jalki_core.daemon.protocol import (
    MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    EventFilter,
    parse_k8s_fields,
    request_error,
    socket_path_from_env,
)
from jalki_core.errors import (
    DaemonError,
    DaemonStopped,
    DaemonTimeout,
    DaemonUnavailable,
    NotAllowed,
    ProbeNotFound,
    ProtocolError,
    RequestError,
)

if TYPE_CHECKING:
    from jalki_core.kb import Explanation, Match

__all__ = [
    "Answer", "AsyncClient", "Client", "DaemonStopped", "DaemonTimeout", "DaemonUnavailable", "Deployment",
    "Event", "Finding", "Gap", "NotAllowed", "ProbeInfo", "ProbeNotFound", "RequestError", "Status",
    "connect_unix",
]

DEFAULT_TIMEOUT_S = 30.0
"""How long a request waits for its reply, unless the client or the call says otherwise."""

ASK_EXTRA_S = 60.0
"""An ``ask`` waits for its reply this long beyond the seconds it observes (``specs/protocol.md``)."""

_READ_BYTES = 256 << 10


# ---- typed results -------------------------------------------------------------------------------------------

class _Raw(Mapping[str, Any]):
    """A typed result that is also a read-only mapping over the protocol object it was made from."""

    raw: dict[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.raw[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.raw)

    def __len__(self) -> int:
        return len(self.raw)

    def __eq__(self, other: object) -> bool:
        # equal when the protocol objects are: an event equals the dict a CLI printed for it
        if isinstance(other, _Raw):
            return type(self) is type(other) and self.raw == other.raw
        if isinstance(other, Mapping):
            return self.raw == dict(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True, eq=False)
class Event(_Raw):
    """One event (``specs/event.schema.json``) with the daemon's sequence number ``seq``."""

    seq: int
    id: str
    timestamp: str
    source: str
    type: str
    severity: str
    outcome: str | None
    process_data: dict[str, Any] | None
    network_data: dict[str, Any] | None
    error: dict[str, Any] | None
    data: dict[str, Any]
    raw: dict[str, Any] = field(repr=False)

    @property
    def probe(self) -> str:
        """The probe that emitted it (``source`` without ``jalki/``)."""
        return self.source.removeprefix("jalki/")

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Event:
        """The event of a reply or push."""
        return cls(seq=int(raw.get("seq") or 0), id=raw.get("id", ""), timestamp=raw.get("timestamp", ""),
                   source=raw.get("source", ""), type=raw.get("type", ""), severity=raw.get("severity", ""),
                   outcome=raw.get("outcome"), process_data=raw.get("process_data"),
                   network_data=raw.get("network_data"), error=raw.get("error"), data=raw.get("data") or {},
                   raw=raw)


@dataclass(frozen=True)
class Gap:
    """Events a stream did not deliver, counted (``specs/protocol.md`` §8).

    :param count: how many. ``reason`` ``"slow"``: matching events the daemon dropped because this client read
        too slowly (exact; the daemon's ``dropped`` figure of the subscription). ``reason`` ``"not_held"``: a
        resume whose cursor is older than what the daemon still holds: at most ``count`` events after the
        cursor are gone (events of any probe, so not all of them need have matched).
    :param since_seq: the lost events came after this sequence number (the last event delivered, or the resume
        cursor); ``None`` when the stream delivered nothing before.
    """

    count: int
    since_seq: int | None
    reason: str = "slow"


@dataclass(frozen=True, eq=False)
class Deployment(_Raw):
    """A deployed probe as ``status``, ``deploy`` and ``undeploy`` describe it (``specs/protocol.md`` §6)."""

    probe: str
    attach: str | None
    since: str
    ttl_remaining_s: float | None
    sample: float
    filters: dict[str, int]
    events: int
    drops: dict[str, int]
    derive_errors: int
    run_time_ns: int
    run_count: int
    failed_rungs: tuple[str, ...]
    changed: bool | None
    """``deploy`` only: whether the probe was (re-)attached; ``None`` elsewhere."""
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Deployment:
        """The deployment of a reply."""
        return cls(probe=raw["probe"], attach=raw.get("attach"), since=raw.get("since", ""),
                   ttl_remaining_s=raw.get("ttl_remaining_s"), sample=raw.get("sample", 1.0),
                   filters=raw.get("filters") or {}, events=raw.get("events", 0), drops=raw.get("drops") or {},
                   derive_errors=raw.get("derive_errors", 0), run_time_ns=raw.get("run_time_ns", 0),
                   run_count=raw.get("run_count", 0), failed_rungs=tuple(raw.get("failed_rungs") or ()),
                   changed=raw.get("changed"), raw=raw)


@dataclass(frozen=True, eq=False)
class Status(_Raw):
    """The daemon's ``status`` (``specs/protocol.md`` §7)."""

    version: str
    pid: int
    started: str
    uptime_s: float
    socket: str
    ready: bool
    probes: dict[str, Deployment]
    expired: tuple[str, ...]
    expired_total: int
    history: dict[str, Any] | None
    subscribers: dict[str, Any]
    connections: dict[str, Any]
    seq: int
    """The latest sequence number the daemon assigned (0 before its first event)."""
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Status:
        """The status of a reply."""
        return cls(version=raw.get("version", ""), pid=raw.get("pid", 0), started=raw.get("started", ""),
                   uptime_s=raw.get("uptime_s", 0.0), socket=raw.get("socket", ""), ready=bool(raw.get("ready")),
                   probes={name: Deployment.from_json(d) for name, d in (raw.get("probes") or {}).items()},
                   expired=tuple(raw.get("expired") or ()), expired_total=raw.get("expired_total", 0),
                   history=raw.get("history"), subscribers=raw.get("subscribers") or {},
                   connections=raw.get("connections") or {}, seq=raw.get("seq", 0), raw=raw)


@dataclass(frozen=True, eq=False)
class ProbeInfo(_Raw):
    """An installed probe (``probes``)."""

    name: str
    observes: str
    event_types: tuple[str, ...]
    ladder: tuple[str, ...]
    plugin: str
    deployed: bool
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ProbeInfo:
        """The probe of a ``probes`` reply."""
        return cls(name=raw["name"], observes=raw.get("observes", ""),
                   event_types=tuple(raw.get("event_types") or ()), ladder=tuple(raw.get("ladder") or ()),
                   plugin=raw.get("plugin", ""), deployed=bool(raw.get("deployed")), raw=raw)


@dataclass(frozen=True, eq=False)
class Finding(_Raw):
    """One finding of an answer (``specs/ask.schema.json``); ``evidence`` names its events' ids."""

    entry: str
    interpretation: str
    severity: str
    conclusion: str
    action: str
    errno: str | None
    events: int
    detail: str
    evidence: tuple[dict[str, Any], ...]
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Finding:
        """The finding of an answer."""
        return cls(entry=raw["entry"], interpretation=raw["interpretation"], severity=raw["severity"],
                   conclusion=raw.get("conclusion", ""), action=raw.get("action", ""), errno=raw.get("errno"),
                   events=raw.get("events", 0), detail=raw.get("detail", ""),
                   evidence=tuple(raw.get("evidence") or ()), raw=raw)


@dataclass(frozen=True, eq=False)
class Answer(_Raw):
    """The answer to a question (``specs/ask.schema.json``)."""

    question: str
    mode: str
    via: str | None
    answer: str
    problem_found: bool
    seconds: float
    findings: tuple[Finding, ...]
    notes: tuple[str, ...]
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Answer:
        """The answer of an ``ask`` reply."""
        return cls(question=raw.get("question", ""), mode=raw.get("mode", ""), via=raw.get("via"),
                   answer=raw.get("answer", ""), problem_found=bool(raw.get("problem_found")),
                   seconds=raw.get("seconds", 0.0),
                   findings=tuple(Finding.from_json(f) for f in raw.get("findings") or ()),
                   notes=tuple(raw.get("notes") or ()), raw=raw)


# ---- the sans-IO core ----------------------------------------------------------------------------------------

def _filters(probe: str | None, event_type: str | None, pid: int | None, command: str | None, src_ip: str | None,
             dst_ip: str | None, src_port: int | None, dst_port: int | None, k8s: Mapping[str, str | None],
             ) -> dict[str, Any]:
    return {"probe": probe, "event_type": event_type, "pid": pid, "command": command, "src_ip": src_ip,
            "dst_ip": dst_ip, "src_port": src_port, "dst_port": dst_port, **k8s}


def _k8s(pod: str | None, namespace: str | None, container: str | None, workload: str | None) -> dict[str, str | None]:
    """The Kubernetes filters (``--enrich k8s`` events only): the daemon checks the names, ``bad_request`` if
    no pod could have them."""
    return {"pod": pod, "namespace": namespace, "container": container, "workload": workload}


def _k8s_check(pod: str | None, namespace: str | None, container: str | None,
               workload: str | None) -> EventFilter | None:
    """The Kubernetes filters as the client applies them again to what comes back (``None`` when none is set).

    A daemon older than these filters ignores the fields (unknown fields are ignored) and answers with
    every event: checked here too, the result is right against any daemon, at the cost of a few dict
    lookups per event. A name no pod could have is refused here as the daemon refuses it.

    :raises RequestError: ``bad_request``, the daemon's message.
    """
    if pod is None and namespace is None and container is None and workload is None:
        return None
    try:
        return EventFilter(**parse_k8s_fields(_k8s(pod, namespace, container, workload)))
    except ProtocolError as exc:
        raise request_error(exc.code, exc.message) from exc


def _listed(result: Mapping[str, Any], check: EventFilter | None) -> list[Event]:
    """The events of a ``get_events``/``recent`` reply that pass ``check`` (see :func:`_k8s_check`)."""
    return [Event.from_json(e) for e in result["events"] if check is None or check.matches_k8s(e)]


class _Session:
    """One connection's protocol state, without I/O: request frames out, bytes in, results and pushes routed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._buffer = bytearray()
        self._ids = itertools.count(1)
        self._waiting: set[int] = set()
        self._subscribing: set[int] = set()  # ids of the awaited ``subscribe`` requests
        self._replies: dict[int, dict[str, Any]] = {}
        self._pushes: dict[int, deque[dict[str, Any]]] = {}
        self._refused: str | None = None
        self.closed = False

    def frame(self, kind: str, fields: Mapping[str, Any]) -> tuple[int, bytes]:
        """A request frame (fields that are ``None`` left out) and its id."""
        request_id = next(self._ids)
        self._waiting.add(request_id)
        if kind == "subscribe":
            self._subscribing.add(request_id)
        message = {"v": PROTOCOL_VERSION, "id": request_id, "type": kind,
                   **{k: v for k, v in fields.items() if v is not None}}
        return request_id, orjson.dumps(message) + b"\n"

    def feed(self, data: bytes) -> None:
        """Bytes read from the socket (``b""``: the daemon closed the connection)."""
        if not data:
            self.closed = True
            return
        self._buffer += data
        start = 0
        while (end := self._buffer.find(b"\n", start)) >= 0:
            line = bytes(self._buffer[start:end])
            start = end + 1
            if line.strip():
                self._route(orjson.loads(line))
        del self._buffer[:start]
        if len(self._buffer) >= MAX_FRAME_BYTES:
            raise DaemonUnavailable(f"the jalki daemon at {self.path} sent a frame over {MAX_FRAME_BYTES} bytes")

    def _route(self, message: dict[str, Any]) -> None:
        if "push" in message:
            queue = self._pushes.get(message.get("subscription"))  # type: ignore[arg-type]
            if queue is not None:
                queue.append(message)
            return
        request_id = message.get("id")
        if request_id in self._waiting:
            self._replies[request_id] = message
            if request_id in self._subscribing:
                # Keep this subscription's pushes from here on: its first ones may follow the reply in the
                # same read, and are routed before the caller has the reply to open the stream with.
                number = (message.get("result") or {}).get("subscription") if message.get("ok") else None
                if number is not None:
                    self._pushes.setdefault(number, deque())
        elif request_id is None and (message.get("error") or {}).get("code") == "limit_reached":
            # the daemon refused this connection (too many clients) and closed it
            self._refused = str(message["error"].get("message"))

    def result(self, request_id: int) -> tuple[bool, Any]:
        """``(True, result)`` once the reply of ``request_id`` is in, else ``(False, None)``.

        :raises RequestError: the daemon answered with an error.
        :raises DaemonUnavailable: the daemon refused or closed the connection.
        """
        message = self._replies.pop(request_id, None)
        if message is None:
            if self._refused is not None:
                raise DaemonUnavailable(f"the jalki daemon at {self.path} refused the connection: {self._refused}",
                                        hint="try again later")
            if self.closed:
                raise self.lost()
            return False, None
        self._waiting.discard(request_id)
        self._subscribing.discard(request_id)
        if not message.get("ok"):
            error = message.get("error") or {}
            raise request_error(str(error.get("code")), str(error.get("message")))
        return True, message.get("result")

    def abandon(self, request_id: int) -> None:
        """Forget a request whose reply is no longer awaited (it timed out)."""
        self._waiting.discard(request_id)
        message = self._replies.pop(request_id, None)
        if request_id in self._subscribing and message is not None and message.get("ok"):
            # a subscription nobody will read: keep none of its pushes
            number = (message.get("result") or {}).get("subscription")
            if number is not None:
                self._pushes.pop(number, None)
        self._subscribing.discard(request_id)

    def broken(self, exc: OSError) -> DaemonUnavailable:
        """The error of a connection that failed under a read or write."""
        return DaemonUnavailable(f"lost the jalki daemon at {self.path}: {exc.strerror or exc}")

    def lost(self) -> DaemonUnavailable:
        """The error of a connection the daemon closed."""
        return DaemonUnavailable(f"the jalki daemon at {self.path} closed the connection",
                                 hint="it may be shutting down (jalki status)")

    def timed_out(self, what: str) -> DaemonTimeout:
        """The error of a reply that did not come in time."""
        return DaemonTimeout(f"the jalki daemon at {self.path} did not answer {what} in time",
                             hint="is it overloaded? (jalki status), or pass a longer timeout")

    # ---- subscriptions ----

    def open_stream(self, subscription: int, check: EventFilter | None = None) -> _Stream:
        """The stream of ``subscription`` (its pushes are kept from its ``subscribe`` reply on); ``check``: the
        Kubernetes filters applied again to its events (see :func:`_k8s_check`)."""
        self._pushes.setdefault(subscription, deque())
        return _Stream(self, subscription, check)

    def close_stream(self, subscription: int) -> None:
        """Stop keeping them (after ``unsubscribe``)."""
        self._pushes.pop(subscription, None)


class _Stream:
    """One subscription's pushes turned into stream items: :class:`Event`, :class:`Gap`, or the end."""

    def __init__(self, session: _Session, subscription: int, check: EventFilter | None = None) -> None:
        self.session = session
        self.subscription = subscription
        self.check = check
        self.last_seq: int | None = None
        self.ended = False

    def next_item(self) -> Event | Gap | None:
        """The next item, or ``None`` when no push is waiting.

        :raises DaemonStopped: at the daemon's ``end`` push.
        :raises DaemonUnavailable: the connection was closed without one.
        """
        queue = self.session._pushes.get(self.subscription)
        while queue:
            message = queue.popleft()
            kind = message.get("push")
            if kind == "event":
                if self.check is not None and not self.check.matches_k8s(message["event"]):
                    continue  # an older daemon ignored the Kubernetes filters
                event = Event.from_json(message["event"])
                self.last_seq = event.seq
                return event
            if kind == "dropped":
                reason = message.get("reason", "slow")
                since = message.get("after", self.last_seq) if reason == "not_held" else self.last_seq
                return Gap(int(message.get("count", 0)), since, reason)
            if kind == "end":
                self.ended = True
                raise DaemonStopped(f"the jalki daemon at {self.session.path} stopped; the stream ended "
                                    f"({message.get('sent', 0)} events sent, {message.get('dropped', 0)} lost)",
                                    hint="start the daemon again, then resume the stream from the last seq")
        if self.session.closed:
            self.ended = True
            raise self.session.lost()
        return None


def _subscribe_fields(filters: dict[str, Any], since: int | None) -> dict[str, Any]:
    return {**filters, "since_seq": since}


# ---- connecting ----------------------------------------------------------------------------------------------

def connect_unix(path: Path, timeout: float | None) -> socket_module.socket:
    """A connected Unix stream socket to ``path``, its timeout set to ``timeout``.

    The connect itself blocks (bounded by ``SO_SNDTIMEO``, retried until ``timeout``): on a Unix socket a
    connect with a socket timeout set fails at once with ``EAGAIN`` when the listener's backlog is full,
    which would make a busy daemon look dead.

    :raises TimeoutError: no room in the backlog within ``timeout``.
    :raises OSError: anything else ``connect(2)`` says (``ENOENT``, ``ECONNREFUSED``, ``EACCES`` …).
    """
    sock = socket_module.socket(socket_module.AF_UNIX, socket_module.SOCK_STREAM)
    try:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(errno.ETIMEDOUT, "no room in the daemon's connection backlog")
                _set_send_timeout(sock, remaining)
            try:
                sock.connect(str(path))
                break
            except (BlockingIOError, InterruptedError):  # the send timeout ran out, or a signal: retry
                continue
        _set_send_timeout(sock, 0)
        sock.settimeout(timeout)
    except BaseException:
        sock.close()
        raise
    return sock


def _set_send_timeout(sock: socket_module.socket, seconds: float) -> None:
    whole = int(seconds)
    sock.setsockopt(socket_module.SOL_SOCKET, socket_module.SO_SNDTIMEO,
                    struct.pack("ll", whole, max(1 if whole == 0 and seconds > 0 else 0,
                                                 int((seconds - whole) * 1e6))))


def _connect(socket: str | Path | None, timeout: float | None) -> tuple[socket_module.socket, Path]:
    """Connect like the CLI: ``socket``, else ``$JALKI_SOCKET``, else the default path; errors typed."""
    target = socket_path_from_env(socket)
    try:
        return connect_unix(target, timeout), target
    except FileNotFoundError:
        raise DaemonUnavailable(f"no jalki daemon at {target}",
                                hint="start one with 'jalki serve', or point --socket/JALKI_SOCKET at its "
                                     "socket") from None
    except PermissionError:
        raise NotAllowed(f"not allowed to use the daemon socket {target}",
                         hint="run as root or as a member of the daemon's --socket-group") from None
    except TimeoutError:
        raise DaemonTimeout(f"the jalki daemon at {target} did not accept the connection in time",
                            hint="is it overloaded? (jalki status)") from None
    except OSError as exc:
        raise DaemonUnavailable(f"the jalki daemon at {target} does not answer: {exc.strerror or exc}",
                                hint="is it running? (jalki status)") from None


def _find(question: str, limit: int | None) -> list[Match]:
    from jalki_core.kb import find

    return find(question, limit=limit)


def _explain(entry: str, fields: Mapping[str, str] | Iterable[str]) -> Explanation:
    from jalki_core.kb import explain

    return explain(entry, fields)


def _deploy_fields(probe: str, ttl: float | None, sample: float | None, pid: int | None,
                   port: int | None) -> dict[str, Any]:
    return {"probe": probe, "ttl": ttl, "sample": sample, "pid": pid, "port": port}


def _listing(kind: str, filters: dict[str, Any], since: str | float | None, after: int | None,
             limit: int | None) -> tuple[str, dict[str, Any]]:
    return kind, {**filters, "since": since, "after_seq": after, "limit": limit}


# ---- the sync client -----------------------------------------------------------------------------------------

class Client:
    """A connection to the jalki daemon; requests block until their reply (or the timeout).

    :param socket: the daemon's socket; default ``$JALKI_SOCKET``, else ``/run/jalki/jalki.sock``.
    :param timeout: seconds a request waits for its reply (``None``: forever); ``ask`` waits its observation
        time plus :data:`ASK_EXTRA_S`.
    :raises DaemonUnavailable: nothing answers at the socket (:class:`NotAllowed`: not ours to use).
    """

    def __init__(self, socket: str | Path | None = None, *, timeout: float | None = DEFAULT_TIMEOUT_S) -> None:
        self._sock, self.path = _connect(socket, timeout)
        self.timeout = timeout
        self._session = _Session(self.path)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (its subscriptions end)."""
        self._sock.close()

    def _fill(self, deadline: float | None, what: str) -> bool:
        """Read what the daemon sent, waiting until ``deadline``; ``False`` when it passed."""
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            return False
        self._sock.settimeout(remaining)
        try:
            data = self._sock.recv(_READ_BYTES)
        except TimeoutError:
            return False
        except OSError as exc:
            raise self._session.broken(exc) from None
        self._session.feed(data)
        return True

    def request(self, kind: str, *, timeout: float | None = None, **fields: Any) -> Any:
        """Send one request of message type ``kind`` and return its raw ``result`` (the low-level call the typed
        methods use; fields that are ``None`` are left out).

        :raises RequestError: the daemon answered with an error.
        :raises DaemonTimeout: no reply within ``timeout`` (default: the client's).
        """
        request_id, frame = self._session.frame(kind, fields)
        wait = self.timeout if timeout is None else timeout
        deadline = None if wait is None else time.monotonic() + wait
        try:
            self._sock.settimeout(wait)
            self._sock.sendall(frame)
        except TimeoutError:
            self._session.abandon(request_id)
            raise self._session.timed_out(kind) from None
        except OSError as exc:
            raise self._session.broken(exc) from None
        while True:
            done, result = self._session.result(request_id)
            if done:
                return result
            if not self._fill(deadline, kind):
                self._session.abandon(request_id)
                raise self._session.timed_out(kind)

    # ---- typed requests ----

    def ping(self) -> dict[str, Any]:
        """``{"pong": true, "protocol": 1, "pid": …}``."""
        result: dict[str, Any] = self.request("ping")
        return result

    def status(self) -> Status:
        """Probes, emitters, history, subscribers, connections and the latest ``seq``."""
        return Status.from_json(self.request("status"))

    def probes(self) -> list[ProbeInfo]:
        """Every installed probe, and whether it is deployed."""
        return [ProbeInfo.from_json(p) for p in self.request("probes")["probes"]]

    def deploy(self, probe: str, *, ttl: float | None = None, sample: float | None = None, pid: int | None = None,
               port: int | None = None) -> Deployment:
        """Attach ``probe`` at run time (idempotent; ``changed`` says whether it was (re-)attached).

        :raises ProbeNotFound: no installed probe of that name.
        """
        return Deployment.from_json(self.request("deploy", **_deploy_fields(probe, ttl, sample, pid, port)))

    def undeploy(self, probe: str) -> Deployment:
        """Detach ``probe``; its final figures. :raises RequestError: ``not_attached``."""
        return Deployment.from_json(self.request("undeploy", probe=probe))

    def events(self, *, probe: str | None = None, event_type: str | None = None, pid: int | None = None,
               command: str | None = None, src_ip: str | None = None, dst_ip: str | None = None,
               src_port: int | None = None, dst_port: int | None = None, pod: str | None = None,
               namespace: str | None = None, container: str | None = None, workload: str | None = None,
               since: str | float | None = None,
               after: int | None = None, limit: int | None = None) -> list[Event]:
        """Events from the daemon's in-memory rings: the newest ``limit`` (default 100) matching ones, oldest
        first; with ``after`` (a ``seq`` cursor) the oldest ``limit`` after it, in ``seq`` order (page on with
        the last one's ``seq``). ``since``: an RFC 3339 time or seconds ago. ``pod``, ``namespace``,
        ``container``, ``workload`` (``NAME`` or ``KIND/NAME``, e.g. ``deployment/checkout``): Kubernetes names
        (a daemon with ``--enrich k8s``); events without a ``k8s`` object never match them."""
        check = _k8s_check(pod, namespace, container, workload)
        kind, fields = _listing("get_events", _filters(probe, event_type, pid, command, src_ip, dst_ip, src_port,
                                                       dst_port, _k8s(pod, namespace, container, workload)),
                                since, after, limit)
        return _listed(self.request(kind, **fields), check)

    def recent(self, *, probe: str | None = None, event_type: str | None = None, pid: int | None = None,
               command: str | None = None, src_ip: str | None = None, dst_ip: str | None = None,
               src_port: int | None = None, dst_port: int | None = None, pod: str | None = None,
               namespace: str | None = None, container: str | None = None, workload: str | None = None,
               since: str | float | None = None,
               after: int | None = None, limit: int | None = None) -> list[Event]:
        """Like :meth:`events`, from the daemon's SQLite history (its earlier runs too).

        :raises RequestError: ``unavailable`` when the daemon runs with ``--history off``.
        """
        check = _k8s_check(pod, namespace, container, workload)
        kind, fields = _listing("recent", _filters(probe, event_type, pid, command, src_ip, dst_ip, src_port,
                                                   dst_port, _k8s(pod, namespace, container, workload)),
                                since, after, limit)
        return _listed(self.request(kind, **fields), check)

    def ask(self, question: str, seconds: float = 10, *, pid: int | None = None, port: int | None = None,
            pod: str | None = None, namespace: str | None = None, container: str | None = None,
            workload: str | None = None, timeout: float | None = None) -> Answer:
        """Ask through the daemon: it deploys what the question needs, observes ``seconds`` and answers.

        :param pod: with ``namespace``, ``container``, ``workload`` (``NAME`` or ``KIND/NAME``): only the events
            of these Kubernetes names are evaluated, and the answer says so (the daemon must run with
            ``--enrich k8s``, else ``bad_request``).
        :param timeout: default ``seconds`` + :data:`ASK_EXTRA_S`.
        """
        wait = seconds + ASK_EXTRA_S if timeout is None else timeout
        return Answer.from_json(self.request("ask", timeout=wait, question=question, seconds=seconds, pid=pid,
                                             port=port, **_k8s(pod, namespace, container, workload)))

    def find(self, question: str, *, limit: int | None = None) -> list[Match]:
        """Knowledge-base entries that answer ``question``, best first (answered here, from the KB)."""
        return _find(question, limit)

    def explain(self, entry: str, fields: Mapping[str, str] | Iterable[str] = ()) -> Explanation:
        """Which interpretations of KB ``entry`` hold for ``fields`` (``{"error.code": "ECONNREFUSED"}`` or
        ``["error.code=ECONNREFUSED"]``); answered here, from the KB. :raises UsageError: unknown entry."""
        return _explain(entry, fields)

    def stream(self, *, probe: str | None = None, event_type: str | None = None, pid: int | None = None,
               command: str | None = None, src_ip: str | None = None, dst_ip: str | None = None,
               src_port: int | None = None, dst_port: int | None = None, pod: str | None = None,
               namespace: str | None = None, container: str | None = None, workload: str | None = None,
               since: int | None = None,
               seconds: float | None = None) -> Iterator[Event | Gap]:
        """Subscribe and yield events as the daemon pushes them, and a :class:`Gap` for events it lost.

        :param since: a ``seq`` cursor (the last event seen): the daemon first replays what it still holds
            after it (a :class:`Gap` first when some of it is gone), then goes live.
        :param seconds: stop after this long (default: until the caller stops iterating).
        :raises DaemonStopped: the daemon shut down (after sending every event it did not count as lost).
        :raises DaemonUnavailable: the connection was lost.
        """
        fields = _subscribe_fields(_filters(probe, event_type, pid, command, src_ip, dst_ip, src_port, dst_port,
                                            _k8s(pod, namespace, container, workload)),
                                   since)
        check = _k8s_check(pod, namespace, container, workload)
        subscription = self.request("subscribe", **fields)["subscription"]
        stream = self._session.open_stream(subscription, check)
        deadline = None if seconds is None else time.monotonic() + seconds
        try:
            while True:
                item = stream.next_item()
                if item is not None:
                    yield item
                    continue
                if not self._fill(deadline, "subscribe") and deadline is not None \
                        and time.monotonic() >= deadline:
                    return
        finally:
            if not stream.ended:
                try:
                    self.request("unsubscribe", timeout=5, subscription=subscription)
                except (DaemonError, OSError):  # the daemon went away meanwhile: nothing to undo
                    pass
            self._session.close_stream(subscription)


# ---- the async client ----------------------------------------------------------------------------------------

class AsyncClient:
    """The asyncio twin of :class:`Client`: the same methods, awaited; :meth:`stream` is an async iterator.

    Use ``async with AsyncClient(...) as jalki`` (the connection is made on entry, or by :meth:`connect`).
    Requests on one client are answered one after the other; use several clients for concurrent work.
    """

    def __init__(self, socket: str | Path | None = None, *, timeout: float | None = DEFAULT_TIMEOUT_S) -> None:
        self._socket = socket
        self.timeout = timeout
        self.path = socket_path_from_env(socket)
        self._session = _Session(self.path)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()

    async def connect(self) -> AsyncClient:
        """Connect (the blocking connect waits for room in a busy daemon's backlog, on a worker thread)."""
        sock, self.path = await asyncio.to_thread(_connect, self._socket, self.timeout)
        sock.setblocking(False)
        self._session = _Session(self.path)
        # a small read-ahead: a slow consumer makes the daemon count drops, not this process buffer megabytes
        self._reader, self._writer = await asyncio.open_unix_connection(sock=sock, limit=_READ_BYTES)
        return self

    async def __aenter__(self) -> AsyncClient:
        return await self.connect()

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection (its subscriptions end)."""
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except OSError:
                pass
            self._writer = None

    async def _fill(self, deadline: float | None) -> bool:
        if self._reader is None:
            raise DaemonUnavailable("the client is not connected", hint="use 'async with AsyncClient()'")
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            return False
        try:
            # asyncio.timeout, not wait_for: no separate task whose exception could go unretrieved
            async with asyncio.timeout(remaining):
                data = await self._reader.read(_READ_BYTES)
        except TimeoutError:
            return False
        except OSError as exc:
            raise self._session.broken(exc) from None
        self._session.feed(data)
        return True

    async def request(self, kind: str, *, timeout: float | None = None, **fields: Any) -> Any:
        """Send one request and return its raw ``result`` (see :meth:`Client.request`)."""
        wait = self.timeout if timeout is None else timeout
        deadline = None if wait is None else time.monotonic() + wait
        async with self._lock:  # one reader of the socket at a time
            if self._writer is None:
                raise DaemonUnavailable("the client is not connected", hint="use 'async with AsyncClient()'")
            # framed once the lock is held: a request cancelled while it waits for the lock leaves nothing behind
            request_id, frame = self._session.frame(kind, fields)
            try:
                return await self._exchange(self._writer, kind, request_id, frame, wait, deadline)
            except asyncio.CancelledError:
                self._session.abandon(request_id)  # its reply, when it comes, is dropped like a late one
                raise

    async def _exchange(self, writer: asyncio.StreamWriter, kind: str, request_id: int, frame: bytes,
                        wait: float | None, deadline: float | None) -> Any:
        try:
            writer.write(frame)
            async with asyncio.timeout(wait):
                await writer.drain()
        except TimeoutError:
            self._session.abandon(request_id)
            raise self._session.timed_out(kind) from None
        except OSError as exc:
            raise self._session.broken(exc) from None
        while True:
            done, result = self._session.result(request_id)
            if done:
                return result
            if not await self._fill(deadline):
                self._session.abandon(request_id)
                raise self._session.timed_out(kind)

    async def ping(self) -> dict[str, Any]:
        """See :meth:`Client.ping`."""
        result: dict[str, Any] = await self.request("ping")
        return result

    async def status(self) -> Status:
        """See :meth:`Client.status`."""
        return Status.from_json(await self.request("status"))

    async def probes(self) -> list[ProbeInfo]:
        """See :meth:`Client.probes`."""
        return [ProbeInfo.from_json(p) for p in (await self.request("probes"))["probes"]]

    async def deploy(self, probe: str, *, ttl: float | None = None, sample: float | None = None,
                     pid: int | None = None, port: int | None = None) -> Deployment:
        """See :meth:`Client.deploy`."""
        return Deployment.from_json(await self.request("deploy", **_deploy_fields(probe, ttl, sample, pid, port)))

    async def undeploy(self, probe: str) -> Deployment:
        """See :meth:`Client.undeploy`."""
        return Deployment.from_json(await self.request("undeploy", probe=probe))

    async def events(self, *, probe: str | None = None, event_type: str | None = None, pid: int | None = None,
                     command: str | None = None, src_ip: str | None = None, dst_ip: str | None = None,
                     src_port: int | None = None, dst_port: int | None = None, pod: str | None = None,
                     namespace: str | None = None, container: str | None = None, workload: str | None = None,
                     since: str | float | None = None,
                     after: int | None = None, limit: int | None = None) -> list[Event]:
        """See :meth:`Client.events`."""
        check = _k8s_check(pod, namespace, container, workload)
        kind, fields = _listing("get_events", _filters(probe, event_type, pid, command, src_ip, dst_ip, src_port,
                                                       dst_port, _k8s(pod, namespace, container, workload)),
                                since, after, limit)
        return _listed(await self.request(kind, **fields), check)

    async def recent(self, *, probe: str | None = None, event_type: str | None = None, pid: int | None = None,
                     command: str | None = None, src_ip: str | None = None, dst_ip: str | None = None,
                     src_port: int | None = None, dst_port: int | None = None, pod: str | None = None,
                     namespace: str | None = None, container: str | None = None, workload: str | None = None,
                     since: str | float | None = None,
                     after: int | None = None, limit: int | None = None) -> list[Event]:
        """See :meth:`Client.recent`."""
        check = _k8s_check(pod, namespace, container, workload)
        kind, fields = _listing("recent", _filters(probe, event_type, pid, command, src_ip, dst_ip, src_port,
                                                   dst_port, _k8s(pod, namespace, container, workload)),
                                since, after, limit)
        return _listed(await self.request(kind, **fields), check)

    async def ask(self, question: str, seconds: float = 10, *, pid: int | None = None, port: int | None = None,
                  pod: str | None = None, namespace: str | None = None, container: str | None = None,
                  workload: str | None = None, timeout: float | None = None) -> Answer:
        """See :meth:`Client.ask`."""
        wait = seconds + ASK_EXTRA_S if timeout is None else timeout
        return Answer.from_json(await self.request("ask", timeout=wait, question=question, seconds=seconds,
                                                   pid=pid, port=port, **_k8s(pod, namespace, container, workload)))

    async def find(self, question: str, *, limit: int | None = None) -> list[Match]:
        """See :meth:`Client.find` (on a worker thread: loading the KB reads files)."""
        return await asyncio.to_thread(_find, question, limit)

    async def explain(self, entry: str, fields: Mapping[str, str] | Iterable[str] = ()) -> Explanation:
        """See :meth:`Client.explain`."""
        return await asyncio.to_thread(_explain, entry, fields)

    async def stream(self, *, probe: str | None = None, event_type: str | None = None, pid: int | None = None,
                     command: str | None = None, src_ip: str | None = None, dst_ip: str | None = None,
                     src_port: int | None = None, dst_port: int | None = None, pod: str | None = None,
                     namespace: str | None = None, container: str | None = None, workload: str | None = None,
                     since: int | None = None,
                     seconds: float | None = None) -> AsyncIterator[Event | Gap]:
        """See :meth:`Client.stream`. Hold no other request on this client while iterating."""
        fields = _subscribe_fields(_filters(probe, event_type, pid, command, src_ip, dst_ip, src_port, dst_port,
                                            _k8s(pod, namespace, container, workload)),
                                   since)
        check = _k8s_check(pod, namespace, container, workload)
        subscription = (await self.request("subscribe", **fields))["subscription"]
        stream = self._session.open_stream(subscription, check)
        deadline = None if seconds is None else time.monotonic() + seconds
        try:
            while True:
                item = stream.next_item()
                if item is not None:
                    yield item
                    continue
                async with self._lock:
                    filled = await self._fill(deadline)
                if not filled and deadline is not None and time.monotonic() >= deadline:
                    return
        finally:
            if not stream.ended and self._writer is not None:
                try:
                    await self.request("unsubscribe", timeout=5, subscription=subscription)
                except (DaemonError, OSError):
                    pass
            self._session.close_stream(subscription)
