"""Checks of command-line option values, shared by every command.

Each check raises :class:`jalki_core.errors.UsageError` with one line that
names the option, the bad value and what it takes, so that a bad value is
refused before anything is attached or connected (never a traceback later).
The option types that ``run`` and ``serve`` share, and which options belong to
which mode, are here too.
"""

from __future__ import annotations

import ipaddress
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from jalki_core.errors import UsageError

if TYPE_CHECKING:
    from jalki_core.daemon.protocol import K8sFields

PID_MAX = 4_194_304
"""Largest process id any Linux kernel hands out (``PID_MAX_LIMIT`` on 64-bit kernels)."""

MAX_DURATION_S = 100 * 365 * 86400
"""Longest duration any option takes (100 years): beyond it, times in nanoseconds leave 64 bits."""

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_ADDRESS = re.compile(r"^(?:\[(?P<v6>[^\[\]]+)\]|(?P<host>[^\[\]:]+)):(?P<port>\d{1,5})$")


def check_pid(pid: int | None, option: str = "--pid") -> None:
    """A process id filter: 1 to :data:`PID_MAX` (a larger one fits no kernel's pid, nor a 32-bit filter)."""
    if pid is not None and not 0 < pid <= PID_MAX:
        raise UsageError(f"{option} must be a positive process id up to {PID_MAX}, not {pid}")


def check_port(port: int | None, option: str = "--port") -> None:
    """A TCP/UDP port filter: 1 to 65535 (0 is no port)."""
    if port is not None and not 0 < port < 65536:
        raise UsageError(f"{option} must be between 1 and 65535, not {port}")


def check_seconds(seconds: float | None, option: str = "--seconds") -> None:
    """A positive, finite number of seconds, at most :data:`MAX_DURATION_S`."""
    if seconds is None:
        return
    if not math.isfinite(seconds) or seconds <= 0:
        raise UsageError(f"{option} must be positive and finite (seconds), not {seconds:g}",
                         hint=f"e.g. {option} 10")
    if seconds > MAX_DURATION_S:
        raise UsageError(f"{option} must be at most {MAX_DURATION_S} seconds (100 years), not {seconds:g}")


def check_sample(sample: float) -> None:
    """A sampling rate in (0, 1] (NaN is refused: it compares false with everything)."""
    if not 0.0 < sample <= 1.0:
        raise UsageError(f"--sample must be in (0, 1], not {sample}", hint="e.g. --sample 0.1 keeps 10%")


def parse_duration(text: str, option: str, max_s: float = MAX_DURATION_S) -> float:
    """``90``, ``90s``, ``10m``, ``2h``, ``1d`` → seconds, positive and at most ``max_s``."""
    match = _DURATION.match(text.strip())
    seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)] if match else 0.0
    if match is None or seconds <= 0:
        raise UsageError(f"{option} must be a positive duration like 30s, 10m, 2h or 1d, not {text!r}")
    if seconds > max_s:  # also catches inf from a thousand-digit number
        limit = f"{max_s / 86400:g}d" if max_s >= 86400 else f"{max_s:g}s"
        raise UsageError(f"{option} must be at most {limit}, not {text!r}")
    return seconds


def parse_address(text: str, option: str = "--metrics-addr") -> tuple[str, int] | None:
    """``HOST:PORT``, ``[IPv6]:PORT`` or ``off`` → ``(host, port)`` (the host without brackets), or ``None``."""
    if text == "off":
        return None
    match = _ADDRESS.match(text.strip())
    if match is None or not 0 < int(match.group("port")) < 65536:
        hint = ("put an IPv6 address in brackets, e.g. [::1]:9464" if text.count(":") > 1 and "[" not in text
                else "e.g. 127.0.0.1:9464 or [::1]:9464")
        raise UsageError(f"{option} must be HOST:PORT, [IPv6]:PORT or off, with a port from 1 to 65535, "
                         f"not {text!r}", hint=hint)
    host = match.group("v6")
    if host is not None:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise UsageError(f"{option}: {host!r} in brackets is not an IPv6 address",
                             hint="e.g. [::1]:9464") from None
        return host, int(match.group("port"))
    return match.group("host"), int(match.group("port"))


# ---- option types shared by run and serve, and the options of one mode only --------------------------------

PluginOption = Annotated[list[str] | None, typer.Option("--plugin", "-p", help="Plugin (or single probe) to run; "
                                                          "repeatable.")]
EmitOption = Annotated[list[str] | None, typer.Option(help="stdout, or file:PATH[,max_bytes=N][,backups=K], or "
                                                        "a plugin's (otlp:URL, nats:URL); any takes ,types=GLOB|GLOB,"
                                                        "skip_types=..,min_severity=LEVEL,rate=N/s; repeatable.")]
EmitDrainOption = Annotated[float, typer.Option(help="At stop, how long emitters that send off the node (otlp, "
                                                "nats) keep delivering queued events; what is left then is "
                                                "counted as lost (shutdown).")]
RingMibOption = Annotated[int | None, typer.Option("--ring-mib", help="Ring buffer of every probe, in MiB (a power "
                                                "of two from 1 to 1024; default: each probe's own size, shown "
                                                "in the summary and status).")]
MAX_EMIT_DRAIN_S = 3600.0
"""Longest --emit-drain-seconds: a stop that waits longer than an hour is a typo."""


def check_emit_drain(seconds: float) -> None:
    """``--emit-drain-seconds``: 0 (do not wait) to :data:`MAX_EMIT_DRAIN_S`."""
    if not math.isfinite(seconds) or not 0 <= seconds <= MAX_EMIT_DRAIN_S:
        raise UsageError(f"--emit-drain-seconds must be from 0 to {MAX_EMIT_DRAIN_S:g}, not {seconds:g}",
                         hint="e.g. --emit-drain-seconds 5")
ClusterOption = Annotated[str | None, typer.Option(help="Cluster name written into every event.")]
PidOption = Annotated[int | None, typer.Option(help="Only events of this process id.")]
PortOption = Annotated[int | None, typer.Option(help="Only events with this source or destination port.")]
SampleOption = Annotated[float, typer.Option(help="Fraction of events to keep, in (0, 1]; the rest are counted "
                                             "as drops.")]
SocketOption = Annotated[Path | None, typer.Option("--socket", help="The API socket "
                                                   "(default: $JALKI_SOCKET or /run/jalki/jalki.sock).")]
SocketGroupOption = Annotated[str | None, typer.Option(help="Group allowed to use the socket (mode 0660).")]
HistoryOption = Annotated[str | None, typer.Option(help="SQLite event history PATH, or off "
                                                   "(default /var/lib/jalki/history.db).")]
HistoryMaxMbOption = Annotated[int | None, typer.Option(help="Most MiB the history takes on disk (database and "
                                                        "WAL; default 256); the oldest events go first.")]
HistoryMaxAgeOption = Annotated[str | None, typer.Option(help="History events older than this are deleted: 90s, "
                                                         "30m, 12h, 7d (default 7d, at most 36500d).")]
MetricsAddrOption = Annotated[str | None, typer.Option(help="Prometheus HOST:PORT, [IPv6]:PORT, or off "
                                                       "(default 127.0.0.1:9464).")]

EnrichOption = Annotated[list[str] | None, typer.Option(help="Add fields to every event before it is written, "
                                                         "stored or judged: k8s (pod, namespace, container, "
                                                         "workload); repeatable or comma-separated.")]
NodeNameOption = Annotated[str | None, typer.Option(help="With --enrich k8s: this node's name (default: "
                                                    "$NODE_NAME, else the host name).")]
NamespaceOption = Annotated[list[str] | None, typer.Option("--namespace", help="With --enrich k8s, a scope (not a "
                                                           "query filter): emitters write only events of these "
                                                           "namespaces (repeatable or comma-separated); others are "
                                                           "counted out of scope, and still stored and judged.")]

# ---- Kubernetes filters of the client commands (recent, stream, ask): one vocabulary with the protocol's
# pod/namespace/container/workload fields. Events without a k8s object (no --enrich k8s) never match.

PodFilterOption = Annotated[str | None, typer.Option("--pod", help="Only events of this Kubernetes pod (name; "
                                                     "events of --enrich k8s).")]
NamespaceFilterOption = Annotated[str | None, typer.Option("--namespace", help="Only events of this Kubernetes "
                                                           "namespace (a filter of this command, not the "
                                                           "emitters' scope of run/serve --namespace).")]
ContainerFilterOption = Annotated[str | None, typer.Option("--container", help="Only events of this container "
                                                           "name (of a pod).")]
WorkloadFilterOption = Annotated[str | None, typer.Option("--workload", help="Only events of this workload: NAME "
                                                          "(any kind) or KIND/NAME, e.g. deployment/checkout.")]


def check_k8s_filters(pod: str | None, namespace: str | None, container: str | None,
                      workload: str | None) -> K8sFields:
    """``--pod``, ``--namespace``, ``--container``, ``--workload`` as protocol fields; a value no Kubernetes
    object can have (empty, upper case, ``KIND/NAME`` of an unknown kind) is refused in one line."""
    from jalki_core.daemon.protocol import K8sFields, k8s_name_problem

    values = K8sFields(pod=pod, namespace=namespace, container=container, workload=workload)
    for name, value in values.items():
        if isinstance(value, str) and (problem := k8s_name_problem(name, value, f"--{name}")) is not None:
            raise UsageError(problem)
    return values

DAEMON_ONLY_OPTIONS = ("--socket", "--socket-group", "--history", "--history-max-mb", "--history-max-age",
                       "--metrics-addr")
"""Options of ``jalki serve`` (and ``run --serve``) that a plain ``jalki run`` refuses."""

RUN_ONLY_OPTIONS = ("--seconds", "--strict", "--summary-json", "--rung", "--verifier-log")
"""Options of a plain ``jalki run`` that the daemon refuses (it runs until SIGTERM and has no run summary)."""
