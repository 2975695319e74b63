"""``BpfObject``: an opened (and later loaded) BPF ELF object."""

from __future__ import annotations

import errno
import os
import re
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jalki_core._libbpf import _check
from jalki_core._libbpf._closeable import Closeable
from jalki_core._libbpf._ffi import ffi, lib
from jalki_core._libbpf.log import capture_libbpf_log
from jalki_core._libbpf.maps import BpfMap
from jalki_core._libbpf.programs import BpfLink, BpfProgram, last_warning
from jalki_core.errors import BpfLoadError, BpfMapError, BpfOpenError

if TYPE_CHECKING:
    from jalki_core._libbpf.ringbuf import RingBufferReader

_LOG_BLOCK = re.compile(r"prog '([^']+)': -- BEGIN PROG LOAD LOG --\n(.*?)-- END PROG LOAD LOG --", re.S)
_PROG_FAILED = re.compile(r"prog '([^']+)': (?:failed to load|BPF program load failed)")
_NOT_A_REASON = ("processed ", "verification time", "stack depth", "max_states_per_insn")


@dataclass(frozen=True)
class BtfMember:
    """One leaf member of a struct in an object's BTF, nested structs flattened.

    :param path: the member's C path (``hdr.pid``, ``tuple.sport``, ``items[1].len``).
    :param name: its own name, the last part of the path (``pid``).
    :param offset: byte offset from the start of the outer struct.
    :param size: its size in bytes (a whole array or union is one leaf).
    :param element_size: for an array of scalars, the size of one innermost
        element (``__u64 count[4]`` → 8, ``char names[8][64]`` → 1); else ``size``.
    :param bitfield: the member is a bit field (not a whole number of bytes).
    """

    path: str
    name: str
    offset: int
    size: int
    element_size: int
    bitfield: bool = False


def _btf_leaves(btf: Any, type_id: int, base: int, prefix: str, out: list[BtfMember]) -> None:
    """Append the leaf members of struct ``type_id`` at byte ``base`` to ``out``."""
    t = lib.btf__type_by_id(btf, type_id)
    members = lib.btf_members(t)
    for index in range(int(lib.btf_vlen(t))):
        member = members[index]
        name = ffi.string(lib.btf__name_by_offset(btf, member.name_off)).decode()
        path = f"{prefix}.{name}" if prefix and name else (name or prefix)
        bit_offset = int(lib.btf_member_bit_offset(t, index))
        bits = int(lib.btf_member_bitfield_size(t, index))
        offset = base + bit_offset // 8
        resolved = int(lib.btf__resolve_type(btf, member.type))
        size = int(lib.btf__resolve_size(btf, member.type))
        if bits or bit_offset % 8:
            out.append(BtfMember(path, name, offset, (bits + 7) // 8, (bits + 7) // 8, bitfield=True))
            continue
        kind = int(lib.btf_kind(lib.btf__type_by_id(btf, resolved)))
        if kind == lib.BTF_KIND_STRUCT:
            _btf_leaves(btf, resolved, offset, path, out)
        elif kind == lib.BTF_KIND_ARRAY:
            _btf_array(btf, resolved, offset, path, name, size, out)
        else:  # scalars, pointers, enums; a union is one leaf
            out.append(BtfMember(path, name, offset, size, size))


def _btf_array(btf: Any, type_id: int, offset: int, path: str, name: str, size: int, out: list[BtfMember]) -> None:
    """An array member: one leaf for scalars (any dimensions), element by element for structs."""
    array = lib.btf_array(lib.btf__type_by_id(btf, type_id))
    element = int(lib.btf__resolve_type(btf, array.type))
    element_type = lib.btf__type_by_id(btf, element)
    while int(lib.btf_kind(element_type)) == lib.BTF_KIND_ARRAY:
        element = int(lib.btf__resolve_type(btf, lib.btf_array(element_type).type))
        element_type = lib.btf__type_by_id(btf, element)
    element_size = int(lib.btf__resolve_size(btf, element))
    if int(lib.btf_kind(element_type)) == lib.BTF_KIND_STRUCT and element_size > 0:
        for i in range(size // element_size):
            _btf_leaves(btf, element, offset + i * element_size, f"{path}[{i}]", out)
        return
    out.append(BtfMember(path, name, offset, size, element_size or size))


def _verifier_reason(log: str) -> str | None:
    """The line of a verifier log that says why (the last one before the statistics)."""
    for line in reversed(log.splitlines()):
        text = line.strip()
        if text and not text.startswith(_NOT_A_REASON):
            return text
    return None


class BpfObject(Closeable):
    """An opened BPF object: its programs and maps, loaded with :meth:`load`.

    Use :meth:`open_file` or :meth:`open_memory`; :meth:`close` (idempotent,
    also on ``with`` exit) destroys the links and ring buffer readers made
    from it, then the object. Handles used after close raise
    :class:`~jalki_core.errors.BpfHandleClosedError`.
    """

    def __init__(self, handle: Any, keepalive: Any = None) -> None:
        """Wrap an opened ``struct bpf_object *`` (use the ``open_*`` classmethods)."""
        if handle is None or handle == ffi.NULL:
            raise _check.closed("BpfObject", detail="NULL object handle")
        self._links: list[BpfLink] = []
        self._readers: list[RingBufferReader] = []
        self._programs: dict[str, BpfProgram] = {}
        self._maps: dict[str, BpfMap] = {}
        self._loaded = False
        self._load_attempted = False
        self._name = "?"
        self._ptr: Any = handle
        self._keepalive = keepalive  # open_mem's buffer must outlive the object
        self._name = ffi.string(lib.bpf_object__name(handle)).decode()
        prog = lib.bpf_object__next_program(handle, ffi.NULL)
        while prog != ffi.NULL:
            program = BpfProgram(self, prog)
            self._programs[program.name] = program
            prog = lib.bpf_object__next_program(handle, prog)
        map_ = lib.bpf_object__next_map(handle, ffi.NULL)
        while map_ != ffi.NULL:
            bpf_map = BpfMap(self, map_)
            self._maps[bpf_map.name] = bpf_map
            map_ = lib.bpf_object__next_map(handle, map_)

    @classmethod
    def open_file(cls, path: str | os.PathLike[str]) -> BpfObject:
        """Open a ``.bpf.o`` file (nothing is loaded into the kernel yet)."""
        fspath = os.fspath(path)
        with capture_libbpf_log() as lines:
            handle = lib.bpf_object__open_file(os.fsencode(fspath), ffi.NULL)
        _check.ptr(
            handle,
            "bpf_object__open_file",
            BpfOpenError,
            obj=fspath,
            detail=last_warning(lines),
        )
        return cls(handle)

    @classmethod
    def open_memory(cls, data: bytes, name: str) -> BpfObject:
        """Open a BPF ELF object held in memory; ``name`` becomes the object name."""
        if not name:
            raise _check.error(BpfOpenError, "bpf_object__open_mem", errno.EINVAL, detail="empty object name")
        buf = ffi.new("char[]", bytes(data) or b"\0")  # libbpf keeps pointing into it
        with capture_libbpf_log() as lines:
            handle = lib.jalki_open_mem(buf, len(data), name.encode())
        _check.ptr(
            handle,
            "bpf_object__open_mem",
            BpfOpenError,
            obj=name,
            detail=last_warning(lines),
        )
        return cls(handle, keepalive=buf)

    def __repr__(self) -> str:
        state = "closed" if self._ptr is None else ("loaded" if self._loaded else "open")
        return f"<BpfObject {self._name!r} ({state})>"

    def _handle(self, operation: str) -> Any:
        if self._ptr is None:
            raise _check.closed(operation, obj=self._name, detail="the object is closed")
        return self._ptr

    # -- bookkeeping used by links and readers ------------------------------

    def _remember_link(self, link: BpfLink) -> None:
        self._links.append(link)

    def _forget_link(self, link: BpfLink) -> None:
        if link in self._links:
            self._links.remove(link)

    def _remember_reader(self, reader: RingBufferReader) -> None:
        self._handle("RingBufferReader")
        self._readers.append(reader)

    def _forget_reader(self, reader: RingBufferReader) -> None:
        if reader in self._readers:
            self._readers.remove(reader)

    # -- public API ---------------------------------------------------------

    @property
    def name(self) -> str:
        """The object name (file base name, or the name given to open_memory)."""
        return self._name

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._ptr is None

    @property
    def loaded(self) -> bool:
        """True after a successful :meth:`load`."""
        return self._loaded

    @property
    def load_attempted(self) -> bool:
        """True once :meth:`load` ran, successfully or not (libbpf allows one try)."""
        return self._load_attempted

    @property
    def programs(self) -> dict[str, BpfProgram]:
        """Programs by name."""
        self._handle("programs")
        return dict(self._programs)

    @property
    def maps(self) -> dict[str, BpfMap]:
        """Maps by name (internal maps appear as e.g. ``<obj>.rodata``)."""
        self._handle("maps")
        return dict(self._maps)

    def set_rodata(self, var: str, value: int | bytes) -> None:
        """Set ``const volatile`` global ``var`` in ``.rodata`` before load.

        ints are packed in native byte order to the variable's size; bytes must
        be exactly that size. The variable is found through the object's BTF.
        """
        op = "set_rodata"
        handle = self._handle(op)
        if self._load_attempted:
            raise _check.error(
                BpfMapError,
                op,
                errno.EBUSY,
                obj=self._name,
                detail=f"variable {var!r}: the object was already loaded",
                hint="set .rodata before load()",
            )
        off = ffi.new("uint32_t *")
        size = ffi.new("uint32_t *")
        _check.rc(
            int(lib.jalki_datasec_locate(handle, b".rodata", var.encode(), off, size)),
            op,
            BpfMapError,
            obj=self._name,
            detail=f"variable {var!r} in .rodata",
            hint="declare it as a `const volatile` global and compile with -g (BTF)",
        )
        width = int(size[0])
        if isinstance(value, int):
            try:
                data = value.to_bytes(width, sys.byteorder, signed=value < 0)
            except OverflowError:
                raise _check.error(
                    BpfMapError,
                    op,
                    errno.ERANGE,
                    obj=self._name,
                    detail=f"variable {var!r}: {value} does not fit in {width} bytes",
                ) from None
        else:
            data = bytes(value)
            if len(data) != width:
                raise _check.error(
                    BpfMapError,
                    op,
                    errno.EINVAL,
                    obj=self._name,
                    detail=f"variable {var!r} is {width} bytes, value is {len(data)}",
                )
        rodata = _check.ptr(
            lib.bpf_object__find_map_by_name(handle, b".rodata"),
            op,
            BpfMapError,
            obj=self._name,
            detail="no .rodata map",
        )
        psize = ffi.new("size_t *")
        initial = lib.bpf_map__initial_value(rodata, psize)
        if initial == ffi.NULL or int(off[0]) + width > int(psize[0]):
            raise _check.error(
                BpfMapError,
                op,
                errno.EFAULT,
                obj=self._name,
                detail=f"variable {var!r} lies outside the .rodata image",
            )
        ffi.memmove(ffi.cast("char *", initial) + int(off[0]), data, width)

    def btf_struct_size(self, name: str) -> int | None:
        """``sizeof(struct name)`` from the object's BTF, or None when absent."""
        res = int(lib.jalki_btf_struct_size(self._handle("btf_struct_size"), name.encode()))
        if res in (-errno.ENOENT, -errno.ENODATA):
            return None
        return _check.rc(res, "btf_struct_size", BpfOpenError, obj=self._name, detail=f"struct {name}")

    def btf_struct_members(self, name: str) -> list[BtfMember] | None:
        """The leaf members of ``struct name`` in the object's BTF, by offset; None when absent.

        Nested structs are walked (``struct jalki_event_header hdr`` gives
        ``hdr.ts_ns`` … ``hdr.comm``); arrays of scalars and unions are one
        leaf each; arrays of structs are walked element by element.
        """
        handle = self._handle("btf_struct_members")
        btf = lib.bpf_object__btf(handle)
        if btf == ffi.NULL:
            return None
        type_id = int(lib.btf__find_by_name_kind(btf, name.encode(), lib.BTF_KIND_STRUCT))
        if type_id < 0:
            return None
        members: list[BtfMember] = []
        _btf_leaves(btf, type_id, 0, "", members)
        return sorted(members, key=lambda member: member.offset)

    def load(self) -> None:
        """Load every autoload program and create the maps (once per object).

        On failure raises :class:`BpfLoadError` naming the program that failed,
        with its ``verifier_log`` (also kept on ``programs[name].verifier_log``).
        """
        op = "bpf_object__load"
        handle = self._handle(op)
        if self._load_attempted:
            raise _check.error(
                BpfLoadError,
                op,
                errno.EBUSY,
                obj=self._name,
                detail="libbpf allows one load per object",
                hint="open the object again",
            )
        self._load_attempted = True
        with capture_libbpf_log() as lines:
            res = int(lib.bpf_object__load(handle))
        if res >= 0:
            self._loaded = True
            return
        text = "\n".join(lines)
        logs = {m.group(1): m.group(2) for m in _LOG_BLOCK.finditer(text)}
        failed = _PROG_FAILED.search(text)
        program = failed.group(1) if failed else None
        for name, prog in self._programs.items():
            if name in logs:
                prog._set_verifier_log(logs[name])
            elif name == program:
                marker = f"prog '{name}'"
                prog._set_verifier_log("\n".join(line for line in lines if marker in line))
        log = self._programs[program].verifier_log if program in self._programs else ""
        detail = _verifier_reason(logs[program]) if program in logs else None
        if program is None:
            detail = last_warning([ln for ln in lines if not ln.startswith("failed to load object")])
        _check.rc(res, op, BpfLoadError, obj=self._name, program=program, detail=detail, verifier_log=log)

    def close(self) -> None:
        """Destroy links and ring buffer readers, then free the object (idempotent)."""
        handle = self._ptr
        if handle is None:
            return
        for reader in list(self._readers):
            reader.close()
        for link in list(self._links):
            try:
                link.destroy()
            except Exception:  # keep closing the rest
                pass
        self._ptr = None
        for program in self._programs.values():
            program._invalidate()
        for bpf_map in self._maps.values():
            bpf_map._invalidate()
        lib.bpf_object__close(handle)
        self._keepalive = None
