"""The daemon's bounds against a real ``jalki run --serve``: requests out of range, the metrics port under
slowloris, the ring fill it reports, and the list of expired deployments.

- a deploy with ``pid`` >= 2**32 (and every other out-of-range or boolean field, a huge ``since``, a 1 MiB
  request id) is one ``bad_request`` reply; the deployment already running is untouched and delivers the
  next events;
- thousands of connections holding half-sent HTTP requests on the metrics port leave the daemon's thread
  count where it was, ``/metrics`` answers a normal client meanwhile, each closed connection is counted,
  a connection still sending after the request timeout is closed, and no traceback is written;
- the metrics port binds an IPv6 literal (``--metrics-addr [::1]:PORT``);
- ``jalki_ringbuffer_fill_ratio`` shows a backlog larger than one drain slice (128 KiB of a 1 MiB ring):
  the daemon is stopped (SIGSTOP) while the kernel writes 3,000 records, then resumed;
- ``status.expired`` keeps only the latest expired deployments, and ``expired_total`` counts every one.

Probes are deployed with a port filter on a port only this test uses, so the counts are exact.
"""

from __future__ import annotations

import contextlib
import json
import re
import resource
import signal
import socket
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest
from daemon_helpers import Daemon, running_daemon, wait_for
from netns_helpers import NetNs
from prometheus_client.parser import text_string_to_metric_families

from jalki_core.daemon.agent import EXPIRED_KEPT
from jalki_core.daemon.metrics import MAX_CONNECTIONS, REQUEST_TIMEOUT_S, SCRAPE_THREADS
from jalki_core.daemon.protocol import MAX_ID_CHARS, PROTOCOL_VERSION

pytestmark = pytest.mark.kernel

REFUSED_PORT = 29_111  # below the ephemeral range: no other connection on the machine has it as source port
CONNECT = "kernel.tcp.connect"
SLOWLORIS_CONNECTIONS = 2_000
BURST = 3_000  # tcp_connect records of 96 bytes (+8 of header): ~300 KiB of the 1 MiB ring
DRAIN_SLICE_RATIO = (128 << 10) / (1 << 20)  # the most one drain reads, over the ring's size


def raw_request(daemon: Daemon, message: dict[str, Any] | bytes) -> dict[str, Any]:
    """Send one frame on a new connection; return the one reply frame."""
    frame = message if isinstance(message, bytes) else json.dumps(message).encode()  # ints past 64 bits too
    with socket.socket(socket.AF_UNIX) as conn:
        conn.settimeout(30)
        conn.connect(str(daemon.socket))
        conn.sendall(frame + b"\n")
        with conn.makefile("rb") as stream:
            line = stream.readline()
    assert line.endswith(b"\n"), line[-200:]
    reply: dict[str, Any] = orjson.loads(line)
    return reply


def error_code(reply: dict[str, Any]) -> str:
    assert reply.get("v") == PROTOCOL_VERSION and reply.get("ok") is False, reply
    code: str = reply["error"]["code"]
    return code


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as response:
        assert response.status == 200
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def threads_of(pid: int) -> int:
    match = re.search(r"^Threads:\s+(\d+)$", Path(f"/proc/{pid}/status").read_text(), re.M)
    assert match is not None
    return int(match.group(1))


def refuse(netns: NetNs, count: int) -> None:
    report = netns.traffic("connect", "--port", str(REFUSED_PORT), "--count", str(count), "--timeout", "2",
                           timeout=240)
    assert {r["error"] for r in report["results"]} == {"ECONNREFUSED"}
    assert len(report["results"]) == count


def connect_events(daemon: Daemon) -> int:
    with daemon.client() as client:
        return len(client.events(probe="tcp_connect", event_type=CONNECT, dst_port=REFUSED_PORT, limit=10_000))


def probe_events(daemon: Daemon) -> int:
    with daemon.client() as client:
        count: int = client.status()["probes"]["tcp_connect"]["events"]
        return count


# ---- requests out of range -----------------------------------------------------------------------------------

def test_out_of_range_requests_are_bad_request_and_the_running_probe_keeps_delivering(netns: NetNs,
                                                                                       tmp_path: Path) -> None:
    with running_daemon(tmp_path) as daemon:
        with daemon.client() as client:
            deployed = client.deploy("tcp_connect", port=REFUSED_PORT)
        refuse(netns, 3)
        wait_for(lambda: connect_events(daemon) == 3, what="the first 3 events")

        deploy = {"v": 1, "id": "d", "type": "deploy", "probe": "tcp_connect", "port": REFUSED_PORT}
        for pid in (2**32, 2**32 + 1, 2**63, 2**64 - 1, 4_194_305, True):
            reply = raw_request(daemon, {**deploy, "pid": pid})
            assert (error_code(reply), reply["id"]) == ("bad_request", "d"), (pid, reply)
            assert "pid" in reply["error"]["message"]
        for field, value in (("port", True), ("port", 2**32), ("sample", True), ("ttl", True), ("ttl", 2**64)):
            assert error_code(raw_request(daemon, {**deploy, field: value})) == "bad_request", (field, value)
        for kind in ("get_events", "recent"):
            for since in (1e308, 2**64, 2**63, -1, "9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z", True):
                reply = raw_request(daemon, {"v": 1, "id": 7, "type": kind, "since": since})
                assert error_code(reply) == "bad_request", (kind, since, reply)
            for limit in (2**63, 2**64 - 1, 0, True):
                reply = raw_request(daemon, {"v": 1, "id": 7, "type": kind, "limit": limit})
                assert error_code(reply) == "bad_request", (kind, limit, reply)
            assert error_code(raw_request(daemon, {"v": 1, "id": 7, "type": kind, "pid": 2**32})) == "bad_request"
        # a subscription 1 exists on this connection: `true` must not be taken for it
        with socket.socket(socket.AF_UNIX) as conn, conn.makefile("rb") as stream:
            conn.connect(str(daemon.socket))
            conn.sendall(b'{"v":1,"id":"s","type":"subscribe","dst_port":1}\n')
            subscribed = orjson.loads(stream.readline())
            number = subscribed["result"]["subscription"]
            conn.sendall(orjson.dumps({"v": 1, "id": "u", "type": "unsubscribe", "subscription": number == 1})
                         + b"\n")
            assert error_code(orjson.loads(stream.readline())) == "bad_request"
            conn.sendall(orjson.dumps({"v": 1, "id": "u", "type": "unsubscribe", "subscription": number}) + b"\n")
            assert orjson.loads(stream.readline())["ok"] is True
        # a 1 MiB id: refused with a small reply whose id is null, not echoed past the frame limit
        huge_id = b'{"v":1,"type":"ping","id":"' + b"i" * ((1 << 20) - 64) + b'"}'
        reply = raw_request(daemon, huge_id)
        assert (error_code(reply), reply["id"]) == ("bad_request", None)
        assert str(MAX_ID_CHARS) in reply["error"]["message"]
        assert raw_request(daemon, {"v": 1, "id": "i" * MAX_ID_CHARS, "type": "ping"})["ok"] is True

        # the deployment is the one deployed first, and it still delivers
        with daemon.client() as client:
            status = client.status()
            probe = status["probes"]["tcp_connect"]
            assert (probe["attach"], probe["filters"], probe["since"]) == (
                deployed["attach"], {"port": REFUSED_PORT}, deployed["since"])
        refuse(netns, 4)
        wait_for(lambda: connect_events(daemon) == 7, what="the next 4 events")
    assert "Traceback" not in daemon.stderr, daemon.stderr


# ---- the metrics port ----------------------------------------------------------------------------------------

def test_half_sent_requests_on_the_metrics_port_use_no_threads_and_keep_nobody_out(tmp_path: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < SLOWLORIS_CONNECTIONS + 512:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, SLOWLORIS_CONNECTIONS + 1024), hard))
    with running_daemon(tmp_path, metrics=True) as daemon:
        url = daemon.metrics_url
        assert url is not None
        host, port = url.removeprefix("http://").rsplit(":", 1)
        for _ in range(3):  # the scrape threads exist from here on
            scrape(url)
        before = threads_of(daemon.proc.pid)
        held: list[socket.socket] = []
        most = before
        try:
            for index in range(SLOWLORIS_CONNECTIONS):
                conn = socket.create_connection((host, int(port)), timeout=30)
                held.append(conn)
                with contextlib.suppress(OSError):  # an evicted connection may be closed already
                    conn.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                if index % 100 == 0:
                    most = max(most, threads_of(daemon.proc.pid))
            most = max(most, threads_of(daemon.proc.pid))
            # a normal client is answered while every one of those connections is still held open
            samples = scrape(url)
            assert samples[("jalki_ready", ())] == 0
            most = max(most, threads_of(daemon.proc.pid))
            assert most <= before + SCRAPE_THREADS, (most, before)
            closed = {reason: samples[("jalki_metrics_connections_closed_total", (("reason", reason),))]
                      for reason in ("limit", "evicted", "timeout", "bad_request", "disconnect")}
            assert closed["limit"] + closed["evicted"] >= SLOWLORIS_CONNECTIONS - MAX_CONNECTIONS, closed
            assert samples[("jalki_metrics_connections", ())] <= MAX_CONNECTIONS
            # the newest held connections are closed once they have not finished their request in time
            newest = held[-1]
            newest.settimeout(REQUEST_TIMEOUT_S + 30)
            started = time.monotonic()
            assert newest.recv(1024) == b"", "a half-sent request got a reply"
            assert time.monotonic() - started < REQUEST_TIMEOUT_S + 30
            wait_for(lambda: scrape(url)[("jalki_metrics_connections_closed_total", (("reason", "timeout"),))] >= 1,
                     what="a request timeout counted")
        finally:
            for conn in held:
                conn.close()
        # clients that send a request and leave without reading the reply (reset) are no traceback either
        for _ in range(200):
            conn = socket.create_connection((host, int(port)), timeout=30)
            conn.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            conn.close()
        assert http_ok(f"{url}/healthz")
        assert threads_of(daemon.proc.pid) <= before + SCRAPE_THREADS
    stderr = daemon.stderr
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr and "ConnectionReset" not in stderr, stderr
    assert len([line for line in stderr.splitlines() if "metrics port" in line]) <= 2, stderr


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=30) as response:
        return int(response.status) == 200


def test_metrics_serve_on_an_ipv6_literal(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET6) as probe:
        try:
            probe.bind(("::1", 0))
        except OSError:
            pytest.skip("no IPv6 loopback on this machine")
        port = probe.getsockname()[1]
    with running_daemon(tmp_path, "--metrics-addr", f"[::1]:{port}") as daemon:
        assert http_ok(f"http://[::1]:{port}/healthz")
        samples = scrape(f"http://[::1]:{port}")
        assert samples[("jalki_ready", ())] == 0
        with pytest.raises(OSError):  # bound on ::1 only
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        assert daemon.proc.poll() is None


# ---- the ring fill -------------------------------------------------------------------------------------------

def test_ring_fill_ratio_shows_a_backlog_larger_than_one_drain(netns: NetNs, tmp_path: Path) -> None:
    with running_daemon(tmp_path, metrics=True) as daemon:
        url = daemon.metrics_url
        assert url is not None
        with daemon.client() as client:
            client.deploy("tcp_connect", port=REFUSED_PORT)
        daemon.send_signal(signal.SIGSTOP)  # the kernel keeps writing the ring; nobody reads it
        try:
            refuse(netns, BURST)
        finally:
            daemon.send_signal(signal.SIGCONT)
        seen: list[float] = []

        def fill_seen() -> bool:
            seen.append(scrape(url).get(("jalki_ringbuffer_fill_ratio", (("probe", "tcp_connect"),)), 0.0))
            return max(seen) > DRAIN_SLICE_RATIO

        wait_for(fill_seen, timeout=30, what=f"a fill ratio over {DRAIN_SLICE_RATIO}")
        assert max(seen) <= 1
        # every record was delivered: the ring held the burst, and reading its fill took nothing from it
        wait_for(lambda: probe_events(daemon) == BURST, timeout=60, what="every event of the burst")
        samples = scrape(url)
        assert samples[("jalki_drops_total", (("cause", "ringbuf_full"), ("probe", "tcp_connect")))] == 0
        # the gauge is the peak since the previous scrape: the burst is over and drained
        wait_for(lambda: scrape(url).get(("jalki_ringbuffer_fill_ratio", (("probe", "tcp_connect"),)), 1.0) == 0,
                 what="the fill back to 0 once drained")


# ---- expired deployments -------------------------------------------------------------------------------------

def test_status_lists_the_latest_expired_deployments_and_counts_all(tmp_path: Path) -> None:
    names = [("tcp_connect", "tcp_close")[cycle % 2] for cycle in range(EXPIRED_KEPT + 3)]
    with running_daemon(tmp_path, "--history", "off") as daemon, daemon.client() as client:
        for name in names:
            client.deploy(name, port=REFUSED_PORT, ttl=0.001)
            wait_for(lambda: not client.status()["probes"], what="the probe to expire")
        status = client.status()
        assert status["expired_total"] == len(names)
        assert status["expired"] == names[-EXPIRED_KEPT:]
