"""The jalki-fs probe: failed file opens with errno, path, flags and process."""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping
from typing import Any

from jalki_core.errors import LibbpfError, ProbeError, errno_name
from jalki_core.events import Event, EventContext, errno_message
from jalki_core.probe import AttachRung, Probe
from jalki_fs import layouts

PREFIX_ENV = "JALKI_FS_PATH_PREFIX"
"""Environment variable: report only paths starting with this text (empty: all)."""

_ACCESS_MODES = {os.O_RDONLY: "O_RDONLY", os.O_WRONLY: "O_WRONLY", os.O_RDWR: "O_RDWR"}
# Composite flags first (O_SYNC contains O_DSYNC, O_TMPFILE contains O_DIRECTORY).
_FLAG_NAMES = tuple(
    (value, name) for name in (
        "O_TMPFILE", "O_SYNC", "O_CREAT", "O_EXCL", "O_NOCTTY", "O_TRUNC", "O_APPEND", "O_NONBLOCK",
        "O_DSYNC", "O_ASYNC", "O_DIRECT", "O_LARGEFILE", "O_DIRECTORY", "O_NOFOLLOW", "O_NOATIME",
        "O_CLOEXEC", "O_PATH",
    ) if (value := getattr(os, name, 0))
)
_SEVERITY = {"EACCES": "warning", "EPERM": "warning", "EROFS": "warning", "EMFILE": "error",
             "ENFILE": "error", "ENOSPC": "error", "EDQUOT": "error", "EIO": "error"}
"""Severity by errno name; other failures (ENOENT, EEXIST, ENOTDIR, ELOOP…) are ``info``."""
_CREATES = getattr(os, "O_CREAT", 0) | getattr(os, "O_TMPFILE", 0)


def open_flags_text(flags: int) -> str:
    """Open flags as ``strace`` writes them (``O_WRONLY|O_CREAT|O_CLOEXEC``), host architecture's values."""
    parts = [_ACCESS_MODES.get(flags & 3, f"0x{flags & 3:x}")]
    rest = flags & ~3
    for value, name in _FLAG_NAMES:
        if rest & value == value:
            parts.append(name)
            rest &= ~value
    if rest:
        parts.append(f"0x{rest:x}")
    return "|".join(parts)


def _prefix_bytes(explicit: str | None) -> bytes:
    text = explicit if explicit is not None else os.environ.get(PREFIX_ENV, "")
    raw = text.encode()
    if len(raw) > layouts.PREFIX_MAX:
        raise ProbeError(f"open_failed: path prefix is {len(raw)} bytes, at most {layouts.PREFIX_MAX}")
    return raw


class OpenFailedProbe(Probe):
    """One event per failed ``openat``/``openat2``/``open``/``creat``: errno, path, flags, process.

    Successful opens are only counted in the kernel (:meth:`fs_stats`), never
    emitted; a failure whose entry was not seen is the drop cause
    ``enter_unseen``. Kprobes are not used: the system-call tracepoints carry
    the arguments (entry) and the result (exit), joined by thread.

    :param path_prefix: report only paths that start with this text, as the
        caller passed them (relative paths do not match an absolute prefix);
        default ``JALKI_FS_PATH_PREFIX``, empty for all. At most 128 bytes.
    """

    name = "open_failed"
    observes = "syscalls:sys_enter_openat / sys_exit_openat (+ openat2, open, creat)"
    event_types = ("kernel.fs.open_failed",)
    bpf_object = "bpf/open_failed.bpf.o"
    event_schema = "events.schema.json"
    layout = layouts.OPEN_FAILED
    extra_drop_causes = layouts.EXTRA_DROP_CAUSES
    # Entry programs before their exit programs: the loader detaches in reverse
    # order, so no exit in a slow tracepoint detach misses its entry.
    ladder = (
        AttachRung("tracepoint", ("tp_enter_openat", "tp_exit_openat"),
                   "tracepoint/syscalls/sys_enter_openat + sys_exit_openat "
                   "(+ openat2, open, creat where the kernel has them)",
                   optional=("tp_enter_openat2", "tp_exit_openat2", "tp_enter_open", "tp_exit_open",
                             "tp_enter_creat", "tp_exit_creat")),
    )

    def __init__(self, path_prefix: str | None = None) -> None:
        self._prefix = _prefix_bytes(path_prefix)
        self.path_prefix = self._prefix.decode()

    def rodata(self) -> dict[str, int | bytes]:
        """The path prefix, zero-padded to the C array, and its length."""
        return {"fs_path_prefix": self._prefix.ljust(layouts.PREFIX_MAX, b"\0"),
                "fs_path_prefix_len": len(self._prefix)}

    def describe(self) -> dict[str, Any]:
        """The base description plus the path prefix."""
        return {**super().describe(), "path_prefix": self.path_prefix}

    def decode(self, batch: bytes, ctx: EventContext) -> list[Event]:
        events = []
        for record in self.layout.struct.iter_unpack(batch):
            flags = record[3]
            error, dfd, open_flags, mode, syscall, path_len, path = record[5:]
            code = errno_name(error)
            event = ctx.from_header("kernel.fs.open_failed", record, severity=_SEVERITY.get(code, "info"),
                                    outcome="failure")
            event["error"] = {"code": code, "message": errno_message(error)}
            unreadable = bool(flags & layouts.PATH_UNREADABLE)
            event["data"] = {
                "path": None if unreadable else path[:path_len].decode("utf-8", "backslashreplace"),
                "path_truncated": bool(flags & layouts.PATH_TRUNCATED),
                "flags": open_flags_text(open_flags),
                "flags_value": open_flags,
                "mode": f"{mode:04o}" if open_flags & _CREATES else None,
                "dirfd": dfd,
                "syscall": layouts.SYSCALLS[syscall] if syscall < len(layouts.SYSCALLS) else str(syscall),
            }
            events.append(event)
        return events

    @staticmethod
    def fs_stats(maps: Mapping[str, Any]) -> dict[str, int]:
        """In-kernel counters (``opens_succeeded``), summed over CPUs.

        :param maps: the loaded object's maps by name (``LoadedProbe.obj.maps``).
        """
        stats_map = maps["fs_stats"]
        result = dict.fromkeys(layouts.FS_STATS, 0)
        for index, name in enumerate(layouts.FS_STATS):
            try:
                values = stats_map.lookup_per_cpu(struct.pack("<I", index))
            except LibbpfError:
                continue
            result[name] = sum(struct.unpack_from("<Q", value)[0] for value in values)
        return result
