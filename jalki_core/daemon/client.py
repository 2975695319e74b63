"""A client of the jalki daemon's local API (``specs/protocol.md``), for the CLI and the Python SDK.

::

    from jalki_core.daemon.client import DaemonClient

    with DaemonClient.connect() as jalki:            # --socket / JALKI_SOCKET / /run/jalki/jalki.sock
        jalki.deploy("tcp_connect", ttl=600)
        for event in jalki.stream(probe="tcp_connect", dst_port=5432):
            print(event)

Errors: :class:`DaemonUnavailable` when nothing answers at the socket (or it
is not ours to use, or the connection is lost), :class:`DaemonStopped` when the
daemon ends a stream by shutting down, :class:`RequestError` for an error reply (its
``code`` is the protocol's error code; :class:`ProbeNotFound` for ``unknown_probe``). All are in
:mod:`jalki_core.errors`.
"""

from __future__ import annotations

import errno
import itertools
import socket
import struct
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import orjson

from jalki_core.daemon.protocol import MAX_FRAME_BYTES, PROTOCOL_VERSION, request_error
from jalki_core.errors import DaemonError, DaemonStopped, DaemonUnavailable, NotAllowed, RequestError

__all__ = ["DaemonClient", "DaemonStopped", "DaemonUnavailable", "NotAllowed", "RequestError", "connect_unix"]


def connect_unix(path: Path, timeout: float | None) -> socket.socket:
    """A connected Unix stream socket to ``path``, its timeout set to ``timeout``.

    The connect itself blocks (bounded by ``SO_SNDTIMEO``, retried until ``timeout``): on a Unix socket a
    connect with a socket timeout set fails at once with ``EAGAIN`` when the listener's backlog is full,
    which would make a busy daemon look dead.

    :raises TimeoutError: no room in the backlog within ``timeout``.
    :raises OSError: anything else ``connect(2)`` says (``ENOENT``, ``ECONNREFUSED``, ``EACCES`` …).
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
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


def _set_send_timeout(sock: socket.socket, seconds: float) -> None:
    whole = int(seconds)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                    struct.pack("ll", whole, max(1 if whole == 0 and seconds > 0 else 0,
                                                 int((seconds - whole) * 1e6))))


class DaemonClient:
    """One connection to the daemon. Requests are synchronous; :meth:`stream` reads pushes."""

    def __init__(self, sock: socket.socket, path: Path) -> None:
        self._sock = sock
        self.path = path
        self._file = sock.makefile("rb")
        self._ids = itertools.count(1)
        self._pushes: list[dict[str, Any]] = []

    @classmethod
    def connect(cls, path: str | Path | None = None, timeout: float | None = 30.0) -> DaemonClient:
        """Connect to the daemon at ``path`` (default: ``JALKI_SOCKET`` or ``/run/jalki/jalki.sock``)."""
        from jalki_core.daemon.agent import socket_path_from_env

        target = socket_path_from_env(path)
        try:
            sock = connect_unix(target, timeout)
        except FileNotFoundError:
            raise DaemonUnavailable(f"no jalki daemon at {target}",
                                    hint="start one with 'jalki run --serve', or point --socket/JALKI_SOCKET "
                                         "at its socket") from None
        except PermissionError:
            raise NotAllowed(f"not allowed to use the daemon socket {target}",
                                    hint="run as root or as a member of the daemon's --socket-group") from None
        except OSError as exc:
            raise DaemonUnavailable(f"the jalki daemon at {target} does not answer: {exc.strerror or exc}",
                                    hint="is it running? (jalki status)") from None
        return cls(sock, target)

    def __enter__(self) -> DaemonClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection."""
        self._file.close()
        self._sock.close()

    def _read(self) -> dict[str, Any]:
        try:
            line = self._file.readline(MAX_FRAME_BYTES + 1)
        except TimeoutError:
            raise DaemonUnavailable(f"the jalki daemon at {self.path} did not answer in time") from None
        except OSError as exc:
            raise DaemonUnavailable(f"lost the jalki daemon at {self.path}: {exc}") from None
        if not line:
            raise DaemonUnavailable(f"the jalki daemon at {self.path} closed the connection",
                                    hint="it may be shutting down (jalki status)")
        message: dict[str, Any] = orjson.loads(line)
        return message

    def request(self, kind: str, timeout: float | None = None, **fields: Any) -> Any:
        """Send one request and return its ``result`` (pushes arriving meanwhile are kept for :meth:`stream`).

        :raises RequestError: the daemon answered with an error.
        """
        request_id = next(self._ids)
        frame = {"v": PROTOCOL_VERSION, "id": request_id, "type": kind,
                 **{k: v for k, v in fields.items() if v is not None}}
        previous = self._sock.gettimeout()
        if timeout is not None:
            self._sock.settimeout(timeout)
        try:
            self._sock.sendall(orjson.dumps(frame) + b"\n")
            while True:
                message = self._read()
                if "push" in message:
                    self._pushes.append(message)
                    continue
                if message.get("id") != request_id:
                    error = message.get("error") or {}
                    if message.get("id") is None and error.get("code") == "limit_reached":
                        # the daemon refused this connection (too many clients) and closed it
                        raise DaemonUnavailable(f"the jalki daemon at {self.path} refused the connection: "
                                                f"{error.get('message')}")
                    continue
                if not message.get("ok"):
                    error = message.get("error") or {}
                    raise request_error(str(error.get("code")), str(error.get("message")))
                return message.get("result")
        finally:
            self._sock.settimeout(previous)

    # ---- typed helpers -----------------------------------------------------

    def ping(self) -> dict[str, Any]:
        """``{"pong": true, "protocol": 1, "pid": …}``."""
        result: dict[str, Any] = self.request("ping")
        return result

    def status(self) -> dict[str, Any]:
        """Probes (rung, since, events, drops, filters, run time), emitters, history, subscribers."""
        result: dict[str, Any] = self.request("status")
        return result

    def deploy(self, probe: str, *, sample: float | None = None, pid: int | None = None, port: int | None = None,
               ttl: float | None = None) -> dict[str, Any]:
        """Attach ``probe`` at run time (idempotent)."""
        result: dict[str, Any] = self.request("deploy", probe=probe, sample=sample, pid=pid, port=port, ttl=ttl)
        return result

    def undeploy(self, probe: str) -> dict[str, Any]:
        """Detach ``probe``."""
        result: dict[str, Any] = self.request("undeploy", probe=probe)
        return result

    def get_events(self, **filters: Any) -> list[dict[str, Any]]:
        """Recent events from the daemon's rings (filters: probe, event_type, pid, command, src/dst ip/port,
        since, limit)."""
        events: list[dict[str, Any]] = self.request("get_events", **filters)["events"]
        return events

    def recent(self, **filters: Any) -> list[dict[str, Any]]:
        """Events from the daemon's SQLite history (same filters as :meth:`get_events`)."""
        events: list[dict[str, Any]] = self.request("recent", **filters)["events"]
        return events

    def ask(self, question: str, seconds: float = 10, **options: Any) -> dict[str, Any]:
        """``jalki ask`` through the daemon: the answer object of ``specs/ask.schema.json``."""
        result: dict[str, Any] = self.request("ask", timeout=seconds + 60, question=question, seconds=seconds,
                                              **options)
        return result

    def stream(self, *, seconds: float | None = None, **filters: Any) -> Generator[dict[str, Any], None, None]:
        """Subscribe and yield events as the daemon pushes them, until the caller stops iterating
        (or ``seconds`` have passed).

        A ``dropped`` push (the client read too slowly) raises nothing: it is
        yielded as ``{"type": "jalki.dropped", "count": N}`` so the caller can
        count it.

        :raises DaemonStopped: the daemon shut down in order (after sending every event of the stream it
            did not count as lost).
        :raises DaemonUnavailable: the connection to the daemon was lost (it was killed, or crashed).
        """
        subscription = self.request("subscribe", **filters)["subscription"]
        deadline = None if seconds is None else time.monotonic() + seconds
        ended = False
        try:
            while True:
                if self._pushes:
                    message = self._pushes.pop(0)
                else:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return
                    self._sock.settimeout(remaining)
                    try:
                        message = self._read()
                    except DaemonUnavailable:
                        ended = True
                        if deadline is not None and time.monotonic() >= deadline:
                            return
                        raise
                if message.get("subscription") != subscription:
                    continue
                if message.get("push") == "event":
                    yield message["event"]
                elif message.get("push") == "dropped":
                    yield {"type": "jalki.dropped", "count": message.get("count", 0)}
                elif message.get("push") == "end":
                    ended = True
                    raise DaemonStopped(f"the jalki daemon at {self.path} stopped; the stream ended "
                                        f"({message.get('sent', 0)} events sent, {message.get('dropped', 0)} "
                                        "lost)", hint="start the daemon again, then the stream")
        finally:
            if not ended:
                try:
                    self.request("unsubscribe", timeout=5, subscription=subscription)
                    self._pushes = [p for p in self._pushes if p.get("subscription") != subscription]
                except (DaemonError, OSError):  # the daemon went away meanwhile: nothing to undo
                    pass
