"""Python mirrors of the record and maps defined in ``bpf/cpu_ipc.h``.

The record size is asserted against the C header's ``_Static_assert`` value
and, at load time, against the struct's size in the object's BTF.
"""

from __future__ import annotations

import struct

from jalki_core.probe import RecordLayout

COUNTERS = ("cycles", "instructions", "stalled_cycles_frontend", "stalled_cycles_backend")
"""The counters in the order of ``JALKI_CPU_CYCLES`` … ``JALKI_CPU_STALLED_BACKEND``."""

COUNTER_MAPS = ("cpu_cycles", "cpu_instructions", "cpu_stalled_frontend", "cpu_stalled_backend")
"""The ``PERF_EVENT_ARRAY`` map of each counter, in the same order."""

REASONS = {0: "interval", 1: "exit"}
"""``JALKI_CPU_REASON_*``: why the kernel emitted a record."""

CPU_IPC = RecordLayout.with_header(
    c_struct="cpu_ipc_event",
    fmt="QQ" + "4Q" + "4Q" + "IIII",
    fields=("window_start_ns", "run_ns",
            "cycles", "instructions", "stalled_frontend", "stalled_backend",
            "cycles_ns", "instructions_ns", "stalled_frontend_ns", "stalled_backend_ns",
            "switches", "scaled", "reason", "pad"),
    c_size=136,
)

PROCESS_KEY = struct.Struct("<I")
"""``cpu_ipc_procs`` key: the tgid."""

PROCESS_VALUE = struct.Struct("<QQQ4Q4QIIQ16s")
"""``struct cpu_ipc_acc``: window_start_ns, last_ns, run_ns, count[4], counted_ns[4],
switches, scaled, cgroup_id, comm (120 bytes)."""

assert PROCESS_VALUE.size == 120

CPU_KEY = struct.Struct("<I")
"""``PERF_EVENT_ARRAY`` key: the CPU number."""

FD_VALUE = struct.Struct("<I")
"""``PERF_EVENT_ARRAY`` value: a perf event file descriptor."""

EXTRA_DROP_CAUSES = ("switch_unseen",)
"""Probe-specific drop causes, in the order of ``enum jalki_cpu_drop_cause``."""
