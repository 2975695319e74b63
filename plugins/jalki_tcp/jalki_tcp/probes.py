"""The three jalki-tcp probes: connect outcomes, connection lifetimes, retransmits."""

from __future__ import annotations

import socket
from typing import Any

from jalki_core.errors import errno_name
from jalki_core.events import Event, EventContext, errno_message, format_ip, kernel_comm
from jalki_core.probe import AttachRung, Probe, ProbeResource
from jalki_tcp import layouts
from jalki_tcp.tcp_states import tcp_state_name

_BPF_PACKAGE = "jalki_tcp.bpf"
_EVENT_SCHEMA = ProbeResource("jalki_tcp", "events.schema.json")
"""The JSON Schema of the tcp events, beyond the core envelope."""
_FAMILY_NAMES = {socket.AF_INET: "ipv4", socket.AF_INET6: "ipv6"}


def _endpoint(ip: str, port: int, family: int) -> str:
    return f"[{ip}]:{port}" if family == socket.AF_INET6 else f"{ip}:{port}"


def _fill_common(event: Event, record: tuple[Any, ...]) -> None:
    """Network, process and correlation fields shared by every TCP record.

    ``record`` starts with the header and tuple fields of ``layouts._HEADER_FIELDS``
    and ``layouts._TUPLE_FIELDS``; the last value is always the netns inode.
    """
    _ts, cgroup_id, pid, flags, comm, saddr, daddr, sport, dport, family = record[:10]
    src_ip = format_ip(family, saddr)
    dst_ip = format_ip(family, daddr)
    event["correlation_keys"] = [
        f"{_endpoint(src_ip, sport, family)}->{_endpoint(dst_ip, dport, family)}"
    ]
    event["network_data"] = {
        "src_ip": src_ip,
        "dst_ip": dst_ip,
        "src_port": sport,
        "dst_port": dport,
        "protocol": "tcp",
        "family": _FAMILY_NAMES.get(family, str(family)),
        "netns": record[-1],
    }
    if flags & layouts.OWNER_KNOWN:
        event["process_data"] = {"pid": pid, "command": kernel_comm(comm), "cgroup_id": cgroup_id}
    else:
        # Softirq/timer context with no recorded owner: say so rather than guess.
        event["process_data"] = {"pid": None, "command": None, "cgroup_id": None}


class TcpConnectProbe(Probe):
    """One event per TCP connection attempt, with its real outcome and latency.

    ``tcp_connect()`` returns 0 for attempts that are later refused or time out,
    so the outcome is decided where the kernel decides it: the socket leaving
    SYN_SENT for ESTABLISHED (success) or for CLOSE (failure, errno from
    ``sk_err``). An attempt the application closed before the kernel gave up
    carries ``data.abandoned_by_application: true`` (ETIMEDOUT once the SYN had
    been retransmitted, else ECONNABORTED).
    """

    name = "tcp_connect"
    observes = "tcp_connect + sock:inet_sock_set_state (SYN_SENT -> ESTABLISHED | CLOSE)"
    event_types = ("kernel.tcp.connect",)
    bpf_object = ProbeResource(_BPF_PACKAGE, "tcp_connect.bpf.o")
    event_schema = _EVENT_SCHEMA
    layout = layouts.CONNECT
    ladder = (
        AttachRung("fexit", ("fexit_tcp_connect", "fexit_connect_state"),
                   "fexit/tcp_connect (synchronous errors) + tp_btf/inet_sock_set_state"),
        AttachRung("tp_btf", ("tpbtf_connect_state",), "tp_btf/inet_sock_set_state"),
        AttachRung("tracepoint", ("tp_connect_state",), "tracepoint/sock/inet_sock_set_state"),
    )

    def decode(self, batch: bytes, ctx: EventContext) -> list[Event]:
        events = []
        for record in self.layout.struct.iter_unpack(batch):
            error, latency_ns = record[11], record[10]
            if error == 0:
                event = ctx.new_event("kernel.tcp.connect", record[0], severity="info",
                                      outcome="success")
            else:
                event = ctx.new_event("kernel.tcp.connect", record[0], severity="error",
                                      outcome="failure")
                event["error"] = {"code": errno_name(error), "message": errno_message(error)}
            _fill_common(event, record)
            event["data"] = {"latency_ns": latency_ns}
            if record[3] & layouts.ABANDONED:
                event["data"]["abandoned_by_application"] = True
            events.append(event)
        return events


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
    bpf_object = ProbeResource(_BPF_PACKAGE, "tcp_close.bpf.o")
    event_schema = _EVENT_SCHEMA
    layout = layouts.CLOSE
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
        events = []
        for record in self.layout.struct.iter_unpack(batch):
            duration_ns, sent, received, oldstate = record[10:14]
            event = ctx.new_event("kernel.tcp.close", record[0], severity="info")
            _fill_common(event, record)
            event["data"] = {
                # born before jalki saw it: only part of its life was timed
                "duration_ns": None if record[3] & layouts.BIRTH_UNSEEN else duration_ns,
                "bytes_sent": sent,
                "bytes_received": received,
                "tcp_state": tcp_state_name(oldstate),
            }
            events.append(event)
        return events


class TcpRetransmitProbe(Probe):
    """One event per retransmitted TCP segment, attributed to the socket's owner.

    Owners are recorded in task context: connect(), close()/shutdown(), and,
    where the kernel has the tracepoints, sendmsg/recvmsg (optional programs),
    which is what attributes an accepted (server-side) socket.
    """

    name = "tcp_retransmit_skb"
    observes = "tcp:tcp_retransmit_skb"
    event_types = ("kernel.tcp.retransmit",)
    bpf_object = ProbeResource(_BPF_PACKAGE, "tcp_retransmit.bpf.o")
    event_schema = _EVENT_SCHEMA
    layout = layouts.RETRANSMIT
    ladder = (
        AttachRung("tp_btf", ("tpbtf_retrans_state", "tpbtf_retransmit_skb"),
                   "tp_btf/tcp_retransmit_skb + tp_btf/inet_sock_set_state (owner)",
                   optional=("tpbtf_owner_send", "tpbtf_owner_recv", "tpbtf_owner_destroy")),
        AttachRung("tracepoint", ("tp_retrans_state", "tp_retransmit_skb"),
                   "tracepoint/tcp/tcp_retransmit_skb + tracepoint/sock/inet_sock_set_state",
                   optional=("tp_owner_recv", "tp_owner_destroy")),
    )

    def decode(self, batch: bytes, ctx: EventContext) -> list[Event]:
        events = []
        for record in self.layout.struct.iter_unpack(batch):
            state = record[10]
            event = ctx.new_event("kernel.tcp.retransmit", record[0], severity="warning")
            _fill_common(event, record)
            event["data"] = {"tcp_state": tcp_state_name(state), "tcp_state_number": state}
            events.append(event)
        return events
