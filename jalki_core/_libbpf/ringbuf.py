"""``RingBufferReader``: batch reads of a BPF ring buffer.

libbpf's ``ring_buffer__poll``/``consume`` call a C callback (shim.c) that
copies every record of exactly ``record_size`` bytes into one batch buffer,
back to back with no headers, so Python crosses into C once per batch rather
than once per record. When the batch cannot hold another record the callback
stops libbpf; libbpf has already moved its consumer position past the copied
record, so the next call resumes with the following one and nothing is lost.

A reader built with several record kinds (``record_size`` a mapping of kind
value → size, ``kind_offset`` where each record keeps its ``uint32`` kind)
accepts each record only with its kind's size and still copies records back
to back in arrival order; the callback also keeps *runs* (kind, bytes), one
per change of kind, so :meth:`RingBufferReader.consume_runs` hands each run
to its decoder as one slice, with no per-record work in Python.

:meth:`RingBufferReader.fill_ratio` reads how full the ring is from the
map's consumer and producer position pages, mapped read-only by the shim
(libbpf 1.1 has no ``ring__avail_data_size``).
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Mapping
from typing import Any

from jalki_core._libbpf import _check
from jalki_core._libbpf._closeable import Closeable
from jalki_core._libbpf._ffi import ffi, lib
from jalki_core._libbpf.maps import BpfMap, MapType
from jalki_core.errors import RingBufferError

MIN_DEFAULT_BATCH = 64 * 1024


class RingBufferReader(Closeable):
    """Reads fixed-size records from a loaded ``RINGBUF`` map in batches.

    ``poll``/``consume`` return the records gathered by one call as one
    ``bytes`` (a multiple of ``record_size``). Records of another size are
    counted in :attr:`size_mismatches` and skipped. Safe to ``close`` from
    another thread: close waits for a running ``poll`` to return.

    With several record kinds (``record_size={kind: size}``,
    ``kind_offset``), :meth:`consume_runs` returns ``(kind, bytes)`` runs in
    arrival order; records of an undeclared kind are counted in
    :attr:`unknown_kinds` and skipped.
    """

    MAX_KINDS = 16
    """Most record kinds one reader tells apart (the C context's table)."""

    def __init__(
        self,
        bpf_map: BpfMap,
        record_size: int | Mapping[int, int],
        batch_bytes: int | None = None,
        *,
        kind_offset: int = 0,
    ) -> None:
        """Attach a reader to ``bpf_map``; ``batch_bytes`` defaults to the ring size (min 64 KiB).

        ``record_size`` is the one record size, or a mapping of kind value
        (a ``uint32`` at ``kind_offset`` in every record) to that kind's size.
        """
        self._rb: Any = None
        self._lock = threading.Lock()
        op = "ring_buffer__new"
        if not isinstance(bpf_map, BpfMap):
            raise _check.closed(op, detail=f"expected a BpfMap, got {type(bpf_map).__name__}")
        obj = bpf_map.owner.name
        self._map = bpf_map
        if bpf_map.type != MapType.RINGBUF:
            raise _check.error(
                RingBufferError, op, errno.EINVAL, obj=obj, detail=f"map {bpf_map.name} is not a RINGBUF map"
            )
        map_fd = bpf_map.fd  # BpfHandleClosedError when closed or not loaded
        kinds = dict(record_size) if isinstance(record_size, Mapping) else {}
        sizes = list(kinds.values()) if kinds else [int(record_size)]  # type: ignore[arg-type]
        problem = _kinds_problem(kinds, kind_offset) if isinstance(record_size, Mapping) else None
        if problem is None and min(sizes) <= 0:
            problem = f"record_size {min(sizes)}"
        if problem is not None:
            raise _check.error(RingBufferError, op, errno.EINVAL, obj=obj, detail=problem)
        largest, smallest = max(sizes), min(sizes)
        if batch_bytes is None:
            batch_bytes = max(bpf_map.max_entries, MIN_DEFAULT_BATCH)
        if not kinds:
            batch_bytes = batch_bytes // largest * largest
        if batch_bytes < largest:
            raise _check.error(
                RingBufferError,
                op,
                errno.EINVAL,
                obj=obj,
                detail=f"batch_bytes must hold at least one {largest}-byte record",
            )
        self._record_size = largest
        self._batch_bytes = batch_bytes
        self._kinds = list(kinds)
        self._buf = ffi.new("char[]", batch_bytes)
        self._ctx = ffi.new("struct jalki_rb_ctx *")
        self._ctx.buf = self._buf
        self._ctx.cap = batch_bytes
        self._ctx.record_size = largest
        self._runs: Any = ffi.NULL
        if kinds:
            runs_cap = batch_bytes // smallest + 1  # one run per record at worst: never the limit
            self._runs = ffi.new("uint32_t[]", 2 * runs_cap)
            self._ctx.runs = self._runs
            self._ctx.runs_cap = runs_cap
            self._ctx.nkinds = len(kinds)
            self._ctx.kind_offset = kind_offset
            for i, (kind, size) in enumerate(kinds.items()):
                self._ctx.kind_values[i] = kind
                self._ctx.kind_sizes[i] = size
        rb = lib.jalki_rb_new(map_fd, self._ctx)
        self._rb = _check.ptr(rb, op, RingBufferError, obj=obj, detail=f"map {bpf_map.name}")
        self._ring_bytes = bpf_map.max_entries
        self._pages = ffi.new("struct jalki_rb_pages *")
        if lib.jalki_rb_pages_map(map_fd, self._pages) < 0:  # only the fill is unknown then: the reader works
            self._pages.base = ffi.NULL
        bpf_map.owner._remember_reader(self)

    def __repr__(self) -> str:
        state = "closed" if self._rb is None else "open"
        return f"<RingBufferReader {self._map.name} record_size={self._record_size} ({state})>"

    def _handle(self, operation: str) -> Any:
        if self._rb is None:
            raise _check.closed(
                operation, obj=self._map.owner.name, detail=f"ring buffer reader of {self._map.name} is closed"
            )
        return self._rb

    @property
    def record_size(self) -> int:
        """Size of every accepted record in bytes."""
        return self._record_size

    @property
    def batch_bytes(self) -> int:
        """Capacity of the batch buffer (a multiple of ``record_size`` with one record kind)."""
        return self._batch_bytes

    @property
    def kinds(self) -> tuple[int, ...]:
        """The record kinds this reader tells apart; empty with one record size."""
        return tuple(self._kinds)

    @property
    def epoll_fd(self) -> int:
        """libbpf's epoll descriptor, readable when records are waiting."""
        return int(lib.ring_buffer__epoll_fd(self._handle("ring_buffer__epoll_fd")))

    @property
    def records_total(self) -> int:
        """Records delivered in batches since the reader was created."""
        return int(self._ctx.records)

    @property
    def size_mismatches(self) -> int:
        """Records skipped because their size was not ``record_size``."""
        return int(self._ctx.mismatches)

    @property
    def unknown_kinds(self) -> int:
        """Records skipped because their kind field held no declared kind (several kinds only)."""
        return int(self._ctx.unknown_kinds)

    @property
    def records_lost(self) -> int:
        """Records dropped for lack of batch space; 0 unless the C invariant broke."""
        return int(self._ctx.lost)

    def fill_ratio(self) -> float | None:
        """Share of the ring (0 to 1) written by the kernel and not yet consumed, read now.

        Counts record headers and records still being written (reserved, not
        committed); ``None`` when the position pages could not be mapped or the
        reader is closed.
        """
        with self._lock:
            if self._rb is None or self._pages.base == ffi.NULL or self._ring_bytes <= 0:
                return None
            backlog = int(lib.jalki_rb_pages_backlog(self._pages))
        return min(1.0, backlog / self._ring_bytes)

    def _run(self, operation: str, call: Any, *args: Any) -> tuple[bytes, list[tuple[int, int]]]:
        """One libbpf call; the batch and its runs as (kind index, bytes)."""
        with self._lock:
            rb = self._handle(operation)
            ctx = self._ctx
            ctx.len = 0
            ctx.full = 0
            ctx.nruns = 0
            res = int(call(rb, *args))
            # A negative result with `full` set is the callback's deliberate stop.
            if res < 0 and not ctx.full and res != -errno.EINTR:
                _check.rc(res, operation, RingBufferError, obj=self._map.owner.name, detail=f"map {self._map.name}")
            data = bytes(ffi.buffer(self._buf, ctx.len))
            runs = [(int(self._runs[2 * i]), int(self._runs[2 * i + 1])) for i in range(int(ctx.nruns))]
            ctx.len = 0
            ctx.full = 0
            ctx.nruns = 0
            return data, runs

    def poll(self, timeout_ms: int) -> bytes:
        """Wait up to ``timeout_ms`` (-1: forever) for records; return a batch (maybe empty)."""
        return self._run("ring_buffer__poll", lib.ring_buffer__poll, int(timeout_ms))[0]

    def consume(self) -> bytes:
        """Return the records available now, without waiting (up to one batch)."""
        return self._run("ring_buffer__consume", lib.ring_buffer__consume)[0]

    def consume_runs(self) -> list[tuple[int, bytes]]:
        """The records available now (up to one batch) as ``(kind, records)`` runs, in arrival order.

        Each run holds back-to-back records of one kind; consecutive runs have
        different kinds. With one record size: one run of kind 0 (or none).
        """
        data, runs = self._run("ring_buffer__consume", lib.ring_buffer__consume)
        if not self._kinds:
            return [(0, data)] if data else []
        out: list[tuple[int, bytes]] = []
        start = 0
        for index, length in runs:
            out.append((self._kinds[index], data[start:start + length]))
            start += length
        return out

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._rb is None

    def close(self) -> None:
        """Free libbpf's ring buffer (idempotent)."""
        with self._lock:
            rb, self._rb = self._rb, None
            if rb is not None:
                lib.jalki_rb_pages_unmap(self._pages)
        if rb is None:
            return
        self._map.owner._forget_reader(self)
        lib.ring_buffer__free(rb)


def _kinds_problem(kinds: Mapping[int, int], kind_offset: int) -> str | None:
    """Why a kind → size table cannot be read by the C callback, or ``None``."""
    if not kinds:
        return "no record kinds"
    if len(kinds) > RingBufferReader.MAX_KINDS:
        return f"{len(kinds)} record kinds (at most {RingBufferReader.MAX_KINDS})"
    bad = [kind for kind in kinds if not 0 <= kind < 1 << 32]
    if bad:
        return f"record kind {bad[0]} is not a uint32"
    if kind_offset < 0 or any(kind_offset + 4 > size for size in kinds.values()):
        return f"kind_offset {kind_offset}: every record kind must hold its 4-byte kind there"
    return None
