"""`jalki run --rung` and the verifier log on the terminal, as a user runs them: real loads, real subprocesses.

The verifier-log tests install a throwaway plugin (a dist-info folder on
PYTHONPATH, as pip would leave one) whose probe's first rung the verifier
rejects (tests/kernel/bpf/broken_probe.bpf.c: an unchecked ring buffer
reservation) and whose second rung names a tracepoint that does not exist.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from jalki_core.errors import AttachLadderExhausted, ProbeError
from jalki_core.loader import ProbeLoader, ProbeOptions
from jalki_core.plugins import JalkiPlugins

pytestmark = pytest.mark.kernel

JALKI = str(Path(sys.executable).with_name("jalki"))
VERIFIER_REASON = "R0 invalid mem access 'ringbuf_mem_or_null'"

PLUGIN_MODULE = '''
"""A jalki plugin for tests: one probe that no kernel can attach."""
from jalki_core import AttachRung, Event, EventContext, Probe, RecordLayout, hookimpl


class BrokenProbe(Probe):
    name = "broken_probe"
    observes = "nothing that works"
    event_types = ("kernel.test.broken",)
    bpf_object = "broken_probe.bpf.o"
    ring_buffer_bytes = 1 << 16
    layout = RecordLayout("broken_event", "<Q", ("value",), 8)
    ladder = (
        AttachRung("verifier_reject", ("bad_verifier",)),
        AttachRung("missing_tracepoint", ("missing_tracepoint",)),
    )

    def decode(self, batch: bytes, ctx: EventContext) -> list[Event]:
        return []


@hookimpl
def jalki_register_probes(registry):
    registry.register(BrokenProbe())
'''


@pytest.fixture(scope="module")
def broken_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder that, on PYTHONPATH, holds an installed plugin ``brokentest`` with the broken probe."""
    from jalki_core.bpf_build import compile_source

    site = tmp_path_factory.mktemp("site")
    package = site / "jalki_brokentest"
    package.mkdir()
    (package / "__init__.py").write_text(PLUGIN_MODULE)
    compile_source(Path(__file__).with_name("bpf") / "broken_probe.bpf.c", package / "broken_probe.bpf.o")
    info = site / "jalki_brokentest-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: jalki-brokentest\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[jalki]\nbrokentest = jalki_brokentest\n")
    return site


def jalki_env(site: Path | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "XDG_RUNTIME_DIR", "JALKI_DEBUG")}
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def run_jalki(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([JALKI, *args], capture_output=True, text=True, env=env, timeout=120, check=False)


def summary_of(path: Path) -> dict[str, dict[str, Any]]:
    return {probe["probe"]: probe for probe in json.loads(path.read_text())["probes"]}


# --------------------------------------------------------------------------
# --rung
# --------------------------------------------------------------------------


def test_rung_forces_the_fallback_and_events_come_from_it(tmp_path: Path) -> None:
    """process_exec attaches on tp_btf here unless forced; with --rung tracepoint its events say tracepoint."""
    best = ProbeLoader(ProbeOptions(self_tgid=0)).load(JalkiPlugins().probes_for(["process_exec"])[0].probe)
    try:
        assert best.rung.name == "tp_btf", "the test needs a kernel whose best rung is not the forced one"
    finally:
        best.close()
    out, summary = tmp_path / "events.ndjson", tmp_path / "summary.json"
    proc = subprocess.Popen([JALKI, "run", "--plugin", "process_exec", "--plugin", "tcp_connect", "--rung",
                             "tracepoint", "--emit", f"file:{out}", "--summary-json", str(summary)],
                            stderr=subprocess.PIPE, text=True, env=jalki_env())
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:  # "tracing ..." once every probe is attached (warnings may come first)
        seen.append(line)
        if line.startswith("tracing"):
            break
    else:
        raise AssertionError("jalki did not start: " + "".join(seen))
    marker = tmp_path / "jalki-rung-marker"
    subprocess.run(["/bin/cp", "/bin/true", str(marker)], check=True)
    subprocess.run([str(marker)], check=True)
    proc.terminate()
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    probes = summary_of(summary)
    assert probes["process_exec"]["attach"] == "tracepoint"
    assert probes["tcp_connect"]["attach"] == "tracepoint"
    # only the forced rung was tried: no failed rung above it
    assert probes["process_exec"]["failed_rungs"] == [] and probes["tcp_connect"]["failed_rungs"] == []
    execs = [json.loads(text) for text in out.read_text().splitlines()]
    mine = [e for e in execs if e["type"] == "kernel.process.exec" and str(marker) in json.dumps(e)]
    assert mine and {e["attach"] for e in mine} == {"tracepoint"}


def test_rung_skips_and_reports_probes_without_it(tmp_path: Path) -> None:
    summary = tmp_path / "summary.json"
    result = run_jalki("run", "--plugin", "process_exit", "--plugin", "open_failed", "--rung", "tp_btf",
                       "--seconds", "0.2", "--summary-json", str(summary), env=jalki_env())
    assert result.returncode == 0, result.stderr
    probes = summary_of(summary)
    assert probes["process_exit"]["attach"] == "tp_btf"
    assert probes["open_failed"]["attach"] is None
    assert probes["open_failed"]["error"] == ("probe open_failed has no 'tp_btf' rung (its rungs: tracepoint) "
                                              "(pick one of its rungs, or leave --rung out for the whole ladder)")
    assert "open_failed: not attached: probe open_failed has no 'tp_btf' rung" in " ".join(result.stderr.split())


def test_rung_no_selected_probe_has_is_one_line_naming_their_rungs() -> None:
    result = run_jalki("run", "--plugin", "process_exit", "--plugin", "open_failed", "--rung", "tp_btfx",
                       "--seconds", "0.2", env=jalki_env())
    assert result.returncode == 2
    text = " ".join(result.stderr.split())
    assert text.startswith("error: no selected probe has a rung named 'tp_btfx' (process_exit: tp_btf, "
                           "tracepoint; open_failed: tracepoint)"), result.stderr
    assert "tracing" not in result.stderr


def test_rung_is_refused_by_the_daemon_in_one_line() -> None:
    result = run_jalki("serve", "--plugin", "process_exit", "--rung", "tracepoint", env=jalki_env())
    assert result.returncode == 2
    assert result.stderr.startswith("error: --rung is an option of a plain 'jalki run', not of the daemon")
    assert len(result.stderr.strip().splitlines()) <= 2  # one line, wrapped at 80 columns at most once


def test_loader_tries_only_the_forced_rung(broken_site: Path) -> None:
    from jalki_core.probe import ProbeResource

    sys.path.insert(0, str(broken_site))
    try:
        import jalki_brokentest
    finally:
        sys.path.remove(str(broken_site))
    probe = jalki_brokentest.BrokenProbe()
    assert ProbeResource.of(probe, "bpf_object").read_bytes()
    with pytest.raises(AttachLadderExhausted) as caught:
        ProbeLoader(ProbeOptions(self_tgid=0, rung="missing_tracepoint")).load(probe)
    assert [f.rung for f in caught.value.failures] == ["missing_tracepoint"]  # type: ignore[attr-defined]
    with pytest.raises(ProbeError, match=r"has no 'fexit' rung \(its rungs: verifier_reject, missing_tracepoint\)"):
        ProbeLoader(ProbeOptions(self_tgid=0, rung="fexit")).load(probe)


# --------------------------------------------------------------------------
# The verifier log of a rejected rung
# --------------------------------------------------------------------------


def test_rejected_load_shows_the_verifier_tail_and_the_full_log_path(broken_site: Path, tmp_path: Path) -> None:
    logs, summary = tmp_path / "logs", tmp_path / "summary.json"
    logs.mkdir()
    result = run_jalki("run", "--plugin", "brokentest", "--seconds", "0.2", "--verifier-log", str(logs),
                       "--summary-json", str(summary), env=jalki_env(broken_site))
    assert result.returncode != 0  # no probe could be attached
    full = logs / "verifier-broken_probe-verifier_reject.log"
    lines = [line.rstrip() for line in result.stderr.splitlines()]
    path_line = f"      {full}"
    assert lines[lines.index("    full verifier log:") + 1] == path_line  # on a line of its own, never broken
    # (the logging warning that broken_probe.bpf.o exports no layout to check is not part of the summary)
    summary_lines = lines[next(i for i, line in enumerate(lines) if "jalki run summary" in line):]
    assert summary_lines[-1].startswith("error: no probe could be attached")  # the one-line error, unwrapped
    assert all(len(line) <= 80 for line in summary_lines[:-1] if line != path_line), result.stderr
    at = lines.index("    verifier log, last lines:")
    assert lines[at - 2].startswith("  broken_probe: rung verifier_reject: load failed with E")  # wrapped once
    tail = lines[at + 1:lines.index("    full verifier log:")]
    # the last 4 lines of the log (a long one wraps under the indent), ending with the reason
    assert tail[-1] == f"      {VERIFIER_REASON}" and 1 < len(tail) <= 8, result.stderr
    assert all(line.startswith("      ") for line in tail)
    assert not any("processed" in line for line in tail)  # the statistics are not the reason
    text = full.read_text()
    assert VERIFIER_REASON in text and "processed 6 insns" in text and text.startswith(("0:", "arg#0", "func#0"))
    assert oct(full.stat().st_mode & 0o777) == oct(0o600)
    # the rung that failed without the verifier (attach, ENOENT) names no log file
    assert "rung missing_tracepoint: attach failed with ENOENT" in " ".join(result.stderr.split())
    verifier, attach = summary_of(summary)["broken_probe"]["failed_rungs"]
    assert verifier["log_file"] == str(full) and attach["log_file"] is None


def test_default_verifier_log_folder_is_the_runtime_dir(broken_site: Path, tmp_path: Path) -> None:
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    result = run_jalki("run", "--plugin", "brokentest", "--seconds", "0.2",
                       env=jalki_env(broken_site, XDG_RUNTIME_DIR=str(runtime)))
    full = runtime / "jalki" / "verifier-broken_probe-verifier_reject.log"
    assert f"      {full}" in result.stderr.splitlines(), result.stderr
    assert VERIFIER_REASON in full.read_text()


def test_verifier_log_folder_must_exist(broken_site: Path, tmp_path: Path) -> None:
    result = run_jalki("run", "--plugin", "brokentest", "--seconds", "0.2", "--verifier-log",
                       str(tmp_path / "nowhere"), env=jalki_env(broken_site))
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: --verifier-log {tmp_path / 'nowhere'} is not a writable folder")
