"""The probe contract: what a plugin declares so the core can load and decode it.

A probe is one BPF object with one ring buffer, an ordered attach ladder of
program variants, a fixed-size record layout (defined once in the plugin's C
header and mirrored here; the loader checks the mirror field by field against
the struct in the object's BTF) and a batch decoder that turns records into
events.
"""

from __future__ import annotations

import re
import struct
import sys
from abc import ABC
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, cast

from jalki_core.errors import LayoutMismatchError, ProbeError
from jalki_core.events import HEADER_FIELDS, HEADER_FMT
from jalki_core.package_data import anchor_of, check_relative, package_file

if TYPE_CHECKING:
    from jalki_core._libbpf.objects import BtfMember
    from jalki_core.events import Event, EventContext
    from jalki_core.recordjson import RecordJson

_PADDING_NAME = re.compile(r"_+\w*pad\d*|_*(pad|reserved|unused)\d*")
"""Padding names: ``pad``, ``_pad``, ``pad2``, ``__reserved``, ``_agg_pad`` (see :meth:`RecordLayout.check_btf`)."""


def is_padding_name(name: str) -> bool:
    """True for a padding member or field name (``_pad``, ``pad1``, ``reserved``, ``_agg_pad``)."""
    return _PADDING_NAME.fullmatch(name) is not None


@dataclass(frozen=True)
class AttachRung:
    """One way of attaching a probe: the BPF programs loaded together for it.

    :param name: short rung name shown to users (``fexit``, ``tp_btf``, ``tracepoint``).
    :param programs: names of the BPF programs (C function names) this rung loads;
        every other program in the object is left out of the load.
    :param description: what the rung attaches to, for humans.
    :param optional: programs that add information when the kernel has their
        attach points; the loader first tries the rung with them and, if that
        fails, without them (recording why).
    """

    name: str
    programs: tuple[str, ...]
    description: str = ""
    optional: tuple[str, ...] = ()

    def variants(self) -> list[tuple[str, ...]]:
        """The program sets to try, richest first."""
        if not self.optional:
            return [self.programs]
        return [self.programs + self.optional, self.programs]


@dataclass(frozen=True)
class LayoutField:
    """Where one Python field of a :class:`RecordLayout` lies in the record."""

    name: str
    offset: int
    size: int


@dataclass(frozen=True)
class RecordLayout:
    """The Python mirror of a C record struct.

    :param c_struct: the struct's name in the C header (``tcp_connect_event``);
        the loader checks :attr:`fmt` and :attr:`fields` against that struct
        in the object's BTF, member by member (:meth:`check_btf`).
    :param fmt: a :mod:`struct` format with explicit byte order (``<`` or ``=``)
        and explicit padding (``x``), matching the C layout byte for byte.
    :param fields: names of the unpacked values, in order: the C member names
        (the leaf name of a nested member: ``pid`` for ``hdr.pid``).
    :param c_size: the record size, copied by hand from the C header's
        ``_Static_assert`` (a first check, before any object is opened).
    :param c_names: Python field → C member path where the names must differ,
        e.g. ``{"open_flags": "flags"}`` when a record's own ``flags`` would
        clash with the header's ``hdr.flags``.

    ``defined_in`` (set automatically) is the module that built the layout,
    named in mismatch messages.
    """

    c_struct: str
    fmt: str
    fields: tuple[str, ...]
    c_size: int
    c_names: Mapping[str, str] = field(default_factory=dict, compare=False)
    defined_in: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not self.defined_in:
            object.__setattr__(self, "defined_in", _caller_module())
        if self.fmt[:1] not in ("<", "=", ">", "!"):
            raise LayoutMismatchError(
                f"record layout {self.c_struct}: format {self.fmt!r} must start with a byte order",
                hint="start the format with '<' (little-endian, no implicit alignment)",
            )
        if self.size != self.c_size:
            raise LayoutMismatchError(
                f"record layout {self.c_struct} in {self.defined_in}: its format {self.fmt!r} is {self.size} "
                f"bytes but its c_size says {self.c_size}",
                hint="make the format match the C struct field by field, and c_size the C header's _Static_assert",
            )
        if len(_field_codes(self.fmt)) != len(self.fields):
            raise LayoutMismatchError(
                f"record layout {self.c_struct} in {self.defined_in}: its format {self.fmt!r} has "
                f"{len(_field_codes(self.fmt))} values but {len(self.fields)} field names",
                hint="give every value of the format one name in fields (padding is 'x', unnamed)",
            )
        unknown = sorted(set(self.c_names) - set(self.fields))
        if unknown:
            raise LayoutMismatchError(
                f"record layout {self.c_struct} in {self.defined_in}: c_names names unknown fields {unknown}"
            )

    @classmethod
    def with_header(
        cls,
        c_struct: str,
        fmt: str,
        fields: Sequence[str],
        c_size: int,
        *,
        c_names: Mapping[str, str] | None = None,
    ) -> RecordLayout:
        """The layout of a record whose first member is ``struct jalki_event_header hdr``.

        ``fmt`` and ``fields`` describe only the members after the header
        (``fmt`` without byte order: little-endian is prepended with the
        header); ``c_size`` is the whole record's size. The header's fields
        come first: ``ts_ns, cgroup_id, pid, flags, comm``, so a decoder can
        hand each unpacked record to
        :meth:`EventContext.from_header <jalki_core.events.EventContext.from_header>`::

            RUNQ = RecordLayout.with_header("runq_event", "IIQ", ("tid", "cpu", "latency_ns"), c_size=56)
        """
        body = fmt[1:] if fmt[:1] in ("<", "=") else fmt
        return cls(c_struct, f"<{HEADER_FMT}{body}", (*HEADER_FIELDS, *fields), c_size,
                   c_names=dict(c_names or {}), defined_in=_caller_module())

    @cached_property
    def struct(self) -> struct.Struct:
        """The compiled :class:`struct.Struct` for one record."""
        return struct.Struct(self.fmt)

    @property
    def size(self) -> int:
        """Size of one record in bytes."""
        return struct.calcsize(self.fmt)

    @cached_property
    def field_offsets(self) -> tuple[LayoutField, ...]:
        """Each field's offset and size in the record, from :attr:`fmt` (padding excluded)."""
        order = self.fmt[0]
        spans: list[tuple[int, int]] = []
        offset = 0
        count = ""
        for char in self.fmt[1:]:
            if char.isdigit():
                count += char
                continue
            if char.isspace():
                continue
            n = int(count) if count else 1
            count = ""
            if char == "x":
                offset += n
            elif char in "sp":
                spans.append((offset, n))
                offset += n
            else:
                width = struct.calcsize(order + char)
                for _ in range(n):
                    spans.append((offset, width))
                    offset += width
        return tuple(LayoutField(name, off, size) for name, (off, size) in zip(self.fields, spans, strict=True))

    def check_btf(self, members: Sequence[BtfMember], c_size: int, *, c_side: str) -> None:
        """Check this layout against the struct's leaf members in a BPF object's BTF.

        ``members`` are the struct's leaves (nested structs flattened, see
        :meth:`jalki_core._libbpf.BpfObject.btf_struct_members`), ``c_size``
        its size, ``c_side`` names the object (``BTF of tcp_connect.bpf.o``).
        The rules:

        - every C member is covered by exactly one Python field at the same
          offset with the same size, named like the member (its leaf name,
          its path with ``_`` for ``.``, or the path given in :attr:`c_names`);
        - an array of scalars may instead be split into equal Python fields
          that tile it exactly (``__u64 count[4]`` as ``cycles, instructions…``);
        - a C member with a padding name (``_pad``, ``pad*``, ``reserved*``,
          ``_…pad``) may be left to ``x`` padding in Python, and a Python
          field with a padding name may cover a C padding member or a hole;
        - any other Python field must lie on a C member; the sizes must agree.

        :raises LayoutMismatchError: naming the field, its offset and size on
            both sides, and which side is which.
        """
        where = f"the Python RecordLayout in {self.defined_in or '?'}"
        theirs = f"the C struct {self.c_struct} ({c_side})"
        fields = sorted(self.field_offsets, key=lambda f: f.offset)
        covered: set[str] = set()

        def fail(message: str) -> LayoutMismatchError:
            return LayoutMismatchError(
                f"record layout {self.c_struct}: {message}",
                hint="make the Python fields and format follow the C struct member by member "
                "(names, order, sizes), then rebuild the object if the C changed",
            )

        def c_at(name: str) -> str:
            wanted = self.c_names.get(name, name)
            for member in members:
                if wanted in (member.path, member.name, member.path.replace(".", "_")):
                    return f"; the C struct has {member.path!r} at offset {member.offset} ({member.size} bytes)"
            return f"; the C struct has no member named {wanted!r}"

        for member in members:
            if member.bitfield:
                raise fail(f"C member {member.path!r} is a bit field, which a struct format cannot mirror "
                           f"({theirs})")
            end = member.offset + member.size
            inside = [f for f in fields if f.offset < end and f.offset + f.size > member.offset]
            for f in inside:
                if f.offset < member.offset or f.offset + f.size > end:
                    raise fail(
                        f"field {f.name!r} is at offset {f.offset} ({f.size} bytes) in {where}, straddling "
                        f"C member {member.path!r} at offset {member.offset} ({member.size} bytes) in {theirs}"
                    )
            if not inside:
                if is_padding_name(member.name):
                    continue
                raise fail(
                    f"C member {member.path!r} at offset {member.offset} ({member.size} bytes) in {theirs} "
                    f"has no field in {where}"
                )
            if len(inside) == 1 and inside[0].offset == member.offset and inside[0].size == member.size:
                f = inside[0]
                if not self._same_name(f.name, member) and not (
                        is_padding_name(f.name) and is_padding_name(member.name)):
                    raise fail(
                        f"field {f.name!r} is at offset {f.offset} ({f.size} bytes) in {where}, where "
                        f"{theirs} has {member.path!r}" + c_at(f.name)
                    )
                covered.add(f.name)
                continue
            sizes = {f.size for f in inside}
            tiled = sum(f.size for f in inside) == member.size and inside[0].offset == member.offset
            if member.element_size < member.size and len(sizes) == 1 and tiled \
                    and next(iter(sizes)) % member.element_size == 0:
                covered.update(f.name for f in inside)
                continue
            f = inside[0]
            raise fail(
                f"field {f.name!r} is at offset {f.offset} ({f.size} bytes) in {where}, but {theirs} has "
                f"{member.path!r} at offset {member.offset} ({member.size} bytes) there"
            )
        for f in fields:
            if f.name in covered:
                continue
            if is_padding_name(f.name) and f.offset + f.size <= c_size:
                continue
            raise fail(
                f"field {f.name!r} at offset {f.offset} ({f.size} bytes) in {where} lies on no member of "
                f"{theirs}" + c_at(f.name)
            )
        if c_size != self.size:
            raise fail(f"{theirs} is {c_size} bytes but {where} is {self.size}")

    def _same_name(self, name: str, member: BtfMember) -> bool:
        if name in self.c_names:
            return self.c_names[name] == member.path
        return name in (member.name, member.path.replace(".", "_"))

    def pack(self, **values: Any) -> bytes:
        """Pack one record from field values (missing fields are zero); for tests."""
        unknown = set(values) - set(self.fields)
        if unknown:
            raise ProbeError(f"record layout {self.c_struct}: unknown fields {sorted(unknown)}")
        args = [values.get(name, _zero_for(code)) for name, code in zip(
            self.fields, _field_codes(self.fmt), strict=True)]
        return self.struct.pack(*args)


def _caller_module() -> str:
    """The module that constructed a RecordLayout (the first frame outside this module)."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__") == __name__:
        frame = frame.f_back  # type: ignore[assignment]
    return str(frame.f_globals.get("__name__", "?")) if frame is not None else "?"


def _field_codes(fmt: str) -> list[str]:
    """The struct codes of the values a format produces (padding excluded)."""
    codes: list[str] = []
    count = ""
    for char in fmt[1:]:
        if char.isdigit():
            count += char
            continue
        n = int(count) if count else 1
        count = ""
        if char == "x":
            continue
        if char in "sp":
            codes.append(char)
        else:
            codes.extend([char] * n)
    return codes


def _zero_for(code: str) -> Any:
    return b"" if code in "sp" else 0


class ResourceFile(Protocol):
    """Anything a probe's ``bpf_object`` or ``event_schema`` may name besides a path: a file with a name and
    its bytes (:class:`ProbeResource`; in tests, e.g. :class:`jalki_core.testing.FileResource`)."""

    @property
    def filename(self) -> str:
        """The file's name (shown in messages)."""

    def read_bytes(self) -> bytes:
        """The file's bytes."""


@dataclass(frozen=True)
class ProbeResource:
    """A file shipped in a plugin's package (its compiled BPF object, its event schema).

    :param package: the package whose folder holds the file (a top-level
        module: the folder holding the module).
    :param filename: the file's path inside that folder, ``/``-separated
        (``oom_kill.bpf.o``, ``bpf/oom_kill.bpf.o``); no data folder needs an
        ``__init__.py``.

    A probe usually writes only the path, as a string: ``bpf_object =
    "oom_kill.bpf.o"``. :meth:`of` resolves it against the package of the
    module whose class set the attribute.
    """

    package: str
    filename: str

    @classmethod
    def of(cls, probe: object, attribute: str) -> ResourceFile:
        """The resource a probe's ``attribute`` (``bpf_object``, ``event_schema``) names.

        A :class:`ProbeResource` is returned as it is; a string is a path
        relative to the package of the module that defines the class which
        set the attribute (so a subclass in another package inherits its
        base's file).

        :raises ProbeError: the attribute is unset (``None``) or not a relative path.
        """
        value = getattr(probe, attribute, None)
        if isinstance(value, str):
            owner = next((klass for klass in type(probe).__mro__ if attribute in vars(klass)), type(probe))
            problem = check_relative(value)
            if problem is not None:
                raise ProbeError(f"probe {type(probe).__name__}: {attribute} {problem}",
                                 hint="name the file relative to the probe's package, or use "
                                      "ProbeResource(package, filename)")
            return cls(anchor_of(owner.__module__), value)
        if value is None:
            raise ProbeError(f"probe {type(probe).__name__} has no {attribute}")
        return cast(ResourceFile, value)  # a ProbeResource, or any object with read_bytes() and filename

    def read_bytes(self) -> bytes:
        """The file's bytes, from the installed package."""
        try:
            return package_file(self.package, self.filename).read_bytes()
        except (FileNotFoundError, NotADirectoryError, ModuleNotFoundError) as exc:
            raise ProbeError(
                f"{self.filename} is missing from package {self.package}",
                hint="reinstall the plugin with pip so its package data (BPF objects, schemas) is installed",
            ) from exc


class Probe(ABC):
    """Base class of every probe. Subclass it, set the class attributes, implement :meth:`decode`
    (or, with ``layouts``, :meth:`decode_records`).

    Class attributes:

    - ``name``: unique probe name (``tcp_connect``).
    - ``observes``: the kernel function or tracepoint it observes.
    - ``event_types``: the ``type`` values its events carry.
    - ``bpf_object``: the compiled object: a path relative to the probe's
      package (``"oom_kill.bpf.o"``, ``"bpf/oom_kill.bpf.o"``) or a
      :class:`ProbeResource` (any :class:`ResourceFile`); read it with
      ``ProbeResource.of(probe, "bpf_object")``.
    - ``ring_buffer``: the name of its ring buffer map (``events``).
    - ``ring_buffer_bytes``: ring size the loader sets before load (power of two).
    - ``layout``: the :class:`RecordLayout` of its records.
    - ``ladder``: the ordered :class:`AttachRung` variants, best first.
    - ``event_schema``: optional path (relative to the probe's package, like
      ``bpf_object``) or :class:`ProbeResource` of a JSON Schema
      (draft 2020-12) file in the plugin's package that every event of this
      probe must also satisfy, usually ``if type == … then …`` blocks for its
      ``event_types``. The core's ``specs/event.schema.json`` covers only the
      envelope every probe shares; see :func:`jalki_core.testing.event_validator`.
    - ``extra_drop_causes``: names of probe-specific kernel drop causes (at
      most five), counted in C with ``jalki_count_drop(JALKI_DROP_PROBE_BASE + i)``
      and reported with the shared ones (``ringbuf_full``, ``sampled``,
      ``tracking_full``, and the kernel's own ``recursion_miss``), e.g.
      ``("issue_unseen",)``.
    - ``layouts`` and ``kind_field``: instead of ``layout``, for a probe whose
      ring carries more than one record type (per-event records and, say,
      histogram records): kind value → :class:`RecordLayout`. Every layout
      has a 4-byte field named ``kind_field`` (default ``kind``) at the same
      offset, which the C code sets to that record's kind; the probe then
      implements :meth:`decode_records` instead of :meth:`decode`.
    - ``tick_interval_s``: call :meth:`tick` every this many seconds while
      the session runs (``None``: never).
    - ``record_json``: optional :class:`~jalki_core.recordjson.RecordJson`, the
      events of :meth:`decode` declared field by field, for a probe whose event
      is a plain function of its record and that derives nothing: a session
      whose events only go to emitters then writes them in C
      (:mod:`jalki_core.recordjson`) without calling :meth:`decode` (a probe
      with a :meth:`derive` also implements ``derive_records``).

    Optional hooks: :meth:`unavailable_reason` (the machine lacks what the
    probe needs; any hook may instead raise
    :class:`~jalki_core.errors.ProbeUnavailableError` with the reason),
    :meth:`rodata` (per-instance kernel-side settings),
    :meth:`prepare` (fill maps after load, before attach),
    :meth:`derive` (events computed from this probe's own
    events, e.g. windowed anomalies), :meth:`tick` (events read from the
    probe's maps periodically, with ``tick_interval_s``) and
    :meth:`final_events` (events read from the probe's maps when the session
    stops, e.g. a histogram).
    """

    name: ClassVar[str]
    observes: ClassVar[str]
    event_types: ClassVar[tuple[str, ...]]
    bpf_object: ClassVar[ResourceFile | str]
    ring_buffer: ClassVar[str] = "events"
    ring_buffer_bytes: ClassVar[int] = 1 << 20
    layout: ClassVar[RecordLayout]
    ladder: ClassVar[tuple[AttachRung, ...]]
    event_schema: ClassVar[ResourceFile | str | None] = None
    extra_drop_causes: ClassVar[tuple[str, ...]] = ()
    layouts: ClassVar[Mapping[int, RecordLayout]] = {}
    kind_field: ClassVar[str] = "kind"
    record_json: ClassVar[RecordJson | None] = None
    tick_interval_s: ClassVar[float | None] = None

    def decode(self, batch: bytes, ctx: EventContext) -> list[Event]:
        """Decode a batch of records (fixed-size, back to back) into events.

        Called with every batch the ring buffer reader drains. ``ctx`` builds
        the common event fields (id, timestamp, source, attach rung…). Every
        probe with one ``layout`` implements it.
        """
        raise NotImplementedError(f"probe {type(self).__name__} implements no decode()")

    def decode_records(self, kind: int, batch: bytes, ctx: EventContext) -> list[Event]:
        """Decode a batch of records of one ``kind`` (a key of ``layouts``) into events.

        For probes with several record types: the session hands over each run
        of same-kind records, back to back, in arrival order (a drain of
        ``A A B A`` calls this three times). Records of one kind are all
        ``layouts[kind].size`` bytes, so ``layouts[kind].struct.iter_unpack``
        reads them. The default calls :meth:`decode` with probes of one layout.
        """
        if self.layouts:
            raise NotImplementedError(f"probe {type(self).__name__} declares layouts but implements no "
                                      "decode_records()")
        return self.decode(batch, ctx)

    def record_kinds(self) -> tuple[dict[int, RecordLayout], int]:
        """The probe's record kinds (kind → layout) and the offset of the kind field in every record.

        One ``layout``: ``({0: layout}, 0)``, and records carry no kind.

        :raises ProbeError: ``layouts`` is malformed: a layout lacks the kind
            field, it lies at different offsets or is not 4 bytes, a kind is no
            ``uint32``, more than 16 kinds.
        """
        if not self.layouts:
            return {0: self.layout}, 0
        where = f"probe {getattr(self, 'name', type(self).__name__)}"
        hint = (f"give every record struct a __u32 {self.kind_field} at the same offset (e.g. right after "
                "the header) and key layouts by the value the C code writes there")
        if len(self.layouts) > 16:
            raise ProbeError(f"{where}: {len(self.layouts)} record layouts, at most 16", hint=hint)
        offsets: dict[int, str] = {}
        for kind, layout in self.layouts.items():
            if not isinstance(kind, int) or not 0 <= kind < 1 << 32:
                raise ProbeError(f"{where}: record kind {kind!r} ({layout.c_struct}) is not a uint32", hint=hint)
            found = next((f for f in layout.field_offsets if f.name == self.kind_field), None)
            if found is None or found.size != 4:
                problem = "has no field" if found is None else f"has a {found.size}-byte field"
                raise ProbeError(f"{where}: record layout {layout.c_struct} {problem} {self.kind_field!r} "
                                 "(4 bytes) to tell the record kinds apart", hint=hint)
            offsets.setdefault(found.offset, layout.c_struct)
        if len(offsets) > 1:
            places = ", ".join(f"{name} at {offset}" for offset, name in offsets.items())
            raise ProbeError(f"{where}: field {self.kind_field!r} lies at different offsets ({places})", hint=hint)
        return dict(self.layouts), next(iter(offsets))

    def tick(self, maps: Mapping[str, Any], ctx: EventContext) -> list[Event]:
        """Events read from the probe's BPF maps every ``tick_interval_s`` seconds (default: none).

        For probes that aggregate in BPF (histograms, counters) and report
        periodically. Called by the session on the drain thread, after a drain,
        while the programs run; ``maps`` are the loaded object's maps by name
        (as for :meth:`final_events`). Its events are delivered like decoded
        ones (to the emitters, the daemon's store and subscribers) but are not
        passed to :meth:`derive`. An exception is logged and counted
        (``derive_errors``); the session goes on and calls it again next time.
        """
        return []

    def unavailable_reason(self) -> str | None:
        """Why this probe cannot run on this machine at all, checked before any rung is tried (default: ``None``).

        For probes that need hardware or kernel features the attach ladder
        cannot work around (hardware performance counters in a VM without a
        PMU): the probe is then reported as not attached with this reason,
        never run on fake data.
        """
        return None

    def rodata(self) -> Mapping[str, int | bytes]:
        """This instance's settings for ``const volatile`` globals, set before load (default: none).

        Names are the C variables; ints are packed to the variable's size,
        bytes must have exactly its size. Use it for per-probe settings the
        kernel side needs (thresholds, a path prefix). The loader also sets
        ``jalki_self_tgid`` itself.
        """
        return {}

    def prepare(self, maps: Mapping[str, Any]) -> None:
        """Fill the loaded object's maps before its programs are attached (default: nothing).

        Called by the loader on every rung it tries, after the object is
        loaded and the run-time configuration written, right before attach.
        ``maps`` are the object's maps by name (:class:`jalki_core._libbpf.BpfMap`:
        ``update``, ``lookup``…), e.g. to put the file descriptors of perf
        events opened per CPU into a ``PERF_EVENT_ARRAY`` (the map keeps its
        own reference, so the caller may close them afterwards). A
        :class:`~jalki_core.errors.LibbpfError` fails this rung (recorded,
        the next is tried); a :class:`~jalki_core.errors.ProbeError` fails the probe.
        """

    def derive(self, events: list[Event], ctx: EventContext) -> list[Event]:
        """Events computed from a batch of this probe's decoded events (default: none).

        Called by the session right after :meth:`decode`, in order, on the
        drain thread; keep state on ``self`` (one probe instance per session).
        Use event timestamps, not the wall clock, for windows, so replayed
        events give the same result. An exception is logged and counted
        (``derive_errors``); the batch's own events are still emitted.
        """
        return []

    derive_records: ClassVar[Callable[[Any, list[tuple[Any, ...]], EventContext], list[Event]] | None] = None
    """For a probe with ``record_json`` and a :meth:`derive`: ``derive_records(records, ctx)``, the
    same derived events from a batch's unpacked records (its events were written as lines and never
    built). Without it such a probe's batches are decoded in Python."""

    def final_events(self, maps: Mapping[str, Any], ctx: EventContext) -> list[Event]:
        """Events read from the probe's BPF maps when the session stops (default: none).

        Called once after the programs are detached and the ring buffer is
        drained. ``maps`` are the loaded object's maps by name (see
        :class:`jalki_core._libbpf.Map`: ``lookup``, ``lookup_per_cpu``, ``keys``).
        """
        return []

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly description for ``jalki plugins``."""
        return {
            "name": self.name,
            "observes": self.observes,
            "event_types": list(self.event_types),
            "ladder": [rung.name for rung in self.ladder],
        }


def check_probe_contract(probe: Probe) -> None:
    """Raise :class:`ProbeError` when a probe misses part of the contract."""
    missing = [
        attr
        for attr in ("name", "observes", "event_types", "bpf_object", "ladder")
        if not hasattr(probe, attr)
    ]
    if not hasattr(probe, "layout") and not probe.layouts:
        missing.append("layout")
    if missing:
        raise ProbeError(f"probe {type(probe).__name__} lacks {', '.join(missing)}")
    if not probe.ladder:
        raise ProbeError(f"probe {probe.name} has an empty attach ladder")
    if len(probe.extra_drop_causes) > 5:
        raise ProbeError(f"probe {probe.name}: at most 5 extra_drop_causes")
    if probe.ring_buffer_bytes & (probe.ring_buffer_bytes - 1):
        raise ProbeError(f"probe {probe.name}: ring_buffer_bytes must be a power of two")
    probe.record_kinds()

    def overrides(method: str) -> bool:
        return getattr(type(probe), method) is not getattr(Probe, method)

    if probe.layouts and not overrides("decode_records"):
        raise ProbeError(f"probe {probe.name} declares layouts but implements no decode_records()")
    if not probe.layouts and not overrides("decode"):
        raise ProbeError(f"probe {probe.name} implements no decode()")
    if probe.tick_interval_s is not None and not probe.tick_interval_s > 0:
        raise ProbeError(f"probe {probe.name}: tick_interval_s must be a positive number of seconds or None")


def batch_records(layout: RecordLayout, records: Sequence[bytes]) -> bytes:
    """Concatenate packed records into one batch, as the ring buffer reader returns it."""
    for record in records:
        if len(record) != layout.size:
            raise ProbeError(f"record of {len(record)} bytes, {layout.c_struct} is {layout.size}")
    return b"".join(records)


__all__ = [
    "AttachRung",
    "LayoutField",
    "Probe",
    "ProbeResource",
    "RecordLayout",
    "batch_records",
    "check_probe_contract",
    "is_padding_name",
]
