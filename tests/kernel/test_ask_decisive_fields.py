"""`jalki ask` names what decided a finding: the signal, errno, destination and command, from real failures.

A real program (``crashy-<8 hex digits>``, compiled here) dies of a real
SIGSEGV 40 times while a real `jalki ask --json` observes, in this process's
stead and through a real daemon; refused connects come from a network
namespace. The answers must name SIGSEGV, the exit status and the command, with
the 40 short-lived processes grouped as one command, and ECONNREFUSED with the
port and process.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from daemon_helpers import running_daemon, wait_for
from netns_helpers import NetNs
from test_ask_scenarios import ASK_SCHEMA, asking, top_finding

pytestmark = pytest.mark.kernel

CRASHES = 40
"""Enough that crashy is the biggest crash loop even while other tests' programs fail on this machine."""
CRASHY_C = "int main(void) { *(volatile int *)0 = 1; return 0; }\n"

# Runs crashy CRASHES times with core dumps allowed (in its cwd, a test directory) and reports
# each child's pid and wait status, so the test knows whether the kernel really wrote a core.
RUNNER = """
import json, os, resource, sys
resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
runs = []
for _ in range(int(sys.argv[2])):
    pid = os.posix_spawn(sys.argv[1], [sys.argv[1]], os.environ)
    runs.append({"pid": pid, "status": os.waitpid(pid, 0)[1]})
print(json.dumps(runs))
"""


@pytest.fixture
def crashy(tmp_path: Path) -> Path:
    """A real program that dies of SIGSEGV (a store to address 0), named ``crashy-<8 hex digits>``.

    The name is this run's own: the crash questions observe the whole host and group crashes by command
    name, and another run of these tests on the machine at the same moment (another checkout, a CI clone)
    crashes its own copy 40 times; under one shared name both runs' crashes were one group of 80
    (seen: "from crashy (80 processes)"). 15 characters: the kernel's whole comm (TASK_COMM_LEN - 1).
    """
    compiler = shutil.which("cc") or shutil.which("clang")
    if compiler is None:
        pytest.skip("no C compiler to build the crashing program")
    source = tmp_path / "crashy.c"
    source.write_text(CRASHY_C)
    binary = tmp_path / f"crashy-{secrets.token_hex(4)}"
    subprocess.run([compiler, "-O0", "-o", str(binary), str(source)], check=True, timeout=60)
    return binary


def crash_loop(binary: Path) -> list[dict[str, int]]:
    """Run ``binary`` :data:`CRASHES` times; each run's pid and wait status."""
    result = subprocess.run([sys.executable, "-c", RUNNER, str(binary), str(CRASHES)], cwd=binary.parent,
                            capture_output=True, text=True, timeout=60, check=True)
    runs: list[dict[str, int]] = json.loads(result.stdout)
    assert [os.WTERMSIG(run["status"]) for run in runs if os.WIFSIGNALED(run["status"])] == [11] * CRASHES
    return runs


SEVERITIES = ("info", "warning", "error", "critical")


def check_crash_answer(answer: dict[str, Any], binary: Path, runs: list[dict[str, int]]) -> None:
    """The top finding names SIGSEGV, exit 139, the core (when the kernel wrote one) and crashy, grouped."""
    command = binary.name
    pids = {run["pid"] for run in runs}
    cored = all(os.WCOREDUMP(run["status"]) for run in runs)
    mine = {"command": command, "events": CRASHES, "processes": CRASHES, "pids": sorted(pids)[:8]}
    top_finding(answer)
    findings = answer["findings"]
    # The crash is the top finding, unless the ranking rule (most severe, then most events) puts another
    # program's failure on this machine above it: another test's OOM kill (critical), or more failures
    # of another kind in these 4 s than the 40 crashes.
    rank = next(i for i, f in enumerate(findings) if f["interpretation"] in ("crash_loop", "exit_crashed"))
    top = findings[rank]
    for above in findings[:rank]:
        assert (SEVERITIES.index(above["severity"]), above["events"]) >= (SEVERITIES.index("error"), top["events"]), \
            [(f["interpretation"], f["severity"], f["events"]) for f in findings]
    assert top["severity"] == "error" and answer["problem_found"] is True
    assert "data.signal" in top["decisive_fields"] and "data.exit_code" in top["decisive_fields"]
    both = {f["interpretation"]: f for f in findings}
    loop, crashed = both["crash_loop"], both["exit_crashed"]
    # crash_loop groups by command: crashy's group holds exactly the crashes made here
    [group] = [g for g in loop["evidence"] if g["group"] == {"process_data.command": command}]
    assert group["commands"] == [mine]
    # exit_crashed has one group, every crash: crashy's are among them, as one command
    assert mine in crashed["evidence"][0]["commands"]
    assert group["processes"] and not group["unattributed"]
    fields = {summary["field"]: summary["values"] for summary in group["fields"]}
    assert fields["data.signal"] == [{"value": "SIGSEGV", "events": CRASHES}]
    assert fields["data.exit_code"] == [{"value": 139, "events": CRASHES}]
    assert fields["data.core_dumped"] == [{"value": cored, "events": CRASHES}]
    # Each phrase names its finding's biggest group (crash_loop) or command (exit_crashed), ties in name
    # order: crashy, unless another program failed at least as often in these 4 s (this same test run at
    # the same moment from another checkout); then the phrase names that one, as the rule says.
    names = "SIGSEGV (exit 139, core dumped)" if cored else "SIGSEGV (exit 139)"
    mine_phrase = f"from {command} ({CRASHES} processes)"
    for finding, head in ((loop, names), (crashed, "SIGSEGV")):
        first = finding["evidence"][0]["commands"][0]
        if first != mine:
            assert first["events"] >= CRASHES, finding
            assert f"from {first['command']} ({first['processes']} processes)" in finding["detail"], finding
            continue
        # Other programs may crash at the same moment, fewer times: exit_crashed (one group, every
        # crash) then names them too ("SIGSEGV ×40/SIGABRT ×1 … and 1 more command").
        assert finding["detail"].startswith(head) and mine_phrase in finding["detail"], finding
        if finding is top and rank == 0:
            assert mine_phrase in answer["answer"] and "SIGSEGV" in answer["answer"], answer["answer"]


def test_crash_loop_names_the_signal_and_the_command(crashy: Path) -> None:
    with asking("why does my app keep crashing?", seconds=4) as running:
        runs = crash_loop(crashy)
        answer = running.answer()
    check_crash_answer(answer, crashy, runs)


def test_crash_loop_through_the_daemon_has_the_same_shape(crashy: Path, tmp_path: Path) -> None:
    from jalki_core.ask.engine import _relevant, _select
    from jalki_core.kb import default_kb, find
    from jalki_core.plugins import JalkiPlugins

    question = "why does my app keep crashing?"
    kb = default_kb()
    needed = set(_select(_relevant(find(question, kb)), kb, JalkiPlugins())[1])
    with running_daemon(tmp_path) as daemon, daemon.client() as client:
        ask = daemon.popen("ask", "--json", "--seconds", "4", question)
        wait_for(lambda: set(client.status()["probes"]) == needed, timeout=15, what=f"ask to deploy {needed}")
        runs = crash_loop(crashy)
        stdout, stderr = ask.communicate(timeout=60)
    assert ask.returncode == 0, stderr
    answer = json.loads(stdout)
    assert answer["via"] == "daemon"
    jsonschema.validate(answer, ASK_SCHEMA)
    check_crash_answer(answer, crashy, runs)


def test_refused_connects_name_the_errno_port_and_process(netns: NetNs) -> None:
    port = 15437
    # --port (a kernel-side filter): other tests' refused connects on this machine stay out of the answer
    with asking("why are connections to my database failing", 4, "--port", str(port)) as running:
        report = netns.traffic("connect", "--port", str(port), "--count", "12", "--timeout", "2")
        answer = running.answer()
    assert [r["error"] for r in report["results"]] == ["ECONNREFUSED"] * 12
    top = top_finding(answer)
    assert top["interpretation"] == "connect_refused"
    command = Path(sys.executable).name[:15]
    expected = f"ECONNREFUSED to 127.0.0.1:{port}"
    assert top["detail"].startswith(expected), top["detail"]
    assert f"from {command} (pid {report['pid']})" in top["detail"]
    assert f"tcp_connect events: {expected}" in answer["answer"], answer["answer"]
    group = top["evidence"][0]
    assert {"command": command, "events": 12, "processes": 1, "pids": [report["pid"]]} in group["commands"]
    errno = next(summary for summary in group["fields"] if summary["field"] == "error.code")
    assert errno["values"][0]["value"] == "ECONNREFUSED"
