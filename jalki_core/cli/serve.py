"""``jalki serve``: the node agent behind the local API (``specs/protocol.md``) until SIGTERM, and its stop
line."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from jalki_core.cli.common import build_emitters, build_enrich, drops_text, enrich_lines, load_plugins
from jalki_core.cli.options import (
    RUN_ONLY_OPTIONS,
    ClusterOption,
    EmitDrainOption,
    EnrichOption,
    HistoryMaxAgeOption,
    HistoryMaxMbOption,
    HistoryOption,
    MetricsAddrOption,
    NamespaceOption,
    NodeNameOption,
    RingMibOption,
    SocketGroupOption,
    SocketOption,
    check_emit_drain,
    parse_address,
)
from jalki_core.errors import UsageError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from jalki_core.daemon.protocol import DeploySpec
    from jalki_core.daemon.store import HistoryLimits
    from jalki_core.emitters.base import Emitter
    from jalki_core.enrich import EnrichStage
    from jalki_core.plugins import JalkiPlugins


_WHY_RUN_ONLY = {
    "--rung": "it deploys every probe on the best rung the kernel allows; force rungs in a test run",
    "--verifier-log": "it reports failed rungs in 'jalki status', not in a run summary",
}


def _refuse_run_options(given: Mapping[str, object]) -> None:
    """One line for the first run-only option given to the daemon (``serve`` or ``run --serve``)."""
    for option, value in given.items():
        if value is not None and value is not False:
            why = _WHY_RUN_ONLY.get(option, "it runs until SIGTERM and has no run summary")
            raise UsageError(f"{option} is an option of a plain 'jalki run', not of the daemon ({why})",
                             hint=f"leave {option} out, or use 'jalki run'")


MAX_HISTORY_MB = 1 << 30
"""Largest --history-max-mb (1 PiB): any real disk is smaller; a bigger number is a typo."""


def serve_command(
    plugin: Annotated[list[str] | None, typer.Option("--plugin", "-p", help="Plugin (or single probe) to deploy "
                                                     "at start; repeatable (more with 'jalki deploy').")] = None,
    emit: Annotated[list[str] | None, typer.Option(help="Also write every event to stdout, or "
                                                   "file:PATH[,max_bytes=N][,backups=K]; repeatable.")] = None,
    cluster: ClusterOption = None,
    pid: Annotated[int | None, typer.Option(help="Probes deployed at start: only events of this process id.")]
    = None,
    port: Annotated[int | None, typer.Option(help="Probes deployed at start: only events with this source or "
                                             "destination port.")] = None,
    sample: Annotated[float, typer.Option(help="Probes deployed at start: fraction of events to keep, in (0, 1].")]
    = 1.0,
    socket: SocketOption = None,
    socket_group: SocketGroupOption = None,
    history: HistoryOption = None,
    history_max_mb: HistoryMaxMbOption = None,
    history_max_age: HistoryMaxAgeOption = None,
    metrics_addr: MetricsAddrOption = None,
    # run-only options, accepted here only to be refused with the fix rather than "no such option"
    seconds: Annotated[float | None, typer.Option(hidden=True)] = None,
    strict: Annotated[bool, typer.Option("--strict", hidden=True)] = False,
    summary_json: Annotated[Path | None, typer.Option(hidden=True)] = None,
    rung: Annotated[str | None, typer.Option(hidden=True)] = None,
    verifier_log: Annotated[Path | None, typer.Option(hidden=True)] = None,
    enrich: EnrichOption = None,
    node_name: NodeNameOption = None,
    namespace: NamespaceOption = None,
    emit_drain_seconds: EmitDrainOption = 5.0,
    ring_mib: RingMibOption = None,
) -> None:
    """Stay up as a node agent behind a local API (specs/protocol.md) until SIGTERM.

    Probes can be deployed at run time ('jalki deploy'); clients read status, live and recent events, and ask
    questions.
    """
    from jalki_core.cli.options import check_pid, check_port, check_sample, parse_duration
    from jalki_core.daemon.protocol import DeploySpec
    from jalki_core.daemon.store import MIB, HistoryLimits
    from jalki_core.privileges import require_bpf_privileges

    _refuse_run_options(dict(zip(RUN_ONLY_OPTIONS, (seconds, strict, summary_json, rung, verifier_log),
                                 strict=True)))
    check_pid(pid)
    check_port(port)
    check_sample(sample)
    max_mb = 256 if history_max_mb is None else history_max_mb
    if not 0 < max_mb <= MAX_HISTORY_MB:
        raise UsageError(f"--history-max-mb must be a number of MiB from 1 to {MAX_HISTORY_MB}, not {max_mb}",
                         hint="e.g. --history-max-mb 256")
    max_age_s = parse_duration(history_max_age or "7d", "--history-max-age")
    metrics = metrics_addr or "127.0.0.1:9464"
    parse_address(metrics)
    check_emit_drain(emit_drain_seconds)
    from jalki_core.loader import ring_bytes_from_mib

    ring_bytes = None if ring_mib is None else ring_bytes_from_mib(ring_mib)
    plugins = load_plugins()
    enrich_stage = build_enrich(plugins, enrich, node_name, namespace)
    require_bpf_privileges()
    initial = [DeploySpec(entry.probe.name, sample=sample, pid=pid, port=port)
               for entry in plugins.probes_for(plugin or [])]
    serve(plugins, initial, build_emitters(plugins, emit or []), socket_path=socket,
          socket_group=socket_group, history=history or "", metrics_addr=metrics, cluster=cluster,
          history_limits=HistoryLimits(max_bytes=max_mb * MIB, max_age_s=max_age_s),
          enrich=enrich_stage, emit_drain_seconds=emit_drain_seconds, ring_buffer_bytes=ring_bytes)


def serve(plugins: JalkiPlugins, initial: list[DeploySpec], emitters: list[Emitter], *, socket_path: Path | None,
          socket_group: str | None, history: str, metrics_addr: str, cluster: str | None,
          history_limits: HistoryLimits | None = None, enrich: EnrichStage | None = None,
          emit_drain_seconds: float | None = None, ring_buffer_bytes: int | None = None) -> None:
    """Run the agent until SIGTERM/SIGINT (``jalki serve``, or its alias ``jalki run --serve``)."""
    from jalki_core.daemon.agent import DEFAULT_HISTORY, Agent, AgentConfig
    from jalki_core.daemon.protocol import socket_path_from_env
    from jalki_core.daemon.store import HistoryLimits

    config = AgentConfig(
        socket_path=socket_path_from_env(socket_path),
        socket_group=socket_group,
        history_path=None if history == "off" else (Path(history) if history else DEFAULT_HISTORY),
        history_limits=history_limits or HistoryLimits(),
        metrics_addr=parse_address(metrics_addr),
        cluster=cluster,
        ring_buffer_bytes=ring_buffer_bytes,
    )
    agent = Agent(plugins, config, emitters, enrich=enrich)
    agent.session.emit_drain_seconds = emit_drain_seconds
    console = __import__("rich.console", fromlist=["Console"]).Console(stderr=True, highlight=False)
    metrics = config.metrics_addr
    metrics_url = None if metrics is None else (
        (f"[{metrics[0]}]" if ":" in metrics[0] else metrics[0]) + f":{metrics[1]}")  # an IPv6 host in brackets
    console.print(f"[green]jalki daemon[/] on {config.socket_path}"
                  + (f", metrics on http://{metrics_url}/metrics" if metrics_url else "")
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
                f"{dropped} dropped" + (f" ({drops_text(drops)})" if dropped else ""))
        for name, stats in summary.emitters.items():
            line += (f"; emitter {name}: {stats['events_emitted']} written, {stats['events_dropped']} dropped, "
                     f"{stats['errors']} errors")
        kept = agent.history_stats()
        if kept is not None:
            line += (f"; history: {kept['state']}, {kept['written']} written, {kept['dropped']} dropped"
                     + (f" ({drops_text(kept['dropped_by_cause'])})" if kept["dropped"] else ""))
        if summary.enrich is not None:
            line += "; " + "; ".join(enrich_lines(summary.enrich))
        console.print(line, soft_wrap=True, markup=False)
