"""A tracing session: attach probes, drain their ring buffers, emit events, summarise.

The drain loop waits on every probe's ring-buffer epoll fd (and a wake-up fd
for signals), copies records in C into one batch per probe, decodes each batch
in Python and hands the events to the emitter workers. Stopping detaches the
programs first, then drains what is left, so every record the kernel wrote is
decoded and every decoded event is emitted and flushed before exit.

With an enricher stage (``--enrich``; :mod:`jalki_core.enrich`), every
decoded and derived batch goes through the enrichers before ``on_events``
(the daemon's store, ask's rules) and the emitters; events an enricher holds
back are delivered at a later wake-up, or at stop before the emitters flush.

A probe with several record kinds (``Probe.layouts``) has its batch handed
over as runs of same-kind records, in arrival order, to
``Probe.decode_records``. A probe with ``tick_interval_s`` has its
``Probe.tick`` called on the drain thread that often, after a drain.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from jalki_core.emitters.base import Emitter, EmitterWorker, EventBatch
from jalki_core.errors import AttachLadderExhausted, JalkiError, LibbpfError, ProbeError
from jalki_core.events import EventContext, monotonic_to_realtime_offset
from jalki_core.loader import LoadedProbe, ProbeLoader, ProbeOptions, RungFailure
from jalki_core.privileges import ensure_tracefs, require_bpf_privileges, require_btf
from jalki_core.probe import Probe, RecordLayout
from jalki_core.recordjson import RecordEncoder

if TYPE_CHECKING:
    from jalki_core._libbpf import RingBufferReader, StatsHandle
    from jalki_core.enrich import EnrichStage

log = logging.getLogger("jalki.session")


@dataclass
class ProbeRunStats:
    """What happened to one probe during a session."""

    name: str
    rung: str | None = None
    records: int = 0
    events: int = 0
    decode_errors: int = 0
    derive_errors: int = 0
    size_mismatches: int = 0
    unknown_kinds: int | None = None
    """Records whose kind field named no declared layout; ``None`` for probes with one layout."""
    ticks: int = 0
    """Calls of the probe's ``tick`` hook (failed ones included)."""
    kernel_drops: dict[str, int] = field(default_factory=dict)
    failed_rungs: list[RungFailure] = field(default_factory=list)
    error: str | None = None
    run_time_ns: int = 0
    run_count: int = 0
    programs: dict[str, dict[str, int]] = field(default_factory=dict)
    """Per BPF program: ``{"run_time_ns", "run_count"}`` from ``bpf_enable_stats``; the totals above sum them."""
    ring_bytes: int | None = None
    """The size of the probe's ring buffer as loaded (its default, or ``ProbeOptions.ring_buffer_bytes``);
    ``None`` while not loaded."""

    @property
    def drops_by_cause(self) -> dict[str, int]:
        """Records lost, by cause: the probe's kernel counters, then ``size_mismatch`` and ``decode_error``.

        A probe with several record kinds also has ``unknown_kind``.
        """
        drops = {**self.kernel_drops, "size_mismatch": self.size_mismatches, "decode_error": self.decode_errors}
        if self.unknown_kinds is not None:
            drops["unknown_kind"] = self.unknown_kinds
        return drops

    @property
    def dropped(self) -> int:
        """Every record lost for this probe, whatever the cause."""
        return sum(self.drops_by_cause.values())

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form for summaries."""
        return {
            "probe": self.name,
            "attach": self.rung,
            "records": self.records,
            "events": self.events,
            "drops": self.drops_by_cause,
            "failed_rungs": [
                {"rung": f.rung, "stage": f.stage, "errno": f.errno_name, "message": f.message,
                 "hint": f.hint, "log": f.log_excerpt, "log_file": f.log_file}
                for f in self.failed_rungs
            ],
            "error": self.error,
            "derive_errors": self.derive_errors,
            "ticks": self.ticks,
            "run_time_ns": self.run_time_ns,
            "run_count": self.run_count,
            "programs": {name: dict(figures) for name, figures in self.programs.items()},
            "ring_bytes": self.ring_bytes,
        }


@dataclass
class SessionSummary:
    """Per-probe and per-emitter results of a session."""

    probes: list[ProbeRunStats]
    emitters: dict[str, dict[str, Any]]
    duration_s: float
    enrich: dict[str, Any] | None = None
    """The enricher stage's status at stop (:meth:`jalki_core.enrich.EnrichStage.status`); ``None``: no stage."""

    @property
    def events(self) -> int:
        """Events emitted over all probes."""
        return sum(p.events for p in self.probes)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        result = {
            "duration_s": round(self.duration_s, 3),
            "probes": [p.as_dict() for p in self.probes],
            "emitters": self.emitters,
        }
        if self.enrich is not None:
            result["enrich"] = self.enrich
        return result


@dataclass
class _ActiveProbe:
    loaded: LoadedProbe
    reader: RingBufferReader
    context: EventContext
    stats: ProbeRunStats
    options: ProbeOptions
    kinds: dict[int, RecordLayout]
    """Record kind → layout; one entry (kind 0) for a probe with one layout."""
    next_tick: float | None = None
    """When the probe's ``tick`` is due (monotonic seconds); ``None``: the probe has none."""
    encoder: RecordEncoder | None = None
    """The probe's ``record_json`` compiled for its context, once the fast path was first taken."""
    lines_apply: bool = False
    """Whether the probe's ``record_json`` describes what its ``decode`` makes (:func:`lines_apply_to`)."""


def lines_apply_to(probe: Probe) -> bool:
    """Whether ``probe.record_json`` describes the events its ``decode`` makes: declared for the layout the
    probe has, on the class that also defines its ``decode`` (a subclass that decodes or derives otherwise
    is decoded in Python), with ``derive_records`` beside any ``derive``."""
    spec = probe.record_json
    if spec is None or spec.layout is not probe.layout:
        return False
    cls = type(probe)
    owner = next(klass for klass in cls.__mro__ if "record_json" in vars(klass))

    def same(name: str) -> bool:
        return getattr(cls, name, None) is getattr(owner, name, None)

    if not same("decode"):
        return False
    if cls.derive is Probe.derive:
        return True
    return same("derive") and same("derive_records") and probe.derive_records is not None


class TraceSession:
    """Attach probes, stream their events to emitters until stopped, then summarise.

    :param probes: the probes to run.
    :param emitters: where events go (each runs on its own worker thread).
    :param options: filters, sampling and ring size for every probe.
    :param strict: raise when any probe fails to attach instead of skipping it.
    :param cluster: value of every event's ``cluster`` field.
    :param on_events: optional in-process callback receiving each decoded batch.
    :param drain_interval: after a drain that found little, wait this long before
        the next one so records accumulate into bigger batches (one wake-up, one
        decode call and one write per batch instead of per record). Set 0 for
        the lowest latency.
    :param enrich: enrichers run on every batch before ``on_events`` and the
        emitters (:class:`jalki_core.enrich.EnrichStage`), and the emitters'
        namespace scope.
    """

    BUSY_BATCH_RECORDS = 4096
    """A drain that returns this many records means the rings are busy: drain again at once."""

    def __init__(
        self,
        probes: Sequence[Probe],
        emitters: Sequence[Emitter] = (),
        *,
        options: ProbeOptions | None = None,
        strict: bool = False,
        cluster: str | None = None,
        on_events: Callable[[list[dict[str, Any]]], None] | None = None,
        drain_interval: float = 0.02,
        batch_bytes: int | None = None,
        enrich: EnrichStage | None = None,
    ) -> None:
        self.probes = list(probes)
        self.enrich = enrich if enrich is not None and (enrich.slots or enrich.namespaces is not None) else None
        self.workers: list[EmitterWorker] = [emitter.make_worker() for emitter in emitters]
        self.emit_drain_seconds: float | None = None
        """How long emitters that send off the node keep delivering at stop (``--emit-drain-seconds``;
        ``None``: their default)."""
        self.options = options or ProbeOptions()
        self.strict = strict
        self.cluster = cluster
        self.on_events = on_events
        self.drain_interval = drain_interval
        self.batch_bytes = batch_bytes
        """Most bytes one drain reads from a probe's ring (default: the ring's size). Smaller batches
        bound the memory a drain decodes at once; a full batch makes the loop drain again at once."""
        self._batch_full = False
        self.stats: dict[str, ProbeRunStats] = {p.name: ProbeRunStats(p.name) for p in self.probes}
        self._active: list[_ActiveProbe] = []
        self._epoll: select.epoll | None = None
        self._wake_r, self._wake_w = -1, -1
        self._stats_handle: StatsHandle | None = None
        self._started_at = 0.0
        self._stop_requested = False
        self._clock_offset = 0
        self.ring_fill: dict[str, float] = {}
        """Per probe: the share of its ring buffer filled (written, not yet read) when the latest drain began
        (0 to 1)."""
        self._run_id = ""
        self.delivery_lost: Counter[str] = Counter()
        """Events the ``on_events`` callback failed on, by cause (errno name or exception type): that batch
        is lost to the callback's consumers, the emitters still get it."""
        self.delivery_last_error: str | None = None
        self._calls: list[tuple[Callable[[], Any], Future[Any]]] = []
        self._calls_lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        """Check privileges, open emitters, and attach every probe (skipping failures)."""
        require_bpf_privileges()
        require_btf()
        if not ensure_tracefs():
            log.warning("tracefs is not mounted: classic tracepoint rungs will fail")
        from jalki_core._libbpf import enable_stats

        self._started_at = time.monotonic()
        self._clock_offset = monotonic_to_realtime_offset()
        self._epoll = select.epoll()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._epoll.register(self._wake_r, select.EPOLLIN)
        self._run_id = os.urandom(4).hex()
        try:
            for worker in self.workers:
                worker.start()
            if self.enrich is not None:
                self.enrich.start()
            try:
                self._stats_handle = enable_stats()
            except JalkiError as exc:
                log.info("program run-time statistics unavailable: %s", exc.one_line())
            for probe in self.probes:
                self._attach(probe, self.options)
        except BaseException:
            self.stop()
            raise
        if not self._active and self.probes:
            log.warning("no probe could be attached")

    def _attach(self, probe: Probe, options: ProbeOptions) -> ProbeRunStats:
        """Load and attach one probe on the best rung; record a failure in its stats instead of raising.

        With ``strict`` a failure raises. Runs on the drain thread (or before :meth:`run`).
        """
        assert self._epoll is not None, "start() first"
        stats = self.stats[probe.name] = ProbeRunStats(probe.name)
        try:
            loaded = ProbeLoader(options).load(probe)
        except ProbeError as exc:
            stats.failed_rungs = list(exc.failures) if isinstance(exc, AttachLadderExhausted) else []
            stats.error = exc.one_line()
            log.warning("probe %s skipped: %s", probe.name, exc.one_line())
            if self.strict:
                raise
            return stats
        stats.rung = loaded.rung.name
        stats.failed_rungs = loaded.failures
        stats.ring_bytes = options.ring_buffer_bytes or probe.ring_buffer_bytes
        from jalki_core._libbpf import RingBufferReader

        try:
            kinds, kind_offset = probe.record_kinds()
            sizes: int | dict[int, int] = {kind: layout.size for kind, layout in kinds.items()} \
                if probe.layouts else kinds[0].size
            reader = RingBufferReader(loaded.obj.maps[probe.ring_buffer], sizes, self.batch_bytes,
                                      kind_offset=kind_offset)
        except (LibbpfError, ProbeError) as exc:
            loaded.close()
            stats.rung, stats.error = None, exc.one_line()
            log.warning("probe %s skipped: %s", probe.name, exc.one_line())
            if self.strict:
                raise
            return stats
        context = EventContext(probe.name, loaded.rung.name, cluster=self.cluster,
                               clock_offset_ns=self._clock_offset, run_id=self._run_id)
        self._epoll.register(reader.epoll_fd, select.EPOLLIN)
        if probe.layouts:
            stats.unknown_kinds = 0
        interval = probe.tick_interval_s
        next_tick = None if interval is None else time.monotonic() + interval
        self._active.append(_ActiveProbe(loaded, reader, context, stats, options, kinds, next_tick,
                                         lines_apply=lines_apply_to(probe)))
        return stats

    def attach_probe(self, probe: Probe, options: ProbeOptions | None = None) -> ProbeRunStats:
        """Attach one more probe while the session runs (call on the drain thread: see :meth:`call_soon`).

        :raises ProbeError: a probe of that name is already attached.
        """
        if probe.name in self.attached:
            raise ProbeError(f"probe {probe.name} is already attached")
        if probe not in self.probes:
            self.probes.append(probe)
        return self._attach(probe, options or self.options)

    def detach_probe(self, name: str) -> ProbeRunStats:
        """Detach one probe, drain what it left, and free it; return its final stats (drain thread).

        :raises ProbeError: no probe of that name is attached.
        """
        active = next((a for a in self._active if a.loaded.probe.name == name), None)
        if active is None:
            raise ProbeError(f"probe {name} is not attached")
        active.loaded.detach()
        self._finish(active)
        self._active.remove(active)
        self.probes = [probe for probe in self.probes if probe.name != name]
        return active.stats

    def options_of(self, name: str) -> ProbeOptions | None:
        """The options an attached probe was loaded with."""
        return next((a.options for a in self._active if a.loaded.probe.name == name), None)

    def call_soon(self, func: Callable[[], Any]) -> Future[Any]:
        """Run ``func`` on the drain thread at its next wake-up; thread-safe.

        Attaching, detaching and reading probe state must happen there, never
        concurrently with a drain.
        """
        future: Future[Any] = Future()
        with self._calls_lock:
            self._calls.append((func, future))
        self._wake()
        return future

    def _run_calls(self) -> None:
        with self._calls_lock:
            calls, self._calls = self._calls, []
        for func, future in calls:
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(func())
                except BaseException as exc:  # handed to the caller, never lost
                    future.set_exception(exc)

    def _wake(self) -> None:
        if self._wake_w >= 0:
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass

    def live_stats(self) -> list[ProbeRunStats]:
        """Current stats of the attached probes, with kernel drop and run-time counters read now (drain thread)."""
        for active in self._active:
            self._read_counters(active)
        return [active.stats for active in self._active]

    def ring_fill_now(self) -> dict[str, float]:
        """Per attached probe, the share of its ring buffer written and not yet read, now (drain thread)."""
        fills = {a.stats.name: a.reader.fill_ratio() for a in self._active}
        return {name: fill for name, fill in fills.items() if fill is not None}

    @property
    def attached(self) -> list[str]:
        """Names of the probes attached in this session."""
        return [a.loaded.probe.name for a in self._active]

    @property
    def sinks_gone(self) -> bool:
        """True when every emitter's sink went away for good (nothing left to write to)."""
        return bool(self.workers) and all(worker.stats.closed for worker in self.workers)

    def request_stop(self) -> None:
        """Ask a running :meth:`run` to return soon (safe from signal handlers)."""
        self._stop_requested = True
        self._wake()

    def run(self, seconds: float | None = None, *, tick: Callable[[], None] | None = None) -> None:
        """Drain until :meth:`request_stop` or until ``seconds`` have passed.

        :param tick: called on the drain thread after every wake-up (at least
            every 250 ms), e.g. to expire probes whose time is up.
        """
        assert self._epoll is not None, "start() first"
        deadline = None if seconds is None else time.monotonic() + seconds
        while not self._stop_requested and not self.sinks_gone:
            timeout = 0.25
            due = self._next_tick_due()
            if due is not None:
                timeout = max(0.0, min(timeout, due - time.monotonic()))
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                timeout = min(timeout, remaining)
            try:
                ready = self._epoll.poll(timeout)
            except InterruptedError:
                continue
            if any(fd == self._wake_r for fd, _ in ready):
                try:
                    os.read(self._wake_r, 4096)
                except BlockingIOError:
                    pass
            self._run_calls()
            if tick is not None:
                tick()
            busy = bool(ready) and (self.drain_once() >= self.BUSY_BATCH_RECORDS or self._batch_full)
            self.run_due_ticks()
            self.release_enriched()
            if ready and not busy and self.drain_interval > 0:
                # Let records accumulate; wake at once if a stop is requested.
                select.select([self._wake_r], [], [], self.drain_interval)

    def _next_tick_due(self) -> float | None:
        dues = [a.next_tick for a in self._active if a.next_tick is not None]
        return min(dues) if dues else None

    def run_due_ticks(self, now: float | None = None) -> int:
        """Call the ``tick`` hook of every attached probe whose interval has passed (drain thread); return calls.

        Its events are delivered like decoded ones (emitters, ``on_events``),
        without :meth:`Probe.derive`. A failing hook is logged and counted in
        the probe's ``derive_errors``; it is called again at its next time.
        Ticks missed while the loop was busy are not made up: the next is one
        interval after this one.
        """
        now = time.monotonic() if now is None else now
        calls = 0
        for active in self._active:
            if active.next_tick is None or active.next_tick > now:
                continue
            interval = active.loaded.probe.tick_interval_s or 0.0
            active.next_tick += interval
            if active.next_tick <= now:  # late (a busy loop): skip the missed ones, keep the interval
                active.next_tick = now + interval
            calls += 1
            active.stats.ticks += 1
            try:
                events = active.loaded.probe.tick(active.loaded.obj.maps, active.context)
            except Exception as exc:  # a tick bug costs its own events, never the drain
                active.stats.derive_errors += 1
                log.error("probe %s: tick failed: %s", active.stats.name, f"{type(exc).__name__}: {exc}")
                continue
            self._deliver(active, list(events))
        return calls

    def drain_once(self) -> int:
        """Consume every probe's ring buffer once; return records decoded."""
        total = 0
        self._batch_full = False
        for active in self._active:
            total += self._drain_probe(active)
        return total

    def _drain_probe(self, active: _ActiveProbe) -> int:
        if active.loaded.probe.layouts:
            return self._drain_kinds(active)
        fill = active.reader.fill_ratio()  # before the drain: how far the kernel got ahead of us
        batch = active.reader.consume()
        if len(batch) + active.loaded.probe.layout.size > active.reader.batch_bytes:
            self._batch_full = True  # more may be waiting: drain again at once
        if fill is None:  # the ring's position pages could not be mapped: what this drain found
            ring_bytes = active.options.ring_buffer_bytes or active.loaded.probe.ring_buffer_bytes
            fill = min(1.0, len(batch) / ring_bytes)
        self.ring_fill[active.stats.name] = fill
        if not batch:
            return 0
        stats = active.stats
        count = len(batch) // active.loaded.probe.layout.size
        stats.records += count
        if self._writes_lines(active):
            return self._encode_lines(active, batch, count)
        return self._decode_and_deliver(active, batch, count)

    def _decode_and_deliver(self, active: _ActiveProbe, batch: bytes, count: int) -> int:
        stats = active.stats
        try:
            events = active.loaded.probe.decode(batch, active.context)
        except Exception as exc:  # a decoder bug is isolated to its probe and counted
            stats.decode_errors += count
            log.error("probe %s: decoder failed on %d records: %s", stats.name, count,
                      f"{type(exc).__name__}: {exc}")
            return count
        self._derive_and_deliver(active, events)
        return count

    def _writes_lines(self, active: _ActiveProbe) -> bool:
        """Whether this probe's batches go to the emitters as lines written in C (``record_json``):
        its events are a plain function of its records (its derivations, if any, read the records), and
        nothing but emitters reads them (no ``on_events`` consumer, no enricher or namespace scope)."""
        return (active.lines_apply and self.on_events is None and bool(self.workers)
                and (self.enrich is None or (not self.enrich.slots and self.enrich.namespaces is None)))

    def _encode_lines(self, active: _ActiveProbe, batch: bytes, count: int) -> int:
        probe, stats = active.loaded.probe, active.stats
        if active.encoder is None:
            assert probe.record_json is not None
            try:
                active.encoder = RecordEncoder(probe.record_json, active.context, probe.decode)
            except Exception as exc:  # e.g. a binding built without the encoder: decode in Python from now on
                active.lines_apply = False
                log.error("probe %s: cannot write its events in C (%s: %s); decoding them in Python",
                          stats.name, type(exc).__name__, exc)
                return self._decode_and_deliver(active, batch, count)
        try:
            lines, events = active.encoder.encode(batch)
        except Exception as exc:  # like a decoder bug: isolated to its probe and counted
            stats.decode_errors += count
            log.error("probe %s: encoder failed on %d records: %s", stats.name, count,
                      f"{type(exc).__name__}: {exc}")
            return count
        if events:
            stats.events += events
            self._submit(EventBatch.encoded(lines, events))
        if probe.derive_records is not None:
            try:
                derived = probe.derive_records(list(probe.layout.struct.iter_unpack(batch)), active.context)
            except Exception as exc:  # a derivation bug must not cost the batch's own events
                stats.derive_errors += 1
                log.error("probe %s: derive failed: %s", stats.name, f"{type(exc).__name__}: {exc}")
            else:
                self._deliver(active, derived)
        return count

    def _drain_kinds(self, active: _ActiveProbe) -> int:
        """:meth:`_drain_probe` for a probe with several record kinds: one decode call per run."""
        fill = active.reader.fill_ratio()
        runs = active.reader.consume_runs()
        nbytes = sum(len(records) for _, records in runs)
        if nbytes + active.reader.record_size > active.reader.batch_bytes:
            self._batch_full = True
        if fill is None:
            ring_bytes = active.options.ring_buffer_bytes or active.loaded.probe.ring_buffer_bytes
            fill = min(1.0, nbytes / ring_bytes)
        self.ring_fill[active.stats.name] = fill
        if not runs:
            return 0
        count, events = decode_runs(active.loaded.probe, runs, active.kinds, active.context, active.stats)
        self._derive_and_deliver(active, events)
        return count

    def _derive_and_deliver(self, active: _ActiveProbe, events: list[dict[str, Any]]) -> None:
        if events:
            try:
                events.extend(active.loaded.probe.derive(events, active.context))
            except Exception as exc:  # a derivation bug must not cost the batch's own events
                active.stats.derive_errors += 1
                log.error("probe %s: derive failed: %s", active.stats.name, f"{type(exc).__name__}: {exc}")
        self._deliver(active, events)

    def release_enriched(self) -> None:
        """Deliver the events enrichers held and now let out (their pod became known, or their wait ended)."""
        if self.enrich is not None and self.enrich.slots:
            self._emit(self.enrich.process([]))

    def _deliver(self, active: _ActiveProbe, events: list[dict[str, Any]]) -> None:
        if not events:
            return
        active.stats.events += len(events)
        if self.enrich is not None and self.enrich.slots:
            events = self.enrich.process(events)  # may hold some back, and let earlier ones out
        self._emit(events)

    def _emit(self, events: list[dict[str, Any]]) -> None:
        """Hand delivered events to ``on_events`` and the emitters (those in the namespace scope)."""
        if not events:
            return
        # which events the emitters get is decided first: on_events may replace the objects (encoded)
        scope = self.enrich.scope_mask(events) if self.enrich is not None else None
        if self.on_events is not None:
            try:
                self.on_events(events)
            except Exception as exc:  # e.g. EMFILE: costs the callback this batch (counted), never the session
                cause = errno.errorcode.get(exc.errno or 0, "OSError") if isinstance(exc, OSError) \
                    else type(exc).__name__
                self.delivery_lost[cause] += len(events)
                self.delivery_last_error = f"{type(exc).__name__}: {exc}"
                log.error("the event consumer failed, its batch is lost (counted): %s", self.delivery_last_error)
        if scope is not None:
            if not scope:
                return
            events = [events[index] for index in scope]
        self._submit(EventBatch(events))

    def _submit(self, batch: EventBatch) -> None:
        for worker in self.workers:
            worker.submit(batch)

    def _read_counters(self, active: _ActiveProbe) -> None:
        active.stats.size_mismatches = active.reader.size_mismatches
        if active.stats.unknown_kinds is not None:
            active.stats.unknown_kinds = active.reader.unknown_kinds
        active.stats.kernel_drops = active.loaded.kernel_drops()
        programs = {name: {"run_time_ns": time_ns, "run_count": count}
                    for name, (time_ns, count) in active.loaded.program_stats().items()}
        active.stats.programs = programs
        active.stats.run_time_ns = sum(figures["run_time_ns"] for figures in programs.values())
        active.stats.run_count = sum(figures["run_count"] for figures in programs.values())

    def _finish(self, active: _ActiveProbe) -> None:
        """After detach: drain what is left, emit final events, read counters, free (drain thread)."""
        # The programs are detached: whatever is still in the ring is final.
        while self._drain_probe(active):
            pass
        try:
            self._deliver(active, active.loaded.probe.final_events(active.loaded.obj.maps, active.context))
        except Exception as exc:  # e.g. a histogram map that could not be read
            active.stats.derive_errors += 1
            log.error("probe %s: final events failed: %s", active.stats.name, f"{type(exc).__name__}: {exc}")
        self._read_counters(active)
        if self._epoll is not None:
            try:
                self._epoll.unregister(active.reader.epoll_fd)
            except (OSError, ValueError):
                pass
        active.reader.close()
        active.loaded.close()

    def stop(self) -> SessionSummary:
        """Detach, drain what is left, flush emitters, free everything; return the summary."""
        with self._calls_lock:
            calls, self._calls = self._calls, []
        for _, future in calls:  # nobody will run them now: tell the callers
            if future.set_running_or_notify_cancel():
                future.set_exception(JalkiError("the tracing session is stopping"))
        for active in self._active:
            active.loaded.detach()
        for active in self._active:
            self._finish(active)
        self._active.clear()
        if self.enrich is not None:
            self._emit(self.enrich.close())  # what the enrichers still held, before the emitters flush
        for worker in self.workers:
            worker.stop(self.emit_drain_seconds)
        if self._stats_handle is not None:
            self._stats_handle.close()
            self._stats_handle = None
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1
        duration = time.monotonic() - self._started_at if self._started_at else 0.0
        emitters = {worker.emitter.name: worker.as_dict() for worker in self.workers}
        return SessionSummary(list(self.stats.values()), emitters, duration,
                              self.enrich.status() if self.enrich is not None else None)


def decode_runs(
    probe: Probe,
    runs: Sequence[tuple[int, bytes]],
    kinds: dict[int, RecordLayout],
    ctx: EventContext,
    stats: ProbeRunStats,
) -> tuple[int, list[dict[str, Any]]]:
    """Decode runs of same-kind records with ``probe.decode_records``, in order; return (records, events).

    Records are counted in ``stats.records``; a run whose decoder raises
    costs only its own records, counted as ``decode_error`` drops.
    """
    count = 0
    events: list[dict[str, Any]] = []
    for kind, records in runs:
        n = len(records) // kinds[kind].size
        count += n
        try:
            events.extend(probe.decode_records(kind, records, ctx))
        except Exception as exc:  # a decoder bug costs its run, not the batch
            stats.decode_errors += n
            log.error("probe %s: decoder failed on %d records of kind %d: %s", stats.name, n, kind,
                      f"{type(exc).__name__}: {exc}")
    stats.records += count
    return count, events
