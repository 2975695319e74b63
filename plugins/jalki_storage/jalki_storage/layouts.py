"""Python mirrors of the records and maps defined in ``bpf/block_io.h``.

The record size is asserted against the C header's ``_Static_assert`` value
and, at load time, against the struct's size in the object's BTF.
"""

from __future__ import annotations

import struct

from jalki_core.probe import RecordLayout

BLOCK_IO = RecordLayout.with_header(
    c_struct="block_io_event",
    fmt="QQIIIi",
    fields=("latency_ns", "sector", "dev", "bytes", "op", "error"),
    c_size=72,
)

HIST_SLOTS = 32
"""``JALKI_STORAGE_HIST_SLOTS``: slot i counts latencies in [2^i, 2^(i+1)) microseconds."""

HIST_KEY = struct.Struct("<II")
"""``struct block_io_hist_key``: dev, op."""

HIST_VALUE = struct.Struct(f"<{HIST_SLOTS}QQQ")
"""``struct block_io_hist``: slots, count, total_ns (272 bytes)."""

assert HIST_KEY.size == 8 and HIST_VALUE.size == 272

EXTRA_DROP_CAUSES = ("issue_unseen",)
"""Probe-specific drop causes, in the order of ``enum jalki_storage_drop_cause``."""
