"""``perf_event_open(2)``: counting perf events, for probes that read counters from BPF.

A probe opens one event per CPU (``pid = -1``: every task on that CPU) and
puts the file descriptor into a ``PERF_EVENT_ARRAY`` map, which keeps its own
reference; the probe then closes its :class:`PerfEvent`. The system call is
made by the cffi shim (``jalki_perf_event_open`` in ``shim.c``: the attribute
struct and the syscall number come from the C headers); a refusal raises
:class:`~jalki_core.errors.PerfEventOpenError` through :mod:`._check`, with the
errno's name and, as hint, what it means for that event on this machine.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

from jalki_core._libbpf import _check
from jalki_core._libbpf._closeable import Closeable
from jalki_core._libbpf._ffi import lib
from jalki_core.errors import PerfEventOpenError

PERF_TYPE_HARDWARE = 0
PERF_TYPE_SOFTWARE = 1

PERF_COUNT_HW_CPU_CYCLES = 0
PERF_COUNT_HW_INSTRUCTIONS = 1
PERF_COUNT_HW_STALLED_CYCLES_FRONTEND = 7
PERF_COUNT_HW_STALLED_CYCLES_BACKEND = 8

PERF_COUNT_SW_CPU_CLOCK = 0
PERF_COUNT_SW_TASK_CLOCK = 1

TYPE_NAMES = {PERF_TYPE_HARDWARE: "PERF_TYPE_HARDWARE", PERF_TYPE_SOFTWARE: "PERF_TYPE_SOFTWARE"}
"""``PERF_TYPE_*`` names (``include/uapi/linux/perf_event.h``)."""

CONFIG_NAMES = {
    PERF_TYPE_HARDWARE: {
        PERF_COUNT_HW_CPU_CYCLES: "CPU_CYCLES",
        PERF_COUNT_HW_INSTRUCTIONS: "INSTRUCTIONS",
        PERF_COUNT_HW_STALLED_CYCLES_FRONTEND: "STALLED_CYCLES_FRONTEND",
        PERF_COUNT_HW_STALLED_CYCLES_BACKEND: "STALLED_CYCLES_BACKEND",
    },
    PERF_TYPE_SOFTWARE: {PERF_COUNT_SW_CPU_CLOCK: "CPU_CLOCK", PERF_COUNT_SW_TASK_CLOCK: "TASK_CLOCK"},
}
"""Event names within a type, without their ``PERF_COUNT_HW_`` / ``PERF_COUNT_SW_`` prefix."""

PARANOID_PATH = "/proc/sys/kernel/perf_event_paranoid"


def type_name(event_type: int) -> str:
    """``PERF_TYPE_HARDWARE``, ``PERF_TYPE_SOFTWARE`` or the number."""
    return TYPE_NAMES.get(event_type, str(event_type))


def config_name(event_type: int, config: int) -> str:
    """``CPU_CYCLES``, ``TASK_CLOCK``… or the number."""
    return CONFIG_NAMES.get(event_type, {}).get(config, str(config))


def event_label(event_type: int, config: int) -> str:
    """The call as messages name it: ``perf_event_open(PERF_TYPE_HARDWARE, CPU_CYCLES)``."""
    return f"perf_event_open({type_name(event_type)}, {config_name(event_type, config)})"


def paranoid_level(path: str = PARANOID_PATH) -> str:
    """``kernel.perf_event_paranoid`` as text (``"2"``), or ``"unknown"`` when unreadable."""
    try:
        return Path(path).read_text().strip() or "unknown"
    except OSError:
        return "unknown"


def explain(event_type: int, config: int, err: int, cpu: int = -1) -> str:
    """What errno ``err`` from opening this event means on this machine, and the fix where there is one."""
    err = abs(err)
    name = config_name(event_type, config)
    if err == errno.ENOENT:
        if event_type == PERF_TYPE_HARDWARE and config == PERF_COUNT_HW_CPU_CYCLES:
            return "this machine exposes no hardware performance counters (a VM without a virtual PMU)"
        if event_type == PERF_TYPE_HARDWARE:
            return f"this CPU's performance monitoring unit has no {name} event"
        return f"this kernel has no {name} software event"
    if err in (errno.EACCES, errno.EPERM):
        meaning = (f"kernel.perf_event_paranoid={paranoid_level()} forbids CPU-wide counters to this process "
                   "(they need CAP_PERFMON or CAP_SYS_ADMIN, or a paranoid level of 0 or less): run jalki as "
                   "root, or lower it with 'sysctl -w kernel.perf_event_paranoid=0'")
        if err == errno.EPERM:
            meaning += "; in a container, a seccomp profile may also block perf_event_open"
        return meaning
    if err == errno.EOPNOTSUPP:
        return "the performance monitoring unit cannot count this event here"
    if err == errno.ENODEV:
        return f"CPU {cpu} is not online"
    if err == errno.ENOSYS:
        return ("perf events are not available (no perf_event_open system call in this build, "
                "or a kernel built without CONFIG_PERF_EVENTS)")
    if err == errno.EBUSY:
        return "the counters are held exclusively by another user of the performance monitoring unit"
    if err in (errno.EMFILE, errno.ENFILE):
        return "too many open files: raise the file descriptor limit (ulimit -n)"
    if err == errno.EINVAL:
        return "the kernel rejected the event's attributes (an event or flag this kernel or CPU does not support)"
    return os.strerror(err)


def _shim_open(event_type: int, config: int, pid: int, cpu: int) -> int:
    return int(lib.jalki_perf_event_open(event_type, config, pid, cpu))


syscall: Callable[[int, int, int, int], int] = _shim_open
"""The system call ``(type, config, pid, cpu)`` → a file descriptor or ``-errno``.

Only tests replace it, to stand for a kernel that refuses (ENOENT, EACCES…).
"""


class PerfEvent(Closeable):
    """An open perf event's file descriptor, closed by :meth:`close` (or when collected)."""

    def __init__(self, fd: int, event_type: int, config: int, cpu: int) -> None:
        """Wrap ``fd``, opened for ``event_type``/``config`` on ``cpu``."""
        self._fd: int | None = fd
        self.event_type = event_type
        self.config = config
        self.cpu = cpu

    def __repr__(self) -> str:
        return f"<PerfEvent {event_label(self.event_type, self.config)} cpu={self.cpu} fd={self._fd}>"

    @property
    def fd(self) -> int:
        """The event's file descriptor."""
        if self._fd is None:
            raise _check.closed(event_label(self.event_type, self.config), detail="the perf event is closed")
        return self._fd

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._fd is None

    def close(self) -> None:
        """Close the descriptor (idempotent); a map holding the event keeps it open."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def perf_event_open(event_type: int, config: int, *, cpu: int, pid: int = -1) -> PerfEvent:
    """Open a counting event (enabled, user and kernel mode, not inherited) of ``pid`` on ``cpu``.

    :param event_type: ``PERF_TYPE_HARDWARE``, ``PERF_TYPE_SOFTWARE``…
    :param config: the event within the type (``PERF_COUNT_HW_CPU_CYCLES``…).
    :param cpu: the CPU to count on (-1: wherever ``pid`` runs).
    :param pid: the task to count (-1: every task on ``cpu``; needs CAP_PERFMON or a low paranoid level).
    :raises PerfEventOpenError: the kernel refused; ``errno_name`` and ``hint`` say why.
    """
    res = syscall(event_type, config, pid, cpu)
    if res < 0:
        raise _check.error(PerfEventOpenError, event_label(event_type, config), res,
                           hint=explain(event_type, config, res, cpu),
                           event_type=event_type, config=config, cpu=cpu)
    return PerfEvent(res, event_type, config, cpu)
