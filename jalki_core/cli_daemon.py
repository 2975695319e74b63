"""Daemon commands: ``jalki run --serve`` (via :func:`serve`) and the clients ``status``, ``deploy``,
``undeploy``, ``watch``, ``stream``, ``recent``, ``health``.

Clients find the daemon at ``--socket``, else ``JALKI_SOCKET``, else
``/run/jalki/jalki.sock``; an unreachable daemon is one line and exit 69.
"""

from __future__ import annotations

import re
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from jalki_core.errors import UsageError

if TYPE_CHECKING:
    from jalki_core.client import DaemonClient
    from jalki_core.daemon.protocol import DeploySpec
    from jalki_core.daemon.store import HistoryLimits
    from jalki_core.emitters.base import Emitter
    from jalki_core.plugins import JalkiPlugins

# readable=False: click must not pre-check access; connecting says "not allowed" in one clear line
SocketOption = Annotated[Path | None, typer.Option("--socket", readable=False, help="The daemon's API socket "
                                                   "(default: $JALKI_SOCKET or /run/jalki/jalki.sock).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str, option: str) -> float:
    """``90``, ``90s``, ``10m``, ``2h``, ``1d`` → seconds."""
    match = _DURATION.match(text.strip())
    if match is None or float(match.group(1)) <= 0:
        raise UsageError(f"{option} must be a positive duration like 30s, 10m, 2h or 1d, not {text!r}")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def parse_address(text: str) -> tuple[str, int] | None:
    """``HOST:PORT`` (or ``off``) for ``--metrics-addr``."""
    if text == "off":
        return None
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--metrics-addr must be HOST:PORT or off, not {text!r}", hint="e.g. 127.0.0.1:9464")
    return host.strip("[]"), int(port)


def _connect(socket_path: Path | None) -> DaemonClient:
    from jalki_core.client import DaemonClient

    return DaemonClient.connect(socket_path)


def _print_json(value: Any) -> None:
    import orjson

    sys.stdout.buffer.write(orjson.dumps(value, option=orjson.OPT_INDENT_2) + b"\n")
    sys.stdout.flush()


def _console() -> Any:
    from rich.console import Console

    return Console(highlight=False)


# ---- the daemon itself ---------------------------------------------------------

def serve(plugins: JalkiPlugins, initial: list[DeploySpec], emitters: list[Emitter], *, socket_path: Path | None,
          socket_group: str | None, history: str, metrics_addr: str, cluster: str | None,
          history_limits: HistoryLimits | None = None) -> None:
    """Run the agent until SIGTERM/SIGINT (``jalki run --serve``)."""
    from jalki_core.daemon.agent import DEFAULT_HISTORY, Agent, AgentConfig, socket_path_from_env
    from jalki_core.daemon.store import HistoryLimits

    config = AgentConfig(
        socket_path=socket_path_from_env(socket_path),
        socket_group=socket_group,
        history_path=None if history == "off" else (Path(history) if history else DEFAULT_HISTORY),
        history_limits=history_limits or HistoryLimits(),
        metrics_addr=parse_address(metrics_addr),
        cluster=cluster,
    )
    agent = Agent(plugins, config, emitters)
    console = __import__("rich.console", fromlist=["Console"]).Console(stderr=True, highlight=False)
    console.print(f"[green]jalki daemon[/] on {config.socket_path}"
                  + (f", metrics on http://{metrics_addr}/metrics" if config.metrics_addr else "")
                  + (f", history {config.history_path}" if config.history_path else ", history off"),
                  soft_wrap=True)
    agent.serve(initial)
    summary = agent.summary
    if summary is not None:
        # events since start (redeployed probes included); drops of the probes' last deployments
        events = sum(agent.events_by_type.values())
        drops: Counter[str] = Counter()
        for probe in summary.probes:
            drops.update(probe.drops_by_cause)
        dropped = drops.total()
        line = (f"jalki daemon stopped: {events} events from {len(summary.probes)} probes, "
                f"{dropped} dropped" + (f" ({_drops_text(drops)})" if dropped else ""))
        for name, stats in summary.emitters.items():
            line += (f"; emitter {name}: {stats['events_emitted']} written, {stats['events_dropped']} dropped, "
                     f"{stats['errors']} errors")
        kept = agent.history_stats()
        if kept is not None:
            line += (f"; history: {kept['state']}, {kept['written']} written, {kept['dropped']} dropped"
                     + (f" ({_drops_text(kept['dropped_by_cause'])})" if kept["dropped"] else ""))
        console.print(line, soft_wrap=True, markup=False)


# ---- clients ---------------------------------------------------------------------

def _drops_text(drops: dict[str, int]) -> str:
    return ", ".join(f"{cause}={count}" for cause, count in drops.items() if count) or "0"


def status_command(socket: SocketOption = None, as_json: JsonOption = False) -> None:
    """Show the daemon's probes (rung, since, events, drops, filters, run time), emitters and subscribers."""
    with _connect(socket) as client:
        status = client.status()
    if as_json:
        _print_json(status)
        return
    from rich.table import Table

    console = _console()
    console.print(f"jalki daemon {status['version']} (pid {status['pid']}) on {status['socket']}, "
                  f"up {status['uptime_s']:.0f}s, {'ready' if status['ready'] else 'not ready'}")
    table = Table(title="probes", title_justify="left")
    for column in ("probe", "attach", "since (UTC)", "ttl", "events", "drops", "options", "bpf time"):
        table.add_column(column, overflow="fold")
    for name, probe in sorted(status["probes"].items()):
        options = " ".join([*(f"{k}={v}" for k, v in probe["filters"].items()),
                            *([f"sample={probe['sample']:g}"] if probe["sample"] < 1 else [])]) or "-"
        ttl = "-" if probe["ttl_remaining_s"] is None else f"{probe['ttl_remaining_s']:.0f}s"
        runs = _run_time_text(probe)
        table.add_row(name, probe["attach"] or "[red]none[/]", probe["since"][11:19], ttl, str(probe["events"]),
                      _drops_text(probe["drops"]), options, runs)
    console.print(table)
    for name, emitter in status["emitters"].items():
        console.print(f"emitter {name}: {emitter['events_emitted']} written, {emitter['events_dropped']} dropped, "
                      f"{emitter['errors']} errors")
    subscribers = status["subscribers"]
    console.print(f"subscribers: {subscribers.get('count', 0)} (dropped {subscribers.get('dropped', 0)})")
    if status["history"]:
        history = status["history"]
        console.print(f"history {history['path']}: {history['written']} written, {history['dropped']} dropped")


def _run_time_text(probe: dict[str, Any]) -> str:
    """BPF run time and runs of a probe: the total, then each program when there are several."""
    def one(time_ns: int, count: int) -> str:
        return f"{time_ns / 1e6:.2f}ms/{count}" + (f" ({time_ns // count}ns each)" if count else "")

    lines = [one(probe["run_time_ns"], probe["run_count"])]
    programs = probe.get("programs") or {}
    if len(programs) > 1:
        lines += [f"{name}: {one(f['run_time_ns'], f['run_count'])}" for name, f in sorted(programs.items())]
    return "\n".join(lines)


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
    ttl_s = None if ttl is None else parse_duration(ttl, "--ttl")
    with _connect(socket) as client:
        result = client.deploy(probe, sample=sample, pid=pid, port=port, ttl=ttl_s)
    if as_json:
        _print_json(result)
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
        _print_json(result)
        return
    _console().print(f"undeployed {probe}: {result['events']} events, drops {_drops_text(result['drops'])}")


def _filters(pid: int | None, command: str | None, src_ip: str | None, dst_ip: str | None, src_port: int | None,
             dst_port: int | None) -> dict[str, Any]:
    return {"pid": pid, "command": command, "src_ip": src_ip, "dst_ip": dst_ip, "src_port": src_port,
            "dst_port": dst_port}


def _event_line(event: dict[str, Any]) -> str:
    from rich.markup import escape

    network = event.get("network_data") or {}
    process = event.get("process_data") or {}
    where = (f"{network.get('src_ip')}:{network.get('src_port')} -> {network.get('dst_ip')}:{network.get('dst_port')}"
             if network else "")
    who = f"{process.get('command')}[{process.get('pid')}]" if process.get("pid") else "-"
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
    if not seconds > 0:
        raise UsageError(f"--seconds must be positive, not {seconds:g}")
    console = _console()
    with _connect(socket) as client:
        deployed = probe in client.status()["probes"]
        if not deployed:
            client.deploy(probe, ttl=seconds + 30)
        count = dropped = 0
        with _connect(socket) as streamer:
            for event in streamer.stream(seconds=seconds, probe=probe,
                                         **_filters(pid, None, None, dst_ip, None, dst_port)):
                if event.get("type") == "jalki.dropped":
                    dropped += int(event["count"])
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
    socket: SocketOption = None,
) -> None:
    """Stream live events as JSON lines (server-side filters; pushed, never polled) until Ctrl-C."""
    import orjson

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
                                       **_filters(pid, command, src_ip, dst_ip, src_port, dst_port)):
                if event.get("type") == "jalki.dropped":
                    sys.stderr.write(f"jalki: {event['count']} events lost: this reader was too slow\n")
                    continue
                out.write(orjson.dumps(event) + b"\n")
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
    limit: Annotated[int, typer.Option(help="At most this many (the newest).")] = 100,
    socket: SocketOption = None,
    as_json: JsonOption = False,
) -> None:
    """Events from the daemon's history (SQLite), oldest first."""
    seconds = parse_duration(since, "--since")
    if limit < 1:
        raise UsageError(f"--limit must be at least 1, not {limit}")
    with _connect(socket) as client:
        events = client.recent(since=seconds, event_type=event_type, probe=probe, limit=limit,
                               **_filters(pid, command, None, dst_ip, None, dst_port))
    if as_json:
        _print_json(events)
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
        console = _console()
        for check in checks:
            mark = "[green]ok[/]" if check["ok"] else "[red]unhealthy[/]: " + "; ".join(check["problems"])
            console.print(f"{check['kind']} {check['name']}: {mark}", soft_wrap=True)
        if not checks:
            console.print("no probe deployed")
    if not healthy:
        raise typer.Exit(1)
