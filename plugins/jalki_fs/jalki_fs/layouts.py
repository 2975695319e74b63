"""Python mirror of the record defined in ``bpf/open_failed.h``.

The size is asserted against the C header's ``_Static_assert`` value and, at
load time, against the struct's size in the object's BTF.
"""

from __future__ import annotations

from jalki_core.probe import RecordLayout

PATH_TRUNCATED = 1 << 8
"""``JALKI_FS_PATH_TRUNCATED``: the path was longer than the record keeps."""
PATH_UNREADABLE = 1 << 9
"""``JALKI_FS_PATH_UNREADABLE``: the path could not be read from the caller's memory."""

PATH_MAX = 256
"""``JALKI_FS_PATH_MAX``: bytes of path per record, with the NUL."""
PREFIX_MAX = 128
"""``JALKI_FS_PREFIX_MAX``: longest path-prefix filter in bytes."""

SYSCALLS = ("openat", "openat2", "open", "creat")
"""System call names by ``JALKI_FS_SYS_*`` number."""

FS_STATS = ("opens_succeeded",)
"""``fs_stats`` indexes, in the order of ``enum jalki_fs_stat``."""

EXTRA_DROP_CAUSES = ("enter_unseen",)
"""Probe-specific drop causes, in the order of ``enum jalki_fs_drop_cause``."""

OPEN_FAILED = RecordLayout.with_header(
    c_struct="open_failed_event",
    fmt=f"iiIIII{PATH_MAX}s",
    fields=("error", "dfd", "open_flags", "mode", "syscall", "path_len", "path"),
    c_size=320,
    c_names={"open_flags": "flags"},  # the C member is `flags`; the header has its own `flags`
)
