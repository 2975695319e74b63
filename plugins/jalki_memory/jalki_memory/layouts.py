"""Python mirror of the record defined in ``bpf/oom_events.h``.

The size is asserted here against the C header's ``_Static_assert`` value
and, at load time, against the struct size in the object's BTF.
"""

from __future__ import annotations

from jalki_core.probe import RecordLayout

FIGURES_KB = 1 << 8
"""``JALKI_MEM_FIGURES_KB``: figures are kB (the classic record); else pages, pgtables in bytes."""

FIGURES_ABSENT = 1 << 9
"""``JALKI_MEM_FIGURES_ABSENT``: the kernel's record has no memory figures (before Linux 6.8)."""

VICTIM_UNSEEN = 1 << 10
"""``JALKI_MEM_VICTIM_UNSEEN``: classic rung, the victim did not invoke the OOM killer; its cgroup is unknown."""

MEMCG_TRUNCATED = 1 << 11
"""``JALKI_MEM_MEMCG_TRUNCATED``: the memory cgroup is deeper than :data:`MEMCG_DEPTH` levels."""

NO_MEMCG = 1 << 12
"""``JALKI_MEM_NO_MEMCG``: the victim has no memory cgroup (controller not enabled)."""

SCORE_ADJ_KNOWN = 1 << 13
"""``JALKI_MEM_SCORE_ADJ_KNOWN``: ``oom_score_adj`` and ``uid`` are set."""

MEMCG_DEPTH = 8
"""``JALKI_MEM_MEMCG_DEPTH``: memory-cgroup levels kept, leaf first."""

MEMCG_NAME = 256
"""``JALKI_MEM_MEMCG_NAME``: bytes of each level's name, with the NUL (a kernfs name is at most 255)."""

OOM_KILL = RecordLayout.with_header(
    c_struct="oom_kill_event",
    fmt="QQQQQQ" + "IiII16s" + f"{MEMCG_DEPTH * MEMCG_NAME}s",
    fields=("total_vm", "anon_rss", "file_rss", "shmem_rss", "pgtables", "memcg_id",
            "uid", "oom_score_adj", "trigger_pid", "memcg_depth", "trigger_comm", "memcg_names"),
    c_size=2168,
)
