"""``jalki mcp --http``: loopback only, bearer token only; a wrong token gets 401 (real subprocess, real HTTP)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

JALKI = str(Path(sys.executable).with_name("jalki"))
INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
              "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                         "clientInfo": {"name": "test", "version": "0"}}}
HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}


def jalki(*args: str) -> subprocess.CompletedProcess[str]:
    # only this plugin loads, so stderr holds nothing but the command's own line
    return subprocess.run([JALKI, *args], capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "JALKI_PLUGINS": "mcp"})


def token_file(tmp_path: Path, mode: int = 0o600, token: str = "s3cret-token-0123456789") -> Path:
    path = tmp_path / "token"
    path.write_text(token + "\n")
    path.chmod(mode)
    return path


def test_refuses_a_non_loopback_bind_and_a_missing_or_weak_token(tmp_path: Path) -> None:
    good = token_file(tmp_path)
    cases = [
        (["--http", "0.0.0.0:8765", "--token-file", str(good)], "serves HTTP only on a loopback address"),
        (["--http", "192.0.2.1:8765", "--token-file", str(good)], "serves HTTP only on a loopback address"),
        (["--http", "127.0.0.1:8765"], "--http needs --token-file"),
        (["--http", "127.0.0.1:8765", "--token-file", str(tmp_path / "missing")], "no such file"),
        (["--token-file", str(good)], "--token-file applies only with --http"),
        (["--http", "127.0.0.1:99999", "--token-file", str(good)], "is not HOST:PORT"),
    ]
    for args, message in cases:
        result = jalki("mcp", *args)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    shared = token_file(tmp_path, mode=0o644)
    result = jalki("mcp", "--http", "127.0.0.1:8765", "--token-file", str(shared))
    assert result.returncode == 2 and "readable by others (mode 0644)" in result.stderr


def post(url: str, headers: dict[str, str]) -> tuple[int, dict[str, str], str]:
    """POST the initialize request; the status, headers and body (an HTTP error is returned, not raised)."""
    request = urllib.request.Request(url, data=json.dumps(INITIALIZE).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read(4096).decode()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read().decode()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_wrong_or_missing_token_gets_401_and_the_right_one_is_served(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "JALKI_SOCKET": str(tmp_path / "none.sock")}
    server = subprocess.Popen([JALKI, "mcp", "--http", f"127.0.0.1:{port}", "--token-file", str(token_file(tmp_path))],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                post(url, HEADERS)
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "jalki mcp --http did not start"
                time.sleep(0.2)
        missing = post(url, HEADERS)
        wrong = post(url, {**HEADERS, "authorization": "Bearer wrong"})
        right = post(url, {**HEADERS, "authorization": "Bearer s3cret-token-0123456789"})
        assert missing[0] == 401 and wrong[0] == 401
        assert {k.lower(): v for k, v in wrong[1].items()}["www-authenticate"].startswith("Bearer")
        assert right[0] == 200, right
        assert '"serverInfo"' in right[2] and '"jalki"' in right[2]
    finally:
        server.terminate()
        server.wait(30)
