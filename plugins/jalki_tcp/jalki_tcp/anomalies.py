"""Windowed network anomalies computed in user space from jalki-tcp events.

One window algorithm serves all four anomalies (``kernel.network.retransmit_spike``,
``rst_storm``, ``rtt_degradation``, ``connect_failures``): :class:`BurstDetector`.

Window semantics (sliding detection, one report per window)
-----------------------------------------------------------
Each qualifying event is put in a *group* (e.g. one destination). Times are the
events' own timestamps (nanoseconds since the epoch, parsed from ``timestamp``),
never the wall clock, so replayed events give the same result.

- A window **opens** for a group as soon as the group has ``threshold`` events
  whose first and last lie at most ``seconds`` apart (``last - first <= T``,
  the same rule as the KB's window conditions): the check slides over the
  group's recent events, so a burst that straddles any boundary is found.
- The window spans ``[start, start + T]`` where ``start`` is the earliest of
  those events. Every later event of the group up to ``start + T`` (inclusive)
  counts in the same window; none of them opens another one.
- The window **closes** when an event of the detector (any group) arrives with
  a time after ``start + T``, or when the session stops (:meth:`BurstDetector.flush`,
  called from the probe's ``final_events``). A closed window is reported once,
  with every event it counted, so a storm of 3N events is one report with
  count 3N; the report can therefore come up to ``T`` after the window opened.
- An event after the window's end starts afresh: the next window needs
  ``threshold`` new events.
- Events arriving out of order (a few µs between CPUs) are counted in an open
  window if they fall inside it; an event older than a window that was
  already closed is treated as a new event of its group.

Memory is bounded: a group keeps at most ``threshold - 1`` pending events, and
groups whose pending events all lie more than ``T`` behind the newest event
are forgotten.
"""

from __future__ import annotations

import calendar
import functools
import heapq
import time
from bisect import insort
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from jalki_core.events import Event, EventContext, Rfc3339Formatter

NS_PER_S = 1_000_000_000


class Accumulator(Protocol):
    """What a window folds its events into (counts by kind, distinct peers, …)."""

    def add(self, event: Event) -> None:
        """Fold one event of the window."""


A = TypeVar("A", bound=Accumulator)


@functools.lru_cache(maxsize=4096)
def _epoch_seconds(prefix: str) -> int:
    return calendar.timegm(time.strptime(prefix, "%Y-%m-%dT%H:%M:%S"))


def event_time_ns(event: Event) -> int | None:
    """Nanoseconds since the epoch of an event's RFC 3339 ``timestamp`` (UTC, ``Z``), else None."""
    text = event.get("timestamp")
    if not isinstance(text, str) or len(text) < 20 or not text.endswith("Z"):
        return None
    try:
        seconds = _epoch_seconds(text[:19])
        fraction = text[20:-1] if text[19] == "." else ""
        nanos = int(fraction.ljust(9, "0")[:9]) if fraction else 0
    except ValueError:
        return None
    return seconds * NS_PER_S + nanos


@dataclass
class Window(Generic[A]):
    """A window that held at least ``threshold`` events of one group."""

    group: Hashable
    start_ns: int
    end_ns: int
    count: int
    last_ns: int
    accumulator: A
    sample: Event
    """The first event of the window (its network fields describe the group)."""
    owners: dict[int, dict[str, Any]] = field(default_factory=dict)
    """``process_data`` of the window's events by pid (events with no known process are not in it)."""

    def note_owner(self, event: Event) -> None:
        """Remember the process of ``event``, when it has one."""
        process = event.get("process_data")
        if isinstance(process, dict) and process.get("pid") is not None:
            self.owners.setdefault(int(process["pid"]), process)

    @property
    def sole_owner(self) -> dict[str, Any] | None:
        """The one process behind every attributed event of the window, or None (several, or none)."""
        return next(iter(self.owners.values())) if len(self.owners) == 1 else None


@dataclass
class _Group(Generic[A]):
    pending: list[tuple[int, int, Event]] = field(default_factory=list)
    window: Window[A] | None = None


class BurstDetector(Generic[A]):
    """Finds, per group, windows of at least ``threshold`` events within ``seconds``.

    :param threshold: events needed in one window (``N``, at least 1).
    :param seconds: window length ``T`` (> 0).
    :param new_accumulator: makes the per-window accumulator.
    """

    def __init__(self, threshold: int, seconds: float, new_accumulator: Callable[[], A]) -> None:
        if threshold < 1:
            raise ValueError("threshold must be at least 1")
        if seconds <= 0:
            raise ValueError("seconds must be positive")
        self.threshold = threshold
        self.seconds = seconds
        self.window_ns = int(seconds * NS_PER_S)
        self._new = new_accumulator
        self._groups: dict[Hashable, _Group[A]] = {}
        self._ends: list[tuple[int, int, Hashable]] = []  # heap of open windows by end
        self._sequence = 0
        self._newest = 0
        self._adds = 0

    def add(self, group: Hashable, ts_ns: int, event: Event) -> list[Window[A]]:
        """Count one event; return the windows (of any group) that this event closed."""
        closed = self._close_before(ts_ns)
        self._newest = max(self._newest, ts_ns)
        state = self._groups.get(group)
        if state is None:
            state = self._groups[group] = _Group()
        window = state.window
        if window is not None and ts_ns <= window.end_ns:
            window.count += 1
            window.last_ns = max(window.last_ns, ts_ns)
            window.accumulator.add(event)
            window.note_owner(event)
            return closed
        self._sequence += 1
        insort(state.pending, (ts_ns, self._sequence, event))
        newest = state.pending[-1][0]
        while state.pending and newest - state.pending[0][0] > self.window_ns:
            state.pending.pop(0)
        if len(state.pending) >= self.threshold:
            self._open(group, state)
        self._adds += 1
        if self._adds % 1024 == 0:
            self._forget_idle()
        return closed

    def flush(self) -> list[Window[A]]:
        """Close and return every open window (at session stop); pending events are kept."""
        closed = []
        for state in self._groups.values():
            if state.window is not None:
                closed.append(state.window)
                state.window = None
        self._ends.clear()
        closed.sort(key=lambda w: (w.start_ns, repr(w.group)))
        return closed

    def _open(self, group: Hashable, state: _Group[A]) -> None:
        first_ts, _, first = state.pending[0]
        accumulator = self._new()
        for _, _, event in state.pending:
            accumulator.add(event)
        window = Window(group, first_ts, first_ts + self.window_ns, len(state.pending),
                        state.pending[-1][0], accumulator, first)
        for _, _, event in state.pending:
            window.note_owner(event)
        state.pending = []
        state.window = window
        self._sequence += 1
        heapq.heappush(self._ends, (window.end_ns, self._sequence, group))

    def _close_before(self, ts_ns: int) -> list[Window[A]]:
        closed: list[Window[A]] = []
        while self._ends and self._ends[0][0] < ts_ns:
            end, _, group = heapq.heappop(self._ends)
            state = self._groups.get(group)
            if state is not None and state.window is not None and state.window.end_ns == end:
                closed.append(state.window)
                state.window = None
        return closed

    def _forget_idle(self) -> None:
        horizon = self._newest - self.window_ns
        idle = [group for group, state in self._groups.items()
                if state.window is None and (not state.pending or state.pending[-1][0] < horizon)]
        for group in idle:
            del self._groups[group]

    @property
    def groups(self) -> int:
        """Groups currently tracked (pending events or an open window)."""
        return len(self._groups)


def window_data(window: Window[Any], detector: BurstDetector[Any], fmt: Rfc3339Formatter) -> dict[str, Any]:
    """The ``data`` fields every anomaly event carries."""
    return {
        "count": window.count,
        "threshold": detector.threshold,
        "window_seconds": detector.seconds,
        "window_start": fmt(window.start_ns),
        "window_end": fmt(window.end_ns),
        "last_seen": fmt(window.last_ns),
    }


def new_anomaly_event(ctx: EventContext, event_type: str, window: Window[Any],
                      severity: str = "warning") -> Event:
    """An anomaly event stamped with the window's last event (kernel time recovered via the context).

    Its ``process_data`` names the process when every event of the window that
    has one came from that single process; with several (or none) it is absent.
    """
    event = ctx.new_event(event_type, window.last_ns - ctx.clock_offset_ns, severity=severity)
    owner = window.sole_owner
    if owner is not None:
        event["process_data"] = dict(owner)
    return event


def destination_key(event: Event) -> tuple[Any, ...]:
    """Group key of a destination: netns, remote address, remote port."""
    net = event.get("network_data") or {}
    return (net.get("netns"), net.get("dst_ip"), net.get("dst_port"))


def timed(events: Iterable[Event]) -> Iterable[tuple[int, Event]]:
    """Events with their parsed times; events without a parseable timestamp are skipped."""
    for event in events:
        ts = event_time_ns(event)
        if ts is not None:
            yield ts, event
