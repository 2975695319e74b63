"""Events: the JSON objects jalki emits, and the context decoders build them with.

An event is a plain ``dict`` (cheap to build, serialised by orjson) following
the schema in ``specs/event.schema.json``. :class:`EventContext` fills the
fields every event shares: ``id``, ``timestamp`` (RFC 3339 UTC, converted from
the kernel's CLOCK_MONOTONIC time), ``source``, ``cluster``, ``attach``.
"""

from __future__ import annotations

import calendar
import functools
import os
import secrets
import socket
import time
from collections.abc import Iterable
from typing import Any

Event = dict[str, Any]

SEVERITIES = ("debug", "info", "warning", "error", "critical")

HEADER_FMT = "QQII16s"
"""``struct jalki_event_header`` (``bpf_src/jalki/common.bpf.h``) as a :mod:`struct` format, without byte order."""

HEADER_FIELDS = ("ts_ns", "cgroup_id", "pid", "flags", "comm")
"""The header's members, in order: the first five values of every record that starts with it."""

HEADER_SIZE = 40
"""``sizeof(struct jalki_event_header)``."""

OWNER_KNOWN = 1
"""``JALKI_HDR_OWNER_KNOWN``: the header's pid, comm and cgroup id name the event's owner.

Bits 0-7 of the header's ``flags`` are the core's; a probe's own flags start at ``1 << 8``.
"""


def header_process_data(record: tuple[Any, ...]) -> dict[str, Any]:
    """``process_data`` from a record's header (its first five values: ``ts_ns, cgroup_id, pid, flags, comm``).

    The owner's ``pid``, ``command`` and ``cgroup_id`` when the header has
    :data:`OWNER_KNOWN`, else all three null (an event in softirq context
    whose owner was never seen).
    """
    _ts, cgroup_id, pid, flags, comm = record[:5]
    if flags & OWNER_KNOWN:
        return {"pid": pid, "command": kernel_comm(comm), "cgroup_id": cgroup_id}
    return {"pid": None, "command": None, "cgroup_id": None}


def monotonic_to_realtime_offset() -> int:
    """Nanoseconds to add to a CLOCK_MONOTONIC reading to get wall-clock (UTC) time.

    Sampled as the median of a few paired readings to keep the error below a
    microsecond.
    """
    samples = []
    for _ in range(5):
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        real = time.clock_gettime_ns(time.CLOCK_REALTIME)
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        samples.append(real - (before + after) // 2)
    samples.sort()
    return samples[len(samples) // 2]


NS_PER_S = 1_000_000_000

TIME_PREFIXES_KEPT = 4096
"""Most ``YYYY-MM-DDTHH:MM:SS.`` prefixes :func:`timestamp_ns` remembers (oldest forgotten first)."""

# The second prefixes the formatters made, with their epoch time in ns: a timestamp jalki just
# formatted is read back with one slice, one lookup and one int() (see timestamp_ns).
_PREFIX_NS: dict[str, int] = {}


def _remember_prefix(prefix: str, base_ns: int) -> None:
    if prefix not in _PREFIX_NS:
        if len(_PREFIX_NS) >= TIME_PREFIXES_KEPT:
            del _PREFIX_NS[next(iter(_PREFIX_NS))]  # dicts keep insertion order: the oldest goes
        _PREFIX_NS[prefix] = base_ns


class Rfc3339Formatter:
    """Formats nanosecond UTC times as RFC 3339 with nanoseconds, caching the second part.

    Within the cached second a call is one subtraction, one range check and
    one f-string; only a new second goes through ``time.strftime``.
    """

    __slots__ = ("_base", "_prefix")

    def __init__(self) -> None:
        self._base = -(1 << 62)  # no second cached yet: every time falls outside it
        self._prefix = ""

    def __call__(self, realtime_ns: int) -> str:
        nanos = realtime_ns - self._base
        if not 0 <= nanos < NS_PER_S:
            nanos = self.second(realtime_ns)
        return f"{self._prefix}{nanos:09d}Z"

    def second(self, realtime_ns: int) -> int:
        """Cache the second of ``realtime_ns``; return its nanoseconds within that second."""
        seconds, nanos = divmod(realtime_ns, NS_PER_S)
        self._base = seconds * NS_PER_S
        self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(seconds))
        _remember_prefix(self._prefix, self._base)
        return nanos


def timestamp_ns(text: object) -> int | None:
    """Nanoseconds since the epoch of an RFC 3339 UTC timestamp (``…Z``), else ``None``.

    The timestamps jalki writes (nine fraction digits, ``Z``) in a second a
    formatter of this process made are read without parsing the date; any
    other ``YYYY-MM-DDTHH:MM:SS[.fraction]Z`` (1-9 fraction digits) is parsed.
    """
    if not isinstance(text, str):
        return None
    if len(text) == 30 and text[29] == "Z":
        base = _PREFIX_NS.get(text[:20])
        fraction = text[20:29]
        if base is not None and fraction.isascii() and fraction.isdigit():
            return base + int(fraction)
    return _parse_utc(text)


def _parse_utc(text: str) -> int | None:
    if len(text) < 20 or text[-1] != "Z" or not text[:19].isascii():
        return None
    if len(text) == 20:
        fraction = ""
    elif text[19] == "." and 21 <= len(text) <= 30:
        fraction = text[20:-1]
        if not (fraction.isascii() and fraction.isdigit()):
            return None
    else:
        return None
    try:
        seconds = _epoch_seconds(text[:19])
    except ValueError:
        return None
    return seconds * NS_PER_S + int(fraction.ljust(9, "0"))


@functools.lru_cache(maxsize=1024)
def _epoch_seconds(prefix: str) -> int:
    return calendar.timegm(time.strptime(prefix, "%Y-%m-%dT%H:%M:%S"))


def event_time_ns(event: Event) -> int | None:
    """Nanoseconds since the epoch of an event's ``timestamp`` (see :func:`timestamp_ns`), else ``None``."""
    return timestamp_ns(event.get("timestamp"))


class EventContext:
    """Builds the shared part of the events of one probe in one run.

    :param probe: probe name; events get ``source = "jalki/<probe>"``.
    :param attach: the attach rung the probe runs on.
    :param cluster: the cluster name given with ``--cluster`` (or ``None``).
    :param clock_offset_ns: see :func:`monotonic_to_realtime_offset`.
    :param run_id: a short random id shared by every event of this run.
    """

    def __init__(
        self,
        probe: str,
        attach: str,
        *,
        cluster: str | None = None,
        node: str | None = None,
        clock_offset_ns: int | None = None,
        run_id: str | None = None,
    ) -> None:
        self.probe = probe
        self.attach = attach
        self.source = f"jalki/{probe}"
        self.cluster = cluster
        self.node = node if node is not None else socket.gethostname()
        self.clock_offset_ns = (
            clock_offset_ns if clock_offset_ns is not None else monotonic_to_realtime_offset()
        )
        self.run_id = run_id if run_id is not None else secrets.token_hex(4)
        self._id_prefix = f"{self.run_id}-{probe}-"
        self._issued = 0
        self._format_time = Rfc3339Formatter()

    def new_event(
        self,
        event_type: str,
        ts_ns: int,
        *,
        severity: str = "info",
        outcome: str | None = None,
    ) -> Event:
        """An event with the common fields set; the decoder adds the rest.

        :param ts_ns: the kernel's CLOCK_MONOTONIC timestamp (``bpf_ktime_get_ns``).
        """
        self._issued += 1
        event: Event = {
            "id": f"{self._id_prefix}{self._issued}",
            "timestamp": self._format_time(ts_ns + self.clock_offset_ns),
            "source": self.source,
            "type": event_type,
            "severity": severity,
            "cluster": self.cluster,
            "node": self.node,
            "attach": self.attach,
        }
        if outcome is not None:
            event["outcome"] = outcome
        return event

    def new_events(
        self,
        event_type: str,
        times_ns: Iterable[int],
        *,
        severity: str = "info",
        outcome: str | None = None,
    ) -> list[Event]:
        """:meth:`new_event` for a batch: one event per kernel time, in order.

        The same events as that many :meth:`new_event` calls, made in one loop
        (no call per event): what a decoder of many records uses.
        """
        fmt = self._format_time
        base, prefix = fmt._base, fmt._prefix
        offset, id_prefix, issued = self.clock_offset_ns, self._id_prefix, self._issued
        source, cluster, node, attach = self.source, self.cluster, self.node, self.attach
        events: list[Event] = []
        append = events.append
        for ts_ns in times_ns:
            issued += 1
            nanos = ts_ns + offset - base
            if not 0 <= nanos < NS_PER_S:
                nanos = fmt.second(ts_ns + offset)
                base, prefix = fmt._base, fmt._prefix
            event: Event = {
                "id": f"{id_prefix}{issued}",
                "timestamp": f"{prefix}{nanos:09d}Z",
                "source": source,
                "type": event_type,
                "severity": severity,
                "cluster": cluster,
                "node": node,
                "attach": attach,
            }
            if outcome is not None:
                event["outcome"] = outcome
            append(event)
        self._issued = issued
        return events

    def from_header(
        self,
        event_type: str,
        record: tuple[Any, ...],
        *,
        severity: str = "info",
        outcome: str | None = None,
    ) -> Event:
        """An event for a record that starts with ``struct jalki_event_header``.

        Like :meth:`new_event`, with ``timestamp`` from the header's ``ts_ns``
        and ``process_data`` from its owner (:func:`header_process_data`).
        ``record`` is the unpacked record of a layout made with
        :meth:`RecordLayout.with_header <jalki_core.probe.RecordLayout.with_header>`.
        """
        event = self.new_event(event_type, record[0], severity=severity, outcome=outcome)
        event["process_data"] = header_process_data(record)
        return event


# Decoders see the same few commands and addresses over and over: caching their
# text form takes them off the per-record cost (bounded, so memory stays flat).
@functools.lru_cache(maxsize=4096)
def kernel_comm(raw: bytes) -> str:
    """A task's ``comm`` (NUL-padded, at most 16 bytes) as text."""
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


ADDRESS_CACHE_SIZE = 8192
"""Addresses whose text :func:`format_ip` and :func:`address_texts` each keep (least recently used
forgotten first): a few MiB at most, however many peers a node talks to."""


@functools.lru_cache(maxsize=ADDRESS_CACHE_SIZE)
def format_ip(family: int, raw: bytes) -> str:
    """An address in network byte order (IPv4 in the first 4 bytes) as text."""
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    return socket.inet_ntop(socket.AF_INET6, raw[:16])


@functools.lru_cache(maxsize=ADDRESS_CACHE_SIZE)
def address_texts(family: int, raw: bytes) -> tuple[str, str]:
    """An address as text (:func:`format_ip`) and as the host part of ``host:port`` (IPv6 in brackets)."""
    text = format_ip.__wrapped__(family, raw)
    return text, (f"[{text}]" if family == socket.AF_INET6 else text)


def errno_message(code: int) -> str:
    """The C library's message for an errno value."""
    return os.strerror(code)
