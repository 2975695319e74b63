"""The jalki-tcp probes: connect outcomes, connection lifetimes, retransmits, resets, RTT.

Three of them also derive windowed network anomalies from their own events
(see :mod:`jalki_tcp.derived`); their thresholds are class attributes, so a
subclass (or an instance attribute set before the session starts) changes them.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping
from typing import Any

from jalki_core import recordjson
from jalki_core.errors import errno_name
from jalki_core.events import (
    Event,
    EventContext,
    Rfc3339Formatter,
    address_texts,
    errno_message,
    format_ip,
    header_process_data,
    kernel_comm,
)
from jalki_core.probe import AttachRung, Probe
from jalki_tcp import layouts
from jalki_tcp.derived import ConnectFailures, RetransmitSpike, RstStorm, RttDegradation
from jalki_tcp.tcp_states import TCP_STATES, tcp_state_name

_EVENT_SCHEMA = "events.schema.json"
"""The JSON Schema of the tcp events, beyond the core envelope."""
_FAMILY_NAMES: dict[int, str] = {socket.AF_INET: "ipv4", socket.AF_INET6: "ipv6"}
_RTT_DIRECTIONS: dict[int, str] = {layouts.RTT_ACTIVE: "active", layouts.RTT_PASSIVE: "passive"}

# Ring sizes (overridable with --ring-mib): about a second of the records a node making 20,000
# connections a second produces (issue 11's churn_full: per connection 1 connect record of 96 bytes,
# 2 close records of 112, 2 reset records of 96), so that a drain delayed by a busy interpreter or a
# CPU shared with the load loses nothing: close 40,000 x 112 B/s = 4.5 MB/s -> 4 MiB (0.9 s); reset
# 3.8 MB/s -> 4 MiB (1.1 s); connect 1.9 MB/s -> 2 MiB (1.1 s). Retransmits follow loss, not
# connections: 1 MiB holds 11,900. RTT is aggregated in the kernel (a record per key per interval,
# the expired windows of every key at once): the core default, 1 MiB.
_RING_CONNECT = 2 << 20
_RING_CLOSE = 4 << 20
_RING_RESET = 4 << 20
_RING_RETRANSMIT = 1 << 20
_RING_RTT = 1 << 20


def _fill_common(events: list[Event], records: list[tuple[Any, ...]], netns_at: int = -1) -> None:
    """Network, process and correlation fields shared by every TCP record, for a batch.

    ``events[i]`` is the event of ``records[i]``; each record starts with the
    header fields (``RecordLayout.with_header``) and ``layouts._TUPLE_FIELDS``;
    its netns inode is the value at ``netns_at``.
    One loop per batch, no call per event but the (bounded) caches' lookups.
    """
    families = _FAMILY_NAMES
    for event, record in zip(events, records, strict=True):
        saddr, daddr, sport, dport, family = record[5:10]
        src_ip, src_host = address_texts(family, saddr)
        dst_ip, dst_host = address_texts(family, daddr)
        event["correlation_keys"] = [f"{src_host}:{sport}->{dst_host}:{dport}"]
        event["network_data"] = {
            "src_ip": src_ip,
            "dst_ip": dst_ip,
            "src_port": sport,
            "dst_port": dport,
            "protocol": "tcp",
            "family": families.get(family) or str(family),
            "netns": record[netns_at],
        }
        # softirq/timer context with no recorded owner: all null, said rather than guessed
        event["process_data"] = header_process_data(record)


def _network_json(netns_field: str = "netns") -> tuple[recordjson.Member, ...]:
    """:func:`_fill_common`'s members, for :class:`~jalki_core.recordjson.RecordJson`."""
    return (
        recordjson.endpoints("correlation_keys", "saddr"),
        recordjson.obj("network_data", (
            recordjson.ip("src_ip", "saddr", "family"),
            recordjson.ip("dst_ip", "daddr", "family"),
            recordjson.uint("src_port", "sport"),
            recordjson.uint("dst_port", "dport"),
            recordjson.const("protocol", "tcp"),
            recordjson.enum("family", "family", _FAMILY_NAMES, fallback=""),
            recordjson.uint("netns", netns_field),
        )),
        recordjson.owner("process_data"),
    )


# kernel state names as the decoders write them: TCP_STATES, else tcp_state_name's UNKNOWN_<n>
_STATE_NAMES = {number: tcp_state_name(number) for number in range(max(TCP_STATES) + 1)}
# errno values with their names and messages prepared for the C encoder (others: the Python decoder)
_ERRNOS = range(1, 256)


def _record_event(probe: Probe, ctx: EventContext) -> Callable[[tuple[Any, ...]], Event]:
    """Builds the event of one unpacked record, for a window that counts it (``derive_records``).

    Through a copy of the context: such an event is read, never emitted (its line already was), so
    it must not take an id from the emitted events' counter.
    """
    cached: tuple[EventContext, Callable[[tuple[Any, ...]], Event]] | None = probe.__dict__.get("_record_event")
    if cached is None or cached[0] is not ctx:
        scratch = EventContext(ctx.probe, ctx.attach, cluster=ctx.cluster, node=ctx.node,
                               clock_offset_ns=ctx.clock_offset_ns, run_id=ctx.run_id)
        pack, decode = probe.layout.struct.pack, probe.decode

        def build(record: tuple[Any, ...]) -> Event:
            return decode(pack(*record), scratch)[0]

        cached = probe.__dict__["_record_event"] = (ctx, build)
    return cached[1]


class TcpConnectProbe(Probe):
    """One event per TCP connection attempt, with its real outcome and latency.

    ``tcp_connect()`` returns 0 for attempts that are later refused or time out,
    so the outcome is decided where the kernel decides it: the socket leaving
    SYN_SENT for ESTABLISHED (success) or for CLOSE (failure, errno from
    ``sk_err``). An attempt the application closed before the kernel gave up
    carries ``data.abandoned_by_application: true`` (ETIMEDOUT once the SYN had
    been retransmitted, else ECONNABORTED).

    A ``connect()`` that fails before the socket ever reaches SYN_SENT (no route:
    ENETUNREACH; an unreachable or prohibit route: EHOSTUNREACH, EACCES; a cgroup
    connect hook: EPERM) makes no state change; the optional programs on
    ``syscalls:sys_enter_connect``/``sys_exit_connect`` report it from the call's
    return value, once, with the caller's destination and the socket's bound
    source (usually ``0.0.0.0``/``::``, port 0), ``latency_ns`` being the call's
    duration. An attempt that reached SYN_SENT is only ever reported by the state path.

    Derived: ``kernel.network.connect_failures`` when at least
    :attr:`failures_threshold` connects to one destination fail with one of
    :attr:`failure_errors` within :attr:`failures_seconds`.
    """

    failures_threshold: int = 5
    """Failed connects to one destination that make a ``connect_failures`` window."""
    failures_seconds: float = 10.0
    """Window length of ``connect_failures``."""
    failure_errors: frozenset[str] = frozenset({"ECONNREFUSED", "ETIMEDOUT", "EHOSTUNREACH", "ENETUNREACH"})
    """Errors that count: the destination refused, did not answer, or cannot be reached."""

    name = "tcp_connect"
    observes = ("tcp_connect + sock:inet_sock_set_state (SYN_SENT -> ESTABLISHED | CLOSE) + "
                "syscalls:sys_enter/exit_connect (failures before SYN_SENT)")
    event_types = ("kernel.tcp.connect", "kernel.network.connect_failures")
    bpf_object = "bpf/tcp_connect.bpf.o"
    event_schema = _EVENT_SCHEMA
    layout = layouts.CONNECT
    ring_buffer_bytes = _RING_CONNECT
    record_json = recordjson.RecordJson(
        layouts.CONNECT, "kernel.tcp.connect",
        severity=recordjson.choice("severity", "error", "info", dict.fromkeys(_ERRNOS, "error")),
        members=(
            recordjson.choice("outcome", "error", "success", dict.fromkeys(_ERRNOS, "failure")),
            recordjson.optional("error", "error", {number: {"code": errno_name(number),
                                                            "message": errno_message(number)}
                                                   for number in _ERRNOS}),
            *_network_json(),
            recordjson.obj("data", (
                recordjson.uint("latency_ns", "latency_ns"),
                recordjson.flag_const("abandoned_by_application", True, "flags", layouts.ABANDONED),
            )),
        ))
    # Failures before SYN_SENT: optional on the tp_btf and tracepoint rungs; required on the fexit
    # rung, so that a kernel refusing fexit records one failed variant, and a kernel with fexit but
    # without syscall tracepoints falls back to tp_btf (which then runs without them).
    _SYSCALL_PROGRAMS = ("tp_connect_enter", "tp_connect_exit")
    _SYSCALL_DESCRIPTION = " (+ failures before SYN_SENT: tracepoint/syscalls/sys_enter_connect, sys_exit_connect)"
    ladder = (
        AttachRung("fexit", ("fexit_tcp_connect", "fexit_connect_state", *_SYSCALL_PROGRAMS),
                   "fexit/tcp_connect (synchronous errors) + tp_btf/inet_sock_set_state + "
                   "tracepoint/syscalls/sys_enter_connect, sys_exit_connect (failures before SYN_SENT)"),
        AttachRung("tp_btf", ("tpbtf_connect_state",), "tp_btf/inet_sock_set_state" + _SYSCALL_DESCRIPTION,
                   optional=_SYSCALL_PROGRAMS),
        AttachRung("tracepoint", ("tp_connect_state",),
                   "tracepoint/sock/inet_sock_set_state" + _SYSCALL_DESCRIPTION, optional=_SYSCALL_PROGRAMS),
    )

    def decode(self, batch: bytes, ctx: EventContext) -> list[Event]:
        records = list(self.layout.struct.iter_unpack(batch))
        events = ctx.new_events("kernel.tcp.connect", [record[0] for record in records], outcome="success")
        abandoned = layouts.ABANDONED
        for event, record in zip(events, records, strict=True):
            error = record[11]
            if error:  # before _fill_common: "error" follows "outcome"
                event["severity"], event["outcome"] = "error", "failure"
                event["error"] = {"code": errno_name(error), "message": errno_message(error)}
        _fill_common(events, records)
        for event, record in zip(events, records, strict=True):
            event["data"] = {"latency_ns": record[10], "abandoned_by_application": True} \
                if record[3] & abandoned else {"latency_ns": record[10]}
        return events

    def derive(self, events: list[Event], ctx: EventContext) -> list[Event]:
        """``kernel.network.connect_failures`` for the windows this batch closed."""
        return self._failures().derive(events, ctx)

    def derive_records(self, records: list[tuple[Any, ...]], ctx: EventContext) -> list[Event]:
        """``kernel.network.connect_failures`` for the windows this batch closed, from its unpacked records."""
        return self._failures().derive_records(records, ctx, _record_event(self, ctx))

    def final_events(self, maps: Mapping[str, Any], ctx: EventContext) -> list[Event]:
        """``kernel.network.connect_failures`` for the windows still open at stop."""
        return self._failures().flush(ctx)

    def _failures(self) -> ConnectFailures:
        deriver: ConnectFailures | None = self.__dict__.get("_failures_deriver")
        if deriver is None:
            deriver = ConnectFailures(self.failures_threshold, self.failures_seconds, self.failure_errors)
            self.__dict__["_failures_deriver"] = deriver
        return deriver


class TcpCloseProbe(Probe):
    """One event per established TCP connection that ended: duration, bytes, state at close.

    ``duration_ns`` is null for connections born before jalki saw them. Bytes are the
    kernel's counters since the socket was created: payload sent (each byte once,
    retransmissions not counted again) and payload received in order. Owners of accepted
    sockets come from the optional programs on sendmsg/recvmsg.
    """

    name = "tcp_close"
    observes = "sock:inet_sock_set_state (-> CLOSE) with struct tcp_sock byte counters"
    event_types = ("kernel.tcp.close",)
    bpf_object = "bpf/tcp_close.bpf.o"
    event_schema = _EVENT_SCHEMA
    layout = layouts.CLOSE
    ring_buffer_bytes = _RING_CLOSE
    record_json = recordjson.RecordJson(layouts.CLOSE, "kernel.tcp.close", (
        *_network_json(),
        recordjson.obj("data", (
            recordjson.uint_unless("duration_ns", "duration_ns", "flags", layouts.BIRTH_UNSEEN),
            recordjson.uint("bytes_sent", "bytes_sent"),
            recordjson.uint("bytes_received", "bytes_received"),
            recordjson.enum("tcp_state", "oldstate", _STATE_NAMES, fallback="UNKNOWN_"),
        )),
    ))
    ladder = (
        AttachRung("tp_btf", ("tpbtf_close_state",),
                   "tp_btf/inet_sock_set_state (+ owners: tcp_sendmsg_locked, tcp_rcv_space_adjust, "
                   "tcp_destroy_sock)",
                   optional=("tpbtf_owner_send", "tpbtf_owner_recv", "tpbtf_owner_destroy")),
        AttachRung("tracepoint", ("tp_close_state",),
                   "tracepoint/sock/inet_sock_set_state (+ owners: tcp/tcp_rcv_space_adjust, "
                   "tcp/tcp_destroy_sock)",
                   optional=("tp_owner_recv", "tp_owner_destroy")),
    )

    def decode(self, batch: bytes, ctx: EventContext) -> list[Event]:
        records = list(self.layout.struct.iter_unpack(batch))
        events = ctx.new_events("kernel.tcp.close", [record[0] for record in records])
        _fill_common(events, records)
        birth_unseen, states = layouts.BIRTH_UNSEEN, TCP_STATES
        for event, record in zip(events, records, strict=True):
            duration_ns, sent, received, oldstate = record[10:14]
            event["data"] = {
                # born before jalki saw it: only part of its life was timed
                "duration_ns": None if record[3] & birth_unseen else duration_ns,
                "bytes_sent": sent,
                "bytes_received": received,
                "tcp_state": states.get(oldstate) or tcp_state_name(oldstate),
            }
        return events


class TcpRetransmitProbe(Probe):
    """One event per retransmitted TCP segment, attributed to the socket's owner.

    Owners are recorded in task context: connect(), close()/shutdown(), and,
    where the kernel has the tracepoints, sendmsg/recvmsg (optional programs),
    which is what attributes an accepted (server-side) socket.

    Derived: ``kernel.network.retransmit_spike`` when at least
    :attr:`spike_threshold` segments to one destination are retransmitted
    within :attr:`spike_seconds`.
    """

    spike_threshold: int = 10
    """Retransmits to one destination that make a ``retransmit_spike`` window."""
    spike_seconds: float = 10.0
    """Window length of ``retransmit_spike``."""

    name = "tcp_retransmit_skb"
    observes = "tcp:tcp_retransmit_skb"
    event_types = ("kernel.tcp.retransmit", "kernel.network.retransmit_spike")
    bpf_object = "bpf/tcp_retransmit.bpf.o"
    event_schema = _EVENT_SCHEMA
    layout = layouts.RETRANSMIT
    ring_buffer_bytes = _RING_RETRANSMIT
    record_json = recordjson.RecordJson(layouts.RETRANSMIT, "kernel.tcp.retransmit", severity="warning", members=(
        *_network_json(),
        recordjson.obj("data", (
            recordjson.enum("tcp_state", "state", _STATE_NAMES, fallback="UNKNOWN_"),
            recordjson.uint("tcp_state_number", "state"),
        )),
    ))
    ladder = (
        AttachRung("tp_btf", ("tpbtf_retrans_state", "tpbtf_retransmit_skb"),
                   "tp_btf/tcp_retransmit_skb + tp_btf/inet_sock_set_state (owner)",
                   optional=("tpbtf_owner_send", "tpbtf_owner_recv", "tpbtf_owner_destroy")),
        AttachRung("tracepoint", ("tp_retrans_state", "tp_retransmit_skb"),
                   "tracepoint/tcp/tcp_retransmit_skb + tracepoint/sock/inet_sock_set_state",
                   optional=("tp_owner_recv", "tp_owner_destroy")),
    )

    def decode(self, batch: bytes, ctx: EventContext) -> list[Event]:
        records = list(self.layout.struct.iter_unpack(batch))
        events = ctx.new_events("kernel.tcp.retransmit", [record[0] for record in records], severity="warning")
        _fill_common(events, records)
        for event, record in zip(events, records, strict=True):
            state = record[10]
            event["data"] = {"tcp_state": tcp_state_name(state), "tcp_state_number": state}
        return events

    def derive(self, events: list[Event], ctx: EventContext) -> list[Event]:
        """``kernel.network.retransmit_spike`` for the windows this batch closed."""
        return self._spikes().derive(events, ctx)

    def derive_records(self, records: list[tuple[Any, ...]], ctx: EventContext) -> list[Event]:
        """``kernel.network.retransmit_spike`` for the windows this batch closed, from its unpacked records."""
        return self._spikes().derive_records(records, ctx, _record_event(self, ctx))

    def final_events(self, maps: Mapping[str, Any], ctx: EventContext) -> list[Event]:
        """``kernel.network.retransmit_spike`` for the windows still open at stop."""
        return self._spikes().flush(ctx)

    def _spikes(self) -> RetransmitSpike:
        deriver: RetransmitSpike | None = self.__dict__.get("_spike_deriver")
        if deriver is None:
            deriver = RetransmitSpike(self.spike_threshold, self.spike_seconds)
            self.__dict__["_spike_deriver"] = deriver
        return deriver


class TcpResetProbe(Probe):
    """One event per TCP reset (RST) this host sends or receives.

    ``data.direction`` is ``sent`` or ``received``; the 4-tuple is always from
    this host's side (``src`` local, ``dst`` the peer). ``data.tcp_state`` is
    the socket's kernel state name, or null for a reset sent with no socket (a
    segment to a port where nothing listens, or for an unknown connection).
    The process is the socket's recorded owner, null when none was recorded
    (always for resets sent with no socket).

    Derived: ``kernel.network.rst_storm`` when at least :attr:`storm_threshold`
    resets of one group occur within :attr:`storm_seconds`; received resets
    are grouped by the peer that sends them, sent resets by the local endpoint
    they are sent from (a closed or aborting local port answering many peers).
    """

    name = "tcp_reset"
    observes = "tcp:tcp_send_reset + tcp:tcp_receive_reset"
    event_types = ("kernel.tcp.reset", "kernel.network.rst_storm")
    bpf_object = "bpf/tcp_reset.bpf.o"
    event_schema = _EVENT_SCHEMA
    layout = layouts.RESET
    ring_buffer_bytes = _RING_RESET
    record_json = recordjson.RecordJson(layouts.RESET, "kernel.tcp.reset", (
        *_network_json(),
        recordjson.obj("data", (
            recordjson.enum("direction", "direction", {layouts.RESET_RECEIVED: "received"}, default="sent"),
            recordjson.enum("tcp_state", "state", {**_STATE_NAMES, 0: None}, fallback="UNKNOWN_"),
        )),
    ))
    ladder = (
        AttachRung("tp_btf", ("tpbtf_reset_state", "tpbtf_send_reset", "tpbtf_receive_reset",
                              "tpbtf_reset_destroy"),
                   "tp_btf/tcp_send_reset + tp_btf/tcp_receive_reset (+ owners: inet_sock_set_state, "
                   "tcp_destroy_sock, tcp_sendmsg_locked, tcp_rcv_space_adjust)",
                   optional=("tpbtf_reset_owner_send", "tpbtf_reset_owner_recv")),
        AttachRung("tracepoint", ("tp_reset_state", "tp_send_reset", "tp_receive_reset", "tp_reset_destroy"),
                   "tracepoint/tcp/tcp_send_reset + tracepoint/tcp/tcp_receive_reset (+ owners: "
                   "sock/inet_sock_set_state, tcp/tcp_destroy_sock, tcp/tcp_rcv_space_adjust)",
                   optional=("tp_reset_owner_recv",)),
    )

    storm_threshold: int = 10
    """Resets of one group that make an ``rst_storm`` window."""
    storm_seconds: float = 10.0
    """Window length of ``rst_storm``."""

    def decode(self, batch: bytes, ctx: EventContext) -> list[Event]:
        records = list(self.layout.struct.iter_unpack(batch))
        events = ctx.new_events("kernel.tcp.reset", [record[0] for record in records])
        _fill_common(events, records, netns_at=11)
        received, states = layouts.RESET_RECEIVED, TCP_STATES
        for event, record in zip(events, records, strict=True):
            state, direction = record[10], record[12]
            event["data"] = {
                "direction": "received" if direction == received else "sent",
                "tcp_state": (states.get(state) or tcp_state_name(state)) if state else None,
            }
        return events

    def derive(self, events: list[Event], ctx: EventContext) -> list[Event]:
        """``kernel.network.rst_storm`` for the windows this batch closed."""
        return self._storms().derive(events, ctx)

    def derive_records(self, records: list[tuple[Any, ...]], ctx: EventContext) -> list[Event]:
        """``kernel.network.rst_storm`` for the windows this batch closed, from its unpacked records."""
        return self._storms().derive_records(records, ctx, _record_event(self, ctx))

    def final_events(self, maps: Mapping[str, Any], ctx: EventContext) -> list[Event]:
        """``kernel.network.rst_storm`` for the windows still open at stop."""
        return self._storms().flush(ctx)

    def _storms(self) -> RstStorm:
        deriver: RstStorm | None = self.__dict__.get("_storm_deriver")
        if deriver is None:
            deriver = RstStorm(self.storm_threshold, self.storm_seconds)
            self.__dict__["_storm_deriver"] = deriver
        return deriver


class TcpRttProbe(Probe):
    """Smoothed RTT per remote service, aggregated in the kernel: one event per key per interval.

    Every segment an established socket receives (``tcp:tcp_probe``) adds the
    socket's smoothed RTT to its key's aggregate (count, sum, min, max, owners)
    for the current interval window (:attr:`interval_ns`, windows aligned to
    multiples of it). Keys: a connected (active) socket by its remote address
    and port; an accepted (passive) socket by its remote address and its
    **local** service port (``data.local_port``), so a server's clients do not
    make one key per ephemeral port; a socket born before the session
    (``data.direction`` ``unknown``) like an active one. A window is emitted
    by the key's first sample after it ends or by the kernel's sweep at the
    next window change; the windows still open are read from the map at stop
    (see ``bpf/tcp_rtt.bpf.c`` for the exact rules). An event's timestamp is
    its window's last sample, so it reaches the output after events stamped
    later (see "Ordering" in ``specs/events.md``).

    ``process_data`` names the process only when that one process owned the
    sockets of every sample in the window; ``data.processes`` counts the
    distinct owners seen and ``data.unattributed_samples`` the samples whose
    socket had no recorded owner.

    Derived: ``kernel.network.rtt_degradation`` (:class:`jalki_tcp.derived.RttDegradation`)
    when at least :attr:`degradation_threshold` aggregates of one key
    within :attr:`degradation_seconds` are degraded: ``srtt_us_avg`` at least
    :attr:`degradation_factor` × the key's learned baseline, or above
    :attr:`degradation_absolute_us`.
    """

    name = "tcp_rtt"
    observes = "tcp:tcp_probe (per-service aggregate in the kernel) + sock:inet_sock_set_state (direction, owners)"
    event_types = ("kernel.tcp.rtt", "kernel.network.rtt_degradation")
    bpf_object = "bpf/tcp_rtt.bpf.o"
    event_schema = _EVENT_SCHEMA
    layout = layouts.RTT
    ring_buffer_bytes = _RING_RTT
    ladder = (
        AttachRung("tp_btf", ("tpbtf_rtt_state", "tpbtf_tcp_probe"),
                   "tp_btf/tcp_probe (srtt from struct tcp_sock) + tp_btf/inet_sock_set_state (direction, "
                   "owners; + owners: tcp_sendmsg_locked, tcp_rcv_space_adjust, tcp_destroy_sock)",
                   optional=("tpbtf_owner_send", "tpbtf_owner_recv", "tpbtf_owner_destroy")),
        AttachRung("tracepoint", ("tp_rtt_state", "tp_tcp_probe"),
                   "tracepoint/tcp/tcp_probe + tracepoint/sock/inet_sock_set_state (direction, owners; "
                   "+ owners: tcp/tcp_rcv_space_adjust, tcp/tcp_destroy_sock)",
                   optional=("tp_owner_recv", "tp_owner_destroy")),
    )

    interval_ns: int = 1_000_000_000
    """The aggregation interval, set in the object's rodata ``rtt_interval_ns`` before load (set it
    before the session starts); each event also carries the interval it was aggregated over."""
    degradation_factor: float = 2.0
    """An aggregate at least this many times the baseline is degraded."""
    degradation_absolute_us: int = 500_000
    """An aggregate above this smoothed RTT (µs) is degraded whatever the baseline."""
    baseline_windows: int = 3
    """Aggregates of a key averaged into its first baseline."""
    degradation_threshold: int = 3
    """Degraded aggregates of one key that make an ``rtt_degradation`` window."""
    degradation_seconds: float = 10.0
    """Window length of ``rtt_degradation``."""

    def rodata(self) -> Mapping[str, int | bytes]:
        """The aggregation interval (:attr:`interval_ns`) for the kernel side."""
        return {"rtt_interval_ns": self.interval_ns}

    _KEY_LEN = len(layouts.RTT_KEY.fields)
    _AGG_LEN = len(layouts.RTT_AGG.fields)

    def decode(self, batch: bytes, ctx: EventContext) -> list[Event]:
        events = []
        header = len(layouts.RTT.fields) - 1 - self._KEY_LEN - self._AGG_LEN
        for record in self.layout.struct.iter_unpack(batch):
            key = record[header:header + self._KEY_LEN]
            agg = record[header + self._KEY_LEN:header + self._KEY_LEN + self._AGG_LEN]
            events.append(self._aggregate_event(ctx, key, agg, record[-1]))
        return events

    def _aggregate_event(self, ctx: EventContext, key: tuple[Any, ...], agg: tuple[Any, ...],
                         interval_ns: int) -> Event:
        fmt = self.__dict__.setdefault("_fmt", Rfc3339Formatter())
        raddr, port, family, direction, netns = key
        (window, first_ns, last_ns, sum_us, samples, min_us, max_us, peer_zero, local_zero, unowned, foreign,
         owner_tgid, owner_cgroup, owner_comm, *slots, overflow, _pad) = agg
        event = ctx.new_event("kernel.tcp.rtt", last_ns, severity="info")
        # Only the real remote side: a passive key spans every client port of that address.
        network: dict[str, Any] = {"dst_ip": format_ip(family, raddr)}
        if direction != layouts.RTT_PASSIVE:
            network["dst_port"] = port
        network.update(protocol="tcp", family=_FAMILY_NAMES.get(family, str(family)), netns=netns)
        event["network_data"] = network
        if owner_tgid and not foreign and not unowned:
            event["process_data"] = {"pid": owner_tgid, "command": kernel_comm(owner_comm),
                                     "cgroup_id": owner_cgroup}
        data: dict[str, Any] = {"direction": _RTT_DIRECTIONS.get(direction, "unknown")}
        if direction == layouts.RTT_PASSIVE:
            data["local_port"] = port
        data.update({
            "srtt_us_avg": round(sum_us / samples) if samples else 0,
            "srtt_us_min": min_us,
            "srtt_us_max": max_us,
            "samples": samples,
            "processes": len({tgid for tgid in slots if tgid}),
            "unattributed_samples": unowned,
            "peer_zero_window_samples": peer_zero,
            "local_zero_window_samples": local_zero,
            "interval_ms": interval_ns // 1_000_000,
            "window_start": fmt(window * interval_ns + ctx.clock_offset_ns),
            "window_end": fmt((window + 1) * interval_ns + ctx.clock_offset_ns),
            "first_sample": fmt(first_ns + ctx.clock_offset_ns),
        })
        if overflow:
            data["processes_at_least"] = True  # more owners than the kernel's slots
        event["data"] = data
        return event

    def derive(self, events: list[Event], ctx: EventContext) -> list[Event]:
        """``kernel.network.rtt_degradation`` for the windows this batch closed."""
        return self._degradation().derive(events, ctx)

    def final_events(self, maps: Mapping[str, Any], ctx: EventContext) -> list[Event]:
        """The aggregates still in ``rtt_agg`` (each destination's last window), then the
        ``rtt_degradation`` windows they and earlier aggregates leave open."""
        events = self.pending_aggregates(maps.get("rtt_agg"), ctx)
        events.sort(key=lambda event: event["timestamp"])
        derived = self._degradation().derive(events, ctx) if events else []
        return events + derived + self._degradation().flush(ctx)

    def pending_aggregates(self, agg_map: Any, ctx: EventContext) -> list[Event]:
        """Events for the windows left in the ``rtt_agg`` map (``None``: no map, no events)."""
        if agg_map is None:
            return []
        events = []
        for key in agg_map.keys():  # noqa: SIM118 - a BPF map, not a dict
            value = agg_map.lookup(key)
            if value is None:
                continue
            agg = layouts.RTT_AGG.struct.unpack(value)
            if agg[4]:  # samples
                events.append(self._aggregate_event(ctx, layouts.RTT_KEY.struct.unpack(key), agg, self.interval_ns))
        return events

    def _degradation(self) -> RttDegradation:
        deriver: RttDegradation | None = self.__dict__.get("_degradation_deriver")
        if deriver is None:
            deriver = RttDegradation(self.degradation_threshold, self.degradation_seconds,
                                     factor=self.degradation_factor, absolute_us=self.degradation_absolute_us,
                                     baseline_windows=self.baseline_windows)
            self.__dict__["_degradation_deriver"] = deriver
        return deriver
