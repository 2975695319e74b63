"""The two jalki-process probes: program starts (exec) and process exits."""

from __future__ import annotations

from typing import Any

from jalki_core.events import Event, EventContext, kernel_comm
from jalki_core.probe import AttachRung, Probe
from jalki_process import layouts
from jalki_process.signals import decode_wait_status, signal_name

"""The JSON Schema of the process events, beyond the core envelope."""


def _parent(flags: int, ppid: int, parent_comm: bytes) -> dict[str, Any]:
    """``data.ppid`` and ``data.parent_command`` (null when the kernel could not read the parent)."""
    if flags & layouts.NO_PARENT:
        return {"ppid": None, "parent_command": None}
    return {"ppid": ppid, "parent_command": kernel_comm(parent_comm)}


def split_argv(raw: bytes) -> list[str]:
    """The arguments of a NUL-separated argv block (the last one may be cut)."""
    if not raw:
        return []
    if raw.endswith(b"\0"):
        raw = raw[:-1]
    return [arg.decode("utf-8", "replace") for arg in raw.split(b"\0")]


class ProcessExecProbe(Probe):
    """One event per program started with execve(): pid, parent, file and arguments.

    ``data.argv`` holds at most 256 bytes of arguments, read from the new
    program's memory (``mm->arg_start`` … ``mm->arg_end``); when the
    arguments are longer, the last one kept is cut and
    ``data.argv_truncated`` is true (``data.argv_bytes`` is the full size).
    ``data.argv`` is null when the memory could not be read.
    """

    name = "process_exec"
    observes = "sched:sched_process_exec"
    event_types = ("kernel.process.exec",)
    bpf_object = "bpf/process_exec.bpf.o"
    event_schema = "events.schema.json"
    layout = layouts.EXEC
    ladder = (
        AttachRung("tp_btf", ("tpbtf_process_exec",), "tp_btf/sched_process_exec"),
        AttachRung("tracepoint", ("tp_process_exec",), "tracepoint/sched/sched_process_exec"),
    )

    def decode(self, batch: bytes, ctx: EventContext) -> list[Event]:
        events = []
        for record in self.layout.struct.iter_unpack(batch):
            flags = record[3]
            ppid, old_pid, argv_len, argv_full_len, parent_comm, filename, argv = record[5:12]
            event = ctx.from_header("kernel.process.exec", record, severity="info")
            data: dict[str, Any] = _parent(flags, ppid, parent_comm)
            data["filename"] = filename.split(b"\0", 1)[0].decode("utf-8", "replace")
            if flags & layouts.ARGV_UNREADABLE:
                data["argv"] = None
            else:
                data["argv"] = split_argv(argv[:min(argv_len, layouts.ARGV_MAX)])
            data["argv_truncated"] = bool(flags & layouts.ARGV_TRUNCATED)
            data["argv_bytes"] = argv_full_len
            if old_pid != record[2]:
                # a non-leader thread called execve(): the kernel gave it the leader's pid
                data["exec_tid"] = old_pid
            event["data"] = data
            events.append(event)
        return events


class ProcessExitProbe(Probe):
    """One event per process that ended (its last thread), with the status its parent sees.

    ``data.exit_code`` is the shell's ``$?``: the value passed to exit() (0–255),
    or 128 + N when signal N killed the process (137 = SIGKILL), whose kernel
    name is ``data.signal`` (null for a normal exit). Severity: ``error`` for a
    signal death, ``warning`` for a non-zero exit, else ``info``.
    ``data.oom_killed`` is true when the kernel's OOM killer chose the process
    (``signal->oom_mm`` set by ``mark_oom_victim``).
    """

    name = "process_exit"
    observes = "sched:sched_process_exit"
    event_types = ("kernel.process.exit",)
    bpf_object = "bpf/process_exit.bpf.o"
    event_schema = "events.schema.json"
    layout = layouts.EXIT
    ladder = (
        AttachRung("tp_btf", ("tpbtf_process_exit",), "tp_btf/sched_process_exit (group_dead argument)"),
        AttachRung("tracepoint", ("tp_process_exit",), "tracepoint/sched/sched_process_exit"),
    )

    def decode(self, batch: bytes, ctx: EventContext) -> list[Event]:
        events = []
        for record in self.layout.struct.iter_unpack(batch):
            flags = record[3]
            ppid, status, runtime_ns, _tid, _reserved, parent_comm = record[5:11]
            exit_code, signo, core_dumped = decode_wait_status(status)
            if signo is not None:
                severity = "error"
            elif exit_code != 0:
                severity = "warning"
            else:
                severity = "info"
            event = ctx.from_header("kernel.process.exit", record, severity=severity)
            data: dict[str, Any] = {
                "exit_code": exit_code,
                "signal": signal_name(signo) if signo is not None else None,
                "core_dumped": core_dumped,
                "abnormal": signo is not None or exit_code != 0,
                "oom_killed": bool(flags & layouts.OOM_VICTIM),
                "runtime_ns": runtime_ns,
            }
            data.update(_parent(flags, ppid, parent_comm))
            event["data"] = data
            events.append(event)
        return events
