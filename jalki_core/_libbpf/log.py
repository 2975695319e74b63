"""libbpf's print callback, routed into the ``jalki.libbpf`` logger.

A C shim formats libbpf's ``va_list`` and calls :func:`_on_libbpf_print`, which
logs the message at the matching level (WARN → warning, INFO → info,
DEBUG → debug), keeps WARN/INFO lines in a bounded buffer
(:func:`recent_libbpf_lines`) and hands every line to the
:func:`capture_libbpf_log` blocks active in the calling thread. libbpf prints
a failed program's verifier log as one WARN message framed by
``-- BEGIN PROG LOAD LOG --`` / ``-- END PROG LOAD LOG --``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import deque
from collections.abc import Iterator
from typing import Any

from jalki_core._libbpf._ffi import ffi, lib

logger = logging.getLogger("jalki.libbpf")
# A library stays quiet unless the application configures logging: without
# this, Python's last-resort handler would print expected failures (a refused
# fentry rung) to stderr.
logger.addHandler(logging.NullHandler())

LIBBPF_WARN = 0
LIBBPF_INFO = 1
LIBBPF_DEBUG = 2

_LEVELS = {
    LIBBPF_WARN: logging.WARNING,
    LIBBPF_INFO: logging.INFO,
    LIBBPF_DEBUG: logging.DEBUG,
}

RECENT_LINES_MAX = 2000
_recent: deque[str] = deque(maxlen=RECENT_LINES_MAX)
_recent_lock = threading.Lock()
_local = threading.local()


def _captures() -> list[tuple[list[str], bool]]:
    stack: list[tuple[list[str], bool]] | None = getattr(_local, "captures", None)
    if stack is None:
        stack = []
        _local.captures = stack
    return stack


def _dispatch(level: int, text: str) -> None:
    """Log one libbpf message and record its lines (testable without C)."""
    text = text.rstrip("\n")
    if text.startswith("libbpf: "):
        text = text[len("libbpf: ") :]
    if not text:
        return
    logger.log(_LEVELS.get(level, logging.DEBUG), "%s", text)
    lines = text.split("\n")
    if level != LIBBPF_DEBUG:
        with _recent_lock:
            _recent.extend(lines)
    for sink, include_debug in _captures():
        if level != LIBBPF_DEBUG or include_debug:
            sink.extend(lines)


@ffi.def_extern()  # type: ignore[untyped-decorator]
def jalki_py_print(level: int, msg: Any) -> None:
    """Called from C for every libbpf message; must never raise."""
    try:
        _dispatch(level, ffi.string(msg).decode("utf-8", "replace"))
    except Exception:
        pass


@contextlib.contextmanager
def capture_libbpf_log(*, include_debug: bool = False) -> Iterator[list[str]]:
    """Collect the libbpf lines printed by this thread while the block runs.

    Yields a list that fills up as libbpf prints (WARN and INFO lines; DEBUG
    too with ``include_debug=True``), one entry per line, without the
    ``libbpf: `` prefix. Blocks may nest; each gets every line.
    """
    sink: list[str] = []
    entry = (sink, include_debug)
    stack = _captures()
    stack.append(entry)
    try:
        yield sink
    finally:
        for i in range(len(stack) - 1, -1, -1):
            if stack[i] is entry:
                del stack[i]
                break


def recent_libbpf_lines(limit: int | None = None) -> list[str]:
    """The most recent WARN/INFO lines libbpf printed (at most ``RECENT_LINES_MAX``)."""
    with _recent_lock:
        lines = list(_recent)
    if limit is not None:
        lines = lines[-limit:] if limit > 0 else []
    return lines


def install_print_hook() -> None:
    """Point libbpf's print callback at jalki (idempotent; done on import)."""
    lib.jalki_install_print()


install_print_hook()
