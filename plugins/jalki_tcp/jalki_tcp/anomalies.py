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

Memory is bounded: a group keeps at most ``threshold - 1`` pending events;
a group is forgotten as soon as its pending events all lie more than ``T``
behind the newest event (or when its window closes), and at most
``max_groups`` groups are kept: a new group at the cap evicts the least
recently used one (its pending events no longer count towards a window, or
its open window is reported early), counted in :attr:`BurstDetector.evictions`.
Each event costs amortised O(1): groups are kept in least-recently-used order,
so the idle ones are found at the front of that order, never by a scan.
"""

from __future__ import annotations

import calendar
import heapq
import time
from bisect import insort
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from jalki_core.events import Event, EventContext, Rfc3339Formatter

NS_PER_S = 1_000_000_000

_UNKNOWN: Hashable = object()
"""``BurstDetector._front`` when the front of the LRU order has to be looked at again."""
_FOREVER = 1 << 127

DEFAULT_MAX_GROUPS = 8_192
"""Groups one :class:`BurstDetector` keeps (pending events or an open window) before it evicts."""


class Accumulator(Protocol):
    """What a window folds its events into (counts by kind, distinct peers, …)."""

    def add(self, event: Event) -> None:
        """Fold one event of the window."""


A = TypeVar("A", bound=Accumulator)

LazyEvent = tuple[Callable[[Any], Event], Any]
"""An event not built yet, as ``(build, argument)``: a detector builds it (once) only when a window
counts it, so events that open no window are never built (see ``derive_records`` in
:mod:`jalki_tcp.derived`)."""


def resolve(item: Event | LazyEvent) -> Event:
    """The event of an item :meth:`BurstDetector.add` was given."""
    return item if isinstance(item, dict) else item[0](item[1])

_SECONDS_KEPT = 4096
# epoch ns of "YYYY-MM-DDTHH:MM:SS" texts already parsed: a burst's events share a few seconds,
# so a timestamp is read with one slice, one lookup and one int() (oldest second forgotten first)
_SECOND_NS: dict[str, int] = {}


def _second_ns(prefix: str) -> int:
    base = _SECOND_NS.get(prefix)
    if base is None:
        base = calendar.timegm(time.strptime(prefix, "%Y-%m-%dT%H:%M:%S")) * NS_PER_S
        if len(_SECOND_NS) >= _SECONDS_KEPT:
            del _SECOND_NS[next(iter(_SECOND_NS))]
        _SECOND_NS[prefix] = base
    return base


def event_time_ns(event: Event) -> int | None:
    """Nanoseconds since the epoch of an event's RFC 3339 ``timestamp`` (UTC, ``Z``), else None."""
    text = event.get("timestamp")
    if not isinstance(text, str) or len(text) < 20 or text[-1] != "Z":
        return None
    if len(text) == 30 and text[19] == ".":  # jalki's own form: nine fraction digits
        fraction = text[20:29]
    elif len(text) == 20:
        fraction = ""
    elif text[19] == ".":
        fraction = text[20:-1][:9]
    else:
        return None
    if fraction and not (fraction.isascii() and fraction.isdigit()):
        return None
    try:
        base = _second_ns(text[:19])
    except ValueError:
        return None
    return base + int(fraction.ljust(9, "0")) if fraction else base


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
    opened: int = 0
    """The detector's sequence number when the window opened (orders windows that start together)."""

    def note_owner(self, event: Event) -> None:
        """Remember the process of ``event``, when it has one."""
        process = event.get("process_data")
        if isinstance(process, dict) and process.get("pid") is not None:
            self.owners.setdefault(int(process["pid"]), process)

    @property
    def sole_owner(self) -> dict[str, Any] | None:
        """The one process behind every attributed event of the window, or None (several, or none)."""
        return next(iter(self.owners.values())) if len(self.owners) == 1 else None


class _Group(Generic[A]):
    """One group's state: pending events (time order) or an open window, never both."""

    __slots__ = ("pending", "window")

    def __init__(self) -> None:
        self.pending: list[tuple[int, int, Event | LazyEvent]] = []
        self.window: Window[A] | None = None


class BurstDetector(Generic[A]):
    """Finds, per group, windows of at least ``threshold`` events within ``seconds``.

    :param threshold: events needed in one window (``N``, at least 1).
    :param seconds: window length ``T`` (> 0).
    :param new_accumulator: makes the per-window accumulator.
    :param max_groups: groups kept at most (see the module's "Memory is bounded").
    """

    def __init__(self, threshold: int, seconds: float, new_accumulator: Callable[[], A],
                 max_groups: int = DEFAULT_MAX_GROUPS) -> None:
        if threshold < 1:
            raise ValueError("threshold must be at least 1")
        if seconds <= 0:
            raise ValueError("seconds must be positive")
        if max_groups < 1:
            raise ValueError("max_groups must be at least 1")
        self.threshold = threshold
        self.seconds = seconds
        self.window_ns = int(seconds * NS_PER_S)
        self.max_groups = max_groups
        self._new = new_accumulator
        # least recently used first: the groups that can be forgotten are at the front
        self._groups: OrderedDict[Hashable, _Group[A]] = OrderedDict()
        self._ends: list[tuple[int, int, Hashable]] = []  # heap of open windows by end
        self._sequence = 0
        self._newest = 0
        # the front of the LRU order as _forget_idle last saw it, and the newest time of its pending events:
        # until the horizon passes that time (or the front changes) there is nothing to forget
        self._front: Hashable = _UNKNOWN
        self._front_newest = 0
        self.evictions = 0
        """Groups evicted at ``max_groups`` (their pending events lost for detection, or their window cut short)."""
        self.evicted_events = 0
        """Pending events of evicted groups: they were emitted, but no longer count towards a window."""

    def add(self, group: Hashable, ts_ns: int, event: Event | LazyEvent) -> list[Window[A]]:
        """Count one event (or a :data:`LazyEvent`); return the windows (of any group) that it closed."""
        ends = self._ends
        closed = self._close_before(ts_ns) if ends and ends[0][0] < ts_ns else []
        if ts_ns > self._newest:
            self._newest = ts_ns
        groups = self._groups
        if group == self._front:  # it moves to the end, or changes: the front must be looked at again
            self._front = _UNKNOWN
        state = groups.get(group)
        if state is None:
            if len(groups) >= self.max_groups:
                self._forget_idle()  # this event may have moved the horizon: forgetting beats evicting
                if len(groups) >= self.max_groups:
                    self._evict(closed)
            state = groups[group] = _Group()
        else:
            groups.move_to_end(group)
        window = state.window
        if window is not None and ts_ns <= window.end_ns:
            window.count += 1
            if ts_ns > window.last_ns:
                window.last_ns = ts_ns
            built = resolve(event)
            window.accumulator.add(built)
            window.note_owner(built)
            return closed
        self._sequence += 1
        pending = state.pending
        if not pending or ts_ns >= pending[-1][0]:
            pending.append((ts_ns, self._sequence, event))
        else:
            insort(pending, (ts_ns, self._sequence, event))
        horizon = pending[-1][0] - self.window_ns
        while pending[0][0] < horizon:
            del pending[0]
        if len(pending) >= self.threshold:
            self._open(group, state)
        self._forget_idle()
        return closed

    def flush(self) -> list[Window[A]]:
        """Close and return every open window (at session stop); pending events are kept."""
        closed = [state.window for state in self._groups.values() if state.window is not None]
        for window in closed:
            del self._groups[window.group]
        self._front = _UNKNOWN
        self._ends.clear()
        closed.sort(key=lambda w: (w.start_ns, w.opened))
        return closed

    def _open(self, group: Hashable, state: _Group[A]) -> None:
        first_ts = state.pending[0][0]
        events = [resolve(event) for _, _, event in state.pending]
        accumulator = self._new()
        for event in events:
            accumulator.add(event)
        window = Window(group, first_ts, first_ts + self.window_ns, len(state.pending),
                        state.pending[-1][0], accumulator, events[0])
        for event in events:
            window.note_owner(event)
        state.pending = []
        state.window = window
        self._sequence += 1
        window.opened = self._sequence
        heapq.heappush(self._ends, (window.end_ns, self._sequence, group))

    def _close_before(self, ts_ns: int) -> list[Window[A]]:
        closed: list[Window[A]] = []
        ends, groups = self._ends, self._groups
        while ends and ends[0][0] < ts_ns:
            end, _, group = heapq.heappop(ends)
            state = groups.get(group)
            if state is not None and state.window is not None and state.window.end_ns == end:
                closed.append(state.window)
                del groups[group]  # an open window has no pending events: nothing else to keep
                if group == self._front:
                    self._front = _UNKNOWN
        return closed

    def _forget_idle(self) -> None:
        """Forget the least recently used groups whose pending events all lie more than T behind."""
        groups = self._groups
        horizon = self._newest - self.window_ns
        if self._front is not _UNKNOWN and horizon <= self._front_newest:
            return  # the same front as last time, still not idle: no need to look
        while groups:
            group = next(iter(groups))
            state = groups[group]
            if state.window is not None:
                self._front, self._front_newest = group, _FOREVER  # until its window closes or it moves
                return
            newest = state.pending[-1][0]
            if newest >= horizon:
                self._front, self._front_newest = group, newest
                return
            del groups[group]
        self._front = _UNKNOWN

    def _evict(self, closed: list[Window[A]]) -> None:
        """Make room for a new group: drop the least recently used one (its open window is reported now)."""
        _, state = self._groups.popitem(last=False)
        self._front = _UNKNOWN
        self.evictions += 1
        if state.window is not None:
            closed.append(state.window)  # its heap entry is skipped when it comes up: the group is gone
        else:
            self.evicted_events += len(state.pending)

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

