"""The core's default emitters, registered through the ordinary plugin hook.

- ``stdout``: NDJSON on standard output.
- ``file:PATH[,max_bytes=N][,backups=K]``: NDJSON appended to PATH, rotated
  by size (PATH.1 … PATH.K), fsync'd on flush and close.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import BinaryIO

from jalki_core.emitters.base import Emitter, EventBatch
from jalki_core.errors import EmitterClosedError, EmitterError, UsageError
from jalki_core.hookspecs import hookimpl
from jalki_core.registry import BoundEmitterRegistry

DEFAULT_MAX_BYTES = 256 * 1024 * 1024
DEFAULT_BACKUPS = 5


class StdoutEmitter(Emitter):
    """Writes NDJSON to standard output."""

    name = "stdout"

    def __init__(self, stream: BinaryIO | None = None) -> None:
        self._stream = stream

    def open(self) -> None:
        if self._stream is None:
            self._stream = sys.stdout.buffer

    def emit(self, batch: EventBatch) -> None:
        assert self._stream is not None
        try:
            self._stream.write(batch.ndjson)
        except BrokenPipeError as exc:
            self._detach_stdout()
            raise EmitterClosedError("stdout was closed by its reader") from exc

    def _detach_stdout(self) -> None:
        # Point fd 1 at /dev/null so the interpreter's own flush at exit does
        # not fail again on the closed pipe.
        if self._stream is sys.stdout.buffer:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)

    def flush(self) -> None:
        if self._stream is not None:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._detach_stdout()

    def close(self) -> None:
        self.flush()


class FileEmitter(Emitter):
    """Appends NDJSON to a file, rotating it by size; fsyncs on flush and close.

    :param path: the file to write.
    :param max_bytes: rotate when the file would grow past this (0 = never).
    :param backups: how many rotated files to keep (PATH.1 is the newest).
    """

    name = "file"

    def __init__(self, path: str | Path, *, max_bytes: int = DEFAULT_MAX_BYTES,
                 backups: int = DEFAULT_BACKUPS) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self._file: BinaryIO | None = None
        self._size = 0
        self._lock = threading.Lock()  # reopen() comes from another thread than emit()

    def open(self) -> None:
        try:
            self._file = self.path.open("ab")
        except OSError as exc:
            raise EmitterError(
                f"cannot write events to {self.path}: {exc.strerror}",
                hint="choose a writable path with --emit file:PATH",
            ) from exc
        self._size = self._file.tell()

    def emit(self, batch: EventBatch) -> None:
        with self._lock:
            assert self._file is not None
            data = batch.ndjson
            if self.max_bytes and self._size and self._size + len(data) > self.max_bytes:
                self._rotate()
            self._file.write(data)
            self._size += len(data)

    def _rotate(self) -> None:
        assert self._file is not None
        self._sync()
        self._file.close()
        if self.backups > 0:
            for index in range(self.backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{index}")
                if older.exists():
                    older.replace(self.path.with_name(f"{self.path.name}.{index + 1}"))
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink()
        self._file = self.path.open("ab")
        self._size = 0

    def _sync(self) -> None:
        assert self._file is not None
        self._file.flush()
        os.fsync(self._file.fileno())

    def flush(self) -> None:
        if self._file is not None:
            self._sync()

    def reopen(self) -> None:
        """Close and reopen the file (after an external log rotation, e.g. on SIGHUP); thread-safe.

        A batch being written meanwhile lands whole in the old or the new file.
        """
        with self._lock:
            self.close()
            self.open()

    def close(self) -> None:
        if self._file is not None:
            self._sync()
            self._file.close()
            self._file = None


def parse_file_argument(argument: str | None) -> FileEmitter:
    """Build a :class:`FileEmitter` from ``PATH[,max_bytes=N][,backups=K]``."""
    if not argument:
        raise UsageError("the file emitter needs a path", hint="use --emit file:/path/to/events.ndjson")
    path, *options = argument.split(",")
    settings = {"max_bytes": DEFAULT_MAX_BYTES, "backups": DEFAULT_BACKUPS}
    for option in options:
        key, _, value = option.partition("=")
        if key not in settings or not value.isdigit():
            raise UsageError(
                f"bad file emitter option {option!r}",
                hint="options are max_bytes=N and backups=K, e.g. file:/tmp/e.ndjson,max_bytes=1000000",
            )
        settings[key] = int(value)
    target = Path(path)
    try:
        _check_writable(target)
    except OSError as exc:
        raise UsageError(
            f"cannot use {target}: {exc.strerror}", hint="choose a writable path with --emit file:PATH"
        ) from exc
    return FileEmitter(target, max_bytes=settings["max_bytes"], backups=settings["backups"])


def _check_writable(target: Path) -> None:
    """Raise :class:`UsageError` unless ``target`` can be created or appended to."""
    parent = target.parent if str(target.parent) else Path()
    if target.is_dir():
        raise UsageError(f"{target} is a directory", hint="give a file path to --emit file:PATH")
    if not parent.is_dir():
        raise UsageError(f"directory {parent} does not exist", hint="create it or choose another path")
    if not os.access(parent, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise UsageError(f"{target} is not writable", hint="choose a writable path with --emit file:PATH")


def _stdout_factory(argument: str | None) -> Emitter:
    if argument:
        raise UsageError("the stdout emitter takes no argument", hint="use --emit stdout")
    return StdoutEmitter()


@hookimpl
def jalki_register_emitters(registry: BoundEmitterRegistry) -> None:
    """Register the built-in ``stdout`` and ``file`` emitters."""
    registry.register("stdout", _stdout_factory, "NDJSON on standard output")
    registry.register("file", parse_file_argument, "NDJSON to a size-rotated, fsync'd file")
