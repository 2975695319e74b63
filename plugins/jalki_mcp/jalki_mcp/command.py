"""``jalki mcp``: its options, checked before anything is served (one clear line for each mistake).

The command refuses, with one line naming the fix: ``--http`` on an address
that is not loopback, ``--http`` without ``--token-file``, a token file that
is missing, empty, too short or readable by others, and ``--token-file``
without ``--http``. Only then is :mod:`jalki_mcp.server` (the ``mcp`` SDK)
imported.
"""

from __future__ import annotations

import ipaddress
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from jalki_core.errors import UsageError

MIN_TOKEN_CHARS = 16
"""Shortest bearer token accepted: a guessable token on a shared host is no protection."""


@dataclass(frozen=True)
class HttpEndpoint:
    """Where ``--http`` serves: a loopback host and a port."""

    host: str
    port: int


@dataclass(frozen=True)
class McpOptions:
    """What ``jalki mcp`` was asked to do, checked."""

    socket: Path | None
    allow_mutations: bool
    http: HttpEndpoint | None = None
    token: str | None = None


def parse_loopback(text: str) -> HttpEndpoint:
    """``127.0.0.1:PORT``, ``[::1]:PORT`` or ``localhost:PORT``; any other host is refused in one line."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise UsageError(f"--http {text!r} is not HOST:PORT", hint="use e.g. --http 127.0.0.1:8765")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host == "localhost":
        host = "127.0.0.1"
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise UsageError(f"--http {text!r}: jalki mcp serves HTTP only on a loopback address",
                         hint="use 127.0.0.1:PORT or [::1]:PORT; reach it from elsewhere through an SSH tunnel")
    return HttpEndpoint(host, int(port_text))


def read_token(path: Path) -> str:
    """The bearer token in ``path`` (surrounding white space stripped); refused unless private and long enough."""
    try:
        info = path.stat()
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise UsageError(f"--token-file {path}: no such file",
                         hint="create one: (umask 077; head -c 32 /dev/urandom | base64 > FILE)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--token-file {path}: cannot read it: {exc}") from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise UsageError(f"--token-file {path} is readable by others (mode {stat.S_IMODE(info.st_mode):04o})",
                         hint=f"chmod 600 {path}")
    if len(text) < MIN_TOKEN_CHARS or any(char.isspace() for char in text):
        raise UsageError(f"--token-file {path}: the token must be one word of at least {MIN_TOKEN_CHARS} characters",
                         hint="create one: (umask 077; head -c 32 /dev/urandom | base64 > FILE)")
    return text


def check_options(socket: Path | None, allow_mutations: bool, http: str | None, token_file: Path | None
                  ) -> McpOptions:
    """The checked options, or :class:`UsageError` with one line naming the fix."""
    if http is None:
        if token_file is not None:
            raise UsageError("--token-file applies only with --http", hint="drop it, or serve HTTP with --http")
        return McpOptions(socket, allow_mutations)
    endpoint = parse_loopback(http)
    if token_file is None:
        raise UsageError("--http needs --token-file: jalki mcp serves HTTP only to clients with a bearer token",
                         hint="create one: (umask 077; head -c 32 /dev/urandom | base64 > FILE)")
    return McpOptions(socket, allow_mutations, endpoint, read_token(token_file))


def mcp_command(
    socket: Annotated[Path | None, typer.Option("--socket", readable=False, help="The daemon's API socket "
                                                "(default: $JALKI_SOCKET or /run/jalki/jalki.sock).")] = None,
    allow_mutations: Annotated[bool, typer.Option("--allow-mutations", help="Also offer deploy_probe and "
                                                  "undeploy_probe (they change what the daemon traces).")] = False,
    http: Annotated[str | None, typer.Option("--http", metavar="127.0.0.1:PORT", help="Serve streamable HTTP on "
                                             "this loopback address instead of stdio (needs --token-file).")] = None,
    token_file: Annotated[Path | None, typer.Option("--token-file", readable=False, help="File holding the bearer "
                                                    "token HTTP clients must send (mode 0600).")] = None,
) -> None:
    """Serve jalki to AI agents over MCP (stdio by default; read-only unless --allow-mutations)."""
    options = check_options(socket, allow_mutations, http, token_file)
    if socket is None and os.environ.get("JALKI_SOCKET"):
        options = McpOptions(Path(os.environ["JALKI_SOCKET"]), options.allow_mutations, options.http, options.token)
    from jalki_mcp.server import serve

    serve(options)
