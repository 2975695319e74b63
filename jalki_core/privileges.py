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


def effective_capabilities() -> int:
    """The effective capability mask of this process (0 when unreadable)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


def has_capability(cap: int) -> bool:
    """Whether this process has capability number ``cap``."""
    return bool(effective_capabilities() >> cap & 1)


def can_load_bpf() -> bool:
    """Root, CAP_SYS_ADMIN, or CAP_BPF together with CAP_PERFMON."""
    if os.geteuid() == 0:
        return True
    return has_capability(CAP_SYS_ADMIN) or (has_capability(CAP_BPF) and has_capability(CAP_PERFMON))


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
