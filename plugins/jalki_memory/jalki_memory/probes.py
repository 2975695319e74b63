"""The jalki-memory probe: OOM kills."""

from __future__ import annotations

import resource
from typing import Any

from jalki_core.events import OWNER_KNOWN, Event, EventContext, kernel_comm
from jalki_core.probe import AttachRung, Probe
from jalki_memory import layouts

"""The JSON Schema of the memory events, beyond the core envelope."""
_FIGURES = ("total_vm", "anon_rss", "file_rss", "shmem_rss")


def memcg_path(depth: int, names: bytes, *, truncated: bool = False) -> str:
    """The memory cgroup's path from its names (leaf first, ``MEMCG_NAME`` bytes each)."""
    size = layouts.MEMCG_NAME
    parts = [kernel_comm(names[i * size:(i + 1) * size]) for i in range(min(depth, layouts.MEMCG_DEPTH))]
    path = "/" + "/".join(reversed(parts))
    return "/..." + path if truncated else path


class OomKillProbe(Probe):
    """One event per process the kernel's OOM killer chooses (``oom:mark_victim``).

    ``process_data`` is the victim; ``data`` has its memory cgroup
    (``memcg_path``, ``memcg_id``), its memory footprint in bytes when the
    kernel chose it (``total_vm_bytes``, ``anon_rss_bytes``, ``file_rss_bytes``,
    ``shmem_rss_bytes``, ``pgtables_bytes``: null where the kernel's record has
    none, before Linux 6.8), ``oom_score_adj``, ``uid`` and the task whose
    allocation invoked the OOM killer (``trigger_pid``, ``trigger_command``).

    :param page_size: bytes per page for figures read in pages (the tp_btf
        rung); default: this machine's page size, the running kernel's.
    """

    name = "oom_kill"
    observes = "oom:mark_victim"
    event_types = ("kernel.memory.oom_kill",)
    bpf_object = "bpf/oom_kill.bpf.o"
    event_schema = "events.schema.json"
    layout = layouts.OOM_KILL
    ladder = (
        AttachRung("tp_btf", ("tpbtf_oom_mark_victim",), "tp_btf/mark_victim (victim task and mm)"),
        AttachRung("tracepoint", ("tp_oom_mark_victim",), "tracepoint/oom/mark_victim (record via BTF)"),
    )

    def __init__(self, page_size: int | None = None) -> None:
        self.page_size = page_size or resource.getpagesize()

    def _figures(self, flags: int, record: tuple[Any, ...]) -> dict[str, int | None]:
        values = dict(zip((*_FIGURES, "pgtables"), record[5:10], strict=True))
        if flags & layouts.FIGURES_ABSENT:
            return {f"{name}_bytes": None for name in values}
        if flags & layouts.FIGURES_KB:
            return {f"{name}_bytes": value * 1024 for name, value in values.items()}
        figures: dict[str, int | None] = {f"{name}_bytes": values[name] * self.page_size for name in _FIGURES}
        figures["pgtables_bytes"] = values["pgtables"]  # mm->pgtables_bytes is bytes already
        return figures

    def decode(self, batch: bytes, ctx: EventContext) -> list[Event]:
        events = []
        for record in self.layout.struct.iter_unpack(batch):
            _ts, _cgroup_id, pid, flags, comm = record[:5]
            memcg_id, uid, score_adj, trigger_pid, depth, trigger_comm, names = record[10:17]
            victim_known = bool(flags & OWNER_KNOWN)  # here: the header's cgroup id is the victim's
            event = ctx.from_header("kernel.memory.oom_kill", record, severity="critical")
            # the victim's pid (and comm, where the kernel's record has it) are known on every rung
            event["process_data"].update(pid=pid, command=kernel_comm(comm) or None)
            data: dict[str, Any] = self._figures(flags, record)
            if victim_known and not flags & layouts.NO_MEMCG:
                data["memcg_path"] = memcg_path(depth, names, truncated=bool(flags & layouts.MEMCG_TRUNCATED))
                data["memcg_id"] = memcg_id
            else:
                data["memcg_path"] = None
                data["memcg_id"] = None
            known = bool(flags & layouts.SCORE_ADJ_KNOWN)
            data["oom_score_adj"] = score_adj if known else None
            data["uid"] = uid if known else None
            data["trigger_pid"] = trigger_pid
            data["trigger_command"] = kernel_comm(trigger_comm)
            event["data"] = data
            events.append(event)
        return events
