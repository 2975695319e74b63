"""The one checker every libbpf return value goes through.

``rc`` handles ``-errno`` integer results, ``ptr`` handles pointers that are
NULL on error (libbpf 1.x sets ``errno``), ``closed`` builds the error for a
handle that was closed or never became valid. libbpf's private error codes
(4000-4013, ``LIBBPF_ERRNO__*``) are translated to the nearest kernel errno so
``errno_name`` is always meaningful; the libbpf name goes into ``detail``.
"""

from __future__ import annotations

import errno as _errno
from typing import Any, TypeVar

from jalki_core._libbpf._ffi import ffi
from jalki_core.errors import BpfHandleClosedError, LibbpfError

E = TypeVar("E", bound=LibbpfError)

LIBBPF_ERRNO_BASE = 4000

# code → (libbpf name, description, nearest kernel errno)
_LIBBPF_ERRNOS: dict[int, tuple[str, str, int]] = {
    4000: ("LIBBPF_ERRNO__LIBELF", "libelf could not read the file", _errno.ENOEXEC),
    4001: ("LIBBPF_ERRNO__FORMAT", "not a valid BPF object file", _errno.ENOEXEC),
    4002: ("LIBBPF_ERRNO__KVERSION", "incorrect or missing kernel version section", _errno.EINVAL),
    4003: ("LIBBPF_ERRNO__ENDIAN", "object endianness does not match the host", _errno.ENOEXEC),
    4004: ("LIBBPF_ERRNO__INTERNAL", "internal libbpf error", _errno.EINVAL),
    4005: ("LIBBPF_ERRNO__RELOC", "relocation failed", _errno.ENOEXEC),
    4006: ("LIBBPF_ERRNO__LOAD", "program load failed for an unknown reason", _errno.EINVAL),
    4007: ("LIBBPF_ERRNO__VERIFY", "the verifier rejected the program", _errno.EACCES),
    4008: ("LIBBPF_ERRNO__PROG2BIG", "the program is too big", _errno.E2BIG),
    4009: ("LIBBPF_ERRNO__KVER", "incorrect kernel version", _errno.EINVAL),
    4010: ("LIBBPF_ERRNO__PROGTYPE", "the kernel does not support this program type", _errno.EINVAL),
    4011: ("LIBBPF_ERRNO__WRNGPID", "wrong pid in netlink message", _errno.EINVAL),
    4012: ("LIBBPF_ERRNO__INVSEQ", "invalid netlink sequence", _errno.EINVAL),
    4013: ("LIBBPF_ERRNO__NLPARSE", "netlink message parse error", _errno.EINVAL),
}


def error(
    exc_type: type[E],
    operation: str,
    err: int,
    *,
    obj: str | None = None,
    program: str | None = None,
    detail: str | None = None,
    hint: str | None = None,
    **extra: Any,
) -> E:
    """Build (not raise) an ``exc_type`` for a failed ``operation`` with errno ``err``."""
    code = abs(err) if err else _errno.EINVAL
    libbpf_code = _LIBBPF_ERRNOS.get(code)
    if libbpf_code is not None:
        name, text, code = libbpf_code
        note = f"{name}: {text}"
        detail = f"{note}; {detail}" if detail else note
    return exc_type(operation, code, obj=obj, program=program, detail=detail, hint=hint, **extra)


def rc(
    value: int,
    operation: str,
    exc_type: type[LibbpfError] = LibbpfError,
    **context: Any,
) -> int:
    """Return ``value`` when it is >= 0, else raise ``exc_type`` for ``-value``.

    ``context`` is passed to :func:`error` (``obj``, ``program``, ``detail``,
    ``hint`` and subclass extras such as ``verifier_log``).
    """
    if value < 0:
        raise error(exc_type, operation, value, **context)
    return value


def ptr(
    value: Any,
    operation: str,
    exc_type: type[LibbpfError] = LibbpfError,
    **context: Any,
) -> Any:
    """Return the cdata pointer ``value``; raise ``exc_type`` (errno from C) when NULL."""
    if value == ffi.NULL:
        raise error(exc_type, operation, ffi.errno or _errno.EINVAL, **context)
    return value


def closed(
    operation: str,
    *,
    obj: str | None = None,
    program: str | None = None,
    detail: str = "the handle is closed",
) -> BpfHandleClosedError:
    """The error for using a closed, NULL or not-yet-valid handle (never reaches C)."""
    return BpfHandleClosedError(operation, _errno.EBADF, obj=obj, program=program, detail=detail)
