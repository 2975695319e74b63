"""Python mirrors of the records defined in ``bpf/process_events.h``.

The sizes are asserted here against the C header's ``_Static_assert`` values
and, at load time, against the struct sizes in each object's BTF.
"""

from __future__ import annotations

from jalki_core.probe import RecordLayout

ARGV_TRUNCATED = 1 << 8
"""``JALKI_PROC_ARGV_TRUNCATED`` (exec): argv was longer than :data:`ARGV_MAX` bytes."""

ARGV_UNREADABLE = 1 << 9
"""``JALKI_PROC_ARGV_UNREADABLE`` (exec): argv could not be read from the new program's memory."""

OOM_VICTIM = 1 << 10
"""``JALKI_PROC_OOM_VICTIM`` (exit): ``signal->oom_mm`` was set: the OOM killer chose this process."""

GROUP_EXIT = 1 << 11
"""``JALKI_PROC_GROUP_EXIT`` (exit): the status is ``signal->group_exit_code`` (exit_group, fatal signal)."""

NO_PARENT = 1 << 12
"""``JALKI_PROC_NO_PARENT``: the parent could not be read; ppid and parent comm are unknown."""

FILENAME_MAX = 256
"""``JALKI_PROC_FILENAME_MAX``: bytes of the executed file name kept, with the NUL."""

ARGV_MAX = 256
"""``JALKI_PROC_ARGV_MAX``: bytes of argv kept."""

EXEC = RecordLayout.with_header(
    c_struct="process_exec_event",
    fmt=f"IIII16s{FILENAME_MAX}s{ARGV_MAX}s",
    fields=("ppid", "old_pid", "argv_len", "argv_full_len", "parent_comm",
            "filename", "argv"),
    c_size=584,
)

EXIT = RecordLayout.with_header(
    c_struct="process_exit_event",
    fmt="IIQII16s",
    fields=("ppid", "status", "runtime_ns", "tid", "nr_threads_seen", "parent_comm"),
    c_size=80,
)
