"""``jalki run --plugin tcp_connect --emit otlp:...`` against a real OTLP/HTTP receiver, driven by real kernel
events (refused connects in a network namespace): every event arrives once with its attributes; under
503/429/400/partial success/slow replies, a refusing or restarted receiver, and a drain deadline, the counts
add up exactly (received + dropped by reason = produced) and the kernel never drops a record."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from otlp_receiver import Receiver, Reply, attributes

from jalki_core.testing import start_jalki_run

pytestmark = pytest.mark.kernel

PORT = 9  # nothing listens there in a fresh namespace: every connect is refused

CONNECTS = """
import json, socket, sys, time
PORT = 9
count, gap = int(sys.argv[1]), float(sys.argv[2])
ports = []
for _ in range(count):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    ports.append(s.getsockname()[1])
    try:
        s.connect(("127.0.0.1", PORT))
    except ConnectionRefusedError:
        pass
    s.close()
    time.sleep(gap)
print(json.dumps({"pid": __import__("os").getpid(), "ports": ports}))
"""


@pytest.fixture
def netns() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    name = f"jalki-otlp-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def refused_connects(netns: str, count: int, gap: float = 0.0) -> dict[str, Any]:
    """``count`` refused connects from the namespace; their client ports and the process id."""
    result = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", CONNECTS, str(count), str(gap)],
                            capture_output=True, text=True, check=True, timeout=120)
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def start_jalki(emit: str, summary: Path, *extra: str) -> subprocess.Popen[str]:
    return start_jalki_run("--plugin", "tcp_connect", "--port", str(PORT), "--emit", emit,
                           "--summary-json", str(summary), *extra, stdout=subprocess.DEVNULL)


def stop_jalki(proc: subprocess.Popen[str], summary: Path) -> tuple[dict[str, Any], str]:
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    return json.loads(summary.read_text()), stderr


def check_accounting(summary: dict[str, Any], receiver: Receiver) -> dict[str, int]:
    """received + dropped by reason = produced, exactly; the kernel lost nothing; return the drops."""
    [probe] = summary["probes"]
    assert sum(probe["drops"].values()) == 0, probe["drops"]
    otlp = summary["emitters"]["otlp"]
    drops: dict[str, int] = otlp["dropped_by_reason"]
    received = len(receiver.records())
    assert otlp["sent"] == otlp["events_emitted"] == received
    assert received + sum(drops.values()) == probe["events"], (received, drops, probe["events"])
    assert drops["rejected"] == receiver.rejected + sum(n for status, n in receiver.requests if status == 400)
    return drops


def test_every_event_arrives_once_with_its_attributes(netns: str, tmp_path: Path) -> None:
    receiver = Receiver().start()
    summary_path = tmp_path / "summary.json"
    before = time.time_ns()
    proc = start_jalki(f"otlp:{receiver.url},batch_age=100ms", summary_path, "--cluster", "ci")
    try:
        report = refused_connects(netns, 40)
    finally:
        summary, stderr = stop_jalki(proc, summary_path)
        receiver.stop()
    after = time.time_ns()
    assert proc.returncode == 0, stderr
    records = receiver.records()
    ids = [attributes(record)["jalki.event.id"] for _, _, record in records]
    assert len(ids) == len(set(ids)) == summary["probes"][0]["events"]  # every event once
    inode = Path(f"/run/netns/{netns}").stat().st_ino  # other tests' namespaces may use the same ports
    mine = [(res, scope, record) for res, scope, record in records
            if attributes(record).get("jalki.network_data.netns") == inode
            and attributes(record).get("network.local.port") in set(report["ports"])]
    assert len(mine) == 40
    for res, scope, record in mine:
        attrs = attributes(record)
        assert res["service.name"] == "jalki" and res["k8s.cluster.name"] == "ci" and res["host.name"]
        assert scope["scope"] == "jalki/tcp_connect"
        assert record.event_name == "kernel.tcp.connect" and before <= record.time_unix_nano <= after
        assert record.severity_number == 17 and record.severity_text == "ERROR"  # a refused connect: error
        assert attrs["network.peer.address"] == "127.0.0.1" and attrs["network.peer.port"] == PORT
        assert attrs["process.pid"] == report["pid"] and attrs["process.command"].startswith("python")
        assert attrs["error.type"] == "ECONNREFUSED" and attrs["jalki.outcome"] == "failure"
        assert "ECONNREFUSED" in record.body.string_value
    check_accounting(summary, receiver)


def test_faulty_replies_are_retried_or_counted_exactly(netns: str, tmp_path: Path) -> None:
    # 503 with Retry-After, 429, a 400 (lost: rejected), a partial success rejecting 2, a slow reply, then 200s
    receiver = Receiver(script=[Reply(503, retry_after="1"), Reply(429), Reply(400), Reply(200, reject=2),
                                Reply(200, delay=1.0)]).start()
    summary_path = tmp_path / "summary.json"
    proc = start_jalki(f"otlp:{receiver.url},batch_events=10,batch_age=50ms,initial_backoff=100ms,timeout=10s",
                       summary_path)
    try:
        for _ in range(6):
            refused_connects(netns, 10)
            time.sleep(0.3)  # separate batches, so every scripted reply meets one
    finally:
        summary, _ = stop_jalki(proc, summary_path)
        receiver.stop()
    assert [status for status, _ in receiver.requests[:5]] == [503, 429, 400, 200, 200]
    assert receiver.requests[0][1] == receiver.requests[1][1] == receiver.requests[2][1]  # the same batch retried
    drops = check_accounting(summary, receiver)
    assert drops["rejected"] == receiver.requests[2][1] + 2 and drops["retry_exhausted"] == 0
    assert summary["emitters"]["otlp"]["retries"] == 2
    assert proc.returncode != 0  # events were lost: the run says so


def test_refused_connection_exhausts_retries_and_never_stalls_the_drain(netns: str, tmp_path: Path) -> None:
    receiver = Receiver().start()
    receiver.stop()  # nobody listens on that port now: every send is refused
    summary_path = tmp_path / "summary.json"
    proc = start_jalki(f"otlp:{receiver.url},batch_age=50ms,max_attempts=3,initial_backoff=50ms", summary_path)
    try:
        refused_connects(netns, 300, gap=0.005)
    finally:
        summary, stderr = stop_jalki(proc, summary_path)
    drops = check_accounting(summary, receiver)
    assert drops["retry_exhausted"] + drops["shutdown"] == summary["probes"][0]["events"] >= 300
    assert "retry_exhausted" in stderr


def test_receiver_killed_and_restarted_mid_run(netns: str, tmp_path: Path) -> None:
    receiver = Receiver().start()
    summary_path = tmp_path / "summary.json"
    proc = start_jalki(f"otlp:{receiver.url},batch_age=50ms,initial_backoff=100ms,max_backoff=500ms,"
                       "max_elapsed=60s,max_attempts=1000", summary_path)
    try:
        refused_connects(netns, 100, gap=0.005)
        receiver.stop()  # down: connections refused while events keep coming at a moderate rate
        refused_connects(netns, 400, gap=0.005)
        receiver.start()  # back on the same port
        refused_connects(netns, 100, gap=0.005)
    finally:
        summary, _ = stop_jalki(proc, summary_path)
        receiver.stop()
    drops = check_accounting(summary, receiver)
    assert sum(drops.values()) == 0 and summary["emitters"]["otlp"]["retries"] > 0
    ids = [attributes(record)["jalki.event.id"] for _, _, record in receiver.records()]
    assert len(ids) == len(set(ids)) == summary["probes"][0]["events"] >= 600


def test_drain_deadline_counts_what_is_left_as_shutdown(netns: str, tmp_path: Path) -> None:
    receiver = Receiver(script=[Reply(503)] * 10_000).start()
    summary_path = tmp_path / "summary.json"
    proc = start_jalki(f"otlp:{receiver.url},batch_age=50ms,max_elapsed=600s,max_attempts=1000,"
                       "initial_backoff=100ms", summary_path, "--emit-drain-seconds", "1")
    try:
        refused_connects(netns, 50)
    finally:
        summary, stderr = stop_jalki(proc, summary_path)
        receiver.stop()
    drops = check_accounting(summary, receiver)
    assert drops["shutdown"] == summary["probes"][0]["events"] >= 50
    assert "shutdown=" in stderr
