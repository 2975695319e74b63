"""Daemon commands: ``jalki serve`` (via :func:`serve`) and the clients ``status``, ``deploy``,
``undeploy``, ``watch``, ``stream``, ``recent``, ``health``.

Clients find the daemon at ``--socket``, else ``JALKI_SOCKET``, else
``/run/jalki/jalki.sock``; an unreachable daemon is one line and exit 69.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from jalki_core.cli.options import (
    ContainerFilterOption,
    NamespaceFilterOption,
    PodFilterOption,
    WorkloadFilterOption,
    check_k8s_filters,
    check_pid,
    check_port,
    check_sample,
    check_seconds,
    parse_duration,
)
from jalki_core.errors import UsageError

if TYPE_CHECKING:
    from jalki_core.sdk import Client

# readable=False: click must not pre-check access; connecting says "not allowed" in one clear line
SocketOption = Annotated[Path | None, typer.Option("--socket", readable=False, help="The daemon's API socket "
                                                   "(default: $JALKI_SOCKET or /run/jalki/jalki.sock).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]

MAX_TTL_S = 7 * 86400
"""Longest ``--ttl`` the daemon takes (``specs/protocol.md``: ``ttl`` in (0, 604800] seconds)."""


def _connect(socket_path: Path | None) -> Client:
    from jalki_core.sdk import Client

    return Client(socket_path)


def _print_json(value: Any) -> None:
    import orjson

    sys.stdout.buffer.write(orjson.dumps(value, option=orjson.OPT_INDENT_2) + b"\n")
    sys.stdout.flush()


def _console() -> Any:
    from rich.console import Console

    return Console(highlight=False)


# ---- clients ---------------------------------------------------------------------

def _drops_text(drops: dict[str, int]) -> str:
    return ", ".join(f"{cause}={count}" for cause, count in drops.items() if count) or "0"


def status_command(
    socket: SocketOption = None,
    as_json: JsonOption = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Also each BPF program's run time and runs.")]
    = False,
) -> None:
    """Show the daemon's probes (rung, since, events, drops, filters, BPF run time), emitters and subscribers."""
    with _connect(socket) as client:
        status = client.status()
    if as_json:
        _print_json(status.raw)
        return
    from rich.markup import escape

    from jalki_core.cli.tables import Column, print_table

    console = _console()
    console.print(f"jalki daemon {status['version']} (pid {status['pid']}) on {escape(str(status['socket']))}, "
                  f"up {status['uptime_s']:.0f}s, {'ready' if status['ready'] else 'not ready'}")
    rows = []
    for name, probe in sorted(status["probes"].items()):
        options = " ".join([*(f"{k}={v}" for k, v in probe["filters"].items()),
                            *([f"sample={probe['sample']:g}"] if probe["sample"] < 1 else [])]) or "-"
        ttl = "-" if probe["ttl_remaining_s"] is None else f"{probe['ttl_remaining_s']:.0f}s"
        rows.append([escape(name), probe["attach"] or "[red]none[/]", probe["since"][11:19], ttl,
                     str(probe["events"]), escape(_drops_text(probe["drops"])), escape(options),
                     f"{probe['run_time_ns'] / 1e6:.2f}ms/{probe['run_count']}"])
    # per program, and per run, in -v; at 80 columns what identifies a probe and what it lost stay
    columns = [Column("probe"), Column("attach"), Column("since (UTC)", drop=3), Column("ttl", drop=1),
               Column("events", justify="right"), Column("drops"), Column("options"),
               Column("bpf time/runs", drop=2)]
    print_table(console, "probes", columns, rows, more="see -v or --json")
    if verbose:
        programs = [[escape(name), escape(program), f"{stats['run_time_ns'] / 1e6:.2f}ms", str(stats["run_count"]),
                     f"{stats['run_time_ns'] // stats['run_count']}ns" if stats["run_count"] else "-"]
                    for name, probe in sorted(status["probes"].items())
                    for program, stats in sorted((probe.get("programs") or {}).items())]
        print_table(console, "BPF programs", [Column("probe"), Column("program"), Column("run time", justify="right"),
                                              Column("runs", justify="right"), Column("each", justify="right")],
                    programs)
    for name, emitter in status["emitters"].items():
        line = (f"emitter {escape(name)}: {emitter['events_emitted']} written, "
                f"{emitter['events_dropped']} dropped, {emitter['errors']} errors")
        if "retries" in emitter:  # a delivery emitter (otlp, nats): reasons, retries, queue, failing time
            drops = {reason: count for reason, count in emitter["dropped_by_reason"].items() if count}
            queued = emitter["queue"]["events"] + emitter["queue"].get("pending", 0)
            line += (f" ({escape(_drops_text(drops))})" if drops else "") + \
                f", {emitter['retries']} retries, {queued} queued"
            if emitter.get("failing_for_s") is not None:
                line += f", failing for {emitter['failing_for_s']:.0f}s"
        console.print(line, soft_wrap=False)
    subscribers = status["subscribers"]
    console.print(f"subscribers: {subscribers.get('count', 0)} (dropped {subscribers.get('dropped', 0)})")
    if status["history"]:
        history = status["history"]
        console.print(f"history {escape(str(history['path']))}: {history['written']} written, "
                      f"{history['dropped']} dropped")
    if status.raw.get("enrich"):  # --enrich: each enricher's state and counters, the namespace scope
        from jalki_core.cli.common import enrich_lines

        for line in enrich_lines(status.raw["enrich"]):
            console.print(escape(line), soft_wrap=True)


def deploy_command(
    probe: Annotated[str, typer.Argument(help="Probe name (see 'jalki plugins').")],
    ttl: Annotated[str | None, typer.Option(help="Remove the probe after this long (30s, 10m, 2h).")] = None,
    sample: Annotated[float, typer.Option(help="Fraction of events to keep, in (0, 1].")] = 1.0,
    pid: Annotated[int | None, typer.Option(help="Only events of this process id.")] = None,
    port: Annotated[int | None, typer.Option(help="Only events with this source or destination port.")] = None,
    socket: SocketOption = None,
    as_json: JsonOption = False,
) -> None:
    """Attach a probe in the running daemon (idempotent)."""
    ttl_s = None if ttl is None else parse_duration(ttl, "--ttl", max_s=MAX_TTL_S)
    check_sample(sample)
    check_pid(pid)
    check_port(port)
    with _connect(socket) as client:
        result = client.deploy(probe, sample=sample, pid=pid, port=port, ttl=ttl_s)
    if as_json:
        _print_json(result.raw)
        return
    verb = "deployed" if result["changed"] else "already deployed"
    ttl_text = "" if result["ttl_remaining_s"] is None else f", expires in {result['ttl_remaining_s']:.0f}s"
    _console().print(f"{verb} {probe} on {result['attach']}{ttl_text}")


def undeploy_command(
    probe: Annotated[str, typer.Argument(help="Probe name.")],
    socket: SocketOption = None,
    as_json: JsonOption = False,
) -> None:
    """Detach a probe from the running daemon."""
    with _connect(socket) as client:
        result = client.undeploy(probe)
    if as_json:
        _print_json(result.raw)
        return
    _console().print(f"undeployed {probe}: {result['events']} events, drops {_drops_text(result['drops'])}")


def _check_filters(pid: int | None, src_port: int | None = None, dst_port: int | None = None) -> None:
    """Refuse a process id or port filter no event can match (before connecting)."""
    check_pid(pid)
    check_port(src_port, "--src-port")
    check_port(dst_port, "--dst-port")


def _filters(pid: int | None, command: str | None, src_ip: str | None, dst_ip: str | None, src_port: int | None,
             dst_port: int | None) -> dict[str, Any]:
    return {"pid": pid, "command": command, "src_ip": src_ip, "dst_ip": dst_ip, "src_port": src_port,
            "dst_port": dst_port}


def _endpoint_text(network: dict[str, Any], side: str) -> str:
    """``ip:port`` of one side (``[ip]:port`` for IPv6; the ip alone when the event has no port for that side)."""
    ip = str(network[f"{side}_ip"])
    port = network.get(f"{side}_port")
    host = f"[{ip}]" if ":" in ip else ip
    return host if port is None else f"{host}:{port}"


def _event_line(event: Mapping[str, Any]) -> str:
    from rich.markup import escape

    network = event.get("network_data") or {}
    process = event.get("process_data") or {}
    where = " -> ".join(_endpoint_text(network, side) for side in ("src", "dst") if network.get(f"{side}_ip"))
    if network.get("src_ip") and not network.get("dst_ip"):
        where += " (local side)"  # an aggregate keyed by its local endpoint (e.g. resets sent to many peers)
    who = f"{process.get('command')}[{process.get('pid')}]" if process.get("pid") else "-"
    k8s = event.get("k8s")
    if isinstance(k8s, Mapping) and k8s.get("k8s.pod.name"):  # --enrich k8s: the pod/namespace too
        who += f" {k8s['k8s.pod.name']}/{k8s.get('k8s.namespace.name')}"
    error = (event.get("error") or {}).get("code")
    state = (event.get("data") or {}).get("tcp_state")
    extra = " ".join(str(value) for value in (error, state) if value)
    return escape(f"{event.get('timestamp', '')[11:23]} {event.get('type')} {where} {who} {extra}".rstrip())


def watch_command(
    probe: Annotated[str, typer.Argument(help="Probe to watch (deployed for the duration if it is not).")],
    seconds: Annotated[float, typer.Option(help="How long to watch.")] = 10.0,
    pid: Annotated[int | None, typer.Option(help="Only events of this process id.")] = None,
    dst_ip: Annotated[str | None, typer.Option(help="Only events to this address.")] = None,
    dst_port: Annotated[int | None, typer.Option(help="Only events to this port.")] = None,
    socket: SocketOption = None,
) -> None:
    """Watch one probe's events live for a while, one line per event."""
    check_seconds(seconds)
    _check_filters(pid, dst_port=dst_port)
    from jalki_core.sdk import Gap

    console = _console()
    with _connect(socket) as client:
        deployed = probe in client.status()["probes"]
        if not deployed:
            client.deploy(probe, ttl=seconds + 30)
        count = dropped = 0
        with _connect(socket) as streamer:
            for event in streamer.stream(seconds=seconds, probe=probe,
                                         **_filters(pid, None, None, dst_ip, None, dst_port)):
                if isinstance(event, Gap):
                    dropped += event.count
                    continue
                count += 1
                console.print(_event_line(event), soft_wrap=True)
        if not deployed:
            try:
                client.undeploy(probe)
            except Exception:  # expired meanwhile
                pass
    console.print(f"[dim]{count} events in {seconds:g}s" + (f", {dropped} lost (too slow)" if dropped else "")
                  + "[/]")


def stream_command(
    probe: Annotated[str | None, typer.Argument(help="Only this probe's events.")] = None,
    event_type: Annotated[str | None, typer.Option("--type", help="Only events of this type.")] = None,
    pid: Annotated[int | None, typer.Option(help="Only events of this process id.")] = None,
    command: Annotated[str | None, typer.Option(help="Only events of this command (comm).")] = None,
    src_ip: Annotated[str | None, typer.Option(help="Only events from this address.")] = None,
    dst_ip: Annotated[str | None, typer.Option(help="Only events to this address.")] = None,
    src_port: Annotated[int | None, typer.Option(help="Only events from this port.")] = None,
    dst_port: Annotated[int | None, typer.Option(help="Only events to this port.")] = None,
    pod: PodFilterOption = None,
    namespace: NamespaceFilterOption = None,
    container: ContainerFilterOption = None,
    workload: WorkloadFilterOption = None,
    socket: SocketOption = None,
) -> None:
    """Stream live events as JSON lines (server-side filters; pushed, never polled) until Ctrl-C."""
    import orjson

    from jalki_core.sdk import Gap

    _check_filters(pid, src_port, dst_port)
    k8s = check_k8s_filters(pod, namespace, container, workload)
    stopping = False

    def _stop(*_: object) -> None:
        nonlocal stopping
        stopping = True
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _stop)
    out = sys.stdout.buffer
    try:
        with _connect(socket) as client:
            for event in client.stream(probe=probe, event_type=event_type,
                                       **_filters(pid, command, src_ip, dst_ip, src_port, dst_port), **k8s):
                if isinstance(event, Gap):
                    sys.stderr.write(f"jalki: {event.count} events lost: this reader was too slow\n")
                    continue
                out.write(orjson.dumps(event.raw) + b"\n")
                out.flush()
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def recent_command(
    since: Annotated[str, typer.Option(help="How far back: 30s, 10m, 2h, 1d.")] = "10m",
    event_type: Annotated[str | None, typer.Option("--type", help="Only events of this type.")] = None,
    probe: Annotated[str | None, typer.Option(help="Only this probe's events.")] = None,
    pid: Annotated[int | None, typer.Option(help="Only events of this process id.")] = None,
    command: Annotated[str | None, typer.Option(help="Only events of this command (comm).")] = None,
    dst_ip: Annotated[str | None, typer.Option(help="Only events to this address.")] = None,
    dst_port: Annotated[int | None, typer.Option(help="Only events to this port.")] = None,
    pod: PodFilterOption = None,
    namespace: NamespaceFilterOption = None,
    container: ContainerFilterOption = None,
    workload: WorkloadFilterOption = None,
    limit: Annotated[int, typer.Option(help="At most this many (the newest).")] = 100,
    socket: SocketOption = None,
    as_json: JsonOption = False,
) -> None:
    """Events from the daemon's history (SQLite), oldest first."""
    seconds = parse_duration(since, "--since")
    if limit < 1:
        raise UsageError(f"--limit must be at least 1, not {limit}")
    _check_filters(pid, dst_port=dst_port)
    k8s = check_k8s_filters(pod, namespace, container, workload)
    with _connect(socket) as client:
        events = client.recent(since=seconds, event_type=event_type, probe=probe, limit=limit,
                               **_filters(pid, command, None, dst_ip, None, dst_port), **k8s)
    if as_json:
        _print_json([event.raw for event in events])
        return
    console = _console()
    for event in events:
        console.print(_event_line(event), soft_wrap=True)
    console.print(f"[dim]{len(events)} events in the last {since}[/]")


def health_command(socket: SocketOption = None, as_json: JsonOption = False) -> None:
    """Per-probe and per-emitter health: ok, or what is wrong. Exit 1 when anything is unhealthy."""
    with _connect(socket) as client:
        status = client.status()
    checks: list[dict[str, Any]] = []
    for name, probe in sorted(status["probes"].items()):
        problems = []
        if not probe["attach"]:
            problems.append("not attached")
        lost = {cause: count for cause, count in probe["drops"].items() if count and cause != "sampled"}
        if lost:
            problems.append(f"lost records ({_drops_text(lost)})")
        if probe.get("derive_errors"):
            problems.append(f"{probe['derive_errors']} derive errors")
        checks.append({"kind": "probe", "name": name, "ok": not problems, "problems": problems})
    for name, emitter in sorted(status["emitters"].items()):
        problems = []
        if "unhealthy_after_s" in emitter:  # a delivery emitter: unhealthy while failing longer than its threshold
            failing = emitter.get("failing_for_s")
            if failing is not None and failing >= emitter["unhealthy_after_s"]:
                problems.append(f"failing for {failing:.0f}s (last: {emitter['last_error']}); "
                                f"lost {_drops_text(emitter['dropped_by_reason'])}")
        else:
            if emitter["errors"]:
                problems.append(f"{emitter['errors']} errors (last: {emitter['last_error']})")
            if emitter["events_dropped"]:
                problems.append(f"{emitter['events_dropped']} events dropped")
        checks.append({"kind": "emitter", "name": name, "ok": not problems, "problems": problems})
    history = status.get("history")
    if history:
        # the history's state now (a full disk that has room again is healthy); totals are in `status`
        problems = list(history.get("problems", ()))
        checks.append({"kind": "history", "name": history["path"], "ok": not problems, "problems": problems})
    healthy = all(check["ok"] for check in checks) and status["ready"]
    if as_json:
        _print_json({"healthy": healthy, "ready": status["ready"], "checks": checks})
    else:
        from rich.markup import escape

        console = _console()
        for check in checks:  # one line per check (wrapped at spaces on a narrow terminal), not a table
            mark = "[green]ok[/]" if check["ok"] else "[red]unhealthy[/]: " + escape("; ".join(check["problems"]))
            console.print(f"{check['kind']} {escape(check['name'])}: {mark}")
        if not checks:
            console.print("no probe deployed")
    if not healthy:
        raise typer.Exit(1)
