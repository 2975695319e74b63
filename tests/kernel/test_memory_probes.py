"""jalki-memory on the real kernel: a real OOM kill in a 32 MiB memory cgroup, asserted field by field.

The child joins the cgroup itself, names itself ``jalki-oom-hog`` and
allocates 1 MiB blocks until the OOM killer kills it. Runs on the best rung
(tp_btf here) and forced onto the classic tracepoint rung; the process_exit
probe runs alongside to check the victim's exit and the join.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys

import pytest
from jalki_memory.probes import OomKillProbe
from jalki_process.probes import ProcessExitProbe
from netns_helpers import tracing
from proc_helpers import memory_cgroup, memory_hog, own_comm
from rung_helpers import RUNGS, check_rung, on_rung

from jalki_core.kb import default_kb, evaluate
from jalki_core.testing import event_validator

pytestmark = pytest.mark.kernel
validate = event_validator()
LIMIT = 32 << 20
MIB = 1 << 20

HOG = memory_hog("jalki-oom-hog")


@pytest.mark.parametrize("rung", RUNGS)
def test_oom_kill_in_a_memory_cgroup(rung: str) -> None:
    oom_probe = on_rung(OomKillProbe(), rung)
    exit_probe = on_rung(ProcessExitProbe(), rung)
    with memory_cgroup(f"jalki-oom-{os.getpid()}-{rung}", LIMIT) as group:
        with tracing([oom_probe, exit_probe]) as trace:
            child = subprocess.Popen([sys.executable, "-c", HOG, *map(str, group.procs_files)])
            assert child.wait() == -9
        events = trace.events()
        expected_cgroup, expected_memcg = group.cgroup_id, group.memcg_id
    for event in events:
        validate(event)

    [oom] = [e for e in events if e["type"] == "kernel.memory.oom_kill"]
    assert oom["severity"] == "critical" and oom["source"] == "jalki/oom_kill"
    assert oom["process_data"] == {"pid": child.pid, "command": "jalki-oom-hog", "cgroup_id": expected_cgroup}
    data = oom["data"]
    assert data["memcg_path"] == group.memcg_path and data["memcg_id"] == expected_memcg
    assert (data["trigger_pid"], data["trigger_command"]) == (child.pid, "jalki-oom-hog")
    assert (data["oom_score_adj"], data["uid"]) == (0, os.getuid())
    # the hog holds most of the limit in anonymous memory when it is chosen
    assert 20 * MIB <= data["anon_rss_bytes"] <= data["total_vm_bytes"]
    # resident memory may exceed the limit by what the interpreter held before it moved in (charged elsewhere)
    assert data["anon_rss_bytes"] + data["file_rss_bytes"] + data["shmem_rss_bytes"] <= LIMIT + 32 * MIB
    assert data["shmem_rss_bytes"] == 0 and data["file_rss_bytes"] > 0 and data["pgtables_bytes"] > 0
    assert data["pgtables_bytes"] % resource.getpagesize() == 0
    check_rung(oom_probe, rung, [oom])

    [exit_event] = [e for e in events if e["type"] == "kernel.process.exit" and e["process_data"]["pid"] == child.pid]
    assert exit_event["severity"] == "error"
    assert exit_event["process_data"] == {"pid": child.pid, "command": "jalki-oom-hog", "cgroup_id": expected_cgroup}
    exit_event["data"].pop("runtime_ns")
    assert exit_event["data"] == {"exit_code": 137, "signal": "SIGKILL", "core_dumped": False, "abnormal": True,
                                  "oom_killed": True, "ppid": os.getpid(), "parent_command": own_comm()}

    # the knowledge base joins them: the exit is explained as an OOM kill
    findings = {f.interpretation_id: f for f in evaluate([oom, exit_event], default_kb())}
    assert {"oom_kill", "exit_oom_killed"} <= set(findings)
    assert "killed by the OOM killer" in findings["exit_oom_killed"].conclusion
    assert "exit_sigkill" not in findings
