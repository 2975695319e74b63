"""CLI: one clear line and a non-zero exit for every kind of bad input."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from jalki_core import privileges
from jalki_core.cli import main


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


def test_unknown_plugin_lists_installed(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "run", "--plugin", "nope", "--seconds", "1")
    assert code == 2
    [line] = error_lines(err)
    assert line.startswith("error: unknown plugin 'nope'") and "tcp" in line


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--sample", "1.5"], "--sample must be in (0, 1]"),
        (["--sample", "0"], "--sample must be in (0, 1]"),
        (["--port", "70000"], "--port must be between 1 and 65535"),
        (["--pid", "-3"], "--pid must be a positive process id"),
        (["--seconds", "0"], "--seconds must be positive"),
        (["--emit", "kafka"], "unknown emitter 'kafka'"),
        (["--emit", "file:/nonexistent-dir/events.ndjson"], "does not exist"),
        (["--emit", "stdout:extra"], "takes no argument"),
    ],
)
def test_bad_flag_values(capsys: pytest.CaptureFixture[str], argv: list[str], fragment: str) -> None:
    code, _, err = run_cli(capsys, "run", "--plugin", "tcp", *argv)
    assert code == 2
    [line] = error_lines(err)
    assert line.startswith("error:") and fragment in line


def test_unparsable_flag_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "run", "--plugin", "tcp", "--sample", "lots")
    assert code == 2
    [line] = error_lines(err)
    assert line.startswith("error:") and "--sample" in line


def test_unknown_command_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "frobnicate")
    assert code == 2
    assert len(error_lines(err)) == 1


def test_not_root(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(privileges, "can_load_bpf", lambda: False)
    code, out, err = run_cli(capsys, "run", "--plugin", "tcp", "--seconds", "1")
    assert code == 77
    [line] = error_lines(err)
    assert "needs root or CAP_BPF+CAP_PERFMON" in line and "sudo" in line
    assert out == ""


def test_no_btf(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(privileges, "can_load_bpf", lambda: True)
    monkeypatch.setattr(privileges, "BTF_PATH", Path("/nonexistent/btf/vmlinux"))
    code, _, err = run_cli(capsys, "run", "--plugin", "tcp", "--seconds", "1")
    assert code == 78
    [line] = error_lines(err)
    assert "no BTF" in line and "CONFIG_DEBUG_INFO_BTF" in line


def test_debug_shows_traceback(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JALKI_DEBUG", "1")
    code, _, err = run_cli(capsys, "run", "--plugin", "nope")
    assert code == 2
    assert "Traceback" in err and "UnknownPluginError" in err


def test_plugins_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "plugins", "--json")
    assert code == 0
    rows = {row["plugin"]: row for row in orjson.loads(out)}
    assert rows["tcp"]["distribution"] == "jalki-tcp" and rows["tcp"]["version"] == "0.1.0"
    assert {p["name"] for p in rows["tcp"]["probes"]} == {
        "tcp_connect", "tcp_close", "tcp_retransmit_skb", "tcp_reset", "tcp_rtt"}
    assert {"stdout", "file"} <= set(rows["core"]["emitters"])


def test_plugins_table(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "plugins")
    assert code == 0 and "jalki-tcp" in out and "tcp_connect" in out


def test_broken_installed_plugin_is_one_warning_and_the_rest_work(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from jalki_core import plugins as plugins_module
    from jalki_core.registry import PluginIdentity

    real = plugins_module.discover_entry_points()

    def broken_import() -> None:
        raise ImportError("cannot import name 'gone' from 'jalki_oops'")

    monkeypatch.setattr(plugins_module, "discover_entry_points", lambda: [
        *real, plugins_module.PluginSource(PluginIdentity("oops", "jalki-oops", "0.3.1"), broken_import)])
    code, out, err = run_cli(capsys, "plugins", "--json")
    assert code == 0
    [warning] = error_lines(err)
    assert warning.startswith("warning: plugin 'oops' (jalki-oops 0.3.1) is broken: import failed")
    rows = {row["plugin"]: row for row in orjson.loads(out)}
    assert rows["oops"]["status"] == "broken" and rows["tcp"]["status"] == "ok"


def test_unwritable_summary_path_fails_before_tracing(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "run", "--plugin", "tcp", "--summary-json", "/nonexistent-dir/s.json")
    assert code == 2
    [line] = error_lines(err)
    assert "cannot write the summary to /nonexistent-dir/s.json" in line
