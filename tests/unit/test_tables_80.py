"""Every table of every command reads at 80 columns in a pipe: no word split, nothing cut with "…".

The commands run through the real CLI (in this process, stdout captured: a
pipe for rich) with ``COLUMNS=80``; the words of the same output laid out
1000 columns wide are the reference: at 80 columns every word must be one of
them (a word split across lines leaves fragments that are not). The daemon's
tables (``status``, ``status -v``, ``health``) and the run summary need real
probes and run as kernel tests against a real ``jalki serve`` / ``jalki run``.
"""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from jalki_core.cli import main
from jalki_core.cli.tables import Column, print_table

JALKI = str(Path(sys.executable).with_name("jalki"))
WIDTH = 80
_BOX = re.compile(r"[│┃┏┓┗┛┡┩┠┨╇╈┳┻━─┼└┘┌┐├┤┬┴╋]")


def words(text: str) -> list[str]:
    """The words of an output, box drawing removed (``tcp_close,`` → ``tcp_close``)."""
    return [word.strip(",;():") for word in _BOX.sub(" ", text).split() if word.strip(",;():")]


def assert_reads_at_80(narrow: str, wide: str | None = None, identifiers: tuple[str, ...] = ()) -> None:
    """No line over 80 columns, no ellipsis, every identifier whole, every word a word of the wide output."""
    assert narrow.strip(), "nothing was printed"
    for line in narrow.splitlines():
        assert len(line) <= WIDTH, f"line longer than {WIDTH}: {line!r}"
    assert "…" not in narrow, narrow
    found = set(words(narrow))
    missing = [identifier for identifier in identifiers if identifier not in found]
    assert not missing, f"split or missing: {missing}\n{narrow}"
    if wide is not None:
        known = set(words(wide))
        known |= {f"{word}:" for word in known}  # record layout: "header: value"
        # the line naming columns left out (their headers are words of the wide output)
        known |= set(words("not shown at this width: (see jalki explain ENTRY or --json)"))
        fragments = sorted(set(words(narrow)) - known)
        assert not fragments, f"words split: {fragments}\n{narrow}"


def render(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], width: int,
           *argv: str) -> tuple[str, str]:
    monkeypatch.setenv("COLUMNS", str(width))
    code = main(list(argv))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out, captured.err


def both(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[str, str]:
    """(the output at 80 columns, the same at 1000)."""
    return render(monkeypatch, capsys, WIDTH, *argv)[0], render(monkeypatch, capsys, 1000, *argv)[0]


def test_plugins_at_80(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    narrow, wide = both(monkeypatch, capsys, "plugins")
    rows = orjson.loads(render(monkeypatch, capsys, WIDTH, "plugins", "--json")[0])
    probes = tuple(probe["name"] for row in rows for probe in row["probes"])
    assert "tcp_retransmit_skb" in probes
    assert_reads_at_80(narrow, wide, probes + tuple(row["distribution"] for row in rows))


def test_list_at_80(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    narrow, wide = both(monkeypatch, capsys, "list")
    entries = orjson.loads(render(monkeypatch, capsys, WIDTH, "list", "--json")[0])
    implemented = tuple(f"{e['implemented_by']['plugin']}/{e['implemented_by']['probe']}"
                        for e in entries if e.get("implemented_by"))
    assert "tcp/tcp_retransmit_skb" in implemented
    assert_reads_at_80(narrow, wide, tuple(entry["id"] for entry in entries) + implemented)


@pytest.mark.parametrize("question", ["why are connections to my database failing", "connection refused",
                                      "disk slow", "process killed out of memory", "retransmit"])
def test_find_at_80(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], question: str) -> None:
    narrow, wide = both(monkeypatch, capsys, "find", question)
    matches = orjson.loads(render(monkeypatch, capsys, WIDTH, "find", question, "--json")[0])["matches"]
    assert matches
    assert_reads_at_80(narrow, wide, tuple(match["entry"] for match in matches))


def test_explain_every_entry_at_80(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    entries = orjson.loads(render(monkeypatch, capsys, WIDTH, "list", "--json")[0])
    for entry in entries:
        given = ("error.code=ECONNREFUSED", "outcome=failure") if entry["id"] == "tcp_connect" else ()
        argv = ("explain", entry["id"], *given)  # nothing given: every verdict lists the fields missing
        narrow, wide = both(monkeypatch, capsys, *argv)
        rules = tuple(rule["id"] for rule in entry["interpretations"])
        assert_reads_at_80(narrow, wide, (entry["id"], *rules))


def test_doctor_at_80(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    narrow, wide = both(monkeypatch, capsys, "doctor")
    assert_reads_at_80(narrow, wide, ("tp_btf", "tracepoint", "lockdown", "privileges"))


def test_a_pipe_through_the_console_script() -> None:
    """The installed ``jalki`` in a real pipe (not a terminal), as a user runs it."""
    result = subprocess.run([JALKI, "list"], capture_output=True, text=True, check=True, timeout=60,
                            env={**os.environ, "COLUMNS": str(WIDTH)})
    assert_reads_at_80(result.stdout, identifiers=("tcp/tcp_retransmit_skb", "tcp_connect_failures"))


LONG_PROBES = ("tcp_retransmit_skb", "tcp_connect_with_a_very_long_probe_name", "storage_block_io_latency_hist")


@pytest.mark.parametrize("width", [40, 60, 80, 120])
def test_helper_never_splits_identifiers(width: int) -> None:
    """Long identifiers, many programs per probe, prose: whole at every width, tables or records."""
    from rich.console import Console

    rows = [[probe, f"prog_{probe[:12]}_{index}", f"{index * 1.37:.2f}ms", str(index * 1000),
             "the ring buffer was full while the consumer was descheduled; raise --ringbuf-size or sample"]
            for probe in LONG_PROBES for index in range(12)]
    columns = [Column("probe"), Column("program"), Column("run time", justify="right", drop=2),
               Column("runs", justify="right", drop=1), Column("note", min_width=20, drop=3)]
    console = Console(width=width, record=True, file=io.StringIO(), highlight=False)
    print_table(console, "BPF programs", columns, rows)
    narrow = console.export_text()
    wide_console = Console(width=1000, record=True, file=io.StringIO(), highlight=False)
    print_table(wide_console, "BPF programs", columns, rows)
    for line in narrow.splitlines():
        assert len(line) <= width, line
    assert "…" not in narrow
    found = set(words(narrow))
    assert {row[0] for row in rows} | {row[1] for row in rows} <= found, narrow
    known = set(words(wide_console.export_text()))
    known |= {f"{word}:" for word in known} | set(words("not shown at this width: (see --json)"))
    assert set(words(narrow)) <= known, sorted(set(words(narrow)) - known)


# ---- with real probes ---------------------------------------------------------------------


@pytest.mark.kernel
def test_run_summary_at_80(tmp_path: Path) -> None:
    result = subprocess.run([JALKI, "run", "-p", "tcp_connect", "-p", "tcp_retransmit_skb", "-p", "process",
                             "--seconds", "1", "--emit", f"file:{tmp_path / 'events.ndjson'}"],
                            capture_output=True, text=True, timeout=300, check=False,
                            env={**os.environ, "COLUMNS": str(WIDTH)})
    assert result.returncode == 0, result.stderr
    summary = result.stderr[result.stderr.index("jalki run summary"):]
    assert_reads_at_80(summary, identifiers=("tcp_connect", "tcp_retransmit_skb", "process_exec", "process_exit"))


@pytest.fixture
def daemon_socket(tmp_path: Path) -> Iterator[Path]:
    """A real ``jalki serve`` with TCP probes of several BPF programs each; stopped with SIGTERM."""
    socket = tmp_path / "s.sock"
    proc = subprocess.Popen([JALKI, "serve", "-p", "tcp_connect", "-p", "tcp_retransmit_skb", "-p", "tcp_close",
                             "--socket", str(socket), "--history", str(tmp_path / "h.db"), "--metrics-addr", "off"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not socket.exists():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the daemon did not open its socket"
            time.sleep(0.1)
        yield socket
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0


def _cli(socket: Path, *argv: str, width: int = WIDTH) -> str:
    result = subprocess.run([JALKI, *argv, "--socket", str(socket)], capture_output=True, text=True, timeout=60,
                            check=False, env={**os.environ, "COLUMNS": str(width)})
    assert result.returncode in (0, 1), result.stderr  # health exits 1 when something is unhealthy
    return result.stdout


@pytest.mark.kernel
def test_daemon_tables_at_80(daemon_socket: Path) -> None:
    deployed = _cli(daemon_socket, "deploy", "process_exec", "--ttl", "1h", "--pid", "4194304", "--port", "65535")
    assert "deployed process_exec" in deployed
    status = orjson.loads(_cli(daemon_socket, "status", "--json"))
    programs = tuple(name for probe in status["probes"].values() for name in probe["programs"])
    assert len(programs) >= 8, programs  # several programs per probe: the 20-line cell of issue 9
    probes = tuple(status["probes"])
    assert_reads_at_80(_cli(daemon_socket, "status"), identifiers=probes)
    assert_reads_at_80(_cli(daemon_socket, "status", "-v"), identifiers=probes + programs)
    assert_reads_at_80(_cli(daemon_socket, "health"), identifiers=probes)
