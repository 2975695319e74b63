"""The binding's ``perf_event_open`` against the real kernel: software events open and count, a missing PMU is ENOENT.

Runs as root (CPU-wide events need CAP_PERFMON). Which hardware counters a
machine has is read from ``/sys/bus/event_source/devices``: the kernel
registers a core PMU there (``cpu``, ``cpu_core``/``cpu_atom`` on hybrid x86,
``armv8_*`` on arm64) only where the CPU, or the VM's virtual CPU, has one.
"""

from __future__ import annotations

import hashlib
import os
import struct
import time
from pathlib import Path

import pytest

from jalki_core._libbpf import PerfEvent, perf_event_open
from jalki_core._libbpf import perf as kperf
from jalki_core.errors import BpfHandleClosedError, LibbpfError, PerfEventOpenError

pytestmark = pytest.mark.kernel

PMU_DEVICES = Path("/sys/bus/event_source/devices")
HAS_CORE_PMU = PMU_DEVICES.is_dir() and any(
    path.name in ("cpu", "cpu_core", "cpu_atom") or path.name.startswith("armv") for path in PMU_DEVICES.iterdir())


def _count(event: PerfEvent) -> int:
    """A counting event's value (``read_format`` 0: one u64)."""
    [value] = struct.unpack("<Q", os.read(event.fd, 8))
    return int(value)


def _burn(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        hashlib.sha256(b"x" * 4096).digest()


def test_a_task_clock_event_opens_and_counts_this_threads_cpu_time() -> None:
    with perf_event_open(kperf.PERF_TYPE_SOFTWARE, kperf.PERF_COUNT_SW_TASK_CLOCK, cpu=-1, pid=0) as event:
        _burn(0.02)
        first = _count(event)
        _burn(0.02)  # 20 ms more of this thread on CPU: the clock moves by at least that
        second = _count(event)
        fd = event.fd
    assert first > 0 and second - first >= 20_000_000
    assert event.closed
    with pytest.raises(OSError):
        os.fstat(fd)
    with pytest.raises(BpfHandleClosedError, match="the perf event is closed"):
        _ = event.fd


def test_cpu_wide_software_events_open_on_every_online_cpu() -> None:
    cpus = [cpu for cpu in range(os.cpu_count() or 1) if Path(f"/sys/devices/system/cpu/cpu{cpu}").is_dir()]
    events = [perf_event_open(kperf.PERF_TYPE_SOFTWARE, kperf.PERF_COUNT_SW_CPU_CLOCK, cpu=cpu) for cpu in cpus]
    try:
        assert [event.cpu for event in events] == cpus
        assert len({event.fd for event in events}) == len(cpus)
    finally:
        for event in events:
            event.close()


def test_a_hardware_event_opens_with_a_pmu_and_is_the_typed_enoent_without() -> None:
    """One test for both kinds of machine (a skip would fail CI, which requires every kernel test to run)."""
    if HAS_CORE_PMU:
        with perf_event_open(kperf.PERF_TYPE_HARDWARE, kperf.PERF_COUNT_HW_CPU_CYCLES, cpu=0) as event:
            assert event.fd >= 0
        return
    with pytest.raises(PerfEventOpenError) as info:
        perf_event_open(kperf.PERF_TYPE_HARDWARE, kperf.PERF_COUNT_HW_CPU_CYCLES, cpu=0)
    error = info.value
    assert isinstance(error, LibbpfError)
    assert (error.errno_name, error.event_type, error.config, error.cpu) == (
        "ENOENT", kperf.PERF_TYPE_HARDWARE, kperf.PERF_COUNT_HW_CPU_CYCLES, 0)
    assert error.operation == "perf_event_open(PERF_TYPE_HARDWARE, CPU_CYCLES)"
    assert error.hint == "this machine exposes no hardware performance counters (a VM without a virtual PMU)"
    assert error.one_line().startswith("perf_event_open(PERF_TYPE_HARDWARE, CPU_CYCLES) failed: ENOENT ")


def test_an_unknown_software_event_and_a_cpu_out_of_range_are_named() -> None:
    with pytest.raises(PerfEventOpenError) as info:
        perf_event_open(kperf.PERF_TYPE_SOFTWARE, 4000, cpu=0)
    assert info.value.errno_name == "ENOENT" and info.value.hint == "this kernel has no 4000 software event"
    with pytest.raises(PerfEventOpenError) as info:
        perf_event_open(kperf.PERF_TYPE_SOFTWARE, kperf.PERF_COUNT_SW_TASK_CLOCK, cpu=1 << 20)
    assert info.value.errno_name == "EINVAL" and info.value.cpu == 1 << 20
