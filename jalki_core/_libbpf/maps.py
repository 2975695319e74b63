"""``BpfMap``: one map of a :class:`~jalki_core._libbpf.objects.BpfObject`."""

from __future__ import annotations

import enum
import errno
from typing import TYPE_CHECKING, Any

from jalki_core._libbpf import _check
from jalki_core._libbpf._ffi import ffi, lib
from jalki_core.errors import BpfMapError

if TYPE_CHECKING:
    from jalki_core._libbpf._owner import ObjectOwner

# bpf_map_update_elem flags (UAPI).
BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2


class MapType(enum.IntEnum):
    """``enum bpf_map_type`` values (stable kernel UAPI)."""

    UNSPEC = 0
    HASH = 1
    ARRAY = 2
    PROG_ARRAY = 3
    PERF_EVENT_ARRAY = 4
    PERCPU_HASH = 5
    PERCPU_ARRAY = 6
    STACK_TRACE = 7
    CGROUP_ARRAY = 8
    LRU_HASH = 9
    LRU_PERCPU_HASH = 10
    LPM_TRIE = 11
    ARRAY_OF_MAPS = 12
    HASH_OF_MAPS = 13
    DEVMAP = 14
    SOCKMAP = 15
    CPUMAP = 16
    XSKMAP = 17
    SOCKHASH = 18
    CGROUP_STORAGE = 19
    REUSEPORT_SOCKARRAY = 20
    PERCPU_CGROUP_STORAGE = 21
    QUEUE = 22
    STACK = 23
    SK_STORAGE = 24
    DEVMAP_HASH = 25
    STRUCT_OPS = 26
    RINGBUF = 27
    INODE_STORAGE = 28
    TASK_STORAGE = 29
    BLOOM_FILTER = 30
    USER_RINGBUF = 31
    CGRP_STORAGE = 32


PER_CPU_TYPES = frozenset(
    {
        MapType.PERCPU_HASH,
        MapType.PERCPU_ARRAY,
        MapType.LRU_PERCPU_HASH,
        MapType.PERCPU_CGROUP_STORAGE,
    }
)


def _round8(size: int) -> int:
    return (size + 7) // 8 * 8


class BpfMap:
    """A map of an open object; map operations need the object to be loaded.

    Created by :class:`BpfObject`; keys and values are ``bytes`` of exactly
    ``key_size`` / ``value_size`` (checked here, before any C call).
    """

    def __init__(self, owner: ObjectOwner, handle: Any) -> None:
        self._owner = owner
        self._ptr: Any = handle
        self._name: str = ffi.string(lib.bpf_map__name(handle)).decode()

    def __repr__(self) -> str:
        return f"<BpfMap {self._name!r} of {self._owner.name!r}>"

    def _handle(self, operation: str) -> Any:
        if self._ptr is None:
            raise _check.closed(operation, obj=self._owner.name, detail=f"map {self._name} is closed")
        return self._ptr

    def _invalidate(self) -> None:
        self._ptr = None

    def _error(self, operation: str, err: int, detail: str, hint: str | None = None) -> BpfMapError:
        return _check.error(
            BpfMapError, operation, err, obj=self._owner.name, detail=f"map {self._name}: {detail}", hint=hint
        )

    # -- attributes ---------------------------------------------------------

    @property
    def name(self) -> str:
        """The map's name (``bpf_map__name``)."""
        return self._name

    @property
    def owner(self) -> ObjectOwner:
        """The object this map belongs to."""
        return self._owner

    @property
    def fd(self) -> int:
        """The kernel file descriptor; raises BpfHandleClosedError before load."""
        fd = int(lib.bpf_map__fd(self._handle("bpf_map__fd")))
        if fd < 0:
            raise _check.closed("bpf_map__fd", obj=self._owner.name, detail=f"map {self._name} is not loaded")
        return fd

    @property
    def type(self) -> int:
        """The map type: a :class:`MapType` when known, else the raw number."""
        value = int(lib.bpf_map__type(self._handle("bpf_map__type")))
        try:
            return MapType(value)
        except ValueError:
            return value

    @property
    def key_size(self) -> int:
        """Key size in bytes."""
        return int(lib.bpf_map__key_size(self._handle("bpf_map__key_size")))

    @property
    def value_size(self) -> int:
        """Value size in bytes (per CPU for per-CPU maps)."""
        return int(lib.bpf_map__value_size(self._handle("bpf_map__value_size")))

    @property
    def max_entries(self) -> int:
        """Maximum entries (ring buffers: size in bytes); settable before load."""
        return int(lib.bpf_map__max_entries(self._handle("bpf_map__max_entries")))

    @max_entries.setter
    def max_entries(self, value: int) -> None:
        handle = self._handle("bpf_map__set_max_entries")
        if not 0 < value < 2**32:
            raise self._error("bpf_map__set_max_entries", errno.EINVAL, f"max_entries {value} out of range")
        _check.rc(
            lib.bpf_map__set_max_entries(handle, value),
            "bpf_map__set_max_entries",
            BpfMapError,
            obj=self._owner.name,
            detail=f"map {self._name}" + (" (object already loaded)" if self._owner.load_attempted else ""),
        )

    @property
    def is_per_cpu(self) -> bool:
        """True for per-CPU maps, whose values are read with :meth:`lookup_per_cpu`."""
        return self.type in PER_CPU_TYPES

    # -- element operations -------------------------------------------------

    def _key(self, operation: str, key: bytes) -> tuple[int, Any]:
        fd = self.fd
        size = self.key_size
        if len(key) != size:
            raise self._error(operation, errno.EINVAL, f"key is {len(key)} bytes, map key_size is {size}")
        return fd, ffi.from_buffer(key)

    def lookup(self, key: bytes) -> bytes | None:
        """The value stored under ``key``, or None when there is none."""
        op = "bpf_map_lookup_elem"
        fd, ckey = self._key(op, key)
        if self.is_per_cpu:
            raise self._error(op, errno.EINVAL, "per-CPU map", hint="use lookup_per_cpu()")
        size = self.value_size
        value = ffi.new("char[]", max(size, 1))
        res = int(lib.bpf_map_lookup_elem(fd, ckey, value))
        if res == -errno.ENOENT:
            return None
        _check.rc(res, op, BpfMapError, obj=self._owner.name, detail=f"map {self._name}")
        return bytes(ffi.buffer(value, size))

    def lookup_per_cpu(self, key: bytes) -> list[bytes]:
        """One value per possible CPU for ``key`` of a per-CPU map ([] when absent)."""
        op = "bpf_map_lookup_elem"
        fd, ckey = self._key(op, key)
        if not self.is_per_cpu:
            raise self._error(op, errno.EINVAL, "not a per-CPU map", hint="use lookup()")
        size = self.value_size
        stride = _round8(size)
        ncpus = _possible_cpus()
        value = ffi.new("char[]", stride * ncpus)
        res = int(lib.bpf_map_lookup_elem(fd, ckey, value))
        if res == -errno.ENOENT:
            return []
        _check.rc(res, op, BpfMapError, obj=self._owner.name, detail=f"map {self._name}")
        raw = bytes(ffi.buffer(value, stride * ncpus))
        return [raw[i * stride : i * stride + size] for i in range(ncpus)]

    def update(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
        """Store ``value`` under ``key`` (``flags``: BPF_ANY, BPF_NOEXIST, BPF_EXIST).

        For per-CPU maps ``value`` is either one ``value_size`` value, written
        to every CPU, or all CPUs' values (``round_up(value_size, 8) × CPUs`` bytes).
        """
        op = "bpf_map_update_elem"
        fd, ckey = self._key(op, key)
        size = self.value_size
        data = bytes(value)
        if self.is_per_cpu:
            stride = _round8(size)
            total = stride * _possible_cpus()
            if len(data) == size:
                data = (data + bytes(stride - size)) * _possible_cpus()
            elif len(data) != total:
                raise self._error(
                    op, errno.EINVAL, f"value is {len(data)} bytes; expected {size} or {total} (all CPUs)"
                )
        elif len(data) != size:
            raise self._error(op, errno.EINVAL, f"value is {len(data)} bytes, map value_size is {size}")
        if flags < 0:
            raise self._error(op, errno.EINVAL, f"bad flags {flags}")
        _check.rc(
            int(lib.bpf_map_update_elem(fd, ckey, ffi.from_buffer(data), flags)),
            op,
            BpfMapError,
            obj=self._owner.name,
            detail=f"map {self._name}",
        )

    def delete(self, key: bytes) -> None:
        """Remove ``key``; raises BpfMapError (ENOENT) when it is absent."""
        op = "bpf_map_delete_elem"
        fd, ckey = self._key(op, key)
        _check.rc(
            int(lib.bpf_map_delete_elem(fd, ckey)),
            op,
            BpfMapError,
            obj=self._owner.name,
            detail=f"map {self._name}",
        )

    def keys(self) -> list[bytes]:
        """All keys, in kernel iteration order (at most ``max_entries``)."""
        op = "bpf_map_get_next_key"
        fd = self.fd
        size = self.key_size
        limit = self.max_entries
        current = ffi.new("char[]", max(size, 1))
        nxt = ffi.new("char[]", max(size, 1))
        prev: Any = ffi.NULL
        out: list[bytes] = []
        # The limit guards against endless restarts when entries are deleted meanwhile.
        while len(out) < limit:
            res = int(lib.bpf_map_get_next_key(fd, prev, nxt))
            if res == -errno.ENOENT:
                break
            _check.rc(res, op, BpfMapError, obj=self._owner.name, detail=f"map {self._name}")
            out.append(bytes(ffi.buffer(nxt, size)))
            ffi.memmove(current, nxt, size)
            prev = current
        return out


def _possible_cpus() -> int:
    return _check.rc(int(lib.libbpf_num_possible_cpus()), "libbpf_num_possible_cpus")
