"""``ask`` through MCP (a real MCP client over stdio to ``jalki mcp``) against a real daemon and real refused
connects in a network namespace: the finding names the port and the process and gives evidence ids that
``get_events`` returns."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests" / "kernel"))
from daemon_helpers import JALKI, running_daemon, wait_for
from mcp import Client, StdioServerParameters
from netns_helpers import NetNs, netns  # noqa: F401  (netns: the fixture)
from tcp_helpers import COMMAND

from jalki_core.sdk import Client as SdkClient

pytestmark = pytest.mark.kernel
QUESTION = "why can't my app connect to port 5432"


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

        async def session() -> tuple[Any, Any]:
            async with Client(server, read_timeout_seconds=120) as client:
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(anyio.to_thread.run_sync, refuse_when_deployed)
                    answer = await client.call_tool("ask", {"question": QUESTION, "seconds": 5, "port": port})
                top = answer.structured_content["findings"][0]
                events = await client.call_tool("get_events", {"filters": {"probe": "tcp_connect",
                                                                           "dst_port": port}, "limit": 500})
                return answer, (top, events)

        answer, (top, events) = anyio.run(session)
    assert not answer.is_error, answer.content
    result = answer.structured_content
    assert result["daemon"] is True and result["mode"] == "observed" and result["problem_found"] is True
    assert [r["error"] for r in report["results"]] == ["ECONNREFUSED"] * 6
    assert (top["interpretation"], top["severity"]) == ("connect_refused", "error")
    assert f"127.0.0.1:{port}" in top["destinations"]
    assert f"{COMMAND} (pid {report['pid']})" in top["processes"]
    assert str(port) in answer.content[0].text or str(port) in top["detail"]
    listed = {e["seq"]: e for e in events.structured_content["events"]}
    ours = [seq for seq in top["evidence_ids"]
            if listed.get(seq, {}).get("process_data", {}).get("pid") == report["pid"]]
    assert len(ours) == 6 and top["evidence_ids_total"] >= 6
    for seq in ours:
        assert listed[seq]["error"]["code"] == "ECONNREFUSED" and listed[seq]["network_data"]["dst_port"] == port
