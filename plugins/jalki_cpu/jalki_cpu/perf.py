"""``perf_event_open(2)`` through ctypes: open counting events per CPU, and say why it fails.

Only what the cpu_ipc probe needs: a counting (not sampling) event of one
type and config on one CPU for every task (``pid = -1``), enabled at once.
The file descriptors go into the probe's ``PERF_EVENT_ARRAY`` maps, which
keep their own reference: the caller closes them right after.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
from dataclasses import dataclass
from pathlib import Path

from jalki_core.errors import errno_name

PERF_TYPE_HARDWARE = 0
PERF_TYPE_SOFTWARE = 1

PERF_COUNT_HW_CPU_CYCLES = 0
PERF_COUNT_HW_INSTRUCTIONS = 1
PERF_COUNT_HW_STALLED_CYCLES_FRONTEND = 7
PERF_COUNT_HW_STALLED_CYCLES_BACKEND = 8

PERF_COUNT_SW_CPU_CLOCK = 0
PERF_COUNT_SW_TASK_CLOCK = 1

PERF_FLAG_FD_CLOEXEC = 1 << 3
PERF_ATTR_SIZE_VER0 = 64

SYSCALL_NUMBERS = {
    "x86_64": 298, "amd64": 298, "i386": 336, "i686": 336,
    "aarch64": 241, "arm64": 241, "riscv64": 241, "loongarch64": 241,
    "armv7l": 364, "armv6l": 364, "ppc64le": 319, "ppc64": 319, "s390x": 331,
}
"""``__NR_perf_event_open`` per machine (arch/*/include/uapi/asm/unistd*.h, syscall tables)."""

PARANOID_PATH = "/proc/sys/kernel/perf_event_paranoid"
ONLINE_CPUS_PATH = "/sys/devices/system/cpu/online"

_TYPE_NAMES = {PERF_TYPE_HARDWARE: "PERF_TYPE_HARDWARE", PERF_TYPE_SOFTWARE: "PERF_TYPE_SOFTWARE"}


class PerfEventAttr(ctypes.Structure):
    """``struct perf_event_attr`` up to ``config1`` (``PERF_ATTR_SIZE_VER0``, 64 bytes).

    ``flags`` holds the bit fields (``disabled`` is bit 0, ``inherit`` bit 1,
    ``exclude_kernel`` bit 5…); all zero here: enabled at once, not
    inherited, counting user and kernel mode.
    """

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("size", ctypes.c_uint32),
        ("config", ctypes.c_uint64),
        ("sample_period", ctypes.c_uint64),
        ("sample_type", ctypes.c_uint64),
        ("read_format", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
        ("wakeup_events", ctypes.c_uint32),
        ("bp_type", ctypes.c_uint32),
        ("config1", ctypes.c_uint64),
    ]


assert ctypes.sizeof(PerfEventAttr) == PERF_ATTR_SIZE_VER0


@dataclass(frozen=True)
class CounterSpec:
    """One perf event: its type, its config and their names for messages.

    :param type: ``PERF_TYPE_HARDWARE`` or ``PERF_TYPE_SOFTWARE``.
    :param config: the event within the type (``PERF_COUNT_HW_CPU_CYCLES``…).
    :param config_name: the config's name without its prefix (``CPU_CYCLES``).
    """

    type: int
    config: int
    config_name: str

    @property
    def type_name(self) -> str:
        """``PERF_TYPE_HARDWARE``, ``PERF_TYPE_SOFTWARE`` or the number."""
        return _TYPE_NAMES.get(self.type, str(self.type))

    @property
    def label(self) -> str:
        """``perf_event_open(PERF_TYPE_HARDWARE, CPU_CYCLES)``."""
        return f"perf_event_open({self.type_name}, {self.config_name})"

    @property
    def hardware(self) -> bool:
        """True for a hardware (PMU) counter."""
        return self.type == PERF_TYPE_HARDWARE


CPU_CYCLES = CounterSpec(PERF_TYPE_HARDWARE, PERF_COUNT_HW_CPU_CYCLES, "CPU_CYCLES")
INSTRUCTIONS = CounterSpec(PERF_TYPE_HARDWARE, PERF_COUNT_HW_INSTRUCTIONS, "INSTRUCTIONS")
STALLED_CYCLES_FRONTEND = CounterSpec(PERF_TYPE_HARDWARE, PERF_COUNT_HW_STALLED_CYCLES_FRONTEND,
                                      "STALLED_CYCLES_FRONTEND")
STALLED_CYCLES_BACKEND = CounterSpec(PERF_TYPE_HARDWARE, PERF_COUNT_HW_STALLED_CYCLES_BACKEND,
                                     "STALLED_CYCLES_BACKEND")
SW_CPU_CLOCK = CounterSpec(PERF_TYPE_SOFTWARE, PERF_COUNT_SW_CPU_CLOCK, "CPU_CLOCK")
SW_TASK_CLOCK = CounterSpec(PERF_TYPE_SOFTWARE, PERF_COUNT_SW_TASK_CLOCK, "TASK_CLOCK")


class PerfOpenError(OSError):
    """``perf_event_open`` failed; ``str()`` is the one-line reason (errno name and meaning)."""

    def __init__(self, spec: CounterSpec, err: int, cpu: int) -> None:
        self.spec = spec
        self.cpu = cpu
        super().__init__(err, explain_failure(spec, err, cpu))

    def __str__(self) -> str:
        return str(self.strerror)


def _libc_syscall(number: int, attr: PerfEventAttr, pid: int, cpu: int, group_fd: int, flags: int) -> int:
    """The raw system call: a file descriptor, or ``-errno``."""
    libc = ctypes.CDLL(None, use_errno=True)
    res = int(libc.syscall(ctypes.c_long(number), ctypes.byref(attr), ctypes.c_int(pid), ctypes.c_int(cpu),
                           ctypes.c_int(group_fd), ctypes.c_ulong(flags)))
    return res if res >= 0 else -ctypes.get_errno()


syscall = _libc_syscall
"""The function that makes the system call (replaced in tests to simulate ENOENT, EACCES…)."""


def perf_event_open(spec: CounterSpec, cpu: int, *, machine: str | None = None) -> int:
    """Open ``spec`` as a counting event on ``cpu`` for every task; the new file descriptor.

    :raises PerfOpenError: the kernel refused (``str()`` says why in one line).
    """
    number = SYSCALL_NUMBERS.get(machine or platform.machine())
    if number is None:
        raise PerfOpenError(spec, errno.ENOSYS, cpu)
    attr = PerfEventAttr(type=spec.type, size=PERF_ATTR_SIZE_VER0, config=spec.config)
    res = syscall(number, attr, -1, cpu, -1, PERF_FLAG_FD_CLOEXEC)
    if res < 0:
        raise PerfOpenError(spec, -res, cpu)
    return res


def paranoid_level(path: str = PARANOID_PATH) -> str:
    """``kernel.perf_event_paranoid`` as text (``"2"``), or ``"unknown"`` when unreadable."""
    try:
        return Path(path).read_text().strip() or "unknown"
    except OSError:
        return "unknown"


def explain_failure(spec: CounterSpec, err: int, cpu: int = 0) -> str:
    """One line: which call failed, with which errno, and what that means on this machine."""
    name = errno_name(err)
    if err == errno.ENOENT:
        if spec.hardware and spec.config == PERF_COUNT_HW_CPU_CYCLES:
            meaning = "this machine exposes no hardware performance counters (a VM without a virtual PMU)"
        elif spec.hardware:
            meaning = f"this CPU's performance monitoring unit has no {spec.config_name} event"
        else:
            meaning = f"this kernel has no {spec.config_name} software event"
    elif err in (errno.EACCES, errno.EPERM):
        meaning = (f"kernel.perf_event_paranoid={paranoid_level()} forbids CPU-wide counters to this process "
                   "(they need CAP_PERFMON or CAP_SYS_ADMIN, or a paranoid level of 0 or less): run jalki as "
                   "root, or lower it with 'sysctl -w kernel.perf_event_paranoid=0'")
        if err == errno.EPERM:
            meaning += "; in a container, a seccomp profile may also block perf_event_open"
    elif err == errno.EOPNOTSUPP:
        meaning = "the performance monitoring unit cannot count this event here"
    elif err == errno.ENODEV:
        meaning = f"CPU {cpu} is not online"
    elif err == errno.ENOSYS:
        meaning = (f"perf events are not available (no perf_event_open syscall number for {platform.machine()}, "
                   "or a kernel built without CONFIG_PERF_EVENTS)")
    elif err == errno.EBUSY:
        meaning = "the counters are held exclusively by another user of the performance monitoring unit"
    elif err in (errno.EMFILE, errno.ENFILE):
        meaning = "too many open files: raise the file descriptor limit (ulimit -n)"
    elif err == errno.EINVAL:
        meaning = "the kernel rejected the event's attributes (an event or flag this kernel or CPU does not support)"
    else:
        meaning = os.strerror(err)
    return f"{spec.label} failed with {name}: {meaning}"


def probe_counters(specs: tuple[CounterSpec, ...], cpu: int) -> str | None:
    """Open and close each of ``specs`` on ``cpu``; the first failure's reason, or None when all open."""
    for spec in specs:
        try:
            fd = perf_event_open(spec, cpu)
        except PerfOpenError as exc:
            return str(exc)
        os.close(fd)
    return None


def online_cpus(path: str = ONLINE_CPUS_PATH) -> list[int]:
    """The online CPUs (``0-3,6`` → ``[0, 1, 2, 3, 6]``); ``[0]`` when the file is unreadable."""
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return [0]
    cpus: list[int] = []
    for part in filter(None, text.split(",")):
        low, _, high = part.partition("-")
        cpus.extend(range(int(low), int(high or low) + 1))
    return cpus or [0]
