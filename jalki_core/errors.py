"""The one exception hierarchy of jalki.

Every error jalki raises on purpose derives from :class:`JalkiError`. Library
code raises them; only the CLI turns them into a red line and an exit code
(:mod:`jalki_core.cli.exit_codes` maps this tree to ``ExitCode``). Every field an
error carries is declared on its class, never attached later.

::

    JalkiError
    ├── UsageError                 bad input from the user (flag value, unknown name)
    │   ├── UnknownPluginError     a --plugin name that no installed plugin provides
    │   └── UnknownEmitterError    an --emit name that no emitter provides
    ├── PrivilegeError             not root / missing CAP_BPF+CAP_PERFMON
    ├── EnvironmentProblem         the kernel or machine lacks something (BTF, tracefs)
    ├── PluginError                a plugin failed to import, register or behave
    ├── ProbeError                 a probe's contract is broken or it could not attach
    │   ├── LayoutMismatchError    the Python record layout disagrees with the C header
    │   ├── AttachLadderExhausted  every rung of a probe's attach ladder failed
    │   └── ProbeUnavailableError  the machine lacks what a probe needs (no PMU…); nothing is faked
    ├── EmitterError               an emitter could not open or write its sink
    │   └── EmitterClosedError     the sink went away for good (reader closed the pipe)
    ├── BpfBuildError              clang failed to compile a BPF source
    ├── DaemonError                talking to (or being) the jalki daemon failed
    │   ├── DaemonUnavailable      nothing usable answers at the socket
    │   │   ├── NotAllowed         the socket is not ours to use (EACCES)
    │   │   ├── DaemonTimeout      no reply (or no room to connect) within the client's timeout
    │   │   └── DaemonStopped      the daemon shut down in order while a stream was open
    │   ├── RequestError           the daemon answered a request with an error (code: the protocol's)
    │   │   └── ProbeNotFound      code unknown_probe
    │   └── ProtocolError          the daemon refuses a request (becomes an error reply)
    └── LibbpfError                a libbpf call failed (errno, object, program, hint)
        ├── BpfOpenError
        ├── BpfLoadError
        ├── BpfAttachError
        ├── BpfMapError
        ├── RingBufferError
        ├── BpfHandleClosedError   a handle was used after it was closed
        └── PerfEventOpenError     perf_event_open refused an event (no PMU, paranoid…)
"""

from __future__ import annotations

import errno as _errno
import os
from collections.abc import Sequence
from typing import Any


def errno_name(code: int) -> str:
    """Return the kernel name of an errno value (``111`` → ``"ECONNREFUSED"``)."""
    code = abs(code)
    return _errno.errorcode.get(code, f"E{code}")


class JalkiError(Exception):
    """Base of every error jalki raises on purpose."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        """The problem and, when known, the fix, on one line."""
        if self.hint:
            return f"{self.message} ({self.hint})"
        return self.message


class UsageError(JalkiError):
    """Bad input from the user: a flag value, an unknown name, a bad path."""


class UnknownPluginError(UsageError):
    """A requested plugin is not installed."""


class UnknownEmitterError(UsageError):
    """A requested emitter is not provided by any plugin."""


class PrivilegeError(JalkiError):
    """The process lacks the privileges to load BPF programs."""


class EnvironmentProblem(JalkiError):
    """The kernel or machine lacks something jalki needs (BTF, tracefs, …)."""


class PluginError(JalkiError):
    """A plugin failed to import, register, or honour the hook contract."""


class ProbeError(JalkiError):
    """A probe's contract is broken, or the probe could not be attached."""


class LayoutMismatchError(ProbeError):
    """The Python mirror of a record layout disagrees with the C definition."""


class AttachLadderExhausted(ProbeError):
    """Every rung of a probe's attach ladder failed.

    :param failures: what each rung's try said (``jalki_core.loader.RungFailure``), in ladder order.
    """

    def __init__(self, message: str, *, failures: Sequence[object] = (), hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.failures: list[Any] = list(failures)


class ProbeUnavailableError(ProbeError):
    """The machine lacks what a probe needs; the probe is reported as not attached, never run on fake data.

    The loader raises it when ``Probe.unavailable_reason`` returns a reason. A
    probe may also raise it itself, with the reason as message, from
    ``unavailable_reason``, ``rodata`` or ``prepare`` (e.g. ``perf_event_open``
    found no hardware counter): the loader then stops trying rungs and reports
    it exactly like a returned reason.
    """


class EmitterError(JalkiError):
    """An emitter could not open or write its sink."""


class EmitterClosedError(EmitterError):
    """The emitter's sink went away for good (e.g. the reader of stdout exited)."""


class RetryableSendError(EmitterError):
    """A send that may succeed if tried again (HTTP 408/429/502/503/504, a connection error, gRPC
    UNAVAILABLE or RESOURCE_EXHAUSTED); ``retry_after`` is the receiver's ``Retry-After`` in seconds, if any."""

    def __init__(self, message: str, *, retry_after: float | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.retry_after = retry_after


class RejectedSendError(EmitterError):
    """The receiver refused a batch for good (a non-retryable reply): its events are lost as ``rejected``."""


class BpfBuildError(JalkiError):
    """clang failed to compile a BPF C source."""


class DaemonError(JalkiError):
    """Talking to the jalki daemon failed, or the daemon refuses a request."""


class DaemonUnavailable(DaemonError):
    """Nothing usable answers at the daemon's socket (missing, stale, lost, or not answering in time)."""


class NotAllowed(DaemonUnavailable):
    """The daemon's socket is not ours to use (``EACCES``: not root and not in its ``--socket-group``)."""


class DaemonTimeout(DaemonUnavailable):
    """The daemon did not answer (or accept the connection) within the client's timeout."""


class DaemonStopped(DaemonUnavailable):
    """The daemon shut down in order while a stream was open; every event it matched was sent or counted."""


class RequestError(DaemonError):
    """The daemon answered a request with an error reply.

    :param code: the protocol's error code (``specs/protocol.md``: ``bad_request``, ``unknown_probe``, …);
        :func:`jalki_core.daemon.protocol.request_error` picks the subclass for a code.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"daemon: {message} ({code})")
        self.code = code
        self.reason = message


class ProbeNotFound(RequestError):
    """The daemon has no installed probe of that name (``unknown_probe``)."""


class ProtocolError(DaemonError):
    """A request the daemon refuses; the server turns it into an error reply, never a dropped connection.

    :param code: one of :data:`jalki_core.daemon.protocol.ERROR_CODES`.
    :param request_id: the request's ``id`` when it is known, echoed in the reply.
    """

    def __init__(self, code: str, message: str, *, request_id: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.request_id = request_id


_HINTS: dict[int, str] = {
    _errno.EPERM: (
        "run as root or grant CAP_BPF+CAP_PERFMON; if already privileged, "
        "this kernel refuses this attach type"
    ),
    _errno.EACCES: "the verifier rejected the program; see the verifier log",
    _errno.ENOENT: "the kernel lacks this function, tracepoint or BTF type",
    _errno.ESRCH: "the attach target (kernel function or BTF id) was not found",
    _errno.EINVAL: "the kernel does not support this program or attach type",
    _errno.EOPNOTSUPP: "the kernel does not support this program or attach type",
    _errno.ENOTSUP: "the kernel does not support this program or attach type",
    _errno.E2BIG: "the program or map is too large for this kernel",
    _errno.ENOMEM: "not enough locked memory; raise RLIMIT_MEMLOCK or use a smaller ring buffer",
    _errno.EBADF: "the handle is not open",
}


def errno_hint(code: int) -> str | None:
    """A short suggested fix for a failed libbpf call with this errno."""
    return _HINTS.get(abs(code))


class LibbpfError(JalkiError):
    """A libbpf call failed; carries the errno name, object, program and a hint."""

    def __init__(
        self,
        operation: str,
        err: int,
        *,
        obj: str | None = None,
        program: str | None = None,
        detail: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.operation = operation
        self.errno = abs(err)
        self.errno_name = errno_name(err)
        self.obj = obj
        self.program = program
        self.detail = detail
        self.stage = "load"
        """Where in a rung's try it failed: ``load``, ``prepare`` or ``attach`` (the loader sets it)."""
        where = ", ".join(
            part
            for part in (
                f"object {obj}" if obj else "",
                f"program {program}" if program else "",
            )
            if part
        )
        message = f"{operation} failed: {self.errno_name} ({os.strerror(self.errno)})"
        if where:
            message += f" [{where}]"
        if detail:
            message += f": {detail}"
        super().__init__(message, hint=hint if hint is not None else errno_hint(err))


class BpfOpenError(LibbpfError):
    """Opening a BPF object (file or memory) failed."""


class BpfLoadError(LibbpfError):
    """Loading a BPF object into the kernel failed (verifier, permissions, BTF)."""

    def __init__(self, operation: str, err: int, *, obj: str | None = None, program: str | None = None,
                 detail: str | None = None, hint: str | None = None, verifier_log: str = "") -> None:
        super().__init__(operation, err, obj=obj, program=program, detail=detail, hint=hint)
        self.verifier_log = verifier_log


class BpfAttachError(LibbpfError):
    """Attaching a loaded program failed."""


class BpfMapError(LibbpfError):
    """A map operation (lookup, update, delete, resize) failed."""


class RingBufferError(LibbpfError):
    """Creating or polling a ring buffer failed."""


class BpfHandleClosedError(LibbpfError):
    """A BPF handle was used after it was closed or before it was valid."""


class PerfEventOpenError(LibbpfError):
    """``perf_event_open`` refused an event; the hint says what the errno means for that event.

    :param event_type: the ``PERF_TYPE_*`` that was asked for.
    :param config: the event within that type (``PERF_COUNT_HW_CPU_CYCLES``…).
    :param cpu: the CPU it was asked on (-1: any).
    """

    def __init__(self, operation: str, err: int, *, event_type: int = -1, config: int = -1, cpu: int = -1,
                 obj: str | None = None, program: str | None = None, detail: str | None = None,
                 hint: str | None = None) -> None:
        super().__init__(operation, err, obj=obj, program=program, detail=detail, hint=hint)
        self.event_type = event_type
        self.config = config
        self.cpu = cpu
