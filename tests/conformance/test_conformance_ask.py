"""Conformance of `jalki ask` (specs/ask.md) through the CLI's output and the public API only.

The kernel scenarios (refused, SYN-dropped, lossy, healthy) are in
tests/kernel/test_ask_scenarios.py; these tests need no traffic. Where they
must run without BPF privileges they drop every capability with ``setpriv``
(as root) or simply run unprivileged.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest

import jalki_core
from jalki_core.errors import UsageError
from jalki_core.kb import SEVERITIES, default_kb

JALKI = Path(sys.executable).with_name("jalki")
ASK_SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "specs" / "ask.schema.json").read_text())
DATABASE_FAILING = "why are connections to my database failing"


def unprivileged(argv: list[str]) -> list[str]:
    """``argv`` run with no capabilities at all, even as root."""
    if os.geteuid() != 0:
        return argv
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) is needed to drop capabilities"
    return [setpriv, "--bounding-set=-all", "--inh-caps=-all", *argv]


def jalki(*args: str, env: dict[str, str] | None = None, drop_caps: bool = False) -> subprocess.CompletedProcess[str]:
    argv = [str(JALKI), *args]
    return subprocess.run(unprivileged(argv) if drop_caps else argv, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "200", **(env or {})}, check=False)


def ask_json(*args: str, **options: Any) -> dict[str, Any]:
    result = jalki("ask", "--json", *args, **options)
    assert result.returncode == 0, result.stderr
    answer: dict[str, Any] = json.loads(result.stdout)
    jsonschema.validate(answer, ASK_SCHEMA)
    return answer


def test_no_match_json_lists_understood_words() -> None:
    answer = ask_json("--seconds", "1", "hello world")
    assert answer["mode"] == "no_match"
    assert answer["findings"] == [] and answer["matches"] == [] and answer["probes"] == []
    assert {"refused", "killed", "retransmit"} <= set(answer["understood_words"])


def test_no_match_text_is_one_line_with_words() -> None:
    result = jalki("ask", "hello", "world")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: no knowledge-base entry matches 'hello world'")
    assert "try e.g. " in lines[0] and "words understood: " in lines[0] and "connection" in lines[0]


def _severity_rank(severity: str) -> int:
    return SEVERITIES.index(severity)


def test_kb_only_without_capabilities() -> None:
    answer = ask_json("--seconds", "1", DATABASE_FAILING, drop_caps=True)
    assert answer["mode"] == "kb_only"
    assert answer["findings"] == [] and answer["probes"] == [] and answer["problem_found"] is False
    assert answer["answer"].startswith("Answered from the knowledge base only (no privileges")
    codes = {item["entry"]: item["code"] for item in answer["unobserved"]}
    assert codes["tcp_connect"] == "no_privileges"
    assert all("CAP_BPF" in item["reason"] for item in answer["unobserved"] if item["code"] == "no_privileges")
    causes = answer["possible_causes"]
    assert causes and causes[0]["severity"] == "error"
    ranks = [_severity_rank(cause["severity"]) for cause in causes]
    assert ranks == sorted(ranks, reverse=True)
    assert any(cause["interpretation"] == "connect_refused" and cause["errno"] == "ECONNREFUSED" for cause in causes)


def test_kb_only_text_says_so() -> None:
    result = jalki("ask", "--seconds", "1", DATABASE_FAILING, drop_caps=True)
    assert result.returncode == 0, result.stderr
    assert "(knowledge base only)" in result.stdout
    assert "no privileges" in result.stdout and "Could not observe" in result.stdout
    assert "connect_refused" in result.stdout


def test_kb_only_without_an_implementing_plugin(tmp_path: Path) -> None:
    # No plugin loads: only the core KB's entries, which no plugin implements, can answer.
    answer = ask_json("--seconds", "1", DATABASE_FAILING, env={"JALKI_PLUGINS": "no-such-plugin"})
    assert answer["mode"] == "kb_only" and answer["probes"] == []
    assert "no installed plugin implements" in answer["answer"]
    assert answer["unobserved"] and {item["code"] for item in answer["unobserved"]} == {"not_implemented"}
    assert all(item["reason"] == "no jalki plugin implements this probe yet" for item in answer["unobserved"])
    assert answer["possible_causes"]

    # An entry (here from the user's KB) implemented by a plugin that is not installed names the install.
    document = json.loads((Path(__file__).resolve().parents[2] / "kb" / "tcp.planned.json").read_text())
    entry = dict(document["entries"][0], id="zorblax_request", implemented_by={"plugin": "http",
                                                                                "probe": "http_request"},
                 answers=["Why does the zorblax gateway fail?"], keywords=["zorblax"], combine_with=[])
    entry["interpretations"] = [dict(rule, id=f"zorblax_{rule['id']}") for rule in entry["interpretations"]]
    (tmp_path / "http.json").write_text(json.dumps({**document, "entries": [entry]}))
    answer = ask_json("--seconds", "1", "why does the zorblax gateway fail",
                      env={"JALKI_KB_PATH": str(tmp_path)})
    assert answer["mode"] == "kb_only"
    [item] = [item for item in answer["unobserved"] if item["entry"] == "zorblax_request"]
    assert item["code"] == "plugin_not_installed" and "pip install jalki-http" in item["reason"]


def test_selection_follows_find_and_combine_with() -> None:
    kb = default_kb()
    matches = jalki_core.find(DATABASE_FAILING)
    relevant = [m.entry for m in matches if m.score * 2 >= matches[0].score][:6]
    implemented = {entry.id for entry in relevant if entry.implemented_by is not None}
    companions = {
        companion for entry in relevant for companion in entry.combine_with
        if (target := kb.get(companion)) is not None and target.implemented_by is not None
    }
    result = jalki_core.ask(DATABASE_FAILING, seconds=0.5)
    assert [m.entry.id for m in result.matches] == [m.entry.id for m in matches]
    not_implemented = {item.entry for item in result.unobserved if item.code == "not_implemented"}
    assert not_implemented == {entry.id for entry in relevant} - implemented
    if result.mode == "observed":
        assert set(result.selected) == implemented | companions
        assert list(result.selected)[: len(implemented)] == [e.id for e in relevant if e.id in implemented]
        assert {probe.probe for probe in result.probes} == {kb.get(e).implemented_by.probe  # type: ignore[union-attr]
                                                            for e in result.selected}
    else:  # no privileges here: the same entries are unobserved for that reason
        blocked = {item.entry for item in result.unobserved if item.code in ("no_privileges", "no_btf")}
        assert blocked == implemented | companions
    assert {"tcp_connect", "tcp_retransmit_skb", "tcp_close"} <= implemented | companions


@pytest.mark.parametrize(("args", "message"), [
    (["--seconds", "0", "connection refused"], "seconds must be positive"),
    (["--port", "70000", "connection refused"], "port must be between 1 and 65535"),
    (["--pid", "-3", "connection refused"], "pid must be a positive process id"),
    ([""], "the question is empty"),
])
def test_bad_arguments_are_one_line_exit_2(args: list[str], message: str) -> None:
    result = jalki("ask", *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("error:")


@pytest.mark.parametrize("options", [{"seconds": 0}, {"seconds": -1}, {"port": 0}, {"pid": 0}])
def test_api_rejects_bad_arguments(options: dict[str, Any]) -> None:
    with pytest.raises(UsageError):
        jalki_core.ask("connection refused", **options)


def test_ask_async_matches_ask() -> None:
    async def main() -> tuple[jalki_core.AskResult, int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.05)
                ticks += 1

        task = asyncio.create_task(ticker())
        result = await jalki_core.ask_async("packet loss on the network", seconds=0.5)
        task.cancel()
        return result, ticks

    result, ticks = asyncio.run(main())
    assert ticks >= 1  # the loop kept running while ask collected
    sync = jalki_core.ask("packet loss on the network", seconds=0.5)
    assert (result.mode, [m.entry.id for m in result.matches], result.selected) == (
        sync.mode, [m.entry.id for m in sync.matches], sync.selected)
    jsonschema.validate(result.as_dict(), ASK_SCHEMA)
