"""The jalki daemon as users run it: `jalki run --serve` as a real subprocess, its real Unix socket,
the real CLI clients, and real kernel events from refused connects in a network namespace.

Requirement ids (PROTO-n, DAEMON-n) refer to the table in specs/protocol.md.
"""

from __future__ import annotations

import grp
import json
import os
import queue
import random
import secrets
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
from daemon_helpers import JALKI, Daemon, running_daemon, wait_for
from netns_helpers import NetNs
from tcp_helpers import COMMAND

from jalki_core.cli.exit_codes import exit_code_for
from jalki_core.daemon.protocol import MAX_FRAME_BYTES
from jalki_core.errors import RequestError
from jalki_core.sdk import Client
from jalki_core.testing import event_validator

pytestmark = pytest.mark.kernel

ASK_SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "specs" / "ask.schema.json").read_text())
validate = event_validator()
CONNECT = "kernel.tcp.connect"
"""The event type of a connect. A burst of failures also yields derived ``kernel.network.connect_failures``
events from the same probe, so exact checks select the connects by type."""


def closed_port() -> int:
    """A destination port for refused connects, unlikely to meet any other test's traffic."""
    return random.randint(20000, 29999)


def refuse(netns: NetNs, port: int, count: int) -> dict[str, Any]:
    """``count`` refused connects to 127.0.0.1:port from one process in ``netns``; its report."""
    report = netns.traffic("connect", "--port", str(port), "--count", str(count), "--timeout", "2")
    assert [r["error"] for r in report["results"]] == ["ECONNREFUSED"] * count
    return report


def assert_refusals(events: list[dict[str, Any]], report: dict[str, Any], port: int, netns: NetNs) -> None:
    """``events`` are exactly the refused connects of ``report``, in order, with the right fields."""
    assert [e["network_data"]["src_port"] for e in events] == [r["sport"] for r in report["results"]]
    for event in events:
        validate(event)
        assert (event["source"], event["type"], event["outcome"]) == ("jalki/tcp_connect", "kernel.tcp.connect",
                                                                      "failure")
        assert event["error"]["code"] == "ECONNREFUSED"
        network = event["network_data"]
        assert (network["src_ip"], network["dst_ip"], network["dst_port"], network["netns"]) == (
            "127.0.0.1", "127.0.0.1", port, netns.inode)
        assert (event["process_data"]["pid"], event["process_data"]["command"]) == (report["pid"], COMMAND)


def cli_json(daemon: Daemon, *args: str) -> Any:
    result = daemon.cli(*args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def events_of(client: Client, count: int, timeout: float = 10, **filters: Any) -> list[dict[str, Any]]:
    """``get_events`` once it holds ``count`` events (it never holds more, asserted)."""
    events = wait_for(lambda: (found := client.events(**filters)) and len(found) >= count and found,
                      timeout=timeout, what=f"{count} events matching {filters}")
    assert len(events) == count, events
    return [event.raw for event in events]


class LineReader:
    """Lines of a subprocess's stdout, read on a thread, taken with a timeout."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def take(self, count: int, timeout: float = 10) -> list[str]:
        deadline = time.monotonic() + timeout
        taken = []
        while len(taken) < count:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"got {len(taken)} of {count} lines: {taken}") from None
            assert line is not None, f"the stream ended after {len(taken)} of {count} lines"
            taken.append(line)
        return taken

    def rest(self) -> list[str]:
        """Every line until EOF (the process must have ended)."""
        self._thread.join(10)
        rest = []
        while (line := self.lines.get_nowait()) is not None:
            rest.append(line)
        return rest


def subscribers(daemon: Daemon) -> int:
    with daemon.client() as client:
        count: int = client.status()["subscribers"]["count"]
        return count


# ---- deploy, get_events, stream (DAEMON-1, DAEMON-2, DAEMON-9, PROTO-9, PROTO-10) -------------------------------

def test_deploy_then_get_events_and_stream_see_exactly_the_refused_connects(netns: NetNs, tmp_path: Path) -> None:
    port = closed_port()
    with running_daemon(tmp_path) as daemon:
        deployed = cli_json(daemon, "deploy", "tcp_connect", "--json")
        assert (deployed["probe"], deployed["changed"], deployed["sample"], deployed["filters"]) == (
            "tcp_connect", True, 1.0, {})
        assert deployed["attach"] in {"fexit", "tp_btf", "tracepoint"}
        assert (deployed["events"], deployed["ttl_remaining_s"]) == (0, None)
        stream = daemon.popen("stream", "tcp_connect", "--type", CONNECT, "--dst-port", str(port))
        lines = LineReader(stream)
        wait_for(lambda: subscribers(daemon) == 1, what="the stream's subscription")
        with daemon.client() as client:
            first = refuse(netns, port, 5)
            events = events_of(client, 5, probe="tcp_connect", event_type=CONNECT, dst_port=port)
            assert_refusals(events, first, port, netns)
            streamed = [orjson.loads(line) for line in lines.take(5)]
            assert streamed == events
            # still connected: the next burst arrives too, nothing repeated, nothing missing
            second = refuse(netns, port, 7)
            events = events_of(client, 12, probe="tcp_connect", event_type=CONNECT, dst_port=port)
            assert_refusals(events[5:], second, port, netns)
            streamed += [orjson.loads(line) for line in lines.take(7)]
            assert streamed == events and len({e["id"] for e in streamed}) == 12
            # the other filters select the same events, server-side
            assert client.events(pid=second["pid"], event_type=CONNECT, dst_port=port) == events[5:]
            assert client.events(probe="tcp_connect", event_type=CONNECT, dst_port=port, command=COMMAND,
                                     limit=3) == events[-3:]
            assert client.events(probe="tcp_connect", dst_port=port, dst_ip="127.0.0.1",
                                     src_port=first["results"][0]["sport"]) == events[:1]
            assert client.events(probe="tcp_close", dst_port=port) == []
            assert client.events(probe="tcp_connect", event_type=CONNECT, dst_port=port, since=3600) == events
            time.sleep(0.3)  # nothing more may come
            assert subscribers(daemon) == 1
        stream.send_signal(signal.SIGTERM)
        assert stream.wait(10) == 0
        assert lines.rest() == []
        assert stream.stderr is not None and stream.stderr.read() == ""
        wait_for(lambda: subscribers(daemon) == 0, what="the stream's subscription to end")


def test_watch_deploys_for_its_duration_and_prints_one_line_per_event(netns: NetNs, tmp_path: Path) -> None:
    port = closed_port()
    with running_daemon(tmp_path) as daemon, daemon.client() as client:
        watch = daemon.popen("watch", "tcp_connect", "--seconds", "3", "--dst-port", str(port))
        wait_for(lambda: (s := client.status())["subscribers"]["count"] == 1 and "tcp_connect" in s["probes"],
                 what="watch to deploy and subscribe")
        assert client.status()["probes"]["tcp_connect"]["ttl_remaining_s"] > 0  # deployed with a TTL
        report = refuse(netns, port, 3)  # fewer than a connect_failures window needs: connects only
        stdout, stderr = watch.communicate(timeout=30)
        assert (watch.returncode, stderr) == (0, "")
        lines = stdout.splitlines()
        assert lines[-1] == "3 events in 3s"
        assert [line.split()[1:] for line in lines[:-1]] == [
            [CONNECT, f"127.0.0.1:{r['sport']}", "->", f"127.0.0.1:{port}", f"{COMMAND}[{report['pid']}]",
             "ECONNREFUSED"] for r in report["results"]]
        status = client.status()
        assert (status["probes"], status["subscribers"]["count"]) == ({}, 0)  # undeployed when done


def test_client_deploy_is_idempotent_resampling_reattaches_and_status_counts(netns: NetNs, tmp_path: Path) -> None:
    port = closed_port()
    with running_daemon(tmp_path) as daemon, daemon.client() as client:
        first = client.deploy("tcp_connect", port=port)
        assert (first["changed"], first["filters"], first["sample"]) == (True, {"port": port}, 1.0)
        again = client.deploy("tcp_connect", port=port)
        assert (again["changed"], again["since"], again["attach"]) == (False, first["since"], first["attach"])
        assert [p["name"] for p in client.request("probes")["probes"] if p["deployed"]] == ["tcp_connect"]
        report = refuse(netns, port, 6)
        connects = events_of(client, 6, probe="tcp_connect", event_type=CONNECT)
        assert {e["process_data"]["pid"] for e in connects} == {report["pid"]}

        def settled(previous: int) -> tuple[dict[str, Any], int]:
            """The probe's status once its event count equals the ring's events since ``previous``."""
            def check() -> Any:
                probe = client.status()["probes"]["tcp_connect"]
                held = len(client.events(probe="tcp_connect", limit=10_000))
                return probe["events"] == held - previous and (probe, held)
            found: tuple[dict[str, Any], int] = wait_for(check, what="status and ring to agree")
            return found

        probe, held = settled(0)  # every event of the probe (connects and any derived ones) is counted
        assert (probe["attach"], probe["filters"], probe["sample"]) == (first["attach"], {"port": port}, 1.0)
        assert probe["drops"] == {"ringbuf_full": 0, "sampled": 0, "tracking_full": 0, "recursion_miss": 0,
                                  "size_mismatch": 0, "decode_error": 0}
        assert probe["run_count"] >= 6 and probe["run_time_ns"] > 0 and probe["failed_rungs"] is not None
        programs = probe["programs"]  # per program, from bpf_enable_stats; the totals are their sums
        assert any(f["run_count"] > 0 and f["run_time_ns"] > 0 for f in programs.values()), programs
        assert sum(f["run_count"] for f in programs.values()) == probe["run_count"]
        assert sum(f["run_time_ns"] for f in programs.values()) == probe["run_time_ns"]
        status = client.status()
        ring = status["ring"]
        assert (ring["capacity"], ring["events"]) == (10_000, {"tcp_connect": held}) and 0 < ring["bytes"] < held * 1000
        assert (status["ready"], status["expired"], status["pid"]) == (True, [], daemon.proc.pid)
        # another sample rate: detached and attached again with fresh figures
        resampled = client.deploy("tcp_connect", port=port, sample=0.5)
        assert (resampled["changed"], resampled["sample"], resampled["events"]) == (True, 0.5, 0)
        before = len(client.events(probe="tcp_connect", limit=10_000))
        refuse(netns, port, 40)
        wait_for(lambda: (p := client.status()["probes"]["tcp_connect"])
                 and len(client.events(probe="tcp_connect", event_type=CONNECT, limit=10_000)) - 6
                 + p["drops"]["sampled"] == 40, what="40 connects, each kept or counted as sampled")
        probe, _ = settled(before)
        kept = len(client.events(probe="tcp_connect", event_type=CONNECT, limit=10_000)) - 6
        assert 0 < kept < 40 and kept + probe["drops"]["sampled"] == 40 and probe["sample"] == 0.5
        text = daemon.cli("status")
        assert text.returncode == 0 and "tcp_connect" in text.stdout and f"port={port} sample=0.5" in text.stdout
        health = cli_json(daemon, "health", "--json")
        assert health["ready"] is True and health["healthy"] is True  # sampling is not a loss
        undeployed = client.undeploy("tcp_connect")
        assert undeployed["events"] == len(client.events(probe="tcp_connect", limit=10_000)) - before
        assert client.status()["probes"] == {}
        with pytest.raises(RequestError) as missing:
            client.undeploy("tcp_connect")
        assert (missing.value.code, exit_code_for(missing.value)) == ("not_attached", 2)
        with pytest.raises(RequestError) as bad:
            client.deploy("tcp_connect", sample=1.5)
        assert bad.value.code == "bad_request" and "'sample' must be in (0, 1]" in bad.value.message


def test_unknown_probe_is_an_error_reply_and_one_cli_line(tmp_path: Path) -> None:
    with running_daemon(tmp_path) as daemon:
        with daemon.client() as client, pytest.raises(RequestError) as error:
            client.deploy("no_such_probe")
        assert error.value.code == "unknown_probe" and "no installed probe 'no_such_probe'" in error.value.message
        result = daemon.cli("deploy", "no_such_probe")
        assert result.returncode == 2 and result.stdout == ""
        assert result.stderr.startswith("error: daemon: no installed probe 'no_such_probe'; installed: ")
        assert result.stderr.endswith(" (unknown_probe)\n") and result.stderr.count("\n") == 1
        assert "tcp_connect" in result.stderr
        undeploy = daemon.cli("undeploy", "tcp_connect")
        assert undeploy.returncode == 2
        assert undeploy.stderr == "error: daemon: probe 'tcp_connect' is not deployed (not_attached)\n"


def test_ttl_expires_the_probe(tmp_path: Path) -> None:
    with running_daemon(tmp_path) as daemon, daemon.client() as client:
        started = time.monotonic()
        deployed = cli_json(daemon, "deploy", "tcp_connect", "--ttl", "2s", "--json")
        assert deployed["changed"] is True and 0 < deployed["ttl_remaining_s"] <= 2.0
        assert client.status()["expired"] == []
        wait_for(lambda: client.status()["probes"] == {}, timeout=5, what="the probe to expire")
        assert time.monotonic() - started >= 2.0
        status = client.status()
        assert (status["probes"], status["expired"]) == ({}, ["tcp_connect"])
        assert cli_json(daemon, "deploy", "tcp_connect", "--json")["changed"] is True  # deployable again


# ---- history (DAEMON-6) --------------------------------------------------------------------------------------------

def test_recent_reads_the_sqlite_history(netns: NetNs, tmp_path: Path) -> None:
    port = closed_port()
    with running_daemon(tmp_path) as daemon, daemon.client() as client:
        client.deploy("tcp_connect", port=port)
        report = refuse(netns, port, 4)
        events = events_of(client, 4, probe="tcp_connect", event_type=CONNECT)
        wait_for(lambda: client.status()["history"]["written"] >= 4, what="the history to be written")
        recent = cli_json(daemon, "recent", "--since", "1m", "--type", CONNECT, "--json")
        assert recent == events
        assert_refusals(recent, report, port, netns)
        assert cli_json(daemon, "recent", "--since", "1m", "--type", "kernel.tcp.close", "--json") == []
        assert cli_json(daemon, "recent", "--since", "1m", "--probe", "tcp_connect", "--type", CONNECT,
                        "--limit", "2", "--json") == events[2:]
        assert client.recent(event_type=CONNECT, dst_port=port, pid=report["pid"]) == events
        assert cli_json(daemon, "recent", "--since", "1m", "--dst-port", str(port), "--pid", str(report["pid"]),
                        "--dst-ip", "127.0.0.1", "--json") == events
        assert cli_json(daemon, "recent", "--since", "1m", "--dst-port", str(port + 1), "--json") == []
        assert client.recent(event_type=CONNECT, since=events[1]["timestamp"]) == events[1:]  # RFC 3339
        text = daemon.cli("recent", "--since", "1m", "--type", CONNECT)
        assert text.returncode == 0 and text.stdout.rstrip().endswith("4 events in the last 1m")
        db = sqlite3.connect(f"file:{tmp_path / 'h.db'}?mode=ro", uri=True)
        try:
            assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
            assert db.execute("SELECT count(*), min(probe) FROM events WHERE type = ?", (CONNECT,)).fetchone() == (
                4, "tcp_connect")
        finally:
            db.close()
        assert stat.S_IMODE((tmp_path / "h.db").stat().st_mode) == 0o640


def test_recent_without_history_is_a_clear_error(tmp_path: Path) -> None:
    with running_daemon(tmp_path, "--history", "off") as daemon:
        result = daemon.cli("recent", "--since", "1m")
        assert result.returncode == 1 and result.stdout == ""
        assert result.stderr == "error: daemon: the event history is off (--history off) (unavailable)\n"
        with daemon.client() as client:
            assert client.status()["history"] is None
    assert not (tmp_path / "h.db").exists()


def history_disk_bytes(path: Path) -> int:
    """The history database and its WAL on disk."""
    return sum(p.stat().st_size for p in (path, path.with_name(path.name + "-wal")) if p.exists())


def test_the_history_stays_within_history_max_mb(netns: NetNs, tmp_path: Path) -> None:
    port, rounds = closed_port(), 5
    history = tmp_path / "h.db"
    with running_daemon(tmp_path, "--history-max-mb", "1", "--history-max-age", "2h") as daemon, \
            daemon.client() as client:
        client.deploy("tcp_connect", port=port)
        largest = 0
        for _ in range(rounds):  # ~1,000 events of ~1 KiB on disk each round: several times the bound
            refuse(netns, port, 1000)
            largest = max(largest, history_disk_bytes(history))

        def settled() -> Any:
            status = client.status()
            return status["history"]["written"] == status["probes"]["tcp_connect"]["events"] and status
        status = wait_for(settled, timeout=30, what="the history to write every event")
        largest = max(largest, history_disk_bytes(history))
        stats = status["history"]
        assert (stats["max_bytes"], stats["max_age_s"], stats["dropped"], stats["errors"]) == (1 << 20, 7200, 0, 0)
        assert stats["pruned"] > 0 and stats["size_bytes"] <= 1 << 20
        # the newest events are kept
        newest = client.events(probe="tcp_connect", event_type=CONNECT, limit=50)
        assert client.recent(probe="tcp_connect", event_type=CONNECT, limit=50) == newest
    assert largest <= 1 << 20 and history_disk_bytes(history) <= 1 << 20
    db = sqlite3.connect(f"file:{history}?mode=ro", uri=True)
    try:
        assert db.execute("PRAGMA auto_vacuum").fetchone() == (2,)  # incremental: pages beyond the bound go back
        (kept,) = db.execute("SELECT count(*) FROM events").fetchone()
    finally:
        db.close()
    assert 300 < kept < rounds * 1000


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--history-max-mb", "0",
     "--history-max-mb must be a number of MiB from 1 to 1073741824, not 0 (e.g. --history-max-mb 256)"),
    ("--history-max-mb", "lots", "Invalid value for '--history-max-mb': "),
    ("--history-max-age", "7x", "--history-max-age must be a positive duration like 30s, 10m, 2h or 1d, not '7x'"),
    ("--history-max-age", "0d", "--history-max-age must be a positive duration like 30s, 10m, 2h or 1d, not '0d'"),
])
def test_bad_history_bounds_are_one_line_and_exit_2(tmp_path: Path, option: str, value: str, message: str) -> None:
    result = subprocess.run([JALKI, "run", "--serve", "--socket", str(tmp_path / "s.sock"), "--history",
                             str(tmp_path / "h.db"), "--metrics-addr", "off", option, value],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith(f"error: {message}") and result.stderr.count("\n") == 1, result.stderr
    assert not (tmp_path / "s.sock").exists() and not (tmp_path / "h.db").exists()


# ---- many clients, malformed frames (PROTO-1…PROTO-8) --------------------------------------------------------------

def test_many_clients_at_once_are_all_answered(tmp_path: Path) -> None:
    with running_daemon(tmp_path) as daemon:
        mode = daemon.socket.stat()
        assert stat.S_ISSOCK(mode.st_mode) and stat.S_IMODE(mode.st_mode) == 0o660
        assert (mode.st_uid, mode.st_gid) == (0, 0)

        def session(index: int) -> tuple[int, int, int]:
            with daemon.client(timeout=30) as client:
                pongs = sum(client.ping()["pid"] == daemon.proc.pid for _ in range(5))
                statuses = sum(client.status()["socket"] == str(daemon.socket) for _ in range(3))
                return index, pongs, statuses

        with ThreadPoolExecutor(20) as pool:
            results = sorted(pool.map(session, range(20)))
        assert results == [(index, 5, 3) for index in range(20)]
        # a second daemon on the same socket refuses to start and leaves the first one serving
        second = subprocess.run([JALKI, "run", "--serve", "--socket", str(daemon.socket), "--history", "off",
                                 "--metrics-addr", "off"], capture_output=True, text=True, timeout=30, check=False)
        assert second.returncode == 1
        assert second.stderr.endswith(f"error: another jalki daemon (pid {daemon.proc.pid}) is serving "
                                      f"{daemon.socket} (stop it, or give this one another --socket)\n")
        with daemon.client() as client:
            assert client.ping() == {"pong": True, "protocol": 1, "pid": daemon.proc.pid}


class Raw:
    """A bare connection speaking frames by hand."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(str(path))
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self, timeout: float = 10) -> dict[str, Any]:
        """The next frame; :class:`TimeoutError` when none comes within ``timeout``."""
        self.sock.settimeout(timeout)
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(1 << 16)
            assert chunk, f"the daemon closed the connection: {self.buffer[:200]!r}"
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        message: dict[str, Any] = orjson.loads(line)
        return message

    def ask(self, data: bytes) -> dict[str, Any]:
        self.send(data)
        return self.reply()

    def close(self) -> None:
        self.sock.close()


def error_of(reply: dict[str, Any]) -> tuple[Any, str]:
    assert reply["v"] == 1 and reply["ok"] is False and set(reply) == {"v", "id", "ok", "error"}
    assert set(reply["error"]) == {"code", "message"} and reply["error"]["message"]
    return reply["id"], reply["error"]["code"]


def test_malformed_frames_get_error_replies_and_nobody_is_disturbed(tmp_path: Path) -> None:
    with running_daemon(tmp_path) as daemon:
        raw, other = Raw(daemon.socket), Raw(daemon.socket)
        try:
            cases = [
                (b"not json\n", (None, "bad_frame")),
                (b"\xff\xfe{}\n", (None, "bad_frame")),
                (b"[1, 2]\n", (None, "bad_frame")),
                (b'"ping"\n', (None, "bad_frame")),
                (b'{"v": 2, "id": 7, "type": "ping"}\n', (7, "unsupported_version")),
                (b'{"id": "x", "type": "ping"}\n', ("x", "unsupported_version")),
                (b'{"v": true, "id": 8, "type": "ping"}\n', (8, "unsupported_version")),
                (b'{"v": 1, "id": 9, "type": "launch"}\n', (9, "unknown_type")),
                (b'{"v": 1, "id": 10}\n', (10, "bad_request")),
                (b'{"v": 1, "id": {"a": 1}, "type": "ping"}\n', (None, "bad_request")),
                (b'{"v": 1, "id": 11, "type": "deploy"}\n', (11, "bad_request")),
                (b'{"v": 1, "id": 12, "type": "deploy", "probe": "tcp_connect", "ttl": 0}\n', (12, "bad_request")),
                (b'{"v": 1, "id": 13, "type": "get_events", "dst_port": 70000}\n', (13, "bad_request")),
                (b'{"v": 1, "id": 14, "type": "get_events", "pid": true}\n', (14, "bad_request")),
                (b'{"v": 1, "id": 15, "type": "get_events", "since": "yesterday"}\n', (15, "bad_request")),
                (b'{"v": 1, "id": 16, "type": "subscribe", "dst_ip": "nowhere"}\n', (16, "bad_request")),
                (b'{"v": 1, "id": 17, "type": "unsubscribe", "subscription": 99}\n', (17, "not_attached")),
                (b'{"v": 1, "id": 18, "type": "undeploy", "probe": "tcp_connect"}\n', (18, "not_attached")),
                (b'{"v": 1, "id": 19, "type": "deploy", "probe": "nope"}\n', (19, "unknown_probe")),
                (b'{"v": 1, "id": 20, "type": "ask", "question": ""}\n', (20, "bad_request")),
                (b'{"v": 1, "id": 21, "type": "ask", "question": "refused", "pid": "x"}\n', (21, "bad_request")),
                (b"x" * (MAX_FRAME_BYTES + 10) + b"\n", (None, "frame_too_large")),
                (b" " * (MAX_FRAME_BYTES * 3) + b"\n", (None, "frame_too_large")),
            ]
            for frame, expected in cases:
                assert error_of(raw.ask(frame)) == expected, frame[:80]
                assert other.ask(b'{"v": 1, "id": "o", "type": "ping"}\n')["ok"] is True
            # the limit counts the newline: exactly MAX_FRAME_BYTES passes, one byte more does not
            request = b'{"v": 1, "id": "big", "type": "ping"}'
            exact = request + b" " * (MAX_FRAME_BYTES - len(request) - 1) + b"\n"
            assert len(exact) == MAX_FRAME_BYTES
            assert raw.ask(exact) == {"v": 1, "id": "big", "ok": True,
                                      "result": {"pong": True, "protocol": 1, "pid": daemon.proc.pid}}
            assert error_of(raw.ask(b" " + exact)) == (None, "frame_too_large")
            # blank lines are ignored; several requests in one write are answered in order
            raw.send(b'\n\n{"v": 1, "id": 1, "type": "ping"}\n{"v": 1, "id": 2, "type": "probes"}\n')
            assert [raw.reply()["id"], raw.reply()["id"]] == [1, 2]
            # subscribe / unsubscribe on the wire
            subscribed = raw.ask(b'{"v": 1, "id": "s", "type": "subscribe", "probe": "tcp_connect", '
                                 b'"dst_port": 5432, "dst_ip": "0:0:0:0:0:0:0:1"}\n')
            number = subscribed["result"]["subscription"]
            assert subscribed == {"v": 1, "id": "s", "ok": True, "result": {
                "subscription": number, "filters": {"probe": "tcp_connect", "dst_ip": "::1",
                                                    "dst_port": 5432}, "seq": subscribed["result"]["seq"]}}
            assert error_of(other.ask(orjson.dumps({"v": 1, "id": "u", "type": "unsubscribe",
                                                    "subscription": number}) + b"\n")) == ("u", "not_attached")
            assert raw.ask(orjson.dumps({"v": 1, "id": "u", "type": "unsubscribe", "subscription": number})
                           + b"\n") == {"v": 1, "id": "u", "ok": True,
                                        "result": {"subscription": number, "sent": 0, "dropped": 0,
                                                   "replayed": 0}}
            # the same connection and a new client still work
            assert raw.ask(b'{"v": 1, "id": null, "type": "ping"}\n')["ok"] is True
            with daemon.client() as client:
                assert client.ping()["pid"] == daemon.proc.pid
        finally:
            raw.close()
            other.close()


def test_a_slow_subscriber_loses_counted_events_and_slows_nobody(netns: NetNs, tmp_path: Path) -> None:
    port, total = closed_port(), 12_000  # more than a subscription queues (10,000) plus the socket buffers
    with running_daemon(tmp_path) as daemon, daemon.client() as client:
        client.deploy("tcp_connect", port=port)
        slow = Raw(daemon.socket)
        try:
            subscribed = slow.ask(orjson.dumps({"v": 1, "id": "s", "type": "subscribe", "event_type": CONNECT,
                                                "dst_port": port}) + b"\n")
            number = subscribed["result"]["subscription"]
            refuse(netns, port, total)  # the slow subscriber reads nothing meanwhile

            def settled() -> Any:
                status = client.status()
                probe, history = status["probes"]["tcp_connect"], status["history"]
                return history["written"] == probe["events"] and status["subscribers"]["dropped"] > 0 and status
            status = wait_for(settled, timeout=20, what="every event stored and the subscriber behind")
            with daemon.client(timeout=2) as other:  # others are answered at once
                assert other.ping()["pid"] == daemon.proc.pid
            db = sqlite3.connect(f"file:{tmp_path / 'h.db'}?mode=ro", uri=True)
            try:
                (matched,) = db.execute("SELECT count(*) FROM events WHERE type = ?", (CONNECT,)).fetchone()
            finally:
                db.close()
            probe = status["probes"]["tcp_connect"]
            assert status["history"]["dropped"] == 0
            assert matched + sum(probe["drops"].values()) == total  # the drain lost nothing it did not count
            # now read: the queued events, then (once drops happened) a dropped push before the next event
            received = announced = 0
            try:
                while True:
                    message = slow.reply(timeout=1.5)
                    if message["push"] == "event":
                        assert message["event"]["network_data"]["dst_port"] == port
                        received += 1
                    else:
                        assert message == {"v": 1, "push": "dropped", "subscription": number,
                                           "count": message["count"], "reason": "slow"}
                        announced += message["count"]
            except TimeoutError:
                pass
            ended = slow.ask(orjson.dumps({"v": 1, "id": "u", "type": "unsubscribe", "subscription": number})
                             + b"\n")
            assert ended["result"]["sent"] == received
            assert received + ended["result"]["dropped"] == matched
            assert 0 < announced <= ended["result"]["dropped"]
        finally:
            slow.close()


# ---- socket permissions (DAEMON-10) --------------------------------------------------------------------------------

def as_nobody(*groups: int) -> list[str]:
    """A setpriv prefix running a command as user nobody, in exactly ``groups`` (supplementary)."""
    if groups:
        return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--groups=" + ",".join(map(str, groups))]
    return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


@pytest.fixture
def socket_group() -> Iterator[tuple[str, int]]:
    name = f"jlk{secrets.token_hex(3)}"
    subprocess.run(["groupadd", "--system", name], check=True, capture_output=True)
    try:
        yield name, grp.getgrnam(name).gr_gid
    finally:
        subprocess.run(["groupdel", name], check=False, capture_output=True)


def test_socket_is_0660_and_only_root_and_the_socket_group_may_use_it(tmp_path: Path,
                                                                     socket_group: tuple[str, int]) -> None:
    name, gid = socket_group
    base = Path(tempfile.mkdtemp(prefix="jalki-perm-", dir="/tmp"))
    base.chmod(0o755)  # traversable by anyone: the socket's own mode is what refuses
    path = base / "run" / "jalki.sock"
    try:
        with running_daemon(tmp_path, "--socket", str(path), "--socket-group", name) as daemon:
            mode = path.stat()
            assert stat.S_ISSOCK(mode.st_mode) and stat.S_IMODE(mode.st_mode) == 0o660
            assert (mode.st_uid, mode.st_gid) == (0, gid)
            assert stat.S_IMODE(path.parent.stat().st_mode) == 0o755
            refused = daemon.cli("status", user=as_nobody())
            assert refused.returncode == 69 and refused.stdout == ""
            assert refused.stderr == (f"error: not allowed to use the daemon socket {path} (run as root or as a "
                                      "member of the daemon's --socket-group)\n")
            allowed = daemon.cli("status", "--json", user=as_nobody(gid))
            assert allowed.returncode == 0, allowed.stderr
            assert json.loads(allowed.stdout)["pid"] == daemon.proc.pid
            denied_deploy = daemon.cli("deploy", "tcp_connect", user=as_nobody())
            assert denied_deploy.returncode == 69
            with daemon.client() as client:
                assert client.status()["probes"] == {}
    finally:
        for leftover in (path, path.parent, base):
            if leftover.is_dir():
                leftover.rmdir()
            elif leftover.exists():
                leftover.unlink()


# ---- signals (DAEMON-7, DAEMON-8) ----------------------------------------------------------------------------------

GENERATOR = r"""
import socket, sys, time
port, log = int(sys.argv[1]), sys.argv[2]
with open(log, "w", buffering=1) as out:
    print("ready", flush=True)
    while True:
        s = socket.socket()
        try:
            s.connect(("127.0.0.1", port))
        except ConnectionRefusedError:
            pass
        out.write(f"{s.getsockname()[1]}\n")
        s.close()
        time.sleep(0.002)
"""


def summary_line(stderr: str) -> str:
    [line] = [line for line in stderr.splitlines() if line.startswith("jalki daemon stopped:")]
    return line


def test_sigterm_while_events_flow_loses_none_of_them(netns: NetNs, tmp_path: Path) -> None:
    port = closed_port()
    out, log = tmp_path / "ev.ndjson", tmp_path / "attempts.txt"
    with running_daemon(tmp_path, "-p", "tcp_connect", "--port", str(port), "--emit", f"file:{out}") as daemon:
        generator = subprocess.Popen(["ip", "netns", "exec", netns.name, sys.executable, "-c", GENERATOR,
                                      str(port), str(log)], stdout=subprocess.PIPE, text=True)
        try:
            assert generator.stdout is not None and generator.stdout.readline() == "ready\n"
            with daemon.client() as client:
                wait_for(lambda: client.status()["probes"]["tcp_connect"]["events"] >= 300, timeout=20,
                         what="a steady stream of events")
            attempts_before = len(log.read_text().splitlines())
            assert daemon.stop(signal.SIGTERM) == 0
        finally:
            generator.kill()
            generator.wait()
    attempts = [int(line) for line in log.read_text().splitlines()]
    lines = out.read_bytes().splitlines()
    events = [orjson.loads(line) for line in lines]  # every line parses
    for event in events:
        validate(event)
    seen = [event["network_data"]["src_port"] for event in events if event["type"] == CONNECT]
    # every connect made before SIGTERM is in the file, in order, with no gap and nothing twice
    assert len(seen) >= attempts_before >= 300
    assert seen == attempts[:len(seen)]
    assert len({event["id"] for event in events}) == len(events)
    assert {event["source"] for event in events} == {"jalki/tcp_connect"}
    # the file holds every event the daemon read, and the kernel lost none
    assert summary_line(daemon.stderr) == (f"jalki daemon stopped: {len(events)} events from 1 probes, 0 dropped; "
                                           f"emitter file: {len(events)} written, 0 dropped, 0 errors; "
                                           f"history: ok, {len(events)} written, 0 dropped")
    db = sqlite3.connect(f"file:{tmp_path / 'h.db'}?mode=ro", uri=True)
    try:
        assert db.execute("SELECT count(*) FROM events").fetchone() == (len(events),)
    finally:
        db.close()


def test_sighup_reopens_the_file_emitter(netns: NetNs, tmp_path: Path) -> None:
    port = closed_port()
    out, rotated = tmp_path / "ev.ndjson", tmp_path / "ev.ndjson.1"
    with (running_daemon(tmp_path, "-p", "tcp_connect", "--port", str(port), "--emit", f"file:{out}") as daemon,
          daemon.client() as client):

        def all_written(connects: int) -> bool:
            status = client.status()
            return (len(client.events(probe="tcp_connect", event_type=CONNECT)) == connects
                    and status["emitters"]["file"]["events_emitted"] == status["probes"]["tcp_connect"]["events"])

        before = refuse(netns, port, 3)
        wait_for(lambda: all_written(3), what="3 connects written")
        out.rename(rotated)
        daemon.send_signal(signal.SIGHUP)
        wait_for(out.exists, what="the file emitter to reopen its path")
        after = refuse(netns, port, 4)
        wait_for(lambda: all_written(7), what="7 connects written")
        assert client.status()["emitters"]["file"]["errors"] == 0
    old, new = ([orjson.loads(line) for line in path.read_bytes().splitlines()] for path in (rotated, out))
    assert [e["network_data"]["src_port"] for e in old if e["type"] == CONNECT] == [
        r["sport"] for r in before["results"]]
    assert [e["network_data"]["src_port"] for e in new if e["type"] == CONNECT] == [
        r["sport"] for r in after["results"]]
    # The emitter's part of the stop line comes last, or right before the history's part.
    assert summary_line(daemon.stderr).split("; history: ")[0].endswith(
        f"emitter file: {len(old) + len(new)} written, 0 dropped, 0 errors")


# ---- ask through the daemon (DAEMON-11) ----------------------------------------------------------------------------

def probes_asked_for(question: str) -> set[str]:
    """The probes ``ask`` attaches for ``question`` (the engine's own selection)."""
    from jalki_core.ask.engine import _relevant, _select
    from jalki_core.kb import default_kb, find
    from jalki_core.plugins import JalkiPlugins

    kb = default_kb()
    _, probes, _ = _select(_relevant(find(question, kb)), kb, JalkiPlugins())
    return set(probes)


def test_ask_goes_through_the_daemon_and_removes_what_it_deployed(netns: NetNs, tmp_path: Path) -> None:
    port = closed_port()
    with running_daemon(tmp_path) as daemon, daemon.client() as client:
        question = "connection refused"
        needed = probes_asked_for(question)
        assert "tcp_connect" in needed
        ask = daemon.popen("ask", "--json", "--seconds", "4", question)
        # the daemon deploys them one by one, then observes: start the traffic once all are attached
        wait_for(lambda: set(client.status()["probes"]) == needed, timeout=15, what=f"ask to deploy {needed}")
        report = refuse(netns, port, 12)
        stdout, stderr = ask.communicate(timeout=60)
        assert ask.returncode == 0, stderr
        assert " ".join(stderr.split()) == f"asking the jalki daemon at {daemon.socket}; observing the kernel for 4 s …"
        answer = json.loads(stdout)
        assert answer.pop("via") == "daemon"
        jsonschema.validate(answer, ASK_SCHEMA)
        assert {p["probe"] for p in answer["probes"]} == needed
        top = answer["findings"][0]
        assert (top["interpretation"], top["severity"], top["errno"]) == ("connect_refused", "error", "ECONNREFUSED")
        [group] = [g for g in top["evidence"] if f"127.0.0.1:{port}" in {d["address"] for d in g["destinations"]}]
        assert [(p["events"], p["command"]) for p in group["processes"] if p["pid"] == report["pid"]] == [
            (12, COMMAND)]
        assert answer["answer"].startswith("ERROR: Nothing is listening")
        status = client.status()
        assert (status["probes"], status["expired"]) == ({}, [])


# ---- no daemon (DAEMON-12) -----------------------------------------------------------------------------------------

def test_clients_without_a_daemon_say_so_in_one_line_and_exit_69(tmp_path: Path) -> None:
    missing = tmp_path / "none.sock"
    result = subprocess.run([JALKI, "status", "--socket", str(missing)], capture_output=True, text=True,
                            timeout=30, check=False)
    assert (result.returncode, result.stdout) == (69, "")
    assert result.stderr == (f"error: no jalki daemon at {missing} (start one with 'jalki serve', or point "
                             "--socket/JALKI_SOCKET at its socket)\n")
    from_env = subprocess.run([JALKI, "recent"], capture_output=True, text=True, timeout=30, check=False,
                              env={**os.environ, "JALKI_SOCKET": str(missing)})
    assert (from_env.returncode, from_env.stderr) == (69, result.stderr)
    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as bound:
        bound.bind(str(stale))  # a socket file nobody listens on (a daemon that was killed)
    result = subprocess.run([JALKI, "status", "--socket", str(stale)], capture_output=True, text=True, timeout=30,
                            check=False)
    assert result.returncode == 69
    assert result.stderr == (f"error: the jalki daemon at {stale} does not answer: Connection refused "
                             "(is it running? (jalki status))\n")

