"""The jalki-storage probe: block I/O latency per device and operation, and I/O errors."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jalki_core.errors import ProbeError, errno_name
from jalki_core.events import Event, EventContext, errno_message
from jalki_core.probe import AttachRung, Probe
from jalki_storage import layouts

WARNING_ENV = "JALKI_STORAGE_WARNING_MS"
"""Environment variable: the warning threshold in milliseconds (default 50)."""
CRITICAL_ENV = "JALKI_STORAGE_CRITICAL_MS"
"""Environment variable: the critical threshold in milliseconds (default 200)."""
DEFAULT_WARNING_NS = 50_000_000
DEFAULT_CRITICAL_NS = 200_000_000

OPERATIONS = {
    0: "read", 1: "write", 2: "flush", 3: "discard", 5: "secure_erase", 7: "zone_append",
    9: "write_zeroes", 11: "zone_open", 13: "zone_close", 15: "zone_finish", 17: "zone_reset",
    19: "zone_reset_all", 34: "drv_in", 35: "drv_out", 255: "other",
}
"""Operation names by kernel ``enum req_op`` number (255: the classic tracepoint's rwbs could not tell)."""


def operation_name(op: int) -> str:
    """The lowercase name of a request operation number (``other`` when unknown)."""
    return OPERATIONS.get(op, "other")


def device_number(dev: int) -> str:
    """A kernel-encoded ``dev_t`` (major << 20 | minor) as ``"major:minor"``."""
    return f"{dev >> 20}:{dev & 0xFFFFF}"


def disk_name(dev: int, sysfs: str = "/sys/dev/block") -> str | None:
    """The block device's kernel name (``loop0``, ``vda``) from sysfs, or ``None`` when gone."""
    try:
        return Path(sysfs, device_number(dev)).readlink().name
    except OSError:
        return None


def _threshold_ns(explicit: int | None, env: str, default: int) -> int:
    if explicit is not None:
        value = explicit
    elif os.environ.get(env):
        try:
            value = int(float(os.environ[env]) * 1_000_000)
        except ValueError as exc:
            raise ProbeError(f"{env}={os.environ[env]!r} is not a number of milliseconds") from exc
    else:
        value = default
    if value < 0:
        raise ProbeError(f"block_io threshold {value} ns is negative")
    return value


@dataclass(frozen=True)
class DeviceHistogram:
    """The in-kernel latency histogram of one device and operation.

    ``slots[i]`` counts requests that took [2^i, 2^(i+1)) microseconds (slot 0
    also 0 µs; the last slot everything longer).
    """

    dev: int
    op: int
    slots: tuple[int, ...]
    count: int
    total_ns: int

    @property
    def device(self) -> str:
        """``"major:minor"``."""
        return device_number(self.dev)

    @property
    def operation(self) -> str:
        """Operation name (``read``, ``write``, ``flush``…)."""
        return operation_name(self.op)

    def buckets(self) -> list[dict[str, int | None]]:
        """Non-empty slots as ``{"min_us", "max_us", "count"}`` (``max_us`` null for the last slot)."""
        last = len(self.slots) - 1
        return [
            {"min_us": 0 if i == 0 else 1 << i, "max_us": None if i == last else 1 << (i + 1), "count": n}
            for i, n in enumerate(self.slots) if n
        ]


class BlockIoProbe(Probe):
    """Block I/O latency from issue to completion, and I/O errors.

    Every request is counted in an in-kernel log2 histogram per device and
    operation (read it with :meth:`read_histograms` or
    :meth:`histogram_events`). One event is emitted per request that took at
    least the warning threshold (``kernel.storage.io_latency``, severity
    ``warning``; ``critical`` from the critical threshold) and per request
    that completed with an error (``kernel.storage.io_error``, critical).
    Completions whose issue was not seen are counted as the drop cause
    ``issue_unseen``, never guessed; the zero-byte completion that ends a
    flush sequence (a write with REQ_PREFLUSH/REQ_FUA, never issued as itself:
    its flush requests and data part are) is no drop and is ignored. At the end of a session the histograms
    are emitted as ``kernel.storage.io_latency_histogram`` events (:meth:`final_events`).

    :param warning_ns: per-request events from this latency on; default
        ``JALKI_STORAGE_WARNING_MS`` (milliseconds) or 50 ms. 0 reports every request.
    :param critical_ns: latency from which events are critical; default
        ``JALKI_STORAGE_CRITICAL_MS`` or 200 ms.
    """

    name = "block_io"
    observes = "block:block_rq_issue -> block:block_rq_complete"
    event_types = ("kernel.storage.io_latency", "kernel.storage.io_error",
                   "kernel.storage.io_latency_histogram")
    bpf_object = "bpf/block_io.bpf.o"
    event_schema = "events.schema.json"
    layout = layouts.BLOCK_IO
    extra_drop_causes = layouts.EXTRA_DROP_CAUSES
    # Issue before complete: the loader detaches in reverse order, so no
    # completion during a slow tracepoint detach misses its issue.
    ladder = (
        AttachRung("tp_btf", ("tpbtf_rq_issue", "tpbtf_rq_complete"),
                   "tp_btf/block_rq_issue + tp_btf/block_rq_complete (keyed by request)"),
        AttachRung("tracepoint", ("tp_rq_issue", "tp_rq_complete"),
                   "tracepoint/block/block_rq_issue + block_rq_complete (keyed by dev + sector)"),
    )

    def __init__(self, warning_ns: int | None = None, critical_ns: int | None = None) -> None:
        self.warning_ns = _threshold_ns(warning_ns, WARNING_ENV, DEFAULT_WARNING_NS)
        self.critical_ns = _threshold_ns(critical_ns, CRITICAL_ENV, DEFAULT_CRITICAL_NS)
        if self.critical_ns < self.warning_ns:
            raise ProbeError(f"block_io: critical threshold {self.critical_ns} ns is below the "
                             f"warning threshold {self.warning_ns} ns")

    def rodata(self) -> dict[str, int | bytes]:
        """The thresholds, for the kernel side."""
        return {"storage_warning_ns": self.warning_ns, "storage_critical_ns": self.critical_ns}

    def describe(self) -> dict[str, Any]:
        """The base description plus the thresholds."""
        return {**super().describe(), "warning_ns": self.warning_ns, "critical_ns": self.critical_ns}

    def decode(self, batch: bytes, ctx: EventContext) -> list[Event]:
        events = []
        for record in self.layout.struct.iter_unpack(batch):
            latency_ns, sector, dev, size, op, error = record[5:]
            if error:
                event = ctx.from_header("kernel.storage.io_error", record, severity="critical", outcome="failure")
                event["error"] = {"code": errno_name(error), "message": errno_message(error)}
            else:
                severity = "critical" if latency_ns >= self.critical_ns else "warning"
                event = ctx.from_header("kernel.storage.io_latency", record, severity=severity)
            event["data"] = {
                "device": device_number(dev),
                "disk": disk_name(dev),
                "operation": operation_name(op),
                "latency_ns": latency_ns,
                "bytes": size,
                "sector": sector,
            }
            events.append(event)
        return events

    # -- in-kernel state -----------------------------------------------------

    @staticmethod
    def read_histograms(maps: Mapping[str, Any]) -> list[DeviceHistogram]:
        """The latency histograms of every device and operation seen so far, sorted.

        :param maps: the loaded object's maps by name (``LoadedProbe.obj.maps``);
            readable while the probe runs and after it is detached, until the object is closed.
        """
        hist_map = maps["storage_hist"]
        result = []
        keys: list[bytes] = hist_map.keys()  # a BPF map, not a dict
        for key in keys:
            value = hist_map.lookup(key)
            if value is None:  # deleted meanwhile
                continue
            dev, op = layouts.HIST_KEY.unpack(key)
            *slots, count, total_ns = layouts.HIST_VALUE.unpack(value[:layouts.HIST_VALUE.size])
            result.append(DeviceHistogram(dev, op, tuple(slots), count, total_ns))
        return sorted(result, key=lambda h: (h.dev, h.op))

    def histogram_events(self, maps: Mapping[str, Any], ctx: EventContext) -> list[Event]:
        """One ``kernel.storage.io_latency_histogram`` summary event per device and operation."""
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        events = []
        for hist in self.read_histograms(maps):
            event = ctx.new_event("kernel.storage.io_latency_histogram", now, severity="info")
            event["data"] = {
                "device": hist.device,
                "disk": disk_name(hist.dev),
                "operation": hist.operation,
                "count": hist.count,
                "total_latency_ns": hist.total_ns,
                "buckets": hist.buckets(),
            }
            events.append(event)
        return events

    def final_events(self, maps: Mapping[str, Any], ctx: EventContext) -> list[Event]:
        """The histogram summary events, emitted once when the session stops."""
        return self.histogram_events(maps, ctx)
