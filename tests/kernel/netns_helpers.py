"""Kernel-test helpers: network namespaces, traffic, and an in-process tracing session."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from jalki_core.loader import ProbeOptions
from jalki_core.probe import Probe
from jalki_core.session import SessionSummary, TraceSession
from jalki_core.testing import MemoryEmitter

TRAFFIC = Path(__file__).with_name("traffic.py")


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command, raising with its output on failure."""
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


@dataclass
class NetNs:
    """A network namespace made for one test (removed afterwards)."""

    name: str
    inode: int
    servers: list[subprocess.Popen[str]] = field(default_factory=list)

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", self.name, *argv)

    def sysctl(self, key: str, value: str) -> None:
        self.run("sysctl", "-q", "-w", f"{key}={value}")

    def nft(self, script: str) -> None:
        """Load an nft ruleset script inside the namespace."""
        result = subprocess.run(["ip", "netns", "exec", self.name, "nft", "-f", "-"], input=script,
                                capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"nft failed: {result.stderr.strip()}")

    def traffic(self, *args: str, timeout: float = 60) -> dict[str, Any]:
        """Run tests/kernel/traffic.py in the namespace; return its JSON report."""
        result = subprocess.run(
            ["ip", "netns", "exec", self.name, sys.executable, str(TRAFFIC), *args],
            capture_output=True, text=True, timeout=timeout, check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"traffic {args} failed: {result.stderr.strip()}")
        report: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
        return report

    def spawn(self, *args: str) -> tuple[subprocess.Popen[str], dict[str, Any]]:
        """Start a long-running traffic.py command; return it and its first JSON line."""
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.name, sys.executable, str(TRAFFIC), *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.servers.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"traffic {args} exited: {proc.stderr.read() if proc.stderr else ''}")
        return proc, json.loads(line)

    def server(self, *args: str) -> dict[str, Any]:
        """Start traffic.py serve in the namespace; return its report (pid, port)."""
        _, report = self.spawn("serve", *args)
        return report


@pytest.fixture
def netns() -> Iterator[NetNs]:
    """A fresh network namespace with loopback up."""
    name = f"jalki-t-{secrets.token_hex(3)}"
    sh("ip", "netns", "add", name)
    try:
        sh("ip", "-n", name, "link", "set", "lo", "up")
        ns = NetNs(name, Path(f"/run/netns/{name}").stat().st_ino)
        yield ns
    finally:
        for proc in locals().get("ns", NetNs(name, 0)).servers:
            proc.kill()
            proc.wait()
        sh("ip", "netns", "del", name, check=False)


@dataclass
class Trace:
    """Events collected by a running in-process session."""

    session: TraceSession
    emitter: MemoryEmitter
    summary: SessionSummary | None = None

    def events(self, event_type: str | None = None, netns: int | None = None) -> list[dict[str, Any]]:
        return [
            event for event in self.emitter.events
            if (event_type is None or event["type"] == event_type)
            and (netns is None or event.get("network_data", {}).get("netns") == netns)
        ]


@contextmanager
def tracing(probes: Sequence[Probe], options: ProbeOptions | None = None, *, strict: bool = False) -> Iterator[Trace]:
    """Run a real session on a background thread while the body makes traffic."""
    emitter = MemoryEmitter()
    session = TraceSession(probes, [emitter], options=options, strict=strict, cluster="kernel-test")
    session.start()
    trace = Trace(session, emitter)
    thread = threading.Thread(target=session.run, daemon=True)
    thread.start()
    try:
        yield trace
    finally:
        session.request_stop()
        thread.join(timeout=10)
        trace.summary = session.stop()
