"""find / list / explain commands: tables, JSON, and one-line errors with exit 2.

The commands are registered on a local typer app the way ``jalki_core.cli``
registers them, and errors are turned into one line and an exit code the way
its ``main`` does.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
import typer
from kb_inventory import ENTRY_COUNT, LAYERS_TEXT

from jalki_core.cli import kb as cli_kb
from jalki_core.cli.exit_codes import exit_code_for
from jalki_core.errors import JalkiError


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "250")
    monkeypatch.delenv("JALKI_KB_PATH", raising=False)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command("find")(cli_kb.find_command)
    app.command("list")(cli_kb.list_command)
    app.command("explain")(cli_kb.explain_command)
    try:
        app(args=list(argv), prog_name="jalki", standalone_mode=False)
        code = 0
    except JalkiError as exc:
        print(f"error: {exc.one_line()}", file=sys.stderr)
        code = exit_code_for(exc)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def as_json(out: str) -> Any:
    return orjson.loads(out)


def test_find_prints_a_ranked_table(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "find", "why", "are", "connections", "to", "my", "database", "failing")
    assert (code, err) == (0, "")
    rows = [line for line in out.splitlines() if line.startswith("│")]
    assert rows[0].split("│")[2].strip() == "tcp_connect"
    assert "tcp/tcp_connect" in rows[0] and "302" in rows[0]
    assert "(high rate: sample)" in rows[1]


def test_find_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "find", "why are connections to my database failing", "--json", "--limit", "2")
    result = as_json(out)
    assert code == 0 and result["question"] == "why are connections to my database failing"
    assert [(m["entry"], m["score"]) for m in result["matches"]] == [("tcp_connect", 302), ("tcp_recvmsg", 200)]
    assert result["matches"][0]["implemented_by"] == {"plugin": "tcp", "probe": "tcp_connect"}
    assert "understood_words" not in result


def test_find_without_match_is_one_line_listing_understood_words(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "find", "xyzzy plugh")
    assert (code, out) == (2, "")
    [line] = err.splitlines()
    assert line.startswith("error: no knowledge-base entry matches 'xyzzy plugh' (try e.g. ")
    assert "words understood: 137, abort," in line
    assert line.endswith("more (see --json))")


def test_find_without_match_in_json_lists_every_word(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "find", "xyzzy", "--json")
    result = as_json(out)
    assert code == 0 and result["matches"] == []
    assert {"refused", "oom", "retransmit"} <= set(result["understood_words"])


def test_find_rejects_a_bad_limit(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "find", "disk", "--limit", "0")
    assert code == 2 and err.strip() == "error: --limit must be at least 1, not 0"


def test_list_json_and_layer_filter(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "list", "--json")
    entries = as_json(out)
    assert code == 0 and len(entries) == ENTRY_COUNT
    assert entries[0]["layer"] == "cpu" and entries[-1]["layer"] == "tcp"
    code, out, _ = run(capsys, "list", "--layer", "memory", "--json")
    assert [e["id"] for e in as_json(out)] == ["direct_reclaim", "kswapd_wake", "mm_page_alloc", "oom_mark_victim"]


def test_list_table(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "list", "--layer", "tcp")
    rows = [line for line in out.splitlines() if line.startswith("│") and line.split("│")[1].strip()]
    assert code == 0 and [row.split("│")[1].strip() for row in rows] == [
        "tcp_close", "tcp_connect", "tcp_probe", "tcp_receive_reset", "tcp_recvmsg", "tcp_retransmit_skb",
        "tcp_send_reset", "tcp_sendmsg", "tcp_state_change"]
    assert "kernel.tcp.connect" in rows[1] and "tcp/tcp_connect" in rows[1]


def test_unknown_layer_lists_the_layers(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "list", "--layer", "nope")
    assert (code, out) == (2, "")
    assert err.splitlines() == [
        f"error: unknown layer 'nope'; layers: {LAYERS_TEXT}"]


def test_explain_json_verdicts(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "explain", "tcp_connect", "error.code=ECONNREFUSED", "outcome=failure", "--json")
    result = as_json(out)
    assert code == 0 and result["event"]["error"] == {"code": "ECONNREFUSED"}
    verdicts = {v["interpretation"]: v for v in result["verdicts"]}
    assert [name for name, v in verdicts.items() if v["holds"]] == ["connect_refused"]
    storm = verdicts["connect_failure_storm"]
    assert (storm["needs_events"], storm["window_seconds"], storm["counts_toward"]) == (20, 1.0, True)
    assert storm["group_by"] == ["network_data.dst_ip", "network_data.dst_port"]
    assert verdicts["connect_slow"]["missing_fields"] == ["data.latency_ns"]


@pytest.mark.parametrize(("entry", "pair", "path", "value", "holds"), [
    ("tcp_retransmit_skb", "data.tcp_state=2", ("data", "tcp_state"), "SYN_SENT", "retransmit_syn"),
    ("tcp_close", "data.tcp_state=8", ("data", "tcp_state"), "CLOSE_WAIT", "close_from_close_wait"),
    ("tcp_close", "data.tcp_state=7", ("data", "tcp_state"), "CLOSE", None),
    ("process_exit", "data.signal=9", ("data", "signal"), "SIGKILL", "exit_sigkill"),
    ("process_exit", "data.exit_code=137", ("data", "exit_code"), 137, "exit_sigkill"),
    ("tcp_connect", "error.code=111", ("error", "code"), "ECONNREFUSED", None),
])
def test_explain_accepts_kernel_numbers_for_symbolic_fields(
    capsys: pytest.CaptureFixture[str], entry: str, pair: str, path: tuple[str, str], value: Any, holds: str | None
) -> None:
    code, out, _ = run(capsys, "explain", entry, pair, "--json")
    result = as_json(out)
    assert code == 0 and result["event"][path[0]][path[1]] == value
    assert [v["interpretation"] for v in result["verdicts"] if v["holds"]] == ([holds] if holds else [])


def test_explain_table_says_what_a_window_needs(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "explain", "tcp_retransmit_skb", "data.tcp_state=ESTABLISHED",
                       "network_data.dst_ip=10.0.0.1", "network_data.dst_port=5432")
    rows = {line.split("│")[1].strip(): line.split("│")[3].strip() for line in out.splitlines()
            if line.startswith("│") and line.split("│")[1].strip()}
    assert code == 0
    assert rows["retransmit_established_loss"].startswith("needs >= 3 matching events within 10 s per")
    assert rows["retransmit_syn"] == "does not hold"


@pytest.mark.parametrize(("argv", "line"), [
    (["tcp_conect"], "error: unknown knowledge-base entry 'tcp_conect' (did you mean tcp_connect, tcp_close, "
                     "tcp_connect_failures?)"),
    (["tcp_connect", "error.code"], "error: expected field=value, got 'error.code' (e.g. error.code=ECONNREFUSED)"),
    (["tcp_connect", "error.code=EFOO"], "error: 'EFOO': unknown errno name 'EFOO'"),
    (["tcp_connect", "data.latency_ns=fast"], "error: 'fast' is not a valid integer"),
    (["tcp_close", "data.tcp_state=CLOSED"], "error: 'CLOSED': unknown tcp_state name 'CLOSED'; known: ESTABLISHED, "
                                             "SYN_SENT, SYN_RECV, FIN_WAIT1, FIN_WAIT2, TIME_WAIT, CLOSE, CLOSE_WAIT, "
                                             "LAST_ACK, LISTEN, CLOSING, NEW_SYN_RECV"),
    (["tcp_connect", "outcome=failure", "outcome=success"], "error: field 'outcome' is given twice"),
])
def test_explain_errors_are_one_line(capsys: pytest.CaptureFixture[str], argv: list[str], line: str) -> None:
    code, out, err = run(capsys, "explain", *argv)
    assert (code, out, err.splitlines()) == (2, "", [line])


def test_explain_unknown_field_lists_the_entry_fields(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "explain", "oom_mark_victim", "data.rss=1")
    assert code == 2
    assert err.splitlines() == ["error: entry 'oom_mark_victim' has no field 'data.rss'; its fields: process_data.pid, "
                                "process_data.command, process_data.cgroup_id, data.memcg_path, data.memcg_id, "
                                "data.total_vm_bytes, data.anon_rss_bytes, data.file_rss_bytes, data.shmem_rss_bytes, "
                                "data.pgtables_bytes, data.oom_score_adj, data.trigger_pid, data.trigger_command"]


def test_broken_user_kb_is_a_warning_not_a_failure(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    broken = tmp_path / "mine.json"
    broken.write_text('{"kb_version": 1, "layer": "mine", "entries": [{"id": "x"}]}')
    monkeypatch.setenv("JALKI_KB_PATH", str(broken))
    code, out, err = run(capsys, "list", "--json")
    assert code == 0 and len(as_json(out)) == ENTRY_COUNT
    warnings = err.splitlines()
    assert warnings[0] == f"warning: {broken}: entry 'x': answers: required field is missing"
    assert all(line.startswith(f"warning: {broken}: entry 'x': ") for line in warnings)
