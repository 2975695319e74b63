"""jalki-example on the real kernel: threads made to wait for a busy CPU are reported, on both rungs.

Three busy loops and a sleeper (at nice 19, so that its wakeups never
preempt the busy loops) share one CPU: the busy loops wait whenever another
one is running (cause ``preemption``), the sleeper after each wakeup (cause
``wakeup``). Needs root and a BTF kernel.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from jalki_example import RunqSlowProbe

from jalki_core.events import Event
from jalki_core.session import TraceSession
from jalki_core.testing import MemoryEmitter, event_validator

pytestmark = pytest.mark.kernel
THRESHOLD_NS = 1_000_000

# A child pins itself to the CPU, names itself, says it is ready, then works until killed.
CHILD = """
import os, sys, time
os.sched_setaffinity(0, {int(sys.argv[1])})
with open("/proc/self/comm", "w") as comm:
    comm.write(sys.argv[2])
if sys.argv[2] == "jx-sleeper":
    os.nice(19)
print("ready", flush=True)
while True:
    if sys.argv[2] == "jx-sleeper":
        time.sleep(0.002)
"""


def own_cgroup_id() -> int:
    """This process's cgroup v2 id: the inode of its directory in the unified hierarchy."""
    path = next(line.split("::", 1)[1].strip() for line in Path("/proc/self/cgroup").read_text().splitlines()
                if line.startswith("0::"))
    mounts = [line.split(" - ")[0].split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
              if line.split(" - ")[1].startswith("cgroup2 ")]
    return Path(mounts[0] + path).stat().st_ino


@contextmanager
def busy_cpu(cpu: int) -> Iterator[dict[str, list[int]]]:
    """Three busy loops and a nice-19 sleeper on ``cpu``; their pids by command."""
    names = ["jx-hog", "jx-hog", "jx-hog", "jx-sleeper"]
    children = [subprocess.Popen([sys.executable, "-c", CHILD, str(cpu), name], stdout=subprocess.PIPE, text=True)
                for name in names]
    try:
        for child in children:
            assert child.stdout is not None and child.stdout.readline() == "ready\n"
        pids: dict[str, list[int]] = {}
        for name, child in zip(names, children, strict=True):
            pids.setdefault(name, []).append(child.pid)
        yield pids
    finally:
        for child in children:
            child.kill()
            child.wait()


def trace(probe: RunqSlowProbe, seconds: float) -> tuple[list[Event], str | None]:
    """Run ``probe`` in a real session for ``seconds``; its events and the rung it attached on."""
    emitter = MemoryEmitter()
    session = TraceSession([probe], [emitter], strict=True)
    session.start()
    thread = threading.Thread(target=session.run, daemon=True)
    thread.start()
    time.sleep(seconds)
    session.request_stop()
    thread.join(timeout=10)
    summary = session.stop()
    return emitter.events, summary.probes[0].rung


@pytest.mark.parametrize("rung", ["tp_btf", "tracepoint"])
def test_threads_waiting_for_a_busy_cpu(rung: str) -> None:
    only = type(f"RunqSlowOn{rung}", (RunqSlowProbe,),
                {"ladder": tuple(r for r in RunqSlowProbe.ladder if r.name == rung)})
    probe = only(threshold_ns=THRESHOLD_NS)
    cpu = max(os.sched_getaffinity(0))
    with busy_cpu(cpu) as pids:
        events, attached = trace(probe, 2.0)
    assert attached == rung
    validate = event_validator([probe])
    for event in events:
        validate(event)
        assert event["attach"] == rung
        assert event["data"]["latency_ns"] >= THRESHOLD_NS  # the kernel reports only waits this long
    cgroup = own_cgroup_id()
    for command, expected_cause in (("jx-hog", "preemption"), ("jx-sleeper", "wakeup")):
        mine = [e for e in events if e["process_data"]["pid"] in pids[command]]
        assert mine, f"no wait of {command} reported"
        for event in mine:
            assert event["process_data"] == {"pid": event["data"]["tid"], "command": command, "cgroup_id": cgroup}
            assert event["data"]["cpu"] == cpu
        assert expected_cause in {e["data"]["cause"] for e in mine}
    assert {e["process_data"]["pid"] for e in events} >= set(pids["jx-hog"])
