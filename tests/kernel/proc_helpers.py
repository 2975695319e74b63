"""Helpers for kernel tests of process and memory probes: cgroup ids and a memory-limited cgroup.

Works on a pure cgroup v2 host (memory controller in ``/sys/fs/cgroup``) and
on a hybrid one (v2 at ``/sys/fs/cgroup/unified`` without the memory
controller, which is mounted as cgroup v1 at ``/sys/fs/cgroup/memory``, as on
the project's machines). ``bpf_get_current_cgroup_id()`` is always the v2
(default hierarchy) cgroup, so the test cgroup exists in v2 in both cases;
the memory limit goes wherever the memory controller is.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup2_root() -> Path:
    """Where the cgroup v2 hierarchy is mounted (``/sys/fs/cgroup`` or ``/sys/fs/cgroup/unified``)."""
    for candidate in (CGROUP_ROOT, CGROUP_ROOT / "unified"):
        if (candidate / "cgroup.controllers").is_file():
            return candidate
    raise RuntimeError("no cgroup v2 hierarchy mounted")


def cgroup2_path(pid: int | str = "self") -> Path:
    """The v2 cgroup directory of a process (from the ``0::`` line of /proc/PID/cgroup)."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return cgroup2_root() / line[3:].lstrip("/")
    raise RuntimeError(f"process {pid} has no cgroup v2 entry")


def cgroup_id(directory: Path) -> int:
    """A cgroup's id as BPF sees it: its directory's inode number."""
    return directory.stat().st_ino


def own_comm() -> str:
    """This process's comm (what its children see as their parent's command)."""
    return Path("/proc/self/comm").read_text().strip()


@dataclass(frozen=True)
class MemoryCgroup:
    """A test cgroup with a memory limit.

    :param v2_dir: its cgroup v2 directory (``cgroup_id`` is its inode).
    :param memory_dir: the directory holding the memory limit (the same on pure v2; v1's on hybrid).
    :param memcg_path: the memory cgroup's path from its hierarchy's root, as the probe reports it.
    """

    v2_dir: Path
    memory_dir: Path
    memcg_path: str

    @property
    def procs_files(self) -> list[Path]:
        """The ``cgroup.procs`` files a process writes its pid into to join (each distinct directory)."""
        return [d / "cgroup.procs" for d in dict.fromkeys((self.v2_dir, self.memory_dir))]

    @property
    def cgroup_id(self) -> int:
        """The id BPF reports for processes in it."""
        return cgroup_id(self.v2_dir)

    @property
    def memcg_id(self) -> int:
        """The memory cgroup's id (its directory's inode)."""
        return cgroup_id(self.memory_dir)


def _memory_in_v2() -> bool:
    return "memory" in (cgroup2_root() / "cgroup.controllers").read_text().split()


@contextmanager
def memory_cgroup(name: str, limit_bytes: int) -> Iterator[MemoryCgroup]:
    """Create ``name`` with a memory limit (no swap) at the top of the hierarchy; remove it afterwards."""
    v2 = cgroup2_root()
    v2_dir = v2 / name
    created: list[Path] = []
    try:
        if _memory_in_v2():
            if "memory" not in (v2 / "cgroup.subtree_control").read_text().split():
                (v2 / "cgroup.subtree_control").write_text("+memory")
            v2_dir.mkdir()
            created.append(v2_dir)
            (v2_dir / "memory.max").write_text(str(limit_bytes))
            if (v2_dir / "memory.swap.max").exists():
                (v2_dir / "memory.swap.max").write_text("0")
            group = MemoryCgroup(v2_dir, v2_dir, "/" + name)
        else:
            memory_dir = CGROUP_ROOT / "memory" / name
            v2_dir.mkdir()
            created.append(v2_dir)
            memory_dir.mkdir()
            created.append(memory_dir)
            (memory_dir / "memory.limit_in_bytes").write_text(str(limit_bytes))
            if (memory_dir / "memory.memsw.limit_in_bytes").exists():
                (memory_dir / "memory.memsw.limit_in_bytes").write_text(str(limit_bytes))
            group = MemoryCgroup(v2_dir, memory_dir, "/" + name)
        yield group
    finally:
        for directory in reversed(created):
            _remove_cgroup(directory)


def _remove_cgroup(directory: Path) -> None:
    # A killed process leaves its cgroup only once it has been reaped and torn
    # down; rmdir says EBUSY until then.
    for _ in range(100):
        try:
            directory.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.05)
    directory.rmdir()


def memory_hog(comm: str) -> str:
    """Python source for ``python -c``: it joins the cgroups whose ``cgroup.procs`` files are its arguments,
    names itself ``comm``, then touches memory until the kernel kills it."""
    return HOG_SOURCE.replace("COMM", comm)


HOG_SOURCE = r"""
import sys
for path in sys.argv[1:]:
    with open(path, "w") as f:
        f.write("0")                       # "0": the writing process itself
with open("/proc/self/comm", "w") as f:
    f.write("COMM")
hog = []
while True:
    hog.append(b"\x01" * (1 << 20))        # touched pages: resident anonymous memory
"""
