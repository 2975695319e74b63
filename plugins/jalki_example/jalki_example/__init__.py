"""jalki-example: run-queue latency, the example probe package.

A thread that is ready to run but waits for a CPU is slow without using any
CPU itself: a web worker woken by a request sits behind a batch job, a
latency-sensitive process is pinned with busy neighbours. This package
reports every such wait longer than a threshold (default 10 ms), with the
thread, its process and cgroup, and the thread it finally took the CPU from
(the measurement of libbpf-tools ``runqslower``).

It is also the worked example of a probe package (README: "Writing a probe
plugin"): this one module holds the record layout, the probe and the plugin
hooks; ``runqslow.h`` defines the record, ``runqslow.bpf.c`` the programs;
``events.schema.json`` the events' ``data``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from jalki_core import AttachRung, Event, EventContext, Probe, ProbeError, RecordLayout, hookimpl, kernel_comm

if TYPE_CHECKING:
    from jalki_core import BoundProbeRegistry

__version__ = "0.1.0"

THRESHOLD_ENV = "JALKI_RUNQSLOW_MS"
"""Environment variable: the threshold in milliseconds (default 10)."""
DEFAULT_THRESHOLD_NS = 10_000_000

PREEMPTED = 1 << 8
"""``JALKI_RUNQ_PREEMPTED``: the wait began at a preemption, not at a wakeup."""

RUNQSLOW = RecordLayout.with_header(
    c_struct="runqslow_event",
    fmt="QIII4x16s",
    fields=("latency_ns", "tid", "cpu", "prev_tid", "prev_comm"),
    c_size=80,
)
"""``struct runqslow_event`` (``runqslow.h``): the shared header, then the wait."""


def threshold_from_env() -> int:
    """The threshold in nanoseconds from :data:`THRESHOLD_ENV`, else the default."""
    text = os.environ.get(THRESHOLD_ENV, "")
    if not text:
        return DEFAULT_THRESHOLD_NS
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ProbeError(f"{THRESHOLD_ENV}={text!r} is not a positive number of milliseconds",
                         hint=f"set {THRESHOLD_ENV} to e.g. 10, or unset it")
    return int(value * 1_000_000)


class RunqSlowProbe(Probe):
    """One event per thread that waited at least ``threshold_ns`` for a CPU after becoming runnable.

    ``process_data`` is the thread's process; ``data`` has ``latency_ns``,
    the thread (``tid``), the ``cpu`` it got, ``cause`` (``wakeup``: it was
    woken; ``preemption``: it was pushed off a CPU while still runnable) and
    the thread it took the CPU from (``prev_tid``, ``prev_command``; 0 and
    ``swapper/N`` when the CPU was idle). Severity ``warning``.

    :param threshold_ns: report waits at least this long; default
        ``JALKI_RUNQSLOW_MS`` milliseconds, else 10 ms.
    """

    name = "runqslow"
    observes = "sched:sched_wakeup, sched:sched_wakeup_new, sched:sched_switch"
    event_types = ("kernel.sched.runq_latency",)
    bpf_object = "runqslow.bpf.o"
    event_schema = "events.schema.json"
    layout = RUNQSLOW
    ladder = (
        AttachRung("tp_btf", ("tpbtf_sched_wakeup", "tpbtf_sched_wakeup_new", "tpbtf_sched_switch"),
                   "tp_btf/sched_wakeup, sched_wakeup_new, sched_switch (task_struct arguments)"),
        AttachRung("tracepoint", ("tp_sched_wakeup", "tp_sched_wakeup_new", "tp_sched_switch"),
                   "tracepoint/sched/sched_wakeup, sched_wakeup_new, sched_switch (event sent when "
                   "the thread leaves the CPU)"),
    )

    def __init__(self, threshold_ns: int | None = None) -> None:
        self.threshold_ns = threshold_from_env() if threshold_ns is None else threshold_ns
        if self.threshold_ns <= 0:
            raise ProbeError(f"runqslow: threshold {self.threshold_ns} ns is not positive")

    def rodata(self) -> dict[str, int | bytes]:
        """The threshold, for the kernel side."""
        return {"runqslow_min_ns": self.threshold_ns}

    def describe(self) -> dict[str, Any]:
        """The base description plus the threshold."""
        return {**super().describe(), "threshold_ns": self.threshold_ns}

    def decode(self, batch: bytes, ctx: EventContext) -> list[Event]:
        events = []
        for record in self.layout.struct.iter_unpack(batch):
            flags = record[3]
            latency_ns, tid, cpu, prev_tid, prev_comm = record[5:]
            event = ctx.from_header("kernel.sched.runq_latency", record, severity="warning")
            event["data"] = {
                "latency_ns": latency_ns,
                "tid": tid,
                "cpu": cpu,
                "cause": "preemption" if flags & PREEMPTED else "wakeup",
                "prev_tid": prev_tid,
                "prev_command": kernel_comm(prev_comm),
            }
            events.append(event)
        return events


@hookimpl
def jalki_register_probes(registry: BoundProbeRegistry) -> None:
    """Register runqslow."""
    registry.register(RunqSlowProbe())
