"""The daemon's history when its disk or file fails (DAEMON-19): a real ``jalki run --serve``, real kernel events.

- a history that cannot be opened (garbage over its first page): the daemon traces without it, says so in one
  line, and ``status``/``health``/``/healthz`` name it;
- a corrupt page under the rows: the daemon starts and traces; ``recent`` fails and ``health`` names the read;
- a full disk (a 4 MiB tmpfs) that gets room again: ``health`` fails while writes fail, and is ok again after;
  ``status`` keeps the totals;
- SIGTERM while ``recent`` scans run: the daemon stops (exit 0) and leaves the WAL truncated.
"""

from __future__ import annotations

import errno
import json
import random
import re
import sqlite3
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import Daemon, running_daemon, wait_for
from netns_helpers import NetNs

from jalki_core.daemon.store import History, encode_events, event_stamps

CONNECT = "kernel.tcp.connect"


def refuse(netns: NetNs, port: int, count: int) -> None:
    """``count`` refused connects to 127.0.0.1:port in ``netns``."""
    report = netns.traffic("connect", "--port", str(port), "--count", str(count), "--timeout", "2")
    assert [r["error"] for r in report["results"]] == ["ECONNREFUSED"] * count


def make_history(path: Path, count: int) -> None:
    """A real history of ``count`` events stamped now, written by jalki's own History."""
    now = time.time_ns()
    events = [{"id": f"old-{index}", "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now / 1e9))
               + f".{index % 10**9:09d}Z", "source": "jalki/tcp_connect", "type": CONNECT,
               "process_data": {"pid": 4242, "command": "seed"}, "data": {"pad": "x" * 400}}
              for index in range(count)]
    history = History(path)
    history.start()
    for start in range(0, count, 1000):
        batch = events[start:start + 1000]
        history.add("tcp_connect", batch, event_stamps(batch), encode_events(batch))
        wait_for(lambda: history.written + history.dropped >= start + len(batch), timeout=60,  # noqa: B023
                 what="the batch written")
    history.close()
    assert history.written == count


def leaf_pages(path: Path) -> list[int]:
    db = sqlite3.connect(path)
    try:
        return [page for (page,) in db.execute("SELECT pageno FROM dbstat WHERE name = 'events' AND pagetype = 'leaf'")]
    finally:
        db.close()


def garble(path: Path, page: int) -> None:
    with path.open("r+b") as file:
        file.seek((page - 1) * 4096)
        file.write(random.Random(page).randbytes(4096))


def health(daemon: Daemon) -> tuple[int, dict[str, Any]]:
    result = daemon.cli("health", "--json")
    return result.returncode, json.loads(result.stdout)


def history_check(report: dict[str, Any]) -> dict[str, Any]:
    (check,) = [check for check in report["checks"] if check["kind"] == "history"]
    return check


def healthz(daemon: Daemon) -> tuple[int, str]:
    assert daemon.metrics_url is not None
    try:
        with urllib.request.urlopen(f"{daemon.metrics_url}/healthz", timeout=10) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def traces(daemon: Daemon, netns: NetNs, port: int) -> None:
    """The daemon traces: a deployed probe sees exactly the refused connects made now."""
    with daemon.client() as client:
        client.deploy("tcp_connect", port=port)
        refuse(netns, port, 5)
        wait_for(lambda: len(client.events(probe="tcp_connect", event_type=CONNECT, dst_port=port)) == 5,
                 timeout=30, what="five connect events")


def test_an_unopenable_history_leaves_the_daemon_tracing_without_it(netns: NetNs, tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    make_history(path, 200)
    garble(path, 1)  # the header: not a database any more
    port = random.randint(20000, 29999)
    with running_daemon(tmp_path, "--history", str(path), metrics=True) as daemon:
        traces(daemon, netns, port)
        warnings = [line for line in daemon.stderr.splitlines() if "event history" in line]
        assert warnings == [f"WARNING jalki.daemon: tracing without the event history: cannot open the event "
                            f"history {path}: file is not a database (move the file aside, give --history another "
                            f"path, or --history off)"]
        with daemon.client() as client:
            history = client.status()["history"]
        assert history["state"] == "disabled" and history["path"] == str(path)
        assert history["problems"] == [f"disabled: cannot open the event history {path}: file is not a database "
                                       "(move the file aside, give --history another path, or --history off)"]
        code, report = health(daemon)
        assert code == 1 and report["ready"] is True and history_check(report)["problems"] == history["problems"]
        recent = daemon.cli("recent", "--json")
        assert recent.returncode == 1 and "the event history is disabled: cannot open" in recent.stderr
        code, text = healthz(daemon)  # alive: a restart would not repair the file
        assert code == 200 and text.startswith("history disabled: disabled: cannot open the event history")


def test_a_corrupt_page_fails_recent_and_health_says_so(netns: NetNs, tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    make_history(path, 3000)
    pages = leaf_pages(path)
    garble(path, pages[len(pages) // 2])  # rows in the middle: the database opens, new rows go at the end
    port = random.randint(20000, 29999)
    with running_daemon(tmp_path, "--history", str(path), metrics=True) as daemon:
        traces(daemon, netns, port)
        recent = daemon.cli("recent", "--since", "1h", "--limit", "10000", "--json")
        assert recent.returncode == 1
        assert "cannot read the event history" in recent.stderr and "malformed" in recent.stderr
        code, report = health(daemon)
        assert code == 1 and history_check(report)["problems"] == [
            "the last read failed: database disk image is malformed"]
        with daemon.client() as client:
            assert client.status()["history"]["state"] == "degraded"
        code, text = healthz(daemon)
        assert code == 200 and text == "history degraded: the last read failed: database disk image is malformed\n"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs, unmounted afterwards."""
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", str(disk)], check=True)
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path) -> Path:
    """A file that takes every free byte of ``disk``."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as file:
        try:
            while True:
                file.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def test_a_full_disk_is_unhealthy_and_healthy_again_once_it_has_room(netns: NetNs, tmp_path: Path,
                                                                     small_disk: Path) -> None:
    port = random.randint(20000, 29999)
    with running_daemon(tmp_path, "--history", str(small_disk / "h.db"), "--history-max-mb", "2") as daemon, \
            daemon.client() as client:
        client.deploy("tcp_connect", port=port)
        refuse(netns, port, 20)
        wait_for(lambda: client.status()["history"]["written"] == 20, timeout=30, what="20 events written")
        assert health(daemon)[0] == 0
        filler = fill(small_disk)

        def failing() -> Any:
            refuse(netns, port, 100)
            history = client.status()["history"]
            return history["state"] == "failing" and history
        history = wait_for(failing, timeout=120, interval=0, what="a failed history write")
        assert any(problem.startswith("the last ") and problem.endswith("database or disk is full")
                   for problem in history["problems"]), history
        assert history["dropped_by_cause"]["write_failed"] > 0
        code, report = health(daemon)
        assert code == 1 and history_check(report)["problems"] == history["problems"]
        filler.unlink()  # room again

        def recovered() -> Any:
            refuse(netns, port, 20)
            history = client.status()["history"]
            return history["state"] == "ok" and history
        history = wait_for(recovered, timeout=120, interval=0, what="a successful history write")
        assert history["problems"] == [] and history["errors"] >= 1  # the totals stay in status
        assert history["dropped"] == history["dropped_by_cause"]["write_failed"] > 0
        code, report = health(daemon)
        assert code == 0 and history_check(report) == {"kind": "history", "name": str(small_disk / "h.db"),
                                                       "ok": True, "problems": []}


def test_sigterm_during_recent_scans_stops_and_truncates_the_wal(netns: NetNs, tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    make_history(path, 30_000)
    port = random.randint(20000, 29999)
    scans = [0, 0, 0]
    with running_daemon(tmp_path, "--history", str(path)) as daemon:
        with daemon.client() as client:
            client.deploy("tcp_connect", port=port)
        stop = threading.Event()

        def scan(index: int) -> None:  # a filter nothing passes: every scan reads the whole history
            try:
                with daemon.client() as client:
                    while not stop.is_set():
                        client.recent(pid=1, since=3600, limit=10)
                        scans[index] += 1
            except Exception:  # the daemon went away under it: expected once it stops
                pass

        scanners = [threading.Thread(target=scan, args=(index,)) for index in range(3)]
        for thread in scanners:
            thread.start()
        refuse(netns, port, 200)  # writes while the scans run
        wait_for(lambda: all(scans), timeout=60, what="every scanner to finish a scan")
        assert daemon.stop() == 0  # while the scans run
        stop.set()
        for thread in scanners:
            thread.join(60)
        stopped = re.search(r"; history: ok, (\d+) written, 0 dropped", daemon.stderr)
        assert stopped is not None, daemon.stderr
        written = int(stopped.group(1))
    wal = path.with_name(path.name + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        (rows,) = db.execute("SELECT count(*) FROM events").fetchone()
    finally:
        db.close()
    assert rows == 30_000 + written and written >= 200  # every event the daemon wrote, and nothing was dropped
