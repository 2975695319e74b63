"""The MCP server of ``jalki mcp``: every import of the ``mcp`` SDK is in this module.

:func:`build_server` publishes the tools of :class:`jalki_mcp.tools.JalkiTools`
with their input and output schemas; each result is structured content (the
tool's pydantic model) plus a short text summary. Read-only tools are
annotated ``read_only_hint``; ``deploy_probe`` and ``undeploy_probe`` exist
only with ``allow_mutations`` and are annotated destructive.
:func:`serve` runs it on stdio (logs on stderr only) or, with an HTTP
endpoint, as streamable HTTP behind :class:`BearerAuth` on loopback.
"""

from __future__ import annotations

import hmac
import logging
from typing import Annotated, Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import BaseModel, Field

from jalki_core.errors import JalkiError
from jalki_core.version import __version__
from jalki_mcp.command import McpOptions
from jalki_mcp.tools import (
    DEFAULT_LIMIT,
    K8S_NOTE,
    MAX_LIMIT,
    AskToolResult,
    DeployResult,
    EventFilters,
    EventsResult,
    ExplainResult,
    FindProbesResult,
    JalkiTools,
    ListProbesResult,
    StatusResult,
)

log = logging.getLogger("jalki.mcp")

READ_ONLY = ToolAnnotations(read_only_hint=True, destructive_hint=False, open_world_hint=False)
DESTRUCTIVE = ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=True,
                              open_world_hint=False)

INSTRUCTIONS = (
    "jalki observes the Linux kernel with eBPF. To answer 'why' questions about a host (connections refused, "
    "timeouts, crashes, OOM kills, slow disks), call ask with the question; its findings name the destination, "
    "the process (and pod) and the seq ids of their evidence events, which get_events lists (filters, cursor). "
    "On Kubernetes, ask and get_events take pod, namespace, container and workload to look at one of them. "
    "find_probes and explain read the knowledge base; status and list_probes show what the daemon traces."
)


def _result(summary: str, model: BaseModel) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=summary)],
                          structured_content=model.model_dump(mode="json"))


def build_server(tools: JalkiTools, *, allow_mutations: bool = False) -> MCPServer[Any]:
    """The MCP server over ``tools``; the mutating tools are added only with ``allow_mutations``."""
    server: MCPServer[Any] = MCPServer("jalki", version=__version__, instructions=INSTRUCTIONS, log_level="WARNING")

    @server.tool(annotations=READ_ONLY)
    async def find_probes(question: str) -> Annotated[CallToolResult, FindProbesResult]:
        """Knowledge-base entries (kernel functions and tracepoints, with the probe that observes them) that
        answer a question, best first. Needs no daemon."""
        return _result(*_checked(tools.find_probes, question))

    @server.tool(annotations=READ_ONLY)
    async def list_probes() -> Annotated[CallToolResult, ListProbesResult]:
        """The installed probes: what each observes, its event types, and whether the daemon runs it."""
        return _result(*await _checked_async(tools.list_probes()))

    @server.tool(annotations=READ_ONLY)
    async def ask(
        question: Annotated[str, Field(description="e.g. why can't my app reach port 5432")],
        seconds: Annotated[float, Field(gt=0, le=300, description="How long to observe.")] = 10,
        pid: Annotated[int | None, Field(ge=1, le=4_194_304, description="Only this process.")] = None,
        port: Annotated[int | None, Field(ge=1, le=65535, description="Only this source or destination port.")
                        ] = None,
        pod: Annotated[str | None, Field(description=K8S_NOTE.format("this pod name"))] = None,
        namespace: Annotated[str | None, Field(description=K8S_NOTE.format("this namespace"))] = None,
        container: Annotated[str | None, Field(description=K8S_NOTE.format("this container name"))] = None,
        workload: Annotated[str | None, Field(description=K8S_NOTE.format(
            "this workload: NAME of any kind, or KIND/NAME (e.g. deployment/checkout)"))] = None,
    ) -> Annotated[CallToolResult, AskToolResult]:
        """Ask the kernel why: the daemon deploys the probes the question needs, observes for `seconds` and
        answers with findings (destination, process, pod, evidence event ids); with pod, namespace, container
        or workload only those events are evaluated, and the answer says so. Without a daemon, the knowledge
        base alone answers and the result says so."""
        return _result(*await _checked_async(tools.ask(question, seconds, pid, port, pod, namespace, container,
                                                       workload)))

    @server.tool(annotations=READ_ONLY)
    async def get_events(
        filters: EventFilters | None = None,
        limit: Annotated[int, Field(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
        cursor: Annotated[int | None, Field(ge=0, description="next_cursor of the previous call.")] = None,
    ) -> Annotated[CallToolResult, EventsResult]:
        """Events the daemon holds: a summary first (counts by type, destination, process, pod), then at most
        `limit` events oldest first, with truncated, next_cursor and dropped. filters (all set must match)
        include pod, namespace, container and workload (Kubernetes names, daemon with --enrich k8s)."""
        return _result(*await _checked_async(tools.get_events(filters, limit, cursor)))

    @server.tool(annotations=READ_ONLY)
    async def status() -> Annotated[CallToolResult, StatusResult]:
        """The daemon's deployed probes, their events and losses by cause; or that no daemon runs."""
        return _result(*await _checked_async(tools.status()))

    @server.tool(annotations=READ_ONLY)
    async def explain(
        entry: Annotated[str, Field(description="A knowledge-base entry id, e.g. tcp_connect.")],
        fields: Annotated[dict[str, str] | None, Field(description="Event field values, e.g. "
                                                       "{\"error.code\": \"ECONNREFUSED\"}.")] = None,
    ) -> Annotated[CallToolResult, ExplainResult]:
        """Which interpretations of a knowledge-base entry hold for the given event field values."""
        return _result(*_checked(tools.explain, entry, fields or {}))

    if allow_mutations:
        @server.tool(annotations=DESTRUCTIVE)
        async def deploy_probe(
            probe: str,
            ttl: Annotated[float | None, Field(gt=0, le=604_800, description="Seconds until it is undeployed.")
                           ] = None,
            sample: Annotated[float | None, Field(gt=0, le=1)] = None,
            pid: Annotated[int | None, Field(ge=1, le=4_194_304)] = None,
            port: Annotated[int | None, Field(ge=1, le=65535)] = None,
        ) -> Annotated[CallToolResult, DeployResult]:
            """Attach a probe in the daemon (changes what the host traces; idempotent)."""
            return _result(*await _checked_async(tools.deploy_probe(probe, ttl, sample, pid, port)))

        @server.tool(annotations=DESTRUCTIVE)
        async def undeploy_probe(probe: str) -> Annotated[CallToolResult, DeployResult]:
            """Detach a probe from the daemon (its past events stay queryable)."""
            return _result(*await _checked_async(tools.undeploy_probe(probe)))

    return server


def _checked(function: Any, *args: Any) -> Any:
    try:
        return function(*args)
    except JalkiError as exc:
        raise ToolError(exc.one_line()) from exc


async def _checked_async(call: Any) -> Any:
    try:
        return await call
    except JalkiError as exc:
        raise ToolError(exc.one_line()) from exc


class BearerAuth:
    """ASGI middleware: every HTTP request must carry ``Authorization: Bearer <token>``, else 401."""

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self._expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            given = dict(scope.get("headers") or ()).get(b"authorization", b"")
            if not hmac.compare_digest(given, self._expected):  # constant time: the token is not guessed by timing
                body = b'{"error": "unauthorized: send Authorization: Bearer <token from --token-file>"}'
                await send({"type": "http.response.start", "status": 401,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"www-authenticate", b'Bearer realm="jalki"'),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def http_app(server: MCPServer[Any], host: str, token: str) -> Any:
    """The streamable-HTTP ASGI app of ``server`` behind :class:`BearerAuth`."""
    return BearerAuth(server.streamable_http_app(host=host), token)


def serve(options: McpOptions) -> None:
    """Serve until the client goes away (stdio) or SIGINT/SIGTERM (HTTP)."""
    import anyio

    server = build_server(JalkiTools(options.socket), allow_mutations=options.allow_mutations)
    if options.http is None:
        anyio.run(server.run_stdio_async)
        return
    import uvicorn

    assert options.token is not None  # checked by the command
    config = uvicorn.Config(http_app(server, options.http.host, options.token), host=options.http.host,
                            port=options.http.port, log_level="warning")
    print(f"jalki mcp: serving streamable HTTP on http://{_url_host(options.http.host)}:{options.http.port}/mcp",
          file=__import__("sys").stderr, flush=True)
    uvicorn.Server(config).run()


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
