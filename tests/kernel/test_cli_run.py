"""`jalki run` as a user runs it: a real subprocess, real traffic, a file emitter, SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest
from netns_helpers import NetNs

from jalki_core.testing import event_validator, start_jalki_run

pytestmark = pytest.mark.kernel



def start_jalki(*args: str) -> subprocess.Popen[str]:
    return start_jalki_run(*args, timeout=30)


def test_run_streams_file_events_and_flushes_on_sigterm(netns: NetNs, tmp_path: Path) -> None:
    out = tmp_path / "events.ndjson"
    summary_path = tmp_path / "summary.json"
    proc = start_jalki("--plugin", "tcp", "--emit", f"file:{out}", "--cluster", "ci",
                       "--summary-json", str(summary_path))
    refused = netns.traffic("connect", "--port", "9", "--count", "5")
    server = netns.server("--reply", "100")
    client = netns.traffic("client", "--port", str(server["port"]), "--send", "10")
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    validate = event_validator()
    events = [json.loads(line) for line in out.read_text().splitlines()]
    for event in events:
        validate(event)
    mine = [e for e in events if e["network_data"]["netns"] == netns.inode]
    refused_ports = {r["sport"] for r in refused["results"]}
    refusals = [e for e in mine if e["type"] == "kernel.tcp.connect" and e["network_data"]["src_port"] in refused_ports]
    assert len(refusals) == 5 and {e["error"]["code"] for e in refusals} == {"ECONNREFUSED"}
    assert all(e["cluster"] == "ci" for e in mine)
    [ok] = [e for e in mine if e["type"] == "kernel.tcp.connect" and e["network_data"]["src_port"] == client["sport"]]
    assert ok["outcome"] == "success"
    closes = [e for e in mine if e["type"] == "kernel.tcp.close"]
    assert {e["network_data"]["src_port"] for e in closes} >= {client["sport"], server["port"]}
    # The summary on stderr names each probe and its rung; the JSON summary agrees with the file.
    for probe in ("tcp_connect", "tcp_close", "tcp_retransmit_skb"):
        assert probe in stderr
    summary = json.loads(summary_path.read_text())
    emitted = sum(p["events"] for p in summary["probes"])
    assert emitted == len(events)
    assert summary["emitters"]["file"]["events_emitted"] == len(events)
    assert summary["emitters"]["file"]["events_dropped"] == 0
    assert summary["emitters"]["file"]["drops"] == {"queue_full": 0, "sink_error": 0}
    # each probe reports the ring it was loaded with: its own default here (no --ring-mib)
    from jalki_tcp.probes import TcpCloseProbe, TcpConnectProbe

    rings = {p["probe"]: p["ring_bytes"] for p in summary["probes"]}
    assert rings["tcp_close"] == TcpCloseProbe.ring_buffer_bytes == 4 << 20
    assert rings["tcp_connect"] == TcpConnectProbe.ring_buffer_bytes == 2 << 20


def test_run_seconds_stops_by_itself_and_prints_json_to_stdout(netns: NetNs) -> None:
    proc = start_jalki("--plugin", "tcp_connect", "--seconds", "5", "--port", "9")
    report = netns.traffic("connect", "--port", "9", "--count", "3")
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    events = [json.loads(line) for line in stdout.splitlines()]
    ports = {r["sport"] for r in report["results"]}
    # connect events name both sides; a connect_failures window (port 9 refused five times, e.g. by another
    # run on this host) names only the remote side it groups by
    mine = [e for e in events if e["type"] == "kernel.tcp.connect" and e["network_data"]["src_port"] in ports]
    assert len(mine) == 3 and all(e["error"]["code"] == "ECONNREFUSED" for e in mine)
    assert all(e["network_data"]["dst_port"] == 9 for e in events)  # --port filtered in the kernel


def test_reader_closing_stdout_stops_jalki_with_the_loss_reported(netns: NetNs) -> None:
    proc = start_jalki("--plugin", "tcp_connect", "--port", "9")
    assert proc.stdout is not None
    netns.traffic("connect", "--port", "9")
    first = json.loads(proc.stdout.readline())  # like `jalki run | head -1`
    assert first["error"]["code"] == "ECONNREFUSED"
    proc.stdout.close()
    netns.traffic("connect", "--port", "9", "--count", "3")
    try:
        _, stderr = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("jalki kept running after its only sink went away") from None
    assert proc.returncode == 1
    assert "emitter stdout lost 3 events" in stderr and "stdout was closed by its reader" in stderr
    assert "Traceback" not in stderr
