"""``BpfProgram`` and ``BpfLink``: the programs of an object and their attachments."""

from __future__ import annotations

import errno
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from jalki_core._libbpf import _check
from jalki_core._libbpf._ffi import ffi, lib
from jalki_core._libbpf.log import capture_libbpf_log
from jalki_core.errors import BpfAttachError, BpfLoadError, LibbpfError

if TYPE_CHECKING:
    from jalki_core._libbpf._owner import ObjectOwner


def last_warning(lines: list[str]) -> str | None:
    """The last non-empty libbpf line, used as an error's detail."""
    for line in reversed(lines):
        if line.strip():
            return line.strip()
    return None


class BpfLink:
    """An attachment of a program; :meth:`destroy` detaches it (idempotent)."""

    def __init__(self, program: BpfProgram, handle: Any, target: str) -> None:
        self._program = program
        self._ptr: Any = handle
        self.target = target

    def __repr__(self) -> str:
        state = "destroyed" if self._ptr is None else "attached"
        return f"<BpfLink {self._program.name} → {self.target} ({state})>"

    def __enter__(self) -> BpfLink:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.destroy()

    @property
    def program(self) -> BpfProgram:
        """The program this link attaches."""
        return self._program

    @property
    def destroyed(self) -> bool:
        """True once :meth:`destroy` ran (or the object was closed)."""
        return self._ptr is None

    @property
    def fd(self) -> int:
        """The link's file descriptor."""
        if self._ptr is None:
            raise _check.closed(
                "bpf_link__fd",
                obj=self._program.owner.name,
                program=self._program.name,
                detail="the link is destroyed",
            )
        return int(lib.bpf_link__fd(self._ptr))

    def destroy(self) -> None:
        """Detach and free the link; does nothing when already destroyed."""
        handle, self._ptr = self._ptr, None
        if handle is None:
            return
        self._program.owner._forget_link(self)
        # bpf_link__destroy frees the link even when detaching reports an error.
        _check.rc(
            int(lib.bpf_link__destroy(handle)),
            "bpf_link__destroy",
            BpfAttachError,
            obj=self._program.owner.name,
            program=self._program.name,
        )


class BpfProgram:
    """A program of an open object (created by :class:`BpfObject`)."""

    def __init__(self, owner: ObjectOwner, handle: Any) -> None:
        self._owner = owner
        self._ptr: Any = handle
        self._name: str = ffi.string(lib.bpf_program__name(handle)).decode()
        section = lib.bpf_program__section_name(handle)
        self._section: str = ffi.string(section).decode() if section != ffi.NULL else ""
        self._verifier_log = ""

    def __repr__(self) -> str:
        return f"<BpfProgram {self._name!r} ({self._section}) of {self._owner.name!r}>"

    def _handle(self, operation: str) -> Any:
        if self._ptr is None:
            raise _check.closed(operation, obj=self._owner.name, program=self._name)
        return self._ptr

    def _invalidate(self) -> None:
        self._ptr = None

    @property
    def name(self) -> str:
        """The program's (function) name."""
        return self._name

    @property
    def section(self) -> str:
        """The ELF section, e.g. ``tracepoint/syscalls/sys_enter_getppid``."""
        return self._section

    @property
    def owner(self) -> ObjectOwner:
        """The object this program belongs to."""
        return self._owner

    @property
    def autoload(self) -> bool:
        """Whether :meth:`BpfObject.load` loads this program; settable before load only."""
        return bool(lib.bpf_program__autoload(self._handle("bpf_program__autoload")))

    @autoload.setter
    def autoload(self, value: bool) -> None:
        handle = self._handle("bpf_program__set_autoload")
        if self._owner.load_attempted:
            raise BpfLoadError(
                "bpf_program__set_autoload",
                errno.EBUSY,
                obj=self._owner.name,
                program=self._name,
                detail="the object was already loaded",
                hint="set autoload before load(); open the object again to change it",
            )
        _check.rc(
            int(lib.bpf_program__set_autoload(handle, bool(value))),
            "bpf_program__set_autoload",
            BpfLoadError,
            obj=self._owner.name,
            program=self._name,
        )

    @property
    def fd(self) -> int:
        """The loaded program's file descriptor."""
        fd = int(lib.bpf_program__fd(self._handle("bpf_program__fd")))
        if fd < 0:
            raise _check.closed(
                "bpf_program__fd",
                obj=self._owner.name,
                program=self._name,
                detail="the program is not loaded (autoload off, or object not loaded)",
            )
        return fd

    @property
    def verifier_log(self) -> str:
        """What libbpf reported when this program failed to load ("" otherwise).

        The verifier's log when the kernel produced one; otherwise libbpf's
        lines about this program (e.g. an EPERM refusal has no verifier log).
        """
        return self._verifier_log

    def _set_verifier_log(self, text: str) -> None:
        self._verifier_log = text

    def stats(self) -> tuple[int, int]:
        """``(run_time_ns, run_cnt)``; counted only while :func:`enable_stats` is held."""
        fd = self.fd
        run_time = ffi.new("uint64_t *")
        run_cnt = ffi.new("uint64_t *")
        _check.rc(
            int(lib.jalki_prog_stats(fd, run_time, run_cnt)),
            "bpf_obj_get_info_by_fd",
            LibbpfError,
            obj=self._owner.name,
            program=self._name,
        )
        return int(run_time[0]), int(run_cnt[0])

    def recursion_misses(self) -> int:
        """Runs the kernel skipped (``bpf_prog_info.recursion_misses``): the program found a tracing program
        already running on that CPU. Counted whether or not stats are enabled."""
        misses = ffi.new("uint64_t *")
        _check.rc(
            int(lib.jalki_prog_recursion_misses(self.fd, misses)),
            "bpf_obj_get_info_by_fd",
            LibbpfError,
            obj=self._owner.name,
            program=self._name,
        )
        return int(misses[0])

    # -- attaching ----------------------------------------------------------

    def _attach(self, operation: str, target: str, call: Callable[[Any], Any]) -> BpfLink:
        handle = self._handle(operation)
        self.fd  # noqa: B018 - raises BpfHandleClosedError when not loaded
        with capture_libbpf_log() as lines:
            link = call(handle)
        _check.ptr(
            link,
            operation,
            BpfAttachError,
            obj=self._owner.name,
            program=self._name,
            detail=last_warning(lines) or f"target {target}",
        )
        result = BpfLink(self, link, target)
        self._owner._remember_link(result)
        return result

    def attach(self) -> BpfLink:
        """Attach according to the section name (``bpf_program__attach``)."""
        return self._attach("bpf_program__attach", self._section, lib.bpf_program__attach)

    def attach_trace(self) -> BpfLink:
        """Attach a fentry/fexit/fmod_ret/tp_btf program (``bpf_program__attach_trace``)."""
        return self._attach("bpf_program__attach_trace", self._section, lib.bpf_program__attach_trace)

    def attach_raw_tracepoint(self, name: str) -> BpfLink:
        """Attach to raw tracepoint ``name`` (e.g. ``sys_enter``)."""
        cname = name.encode()
        return self._attach(
            "bpf_program__attach_raw_tracepoint",
            f"raw_tp/{name}",
            lambda h: lib.bpf_program__attach_raw_tracepoint(h, cname),
        )

    def attach_tracepoint(self, category: str, name: str) -> BpfLink:
        """Attach to classic tracepoint ``category:name`` (e.g. ``syscalls``, ``sys_enter_getppid``)."""
        ccat, cname = category.encode(), name.encode()
        return self._attach(
            "bpf_program__attach_tracepoint",
            f"tracepoint/{category}/{name}",
            lambda h: lib.bpf_program__attach_tracepoint(h, ccat, cname),
        )
