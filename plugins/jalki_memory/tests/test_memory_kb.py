"""jalki-memory's KB entry: implemented by the installed probe, fields real, joined with process exits (no root)."""

from __future__ import annotations

import json
from pathlib import Path

from jalki_memory import layouts
from jalki_memory.probes import OomKillProbe

from jalki_core.events import OWNER_KNOWN, Event
from jalki_core.kb import default_kb, evaluate
from jalki_core.kb.conditions import get_path
from jalki_core.plugins import JalkiPlugins
from jalki_core.testing import FakeRingBuffer, decode_all, make_event_context

KB = default_kb()
REPO = Path(__file__).resolve().parents[3]


def oom_event() -> Event:
    probe = OomKillProbe(page_size=4096)
    ring = FakeRingBuffer(probe.layout)
    ring.push_values(ts_ns=1, pid=77, comm=b"java", cgroup_id=5, trigger_pid=77, trigger_comm=b"java",
                     flags=OWNER_KNOWN | layouts.SCORE_ADJ_KNOWN, anon_rss=51200, total_vm=60000,
                     file_rss=10, pgtables=4096, memcg_id=9, memcg_depth=1, memcg_names=b"app")
    [event] = decode_all(probe, ring, make_event_context(probe.name, "tp_btf"))
    return event


def test_entry_is_this_plugins() -> None:
    entry = KB.get("oom_mark_victim")
    assert entry is not None and entry.implemented_by is not None
    assert (entry.implemented_by.plugin, entry.implemented_by.probe) == ("memory", "oom_kill")
    registered = JalkiPlugins().probes.get("oom_kill")
    assert registered is not None and registered.owner.plugin == "memory"
    assert entry.event_type == "kernel.memory.oom_kill" in registered.probe.event_types
    assert entry.attach == ("tp_btf", "tracepoint")
    assert "process_exit" in entry.combine_with
    assert entry.source == "plugin memory (jalki-memory 0.1.0): kb/memory.json"
    core = json.loads((REPO / "kb" / "memory.planned.json").read_text())
    assert "oom_mark_victim" not in {e["id"] for e in core["entries"]}


def test_entry_fields_are_real_event_paths() -> None:
    event = oom_event()
    entry = KB.get("oom_mark_victim")
    assert entry is not None
    for spec in entry.fields:
        assert get_path(event, spec.name) is not None, spec.name


def test_oom_kill_is_critical() -> None:
    [finding] = evaluate([oom_event()], KB)
    assert (finding.interpretation_id, finding.severity) == ("oom_kill", "critical")
    assert "OOM killer killed this process" in finding.conclusion
