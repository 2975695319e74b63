"""Fixed records to NDJSON event lines in C: the drain's fast path for probes that declare how.

A probe whose events are a plain function of one record (no derivation reads
them, no Python logic decides them) can declare that function as a
:class:`RecordJson`: the envelope every event has, then members built from the
record's fields (:func:`owner`, :func:`endpoints`, :func:`obj`, :func:`ip`,
:func:`uint`, :func:`sint`, :func:`const`, :func:`enum`, :func:`choice`,
:func:`optional`, :func:`uint_unless`, :func:`flag_const`). :class:`RecordEncoder` compiles it once per session into
operations for ``recordjson.c`` in the core's C binding, which writes each
batch's lines without building a Python object per event.

The probe's Python :meth:`~jalki_core.probe.Probe.decode` stays the reference:
the lines are byte for byte what orjson writes for the events it builds
(``tests/unit/test_recordjson.py`` checks every declared probe on random
records), and it decodes what the C side leaves to it (a command that is not
plain ASCII, decoded with Python's UTF-8 replacement rules).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from jalki_core.events import EventContext


class _Field(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def offset(self) -> int: ...
    @property
    def size(self) -> int: ...


class Layout(Protocol):
    """What the encoder reads of a :class:`~jalki_core.probe.RecordLayout` (not imported: the probe
    module names this one)."""

    @property
    def size(self) -> int: ...
    @property
    def field_offsets(self) -> Sequence[_Field]: ...

# enum jalki_json_op_kind (recordjson.h)
_LIT, _ID, _TIME, _UINT, _INT, _UINT_UNLESS, _IP, _ENDPOINTS, _ENUM, _OWNER, _FLAG_LIT, _CHOICE = range(1, 13)
_NO_DEFAULT = object()

_HEADER_FLAGS = "flags"
"""The header's flags field (``struct jalki_event_header``), where a probe's own flags live too."""


@dataclass(frozen=True)
class Member:
    """One member of an event object: its key and how its value is made (see the functions below)."""

    key: str
    kind: int
    value_field: str | None = None
    aux_field: str | None = None
    mask: int = 0
    value: Any = None
    table: Mapping[int, Any] = field(default_factory=dict)
    fallback: str = ""
    members: tuple[Member, ...] = ()


def owner(key: str = "process_data") -> Member:
    """``{"pid", "command", "cgroup_id"}`` of the record's header owner, or all null
    (:func:`jalki_core.events.header_process_data`)."""
    return Member(key, _OWNER)


def endpoints(key: str, tuple_field: str) -> Member:
    """``["src:sport->dst:dport"]`` from the connection tuple starting at ``tuple_field``
    (``saddr[16] daddr[16] sport dport family``); IPv6 hosts in brackets."""
    return Member(key, _ENDPOINTS, tuple_field)


def obj(key: str, members: Sequence[Member]) -> Member:
    """A nested object of ``members``."""
    return Member(key, _LIT, members=tuple(members))


def ip(key: str, address_field: str, family_field: str) -> Member:
    """The address text (:func:`jalki_core.events.format_ip`) of a 16-byte field."""
    return Member(key, _IP, address_field, family_field)


def uint(key: str, value_field: str) -> Member:
    """An unsigned integer field."""
    return Member(key, _UINT, value_field)


def sint(key: str, value_field: str) -> Member:
    """A signed integer field."""
    return Member(key, _INT, value_field)


def const(key: str, value: Any) -> Member:
    """A constant value (encoded once)."""
    return Member(key, _LIT, value=value)


def enum(key: str, value_field: str, table: Mapping[int, Any], fallback: str = "",
         default: Any = _NO_DEFAULT) -> Member:
    """``table[value]`` (any JSON value), else ``default`` when given, else the string ``f"{fallback}{value}"``."""
    if default is _NO_DEFAULT:
        return Member(key, _ENUM, value_field, table=dict(table), fallback=fallback)
    return Member(key, _ENUM, value_field, mask=1, table=dict(table), value=default)


def choice(key: str, value_field: str, zero: Any, table: Mapping[int, Any]) -> Member:
    """``zero`` when the field is 0, else ``table[value]``; a value outside the table leaves the record to
    the probe's decoder (an errno without a prepared name, say)."""
    return Member(key, _CHOICE, value_field, table=dict(table), value=zero)


def optional(key: str, value_field: str, table: Mapping[int, Any]) -> Member:
    """``key: table[value]`` only when the field is not 0 (never an object's first member); a value
    outside the table leaves the record to the probe's decoder."""
    return Member(key, _CHOICE, value_field, mask=1, table=dict(table))


def uint_unless(key: str, value_field: str, flag_field: str, mask: int) -> Member:
    """An unsigned integer field, null when ``flag_field & mask``."""
    return Member(key, _UINT_UNLESS, value_field, flag_field, mask)


def flag_const(key: str, value: Any, flag_field: str, mask: int) -> Member:
    """``key: value`` only when ``flag_field & mask`` (never an object's first member)."""
    return Member(key, _FLAG_LIT, aux_field=flag_field, mask=mask, value=value)


@dataclass(frozen=True)
class JsonOp:
    """One compiled operation (``struct jalki_json_op`` in ``recordjson.h``)."""

    kind: int
    text: bytes
    offset: int = 0
    size: int = 0
    aux: int = 0
    mask: int = 0
    table: Mapping[int, bytes] | None = None
    fallback: bytes = b""


@dataclass(frozen=True)
class RecordJson:
    """How one record becomes one event: its type and severity, then its members after the envelope.

    The envelope is :meth:`EventContext.new_event <jalki_core.events.EventContext.new_event>`'s:
    ``id``, ``timestamp`` (from the header's ``ts_ns``), ``source``, ``type``, ``severity``,
    ``cluster``, ``node``, ``attach``.
    """

    layout: Layout
    event_type: str
    members: tuple[Member, ...]
    severity: str | Member = "info"
    """The severity, or a :func:`choice` keyed ``severity`` that decides it from a field."""


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value)


class RecordEncoder:
    """A :class:`RecordJson` compiled for one probe's :class:`EventContext`, encoding batches in C.

    :param fallback: decodes records the C side leaves (the probe's own ``decode``); its events'
        ids continue the same counter.
    """

    def __init__(self, spec: RecordJson, ctx: EventContext,
                 fallback: Callable[[bytes, EventContext], list[dict[str, Any]]]) -> None:
        from jalki_core._libbpf.jsonlines import JsonProgram  # the binding loads only where a session runs

        self.spec = spec
        self.ctx = ctx
        self.fallback = fallback
        self.record_size = spec.layout.size
        self._offsets = {item.name: item for item in spec.layout.field_offsets}
        def constants(*pairs: tuple[str, Any]) -> bytes:
            return b"".join(b',"%s":%s' % (name.encode(), _dumps(value)) for name, value in pairs)

        ops: list[JsonOp] = [
            JsonOp(_ID, b'{"id":' + _dumps(ctx._id_prefix)[:-1]),  # C writes the number and the quote
            self._op(_TIME, b',"timestamp":', "ts_ns"),
            JsonOp(_LIT, constants(("source", ctx.source), ("type", spec.event_type))),
        ]
        if isinstance(spec.severity, str):
            ops.append(JsonOp(_LIT, constants(("severity", spec.severity))))
        else:
            self._compile((spec.severity,), ops, first=False)
        ops.append(JsonOp(_LIT, constants(("cluster", ctx.cluster), ("node", ctx.node), ("attach", ctx.attach))))
        self._compile(spec.members, ops, first=False)
        ops.append(JsonOp(_LIT, b"}"))
        self._program = JsonProgram(ops, ctx.clock_offset_ns)
        self.line_bound = self._program.line_bound
        self._out = bytearray()

    def _op(self, kind: int, text: bytes, value_field: str | None = None, aux_field: str | None = None,
            mask: int = 0, table: Mapping[int, bytes] | None = None, fallback: bytes = b"") -> JsonOp:
        offset = size = aux = 0
        if value_field is not None:
            offset, size = self._offsets[value_field].offset, self._offsets[value_field].size
        if aux_field is not None:
            aux = self._offsets[aux_field].offset
        return JsonOp(kind, text, offset, size, aux, mask, table, fallback)

    def _compile(self, members: Sequence[Member], ops: list[JsonOp], *, first: bool) -> None:
        for member in members:
            if first and (member.kind == _FLAG_LIT or (member.kind == _CHOICE and member.mask)):
                raise ValueError(f"record JSON member {member.key!r}: a conditional member cannot come first")
            key = (b"" if first else b",") + _dumps(member.key) + b":"
            first = False
            if member.members:
                ops.append(JsonOp(_LIT, key + b"{"))
                self._compile(member.members, ops, first=True)
                ops.append(JsonOp(_LIT, b"}"))
            elif member.kind == _LIT:
                ops.append(JsonOp(_LIT, key + _dumps(member.value)))
            elif member.kind == _FLAG_LIT:
                ops.append(self._op(_FLAG_LIT, key + _dumps(member.value), aux_field=member.aux_field,
                                    mask=member.mask))
            elif member.kind == _OWNER:
                ops.append(self._op(_OWNER, key, aux_field=_HEADER_FLAGS))
            elif member.kind == _ENUM:
                table = {number: _dumps(value) for number, value in member.table.items()}
                fallback = _dumps(member.value) if member.mask else member.fallback.encode()
                ops.append(self._op(_ENUM, key, member.value_field, mask=member.mask, table=table,
                                    fallback=fallback))
            elif member.kind == _CHOICE and member.mask:  # optional: the whole member, or nothing
                table = {number: key + _dumps(value) for number, value in member.table.items() if number}
                ops.append(self._op(_CHOICE, b"", member.value_field, table=table))
            elif member.kind == _CHOICE:
                table = {number: _dumps(value) for number, value in member.table.items() if number}
                ops.append(self._op(_CHOICE, key, member.value_field, table=table, fallback=_dumps(member.value)))
            else:
                ops.append(self._op(member.kind, key, member.value_field, member.aux_field, member.mask))

    def encode(self, batch: bytes) -> tuple[bytes, int]:
        """The NDJSON lines of a batch of whole records, and how many events (lines) they are."""
        count = len(batch) // self.record_size
        if not count:
            return b"", 0
        if len(self._out) < count * self.line_bound:  # kept between batches: no zeroed memory per batch
            self._out = bytearray(count * self.line_bound)
        out = self._out
        ctx = self.ctx
        parts: list[bytes] = []
        start = events = 0
        while start < count:
            done, written, next_id = self._program.encode(batch, self.record_size, start, count,
                                                          ctx._issued + 1, out)
            ctx._issued = next_id - 1
            if done:
                parts.append(bytes(memoryview(out)[:written]))
                start += done
                events += done
            if start < count:  # a record the C side leaves to the probe's decoder
                record = batch[start * self.record_size:(start + 1) * self.record_size]
                decoded = self.fallback(record, ctx)
                parts.extend(orjson.dumps(event) + b"\n" for event in decoded)
                start += 1
                events += len(decoded)
        return (parts[0] if len(parts) == 1 else b"".join(parts)), events
