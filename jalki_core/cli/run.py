"""``jalki run``: attach the probes of the given plugins, stream their events until told to stop, and print
the run summary (the daemon is ``jalki serve``; ``run --serve`` is its alias)."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from jalki_core.cli.common import build_emitters, build_enrich, enrich_lines, load_plugins, stderr_console
from jalki_core.cli.options import (
    DAEMON_ONLY_OPTIONS,
    ClusterOption,
    EmitDrainOption,
    EmitOption,
    EnrichOption,
    NamespaceOption,
    NodeNameOption,
    PidOption,
    PluginOption,
    PortOption,
    RingMibOption,
    SampleOption,
)
from jalki_core.cli.serve import serve_command
from jalki_core.errors import EmitterError, JalkiError, UsageError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from jalki_core.loader import RungFailure
    from jalki_core.probe import Probe
    from jalki_core.session import SessionSummary


def _validate_run_options(pid: int | None, port: int | None, sample: float, seconds: float | None) -> None:
    from jalki_core.cli.options import check_pid, check_port, check_sample, check_seconds

    check_pid(pid)
    check_port(port)
    check_sample(sample)
    check_seconds(seconds)


def _refuse_daemon_options(given: Mapping[str, object]) -> None:
    """One line for the first daemon-only option given to a plain ``jalki run``."""
    for option, value in given.items():
        if value is not None:
            raise UsageError(f"{option} is an option of the daemon, not of a plain 'jalki run'",
                             hint=f"use 'jalki serve {option} …' to run the daemon")


def run(
    plugin: PluginOption = None,
    emit: EmitOption = None,
    seconds: Annotated[float | None, typer.Option(help="Stop after N seconds (default: until Ctrl-C/SIGTERM).")] = None,
    cluster: ClusterOption = None,
    pid: PidOption = None,
    port: PortOption = None,
    sample: SampleOption = 1.0,
    strict: Annotated[bool, typer.Option(help="Fail if any probe cannot be attached.")] = False,
    summary_json: Annotated[Path | None, typer.Option(help="Also write the run summary as JSON to this file.")] = None,
    rung: Annotated[str | None, typer.Option(help="Force this rung of every probe's ladder (e.g. tracepoint), "
                                             "to test a fallback; probes without it are reported and skipped.")]
    = None,
    verifier_log: Annotated[Path | None, typer.Option(help="Folder for the full verifier log of each rejected "
                                                      "rung (default $XDG_RUNTIME_DIR/jalki, else a new "
                                                      "/tmp/jalki-verifier-* folder).")] = None,
    serve: Annotated[bool, typer.Option("--serve", help="Same as 'jalki serve' (which see for its options).")]
    = False,
    # the daemon's options, for the 'run --serve' alias (refused without --serve; see 'jalki serve --help')
    socket: Annotated[Path | None, typer.Option("--socket", hidden=True)] = None,
    socket_group: Annotated[str | None, typer.Option(hidden=True)] = None,
    history: Annotated[str | None, typer.Option(hidden=True)] = None,
    history_max_mb: Annotated[int | None, typer.Option(hidden=True)] = None,
    history_max_age: Annotated[str | None, typer.Option(hidden=True)] = None,
    metrics_addr: Annotated[str | None, typer.Option(hidden=True)] = None,
    enrich: EnrichOption = None,
    node_name: NodeNameOption = None,
    namespace: NamespaceOption = None,
    emit_drain_seconds: EmitDrainOption = 5.0,
    ring_mib: RingMibOption = None,
) -> None:
    """Attach the probes of the given plugins and stream their events (--serve: as 'jalki serve')."""
    daemon_options = dict(zip(DAEMON_ONLY_OPTIONS, (socket, socket_group, history, history_max_mb, history_max_age,
                                                    metrics_addr), strict=True))
    if serve:
        serve_command(plugin, emit, cluster, pid, port, sample, socket, socket_group, history, history_max_mb,
                      history_max_age, metrics_addr, seconds, strict, summary_json, rung, verifier_log,
                      enrich=enrich, node_name=node_name, namespace=namespace,
                      emit_drain_seconds=emit_drain_seconds, ring_mib=ring_mib)
        return
    _refuse_daemon_options(daemon_options)
    from jalki_core.loader import ProbeOptions, ring_bytes_from_mib
    from jalki_core.session import TraceSession

    _validate_run_options(pid, port, sample, seconds)
    from jalki_core.cli.options import check_emit_drain

    check_emit_drain(emit_drain_seconds)
    ring_bytes = None if ring_mib is None else ring_bytes_from_mib(ring_mib)
    _check_summary_path(summary_json)
    _check_verifier_log_dir(verifier_log)
    if not plugin:
        raise UsageError("--plugin is required (or 'jalki serve' to deploy probes at run time)",
                         hint="e.g. jalki run --plugin tcp")
    plugins = load_plugins()
    selected = plugins.probes_for(plugin)
    _check_rung([entry.probe for entry in selected], rung)
    enrich_stage = build_enrich(plugins, enrich, node_name, namespace)
    emitters = build_emitters(plugins, emit or ["stdout"])
    options = ProbeOptions(filter_pid=pid or 0, filter_port=port or 0, sample_rate=sample, rung=rung,
                           verifier_log_dir=verifier_log, ring_buffer_bytes=ring_bytes)
    session = TraceSession(
        [entry.probe for entry in selected], emitters, options=options, strict=strict, cluster=cluster,
        enrich=enrich_stage,
    )
    session.emit_drain_seconds = emit_drain_seconds

    def _on_signal(signum: int, _frame: object) -> None:
        session.request_stop()

    # Handlers stay installed until everything is flushed: a second Ctrl-C
    # during the final drain must not kill the process with events queued.
    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            session.start()
            if session.attached:
                stderr_console().print(
                    f"[green]tracing[/] {', '.join(session.attached)} "
                    + ("until Ctrl-C" if seconds is None else f"for {seconds:g}s"),
                )
                session.run(seconds)
        finally:
            summary = session.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    _print_summary(summary)
    if summary_json is not None:
        import orjson

        try:
            summary_json.write_bytes(orjson.dumps(summary.as_dict(), option=orjson.OPT_INDENT_2))
        except OSError as exc:
            raise EmitterError(f"cannot write the summary to {summary_json}: {exc.strerror}") from exc
    if not any(probe.rung for probe in summary.probes):
        raise JalkiError("no probe could be attached", hint="see the failed rungs above and run 'jalki doctor'")
    lost = {name: stats for name, stats in summary.emitters.items() if stats["events_dropped"] or stats["errors"]}
    if lost:
        raise EmitterError(
            "; ".join(
                f"emitter {name} lost {stats['events_dropped']} events ({stats['last_error'] or 'queue full'})"
                for name, stats in lost.items()
            ),
            hint="see the summary above",
        )


def _check_summary_path(path: Path | None) -> None:
    """Fail before tracing, not after, when the summary file cannot be written."""
    if path is None:
        return
    parent = path.parent if str(path.parent) else Path()
    if path.is_dir() or not parent.is_dir() or not os.access(parent, os.W_OK):
        raise UsageError(f"cannot write the summary to {path}", hint="give --summary-json a writable file path")


def _check_verifier_log_dir(path: Path | None) -> None:
    """Fail before tracing when --verifier-log is not a writable folder."""
    if path is not None and not (path.is_dir() and os.access(path, os.W_OK)):
        raise UsageError(f"--verifier-log {path} is not a writable folder",
                         hint="create it first, or leave --verifier-log out")


def _check_rung(probes: list[Probe], rung: str | None) -> None:
    """Refuse a --rung that no selected probe has (a typo), naming each probe's rungs.

    Probes without the rung while others have it are not refused here: the run
    reports them as not attached and goes on with the rest (docs/decisions.md).
    """
    if rung is None or any(step.name == rung for probe in probes for step in probe.ladder):
        return
    from jalki_core.loader import rung_names

    ladders = "; ".join(f"{probe.name}: {rung_names(probe)}" for probe in probes)
    raise UsageError(f"no selected probe has a rung named {rung!r} ({ladders})",
                     hint="pass one of those rung names to --rung, or leave --rung out")


def _print_rung_failure(console: Any, probe: str, failure: RungFailure) -> None:
    """One failed rung under the summary table; for a rejected load, the verifier's last lines and its log file."""
    from rich.markup import escape
    from rich.padding import Padding
    from rich.text import Text

    console.print(f"  {probe}: rung {escape(failure.one_line())}")
    if failure.verifier_tail:
        console.print("    verifier log, last lines:")
        for line in failure.verifier_tail.splitlines():
            # rich wraps what is wider than the terminal (80 columns in a pipe) under the indent
            console.print(Padding(Text(line), (0, 0, 0, 6), expand=False))
    if failure.log_file:
        console.print("    full verifier log:")
        console.print(f"      {escape(failure.log_file)}", soft_wrap=True)  # a path is never broken
    elif failure.log_excerpt and os.environ.get("JALKI_DEBUG"):
        console.print(escape(failure.log_excerpt), soft_wrap=True)


def _print_summary(summary: SessionSummary) -> None:
    from rich.markup import escape

    from jalki_core.cli.tables import Column, print_table

    console = stderr_console()
    rows = []
    for probe in summary.probes:
        cause_text = ", ".join(f"{k}={v}" for k, v in probe.drops_by_cause.items() if v) or "-"
        rows.append([probe.name, probe.rung or "[red]not attached[/]", str(probe.events), str(probe.dropped),
                     cause_text])
    columns = [Column("probe"), Column("attach"), Column("events", justify="right"),
               Column("dropped", justify="right"), Column("drop causes")]
    print_table(console, f"jalki run summary ({summary.duration_s:.1f}s)", columns, rows,
                more="see --summary-json")
    for probe in summary.probes:
        if probe.error and not probe.failed_rungs:
            # no failed rung explains it (e.g. Probe.unavailable_reason: none was tried): say the error itself
            console.print(f"  {probe.name}: not attached: {escape(probe.error)}")
        for failure in probe.failed_rungs:
            _print_rung_failure(console, probe.name, failure)
    for name, stats in summary.emitters.items():
        line = f"  emitter {name}: {stats['events_emitted']} events written"
        if stats["events_dropped"] or stats["errors"]:
            drops = ", ".join(f"{reason}={count}" for reason, count in stats["dropped_by_reason"].items() if count)
            reasons = f" ({drops})" if drops else ""
            line += f", [red]{stats['events_dropped']} dropped{reasons}, {stats['errors']} errors[/]"
            if stats["last_error"]:
                line += f" (last: {escape(stats['last_error'])})"
        console.print(line)
    if summary.enrich is not None:
        for line in enrich_lines(summary.enrich):
            console.print(f"  {escape(line)}", soft_wrap=True)
