"""jalki-mcp: ``jalki mcp``, an MCP server for AI agents, added through ``jalki_register_commands``.

The hook only registers the command function; the ``mcp`` SDK is imported
when ``jalki mcp`` runs (all of it in :mod:`jalki_mcp.server`), so loading
this plugin costs nothing to other commands or to the daemon.
"""

from __future__ import annotations

from typing import Any

from jalki_core import hookimpl

__version__ = "0.1.0"


@hookimpl
def jalki_register_commands(cli: Any) -> None:
    """Add ``jalki mcp``."""
    from jalki_mcp.command import mcp_command

    cli.command("mcp")(mcp_command)
