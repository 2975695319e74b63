"""jalki-process on the real kernel: real children exec and exit; every event asserted field by field.

Each test runs on the best rung (tp_btf here) and forced onto the classic
tracepoint rung.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import pytest
from jalki_process.probes import ProcessExecProbe, ProcessExitProbe
from netns_helpers import tracing
from proc_helpers import cgroup2_path, cgroup_id, own_comm
from rung_helpers import RUNGS, check_rung, on_rung

from jalki_core.events import Event
from jalki_core.probe import Probe
from jalki_core.testing import event_validator

pytestmark = pytest.mark.kernel
validate = event_validator()
SH = shutil.which("sh") or "/bin/sh"
SLEEP = shutil.which("sleep") or "/bin/sleep"
TRUE = shutil.which("true") or "/bin/true"


def of(events: list[Event], event_type: str, pid: int) -> list[Event]:
    return [e for e in events if e["type"] == event_type and e["process_data"]["pid"] == pid]


def probes_on(rung: str) -> list[Probe]:
    """process_exec and process_exit on ``rung``."""
    return [on_rung(ProcessExecProbe(), rung), on_rung(ProcessExitProbe(), rung)]


@pytest.mark.parametrize("rung", RUNGS)
def test_exit_code_3_and_its_exec(rung: str) -> None:
    probes = probes_on(rung)
    with tracing(probes) as trace:
        child = subprocess.Popen([SH, "-c", "exit 3"])
        assert child.wait() == 3
    events = trace.events()
    for event in events:
        validate(event)
    parent = {"ppid": os.getpid(), "parent_command": own_comm()}
    my_cgroup = cgroup_id(cgroup2_path())

    [exec_event] = of(events, "kernel.process.exec", child.pid)
    assert exec_event["severity"] == "info"
    assert exec_event["process_data"] == {"pid": child.pid, "command": "sh", "cgroup_id": my_cgroup}
    assert exec_event["data"] == {**parent, "filename": SH, "argv": [SH, "-c", "exit 3"],
                                  "argv_truncated": False, "argv_bytes": len(SH) + len("-c") + len("exit 3") + 3}

    [exit_event] = of(events, "kernel.process.exit", child.pid)
    assert exit_event["severity"] == "warning" and "outcome" not in exit_event
    assert exit_event["process_data"] == {"pid": child.pid, "command": "sh", "cgroup_id": my_cgroup}
    runtime = exit_event["data"].pop("runtime_ns")
    assert isinstance(runtime, int) and runtime > 0
    assert exit_event["data"] == {**parent, "exit_code": 3, "signal": None, "core_dumped": False,
                                  "abnormal": True, "oom_killed": False}
    check_rung(probes[0], rung, [exec_event])
    check_rung(probes[1], rung, [exit_event])
    assert trace.summary is not None
    for stats in trace.summary.probes:
        assert stats.kernel_drops["ringbuf_full"] == 0 and stats.kernel_drops["sampled"] == 0


@pytest.mark.parametrize("rung", RUNGS)
def test_sigkill_is_137(rung: str) -> None:
    probes = probes_on(rung)
    with tracing(probes) as trace:
        child = subprocess.Popen([SLEEP, "600"])
        child.send_signal(signal.SIGKILL)
        assert child.wait() == -signal.SIGKILL
    events = trace.events()
    [exit_event] = of(events, "kernel.process.exit", child.pid)
    validate(exit_event)
    assert exit_event["severity"] == "error"
    # Popen returns once the child's exec succeeded: it dies as sleep
    assert exit_event["process_data"]["command"] == "sleep" and exit_event["process_data"]["cgroup_id"] > 0
    exit_event["data"].pop("runtime_ns")
    assert exit_event["data"] == {"exit_code": 137, "signal": "SIGKILL", "core_dumped": False, "abnormal": True,
                                  "oom_killed": False, "ppid": os.getpid(), "parent_command": own_comm()}
    check_rung(probes[1], rung, [exit_event])


@pytest.mark.parametrize("rung", RUNGS)
def test_long_argv_is_cut_at_256_bytes(rung: str) -> None:
    args = [f"{i:02d}" + "a" * 38 for i in range(10)]  # 10 x 41 bytes with the NULs
    probes = probes_on(rung)
    with tracing(probes[:1]) as trace:
        child = subprocess.Popen([TRUE, *args])
        assert child.wait() == 0
    [event] = of(trace.events(), "kernel.process.exec", child.pid)
    validate(event)
    full = b"\0".join(a.encode() for a in [TRUE, *args]) + b"\0"
    kept = full[:256].split(b"\0")
    assert event["data"]["argv"] == [a.decode() for a in kept]
    assert event["data"]["argv_truncated"] is True and event["data"]["argv_bytes"] == len(full)
    assert event["data"]["filename"] == TRUE and event["process_data"]["command"] == "true"


THREADED_CHILD = """
import sys, threading, time
threading.Thread(target=lambda: None).start()       # a thread that ends by itself first
for _ in range(3):
    threading.Thread(target=time.sleep, args=(600,), daemon=True).start()
time.sleep(0.2)
sys.exit(4)                                           # exit_group(4): every thread exits
"""


@pytest.mark.parametrize("rung", RUNGS)
def test_multithreaded_process_gives_one_exit(rung: str) -> None:
    probes = probes_on(rung)
    with tracing(probes[1:]) as trace:
        child = subprocess.Popen([sys.executable, "-c", THREADED_CHILD])
        assert child.wait() == 4
    [event] = of(trace.events(), "kernel.process.exit", child.pid)
    validate(event)
    assert (event["data"]["exit_code"], event["data"]["signal"], event["severity"]) == (4, None, "warning")
    assert event["data"]["ppid"] == os.getpid()
