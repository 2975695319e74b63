"""The local API: an asyncio Unix-socket server on its own thread (``specs/protocol.md``).

Each connection reads newline-delimited JSON requests and answers each with
exactly one reply. A malformed, oversized or unknown request gets an error
reply; the connection stays usable and no other client notices. Requests that
touch probes are handed to the drain thread and awaited without blocking the
loop; history queries run in a worker thread.

Subscriptions: the drain thread appends each batch of encoded events (the
JSON bytes the rings and the history keep too) to a hand-off bounded in events
and bytes (never waiting); the loop fans batches out to every subscription's
queue, bounded in events and bytes, applying its filter on the raw JSON
(:class:`~jalki_core.daemon.store.RawFilter`: only candidates are decoded).
A subscription's writer sends what is queued in few large writes, each event
framed around its stored JSON (no re-encoding). A subscriber that reads too
slowly loses events, counted per subscription and announced with a
``dropped`` push when it catches up; the drain thread and the other clients
never wait for it.

Reliability (``specs/protocol.md`` §5): client connections are capped below
the open-file limit (:func:`connection_cap`; extra ones get one
``limit_reached`` frame and are closed, counted), subscriptions are capped per
connection and in total, and their queues share one byte budget. Requests run
in separate pools: control requests (``status``, ``deploy``, ``undeploy``) never
wait behind history scans (``recent``) or ring queries (``get_events``). One
lock file next to the socket (``PATH.lock``, ``flock``) makes one daemon per
socket: a second one never unlinks a live daemon's socket, and a daemon
removes the socket on exit only if it is still the one it bound. At shutdown
every subscription gets what was drained before its ``end`` push.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import functools
import grp
import itertools
import logging
import os
import resource
import socket
import stat
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jalki_core.daemon import protocol
from jalki_core.daemon.protocol import MAX_FRAME_BYTES, EventFilter, Request
from jalki_core.daemon.store import RawFilter
from jalki_core.errors import ProtocolError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from jalki_core.daemon.agent import Agent

log = logging.getLogger("jalki.daemon.api")

HANDOFF_EVENTS = 16_384
"""Events waiting between the drain thread and the API loop; beyond it subscribers lose them (counted)."""

HANDOFF_BYTES = 8 << 20
"""JSON bytes waiting between the drain thread and the API loop (the same bound, in bytes)."""

SUBSCRIPTION_QUEUE_BYTES = 8 << 20
"""JSON bytes queued per subscription (besides its bound in events); beyond it events are dropped, counted."""

PUMP_WRITE_BYTES = 256 << 10
"""A subscription's writer sends at most about this much per write (other replies interleave between writes)."""

SOCKET_MODE = 0o660
"""The API socket's mode: owner (root) and the configured group; never world-accessible."""

MAX_CONCURRENT_ASKS = 4
"""``ask`` requests observed at once; more wait their turn (other requests are never held up by them)."""

CONTROL_THREADS = 4
"""Threads for ``status``, ``deploy`` and ``undeploy`` (they mostly wait for the drain thread)."""

SCAN_THREADS = 2
"""History scans (``recent``) running at once; more wait their turn, and nothing else waits for them."""

RING_QUERY_THREADS = 2
"""Ring queries (``get_events``) running at once."""

MAX_CONNECTIONS = 1024
"""Client connections served at once, at most (fewer when the open-file limit is low: :func:`connection_cap`)."""

ACCEPT_BACKLOG = 128
"""The listening socket's backlog (connects beyond it wait in ``connect(2)``)."""

ACCEPT_BATCH = 32
"""Clients accepted per wake-up of the API loop (then other work runs)."""

ACCEPT_RETRY_S = 0.5
"""After ``accept(2)`` failed for want of descriptors or memory, the pause before the next try."""

FD_RESERVE = 64
"""File descriptors kept free of client connections (probes, the history, the metrics server, imports),
at least; a quarter of the open-file limit when that is more."""

MAX_SUBSCRIPTIONS_PER_CONNECTION = 16
"""Subscriptions one connection may hold; more are refused with ``limit_reached``."""

MAX_SUBSCRIPTIONS = 256
"""Subscriptions of all connections together; more are refused with ``limit_reached``."""

SUBSCRIPTION_QUEUES_BYTES = 64 << 20
"""JSON bytes queued for all subscriptions together; beyond it events are dropped (counted per subscription)."""

REPLAY_PAGE_EVENTS = 512
"""Events a resumed subscription replays per store read (``since_seq``); each page waits for room in the
socket, so a replay never queues more than a page in the daemon."""

SHUTDOWN_FLUSH_S = 5.0
"""At shutdown, how long subscribers get to receive what was drained and their ``end`` push."""

LIVENESS_TIMEOUT_S = 5.0
"""How long a starting daemon waits to connect to an existing socket before it calls that socket alive."""


def connection_cap() -> int:
    """Client connections served at once: below the open-file limit (read now, so ``prlimit`` applies)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(8, min(MAX_CONNECTIONS, soft - max(FD_RESERVE, soft // 4)))


class QueueBudget:
    """The byte budget all subscription queues share (API loop only)."""

    def __init__(self, limit: int = SUBSCRIPTION_QUEUES_BYTES) -> None:
        self.limit = limit
        self.used = 0


class Subscription:
    """One live event stream of one connection: a queue of encoded events bounded in events and bytes."""

    def __init__(self, number: int, where: EventFilter, capacity: int,
                 capacity_bytes: int = SUBSCRIPTION_QUEUE_BYTES, budget: QueueBudget | None = None) -> None:
        self.number = number
        self.budget = budget or QueueBudget()
        self.where = where
        self.filter = RawFilter(where)
        self.capacity = capacity
        self.capacity_bytes = capacity_bytes
        self.queue: deque[bytes] = deque()
        self.queued_bytes = 0
        self.ready = asyncio.Event()
        self.sent = 0
        self.dropped = 0
        self.unreported_drops = 0
        self.drops_lock = threading.Lock()  # the drain thread counts hand-off losses, the API loop the rest
        self.task: asyncio.Task[None] | None = None
        self.replay: tuple[int, int] | None = None
        """``(cursor, upto)``: events the writer first replays from what the daemon holds (``since_seq``)."""
        self.live_after = 0
        """Live events up to this sequence number are left out: the replay sends them."""
        self.replayed = 0
        self.closing = False
        """Set at shutdown: the writer sends what is queued, then the ``end`` push, and finishes."""

    def offer(self, raws: list[bytes]) -> None:
        """Queue encoded events that passed the filter (API loop); count those that do not fit as lost."""
        room = self.capacity - len(self.queue)
        budget = self.budget
        taken = 0
        for raw in raws:
            if taken >= room or self.queued_bytes + len(raw) > self.capacity_bytes \
                    or budget.used + len(raw) > budget.limit:
                break
            self.queue.append(raw)
            self.queued_bytes += len(raw)
            budget.used += len(raw)
            taken += 1
        if taken < len(raws):
            self.count_lost(len(raws) - taken)
        if taken or self.unreported_drops:  # a loss is announced even when nothing follows it
            self.ready.set()

    def count_lost(self, count: int) -> None:
        """Count ``count`` events of this subscription as lost (any thread)."""
        with self.drops_lock:
            self.dropped += count
            self.unreported_drops += count

    def take_unreported(self) -> int:
        """The losses not yet announced to the client, now counted as announced."""
        with self.drops_lock:
            count, self.unreported_drops = self.unreported_drops, 0
        return count

    def take(self, max_bytes: int) -> list[bytes]:
        """Queued events, oldest first, up to about ``max_bytes``."""
        taken: list[bytes] = []
        size = 0
        queue = self.queue
        while queue and size < max_bytes:
            raw = queue.popleft()
            size += len(raw)
            taken.append(raw)
        self.queued_bytes -= size
        self.budget.used -= size
        return taken

    def discard(self) -> None:
        """Let go of the queued events (the subscription ended): their bytes go back to the budget."""
        self.budget.used -= self.queued_bytes
        self.queue = deque()
        self.queued_bytes = 0


def _wanted(subscription: Subscription, source: str, raws: list[bytes], first_seq: int) -> list[bytes] | None:
    """The events of ``source`` (sequence numbers from ``first_seq``) that ``subscription`` takes live: those
    its filter passes, less those its replay sends; ``None`` when it takes none of them for their source or
    its replay."""
    raw_filter = subscription.filter
    if not raw_filter.accepts_source(source):
        return None
    replayed = subscription.live_after - first_seq + 1  # the replay sends these
    if replayed > 0:
        if replayed >= len(raws):
            return None
        raws = raws[replayed:]
    if raw_filter.decode:
        return [raw for raw in raws if raw_filter.candidate(raw) and raw_filter.confirm(raw) is not None]
    return raws


class Connection:
    """One client connection: its requests, its subscriptions, one writer."""

    def __init__(self, server: ApiServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.subscriptions: dict[int, Subscription] = {}
        self.write_lock = asyncio.Lock()
        self.pumps: list[asyncio.Task[None]] = []

    async def send(self, message: dict[str, Any]) -> None:
        frame = protocol.encode(message)
        if len(frame) > MAX_FRAME_BYTES:
            message = protocol.reply_error(message.get("id"), ProtocolError(
                "bad_request", f"the reply would exceed {MAX_FRAME_BYTES} bytes; ask for fewer events (limit)"))
            frame = protocol.encode(message)
        async with self.write_lock:
            self.writer.write(frame)
            await self.writer.drain()

    async def read_frame(self) -> bytes | None:
        """The next line without its newline; ``None`` at EOF. Oversized lines raise ``frame_too_large``."""
        try:
            line = await self.reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            return exc.partial if exc.partial.strip() else None
        except asyncio.LimitOverrunError:
            # skip the rest of the oversized line, then report it
            while True:
                try:
                    await self.reader.readuntil(b"\n")
                    break
                except asyncio.LimitOverrunError as more:
                    await self.reader.readexactly(more.consumed)
                except asyncio.IncompleteReadError:
                    break
            raise ProtocolError("frame_too_large", f"frames are limited to {MAX_FRAME_BYTES} bytes") from None
        return line[:-1]

    async def serve(self) -> None:
        try:
            while True:
                try:
                    line = await self.read_frame()
                except ProtocolError as exc:
                    self.server.count_request("?", exc.code)
                    await self.send(protocol.reply_error(None, exc))
                    continue
                if line is None:
                    return
                if not line.strip():
                    continue
                await self.handle(line)
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            for task in self.pumps:
                task.cancel()
            for subscription in self.subscriptions.values():
                self.server.retire(subscription)
            if self.subscriptions:
                self.server.agent.request_trim()  # their queues' memory goes back to the system
            self.subscriptions.clear()
            self.server.connections.discard(self)
            with contextlib.suppress(Exception):
                self.writer.close()

    async def handle(self, line: bytes) -> None:
        request_id: Any = None
        try:
            request = protocol.parse_frame(line)
            request_id = request.id
            handler = self.server.handlers.get(request.type)
            if handler is None:
                raise ProtocolError("unknown_type", f"unknown message type {request.type!r}; known: "
                                    + ", ".join(sorted(self.server.handlers)))
            result = await handler(self, request)
        except ProtocolError as exc:
            self.server.count_request(_safe_type(line), exc.code)
            await self.send(protocol.reply_error(exc.request_id if request_id is None else request_id, exc))
            return
        except Exception as exc:  # a bug in a handler: report it, keep serving
            log.exception("request failed")
            self.server.count_request(_safe_type(line), "internal")
            await self.send(protocol.reply_error(request_id, ProtocolError("internal", f"{type(exc).__name__}: "
                                                                                        f"{exc}")))
            return
        self.server.count_request(request.type, "ok")
        await self.send(protocol.reply_ok(request_id, result))

    async def pump(self, subscription: Subscription) -> None:
        """Write a subscription's queued events to the client, announcing losses (after its replay, if any)."""
        # the frame of protocol.push("event", N, event=...), around the event's stored JSON
        head = protocol.encode(protocol.push("event", subscription.number, event=None))[:-len(b"null}\n")]
        if subscription.replay is not None:
            await self.replay(subscription, head)
        while True:
            await subscription.ready.wait()
            subscription.ready.clear()
            while subscription.queue:
                raws = subscription.take(PUMP_WRITE_BYTES)
                parts: list[bytes] = []
                if subscription.unreported_drops:
                    count = subscription.take_unreported()
                    parts.append(protocol.encode(protocol.push("dropped", subscription.number, count=count,
                                                               reason="slow")))
                for raw in raws:
                    parts += (head, raw, b"}\n")
                async with self.write_lock:
                    self.writer.write(b"".join(parts))
                    subscription.sent += len(raws)  # in the socket's buffer: a cancelled drain cannot unsend them
                    await self.writer.drain()
            if subscription.unreported_drops and not subscription.closing:
                count = subscription.take_unreported()
                await self.write(protocol.encode(protocol.push("dropped", subscription.number, count=count,
                                                               reason="slow")))
            if subscription.closing:
                await self.finish(subscription)
                return

    async def replay(self, subscription: Subscription, head: bytes) -> None:
        """Send what the daemon holds after the subscription's cursor, in pages (``since_seq``, protocol §8);
        a ``dropped`` push (``reason`` ``not_held``) first when some of it is no longer held."""
        assert subscription.replay is not None
        cursor, upto = subscription.replay
        server = self.server
        where = subscription.where
        held_from = await server._agent_call(lambda: server.agent.held_from(where), server._ring_pool)
        if cursor + 1 < held_from:
            gone = min(held_from - 1, upto) - cursor
            if gone > 0:
                await self.write(protocol.encode(protocol.push("dropped", subscription.number, count=gone,
                                                               reason="not_held", after=cursor)))
        after = cursor
        while after < upto:
            page = await server._agent_call(
                functools.partial(server.agent.events_after, where, after, upto, REPLAY_PAGE_EVENTS),
                server._ring_pool)
            if not page:
                break
            parts: list[bytes] = []
            for _, raw in page:
                parts += (head, raw, b"}\n")
            await self.write(b"".join(parts))
            subscription.replayed += len(page)
            after = page[-1][0]
            if len(page) < REPLAY_PAGE_EVENTS:
                break
        subscription.replay = None

    async def write(self, data: bytes) -> None:
        """Write pre-framed bytes, waiting for room in the socket."""
        async with self.write_lock:
            self.writer.write(data)
            await self.writer.drain()

    async def finish(self, subscription: Subscription) -> None:
        """At shutdown, after the last queued event: announce losses, send the ``end`` push, flush."""
        parts: list[bytes] = []
        if subscription.unreported_drops:
            count = subscription.take_unreported()
            parts.append(protocol.encode(protocol.push("dropped", subscription.number, count=count,
                                                       reason="slow")))
        parts.append(protocol.encode(protocol.push("end", subscription.number, reason="shutdown",
                                                   sent=subscription.sent, dropped=subscription.dropped)))
        async with self.write_lock:
            self.writer.write(b"".join(parts))
            self.writer.transport.set_write_buffer_limits(0)  # drain() returns once all of it is sent
            await self.writer.drain()


def _safe_type(line: bytes) -> str:
    try:
        return protocol.parse_frame(line).type[:32]
    except ProtocolError:
        return "?"


class ApiServer:
    """The API server thread of an :class:`Agent`."""

    def __init__(self, agent: Agent, path: Path, group: str | None, subscriber_queue: int) -> None:
        self.agent = agent
        self.path = path
        self.group = group
        self.subscriber_queue = subscriber_queue
        self.subscriptions: set[Subscription] = set()
        self.connections: set[Connection] = set()
        self.connections_refused = 0
        self.subscriptions_refused = 0
        self.queue_budget = QueueBudget()
        self.requests: dict[tuple[str, str], int] = {}
        self.handoff_dropped = 0
        self.retired_sent = 0  # figures of ended subscriptions (the metrics are counters)
        self.retired_dropped = 0
        self._numbers = itertools.count(1)
        self._handoff: deque[tuple[str, list[bytes], int]] = deque()
        self._handoff_events = 0
        self._handoff_bytes = 0
        self._handoff_lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._listener: socket.socket | None = None
        self._open_connections = 0  # accepted and not yet closed (some not yet a Connection)
        self.accept_failures = 0
        self._thread = threading.Thread(target=self._loop.run_forever, name="jalki-api", daemon=True)
        self._started = threading.Event()
        self._ask_pool = ThreadPoolExecutor(MAX_CONCURRENT_ASKS, thread_name_prefix="jalki-ask")
        self._control_pool = ThreadPoolExecutor(CONTROL_THREADS, thread_name_prefix="jalki-control")
        self._scan_pool = ThreadPoolExecutor(SCAN_THREADS, thread_name_prefix="jalki-scan")
        self._ring_pool = ThreadPoolExecutor(RING_QUERY_THREADS, thread_name_prefix="jalki-rings")
        self._lock = SocketLock(path)
        self._claimed = False
        self._gid = -1
        self._bound: tuple[int, int] | None = None  # (st_dev, st_ino) of the socket this server bound
        self.handlers: dict[str, Callable[[Connection, Request], Awaitable[Any]]] = {
            "ping": self.on_ping, "status": self.on_status, "probes": self.on_probes, "deploy": self.on_deploy,
            "undeploy": self.on_undeploy, "get_events": self.on_get_events, "subscribe": self.on_subscribe,
            "unsubscribe": self.on_unsubscribe, "recent": self.on_recent, "ask": self.on_ask,
        }

    # ---- lifecycle -----------------------------------------------------------

    def claim(self) -> None:
        """Make the socket path this daemon's, before the daemon touches anything else.

        Takes the lock file ``PATH.lock`` (held until :meth:`close`), then replaces a stale socket. A
        live daemon's socket is never removed: its lock is held, or (a daemon without one) it accepts
        connections, or its backlog is full and a connect waits past :data:`LIVENESS_TIMEOUT_S`.

        :raises JalkiError: another daemon serves the path; the path is not a socket; unknown group.
        """
        from jalki_core.errors import JalkiError

        self._gid = -1
        if self.group is not None:
            try:
                self._gid = grp.getgrnam(self.group).gr_gid
            except KeyError:
                raise JalkiError(f"unknown group {self.group!r} for the API socket",
                                 hint="create it (groupadd) or give --socket-group an existing group") from None
        self.path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        holder = self._lock.acquire()
        if holder is not None:
            raise JalkiError(f"another jalki daemon{f' (pid {holder})' if holder else ''} is serving {self.path}",
                             hint="stop it, or give this one another --socket")
        try:
            if self.path.exists() or self.path.is_symlink():
                if not stat.S_ISSOCK(self.path.lstat().st_mode):
                    raise JalkiError(f"{self.path} exists and is not a socket", hint="remove it or use --socket")
                if _socket_alive(self.path):
                    raise JalkiError(f"another jalki daemon is serving {self.path}",
                                     hint="stop it, or give this one another --socket")
                self.path.unlink()
        except BaseException:
            self._lock.release()
            raise
        self._claimed = True

    def start(self) -> None:
        """Bind the socket (mode 0660, root:group) and serve on the API thread (claiming it first)."""
        if not self._claimed:
            self.claim()
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._bind(self._gid), self._loop)
        future.result(10)

    async def _bind(self, gid: int) -> None:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o117)  # the socket is born 0660: never a window where others can connect
        try:
            listener.bind(str(self.path))
        except BaseException:
            listener.close()
            raise
        finally:
            os.umask(old_umask)
        listener.listen(ACCEPT_BACKLOG)
        listener.setblocking(False)
        self._listener = listener
        self._loop.add_reader(listener.fileno(), self._accept)
        bound = self.path.stat()
        self._bound = (bound.st_dev, bound.st_ino)
        os.chown(self.path, 0 if os.geteuid() == 0 else -1, gid)
        self.path.chmod(SOCKET_MODE)

    def stop_accepting(self) -> None:
        """Close the listening socket (connected clients keep being served until :meth:`close`)."""
        async def stop() -> None:
            if self._listener is not None:
                self._loop.remove_reader(self._listener.fileno())
                self._listener.close()
                self._listener = None

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(stop(), self._loop).result(5)
        self._unlink()

    def close(self) -> None:
        """Deliver what is handed off to every subscriber and end its stream, disconnect clients, stop the
        loop, release the socket's lock."""
        async def shutdown() -> None:
            self._fan_out()
            pumps = []
            for subscription in list(self.subscriptions):
                subscription.closing = True
                subscription.ready.set()
                if subscription.task is not None:
                    pumps.append(subscription.task)
            if pumps:  # a subscriber that does not read in time gets no end push: it sees the connection close
                await asyncio.wait(pumps, timeout=SHUTDOWN_FLUSH_S)
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(SHUTDOWN_FLUSH_S + 5)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
        for pool in (self._ask_pool, self._control_pool, self._scan_pool, self._ring_pool):
            pool.shutdown(wait=False, cancel_futures=True)
        self._unlink()
        self._lock.release()

    def _unlink(self) -> None:
        # only the socket this server bound, if it is still there: never another daemon's
        if self._bound is None:
            return
        with contextlib.suppress(FileNotFoundError):
            now = self.path.lstat()
            if (now.st_dev, now.st_ino) == self._bound:
                self.path.unlink()
        self._bound = None

    def _accept(self) -> None:
        """Accept waiting clients (API loop). Each is checked against the cap as it is accepted, so a burst
        never holds more descriptors than the cap allows; one over it gets one ``limit_reached`` frame and
        is closed at once (counted)."""
        listener = self._listener
        if listener is None:
            return
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and the like: other parts took the descriptors; retry soon
                self.accept_failures += 1
                log.error("cannot accept a client: %s; trying again in %g s", exc.strerror or exc,
                          ACCEPT_RETRY_S)
                self._loop.remove_reader(listener.fileno())
                self._loop.call_later(ACCEPT_RETRY_S, self._resume_accepting, listener)
                return
            cap = connection_cap()
            if self._open_connections >= cap:
                self.connections_refused += 1
                log.warning("refused a client: %d connections are open, the most the open-file limit allows", cap)
                refusal = ProtocolError("limit_reached", f"the daemon serves at most {cap} clients at once (its "
                                                         "open-file limit); try again later")
                with contextlib.suppress(OSError):
                    conn.setblocking(False)
                    conn.send(protocol.encode(protocol.reply_error(None, refusal)))
                conn.close()
                continue
            self._open_connections += 1
            self._loop.create_task(self._serve_socket(conn))

    def _resume_accepting(self, listener: socket.socket) -> None:
        if self._listener is listener:
            self._loop.add_reader(listener.fileno(), self._accept)

    async def _serve_socket(self, conn: socket.socket) -> None:
        try:
            # limit: a line of MAX_FRAME_BYTES including its newline passes, one byte more does not
            reader, writer = await asyncio.open_unix_connection(sock=conn, limit=MAX_FRAME_BYTES - 1)
        except Exception:
            conn.close()
            self._open_connections -= 1
            raise
        connection = Connection(self, reader, writer)
        self.connections.add(connection)
        try:
            await connection.serve()
        finally:
            self._open_connections -= 1

    # ---- events from the drain thread ----------------------------------------------

    def publish(self, source: str, raws: list[bytes], first_seq: int = 0) -> None:
        """Hand a batch of encoded events of one ``source`` (sequence numbers from ``first_seq``) to the
        subscribers (drain thread; never blocks).

        What does not fit in the hand-off is lost, and counted: in total (``handoff_dropped``), and for each
        subscription the lost events its filter would have let through (the rest were never its events).
        """
        if not self.subscriptions:
            return
        wake = False
        with self._handoff_lock:
            room = HANDOFF_EVENTS - self._handoff_events
            room_bytes = HANDOFF_BYTES - self._handoff_bytes
            taken = size = 0
            for raw in raws:
                if taken >= room or size + len(raw) > room_bytes:
                    break
                taken += 1
                size += len(raw)
            lost = len(raws) - taken
            if lost:
                self.handoff_dropped += lost
            if taken:
                wake = not self._handoff
                self._handoff.append((source, raws if not lost else raws[:taken], first_seq))
                self._handoff_events += taken
                self._handoff_bytes += size
        if lost:  # counted outside the lock: the check may decode (the lost candidates only)
            lost_raws = raws[taken:]
            for subscription in list(self.subscriptions):
                count = len(_wanted(subscription, source, lost_raws, first_seq + taken) or ())
                if count:
                    subscription.count_lost(count)
                    # its writer announces the loss now, not with whatever comes next (maybe nothing)
                    self._loop.call_soon_threadsafe(subscription.ready.set)
        if wake:
            self._loop.call_soon_threadsafe(self._fan_out)

    def _fan_out(self) -> None:
        with self._handoff_lock:
            batches = list(self._handoff)
            self._handoff.clear()
            self._handoff_events = self._handoff_bytes = 0
        subscriptions = list(self.subscriptions)
        for source, raws, first_seq in batches:
            for subscription in subscriptions:
                batch = _wanted(subscription, source, raws, first_seq)
                if batch is not None:  # an empty one too: offer announces losses not yet reported
                    subscription.offer(batch)

    def retire(self, subscription: Subscription) -> None:
        """Forget an ended subscription, keeping its figures in the since-start totals."""
        if subscription in self.subscriptions:
            self.subscriptions.discard(subscription)
            self.retired_sent += subscription.sent
            # a hand-off loss the drain thread counts for it after this (its snapshot of the subscriptions
            # predates the retirement) is in handoff_dropped only: nobody is left to announce it to
            with subscription.drops_lock:
                self.retired_dropped += subscription.dropped
            subscription.discard()

    def subscriber_stats(self) -> dict[str, Any]:
        """Subscriptions now and events they lost; ``*_total``: since start, ended subscriptions included."""
        subscriptions = list(self.subscriptions)
        sent, dropped = sum(s.sent for s in subscriptions), sum(s.dropped for s in subscriptions)
        return {"count": len(subscriptions), "sent": sent, "dropped": dropped, "handoff_dropped": self.handoff_dropped,
                "sent_total": self.retired_sent + sent, "dropped_total": self.retired_dropped + dropped,
                "queued_bytes": self.queue_budget.used, "refused": self.subscriptions_refused}

    def connection_stats(self) -> dict[str, Any]:
        """Client connections open now, the most served at once, and those refused since start."""
        return {"open": self._open_connections, "max": connection_cap(), "refused": self.connections_refused,
                "accept_failures": self.accept_failures}

    def count_request(self, kind: str, outcome: str) -> None:
        key = (kind if kind in self.handlers else "?", outcome)
        self.requests[key] = self.requests.get(key, 0) + 1

    # ---- handlers --------------------------------------------------------------

    async def _agent_call(self, func: Callable[[], Any], pool: ThreadPoolExecutor | None = None) -> Any:
        # each kind of work has its own threads: a control request never waits behind a scan
        return await asyncio.get_running_loop().run_in_executor(pool or self._control_pool, func)

    async def on_ping(self, conn: Connection, request: Request) -> Any:
        return {"pong": True, "protocol": protocol.PROTOCOL_VERSION, "pid": os.getpid()}

    async def on_status(self, conn: Connection, request: Request) -> Any:
        return await self._agent_call(self.agent.status)

    async def on_probes(self, conn: Connection, request: Request) -> Any:
        return {"probes": self.agent.available_probes()}

    async def on_deploy(self, conn: Connection, request: Request) -> Any:
        spec = protocol.parse_deploy(request.fields)
        return await self._agent_call(lambda: self.agent.deploy(spec))

    async def on_undeploy(self, conn: Connection, request: Request) -> Any:
        name = request.fields.get("probe")
        if not isinstance(name, str):
            raise ProtocolError("bad_request", "field 'probe' is required")
        return await self._agent_call(lambda: self.agent.undeploy(name))

    def enriches_k8s(self) -> bool:
        """Whether this daemon adds the ``k8s`` object to its events (``--enrich k8s``)."""
        stage = self.agent.session.enrich
        return stage is not None and "k8s" in stage.names

    def refuse_k8s_without_enricher(self, where: EventFilter, request_type: str) -> None:
        """A Kubernetes filter of live events (``get_events``, ``subscribe``, ``ask``) on a daemon that adds no
        ``k8s`` object could match nothing: refused in one line rather than answered empty. (``recent`` takes
        it: the history may hold events of an earlier run that had ``--enrich k8s``.)"""
        if where.has_k8s and not self.enriches_k8s():
            names = [f"'{name}'" for name in ("pod", "namespace", "container", "workload")
                     if getattr(where, name) is not None]
            fields = f"field {names[0]} filters" if len(names) == 1 else f"fields {', '.join(names)} filter"
            raise ProtocolError("bad_request", f"{request_type}: {fields} by Kubernetes names, which this daemon "
                                               "does not add to its events: start it with --enrich k8s")

    async def on_get_events(self, conn: Connection, request: Request) -> Any:
        where = protocol.parse_filter(request.fields)
        self.refuse_k8s_without_enricher(where, "get_events")
        since = protocol.parse_since(request.fields)
        limit = protocol.parse_limit(request.fields)
        after = protocol.parse_seq(request.fields, "after_seq")
        if after is not None:
            self._refuse_time_and_cursor(since)
            return await self._page(after, where, limit, history=False)
        events = await self._agent_call(lambda: self.agent.get_events(where, since, limit), self._ring_pool)
        return {"events": events, "count": len(events)}

    async def on_recent(self, conn: Connection, request: Request) -> Any:
        where = protocol.parse_filter(request.fields)
        since = protocol.parse_since(request.fields)
        limit = protocol.parse_limit(request.fields)
        after = protocol.parse_seq(request.fields, "after_seq")
        if after is not None:
            self._refuse_time_and_cursor(since)
            return await self._page(after, where, limit, history=True)
        events = await self._agent_call(lambda: self.agent.recent(where, since, limit), self._scan_pool)
        return {"events": events, "count": len(events)}

    @staticmethod
    def _refuse_time_and_cursor(since: int | None) -> None:
        if since is not None:
            raise ProtocolError("bad_request", "fields 'since' and 'after_seq' exclude each other: page by one")

    async def _page(self, after: int, where: EventFilter, limit: int, *, history: bool) -> Any:
        events = await self._agent_call(lambda: self.agent.events_page(where, after, limit, history=history),
                                        self._scan_pool if history else self._ring_pool)
        return {"events": events, "count": len(events)}

    async def on_subscribe(self, conn: Connection, request: Request) -> Any:
        where = protocol.parse_filter(request.fields)
        self.refuse_k8s_without_enricher(where, "subscribe")
        cursor = protocol.parse_seq(request.fields, "since_seq")
        head = self.agent.stored_seq  # every event up to it is in the rings; later ones come live
        if cursor is not None and cursor > head:
            raise ProtocolError("bad_request", f"field 'since_seq' ({cursor}) is past this daemon's latest "
                                               f"sequence number ({head}): a cursor of another daemon run? "
                                               "(numbers go on across restarts only with the history on)")
        if len(conn.subscriptions) >= MAX_SUBSCRIPTIONS_PER_CONNECTION:
            self.subscriptions_refused += 1
            raise ProtocolError("limit_reached", f"at most {MAX_SUBSCRIPTIONS_PER_CONNECTION} subscriptions per "
                                                 "connection; unsubscribe one, or use another connection")
        if len(self.subscriptions) >= MAX_SUBSCRIPTIONS:
            self.subscriptions_refused += 1
            raise ProtocolError("limit_reached", f"the daemon serves at most {MAX_SUBSCRIPTIONS} subscriptions "
                                                 "at once; try again later")
        subscription = Subscription(next(self._numbers), where, self.subscriber_queue, budget=self.queue_budget)
        if cursor is not None:
            subscription.replay = (cursor, head)
            subscription.live_after = head
        conn.subscriptions[subscription.number] = subscription
        self.subscriptions.add(subscription)
        subscription.task = asyncio.get_running_loop().create_task(conn.pump(subscription))
        conn.pumps.append(subscription.task)
        return {"subscription": subscription.number, "filters": where.as_dict(), "seq": head}

    async def on_unsubscribe(self, conn: Connection, request: Request) -> Any:
        number = protocol.parse_subscription(request.fields)  # bad_request for true, 1.0, "1"
        subscription = conn.subscriptions.pop(number, None)
        if subscription is None:
            raise ProtocolError("not_attached", f"no subscription {number!r} on this connection")
        if subscription.task is not None:  # no push of it follows this reply
            subscription.task.cancel()
            conn.pumps.remove(subscription.task)
        self.retire(subscription)
        self.agent.request_trim()
        return {"subscription": number, "sent": subscription.sent, "dropped": subscription.dropped,
                "replayed": subscription.replayed}

    async def on_ask(self, conn: Connection, request: Request) -> Any:
        from jalki_core.daemon.ask import ask_through_agent

        self.refuse_k8s_without_enricher(protocol.EventFilter(**protocol.parse_k8s_fields(request.fields)), "ask")
        # asks observe for seconds: their own threads, so they never hold up other requests
        return await asyncio.get_running_loop().run_in_executor(
            self._ask_pool, lambda: ask_through_agent(self.agent, request.fields))


def _socket_alive(path: Path) -> bool:
    """Whether something accepts connections at ``path``; only "nobody listens" counts as dead.

    A full backlog (``EAGAIN``) is a live, busy daemon: the connect waits for room, and one that still
    waits after :data:`LIVENESS_TIMEOUT_S` is taken as alive.
    """
    from jalki_core.sdk import connect_unix

    try:
        sock = connect_unix(path, LIVENESS_TIMEOUT_S)
    except (FileNotFoundError, ConnectionRefusedError):
        return False
    except OSError:
        return True
    sock.close()
    return True


class SocketLock:
    """``PATH.lock`` next to the socket, held with ``flock`` while a daemon serves ``PATH``.

    The kernel releases it when the daemon dies, however it dies, so a stale lock file never blocks the
    next daemon. The holder writes its pid into it, for the message of a daemon that finds it held.
    """

    def __init__(self, socket_path: Path) -> None:
        self.path = Path(f"{socket_path}.lock")
        self._fd = -1

    def acquire(self) -> int | None:
        """Take the lock: ``None`` when taken, else the holder's pid (0 when unknown)."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    os.close(fd)
                    raise
                holder = os.pread(fd, 32, 0).strip()
                os.close(fd)
                return int(holder) if holder.isdigit() else 0
            # its previous holder may have removed the file between our open and our flock: take the one
            # at the path
            opened = os.fstat(fd)
            try:
                current = self.path.stat()
            except FileNotFoundError:
                current = None
            if current is not None and (current.st_dev, current.st_ino) == (opened.st_dev, opened.st_ino):
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                self._fd = fd
                return None
            os.close(fd)

    def release(self) -> None:
        """Remove the lock file and let go of the lock (removed first, so nobody takes a file about to go)."""
        if self._fd < 0:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self._fd)
        self._fd = -1
