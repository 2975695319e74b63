"""The C side of :mod:`jalki_core.recordjson`: compiled operations and the encode call."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from jalki_core._libbpf._ffi import ffi, lib


class JsonOp(Protocol):
    """One ``struct jalki_json_op`` as :mod:`jalki_core.recordjson` compiles it: ``table`` maps values to
    encoded JSON (``JALKI_JSON_ENUM``)."""

    @property
    def kind(self) -> int: ...
    @property
    def text(self) -> bytes: ...
    @property
    def offset(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def aux(self) -> int: ...
    @property
    def mask(self) -> int: ...
    @property
    def table(self) -> Mapping[int, bytes] | None: ...
    @property
    def fallback(self) -> bytes: ...


class JsonProgram:
    """Operations in C memory (kept alive with their strings), with the per-probe encoder state."""

    def __init__(self, ops: Sequence[JsonOp], clock_offset_ns: int) -> None:
        if abs(clock_offset_ns) >= 1 << 62:  # the C side's time arithmetic stays within int64 below it
            raise ValueError(f"clock offset {clock_offset_ns} ns is out of the encoder's range")
        self._keep: list[Any] = []
        self._ops = ffi.new("struct jalki_json_op[]", len(ops))
        for index, spec in enumerate(ops):
            op = self._ops[index]
            op.kind, op.offset, op.size, op.aux, op.mask = spec.kind, spec.offset, spec.size, spec.aux, spec.mask
            op.text, op.text_len = self._cstring(spec.text), len(spec.text)
            if spec.table is not None:
                size = max(spec.table, default=-1) + 1
                values = ffi.new("const char *[]", max(size, 1))
                lengths = ffi.new("uint32_t[]", max(size, 1))
                for number, encoded in spec.table.items():
                    values[number], lengths[number] = self._cstring(encoded), len(encoded)
                self._keep += [values, lengths]
                op.table, op.table_lens, op.table_len = values, lengths, size
                op.fallback, op.fallback_len = self._cstring(spec.fallback), len(spec.fallback)
        self._n_ops = len(ops)
        self._state = ffi.new("struct jalki_json_state *")
        self._state.clock_offset_ns = clock_offset_ns
        self._state.second_ns = -(1 << 62)  # no second cached yet
        self._written = ffi.new("size_t *")
        self.line_bound = int(lib.jalki_json_line_bound(self._ops, self._n_ops))
        """The most bytes one record's line can take."""

    def _cstring(self, text: bytes) -> Any:
        data = ffi.new("char[]", text)
        self._keep.append(data)
        return data

    def encode(self, records: bytes, record_size: int, start: int, count: int, next_id: int,
               out: bytearray) -> tuple[int, int, int]:
        """Encode records ``[start, count)`` into ``out``: ``(records done, bytes written, next id)``.

        Stops early at a record the C side leaves to Python (see ``recordjson.h``) or when ``out``
        is full.
        """
        self._state.next_id = next_id
        done = lib.jalki_json_encode(self._ops, self._n_ops, self._state, ffi.from_buffer(records), record_size,
                                     start, count, ffi.from_buffer(out), len(out), self._written)
        return int(done), int(self._written[0]), int(self._state.next_id)
