"""jalki's libbpf binding: small Python classes over a cffi extension.

Nothing outside this package imports the cffi ``lib``; every C return value
goes through :mod:`jalki_core._libbpf._check`. Importing this package routes
libbpf's printing into the ``jalki.libbpf`` logger.
"""

from __future__ import annotations

from jalki_core._libbpf.log import capture_libbpf_log, recent_libbpf_lines
from jalki_core._libbpf.maps import BPF_ANY, BPF_EXIST, BPF_NOEXIST, BpfMap, MapType
from jalki_core._libbpf.objects import BpfObject
from jalki_core._libbpf.perf import PerfEvent, perf_event_open
from jalki_core._libbpf.programs import BpfLink, BpfProgram
from jalki_core._libbpf.ringbuf import RingBufferReader
from jalki_core._libbpf.stats import StatsHandle, enable_stats, num_possible_cpus

__all__ = [
    "BPF_ANY",
    "BPF_EXIST",
    "BPF_NOEXIST",
    "BpfLink",
    "BpfMap",
    "BpfObject",
    "BpfProgram",
    "MapType",
    "PerfEvent",
    "RingBufferReader",
    "StatsHandle",
    "capture_libbpf_log",
    "enable_stats",
    "num_possible_cpus",
    "perf_event_open",
    "recent_libbpf_lines",
]
