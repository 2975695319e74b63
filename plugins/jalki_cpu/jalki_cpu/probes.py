"""The jalki-cpu probe: cycles, instructions, IPC and stalled cycles per process and interval."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import Any, ClassVar

from jalki_core.errors import PerfEventOpenError, ProbeError, ProbeUnavailableError
from jalki_core.events import Event, EventContext, kernel_comm
from jalki_core.probe import AttachRung, Probe
from jalki_cpu import layouts, perf
from jalki_cpu.derived import DEGRADATION_TYPE, DegradationSettings, IpcDegradationDetector

log = logging.getLogger("jalki.cpu")

INTERVAL_ENV = "JALKI_CPU_INTERVAL_MS"
"""Environment variable: the reporting interval per process in milliseconds (default 1000)."""
FRACTION_ENV = "JALKI_CPU_DEGRADATION_FRACTION"
"""Environment variable: IPC below this fraction of the process's baseline is a degradation (default 0.5)."""
DEFAULT_INTERVAL_NS = 1_000_000_000
DEFAULT_MIN_RUN_NS = 1_000_000

def _env_number(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ProbeError(f"{name}={raw!r} is not a number") from exc


def _ratio(numerator: int | None, denominator: int | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, 4)


class CpuIpcProbe(Probe):
    """Per process and interval: cycles, instructions, IPC and (where the CPU has them) stalled cycles.

    Needs hardware performance counters: :meth:`unavailable_reason` really
    opens ``CPU_CYCLES`` and ``INSTRUCTIONS`` on the first online CPU and
    says, in one line, why that failed (a VM without a virtual PMU, a
    paranoid setting…); the probe is then reported as not attached, never
    run on invented numbers. Where they exist, :meth:`prepare` opens one
    counting event per online CPU and counter and hands the file descriptors
    to the BPF object's ``PERF_EVENT_ARRAY`` maps; the stalled-cycles events
    are optional (most Intel CPUs lack them: their fields are then null).

    The kernel side (``bpf/cpu_ipc.bpf.c``) reads the counters on every
    ``sched_switch`` and adds each time slice's deltas to the process that
    ran; one ``kernel.cpu.ipc`` event per process and interval (``reason``
    ``interval``), one when its last thread exits (``exit``), and what is
    still accumulating when the session stops (``session_end``,
    :meth:`final_events`). :meth:`derive` adds ``kernel.cpu.ipc_degradation``
    when a process's IPC falls below a fraction of its learned baseline
    (see :mod:`jalki_cpu.derived`).

    :param interval_ns: reporting interval per process; default
        ``JALKI_CPU_INTERVAL_MS`` (milliseconds) or 1 s.
    :param min_run_ns: intervals in which the process ran less are not reported (default 1 ms).
    :param degradation: how degradation is judged; default fraction from
        ``JALKI_CPU_DEGRADATION_FRACTION`` or 0.5.
    """

    name = "cpu_ipc"
    observes = "sched:sched_switch + perf hardware counters (cycles, instructions, stalled cycles)"
    event_types = ("kernel.cpu.ipc", DEGRADATION_TYPE)
    bpf_object = "bpf/cpu_ipc.bpf.o"
    event_schema = "events.schema.json"
    layout = layouts.CPU_IPC
    extra_drop_causes = layouts.EXTRA_DROP_CAUSES
    ladder = (
        AttachRung("tp_btf", ("tpbtf_sched_switch",), "tp_btf/sched_switch: counters read per CPU at every switch"),
        AttachRung("tracepoint", ("tp_sched_switch",), "tracepoint/sched/sched_switch: the same, classic tracepoint"),
    )

    counters: ClassVar[tuple[perf.CounterSpec | None, ...]] = (
        perf.CPU_CYCLES, perf.INSTRUCTIONS, perf.STALLED_CYCLES_FRONTEND, perf.STALLED_CYCLES_BACKEND)
    """The perf events behind ``layouts.COUNTERS``, in order; None leaves a counter out."""
    required_counters: ClassVar[int] = 2
    """The first counters (cycles, instructions) the probe cannot run without."""
    counter_type: ClassVar[str] = "hardware"
    """``data.counter_type`` of the events: what kind of perf events were counted."""

    def __init__(self, interval_ns: int | None = None, min_run_ns: int = DEFAULT_MIN_RUN_NS,
                 degradation: DegradationSettings | None = None) -> None:
        if interval_ns is None:
            interval_ns = int(_env_number(INTERVAL_ENV, DEFAULT_INTERVAL_NS / 1e6) * 1_000_000)
        if interval_ns <= 0:
            raise ProbeError(f"cpu_ipc interval {interval_ns} ns is not positive")
        if min_run_ns < 0:
            raise ProbeError(f"cpu_ipc minimum run time {min_run_ns} ns is negative")
        self.interval_ns = interval_ns
        self.min_run_ns = min_run_ns
        if degradation is None:
            degradation = DegradationSettings(fraction=_env_number(FRACTION_ENV, 0.5))
        self.detector = IpcDegradationDetector(degradation)
        self._unavailable: tuple[str | None] | None = None
        self.opened: dict[str, int] = {}
        """After :meth:`prepare`: per counter, on how many CPUs its event opened."""

    # -- availability and set-up ---------------------------------------------

    def unavailable_reason(self) -> str | None:
        """Why the required counters cannot be opened here (one line), or None; checked once per instance."""
        if self._unavailable is None:
            specs = tuple(spec for spec in self.counters[: self.required_counters] if spec is not None)
            self._unavailable = (perf.probe_counters(specs, perf.online_cpus()[0]),)
        return self._unavailable[0]

    def rodata(self) -> dict[str, int | bytes]:
        """The interval and the minimum run time, for the kernel side."""
        return {"cpu_ipc_interval_ns": self.interval_ns, "cpu_ipc_min_run_ns": self.min_run_ns}

    def prepare(self, maps: Mapping[str, Any]) -> None:
        """Open each counter on every online CPU and put the fds into its ``PERF_EVENT_ARRAY``.

        The maps keep their own reference to each event, so the fds are closed
        here. A required counter that fails on any CPU fails the probe
        (:class:`ProbeUnavailableError`); an optional one is left out on that CPU.
        """
        self.opened = {}
        cpus = perf.online_cpus()
        for index, (counter, map_name, spec) in enumerate(zip(layouts.COUNTERS, layouts.COUNTER_MAPS,
                                                              self.counters, strict=True)):
            self.opened[counter] = 0
            if spec is None:
                continue
            for cpu in cpus:
                try:
                    event = perf.open_counter(spec, cpu)
                except PerfEventOpenError as exc:
                    if index < self.required_counters:
                        raise ProbeUnavailableError(f"probe {self.name} is unavailable here: {perf.reason(exc)} "
                                                    f"(CPU {cpu})",
                                                    hint="nothing is faked: this probe needs what this "
                                                         "machine lacks") from exc
                    log.info("cpu_ipc: %s is not counted on CPU %d: %s", counter, cpu, perf.reason(exc))
                    continue
                with event:  # the map keeps its own reference
                    maps[map_name].update(layouts.CPU_KEY.pack(cpu), layouts.FD_VALUE.pack(event.fd))
                self.opened[counter] += 1

    def describe(self) -> dict[str, Any]:
        """The base description plus the interval and the counters."""
        return {**super().describe(), "interval_ns": self.interval_ns, "min_run_ns": self.min_run_ns,
                "counters": {counter: spec.label if spec else None
                             for counter, spec in zip(layouts.COUNTERS, self.counters, strict=True)}}

    # -- events ----------------------------------------------------------------

    def _fill(self, event: Event, ts_ns: int, window_start_ns: int, run_ns: int, counts: tuple[int, ...],
              counted_ns: tuple[int, ...], switches: int, scaled: int, reason: str) -> Event:
        """``event`` (its envelope and ``process_data`` set) with the interval's ``data``."""
        values = {counter: (count if measured else None)
                  for counter, count, measured in zip(layouts.COUNTERS, counts, counted_ns, strict=True)}
        cycles, instructions = values["cycles"], values["instructions"]
        event["data"] = {
            "interval_ns": max(ts_ns - window_start_ns, 0),
            "run_ns": run_ns,
            **values,
            "ipc": _ratio(instructions, cycles),
            "stalled_frontend_ratio": _ratio(values["stalled_cycles_frontend"], cycles),
            "stalled_backend_ratio": _ratio(values["stalled_cycles_backend"], cycles),
            "counted_ratio": round(min(counted_ns[0], counted_ns[1]) / run_ns, 4) if run_ns else 0.0,
            "multiplexed_switches": scaled,
            "switches": switches,
            "counter_type": self.counter_type,
            "reason": reason,
        }
        return event

    def decode(self, batch: bytes, ctx: EventContext) -> list[Event]:
        events = []
        for record in self.layout.struct.iter_unpack(batch):
            (ts, cgroup_id, pid, _flags, _comm, window_start, run_ns, *rest) = record
            counts, counted_ns = tuple(rest[0:4]), tuple(rest[4:8])
            switches, scaled, reason = rest[8], rest[9], rest[10]
            event = ctx.from_header("kernel.cpu.ipc", record, severity="info")
            # the process's pid and cgroup are known on every record; its comm only with OWNER_KNOWN
            event["process_data"].update(pid=pid, cgroup_id=cgroup_id)
            events.append(self._fill(event, ts, window_start, run_ns, counts, counted_ns, switches, scaled,
                                     layouts.REASONS.get(reason, "interval")))
        return events

    def derive(self, events: list[Event], ctx: EventContext) -> list[Event]:
        """``kernel.cpu.ipc_degradation`` events (see :class:`~jalki_cpu.derived.IpcDegradationDetector`)."""
        return self.detector.derive(events, ctx)

    def pending_events(self, maps: Mapping[str, Any], ctx: EventContext) -> list[Event]:
        """``kernel.cpu.ipc`` events (reason ``session_end``) of the intervals still accumulating in the kernel.

        :param maps: the loaded object's maps by name; readable until the object is closed.
        """
        procs = maps["cpu_ipc_procs"]
        keys: list[bytes] = procs.keys()  # a BPF map, not a dict
        events = []
        for key in sorted(keys):
            value = procs.lookup(key)
            if value is None:  # emitted meanwhile
                continue
            (window_start, last_ns, run_ns, *rest) = layouts.PROCESS_VALUE.unpack(value)
            counts, counted_ns = tuple(rest[0:4]), tuple(rest[4:8])
            switches, scaled, cgroup_id, comm = rest[8], rest[9], rest[10], rest[11]
            if run_ns < self.min_run_ns:
                continue
            [pid] = layouts.PROCESS_KEY.unpack(key)
            ts = last_ns or time.clock_gettime_ns(time.CLOCK_MONOTONIC)
            event = ctx.new_event("kernel.cpu.ipc", ts, severity="info")
            event["process_data"] = {"pid": pid, "command": kernel_comm(comm), "cgroup_id": cgroup_id}
            events.append(self._fill(event, ts, window_start, run_ns, counts, counted_ns, switches, scaled,
                                     "session_end"))
        return sorted(events, key=lambda e: (e["timestamp"], e["process_data"]["pid"]))

    def final_events(self, maps: Mapping[str, Any], ctx: EventContext) -> list[Event]:
        """The intervals still open when the session stops, and the degradations they show."""
        events = self.pending_events(maps, ctx)
        return events + self.derive(events, ctx)
