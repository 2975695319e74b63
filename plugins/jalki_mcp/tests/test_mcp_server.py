"""jalki mcp with real MCP clients (the ``mcp`` SDK's): in-memory and over stdio against ``jalki mcp``.

No daemon runs here (the socket path names nothing), so these also check
that every tool says so and that ``ask`` answers from the knowledge base.
``get_events`` against a real daemon holding 100,000 events is in
``test_mcp_events_history_kernel.py``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import anyio
import jsonschema
from jalki_mcp.server import build_server
from jalki_mcp.tools import MAX_LIMIT, JalkiTools
from mcp import Client, StdioServerParameters

JALKI = str(Path(sys.executable).with_name("jalki"))
READ_ONLY_TOOLS = {"find_probes", "list_probes", "ask", "get_events", "status", "explain"}
QUESTION = "why can't my app reach port 5432"


def run(coroutine: Any) -> Any:
    return anyio.run(lambda: coroutine)


async def tool_list(server: Any) -> dict[str, Any]:
    async with Client(server) as client:
        return {tool.name: tool for tool in (await client.list_tools()).tools}


def test_read_only_by_default_and_mutations_only_when_allowed(tmp_path: Path) -> None:
    tools = JalkiTools(tmp_path / "none.sock")
    read_only = run(tool_list(build_server(tools)))
    mutating = run(tool_list(build_server(tools, allow_mutations=True)))
    assert set(read_only) == READ_ONLY_TOOLS
    assert set(mutating) == READ_ONLY_TOOLS | {"deploy_probe", "undeploy_probe"}
    for name in READ_ONLY_TOOLS:
        assert read_only[name].annotations.read_only_hint is True
        assert read_only[name].output_schema is not None, name
    for name in ("deploy_probe", "undeploy_probe"):
        assert mutating[name].annotations.destructive_hint is True
        assert mutating[name].annotations.read_only_hint is False


def test_every_tool_answers_without_a_daemon_and_says_so(tmp_path: Path) -> None:
    socket = tmp_path / "none.sock"

    async def calls() -> dict[str, Any]:
        results = {}
        async with Client(build_server(JalkiTools(socket))) as client:
            schemas = {t.name: t.output_schema for t in (await client.list_tools()).tools}
            for name, arguments in [("status", {}), ("list_probes", {}), ("get_events", {}),
                                    ("ask", {"question": QUESTION, "seconds": 1}),
                                    ("find_probes", {"question": QUESTION})]:
                result = await client.call_tool(name, arguments)
                assert not result.is_error, result.content
                jsonschema.validate(result.structured_content, schemas[name])
                results[name] = (result.content[0].text, result.structured_content)
        return results

    results = run(calls())
    for name in ("status", "list_probes", "get_events", "ask"):
        _, structured = results[name]
        assert structured["daemon"] is False and str(socket) in structured["note"], name
    assert results["ask"][1]["mode"] == "kb_only" and results["ask"][1]["findings"] == []
    assert "tcp_connect" in results["list_probes"][1]["note"] or results["list_probes"][1]["probes"]
    assert "no daemon" in results["status"][0].lower()
    assert results["find_probes"][1]["matches"], results["find_probes"]


def test_bad_arguments_are_tool_errors_with_one_line(tmp_path: Path) -> None:
    async def calls() -> list[Any]:
        async with Client(build_server(JalkiTools(tmp_path / "none.sock"))) as client:
            return [await client.call_tool("get_events", {"limit": MAX_LIMIT + 1}),
                    await client.call_tool("explain", {"entry": "no_such_entry"}),
                    await client.call_tool("ask", {"question": QUESTION, "seconds": 301})]

    too_many, unknown, too_long = run(calls())
    assert too_many.is_error and "less than or equal to 500" in too_many.content[0].text
    assert unknown.is_error and "unknown knowledge-base entry 'no_such_entry'" in unknown.content[0].text
    assert too_long.is_error


def stdio_server(tmp_path: Path, *args: str) -> StdioServerParameters:
    env = {**os.environ, "JALKI_SOCKET": str(tmp_path / "none.sock")}
    return StdioServerParameters(command=JALKI, args=["mcp", *args], env=env)


def test_stdio_subprocess_lists_tools_and_answers(tmp_path: Path) -> None:
    async def session(*args: str) -> tuple[set[str], Any]:
        async with Client(stdio_server(tmp_path, *args)) as client:
            names = {tool.name for tool in (await client.list_tools()).tools}
            return names, await client.call_tool("ask", {"question": QUESTION, "seconds": 1})

    names, answer = run(session())
    assert names == READ_ONLY_TOOLS
    assert answer.structured_content["daemon"] is False and answer.structured_content["mode"] == "kb_only"
    names, _ = run(session("--allow-mutations"))
    assert names == READ_ONLY_TOOLS | {"deploy_probe", "undeploy_probe"}
