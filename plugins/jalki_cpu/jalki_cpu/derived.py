"""IPC degradation: a process's IPC falls below a fraction of its own learned baseline.

Works on decoded ``kernel.cpu.ipc`` events only (their timestamps, never the
wall clock), so replaying the same events gives the same anomalies.

For each process (pid, reset when the pid shows another command) the
baseline is an exponentially weighted mean of its IPC over its intervals
with enough cycles to mean something. Once ``warmup`` intervals have built
it, an interval whose IPC is below ``fraction`` × baseline is degraded:
the first degraded interval of each detection window (``window_ns``,
aligned to the epoch) emits one ``kernel.cpu.ipc_degradation`` event, the
following ones in the same window are only counted. Degraded intervals do
not move the baseline, so a lasting degradation keeps being reported once
per window instead of becoming the new normal.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from jalki_core.errors import ProbeError
from jalki_core.events import Event, EventContext
from jalki_core.kb.evaluate import parse_timestamp

DEGRADATION_TYPE = "kernel.cpu.ipc_degradation"


@dataclass
class _Baseline:
    command: str | None
    ipc: float = 0.0
    intervals: int = 0
    reported_window: int | None = None
    degraded_in_window: int = 0


@dataclass(frozen=True)
class DegradationSettings:
    """How degradation is judged.

    :param fraction: an interval is degraded when its IPC < fraction × baseline (0 < fraction < 1).
    :param window_ns: at most one degradation event per process per window of this length.
    :param warmup: intervals that build the baseline before anything is judged.
    :param alpha: weight of the newest interval in the baseline (0 < alpha ≤ 1).
    :param min_cycles: intervals with fewer cycles are neither judged nor learned from.
    :param max_processes: processes remembered (least recently seen forgotten first).
    """

    fraction: float = 0.5
    window_ns: int = 60_000_000_000
    warmup: int = 3
    alpha: float = 0.2
    min_cycles: int = 10_000_000
    max_processes: int = 4096

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction < 1.0:
            raise ProbeError(f"IPC degradation fraction {self.fraction} is outside (0, 1)")
        if self.window_ns <= 0 or self.warmup < 1 or self.max_processes < 1 or self.min_cycles < 0:
            raise ProbeError("IPC degradation: window, warmup and max_processes must be positive")
        if not 0.0 < self.alpha <= 1.0:
            raise ProbeError(f"IPC degradation alpha {self.alpha} is outside (0, 1]")


class IpcDegradationDetector:
    """Per-process IPC baselines and the degradation events they give (one instance per probe instance)."""

    def __init__(self, settings: DegradationSettings | None = None) -> None:
        self.settings = settings or DegradationSettings()
        self._processes: OrderedDict[int, _Baseline] = OrderedDict()

    def baseline(self, pid: int) -> float | None:
        """The learned IPC baseline of ``pid`` once warm, else None."""
        state = self._processes.get(pid)
        return state.ipc if state is not None and state.intervals >= self.settings.warmup else None

    def derive(self, events: list[Event], ctx: EventContext) -> list[Event]:
        """The degradation events of a batch of decoded events, in order."""
        out = []
        for event in events:
            if event.get("type") != "kernel.cpu.ipc":
                continue
            anomaly = self._observe(event, ctx)
            if anomaly is not None:
                out.append(anomaly)
        return out

    def _state_for(self, pid: int, command: str | None) -> _Baseline:
        state = self._processes.get(pid)
        if state is None or state.command != command:
            state = _Baseline(command)
            self._processes[pid] = state
        self._processes.move_to_end(pid)
        while len(self._processes) > self.settings.max_processes:
            self._processes.popitem(last=False)
        return state

    def _observe(self, event: Event, ctx: EventContext) -> Event | None:
        data: dict[str, Any] = event.get("data") or {}
        process = event.get("process_data") or {}
        pid, ipc, cycles = process.get("pid"), data.get("ipc"), data.get("cycles")
        ts_ns = parse_timestamp(event.get("timestamp"))
        if not isinstance(pid, int) or ts_ns is None:
            return None
        gone = data.get("reason") == "exit"
        if not isinstance(ipc, (int, float)) or not isinstance(cycles, int) or cycles < self.settings.min_cycles:
            if gone:
                self._processes.pop(pid, None)
            return None
        state = self._state_for(pid, process.get("command"))
        anomaly = None
        settings = self.settings
        if state.intervals >= settings.warmup and ipc < settings.fraction * state.ipc:
            window = ts_ns // settings.window_ns
            if state.reported_window != window:
                state.reported_window, state.degraded_in_window = window, 0
                anomaly = self._anomaly(event, ctx, state.ipc, float(ipc))
            state.degraded_in_window += 1
        else:
            state.ipc = float(ipc) if state.intervals == 0 else (
                settings.alpha * float(ipc) + (1.0 - settings.alpha) * state.ipc)
            state.intervals += 1
        if gone:
            self._processes.pop(pid, None)
        return anomaly

    def _anomaly(self, source: Event, ctx: EventContext, baseline: float, ipc: float) -> Event:
        ratio = ipc / baseline
        severity = "error" if ratio < self.settings.fraction / 2 else "warning"
        event = ctx.new_event(DEGRADATION_TYPE, 0, severity=severity)
        event["timestamp"] = source["timestamp"]  # the degraded interval's end, exactly
        event["process_data"] = dict(source.get("process_data") or {})
        data = source["data"]
        event["data"] = {
            "ipc": ipc,
            "baseline_ipc": round(baseline, 4),
            "ratio": round(ratio, 4),
            "fraction": self.settings.fraction,
            "window_ns": self.settings.window_ns,
            "interval_ns": data.get("interval_ns"),
            "cycles": data.get("cycles"),
            "instructions": data.get("instructions"),
            "source_event": source.get("id"),
        }
        return event
