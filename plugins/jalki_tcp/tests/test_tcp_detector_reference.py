"""BurstDetector against a straightforward reference, on generated streams; its tables stay bounded.

The reference is the detector as first written: the same window rules, with
idle groups found by a scan of every group every 1,024 events. The detector
under test finds them in least-recently-used order instead; on the same
stream both must report the same windows, at the same events, with the same
contents.
"""

from __future__ import annotations

import heapq
import random
from bisect import insort
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from jalki_tcp.anomalies import Accumulator, BurstDetector, Window, event_time_ns
from jalki_tcp.derived import RstStorm
from jalki_tcp.probes import TcpResetProbe

from jalki_core.events import Event, EventContext, Rfc3339Formatter
from jalki_core.testing import FIXED_CLOCK_OFFSET_NS, make_event_context

S = 1_000_000_000
T0 = FIXED_CLOCK_OFFSET_NS + 100 * S


class Collect:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def add(self, event: Event) -> None:
        self.events.append(event)


A = TypeVar("A", bound=Accumulator)


@dataclass
class _RefGroup(Generic[A]):
    pending: list[tuple[int, int, Event]] = field(default_factory=list)
    window: Window[A] | None = None


class ReferenceDetector(Generic[A]):
    """The first BurstDetector, kept as the reference (scan of every group to forget idle ones)."""

    def __init__(self, threshold: int, seconds: float, new_accumulator: Callable[[], A]) -> None:
        self.threshold = threshold
        self.seconds = seconds
        self.window_ns = int(seconds * S)
        self._new = new_accumulator
        self._groups: dict[Hashable, _RefGroup[A]] = {}
        self._ends: list[tuple[int, int, Hashable]] = []
        self._sequence = 0
        self._newest = 0
        self._adds = 0

    def add(self, group: Hashable, ts_ns: int, event: Event) -> list[Window[A]]:
        closed = self._close_before(ts_ns)
        self._newest = max(self._newest, ts_ns)
        state = self._groups.setdefault(group, _RefGroup())
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
            first_ts, _, first = state.pending[0]
            accumulator = self._new()
            for _, _, pending in state.pending:
                accumulator.add(pending)
            opened = Window(group, first_ts, first_ts + self.window_ns, len(state.pending),
                            state.pending[-1][0], accumulator, first)
            for _, _, pending in state.pending:
                opened.note_owner(pending)
            state.pending = []
            state.window = opened
            self._sequence += 1
            heapq.heappush(self._ends, (opened.end_ns, self._sequence, group))
        self._adds += 1
        if self._adds % 1024 == 0:
            horizon = self._newest - self.window_ns
            for idle in [g for g, s in self._groups.items()
                         if s.window is None and (not s.pending or s.pending[-1][0] < horizon)]:
                del self._groups[idle]
        return closed

    def flush(self) -> list[Window[A]]:
        closed = []
        for state in self._groups.values():
            if state.window is not None:
                closed.append(state.window)
                state.window = None
        self._ends.clear()
        closed.sort(key=lambda w: (w.start_ns, repr(w.group)))
        return closed

    def _close_before(self, ts_ns: int) -> list[Window[A]]:
        closed: list[Window[A]] = []
        while self._ends and self._ends[0][0] < ts_ns:
            end, _, group = heapq.heappop(self._ends)
            state = self._groups.get(group)
            if state is not None and state.window is not None and state.window.end_ns == end:
                closed.append(state.window)
                state.window = None
        return closed


def _summary(windows: list[Window[Any]]) -> list[tuple[Any, ...]]:
    return [(w.group, w.start_ns, w.end_ns, w.count, w.last_ns, [e["n"] for e in w.accumulator.events],
             w.sample["n"], sorted(w.owners)) for w in windows]


def _stream(seed: int, events: int, groups: int, jitter_ns: int = 0) -> list[tuple[Hashable, int, Event]]:
    """Events over many groups: a few hot ones (storms come and go), a long tail of one-off groups."""
    rng = random.Random(seed)
    out = []
    t = T0
    for n in range(events):
        # ties, bursts, gaps; on a 50 ms grid, so that events exactly T apart are common
        t += rng.choice((0, 0, 50_000_000, 100_000_000, 250_000_000, 500_000_000, S, 3 * S))
        hot = rng.random() < 0.6
        group = ("hot", rng.randrange(5)) if hot else ("tail", rng.randrange(groups))
        ts = t - rng.randrange(jitter_ns + 1)  # a few µs between CPUs
        process = {"pid": rng.choice((None, 7, 8)), "command": "x", "cgroup_id": 1}
        out.append((group, ts, {"n": n, "process_data": process}))
    return out


def _compare(stream: list[tuple[Hashable, int, Event]], threshold: int, seconds: float) -> int:
    new: BurstDetector[Collect] = BurstDetector(threshold, seconds, Collect, max_groups=1 << 30)
    ref: ReferenceDetector[Collect] = ReferenceDetector(threshold, seconds, Collect)
    reported = 0
    for i, (group, ts, event) in enumerate(stream):
        got, want = new.add(group, ts, event), ref.add(group, ts, event)
        assert _summary(got) == _summary(want), f"event {i}"
        reported += len(got)
        if i % 5_000 == 4_999:  # sessions stop at any point: flushes agree too
            assert _summary(new.flush()) == _summary(ref.flush())
    assert _summary(new.flush()) == _summary(ref.flush())
    return reported


def test_same_windows_as_the_reference_on_generated_streams() -> None:
    reported = 0
    for seed, (threshold, seconds) in enumerate([(3, 1.0), (10, 10.0), (1, 0.5), (5, 2.0)]):
        reported += _compare(_stream(seed, 20_000, 3_000), threshold, seconds)
    assert reported > 100  # the streams really open and close windows


def test_same_windows_as_the_reference_with_events_a_few_microseconds_out_of_order() -> None:
    assert _compare(_stream(42, 20_000, 3_000, jitter_ns=5_000), 4, 1.0) > 10


def test_open_groups_stay_bounded_by_the_events_of_one_window() -> None:
    detector: BurstDetector[Collect] = BurstDetector(3, 1.0, Collect)
    most = 0
    for i in range(50_000):  # a new group every 1 ms: one window (1 s) spans 1,000 of them
        detector.add(i, T0 + i * 1_000_000, {"n": i})
        most = max(most, detector.groups)
    assert most <= 1_002  # the reference kept up to 1,024 more between its scans
    assert detector.evictions == 0


def test_the_group_table_is_capped_and_evictions_are_counted() -> None:
    detector: BurstDetector[Collect] = BurstDetector(3, 10.0, Collect, max_groups=100)
    closed: list[Window[Collect]] = []
    for i in range(10_000):  # one-off groups flood the table; one hot group keeps being used
        ts = T0 + i * 1_000_000
        closed += detector.add(("tail", i), ts, {"n": i})
        if i % 10 == 0:
            closed += detector.add("hot", ts, {"n": -i})
        assert detector.groups <= 100
    closed += detector.flush()
    assert detector.evictions > 9_000 and detector.evicted_events == detector.evictions  # one pending each
    hot = [w for w in closed if w.group == "hot"]
    assert sum(w.count for w in hot) == 1_000  # the hot group was never evicted: every event in a window


def test_an_evicted_open_window_is_reported_not_lost() -> None:
    detector: BurstDetector[Collect] = BurstDetector(2, 10.0, Collect, max_groups=2)
    detector.add("a", T0, {"n": 0})
    assert detector.add("a", T0 + 1, {"n": 1}) == []  # a's window is open
    detector.add("b", T0 + 2, {"n": 2})
    [early] = detector.add("c", T0 + 3, {"n": 3})  # the table is full: a (least recently used) goes
    assert (early.group, early.count, detector.evictions, detector.evicted_events) == ("a", 2, 1, 0)
    assert detector.flush() == []  # reported once


# -- a deriver over generated reset events: the same anomaly events as the reference loop ------------------


def _reset_stream(seed: int, events: int) -> list[Event]:
    rng = random.Random(seed)
    fmt = Rfc3339Formatter()
    out: list[Event] = []
    t = T0
    for _ in range(events):
        t += rng.choice((1_000, 20_000_000, 300_000_000))
        direction = rng.choice(("sent", "received"))
        storm = rng.random() < 0.3
        port = 9 if storm else rng.randrange(30_000, 60_000)
        net = {"src_ip": "10.0.0.5", "src_port": port if direction == "sent" else 40_000,
               "dst_ip": f"10.0.1.{rng.randrange(4)}", "dst_port": port if direction == "received" else 50_000,
               "protocol": "tcp", "family": "ipv4", "netns": 1}
        event: Event = {"type": "kernel.tcp.reset", "timestamp": fmt(t), "network_data": net,
                        "data": {"direction": direction, "tcp_state": rng.choice((None, "ESTABLISHED"))}}
        out.append(event)
        if rng.random() < 0.1:
            out.append({"type": "kernel.tcp.close", "timestamp": fmt(t), "network_data": net, "data": {}})
    return out


def _reference_derive(deriver: RstStorm, events: list[Event], ctx: EventContext) -> list[Event]:
    """The first derive loop: time every event, then group, then count."""
    out: list[Event] = []
    for event in events:
        ts = event_time_ns(event)
        if ts is None or event.get("type") != deriver.source_type:
            continue
        group = deriver.group_of(event)
        if group is not None:
            out.extend(deriver.build(window, ctx) for window in deriver.detector.add(group, ts, event))
    return out


def test_rst_storm_derives_the_same_events_as_the_reference_loop() -> None:
    events = _reset_stream(7, 30_000)
    ctx = make_event_context("tcp_reset", "tp_btf")
    probe = TcpResetProbe()
    reference = RstStorm(probe.storm_threshold, probe.storm_seconds)
    detector = reference.detector
    reference.detector = ReferenceDetector(detector.threshold, detector.seconds, detector._new)  # type: ignore[assignment]
    got: list[Event] = []
    want: list[Event] = []
    for i in range(0, len(events), 64):
        got += probe.derive(events[i:i + 64], ctx)
        want += _reference_derive(reference, events[i:i + 64], ctx)
    got += probe.final_events({}, ctx)
    want += reference.flush(ctx)
    assert len(got) > 10
    for event in got + want:
        event.pop("id")  # two contexts' sequence numbers aside, every field is the same
    assert got == want
