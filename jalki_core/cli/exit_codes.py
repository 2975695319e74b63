"""Exit codes of the ``jalki`` command, and which error of the one tree (:mod:`jalki_core.errors`) gets which.

Only the CLI knows exit codes: library code raises typed errors, :func:`exit_code_for` maps them here. The
numbers follow ``sysexits.h`` where one fits, so scripts and service managers read them the usual way.
"""

from __future__ import annotations

from enum import IntEnum

from jalki_core.errors import (
    DaemonUnavailable,
    EnvironmentProblem,
    JalkiError,
    PrivilegeError,
    RequestError,
    UsageError,
)


class ExitCode(IntEnum):
    """What a ``jalki`` process's exit status means."""

    OK = 0
    FAILURE = 1
    """Something failed at run time: no probe attached, an emitter lost events, the daemon failed a request."""
    USAGE = 2
    """Bad input: an option value, an unknown name, a request the daemon calls wrong (``bad_request`` …)."""
    UNAVAILABLE = 69
    """``EX_UNAVAILABLE``: no daemon answers at the socket, it is not ours to use, or it went away."""
    NO_PERMISSION = 77
    """``EX_NOPERM``: not root, or without CAP_BPF and CAP_PERFMON."""
    CONFIG = 78
    """``EX_CONFIG``: the kernel or machine lacks what is needed (BTF, tracefs)."""
    INTERRUPTED = 130
    """Stopped by Ctrl-C before it finished (128 + SIGINT)."""


def exit_code_for(error: JalkiError) -> ExitCode:
    """The exit code for an error that ends a command."""
    from jalki_core.daemon.protocol import USER_ERROR_CODES

    if isinstance(error, UsageError):
        return ExitCode.USAGE
    if isinstance(error, RequestError):
        return ExitCode.USAGE if error.code in USER_ERROR_CODES else ExitCode.FAILURE
    if isinstance(error, DaemonUnavailable):
        return ExitCode.UNAVAILABLE
    if isinstance(error, PrivilegeError):
        return ExitCode.NO_PERMISSION
    if isinstance(error, EnvironmentProblem):
        return ExitCode.CONFIG
    return ExitCode.FAILURE
