"""Helpers for daemon kernel tests: `jalki run --serve` as a real subprocess, and its clients.

::

    with running_daemon(tmp_path, "-p", "tcp_connect") as daemon:
        with daemon.client() as client:
            client.deploy("tcp_close")
        result = daemon.cli("status", "--json")       # `jalki status --json --socket …`

The context manager starts the daemon with ``--socket <tmp>/s.sock --history
<tmp>/h.db --metrics-addr off`` (each replaced when ``args`` names it; ``metrics=True``
serves metrics on a free local port, see ``.metrics_url``), waits until it answers
``ping``, and on a clean exit of the body stops it with SIGTERM, asserting exit
status 0 and that the socket file is gone. A body that stopped the daemon itself
(:meth:`Daemon.stop`) gets the same checks.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket as socket_module
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jalki_core.errors import DaemonUnavailable
from jalki_core.sdk import Client

JALKI = str(Path(sys.executable).with_name("jalki"))
"""The venv's ``jalki`` console script."""

START_TIMEOUT_S = 30.0

CLI_ENV = {**os.environ, "COLUMNS": "200"}
"""The environment of client commands: wide enough that rich never folds a table cell."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket_module.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05, what: str = "") -> Any:
    """Poll ``condition`` until it returns something truthy; return that, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what or condition}")
        time.sleep(interval)


@dataclass
class Daemon:
    """A running ``jalki run --serve`` subprocess."""

    proc: subprocess.Popen[str]
    socket: Path
    history: Path | None
    metrics_url: str | None
    stderr_lines: list[str] = field(default_factory=list)
    _reader: threading.Thread | None = None

    @property
    def stderr(self) -> str:
        """What the daemon wrote to stderr so far (all of it once it exited)."""
        if self.proc.poll() is not None and self._reader is not None:
            self._reader.join(10)
        return "".join(self.stderr_lines)

    def client(self, timeout: float | None = 30.0) -> Client:
        """A new connection to the daemon (use it as a context manager)."""
        return Client(self.socket, timeout=timeout)

    def cli(self, *args: str, timeout: float = 60, user: list[str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``jalki <args> --socket <socket>`` (optionally behind ``user``, e.g. a setpriv prefix).

        Rich output is laid out 200 columns wide (``COLUMNS``), so table cells are not folded.
        """
        return subprocess.run([*(user or []), JALKI, *args, "--socket", str(self.socket)], capture_output=True,
                              text=True, timeout=timeout, check=False, env=CLI_ENV)

    def popen(self, *args: str) -> subprocess.Popen[str]:
        """Start ``jalki <args> --socket <socket>`` in the background (stdout and stderr piped)."""
        return subprocess.Popen([JALKI, *args, "--socket", str(self.socket)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=CLI_ENV)

    def send_signal(self, signum: int) -> None:
        """Send a signal to the daemon."""
        self.proc.send_signal(signum)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Stop the daemon with ``signum``; return its exit status (the stderr is in :attr:`stderr`)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"the daemon did not stop within {timeout:g}s: {self.stderr}") from None


def _arg_value(args: tuple[str, ...], option: str) -> str | None:
    for index, arg in enumerate(args):
        if arg == option and index + 1 < len(args):
            return args[index + 1]
        if arg.startswith(option + "="):
            return arg.split("=", 1)[1]
    return None


@contextlib.contextmanager
def running_daemon(tmp_path: Path, *args: str, metrics: bool = False,
                   env: dict[str, str] | None = None) -> Iterator[Daemon]:
    """Start ``jalki run --serve`` with ``args``; yield a :class:`Daemon`; stop it with SIGTERM (exit 0 asserted)."""
    argv = [JALKI, "run", "--serve", *args]
    socket_text = _arg_value(args, "--socket")
    if socket_text is None:
        socket_text = str(tmp_path / "s.sock")
        argv += ["--socket", socket_text]
    history_text = _arg_value(args, "--history")
    if history_text is None:
        history_text = str(tmp_path / "h.db")
        argv += ["--history", history_text]
    metrics_addr = _arg_value(args, "--metrics-addr")
    if metrics_addr is None:
        metrics_addr = f"127.0.0.1:{free_port()}" if metrics else "off"
        argv += ["--metrics-addr", metrics_addr]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    daemon = Daemon(proc, Path(socket_text), None if history_text == "off" else Path(history_text),
                    None if metrics_addr == "off" else f"http://{metrics_addr}")

    def read_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            daemon.stderr_lines.append(line)

    daemon._reader = threading.Thread(target=read_stderr, daemon=True)
    daemon._reader.start()
    try:
        _wait_until_serving(daemon)
    except BaseException:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        raise
    try:
        yield daemon
    except BaseException:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        raise
    returncode = daemon.stop()
    assert returncode == 0, f"the daemon exited {returncode}: {daemon.stderr}"
    assert not daemon.socket.exists() and not daemon.socket.is_symlink(), "the daemon left its socket behind"


def _wait_until_serving(daemon: Daemon) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if daemon.proc.poll() is not None:
            raise AssertionError(f"the daemon exited {daemon.proc.returncode} at start: {daemon.stderr}")
        if daemon.socket.exists():
            try:
                with daemon.client(timeout=5) as client:
                    if client.ping()["pong"] is True:
                        return
            except DaemonUnavailable:
                pass
        time.sleep(0.05)
    raise AssertionError(f"the daemon did not answer within {START_TIMEOUT_S:g}s: {daemon.stderr}")
