"""jalki-process's KB entries: implemented by the installed probes, fields real, meanings right (no root)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jalki_process import layouts
from jalki_process.probes import ProcessExecProbe, ProcessExitProbe

from jalki_core.events import OWNER_KNOWN, Event
from jalki_core.kb import default_kb, evaluate
from jalki_core.kb.conditions import get_path
from jalki_core.plugins import JalkiPlugins
from jalki_core.probe import Probe
from jalki_core.testing import FakeRingBuffer, decode_all, make_event_context

KB = default_kb()
REPO = Path(__file__).resolve().parents[3]
PROC = {"pid": 77, "comm": b"java", "cgroup_id": 5, "ppid": 1, "parent_comm": b"containerd-shim"}


def decoded(probe: Probe, **values: Any) -> Event:
    ring = FakeRingBuffer(probe.layout)
    ring.push_values(**{"ts_ns": 1, **PROC, **values})
    [event] = decode_all(probe, ring, make_event_context(probe.name, "tp_btf"))
    return event


def exit_event(status: int, flags: int = OWNER_KNOWN | layouts.GROUP_EXIT) -> Event:
    return decoded(ProcessExitProbe(), status=status, flags=flags, runtime_ns=10)


def test_entries_are_this_plugins_and_unique() -> None:
    plugins = JalkiPlugins()
    for entry_id, probe_name in (("process_exit", "process_exit"), ("process_exec", "process_exec")):
        entry = KB.get(entry_id)
        assert entry is not None and entry.implemented_by is not None
        assert (entry.implemented_by.plugin, entry.implemented_by.probe) == ("process", probe_name)
        registered = plugins.probes.get(probe_name)
        assert registered is not None and registered.owner.plugin == "process"
        assert entry.event_type in registered.probe.event_types
        assert entry.attach == tuple(rung.name for rung in registered.probe.ladder)
        assert entry.source == "plugin process (jalki-process 0.1.0): kb/process.json"
    core = json.loads((REPO / "kb" / "process.planned.json").read_text())
    assert {"process_exit", "process_exec"}.isdisjoint(e["id"] for e in core["entries"])
    assert not KB.problems


def test_entry_fields_are_real_event_paths() -> None:
    events = {"process_exit": exit_event(9),
              "process_exec": decoded(ProcessExecProbe(), flags=OWNER_KNOWN, filename=b"/bin/true",
                                      argv=b"true\0", argv_len=5, argv_full_len=5)}
    for entry_id, event in events.items():
        entry = KB.get(entry_id)
        assert entry is not None
        for spec in entry.fields:
            assert get_path(event, spec.name) is not None, (entry_id, spec.name)


def test_exit_137_by_the_oom_killer_says_so() -> None:
    [finding] = evaluate([exit_event(9, OWNER_KNOWN | layouts.GROUP_EXIT | layouts.OOM_VICTIM)], KB)
    assert (finding.interpretation_id, finding.severity) == ("exit_oom_killed", "critical")
    assert "killed by the OOM killer" in finding.conclusion


def test_plain_sigkill_keeps_its_meaning() -> None:
    [finding] = evaluate([exit_event(9)], KB)
    assert (finding.interpretation_id, finding.severity) == ("exit_sigkill", "error")
    assert "exit status 137" in finding.conclusion and "OOM killer" in finding.conclusion


def test_status_3_is_a_failure_status_and_clean_exit_nothing() -> None:
    [finding] = evaluate([exit_event(3 << 8)], KB)
    assert finding.interpretation_id == "exit_failure_status"
    assert evaluate([exit_event(0, OWNER_KNOWN)], KB) == []
