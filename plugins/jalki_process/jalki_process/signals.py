"""Signal names by the kernel's numbering (not the host C library's).

The table is ``include/uapi/asm-generic/signal.h``, the numbering of x86,
arm64, riscv, s390, powerpc and most other architectures (alpha, mips,
parisc and sparc number some signals differently and are not covered: a
number outside the table is reported as ``SIG<n>``). Signals from 32 up are
real-time signals, named ``SIGRTMIN+<n>`` as the kernel counts them
(glibc reserves the first two, so its ``SIGRTMIN`` is 34).
"""

from __future__ import annotations

SIGNAL_NAMES: dict[int, str] = {
    1: "SIGHUP", 2: "SIGINT", 3: "SIGQUIT", 4: "SIGILL", 5: "SIGTRAP", 6: "SIGABRT", 7: "SIGBUS",
    8: "SIGFPE", 9: "SIGKILL", 10: "SIGUSR1", 11: "SIGSEGV", 12: "SIGUSR2", 13: "SIGPIPE",
    14: "SIGALRM", 15: "SIGTERM", 16: "SIGSTKFLT", 17: "SIGCHLD", 18: "SIGCONT", 19: "SIGSTOP",
    20: "SIGTSTP", 21: "SIGTTIN", 22: "SIGTTOU", 23: "SIGURG", 24: "SIGXCPU", 25: "SIGXFSZ",
    26: "SIGVTALRM", 27: "SIGPROF", 28: "SIGWINCH", 29: "SIGIO", 30: "SIGPWR", 31: "SIGSYS",
}
"""Kernel signal number → name (``asm-generic/signal.h``)."""

SIGRTMIN = 32
"""The kernel's first real-time signal."""

SIGRTMAX = 64
"""The kernel's last real-time signal (``_NSIG``)."""


def signal_name(number: int) -> str:
    """The kernel name of a signal number: ``9`` → ``SIGKILL``, ``34`` → ``SIGRTMIN+2``."""
    if number in SIGNAL_NAMES:
        return SIGNAL_NAMES[number]
    if SIGRTMIN <= number <= SIGRTMAX:
        return "SIGRTMIN" if number == SIGRTMIN else f"SIGRTMIN+{number - SIGRTMIN}"
    return f"SIG{number}"


def decode_wait_status(status: int) -> tuple[int, int | None, bool]:
    """Split a wait(2) status into (shell exit code, signal number or None, core dumped).

    A process that exited by itself has ``status = code << 8``: the shell
    code is ``code`` (0–255). One killed by signal N has ``status = N``
    (``| 0x80`` when it dumped core): the shell code is ``128 + N``.
    """
    signo = status & 0x7F
    if signo == 0:
        return (status >> 8) & 0xFF, None, False
    return 128 + signo, signo, bool(status & 0x80)
