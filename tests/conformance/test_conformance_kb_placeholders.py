"""KB-26: a plugin's entry implements a core placeholder entry instead of duplicating it.

Read from the outside: the core's placeholder file on disk, a user KB document
(``JALKI_KB_PATH``) standing in for a plugin's, ``jalki list / find / explain``
and the public ``load_kb`` / ``evaluate``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from conformance_support import KB_DIR, jalki, jalki_json, new_warnings, read_json, shipped_kb_files, write_json

from jalki_core.kb import evaluate, load_kb

QUESTION = "Is my process waiting for CPU?"


def runq_document(**overrides: Any) -> dict[str, Any]:
    placeholder = next(e for e in read_json(KB_DIR / "sched.planned.json")["entries"] if e["id"] == "sched_wakeup")
    assert placeholder["implemented_by"] is None
    entry = copy.deepcopy(placeholder)
    entry.update(id="runqslow", implemented_by={"plugin": "example", "probe": "runqslow"},
                 attach=["tp_btf", "tracepoint"], implements="sched_wakeup")
    entry["interpretations"] = [dict(rule, id=f"runqslow_{rule['id']}") for rule in entry["interpretations"]]
    entry.update(overrides)
    entry_written = {key: value for key, value in entry.items() if value is not None or key == "implemented_by"}
    return {"kb_version": 1, "layer": "sched", "entries": [entry_written]}


def test_an_implementing_entry_replaces_its_placeholder_everywhere(tmp_path: Path) -> None:
    path = write_json(tmp_path / "runqslow.json", runq_document())
    env = {"JALKI_KB_PATH": str(path)}
    result = jalki("list", "--layer", "sched", "--json", env=env)
    assert result.returncode == 0 and new_warnings(result.stderr) == [], result.stderr
    listed = {entry["id"]: entry for entry in json.loads(result.stdout)}
    assert "sched_wakeup" not in listed and listed["runqslow"]["implements"] == "sched_wakeup"
    found = [match["entry"] for match in jalki_json("find", QUESTION, env=env)["matches"]]
    assert found.count("runqslow") == 1 and "sched_wakeup" not in found
    assert jalki_json("explain", "sched_wakeup", env=env)["entry"] == "runqslow"

    events = [{"type": "kernel.sched.runq_latency", "timestamp": f"2026-11-22T10:00:0{i}.000000000Z",
               "process_data": {"pid": 7, "command": "api"}, "data": {"latency_ns": 20_000_000}} for i in range(5)]
    kb = load_kb([*shipped_kb_files(), path])
    assert [f.interpretation_id for f in evaluate(events, kb)] == ["runqslow_runq_wait_high"]
    # Without the declaration both entries load and both rules fire: two near-identical findings.
    duplicate = write_json(tmp_path / "duplicate.json", runq_document(implements=None))
    kb = load_kb([*shipped_kb_files(), duplicate])
    assert sorted(f.interpretation_id for f in evaluate(events, kb)) == ["runq_wait_high", "runqslow_runq_wait_high"]
