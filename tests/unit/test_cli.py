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


# ---- issue 9: daemon-only and run-only options, and the bounds of every option ----------------


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["--socket", "/tmp/jalki-test.sock"], "--socket"),
        (["--socket-group", "adm"], "--socket-group"),
        (["--history", "off"], "--history"),
        (["--history-max-mb", "10"], "--history-max-mb"),
        (["--history-max-age", "1d"], "--history-max-age"),
        (["--metrics-addr", "127.0.0.1:9464"], "--metrics-addr"),
    ],
)
def test_run_refuses_daemon_options(capsys: pytest.CaptureFixture[str], argv: list[str], option: str) -> None:
    """Before issue 9 these were ignored without --serve and a plain trace ran."""
    code, out, err = run_cli(capsys, "run", "--plugin", "tcp", "--seconds", "1", *argv)
    assert code == 2 and out == ""
    [line] = error_lines(err)
    assert line.startswith(f"error: {option} is an option of the daemon") and "jalki serve" in line


@pytest.mark.parametrize("command", [["serve"], ["run", "--serve"]])
@pytest.mark.parametrize(("argv", "option"), [(["--seconds", "5"], "--seconds"), (["--strict"], "--strict"),
                                              (["--summary-json", "/tmp/s.json"], "--summary-json")])
def test_daemon_refuses_run_options(capsys: pytest.CaptureFixture[str], command: list[str], argv: list[str],
                                    option: str) -> None:
    code, out, err = run_cli(capsys, *command, "--history", "off", "--metrics-addr", "off", *argv)
    assert code == 2 and out == ""
    [line] = error_lines(err)
    assert line.startswith(f"error: {option} is an option of a plain 'jalki run'")


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["run", "-p", "tcp", "--seconds", "nan"], "--seconds must be positive and finite"),
        (["run", "-p", "tcp", "--seconds", "inf"], "--seconds must be positive and finite"),
        (["run", "-p", "tcp", "--seconds", "-2"], "--seconds must be positive and finite"),
        (["run", "-p", "tcp", "--seconds", "1e300"], "--seconds must be at most"),
        (["run", "-p", "tcp", "--sample", "nan"], "--sample must be in (0, 1]"),
        (["run", "-p", "tcp", "--pid", "4294967296"], "--pid must be a positive process id up to 4194304"),
        (["run", "-p", "tcp", "--pid", "0"], "--pid must be a positive process id"),
        (["run", "-p", "tcp", "--port", "0"], "--port must be between 1 and 65535"),
        (["run", "-p", "tcp", "--port", "-1"], "--port must be between 1 and 65535"),
        (["run", "-p", "tcp", "--port", str(2**70)], "--port must be between 1 and 65535"),
        (["serve", "--history-max-age", "1000000d"], "--history-max-age must be at most 36500d"),
        (["serve", "--history-max-age", "9" * 400], "--history-max-age must be at most"),
        (["serve", "--history-max-age", "0s"], "--history-max-age must be a positive duration"),
        (["serve", "--history-max-mb", "0"], "--history-max-mb must be a number of MiB"),
        (["serve", "--history-max-mb", str(2**62)], "--history-max-mb must be a number of MiB"),
        (["serve", "--metrics-addr", "::1:9464"], "put an IPv6 address in brackets"),
        (["serve", "--metrics-addr", "[not-v6]:9464"], "is not an IPv6 address"),
        (["serve", "--metrics-addr", "127.0.0.1:65536"], "--metrics-addr must be HOST:PORT"),
        (["serve", "--metrics-addr", "127.0.0.1"], "--metrics-addr must be HOST:PORT"),
        (["serve", "--pid", "4194305"], "--pid must be a positive process id"),
        (["ask", "--seconds", "inf", "why"], "--seconds must be positive and finite"),
        (["ask", "--pid", "4294967296", "why"], "--pid must be a positive process id"),
        (["watch", "tcp_connect", "--seconds", "nan"], "--seconds must be positive and finite"),
        (["deploy", "tcp_connect", "--ttl", "8d"], "--ttl must be at most 7d"),
        (["deploy", "tcp_connect", "--pid", "4294967296"], "--pid must be a positive process id"),
        (["stream", "--dst-port", "70000"], "--dst-port must be between 1 and 65535"),
        (["recent", "--since", "1000000d"], "--since must be at most 36500d"),
        (["run", "-p", "tcp", "--ring-mib", "3"], "--ring-mib 3 is not a power of two from 1 to 1024"),
        (["run", "-p", "tcp", "--ring-mib", "2048"], "--ring-mib 2048 is not a power of two from 1 to 1024"),
        (["serve", "--ring-mib", "0"], "--ring-mib 0 is not a power of two from 1 to 1024"),
    ],
)
def test_option_bounds_are_one_line(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                    argv: list[str], fragment: str) -> None:
    """Refused before any probe, socket or daemon is touched: one line, exit 2, no traceback."""
    monkeypatch.setenv("JALKI_SOCKET", "/nonexistent-dir/jalki.sock")
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and out == ""
    [line] = error_lines(err)
    assert line.startswith("error:") and fragment in line, line


@pytest.mark.parametrize(("text", "expected"), [("[::1]:9464", ("::1", 9464)), ("127.0.0.1:1", ("127.0.0.1", 1)),
                                                ("localhost:65535", ("localhost", 65535)),
                                                ("[fe80::1%lo]:9464", ("fe80::1%lo", 9464)), ("off", None)])
def test_metrics_address_forms(text: str, expected: tuple[str, int] | None) -> None:
    from jalki_core.cli.options import parse_address

    assert parse_address(text) == expected


def test_serve_is_a_command_with_the_daemon_options(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "serve", "--help")
    assert code == 0
    for option in ("--socket", "--socket-group", "--history", "--history-max-mb", "--history-max-age",
                   "--metrics-addr", "--plugin", "--emit"):
        assert option in out
    assert "--seconds" not in out and "--summary-json" not in out
