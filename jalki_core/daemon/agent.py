"""The node agent: a tracing session that stays up, with probes deployed and removed at run time.

Threads:

- the **drain thread** (the caller of :meth:`Agent.serve`) runs the session:
  it drains ring buffers, attaches and detaches probes (requests arrive through
  :meth:`TraceSession.call_soon`), expires probes whose TTL ran out, and hands
  each batch to the rings, the history queue, the counters and the subscriber
  hand-off. It never waits for a client or the disk;
- the **API thread** runs the asyncio Unix-socket server (:mod:`.server`);
- the **history thread** writes SQLite (:class:`.store.History`);
- the **metrics thread** serves Prometheus ``/metrics``, ``/healthz`` and ``/readyz``.

Shutdown (SIGTERM/SIGINT, or :meth:`request_stop`): stop accepting clients,
detach every probe, drain the rings, flush and fsync the emitters, write and
checkpoint the history, remove the socket, exit 0. SIGHUP reopens file
emitters (log rotation).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from jalki_core.daemon.protocol import DEFAULT_SOCKET, DeploySpec, EventFilter
from jalki_core.daemon.store import (
    DEFAULT_RING_EVENTS,
    EventRings,
    History,
    HistoryLimits,
    disabled_history_stats,
    encode_events,
    event_stamps,
    with_seq,
)
from jalki_core.errors import JalkiError, ProtocolError
from jalki_core.loader import ProbeOptions
from jalki_core.session import ProbeRunStats, SessionSummary, TraceSession

if TYPE_CHECKING:
    from jalki_core.emitters.base import Emitter
    from jalki_core.enrich import EnrichStage
    from jalki_core.plugins import JalkiPlugins

log = logging.getLogger("jalki.daemon")

DEFAULT_HISTORY = Path("/var/lib/jalki/history.db")
"""The SQLite event history, unless ``--history PATH|off``."""

DEFAULT_METRICS_ADDR = ("127.0.0.1", 9464)
"""Prometheus exposition address, unless ``--metrics-addr HOST:PORT|off``."""

DRAIN_INTERVAL_S = 0.005
"""The session's pause after a drain that found little (``TraceSession.drain_interval``)."""

DRAIN_BATCH_BYTES = 128 << 10
"""Most bytes one drain reads from a probe's ring buffer. CPython keeps the memory of the largest batch
it ever decoded (its small-object arenas are not given back), so a long-running agent reads in slices:
RSS under the bench load went from ~83 to ~75 MiB (bench/README.md)."""

EXPIRED_KEPT = 32
"""Expired deployments ``status`` lists (the latest); older ones are only counted in ``expired_total``."""

TRIM_EVERY_S = 1.0
"""While events flow, how often the daemon hands freed heap back to the system (glibc ``malloc_trim``, 1-4 ms)."""


@dataclass
class AgentConfig:
    """How the agent runs (the ``jalki run --serve`` options)."""

    socket_path: Path = DEFAULT_SOCKET
    socket_group: str | None = None
    history_path: Path | None = DEFAULT_HISTORY
    history_limits: HistoryLimits = field(default_factory=HistoryLimits)
    metrics_addr: tuple[str, int] | None = DEFAULT_METRICS_ADDR
    ring_events: int = DEFAULT_RING_EVENTS
    cluster: str | None = None
    ring_buffer_bytes: int | None = None
    """Every deployed probe's BPF ring buffer size (``--ring-mib``); ``None``: each probe's default."""
    subscriber_queue: int = 10_000


@dataclass
class Deployment:
    """A probe the agent runs, how it was asked for, and until when."""

    spec: DeploySpec
    since: float  # wall clock
    expires_at: float | None  # monotonic
    stats: ProbeRunStats
    ring_buffer_bytes: int | None = None

    def options(self) -> ProbeOptions:
        """The kernel-side options of this deployment."""
        return ProbeOptions(filter_pid=self.spec.pid or 0, filter_port=self.spec.port or 0,
                            sample_rate=self.spec.sample, ring_buffer_bytes=self.ring_buffer_bytes)

    def describe(self, now_mono: float) -> dict[str, Any]:
        """The deployment as ``status`` and ``probes`` report it."""
        stats = self.stats
        return {
            "probe": self.spec.probe,
            "attach": stats.rung,
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.since)),
            "ttl_remaining_s": None if self.expires_at is None else round(max(0.0, self.expires_at - now_mono), 1),
            "sample": self.spec.sample,
            "filters": {k: v for k, v in (("pid", self.spec.pid), ("port", self.spec.port)) if v is not None},
            "events": stats.events,
            "drops": stats.drops_by_cause,
            "derive_errors": stats.derive_errors,
            "run_time_ns": stats.run_time_ns,
            "run_count": stats.run_count,
            "programs": {name: dict(figures) for name, figures in stats.programs.items()},
            "failed_rungs": [failure.one_line() for failure in stats.failed_rungs],
            "ring_bytes": stats.ring_bytes,
        }


EventTap = Callable[[list[dict[str, Any]]], None]
"""Called on the drain thread with each batch (the server's subscriber hand-off, ask's collectors)."""


class Service(Protocol):
    """A server the agent starts and stops (the metrics endpoint)."""

    def start(self) -> None:
        """Start serving (in its own thread)."""

    def close(self) -> None:
        """Stop serving and release what it holds."""


class EventServer(Service, Protocol):
    """What the agent needs of its API server (:class:`jalki_core.daemon.server.ApiServer`).

    Named as a protocol so the agent, which creates the server, is not imported back by the module it imports.
    """

    def claim(self) -> None:
        """Take the socket's lock (one daemon per socket) before anything attaches."""

    def stop_accepting(self) -> None:
        """Stop taking new clients; subscribers still get the final drain."""

    def publish(self, source: str, raws: list[bytes], first_seq: int) -> None:
        """Offer one probe's encoded events (sequence numbers from ``first_seq``) to the live subscriptions."""

    def subscriber_stats(self) -> dict[str, Any]:
        """Subscriptions, queued bytes, sent and dropped events."""

    def connection_stats(self) -> dict[str, Any]:
        """Clients connected, refused and the cap."""

    @property
    def requests(self) -> dict[tuple[str, str], int]:
        """API requests answered, by (type, outcome)."""


class Agent:
    """The long-running tracing agent behind ``jalki run --serve``."""

    def __init__(self, plugins: JalkiPlugins, config: AgentConfig, emitters: Sequence[Emitter] = (), *,
                 enrich: EnrichStage | None = None) -> None:
        self.plugins = plugins
        self.config = config
        # drain every 5 ms rather than 20: a burst arrives in smaller batches, and the memory a decoded batch
        # takes (~2.4 KiB per event until it is encoded) stays small
        self.session = TraceSession([], emitters, cluster=config.cluster, on_events=self._on_events,
                                    drain_interval=DRAIN_INTERVAL_S, batch_bytes=DRAIN_BATCH_BYTES, enrich=enrich)
        self._emitters_take_json = all(type(emitter) in _JSON_EMITTERS and emitter.selection is None
                                       for emitter in emitters)  # a selection reads the events' type/severity
        """Every emitter writes only ``batch.ndjson`` (the built-in ones), never the event objects."""
        self.rings = EventRings(config.ring_events)
        self.history: History | None = None
        self.history_disabled: str | None = None
        """Why the configured history could not be opened (the agent then traces without it)."""
        self.deployments: dict[str, Deployment] = {}
        self.events_by_type: Counter[tuple[str, str]] = Counter()
        self.ring_fill_peak: dict[str, float] = {}
        self.expired: deque[str] = deque(maxlen=EXPIRED_KEPT)
        """The latest probes removed by their TTL, oldest first; ``expired_total`` counts every one."""
        self.expired_total = 0
        self.retired: dict[str, dict[str, Any]] = {}
        """Per probe: drops by cause, run time and run count of its ended deployments (the metrics are counters)."""
        self.started_at = time.time()
        self.ready = False
        self.stopping = False
        self._taps: list[EventTap] = []
        self._taps_lock = threading.Lock()
        self._server: EventServer | None = None
        self._metrics: Service | None = None
        self._reopen_requested = False
        self._malloc_trim: Callable[[int], int] | None = None
        self._next_trim = 0.0
        self._untrimmed_events = 1  # trim once at start: loading BPF objects frees several MiB
        self.summary: SessionSummary | None = None
        self._next_seq = 1
        self.stored_seq = 0
        """The latest sequence number in the rings (and handed to the history and the subscribers)."""

    # ---- drain-thread side ---------------------------------------------------

    def _on_events(self, events: list[dict[str, Any]]) -> None:
        # Each event is encoded once; the rings, the history and the subscribers keep those bytes, not the dict.
        source = str(events[0].get("source", ""))
        if any(event.get("source", "") != source for event in events):  # one source per batch (never seen)
            raws = [raw for part in _by_source(events) for raw in self._store(str(part[0].get("source", "")), part)]
        else:
            raws = self._store(source, events)
        with self._taps_lock:
            taps = list(self._taps)
        for tap in taps:
            try:
                tap(events)
            except Exception:  # a consumer's bug must not stop the drain
                log.exception("event tap failed")
        if self._emitters_take_json:
            # The emitters get this same list next, and only write its JSON: let them write the bytes already
            # encoded, and let the decoded batch go now rather than when the slowest emitter is done with it.
            events[:] = [orjson.Fragment(raw) for raw in raws]  # type: ignore[misc]

    def _store(self, source: str, events: list[dict[str, Any]]) -> list[bytes]:
        """Number, count, keep and publish one source's events (drain thread); return them encoded for the
        emitters (without ``seq``: the sequence number is the daemon's, not the event's)."""
        probe = source.removeprefix("jalki/")
        self._untrimmed_events += len(events)
        stamps, raws = event_stamps(events), encode_events(events)
        first = self._next_seq
        self._next_seq += len(raws)
        stored = with_seq(raws, first)
        self.rings.add(source, stamps, stored, first)
        for event_type, count in Counter(str(event.get("type")) for event in events).items():
            self.events_by_type[(probe, event_type)] += count
        if self.history is not None:
            self.history.add(probe, events, stamps, stored, first)
        if self._server is not None:
            self._server.publish(source, stored, first)
        # only now: a subscriber that reads it finds every event up to it in the rings (replay, protocol §8)
        self.stored_seq = self._next_seq - 1
        return raws

    def add_tap(self, tap: EventTap) -> None:
        """Receive every batch from now on (thread-safe)."""
        with self._taps_lock:
            self._taps.append(tap)

    def remove_tap(self, tap: EventTap) -> None:
        """Stop receiving batches (thread-safe)."""
        with self._taps_lock:
            if tap in self._taps:
                self._taps.remove(tap)

    def _deploy_now(self, spec: DeploySpec) -> dict[str, Any]:
        registered = self.plugins.probes.get(spec.probe)
        if registered is None:
            known = ", ".join(sorted(entry.probe.name for entry in self.plugins.probes))
            raise ProtocolError("unknown_probe", f"no installed probe {spec.probe!r}; installed: {known}")
        now = time.monotonic()
        expires = None if spec.ttl_s is None else now + spec.ttl_s
        current = self.deployments.get(spec.probe)
        if current is not None:
            same = (current.spec.sample, current.spec.pid, current.spec.port) == (spec.sample, spec.pid, spec.port)
            if same:
                current.expires_at = expires if spec.ttl_s is not None else current.expires_at
                if spec.ttl_s is not None:
                    current.spec = spec
                return {"changed": False, **current.describe(now)}
            self._undeploy_now(spec.probe)
        deployment = Deployment(spec, time.time(), expires, ProbeRunStats(spec.probe),
                                self.config.ring_buffer_bytes)
        stats = self.session.attach_probe(registered.probe, deployment.options())
        deployment.stats = stats
        if stats.rung is None:
            self.session.probes = [p for p in self.session.probes if p.name != spec.probe]
            raise ProtocolError("attach_failed", stats.error or f"probe {spec.probe} could not be attached")
        self.deployments[spec.probe] = deployment
        self._untrimmed_events += 1  # loading freed the kernel's BTF: give it back at the next tick
        log.info("deployed %s on %s", spec.probe, stats.rung)
        return {"changed": True, **deployment.describe(now)}

    def _undeploy_now(self, name: str) -> dict[str, Any]:
        deployment = self.deployments.pop(name, None)
        if deployment is None:
            raise ProtocolError("not_attached", f"probe {name!r} is not deployed")
        stats = self.session.detach_probe(name)
        deployment.stats = stats
        log.info("undeployed %s", name)
        final = deployment.describe(time.monotonic())
        retired = self.retired.setdefault(name, {"drops": Counter(), "run_time_ns": 0, "run_count": 0})
        retired["drops"].update(final["drops"])
        retired["run_time_ns"] += final["run_time_ns"]
        retired["run_count"] += final["run_count"]
        return final

    def _tick(self) -> None:
        now = time.monotonic()
        if self._malloc_trim is not None and self._untrimmed_events and now >= self._next_trim:
            # Decoded batches come and go (~2.4 KiB per event); what they leave between longer-lived
            # objects is only given back by a trim. ctypes lets the other threads run meanwhile.
            self._next_trim, self._untrimmed_events = now + TRIM_EVERY_S, 0
            self._malloc_trim(0)
        for name, deployment in list(self.deployments.items()):
            if deployment.expires_at is not None and now >= deployment.expires_at:
                self._undeploy_now(name)
                self.expired.append(name)
                self.expired_total += 1
                log.info("probe %s expired (ttl)", name)
        if self._reopen_requested:
            self._reopen_requested = False
            self._reopen_emitters()
        for name, fill in self.session.ring_fill.items():
            self.ring_fill_peak[name] = max(self.ring_fill_peak.get(name, 0.0), fill)

    def _reopen_emitters(self) -> None:
        for worker in self.session.workers:
            reopen = getattr(worker.emitter, "reopen", None)
            if reopen is not None:
                try:
                    reopen()
                except Exception as exc:  # reported, the agent keeps running
                    worker.stats.errors += 1
                    worker.stats.last_error = f"reopen failed: {exc}"
                    log.error("emitter %s: reopen failed: %s", worker.emitter.name, exc)

    def _snapshot_now(self) -> dict[str, Any]:
        self.session.live_stats()
        now = time.monotonic()
        return {
            "probes": {name: d.describe(now) for name, d in self.deployments.items()},
            "emitters": {key: w.as_dict()
                         for key, w in zip(_emitter_keys(self.session.workers), self.session.workers, strict=True)},
            "delivery": {"lost": dict(self.session.delivery_lost), "last_error": self.session.delivery_last_error},
            "enrich": self.session.enrich.status() if self.session.enrich is not None else None,
        }

    # ---- any thread ----------------------------------------------------------

    def on_drain_thread(self, func: Callable[[], Any], timeout: float = 30.0) -> Any:
        """Run ``func`` on the drain thread and return its result (or raise its exception)."""
        if self.stopping:
            raise ProtocolError("unavailable", "the daemon is shutting down")
        try:
            return self.session.call_soon(func).result(timeout)
        except ProtocolError:
            raise
        except JalkiError as exc:
            raise ProtocolError("unavailable", exc.one_line()) from exc

    def deploy(self, spec: DeploySpec) -> dict[str, Any]:
        """Attach a probe at run time (idempotent); see ``specs/protocol.md``."""
        return dict(self.on_drain_thread(lambda: self._deploy_now(spec)))

    def undeploy(self, name: str) -> dict[str, Any]:
        """Detach a deployed probe, draining what it left."""
        return dict(self.on_drain_thread(lambda: self._undeploy_now(name)))

    def snapshot(self) -> dict[str, Any]:
        """Probe and emitter figures read now on the drain thread."""
        return dict(self.on_drain_thread(self._snapshot_now))

    def status(self) -> dict[str, Any]:
        """Everything ``jalki status`` shows."""
        snapshot = self.snapshot()
        subscribers = self._server.subscriber_stats() if self._server is not None else {}
        return {
            "version": _version(),
            "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started_at)),
            "uptime_s": round(time.time() - self.started_at, 1),
            "socket": str(self.config.socket_path),
            "metrics": None if self.config.metrics_addr is None else "{}:{}".format(*self.config.metrics_addr),
            "ready": self.ready,
            **snapshot,
            "seq": self.stored_seq,
            "expired": list(self.expired),
            "expired_total": self.expired_total,
            "ring": {"capacity": self.rings.capacity, "events": self.rings.sizes(), "bytes": self.rings.stored_bytes()},
            "history": self.history_stats(),
            "subscribers": subscribers,
            "connections": self._server.connection_stats() if self._server is not None else {},
        }

    def available_probes(self) -> list[dict[str, Any]]:
        """Every installed probe, and whether it is deployed."""
        return [{**entry.probe.describe(), "plugin": entry.owner.plugin,
                 "deployed": entry.probe.name in self.deployments}
                for entry in sorted(self.plugins.probes, key=lambda e: e.probe.name)]

    def get_events(self, where: EventFilter, since_ns: int | None, limit: int) -> list[dict[str, Any]]:
        """Recent events from the in-memory rings."""
        return self.rings.query(where, since_ns=since_ns, limit=limit)

    def recent(self, where: EventFilter, since_ns: int | None, limit: int) -> list[dict[str, Any]]:
        """Events from the SQLite history."""
        if self.history is None:
            if self.history_disabled is not None:
                raise ProtocolError("unavailable", f"the event history is disabled: {self.history_disabled}")
            raise ProtocolError("unavailable", "the event history is off (--history off)")
        try:
            return self.history.query(where, since_ns=since_ns, limit=limit)
        except JalkiError as exc:  # a corrupt page, or closing: health names it too
            raise ProtocolError("unavailable", exc.one_line()) from exc

    def events_after(self, where: EventFilter, after_seq: int, upto_seq: int | None,
                     limit: int) -> list[tuple[int, bytes]]:
        """The oldest ``limit`` events after ``after_seq`` (to ``upto_seq``) the daemon holds, in the rings or the
        history, as ``(seq, JSON)`` in ``seq`` order; each once."""
        found = self.rings.after(where, after_seq, upto_seq, limit)
        if self.history is not None and after_seq + 1 < self.rings.held_from(where):
            # the rings may lack the start: the history has it unless it was pruned or dropped
            try:
                older = self.history.after(where, after_seq, upto_seq, limit)
            except JalkiError as exc:
                log.warning("replay from the history failed: %s", exc.one_line())
                older = []
            merged = dict(older)
            merged.update(found)
            found = sorted(merged.items())[:limit]
        return found

    def held_from(self, where: EventFilter) -> int:
        """The lowest sequence number from which the daemon holds every event ``where`` can match (in its
        rings, or its history)."""
        held = self.rings.held_from(where)
        if self.history is not None and held > 1:
            try:
                bounds = self.history.seq_bounds()
            except JalkiError:
                bounds = None
            if bounds is not None:
                held = min(held, bounds[0])
        return held

    def events_page(self, where: EventFilter, after_seq: int, limit: int, *, history: bool) -> list[dict[str, Any]]:
        """``get_events``/``recent`` with a cursor: the oldest ``limit`` after ``after_seq``, decoded."""
        if history:
            if self.history is None:
                self.recent(where, None, 1)  # raises the reason
            assert self.history is not None
            try:
                page = self.history.after(where, after_seq, None, limit)
            except JalkiError as exc:
                raise ProtocolError("unavailable", exc.one_line()) from exc
        else:
            page = self.rings.after(where, after_seq, None, limit)
        return [orjson.loads(raw) for _, raw in page]

    def history_stats(self) -> dict[str, Any] | None:
        """The history's figures, state and problems (``disabled`` when it could not be opened); ``None`` when
        it is off."""
        if self.history is not None:
            return self.history.stats()
        if self.history_disabled is not None and self.config.history_path is not None:
            return disabled_history_stats(self.config.history_path, self.config.history_limits,
                                          self.history_disabled)
        return None

    def _open_history(self, path: Path) -> None:
        """Open and start the history; one that cannot be opened leaves the agent tracing without it, loudly."""
        try:
            history = History(path, self.config.history_limits)
        except JalkiError as exc:
            self.history_disabled = exc.one_line()
            log.warning("tracing without the event history: %s", self.history_disabled)
            return
        history.start()
        self.history = history
        try:  # numbering goes on from the history's, so a cursor stays valid across restarts
            bounds = history.seq_bounds()
        except JalkiError as exc:
            log.warning("history: cannot read its latest sequence number: %s", exc.one_line())
            bounds = None
        if bounds is not None and bounds[1] >= self._next_seq:
            self._next_seq = bounds[1] + 1
            self.stored_seq = bounds[1]

    def request_stop(self) -> None:
        """Begin the shutdown (safe from a signal handler)."""
        self.session.request_stop()

    def request_trim(self) -> None:
        """Hand freed heap back to the system at the next tick (e.g. after subscribers left; any thread)."""
        self._untrimmed_events += 1

    def request_reopen(self) -> None:
        """Reopen file emitters at the next tick (SIGHUP; safe from a signal handler)."""
        self._reopen_requested = True
        self.session.call_soon(lambda: None)  # wake the drain loop

    # ---- lifecycle -----------------------------------------------------------

    def serve(self, initial: Sequence[DeploySpec] = (), *, install_signals: bool = True) -> None:
        """Run until stopped: the calling thread becomes the drain thread."""
        from jalki_core.daemon.logfilter import install_repeat_filter
        from jalki_core.daemon.server import ApiServer

        self._malloc_trim = _tune_malloc()
        _preload()
        install_repeat_filter()
        # the socket first: a second daemon refused here has touched nothing of the first one's
        self._server = ApiServer(self, self.config.socket_path, self.config.socket_group,
                                 self.config.subscriber_queue)
        self._server.claim()
        try:
            self.session.start()
        except BaseException:
            self._server.close()
            raise
        previous: dict[int, Any] = {}
        try:
            for spec in initial:
                try:
                    self._deploy_now(spec)
                except ProtocolError as exc:
                    log.warning("probe %s: %s", spec.probe, exc.message)
            if self.config.history_path is not None:
                self._open_history(self.config.history_path)
            if self.config.metrics_addr is not None:
                from jalki_core.daemon.metrics import MetricsServer

                self._metrics = MetricsServer(self, self.config.metrics_addr)
                self._metrics.start()
            if install_signals:  # before the socket answers: a client may stop the daemon at its first reply
                previous = {sig: signal.signal(sig, lambda *_: self.request_stop())
                            for sig in (signal.SIGTERM, signal.SIGINT)}
                previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, lambda *_: self.request_reopen())
            self._server.start()
            self.ready = True
            log.info("jalki daemon ready on %s", self.config.socket_path)
            self.session.run(tick=self._tick)
        finally:
            self.ready = False
            self.stopping = True
            if self._server is not None:
                self._server.stop_accepting()
            self.summary = self.session.stop()
            if self._server is not None:
                self._server.close()
            if self.history is not None:
                self.history.close()
            if self._metrics is not None:
                self._metrics.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _preload() -> None:
    """Import now what would be imported lazily later, when the process may be out of file descriptors
    (an import opens files: one failing on the drain thread with ``EMFILE`` would cost events)."""
    import jalki_core.daemon.ask  # noqa: F401  (imported by the first ask)

    time.strptime("2000", "%Y")  # imports _strptime (event timestamps are parsed with it)


def _json_emitters() -> tuple[type, ...]:
    from jalki_core.emitters.builtin import FileEmitter, StdoutEmitter

    return (FileEmitter, StdoutEmitter)


_JSON_EMITTERS = _json_emitters()


def _tune_malloc() -> Callable[[int], int] | None:
    """glibc's allocator, set for a process that stays up: freed memory goes back to the system.

    Two arenas (not eight per CPU: each keeps its own free memory), and a fixed mmap threshold (glibc
    otherwise raises it, and with it the trim threshold, up to 32 and 64 MiB after a large buffer is
    freed, and keeps that much). Loading BPF objects frees several MiB of BTF that only ``malloc_trim``
    hands back: the returned function, called after a deploy and every :data:`TRIM_EVERY_S` while events
    flow. ``None`` where the C library is not glibc.
    """
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        mallopt, malloc_trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError):
        return None
    m_mmap_threshold, m_arena_max = -3, -8
    mallopt(m_arena_max, 2)
    mallopt(m_mmap_threshold, 256 * 1024)
    trim: Callable[[int], int] = malloc_trim
    return trim


def _by_source(events: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """A batch split into runs of one source, in order."""
    runs: list[list[dict[str, Any]]] = []
    for event in events:
        if runs and runs[-1][0].get("source", "") == event.get("source", ""):
            runs[-1].append(event)
        else:
            runs.append([event])
    return runs


def _emitter_keys(workers: Sequence[Any]) -> list[str]:
    """One name per emitter: its name, and ``name#2``, ``name#3`` … for further emitters of the same kind."""
    seen: Counter[str] = Counter()
    keys = []
    for worker in workers:
        name = worker.emitter.name
        seen[name] += 1
        keys.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return keys


def _version() -> str:
    from jalki_core import __version__

    return __version__
