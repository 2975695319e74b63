"""Who we are allowed to be: capabilities needed to load BPF programs."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from jalki_core.errors import EnvironmentProblem, PrivilegeError

CAP_SYS_ADMIN = 21
CAP_PERFMON = 38
CAP_BPF = 39
BTF_PATH = Path("/sys/kernel/btf/vmlinux")


def _read_effective_capabilities() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return None


def effective_capabilities() -> int:
    """The effective capability mask of this process (0 when unreadable)."""
    return _read_effective_capabilities() or 0


def has_capability(cap: int) -> bool:
    """Whether this process has capability number ``cap``."""
    return bool(effective_capabilities() >> cap & 1)


def can_load_bpf() -> bool:
    """CAP_SYS_ADMIN, or CAP_BPF together with CAP_PERFMON, in the effective set.

    Being uid 0 is not enough: a root process in a container or under
    ``setpriv`` may have dropped them. Only when the capability set cannot be
    read at all is uid 0 taken as privileged.
    """
    caps = _read_effective_capabilities()
    if caps is None:
        return os.geteuid() == 0
    def has(cap: int) -> bool:
        return bool(caps >> cap & 1)

    return has(CAP_SYS_ADMIN) or (has(CAP_BPF) and has(CAP_PERFMON))


def require_bpf_privileges() -> None:
    """Raise :class:`PrivilegeError` when this process cannot load tracing programs."""
    if not can_load_bpf():
        raise PrivilegeError(
            "loading BPF probes needs root or CAP_BPF+CAP_PERFMON",
            hint="run with sudo, or grant the capabilities: setcap cap_bpf,cap_perfmon+ep",
        )


TRACEFS_EVENTS = (Path("/sys/kernel/tracing/events"), Path("/sys/kernel/debug/tracing/events"))


def ensure_tracefs() -> bool:
    """Make classic tracepoints findable: mount tracefs when it is absent and we are root.

    Returns whether tracefs is available. Without it only tracepoint-based
    rungs fail (tp_btf and raw_tp need no tracefs), so this never raises.
    """
    if any(path.is_dir() for path in TRACEFS_EVENTS):
        return True
    if os.geteuid() != 0:
        return False
    subprocess.run(["mount", "-t", "tracefs", "nodev", "/sys/kernel/tracing"], capture_output=True, check=False)
    return TRACEFS_EVENTS[0].is_dir()


def require_btf() -> None:
    """Raise :class:`EnvironmentProblem` when the kernel exposes no BTF."""
    if not BTF_PATH.exists():
        raise EnvironmentProblem(
            f"this kernel exposes no BTF ({BTF_PATH} is missing)",
            hint="use a kernel built with CONFIG_DEBUG_INFO_BTF=y (most distributions since 2020)",
        )
