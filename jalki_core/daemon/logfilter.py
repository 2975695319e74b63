"""Rate limiting of repeated log lines in the daemon.

A condition that repeats in a tight loop (asyncio's ``socket.accept() out of
system resource`` when the process runs out of file descriptors, a consumer
that fails on every batch) must not turn stderr into gigabytes: each distinct
line (logger, level and the first line of its text) is written at most
:data:`BURST` times per :data:`WINDOW_S`; the next one written after the
window says how many were suppressed.
"""

from __future__ import annotations

import logging
import threading
import time

WINDOW_S = 10.0
"""The window over which a repeated line is counted."""

BURST = 5
"""Times one line is written per window; further repeats are counted, then summarised."""

MAX_KEYS = 1024
"""Distinct lines tracked at once (the oldest windows are forgotten beyond it)."""


class RepeatFilter(logging.Filter):
    """A handler filter that writes each distinct line at most :data:`BURST` times per :data:`WINDOW_S`."""

    def __init__(self, window_s: float = WINDOW_S, burst: int = BURST) -> None:
        super().__init__()
        self.window_s = window_s
        self.burst = burst
        self.suppressed_total = 0
        self._lock = threading.Lock()
        self._windows: dict[tuple[str, int, str], list[float | int]] = {}  # key -> [start, written, suppressed]

    def filter(self, record: logging.LogRecord) -> bool:
        """Let the record through, or count it as suppressed."""
        try:
            text = record.getMessage()
        except Exception:  # a bad format string: let logging report it
            return True
        key = (record.name, record.levelno, text.split("\n", 1)[0][:200])
        now = time.monotonic()
        with self._lock:
            window = self._windows.get(key)
            if window is None or now - window[0] >= self.window_s:
                suppressed = int(window[2]) if window is not None else 0
                if len(self._windows) >= MAX_KEYS and window is None:
                    self._windows.pop(next(iter(self._windows)))
                self._windows[key] = [now, 1, 0]
                if suppressed:
                    record.msg = f"{text} (and {suppressed} more like it in the last {self.window_s:g}s)"
                    record.args = None
                return True
            if window[1] < self.burst:
                window[1] += 1
                return True
            window[2] += 1
            self.suppressed_total += 1
            return False


def install_repeat_filter() -> RepeatFilter | None:
    """Add a :class:`RepeatFilter` to every handler of the root logger; ``None`` when it has none."""
    handlers = logging.getLogger().handlers
    if not handlers:
        return None
    repeat = RepeatFilter()
    for handler in handlers:
        if not any(isinstance(f, RepeatFilter) for f in handler.filters):
            handler.addFilter(repeat)
    return repeat
