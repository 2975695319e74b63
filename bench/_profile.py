"""Profiles for ``run_bench.py --profile``: py-spy when installed, else cProfile.

py-spy samples every thread of a process from outside (``py-spy record
--pid``), so it sees jalki's drain thread and its emitter thread alike; it
writes collapsed stacks (``--format raw``), from which :func:`top_functions`
ranks functions by self and cumulative samples. Without py-spy, cProfile
profiles only the thread it runs in (the drain loop, not the emitter thread).
"""

from __future__ import annotations

import contextlib
import cProfile
import io
import os
import pstats
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

PY_SPY_RATE = 250
"""Samples per second (py-spy's default is 100)."""

_LINE = re.compile(r":\d+\)$")


def py_spy() -> str | None:
    """The py-spy executable next to this interpreter or on PATH, or None."""
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.is_file() else shutil.which("py-spy")


def _frame_name(frame: str) -> str:
    """``decode (probes.py:288)`` → ``decode (probes.py)``: one row per function, not per line."""
    return _LINE.sub(")", frame.strip())


def top_functions(collapsed: str, top: int = 15) -> list[tuple[str, int, int]]:
    """(function, self samples, cumulative samples) of the ``top`` functions by cumulative samples.

    ``collapsed``: py-spy's ``raw`` output, one ``frame;frame;...;leaf COUNT``
    line per distinct stack, outermost frame first. A function counts once per
    stack for its cumulative samples, however often it recurses.
    """
    self_samples: Counter[str] = Counter()
    cumulative: Counter[str] = Counter()
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(frame) for frame in stack.split(";") if frame.strip()]
        if not frames:
            continue
        self_samples[frames[-1]] += count
        for name in set(frames):
            cumulative[name] += count
    ranked = sorted(cumulative, key=lambda name: (-cumulative[name], -self_samples[name], name))
    return [(name, self_samples[name], cumulative[name]) for name in ranked[:top]]


def top_by_self(collapsed: str, top: int = 15) -> list[tuple[str, int, int]]:
    """Like :func:`top_functions`, ranked by self samples."""
    rows = top_functions(collapsed, top=10**9)
    return sorted(rows, key=lambda row: (-row[1], -row[2], row[0]))[:top]


def format_top(collapsed: str, top: int = 15) -> str:
    """Two tables (by cumulative, by self samples) as text, with shares of all samples."""
    total = sum(int(line.rpartition(" ")[2]) for line in collapsed.splitlines() if line.rpartition(" ")[2].isdigit())
    out = [f"{total} samples"]
    for title, rows in (
        ("by cumulative samples", top_functions(collapsed, top)),
        ("by self samples", top_by_self(collapsed, top)),
    ):
        out.append(f"\ntop {top} {title}:\n{'self %':>7} {'cum %':>7}  function")
        for name, own, cumulative in rows:
            out.append(f"{100 * own / max(total, 1):7.1f} {100 * cumulative / max(total, 1):7.1f}  {name}")
    return "\n".join(out) + "\n"


class PySpyRecorder:
    """``py-spy record`` of one process into collapsed stacks; stopped by :meth:`stop` or the target's exit."""

    def __init__(self, pid: int, out: Path) -> None:
        exe = py_spy()
        if exe is None:
            raise RuntimeError("py-spy not installed (.venv/bin/pip install py-spy)")
        self.out = out
        self.log = out.with_suffix(".py-spy.log")
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    exe,
                    "record",
                    "--pid",
                    str(pid),
                    "--rate",
                    str(PY_SPY_RATE),
                    "--format",
                    "raw",
                    "--nonblocking",
                    "-o",
                    str(out),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._wait_attached()

    def _wait_attached(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            if "Sampling process" in self.log.read_text(errors="replace"):
                return
            time.sleep(0.05)

    def stop(self, timeout: float = 30.0) -> str:
        """Stop sampling (SIGINT, as Ctrl-C) unless the target already exited; return the collapsed stacks."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return self.out.read_text(errors="replace") if self.out.exists() else ""


@contextlib.contextmanager
def profile_this_process(out_dir: Path, name: str) -> Iterator[dict[str, str]]:
    """Profile the enclosed code: py-spy on this process (all threads), else cProfile (this thread).

    Yields a dict that holds, after the block, ``tool``, ``path`` (the raw
    profile) and ``top`` (the summary text, also written to ``<name>.top.txt``).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    info: dict[str, str] = {}
    if py_spy() is not None:
        recorder = PySpyRecorder(os.getpid(), out_dir / f"{name}.collapsed.txt")
        try:
            yield info
        finally:
            collapsed = recorder.stop()
            info.update(tool="py-spy", path=str(recorder.out), top=format_top(collapsed))
    else:
        profiler = cProfile.Profile()
        profiler.enable()
        try:
            yield info
        finally:
            profiler.disable()
            path = out_dir / f"{name}.pstats"
            profiler.dump_stats(path)
            info.update(tool="cProfile (this thread only)", path=str(path), top=format_pstats(path))
    (out_dir / f"{name}.top.txt").write_text(info["top"])


def format_pstats(path: Path, top: int = 15) -> str:
    """The top functions of a cProfile dump, by cumulative and by self (internal) time."""
    stream = io.StringIO()
    stats = pstats.Stats(str(path), stream=stream)
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)
    return stream.getvalue()
