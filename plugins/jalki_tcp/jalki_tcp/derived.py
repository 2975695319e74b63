"""The four network anomalies, each derived from one probe's events with :class:`BurstDetector`.

=================================== ============== =========================================
event type                          from probe     group (one window per group)
=================================== ============== =========================================
``kernel.network.retransmit_spike`` tcp_retransmit destination (netns, dst_ip, dst_port)
``kernel.network.rst_storm``        tcp_reset      received: the peer (netns, dst_ip, dst_port);
                                                   sent: the local endpoint (netns, src_ip,
                                                   src_port) — resets sent to many clients
                                                   of one closed or aborting local port
``kernel.network.rtt_degradation``  tcp_rtt        the aggregate's key (netns, remote address,
                                                   direction, service port); counts degraded
                                                   RTT aggregates
``kernel.network.connect_failures`` tcp_connect    destination; counts refused, timed-out and
                                                   unreachable connects
=================================== ============== =========================================

Window semantics are those of :mod:`jalki_tcp.anomalies`. An anomaly's
``network_data`` names only the side its group really has, never an invented
endpoint: the remote side (``dst_ip``, ``dst_port`` where the group has one)
when the window spans every local endpoint talking to one peer, the local side
(``src_ip``, ``src_port``) when it spans every peer of one local port (resets
sent). ``data.key`` says which (``remote_endpoint``, ``local_endpoint``,
``remote_address_and_local_port``). No anomaly carries ``correlation_keys``:
a window names no single connection.
"""

from __future__ import annotations

import socket
from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from jalki_core.errors import errno_name
from jalki_core.events import Event, EventContext, Rfc3339Formatter
from jalki_core.probe import RecordLayout
from jalki_tcp import layouts
from jalki_tcp.anomalies import (
    DEFAULT_MAX_GROUPS,
    BurstDetector,
    Window,
    destination_key,
    event_time_ns,
    new_anomaly_event,
    window_data,
)

REMOTE_ENDPOINT = "remote_endpoint"
"""``data.key``: grouped by the peer's address and port (``network_data.dst_ip``/``dst_port``)."""
LOCAL_ENDPOINT = "local_endpoint"
"""``data.key``: grouped by a local address and port (``network_data.src_ip``/``src_port``)."""
REMOTE_ADDRESS_AND_LOCAL_PORT = "remote_address_and_local_port"
"""``data.key``: grouped by the client's address and the local service port (passive RTT keys)."""


def _indexes(layout: RecordLayout) -> dict[str, int]:
    return {name: index for index, name in enumerate(layout.fields)}


_CONNECT, _RETRANSMIT, _RESET = (_indexes(layout) for layout in (layouts.CONNECT, layouts.RETRANSMIT, layouts.RESET))
# the fields record_group reads, as plain ints (it runs once per record)
_C_ERROR, _C_NETNS, _C_FAMILY, _C_DADDR, _C_DPORT = (_CONNECT[name] for name in ("error", "netns", "family", "daddr",
                                                                                  "dport"))
_X_NETNS, _X_FAMILY, _X_DADDR, _X_DPORT = (_RETRANSMIT[name] for name in ("netns", "family", "daddr", "dport"))
_R_DIRECTION, _R_NETNS, _R_FAMILY, _R_SADDR, _R_SPORT, _R_DADDR, _R_DPORT = (
    _RESET[name] for name in ("direction", "netns", "family", "saddr", "sport", "daddr", "dport"))
_AF_INET = socket.AF_INET


def _address(family: int, raw: bytes) -> bytes:
    """An address as the key of a group of records: the bytes its text is made of (format_ip)."""
    return raw[:4] if family == _AF_INET else raw


def _remote_side(event: Event) -> dict[str, Any]:
    """The peer of ``event``: ``dst_ip``, ``dst_port``, family, netns; no local side."""
    net = event.get("network_data") or {}
    return {"dst_ip": net.get("dst_ip"), "dst_port": net.get("dst_port"), "protocol": "tcp",
            "family": net.get("family"), "netns": net.get("netns")}


def _local_side(event: Event) -> dict[str, Any]:
    """The local endpoint of ``event``: ``src_ip``, ``src_port``, family, netns; no peer."""
    net = event.get("network_data") or {}
    return {"src_ip": net.get("src_ip"), "src_port": net.get("src_port"), "protocol": "tcp",
            "family": net.get("family"), "netns": net.get("netns")}


class _Deriver:
    """Shared plumbing: parse times, feed a detector, turn closed windows into events."""

    event_type: str = ""
    """The anomaly's event type."""
    source_type: str = ""
    """The type of the events it counts (every other event is skipped first)."""
    source_outcome: str | None = None
    """When set, events with another ``outcome`` are skipped first too."""
    marks: bool = False
    """Whether :meth:`mark` rewrites counted events (else they are counted as they are)."""

    def __init__(self, detector: BurstDetector[Any]) -> None:
        self.detector = detector
        self._fmt = Rfc3339Formatter()

    def group_of(self, event: Event) -> Hashable | None:
        """The group of an event of :attr:`source_type`, or None when the event does not qualify."""
        raise NotImplementedError

    def build(self, window: Window[Any], ctx: EventContext) -> Event:
        """The anomaly event of a closed window."""
        raise NotImplementedError

    def mark(self, group: Hashable, event: Event) -> Event:
        """The event as the detector should count it (used when :attr:`marks` is set)."""
        return event

    def derive(self, events: list[Event], ctx: EventContext) -> list[Event]:
        """Feed a batch; return the anomaly events of the windows it closed.

        An event of another type than :attr:`source_type` (or another outcome
        than :attr:`source_outcome`) is skipped before any other work; the
        others are timed, grouped, then counted.
        """
        out: list[Event] = []
        source_type, group_of, add = self.source_type, self.group_of, self.detector.add
        outcome, marks = self.source_outcome, self.marks
        for event in events:
            if event.get("type") != source_type:
                continue
            if outcome is not None and event.get("outcome") != outcome:
                continue
            ts = event_time_ns(event)
            if ts is None:
                continue
            group = group_of(event)
            if group is None:
                continue
            closed = add(group, ts, self.mark(group, event) if marks else event)
            if closed:
                out.extend(self.build(window, ctx) for window in closed)
        return out

    def record_group(self, record: tuple[Any, ...]) -> Hashable | None:
        """The group of an unpacked record of the source probe, or None when it does not qualify:
        the same grouping :meth:`group_of` makes of the record's event (keys of raw fields)."""
        raise NotImplementedError

    def derive_records(self, records: Sequence[tuple[Any, ...]], ctx: EventContext,
                       build: Callable[[tuple[Any, ...]], Event]) -> list[Event]:
        """:meth:`derive` for a batch whose events were written as lines (``record_json``): the same
        windows from the unpacked records; ``build`` makes a record's event, called only for the
        records a window counts."""
        out: list[Event] = []
        group_of, add, offset = self.record_group, self.detector.add, ctx.clock_offset_ns
        for record in records:
            group = group_of(record)
            if group is not None:
                closed = add(group, record[0] + offset, (build, record))
                if closed:
                    out.extend(self.build(window, ctx) for window in closed)
        return out

    def flush(self, ctx: EventContext) -> list[Event]:
        """Report the windows still open (session stop)."""
        return [self.build(window, ctx) for window in self.detector.flush()]

    def _base(self, window: Window[Any], ctx: EventContext, key: str, severity: str = "warning") -> Event:
        event = new_anomaly_event(ctx, self.event_type, window, severity)
        event["data"] = {**window_data(window, self.detector, self._fmt), "key": key}
        return event


# -- retransmit spike -------------------------------------------------------


@dataclass
class _RetransmitCounts:
    by_state: Counter[str] = field(default_factory=Counter)
    connections: set[tuple[Any, Any]] = field(default_factory=set)

    def add(self, event: Event) -> None:
        self.by_state[str((event.get("data") or {}).get("tcp_state"))] += 1
        net = event.get("network_data") or {}
        self.connections.add((net.get("src_ip"), net.get("src_port")))


class RetransmitSpike(_Deriver):
    """``kernel.network.retransmit_spike``: ≥ N retransmitted segments to one destination within T s."""

    event_type = "kernel.network.retransmit_spike"
    source_type = "kernel.tcp.retransmit"

    def __init__(self, threshold: int, seconds: float) -> None:
        super().__init__(BurstDetector(threshold, seconds, _RetransmitCounts))

    def group_of(self, event: Event) -> Hashable | None:
        return destination_key(event)

    def record_group(self, record: tuple[Any, ...]) -> Hashable | None:
        return (record[_X_NETNS], _address(record[_X_FAMILY], record[_X_DADDR]), record[_X_DPORT])

    def build(self, window: Window[Any], ctx: EventContext) -> Event:
        counts: _RetransmitCounts = window.accumulator
        event = self._base(window, ctx, REMOTE_ENDPOINT)
        event["network_data"] = _remote_side(window.sample)
        event["data"].update({
            "connections": len(counts.connections),
            "established": counts.by_state["ESTABLISHED"],
            "handshake": counts.by_state["SYN_SENT"] + counts.by_state["SYN_RECV"],
        })
        return event


# -- reset storm ------------------------------------------------------------


@dataclass
class _ResetCounts:
    no_socket: int = 0
    peers: set[Any] = field(default_factory=set)

    def add(self, event: Event) -> None:
        data = event.get("data") or {}
        if data.get("tcp_state") is None:
            self.no_socket += 1
        self.peers.add((event.get("network_data") or {}).get("dst_ip"))  # dst is the peer both ways


class RstStorm(_Deriver):
    """``kernel.network.rst_storm``: ≥ N resets within T s, per peer (received) or local endpoint (sent)."""

    event_type = "kernel.network.rst_storm"
    source_type = "kernel.tcp.reset"

    def __init__(self, threshold: int, seconds: float) -> None:
        super().__init__(BurstDetector(threshold, seconds, _ResetCounts))

    def group_of(self, event: Event) -> Hashable | None:
        direction = (event.get("data") or {}).get("direction")
        net = event.get("network_data") or {}
        if direction == "sent":
            return ("sent", net.get("netns"), net.get("src_ip"), net.get("src_port"))
        if direction == "received":
            return ("received", *destination_key(event))
        return None

    def record_group(self, record: tuple[Any, ...]) -> Hashable | None:
        if record[_R_DIRECTION] == layouts.RESET_RECEIVED:
            address = record[_R_DADDR]
            return ("received", record[_R_NETNS], address[:4] if record[_R_FAMILY] == _AF_INET else address,
                    record[_R_DPORT])
        address = record[_R_SADDR]
        return ("sent", record[_R_NETNS], address[:4] if record[_R_FAMILY] == _AF_INET else address, record[_R_SPORT])

    def build(self, window: Window[Any], ctx: EventContext) -> Event:
        counts: _ResetCounts = window.accumulator
        direction = window.group[0]  # type: ignore[index]
        if direction == "sent":
            event = self._base(window, ctx, LOCAL_ENDPOINT)
            event["network_data"] = _local_side(window.sample)
        else:
            event = self._base(window, ctx, REMOTE_ENDPOINT)
            event["network_data"] = _remote_side(window.sample)
        event["data"].update({"direction": direction, "no_socket": counts.no_socket,
                              "peers": len(counts.peers)})
        return event


# -- connect failures ---------------------------------------------------------

REFUSED = frozenset({"ECONNREFUSED"})
TIMED_OUT = frozenset({"ETIMEDOUT"})
UNREACHABLE = frozenset({"EHOSTUNREACH", "ENETUNREACH"})


@dataclass
class _ConnectCounts:
    by_error: Counter[str] = field(default_factory=Counter)

    def add(self, event: Event) -> None:
        self.by_error[str((event.get("error") or {}).get("code"))] += 1


class ConnectFailures(_Deriver):
    """``kernel.network.connect_failures``: ≥ N failed connects to one destination within T s.

    :param errors: the errno names that count (refused, timed out, unreachable by default);
        failures the application caused (ECONNABORTED) or local ones (EADDRNOTAVAIL) do not.
    """

    event_type = "kernel.network.connect_failures"
    source_type = "kernel.tcp.connect"
    source_outcome = "failure"

    def __init__(self, threshold: int, seconds: float, errors: frozenset[str]) -> None:
        super().__init__(BurstDetector(threshold, seconds, _ConnectCounts))
        self.errors = errors

    def group_of(self, event: Event) -> Hashable | None:
        if (event.get("error") or {}).get("code") not in self.errors:
            return None
        return destination_key(event)

    def record_group(self, record: tuple[Any, ...]) -> Hashable | None:
        error = record[_C_ERROR]
        if not error or errno_name(error) not in self.errors:
            return None
        return (record[_C_NETNS], _address(record[_C_FAMILY], record[_C_DADDR]), record[_C_DPORT])

    def build(self, window: Window[Any], ctx: EventContext) -> Event:
        counts: _ConnectCounts = window.accumulator
        event = self._base(window, ctx, REMOTE_ENDPOINT, severity="error")
        event["network_data"] = _remote_side(window.sample)
        by_error = counts.by_error
        event["data"].update({
            "refused": sum(by_error[name] for name in REFUSED),
            "timed_out": sum(by_error[name] for name in TIMED_OUT),
            "unreachable": sum(by_error[name] for name in UNREACHABLE),
        })
        return event


# -- RTT degradation ----------------------------------------------------------


@dataclass
class _RttCounts:
    avgs: list[int] = field(default_factory=list)
    max_us: int = 0
    baseline_us: int | None = None

    def add(self, event: Event) -> None:
        data = event.get("data") or {}
        self.avgs.append(int(data.get("srtt_us_avg") or 0))
        self.max_us = max(self.max_us, int(data.get("srtt_us_max") or 0))
        baseline = data.get("_baseline_us")
        if baseline is not None:
            self.baseline_us = baseline


def _rtt_key(event: Event) -> tuple[Any, ...]:
    """Group of an RTT aggregate: its kernel key (a passive one has no remote port, a local one)."""
    data = event.get("data") or {}
    return (*destination_key(event), data.get("direction"), data.get("local_port"))


class RttDegradation(_Deriver):
    """``kernel.network.rtt_degradation``: RTT aggregates of one destination far above its baseline.

    A destination's **baseline** is learned from its own ``kernel.tcp.rtt``
    aggregates: the mean ``srtt_us_avg`` of its first ``baseline_windows``
    aggregates, then moved by 1/8 of the difference by every later *normal*
    aggregate: one below ``adapt_below`` (1.25) × the baseline. Higher ones
    never move it, so a rising RTT is not absorbed into the baseline while it
    rises (an exponential average of every aggregate would chase a gradual
    degradation and never see it double). An aggregate is **degraded**
    when its ``srtt_us_avg`` is at least ``factor`` × the baseline, or above
    ``absolute_us`` (which also applies before the baseline is learned; such
    aggregates are not used to learn it). The anomaly is a window of at least
    ``threshold`` degraded aggregates within ``seconds``. At most ``max_keys``
    destinations are learning and at most ``max_keys`` have a baseline; the
    least recently seen one is evicted beyond that (:attr:`key_evictions`).
    """

    event_type = "kernel.network.rtt_degradation"
    source_type = "kernel.tcp.rtt"
    marks = True

    adapt_below: float = 1.25
    """Aggregates below this many times the baseline move it (by 1/8 of the difference)."""

    def __init__(self, threshold: int, seconds: float, *, factor: float, absolute_us: int,
                 baseline_windows: int, max_keys: int = DEFAULT_MAX_GROUPS) -> None:
        super().__init__(BurstDetector(threshold, seconds, _RttCounts))
        self.factor = factor
        self.absolute_us = absolute_us
        self.baseline_windows = baseline_windows
        self.max_keys = max_keys
        # least recently seen first, each at most max_keys long (the oldest key is evicted)
        self._learning: OrderedDict[Hashable, list[int]] = OrderedDict()
        self._baseline: OrderedDict[Hashable, float] = OrderedDict()
        self.key_evictions = 0
        """Destinations whose baseline (or the aggregates learning it) was evicted at ``max_keys``."""

    def baseline(self, key: Hashable) -> float | None:
        """The learned baseline of a destination (µs), or None while it is learned."""
        return self._baseline.get(key)

    def group_of(self, event: Event) -> Hashable | None:
        avg = (event.get("data") or {}).get("srtt_us_avg")
        if not isinstance(avg, int):
            return None
        key = _rtt_key(event)
        baseline = self._baseline.get(key)
        if baseline is not None:
            self._baseline.move_to_end(key)
        degraded = avg > self.absolute_us or (baseline is not None and avg >= self.factor * baseline)
        if degraded:
            return key
        if avg > self.absolute_us:
            return None
        if baseline is None:
            learning = self._learning.get(key)
            if learning is None:
                learning = self._learning[key] = []
                self._bound(self._learning)
            learning.append(avg)
            if len(learning) >= self.baseline_windows:
                self._baseline[key] = sum(learning) / len(learning)
                del self._learning[key]
                self._bound(self._baseline)
        elif avg < self.adapt_below * baseline:
            self._baseline[key] = baseline + (avg - baseline) / 8
        return None

    def _bound(self, table: OrderedDict[Hashable, Any]) -> None:
        """Evict the least recently seen key of ``table`` beyond ``max_keys``."""
        if len(table) > self.max_keys:
            table.popitem(last=False)
            self.key_evictions += 1

    def mark(self, group: Hashable, event: Event) -> Event:
        """A degraded aggregate carries the baseline in force when it was seen (rare: a copy is fine)."""
        baseline = self._baseline.get(group)
        return {**event, "data": {**event["data"], "_baseline_us": None if baseline is None else round(baseline)}}

    def build(self, window: Window[Any], ctx: EventContext) -> Event:
        counts: _RttCounts = window.accumulator
        sample = window.sample.get("data") or {}
        passive = sample.get("direction") == "passive"
        event = self._base(window, ctx, REMOTE_ADDRESS_AND_LOCAL_PORT if passive else REMOTE_ENDPOINT)
        # the aggregates' own remote side: no invented local endpoint
        event["network_data"] = dict(window.sample.get("network_data") or {})
        event["data"]["direction"] = sample.get("direction", "unknown")
        if "local_port" in sample:
            event["data"]["local_port"] = sample["local_port"]
        event["data"].update({
            "baseline_srtt_us": counts.baseline_us,
            "srtt_us_avg": round(sum(counts.avgs) / len(counts.avgs)) if counts.avgs else 0,
            "srtt_us_max": counts.max_us,
            "factor": self.factor,
            "absolute_threshold_us": self.absolute_us,
        })
        return event
