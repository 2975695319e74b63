"""Cgroup v2 id -> cgroup path, for the ``cgroup_id`` events carry.

``bpf_get_current_cgroup_id()`` is the id of the process's cgroup v2 (unified) cgroup, which is the
inode number of its directory. :class:`CgroupIndex` keeps a bounded map of those inodes, built by
walking the v2 hierarchy and rebuilt lazily when an id is missing (at most once per
``refresh_interval_s``: a burst of unknown ids costs one walk, not one each). When the id is unknown
(a cgroup made and removed between two walks, or a node whose runtime uses only cgroup v1), the
event's pid is looked up in ``<proc>/<pid>/cgroup``, whose v2 line and v1 hierarchy lines all name
the container.

The v2 root is found the way the kernel mounts it: ``/sys/fs/cgroup`` on a pure v2 node,
``/sys/fs/cgroup/unified`` on a hybrid one; :func:`detect_v2_root` tells which. Whether any cgroup v1
hierarchy exists (where a container may be placed while its v2 cgroup is the runtime's) is read from
``/proc/self/cgroup``, which lists every hierarchy of the system: :func:`detect_v1_hierarchies`.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from jalki_k8s.cgroup_path import parse_cgroup_path

DEFAULT_CGROUP_MOUNT = Path("/sys/fs/cgroup")
DEFAULT_MAX_ENTRIES = 200_000
DEFAULT_REFRESH_INTERVAL_S = 1.0
DEFAULT_MAX_V1_PROCESSES = 65_536
V1_EXIT_GRACE_S = 10.0
"""How long the v1 path of an exited process stays known after its exit event: its OOM kill event comes
from another probe's ring and may be enriched after the exit."""
V1_NEGATIVE_TTL_S = 1.0
"""How long a process whose ``/proc/<pid>/cgroup`` named no container is not read again (the kubelet's and
the runtime's own events on a hybrid node). Short: runc moves a container's first process in after it starts."""


def detect_v2_root(mount: Path = DEFAULT_CGROUP_MOUNT) -> Path | None:
    """The cgroup v2 hierarchy under ``mount``: itself (pure v2), ``unified/`` (hybrid) or ``None`` (v1 only)."""
    for candidate in (mount, mount / "unified"):
        if (candidate / "cgroup.controllers").is_file():
            return candidate
    return None


def detect_v1_hierarchies(proc_self_cgroup: Path = Path("/proc/self/cgroup")) -> bool:
    """Whether the system has a cgroup v1 hierarchy (a line other than ``0::`` in ``/proc/self/cgroup``)."""
    try:
        text = proc_self_cgroup.read_text()
    except OSError:
        return False
    return any(line and not line.startswith("0:") for line in text.splitlines())


@dataclass
class CgroupIndexStats:
    """Counters of the index, for status and metrics."""

    refreshes: int = 0
    refresh_skipped: int = 0
    """Misses that found a refresh too recent to repeat (rate limit)."""
    truncated: int = 0
    """Refreshes that stopped at ``max_entries`` directories."""
    proc_fallbacks: int = 0
    """Ids resolved through ``/proc/<pid>/cgroup``."""
    v1_lookups: int = 0
    """Reads of ``/proc/<pid>/cgroup`` for a process whose v2 cgroup names no container (v1 hierarchies present)."""
    v1_fallbacks: int = 0
    """Of those: a v1 hierarchy named the container (read now, or remembered from the process's earlier events)."""
    v1_negative_hits: int = 0
    """Lookups answered "no container" without a read: the same (pid, cgroup id) read so within
    :data:`V1_NEGATIVE_TTL_S`."""
    entries: int = 0


class CgroupIndex:
    """Bounded, lazily refreshed map from cgroup v2 id to cgroup path (relative to the v2 root, ``/``-led).

    :param v2_root: the cgroup v2 hierarchy; default: detected under ``/sys/fs/cgroup``. ``None`` after
        detection (v1-only node) leaves only the ``/proc`` fallback.
    :param proc_root: where the host's ``/proc`` is (``/host/proc`` in the DaemonSet).
    :param max_entries: most directories indexed (a walk stops there, counted).
    :param refresh_interval_s: least time between two walks.
    :param v1_hierarchies: whether cgroup v1 hierarchies exist (default: detected, :func:`detect_v1_hierarchies`).
    :param clock: monotonic clock (tests pass their own).
    """

    def __init__(
        self,
        v2_root: Path | Literal["detect"] | None = "detect",
        *,
        proc_root: Path = Path("/proc"),
        max_entries: int = DEFAULT_MAX_ENTRIES,
        refresh_interval_s: float = DEFAULT_REFRESH_INTERVAL_S,
        v1_hierarchies: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.v2_root = detect_v2_root() if v2_root == "detect" else v2_root
        self.v1_hierarchies = detect_v1_hierarchies() if v1_hierarchies is None else v1_hierarchies
        self.proc_root = proc_root
        self.max_entries = max_entries
        self.refresh_interval_s = refresh_interval_s
        self.stats = CgroupIndexStats()
        self._clock = clock
        self._paths: dict[int, str] = {}
        self._last_refresh: float | None = None
        self._lock = threading.Lock()
        self._v1_seen: OrderedDict[tuple[int, int], str] = OrderedDict()
        """(pid, v2 cgroup id) -> the v1 path that named its container: once it has exited, its zombie's
        ``/proc/<pid>/cgroup`` shows the v1 roots (and a reaped one shows nothing), so its exit and OOM kill
        events are named from what its earlier events found. Bounded; forgotten :data:`V1_EXIT_GRACE_S` after
        its exit event (its OOM kill event may be enriched after the exit)."""
        self._v1_exits: deque[tuple[float, tuple[int, int]]] = deque()
        """(when to forget, key) of exited processes, oldest first; bounded like ``_v1_seen``."""
        self._v1_exit_deadline: dict[tuple[int, int], float] = {}
        """key -> its latest deadline in ``_v1_exits`` (an older entry of a reused pid is not acted on)."""
        self._v1_none: OrderedDict[tuple[int, int], float] = OrderedDict()
        """(pid, v2 cgroup id) whose ``/proc/<pid>/cgroup`` named no container -> until when that answer
        stands (:data:`V1_NEGATIVE_TTL_S`), oldest first; bounded."""
        self.walk_skipped = False
        """Whether the latest :meth:`path_of` that found nothing skipped a walk (the last one was too recent):
        the id may be a cgroup made since, which a later walk will find."""

    def refresh(self) -> None:
        """Walk the v2 hierarchy now and replace the index (nothing on a v1-only node)."""
        if self.v2_root is None:
            return
        paths: dict[int, str] = {}
        root = str(self.v2_root)
        stack = [root]
        truncated = False
        while stack and not truncated:
            directory = stack.pop()
            try:
                entries = list(os.scandir(directory))
            except OSError:  # removed while we walked: it has no processes to name
                continue
            for entry in entries:
                try:
                    if not entry.is_dir(follow_symlinks=False):
                        continue
                    inode = entry.inode()
                except OSError:
                    continue
                if len(paths) >= self.max_entries:
                    truncated = True
                    break
                paths[inode] = entry.path[len(root):]
                stack.append(entry.path)
        try:
            paths[self.v2_root.stat().st_ino] = "/"
        except OSError:
            pass
        with self._lock:
            self._paths = paths
            self._last_refresh = self._clock()
            self.stats.refreshes += 1
            self.stats.truncated += truncated
            self.stats.entries = len(paths)

    def path_of(self, cgroup_id: int, pid: int | None = None) -> str | None:
        """The cgroup path of ``cgroup_id`` (or, failing that, of process ``pid``); ``None`` when neither is known.

        A miss rebuilds the index unless the last rebuild is younger than ``refresh_interval_s``.
        """
        with self._lock:
            path = self._paths.get(cgroup_id)
            last = self._last_refresh
        if path is not None:
            return path
        self.walk_skipped = False
        if cgroup_id and self.v2_root is not None:
            if last is None or self._clock() - last >= self.refresh_interval_s:
                self.refresh()
                with self._lock:
                    path = self._paths.get(cgroup_id)
                if path is not None:
                    return path
            else:
                self.stats.refresh_skipped += 1
                self.walk_skipped = True
        if pid:
            found = self.proc_cgroup_path(pid)
            if found is not None:
                self.stats.proc_fallbacks += 1
            return found
        return None

    def proc_cgroup_path(self, pid: int) -> str | None:
        """The most telling path in ``<proc>/<pid>/cgroup``: the first that names a container, else the v2 one."""
        try:
            text = (self.proc_root / str(pid) / "cgroup").read_text()
        except OSError:  # the process has exited (or /proc is not the host's)
            return None
        return pick_proc_cgroup_path(text, parse_cgroup_path)

    def v1_container_path(self, pid: int, cgroup_id: int, parse: Callable[[str], object]) -> str | None:
        """The first v1 hierarchy path of ``pid`` that ``parse`` finds a container in, else ``None``.

        For a process whose v2 cgroup (``cgroup_id``) names no container: on a hybrid node a runtime on the
        cgroupfs driver may have placed it in v1 hierarchies only. An exited process (zombie or reaped) is
        answered from what its earlier events found, if any.
        """
        key = (pid, cgroup_id)
        now = self._clock()
        with self._lock:
            self._expire_v1(now)
            if key in self._v1_none:  # read moments ago: no container (a host process)
                self.stats.v1_negative_hits += 1
                return None
        self.stats.v1_lookups += 1
        try:
            text = (self.proc_root / str(pid) / "cgroup").read_text()
        except OSError:  # the process has been reaped
            text = ""
        for line in text.splitlines():
            hierarchy, _, rest = line.partition(":")
            path = rest.partition(":")[2]
            if hierarchy != "0" and path and parse(path) is not None:
                self.stats.v1_fallbacks += 1
                with self._lock:
                    self._v1_exit_deadline.pop(key, None)  # alive (a reused pid): not an exited process's
                    self._v1_seen[key] = path
                    self._v1_seen.move_to_end(key)
                    while len(self._v1_seen) > DEFAULT_MAX_V1_PROCESSES:
                        self._v1_seen.popitem(last=False)
                return path
        with self._lock:
            remembered = self._v1_seen.get(key)
            if remembered is None:
                self._v1_none[key] = now + V1_NEGATIVE_TTL_S
                while len(self._v1_none) > DEFAULT_MAX_V1_PROCESSES:
                    self._v1_none.popitem(last=False)
        if remembered is not None:
            self.stats.v1_fallbacks += 1
        return remembered

    def forget_process(self, pid: int, cgroup_id: int) -> None:
        """``pid`` has exited: what :meth:`v1_container_path` remembered of it goes :data:`V1_EXIT_GRACE_S`
        later (its OOM kill event, from another ring, may come after its exit; then its pid may be reused)."""
        key = (pid, cgroup_id)
        now = self._clock()
        with self._lock:
            self._v1_none.pop(key, None)
            self._expire_v1(now)
            if key not in self._v1_seen:
                return
            deadline = now + V1_EXIT_GRACE_S
            self._v1_exit_deadline[key] = deadline
            self._v1_exits.append((deadline, key))
            while len(self._v1_exits) > DEFAULT_MAX_V1_PROCESSES:  # a burst of exits: the oldest go now
                self._forget_exited(*self._v1_exits.popleft())

    def _expire_v1(self, now: float) -> None:
        """Drop exited processes past their grace and negative answers past their time (lock held)."""
        while self._v1_exits and self._v1_exits[0][0] <= now:
            self._forget_exited(*self._v1_exits.popleft())
        while self._v1_none:
            key, until = next(iter(self._v1_none.items()))
            if until > now:
                break
            del self._v1_none[key]

    def _forget_exited(self, deadline: float, key: tuple[int, int]) -> None:
        if self._v1_exit_deadline.get(key) == deadline:
            del self._v1_exit_deadline[key]
            self._v1_seen.pop(key, None)


def pick_proc_cgroup_path(text: str, parse: Callable[[str], object]) -> str | None:
    """From a ``/proc/<pid>/cgroup`` text: the v2 (``0::``) path if it names a container, else the first v1
    hierarchy path that does, else the v2 path (a host process), else ``None``."""
    v2: str | None = None
    v1: list[str] = []
    for line in text.splitlines():
        hierarchy, _, rest = line.partition(":")
        _controllers, _, path = rest.partition(":")
        if not path:
            continue
        if hierarchy == "0":
            v2 = path
        else:
            v1.append(path)
    for path in ([v2] if v2 else []) + v1:
        if parse(path) is not None:
            return path
    return v2 or (v1[0] if v1 else None)
