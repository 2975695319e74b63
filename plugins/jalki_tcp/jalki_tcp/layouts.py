"""Python mirrors of the records defined in ``bpf/tcp_events.h``.

The sizes are asserted here against the C header's ``_Static_assert`` values
and, at load time, against the struct sizes in each object's BTF.
"""

from __future__ import annotations

from jalki_core.probe import RecordLayout

# Every event record: struct jalki_event_header (40, the core's: RecordLayout.with_header), then, for the
# connection records, struct jalki_tcp_tuple (40).
_TUPLE_FMT = "16s16sHHH2x"
_TUPLE_FIELDS = ("saddr", "daddr", "sport", "dport", "family")

BIRTH_UNSEEN = 1 << 8
"""``JALKI_TCP_BIRTH_UNSEEN`` (close records): the socket was born before jalki saw it, so its
duration is unknown."""

ABANDONED = 1 << 9
"""``JALKI_TCP_ABANDONED`` (connect records): the application closed the socket during the
handshake, before the kernel gave up."""

SYNC_FAILURE = 1 << 10
"""``JALKI_TCP_SYNC_FAILURE`` (connect records): the connect() call failed before the socket reached
SYN_SENT; the destination is the caller's sockaddr, the source what the socket was bound to (usually
unspecified, port 0), ``latency_ns`` the duration of the call."""

CONNECT = RecordLayout.with_header(
    "tcp_connect_event",
    _TUPLE_FMT + "QiI",
    (*_TUPLE_FIELDS, "latency_ns", "error", "netns"),
    c_size=96,
)

CLOSE = RecordLayout.with_header(
    "tcp_close_event",
    _TUPLE_FMT + "QQQII",
    (*_TUPLE_FIELDS, "duration_ns", "bytes_sent", "bytes_received", "oldstate", "netns"),
    c_size=112,
)

RETRANSMIT = RecordLayout.with_header(
    "tcp_retransmit_event",
    _TUPLE_FMT + "II",
    (*_TUPLE_FIELDS, "state", "netns"),
    c_size=88,
)

RESET_SENT = 0
"""``JALKI_TCP_RESET_SENT``: ``tcp_reset_event.direction`` of a reset this host sent."""

RESET_RECEIVED = 1
"""``JALKI_TCP_RESET_RECEIVED``: ``tcp_reset_event.direction`` of a reset this host received."""

RESET = RecordLayout.with_header(
    "tcp_reset_event",
    _TUPLE_FMT + "IIII",
    (*_TUPLE_FIELDS, "state", "netns", "direction", "_pad"),
    c_size=96,
)

_RTT_KEY_FMT = "16sHBBI"
_RTT_KEY_FIELDS = ("raddr", "port", "family", "direction", "netns")
_RTT_AGG_FMT = "QQQQIIIIIIII" + "Q16s" + "4I" + "II"
_RTT_AGG_FIELDS = ("window", "first_ns", "last_ns", "sum_us", "samples", "min_us", "max_us", "peer_zero_wnd",
                   "local_zero_wnd", "unowned", "foreign", "owner_tgid", "owner_cgroup_id", "owner_comm",
                   "owner0", "owner1", "owner2", "owner3", "owners_overflow", "_agg_pad")

RTT_UNKNOWN = 0
"""``JALKI_TCP_RTT_UNKNOWN``: an RTT key of a socket born before the session (keyed like an active one)."""
RTT_ACTIVE = 1
"""``JALKI_TCP_RTT_ACTIVE``: an RTT key of connected sockets; its port is the remote one."""
RTT_PASSIVE = 2
"""``JALKI_TCP_RTT_PASSIVE``: an RTT key of accepted sockets; its port is the local service port."""

RTT_KEY = RecordLayout(
    c_struct="tcp_rtt_key",
    fmt="<" + _RTT_KEY_FMT,
    fields=_RTT_KEY_FIELDS,
    c_size=24,
)
"""Key of the kernel map ``rtt_agg`` (read at stop by ``TcpRttProbe.final_events``)."""

RTT_AGG = RecordLayout(
    c_struct="tcp_rtt_agg",
    fmt="<" + _RTT_AGG_FMT,
    fields=_RTT_AGG_FIELDS,
    c_size=112,
)
"""Value of the kernel map ``rtt_agg``: one key's current window."""

RTT = RecordLayout.with_header(
    "tcp_rtt_event",
    _RTT_KEY_FMT + _RTT_AGG_FMT + "Q",
    (*_RTT_KEY_FIELDS, *_RTT_AGG_FIELDS, "interval_ns"),
    c_size=184,
)
