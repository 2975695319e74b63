"""``ask`` through MCP (a real MCP client over stdio to ``jalki mcp``) against a real daemon and real refused
connects in a network namespace, with issue 12's own question: the finding is the refused connect (ECONNREFUSED,
port 5432, the process), and its evidence ids are exactly those events, as ``get_events`` lists them."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests" / "kernel"))
from daemon_helpers import JALKI, running_daemon, wait_for
from jalki_mcp.tools import MAX_EVIDENCE_IDS
from mcp import Client, StdioServerParameters
from netns_helpers import NetNs, netns  # noqa: F401  (netns: the fixture)
from tcp_helpers import COMMAND

from jalki_core.sdk import Client as SdkClient

pytestmark = pytest.mark.kernel
QUESTION = "why can't my app reach port 5432"


def probes_asked_for(question: str) -> set[str]:
    """The probes ``ask`` attaches for ``question`` (the engine's own selection)."""
    from jalki_core.ask.engine import _relevant, _select
    from jalki_core.kb import default_kb, find
    from jalki_core.plugins import JalkiPlugins

    kb = default_kb()
    _, probes, _ = _select(_relevant(find(question, kb)), kb, JalkiPlugins())
    return set(probes)


def test_ask_through_mcp_names_port_and_process_with_evidence_ids(netns: NetNs, tmp_path: Path) -> None:  # noqa: F811
    # the namespace is private, so the question's own port is free there; ask(port=) keeps other tests'
    # refused connects on this host (the daemon sees every namespace) out of the answer
    port = 5432
    with running_daemon(tmp_path) as daemon:
        server = StdioServerParameters(command=JALKI, args=["mcp", "--socket", str(daemon.socket)],
                                       env={**os.environ})
        report: dict[str, Any] = {}

        needed = probes_asked_for(QUESTION)
        assert "tcp_connect" in needed

        def refuse_when_deployed() -> None:
            # the daemon deploys the probes one by one, then observes: refuse once all are attached
            with SdkClient(daemon.socket) as sdk:
                wait_for(lambda: set(sdk.status().probes) == needed, timeout=20, what=f"ask to deploy {needed}")
            report.update(netns.traffic("connect", "--port", str(port), "--count", "6", "--timeout", "2"))

        async def session() -> tuple[Any, Any, Any, Any]:
            async with Client(server, read_timeout_seconds=120) as client:
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(anyio.to_thread.run_sync, refuse_when_deployed)
                    answer = await client.call_tool("ask", {"question": QUESTION, "seconds": 5, "port": port})
                top = answer.structured_content["findings"][0]
                events = await client.call_tool("get_events", {"filters": {"probe": "tcp_connect",
                                                                           "dst_port": port}, "limit": 500})
                # how an agent fetches one evidence event: the cursor just before its seq
                first = top["evidence_ids"][0] if top["evidence_ids"] else 0
                fetched = await client.call_tool("get_events", {"filters": {"probe": "tcp_connect"},
                                                                "cursor": first - 1, "limit": 1})
                return answer, top, events, fetched

        answer, top, events, fetched = anyio.run(session)
    assert not answer.is_error, answer.content
    result = answer.structured_content
    assert result["daemon"] is True and result["mode"] == "observed" and result["problem_found"] is True
    assert [r["error"] for r in report["results"]] == ["ECONNREFUSED"] * 6
    # the right finding: nothing listening on the port, named by errno, port and process
    assert (top["entry"], top["interpretation"], top["severity"], top["errno"]) == (
        "tcp_connect", "connect_refused", "error", "ECONNREFUSED")
    assert f"127.0.0.1:{port}" in top["destinations"]
    assert f"{COMMAND} (pid {report['pid']})" in top["processes"]
    assert f"ECONNREFUSED to 127.0.0.1:{port}" in top["detail"] and str(port) in answer.content[0].text
    # exact evidence ids: the answer's own, not a re-read; every one a refused connect to the port
    listed = {e["seq"]: e for e in events.structured_content["events"]}
    evidence = top["evidence_ids"]
    assert evidence and set(evidence) <= set(listed)
    assert len(evidence) == min(top["evidence_ids_total"], MAX_EVIDENCE_IDS) and top["evidence_ids_total"] == top[
        "events"] >= 6
    for seq in evidence:
        assert listed[seq]["error"]["code"] == "ECONNREFUSED" and listed[seq]["network_data"]["dst_port"] == port
    assert top["evidence_event_ids"] == [listed[seq]["id"] for seq in evidence]
    # the probe also derives a repeated-failures anomaly from them: not a connect, not this finding's evidence
    ours = sorted(seq for seq, e in listed.items()
                  if e["type"] == "kernel.tcp.connect" and e["process_data"]["pid"] == report["pid"])
    assert len(ours) == 6
    assert [seq for seq in evidence if listed[seq]["process_data"]["pid"] == report["pid"]] == ours
    [one] = fetched.structured_content["events"]
    assert one["seq"] == evidence[0] and one["id"] == top["evidence_event_ids"][0]
