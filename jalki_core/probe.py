"""The probe contract: what a plugin declares so the core can load and decode it.

A probe is one BPF object with one ring buffer, an ordered attach ladder of
program variants, a fixed-size record layout (defined once in the plugin's C
header and mirrored here with a size check) and a batch decoder that turns
records into events.
"""

from __future__ import annotations

import struct
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from typing import TYPE_CHECKING, Any, ClassVar

from jalki_core.errors import LayoutMismatchError, ProbeError

if TYPE_CHECKING:
    from jalki_core.events import Event, EventContext


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
class RecordLayout:
    """The Python mirror of a C record struct.

    :param c_struct: the struct's name in the C header (``tcp_connect_event``);
        the loader compares its size in the object's BTF with :attr:`size`.
    :param fmt: a :mod:`struct` format with explicit byte order (``<`` or ``=``)
        and explicit padding, matching the C layout byte for byte.
    :param fields: names of the unpacked values, in order (documentation and
        the fake ring buffer use them).
    :param c_size: the size the C header asserts with ``_Static_assert``.
    """

    c_struct: str
    fmt: str
    fields: tuple[str, ...]
    c_size: int

    def __post_init__(self) -> None:
        if self.fmt[:1] not in ("<", "=", ">", "!"):
            raise LayoutMismatchError(
                f"record layout {self.c_struct}: format {self.fmt!r} must start with a byte order",
                hint="start the format with '<' (little-endian, no implicit alignment)",
            )
        if self.size != self.c_size:
            raise LayoutMismatchError(
                f"record layout {self.c_struct}: Python format is {self.size} bytes, "
                f"the C header says {self.c_size}",
                hint="make the struct format match the C header field by field",
            )

    @cached_property
    def struct(self) -> struct.Struct:
        """The compiled :class:`struct.Struct` for one record."""
        return struct.Struct(self.fmt)

    @property
    def size(self) -> int:
        """Size of one record in bytes."""
        return struct.calcsize(self.fmt)

    def pack(self, **values: Any) -> bytes:
        """Pack one record from field values (missing fields are zero); for tests."""
        unknown = set(values) - set(self.fields)
        if unknown:
            raise ProbeError(f"record layout {self.c_struct}: unknown fields {sorted(unknown)}")
        args = [values.get(name, _zero_for(code)) for name, code in zip(
            self.fields, _field_codes(self.fmt), strict=True)]
        return self.struct.pack(*args)


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


@dataclass(frozen=True)
class ProbeResource:
    """A file shipped in a plugin's package (its compiled BPF object, its event schema)."""

    package: str
    filename: str

    def read_bytes(self) -> bytes:
        """The file's bytes, from the installed package."""
        try:
            return resources.files(self.package).joinpath(self.filename).read_bytes()
        except (FileNotFoundError, ModuleNotFoundError) as exc:
            raise ProbeError(
                f"{self.filename} is missing from package {self.package}",
                hint="reinstall the plugin with pip so its package data (BPF objects, schemas) is installed",
            ) from exc


class Probe(ABC):
    """Base class of every probe. Subclass it, set the class attributes, implement :meth:`decode`.

    Class attributes:

    - ``name``: unique probe name (``tcp_connect``).
    - ``observes``: the kernel function or tracepoint it observes.
    - ``event_types``: the ``type`` values its events carry.
    - ``bpf_object``: a :class:`ProbeResource` naming the compiled object.
    - ``ring_buffer``: the name of its ring buffer map (``events``).
    - ``ring_buffer_bytes``: ring size the loader sets before load (power of two).
    - ``layout``: the :class:`RecordLayout` of its records.
    - ``ladder``: the ordered :class:`AttachRung` variants, best first.
    - ``event_schema``: optional :class:`ProbeResource` naming a JSON Schema
      (draft 2020-12) file in the plugin's package that every event of this
      probe must also satisfy, usually ``if type == … then …`` blocks for its
      ``event_types``. The core's ``specs/event.schema.json`` covers only the
      envelope every probe shares; see :func:`jalki_core.testing.event_validator`.
    - ``extra_drop_causes``: names of probe-specific kernel drop causes (at
      most five), counted in C with ``jalki_count_drop(JALKI_DROP_PROBE_BASE + i)``
      and reported with the shared ones (``ringbuf_full``, ``sampled``,
      ``tracking_full``), e.g. ``("issue_unseen",)``.

    Optional hooks: :meth:`unavailable_reason` (the machine lacks what the
    probe needs), :meth:`rodata` (per-instance kernel-side settings),
    :meth:`prepare` (fill maps after load, before attach),
    :meth:`derive` (events computed from this probe's own
    events, e.g. windowed anomalies) and :meth:`final_events` (events read
    from the probe's maps when the session stops, e.g. a histogram).
    """

    name: ClassVar[str]
    observes: ClassVar[str]
    event_types: ClassVar[tuple[str, ...]]
    bpf_object: ClassVar[ProbeResource]
    ring_buffer: ClassVar[str] = "events"
    ring_buffer_bytes: ClassVar[int] = 1 << 20
    layout: ClassVar[RecordLayout]
    ladder: ClassVar[tuple[AttachRung, ...]]
    event_schema: ClassVar[ProbeResource | None] = None
    extra_drop_causes: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def decode(self, batch: bytes, ctx: EventContext) -> list[Event]:
        """Decode a batch of records (fixed-size, back to back) into events.

        Called with every batch the ring buffer reader drains. ``ctx`` builds
        the common event fields (id, timestamp, source, attach rung…).
        """

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
        for attr in ("name", "observes", "event_types", "bpf_object", "layout", "ladder")
        if not hasattr(probe, attr)
    ]
    if missing:
        raise ProbeError(f"probe {type(probe).__name__} lacks {', '.join(missing)}")
    if not probe.ladder:
        raise ProbeError(f"probe {probe.name} has an empty attach ladder")
    if len(probe.extra_drop_causes) > 5:
        raise ProbeError(f"probe {probe.name}: at most 5 extra_drop_causes")
    if probe.ring_buffer_bytes & (probe.ring_buffer_bytes - 1):
        raise ProbeError(f"probe {probe.name}: ring_buffer_bytes must be a power of two")


def batch_records(layout: RecordLayout, records: Sequence[bytes]) -> bytes:
    """Concatenate packed records into one batch, as the ring buffer reader returns it."""
    for record in records:
        if len(record) != layout.size:
            raise ProbeError(f"record of {len(record)} bytes, {layout.c_struct} is {layout.size}")
    return b"".join(records)


__all__ = [
    "AttachRung",
    "Probe",
    "ProbeResource",
    "RecordLayout",
    "batch_records",
    "check_probe_contract",
]
