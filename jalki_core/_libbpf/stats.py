"""Kernel-wide BPF run-time statistics and CPU count."""

from __future__ import annotations

import os

from jalki_core._libbpf import _check
from jalki_core._libbpf._closeable import Closeable
from jalki_core._libbpf._ffi import lib
from jalki_core.errors import LibbpfError


class StatsHandle(Closeable):
    """Keeps ``bpf_enable_stats(BPF_STATS_RUN_TIME)`` on until :meth:`close`.

    While any such handle is open the kernel counts ``run_time_ns`` and
    ``run_cnt`` for every BPF program (:meth:`BpfProgram.stats`).
    """

    def __init__(self, fd: int) -> None:
        """Wrap the descriptor returned by ``bpf_enable_stats``."""
        self._fd: int | None = fd

    def __repr__(self) -> str:
        return f"<StatsHandle fd={self._fd}>"

    @property
    def fd(self) -> int:
        """The descriptor that keeps statistics on."""
        if self._fd is None:
            raise _check.closed("bpf_enable_stats", detail="the stats handle is closed")
        return self._fd

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._fd is None

    def close(self) -> None:
        """Stop holding statistics on (idempotent)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def enable_stats() -> StatsHandle:
    """Turn on BPF run-time statistics for as long as the returned handle is open."""
    fd = _check.rc(
        int(lib.bpf_enable_stats(lib.BPF_STATS_RUN_TIME)),
        "bpf_enable_stats",
        LibbpfError,
        hint="needs CAP_SYS_ADMIN and a kernel with BPF_ENABLE_STATS (5.8+)",
    )
    return StatsHandle(fd)


def num_possible_cpus() -> int:
    """Number of possible CPUs (the per-CPU map value count)."""
    return _check.rc(int(lib.libbpf_num_possible_cpus()), "libbpf_num_possible_cpus")
