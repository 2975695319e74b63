"""The daemon under abuse: file-descriptor exhaustion, a second daemon under a connect burst, clients at
daemon stop, and clients that would slow the others (issue 9, item 8).

Each test runs a real `jalki run --serve` subprocess and talks to its real Unix socket. Requirement ids
(DAEMON-n) refer to the table in specs/protocol.md.
"""

from __future__ import annotations

import contextlib
import os
import random
import resource
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from daemon_helpers import JALKI, running_daemon, wait_for
from netns_helpers import NetNs

from jalki_core.daemon.server import MAX_SUBSCRIPTIONS, MAX_SUBSCRIPTIONS_PER_CONNECTION
from jalki_core.daemon.store import History
from jalki_core.errors import DaemonUnavailable, RequestError
from jalki_core.sdk import Client

pytestmark = pytest.mark.kernel

PING = b'{"v":1,"id":1,"type":"ping"}\n'

GENERATOR = r"""
import socket, sys
port = int(sys.argv[1])
print("ready", flush=True)
while True:
    s = socket.socket()
    try:
        s.connect(("127.0.0.1", port))
    except ConnectionRefusedError:
        pass
    s.close()
"""
"""Refused connects to 127.0.0.1:PORT as fast as one process makes them, until killed."""


def closed_port() -> int:
    """A destination port for refused connects, unlikely to meet any other test's traffic."""
    return random.randint(30000, 39999)


def blocking_connect(path: Path) -> socket.socket:
    """A plain client connection (a blocking connect waits for room in a full backlog, at most 30 s)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", 30, 0))
    sock.connect(str(path))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", 0, 0))
    sock.settimeout(30)
    return sock


def read_line(sock: socket.socket) -> bytes:
    """One frame (without its newline), or b"" at EOF (or a reset: the peer closed with our data unread)."""
    data = b""
    while not data.endswith(b"\n"):
        try:
            chunk = sock.recv(1)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk
    return data[:-1]


class _Killed(Exception):
    """Raised out of a running_daemon body whose daemon was SIGKILLed (its teardown checks do not apply)."""


def test_idle_connections_past_the_fd_limit_are_refused_counted_and_the_daemon_lives(
        netns: NetNs, tmp_path: Path) -> None:
    """RELY-1: 300 idle clients against an open-file limit of 256: the daemon serves as many as its cap,
    refuses the others with ``limit_reached`` (counted), and still drains, stores and serves events."""
    port = closed_port()
    with running_daemon(tmp_path, "-p", "tcp_connect", "--port", str(port)) as daemon:
        resource.prlimit(daemon.proc.pid, resource.RLIMIT_NOFILE, (256, 256))
        sockets = [blocking_connect(daemon.socket) for _ in range(300)]
        try:
            for sock in sockets:
                with contextlib.suppress(BrokenPipeError):  # refused: already closed by the daemon
                    sock.sendall(PING)
            served = refused = 0
            for sock in sockets:
                reply = orjson.loads(read_line(sock))
                if reply["ok"]:
                    served += 1
                else:
                    assert reply["error"]["code"] == "limit_reached", reply
                    assert "open-file limit" in reply["error"]["message"]
                    assert read_line(sock) == b"", "a refused connection is closed"
                    refused += 1
            assert served + refused == 300 and 0 < served < 256 and refused > 0
            # events while the idle clients stay connected: drained, kept, served
            report = netns.traffic("connect", "--port", str(port), "--count", "5", "--timeout", "2")
        finally:
            for sock in sockets:
                sock.close()
        assert daemon.proc.poll() is None, daemon.stderr

        late_refusals = []  # this check's own connections refused before the daemon saw the closes: counted too

        def closed_seen() -> bool:  # the daemon noticed the closed connections: a client is served again
            try:
                with daemon.client() as probe:
                    return bool(probe.status()["connections"]["open"] == 1)
            except DaemonUnavailable as exc:
                assert "refused the connection" in str(exc)
                late_refusals.append(exc)
                return False

        wait_for(closed_seen, what="the daemon to see the closed connections")
        with daemon.client() as client:
            wait_for(lambda: len(client.events(probe="tcp_connect", event_type="kernel.tcp.connect")) == 5,
                     what="the 5 connects")
            events = client.events(probe="tcp_connect", event_type="kernel.tcp.connect")
            assert [e["network_data"]["src_port"] for e in events] == [r["sport"] for r in report["results"]]
            status = client.status()
        assert status["connections"]["max"] == served
        assert status["connections"]["refused"] == refused + len(late_refusals)
        assert status["delivery"]["lost"] == {}
    assert "out of system resource" not in daemon.stderr


def test_a_second_daemon_never_takes_a_live_daemons_socket_even_with_a_full_backlog(tmp_path: Path) -> None:
    """DAEMON-13: the first daemon is stopped (SIGSTOP) with its accept backlog full: a second daemon on the
    same socket refuses to start with one line, and a client's connect waits for room instead of failing."""
    with running_daemon(tmp_path) as daemon:
        pid = daemon.proc.pid
        socket_inode = daemon.socket.stat().st_ino
        burst: list[socket.socket] = []
        os.kill(pid, signal.SIGSTOP)
        try:
            while True:  # fill the backlog: the next connect would wait
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.setblocking(False)
                try:
                    sock.connect(str(daemon.socket))
                except BlockingIOError:
                    sock.close()
                    break
                burst.append(sock)
            assert len(burst) >= 1
            second = subprocess.run([JALKI, "run", "--serve", "--socket", str(daemon.socket), "--history",
                                     str(tmp_path / "h2.db"), "--metrics-addr", "off"],
                                    capture_output=True, text=True, timeout=60, check=False)
            assert second.returncode == 1, second.stderr
            errors = [line for line in second.stderr.splitlines() if line.startswith("error:")]
            assert len(errors) == 1 and "another jalki daemon" in errors[0] and f"pid {pid}" in errors[0], \
                second.stderr
            assert daemon.socket.stat().st_ino == socket_inode, "the first daemon's socket was replaced"
            assert not (tmp_path / "h2.db").exists(), "the refused daemon opened a history"
            # a client connecting now waits for room in the backlog, and is served once the daemon runs again
            resume = threading.Timer(1.0, os.kill, (pid, signal.SIGCONT))
            resume.start()
            try:
                with Client(daemon.socket, timeout=60) as client:
                    assert client.ping()["pid"] == pid
            finally:
                resume.join()
        finally:
            os.kill(pid, signal.SIGCONT)
            for sock in burst:
                sock.close()
        assert daemon.socket.stat().st_ino == socket_inode
    assert not Path(f"{daemon.socket}.lock").exists()


def test_sigterm_delivers_the_final_drain_then_an_end_push(netns: NetNs, tmp_path: Path) -> None:
    """RELY-2: a subscriber connected at SIGTERM receives every event it matched that was not counted as
    dropped, then an ``end`` push with the exact figures; the client library raises DaemonStopped."""
    port = closed_port()
    out = tmp_path / "ev.ndjson"
    with running_daemon(tmp_path, "-p", "tcp_connect", "--port", str(port), "--emit", f"file:{out}") as daemon:
        sock = blocking_connect(daemon.socket)
        sock.sendall(b'{"v":1,"id":1,"type":"subscribe","probe":"tcp_connect"}\n')
        reply = orjson.loads(read_line(sock))
        assert reply["ok"], reply
        number = reply["result"]["subscription"]
        frames: list[dict[str, Any]] = []
        reader_file = sock.makefile("rb")

        def read_all() -> None:
            for line in reader_file:
                frames.append(orjson.loads(line))

        reader = threading.Thread(target=read_all, daemon=True)
        reader.start()
        generator = subprocess.Popen(["ip", "netns", "exec", netns.name, sys.executable, "-c", GENERATOR,
                                      str(port)], stdout=subprocess.PIPE, text=True)
        try:
            assert generator.stdout is not None and generator.stdout.readline() == "ready\n"
            with daemon.client() as client:
                wait_for(lambda: client.status()["probes"]["tcp_connect"]["events"] >= 2000, timeout=30,
                         what="a steady stream of events")
            assert daemon.stop(signal.SIGTERM) == 0
        finally:
            generator.kill()
            generator.wait()
        reader.join(30)
        assert not reader.is_alive(), "the daemon did not close the subscriber's connection"
        sock.close()
    events = [frame["event"] for frame in frames if frame.get("push") == "event"]
    dropped = sum(frame["count"] for frame in frames if frame.get("push") == "dropped")
    ends = [frame for frame in frames if frame.get("push") == "end"]
    assert ends and frames[-1] is ends[0], "the end push is the last frame"
    [end] = ends
    assert (end["subscription"], end["reason"]) == (number, "shutdown")
    assert end["sent"] == len(events)
    assert end["dropped"] == dropped
    written = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    # every event the daemon drained was matched: pushed, or counted as dropped
    assert len(events) + dropped == len(written)
    if not dropped:
        assert [e["id"] for e in events] == [e["id"] for e in written]


def test_sigkill_makes_stream_and_watch_say_the_daemon_is_gone_and_fail(tmp_path: Path) -> None:
    """RELY-3: clients whose daemon vanishes print one line and exit 69; a new daemon then takes over the
    stale socket."""
    with pytest.raises(_Killed), running_daemon(tmp_path) as daemon:
        stream = daemon.popen("stream")
        watch = daemon.popen("watch", "tcp_connect", "--seconds", "120")
        try:
            with daemon.client() as client:
                wait_for(lambda: client.status()["subscribers"]["count"] == 2, timeout=30,
                         what="both clients subscribed")
            daemon.proc.kill()
            daemon.proc.wait()
            for proc in (stream, watch):
                _, stderr = proc.communicate(timeout=30)
                assert proc.returncode == 69, stderr
                lines = stderr.strip().splitlines()
                assert len(lines) == 1 and lines[0].startswith("error:") and str(daemon.socket) in lines[0], stderr
        finally:
            for proc in (stream, watch):
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        raise _Killed
    # the socket and the lock file of the killed daemon are stale: the next daemon replaces them
    with running_daemon(tmp_path) as daemon, daemon.client() as client:
        assert client.ping()["pid"] == daemon.proc.pid


def _fill_history(path: Path, rows: int) -> None:
    """A history of ``rows`` small events of a made-up probe (what an earlier run of the daemon left)."""
    history = History(path)
    history.start()
    now = time.time_ns()
    batch = 4096
    for start in range(0, rows, batch):
        count = min(batch, rows - start)
        events = [{"id": f"fill-{start + i}", "type": "test.fill", "source": "jalki/fill",
                   "timestamp": "2000-01-01T00:00:00Z", "process_data": {"pid": 1, "command": "fill"}}
                  for i in range(count)]
        stamps = [now - (rows - start - i) * 1000 for i in range(count)]
        history.add("fill", events, stamps, [orjson.dumps(event) for event in events])
        wait_for(lambda: history.stats()["queued_events"] == 0, timeout=60, interval=0.01)
    history.close()
    assert history.stats()["written"] == rows


def test_status_is_answered_while_history_scans_run(tmp_path: Path) -> None:
    """RELY-4: eight clients scan a 300,000-row history; a ninth client's ``status`` is answered while
    at least six of the scans are still running (scans have their own bounded pool)."""
    history = tmp_path / "h.db"
    _fill_history(history, 300_000)
    with running_daemon(tmp_path, "--history", str(history)) as daemon:
        order: list[str] = []
        lock = threading.Lock()
        errors: list[BaseException] = []

        def scan() -> None:
            try:
                with daemon.client(timeout=300) as client:
                    # a filter that matches nothing: every row is read
                    assert client.recent(command="nomatch", limit=10) == []
                with lock:
                    order.append("scan")
            except BaseException as exc:
                errors.append(exc)

        scanners = [threading.Thread(target=scan) for _ in range(8)]
        for thread in scanners:
            thread.start()
        time.sleep(0.5)  # the scans reach the daemon first (a faster status only makes this test weaker)
        with daemon.client(timeout=300) as client:
            status = client.status()
        with lock:
            order.append("status")
        for thread in scanners:
            thread.join(300)
        assert not errors, errors
        assert status["ready"] is True
        assert order.index("status") <= 2, order
        assert order.count("scan") == 8


def test_subscriptions_are_capped_per_connection_and_in_total(tmp_path: Path) -> None:
    """RELY-5: ``subscribe`` past the per-connection or the total cap is refused with ``limit_reached``;
    subscriptions of closed connections are freed (count and queued bytes back to 0)."""
    with running_daemon(tmp_path) as daemon:
        clients = [daemon.client() for _ in range(MAX_SUBSCRIPTIONS // MAX_SUBSCRIPTIONS_PER_CONNECTION + 1)]
        try:
            for client in clients[:-1]:
                for _ in range(MAX_SUBSCRIPTIONS_PER_CONNECTION):
                    client.request("subscribe")
            with pytest.raises(RequestError) as per_connection:
                clients[0].request("subscribe")
            assert per_connection.value.code == "limit_reached"
            assert f"{MAX_SUBSCRIPTIONS_PER_CONNECTION} subscriptions per connection" in str(per_connection.value)
            with pytest.raises(RequestError) as total:
                clients[-1].request("subscribe")
            assert total.value.code == "limit_reached"
            assert f"{MAX_SUBSCRIPTIONS} subscriptions" in str(total.value)
            subscribers = clients[-1].status()["subscribers"]
            assert subscribers["count"] == MAX_SUBSCRIPTIONS
            assert subscribers["refused"] == 2
            # the connection stays usable after a refusal
            assert clients[0].ping()["pong"] is True
        finally:
            for client in clients[:-1]:
                client.close()
        subscribers = wait_for(lambda: (s := clients[-1].status()["subscribers"])["count"] == 0 and s,
                               what="the subscriptions of closed connections to end")
        assert subscribers["queued_bytes"] == 0
        assert subscribers["refused"] == 2
        clients[-1].request("subscribe")  # room again
        clients[-1].close()


def test_the_repeat_filter_limits_a_repeated_log_line(tmp_path: Path) -> None:
    """A line logged in a tight loop is written a bounded number of times, then summarised."""
    code = r"""
import logging
from jalki_core.daemon.logfilter import install_repeat_filter
logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
install_repeat_filter()
log = logging.getLogger("asyncio")
for i in range(100000):
    log.error("socket.accept() out of system resource\nsocket: <socket fd=%d>", 7)
logging.getLogger("jalki.other").error("another line")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    lines = result.stderr.splitlines()
    accepts = [line for line in lines if line.startswith("asyncio: socket.accept() out of system resource")]
    assert 1 <= len(accepts) <= 10, lines[:20]
    assert "jalki.other: another line" in lines
    assert len(result.stderr) < 10_000
