"""`jalki ask` on the real kernel: real failures in a network namespace, the right answer on top.

Each test starts the real CLI (`jalki ask --json`), waits until it says it is
observing (its probes are attached), makes the traffic of one failure in a
fresh namespace, and checks the answer: the top finding names the real cause,
the destination and the process that made the traffic. Healthy traffic must
produce no error or critical finding.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from netns_helpers import NetNs
from tcp_helpers import drop_input_rule

pytestmark = pytest.mark.kernel

JALKI = Path(sys.executable).with_name("jalki")
ASK_SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "specs" / "ask.schema.json").read_text())


class RunningAsk:
    """A `jalki ask --json` subprocess; :meth:`answer` waits for it and parses its JSON."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.stderr: list[str] = []

    def answer(self, timeout: float = 60) -> dict[str, Any]:
        out, err = self.proc.communicate(timeout=timeout)
        self.stderr.append(err)
        assert self.proc.returncode == 0, "".join(self.stderr)
        result: dict[str, Any] = json.loads(out)
        jsonschema.validate(result, ASK_SCHEMA)
        return result


@contextmanager
def asking(question: str, seconds: float, *options: str) -> Iterator[RunningAsk]:
    """Start `jalki ask` (with ``options``); enter the body once its probes are attached (it prints "observing").

    Each scenario passes ``--port`` of its own traffic: the kernel observes the whole host, and a refused or
    lossy connection elsewhere on a shared machine is not this scenario's evidence.
    """
    # --in-process: the answer must not depend on whether a daemon happens to serve the default socket
    proc = subprocess.Popen([str(JALKI), "ask", "--json", "--in-process", "--seconds", str(seconds), *options,
                             question],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    running = RunningAsk(proc)
    assert proc.stderr is not None
    ready = threading.Event()

    def watch_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            running.stderr.append(line)
            if line.startswith("observing"):
                ready.set()
                return

    watcher = threading.Thread(target=watch_stderr, daemon=True)
    watcher.start()
    try:
        assert ready.wait(30), f"jalki ask never started observing: {''.join(running.stderr)}"
        watcher.join()
        yield running
    finally:
        if proc.poll() is None and sys.exc_info()[0] is not None:
            proc.kill()
            proc.wait()


def top_finding(answer: dict[str, Any]) -> dict[str, Any]:
    assert answer["mode"] == "observed", answer["answer"]
    assert answer["findings"], answer["answer"]
    top: dict[str, Any] = answer["findings"][0]
    return top


def evidence_of(finding: dict[str, Any]) -> tuple[set[str], set[int]]:
    destinations = {d["address"] for group in finding["evidence"] for d in group["destinations"]}
    pids = {p["pid"] for group in finding["evidence"] for p in group["processes"]}
    return destinations, pids


def test_refused_connects_name_nothing_listening_with_destination_and_process(netns: NetNs) -> None:
    port = 15432
    with asking("why are connections to my database failing", 4, "--port", str(port)) as running:
        report = netns.traffic("connect", "--port", str(port), "--count", "12", "--timeout", "2")
        answer = running.answer()
    assert [r["error"] for r in report["results"]] == ["ECONNREFUSED"] * 12
    top = top_finding(answer)
    assert (top["interpretation"], top["severity"], top["errno"]) == ("connect_refused", "error", "ECONNREFUSED")
    assert "not a network problem" in top["conclusion"]
    destinations, pids = evidence_of(top)
    assert f"127.0.0.1:{port}" in destinations
    assert report["pid"] in pids
    group = top["evidence"][0]
    assert group["events"] >= 12
    assert any(p["pid"] == report["pid"] and p["events"] == 12 and p["command"] == Path(sys.executable).name[:15]
               for p in group["processes"])
    assert answer["problem_found"] is True
    assert answer["answer"].startswith("ERROR: Nothing is listening") and f"127.0.0.1:{port}" in answer["answer"]
    assert {p["probe"]: p["attach"] for p in answer["probes"]}["tcp_connect"] is not None


def test_syn_dropped_connects_name_the_unanswered_handshake(netns: NetNs) -> None:
    port = 15433
    netns.sysctl("net.ipv4.tcp_syn_retries", "1")  # the kernel gives up after ~3 s instead of ~2 min
    netns.nft(drop_input_rule(f"tcp dport {port}"))
    with asking("why do connections to my database time out", 6, "--port", str(port)) as running:
        with ThreadPoolExecutor(3) as pool:  # three handshakes at once, all inside the window
            reports = list(pool.map(lambda _: netns.traffic("connect", "--port", str(port), "--count", "1",
                                                            "--timeout", "10"), range(3)))
        answer = running.answer()
    pids = {report["pid"] for report in reports}
    assert [report["results"][0]["error"] for report in reports] == ["ETIMEDOUT"] * 3
    top = top_finding(answer)
    assert top["interpretation"] in {"connect_timed_out", "retransmit_syn_repeated"}, top
    assert top["severity"] == "error"
    by_rule = {finding["interpretation"]: finding for finding in answer["findings"]}
    timed_out = by_rule["connect_timed_out"]
    assert timed_out["errno"] == "ETIMEDOUT" and "not answering" in timed_out["conclusion"]
    assert timed_out["events"] == 3
    destinations, finding_pids = evidence_of(timed_out)
    assert destinations == {f"127.0.0.1:{port}"} and finding_pids == pids
    syn = by_rule["retransmit_syn_repeated"]
    assert syn["tcp_state"] == "SYN_SENT" and syn["evidence"][0]["group"] == {
        "network_data.dst_ip": "127.0.0.1", "network_data.dst_port": port}
    assert evidence_of(syn)[1] <= pids
    assert not any(f["interpretation"] == "connect_refused" for f in answer["findings"])


def test_loss_on_established_connections_names_the_path_not_the_application(netns: NetNs, tmp_path: Path) -> None:
    server = netns.server("--port", "15434")
    go_file = tmp_path / "go"
    senders = [netns.spawn("lossy-sender", "--port", str(server["port"]), "--go-file", str(go_file),
                           "--send", "20000", "--linger", "8") for _ in range(5)]
    netns.nft(drop_input_rule(f"tcp dport {server['port']}"))
    with asking("why is my database slow", 6, "--port", str(server["port"])) as running:
        go_file.touch()
        answer = running.answer()
    top = top_finding(answer)
    assert top["interpretation"] == "retransmit_established_severe", [f["interpretation"] for f in answer["findings"]]
    assert top["tcp_state"] == "ESTABLISHED" and top["severity"] == "error"
    assert "packet loss on the path" in top["conclusion"] and "application is not the cause" in top["conclusion"]
    destinations, pids = evidence_of(top)
    assert destinations == {f"127.0.0.1:{server['port']}"}
    assert pids and pids <= {report["pid"] for _, report in senders}
    assert top["events"] >= 20


def test_healthy_traffic_reports_no_problem(netns: NetNs) -> None:
    server = netns.server("--port", "15435", "--reply", "2000")
    with asking("why are connections to my database failing", 3, "--port", str(server["port"])) as running:
        reports = [netns.traffic("client", "--port", str(server["port"]), "--send", "1000") for _ in range(5)]
        answer = running.answer()
    assert all(report["received"] == 2000 for report in reports)
    assert answer["mode"] == "observed"
    assert answer["problem_found"] is False
    assert not [f for f in answer["findings"] if f["severity"] in ("error", "critical")]
    assert answer["events"]["by_type"].get("kernel.tcp.connect", 0) >= 5
    assert not answer["findings"] or answer["answer"].split(":")[0] in ("INFO", "WARNING")
    if not answer["findings"]:
        assert answer["answer"].startswith("No problem found")
