"""The ``jalki`` command line (typer + rich).

This is the only module that turns :class:`JalkiError` into a red line and an
exit code. ``JALKI_DEBUG=1`` shows the traceback as well.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from jalki_core.errors import EmitterError, JalkiError, UnknownEmitterError, UsageError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from jalki_core.emitters.base import Emitter
    from jalki_core.loader import RungFailure
    from jalki_core.plugins import JalkiPlugins
    from jalki_core.probe import Probe
    from jalki_core.session import SessionSummary

app = typer.Typer(
    name="jalki",
    help="Ask the Linux kernel why: attach eBPF probes and stream structured events.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register_kb_commands() -> None:
    from jalki_core import cli_ask, cli_daemon, cli_kb

    app.command("find")(cli_kb.find_command)
    app.command("list")(cli_kb.list_command)
    app.command("explain")(cli_kb.explain_command)
    app.command("ask")(cli_ask.ask_command)
    for name in ("status", "deploy", "undeploy", "watch", "stream", "recent", "health"):
        app.command(name)(getattr(cli_daemon, f"{name}_command"))


_register_kb_commands()


def _stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def _load_plugins() -> JalkiPlugins:
    from rich.markup import escape

    from jalki_core.plugins import JalkiPlugins

    plugins = JalkiPlugins()
    if plugins.broken:
        console = _stderr_console()
        for broken in plugins.broken:
            console.print(f"[yellow]warning:[/] {escape(broken.one_line())}", soft_wrap=True)
    return plugins


def _build_emitters(plugins: JalkiPlugins, specs: list[str]) -> list[Emitter]:
    emitters = []
    for spec in specs:
        name, _, argument = spec.partition(":")
        registered = plugins.emitters.get(name)
        if registered is None:
            known = ", ".join(sorted(entry.name for entry in plugins.emitters))
            raise UnknownEmitterError(
                f"unknown emitter {name!r}; available emitters: {known}",
                hint="use --emit stdout or --emit file:PATH",
            )
        emitters.append(registered.factory(argument or None))
    return emitters


def _validate_run_options(pid: int | None, port: int | None, sample: float, seconds: float | None) -> None:
    from jalki_core.cli_options import check_pid, check_port, check_sample, check_seconds

    check_pid(pid)
    check_port(port)
    check_sample(sample)
    check_seconds(seconds)


PluginOption = Annotated[list[str] | None, typer.Option("--plugin", "-p", help="Plugin (or single probe) to run; "
                                                          "repeatable.")]
EmitOption = Annotated[list[str] | None, typer.Option(help="stdout, or file:PATH[,max_bytes=N][,backups=K]; "
                                                        "repeatable.")]
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

DAEMON_ONLY_OPTIONS = ("--socket", "--socket-group", "--history", "--history-max-mb", "--history-max-age",
                       "--metrics-addr")
"""Options of ``jalki serve`` (and ``run --serve``) that a plain ``jalki run`` refuses."""

RUN_ONLY_OPTIONS = ("--seconds", "--strict", "--summary-json", "--rung", "--verifier-log")
"""Options of a plain ``jalki run`` that the daemon refuses (it runs until SIGTERM and has no run summary)."""


def _refuse_daemon_options(given: Mapping[str, object]) -> None:
    """One line for the first daemon-only option given to a plain ``jalki run``."""
    for option, value in given.items():
        if value is not None:
            raise UsageError(f"{option} is an option of the daemon, not of a plain 'jalki run'",
                             hint=f"use 'jalki serve {option} …' to run the daemon")


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


@app.command()
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
) -> None:
    """Attach the probes of the given plugins and stream their events (--serve: as 'jalki serve')."""
    daemon_options = dict(zip(DAEMON_ONLY_OPTIONS, (socket, socket_group, history, history_max_mb, history_max_age,
                                                    metrics_addr), strict=True))
    if serve:
        serve_command(plugin, emit, cluster, pid, port, sample, socket, socket_group, history, history_max_mb,
                      history_max_age, metrics_addr, seconds, strict, summary_json, rung, verifier_log)
        return
    _refuse_daemon_options(daemon_options)
    from jalki_core.loader import ProbeOptions
    from jalki_core.session import TraceSession

    _validate_run_options(pid, port, sample, seconds)
    _check_summary_path(summary_json)
    _check_verifier_log_dir(verifier_log)
    if not plugin:
        raise UsageError("--plugin is required (or 'jalki serve' to deploy probes at run time)",
                         hint="e.g. jalki run --plugin tcp")
    plugins = _load_plugins()
    selected = plugins.probes_for(plugin)
    _check_rung([entry.probe for entry in selected], rung)
    emitters = _build_emitters(plugins, emit or ["stdout"])
    options = ProbeOptions(filter_pid=pid or 0, filter_port=port or 0, sample_rate=sample, rung=rung,
                           verifier_log_dir=verifier_log)
    session = TraceSession(
        [entry.probe for entry in selected], emitters, options=options, strict=strict, cluster=cluster
    )

    def _on_signal(signum: int, _frame: object) -> None:
        session.request_stop()

    # Handlers stay installed until everything is flushed: a second Ctrl-C
    # during the final drain must not kill the process with events queued.
    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            session.start()
            if session.attached:
                _stderr_console().print(
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


@app.command("serve")
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
) -> None:
    """Stay up as a node agent behind a local API (specs/protocol.md) until SIGTERM; probes can be deployed at
    run time ('jalki deploy'), and clients read status, live and recent events, and ask questions."""
    from jalki_core import cli_daemon
    from jalki_core.cli_options import check_pid, check_port, check_sample, parse_address, parse_duration
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
    plugins = _load_plugins()
    require_bpf_privileges()
    initial = [DeploySpec(entry.probe.name, sample=sample, pid=pid, port=port)
               for entry in plugins.probes_for(plugin or [])]
    cli_daemon.serve(plugins, initial, _build_emitters(plugins, emit or []), socket_path=socket,
                     socket_group=socket_group, history=history or "", metrics_addr=metrics, cluster=cluster,
                     history_limits=HistoryLimits(max_bytes=max_mb * MIB, max_age_s=max_age_s))


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

    from jalki_core.tables import Column, print_table

    console = _stderr_console()
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
            line += f", [red]{stats['events_dropped']} dropped, {stats['errors']} errors[/]"
            if stats["last_error"]:
                line += f" (last: {escape(stats['last_error'])})"
        console.print(line)


@app.command()
def plugins(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List installed plugin distributions, versions, probes and emitters."""
    loaded = _load_plugins()
    rows = loaded.describe()
    if as_json:
        import orjson

        sys.stdout.buffer.write(orjson.dumps(rows, option=orjson.OPT_INDENT_2) + b"\n")
        return
    from rich.console import Console
    from rich.markup import escape

    from jalki_core.tables import Column, print_table

    cells = []
    for row in rows:
        status = "ok" if row["status"] == "ok" else f"[red]broken: {escape(row['error'])}[/]"
        cells.append([row["plugin"], f"{row['distribution']} {row['version']}",
                      ", ".join(p["name"] for p in row["probes"]) or "-", ", ".join(row["emitters"]) or "-",
                      status])
    columns = [Column("plugin"), Column("distribution"), Column("probes"), Column("emitters", drop=1),
               Column("status", min_width=12)]
    print_table(Console(highlight=False), "jalki plugins", columns, cells)


@app.command()
def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Check BTF, privileges, lockdown, and which attach types really work here (by trial)."""
    from jalki_core.doctor import run_checks

    report = run_checks()
    if as_json:
        import orjson

        sys.stdout.buffer.write(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
        return
    from rich.console import Console
    from rich.markup import escape

    from jalki_core.tables import Column, print_table

    rows = []
    for check in report["checks"]:
        mark = {"ok": "[green]ok[/]", "fail": "[red]fail[/]", "warn": "[yellow]warn[/]"}[check["status"]]
        rows.append([escape(check["name"]), mark, escape(check["detail"])])
    print_table(Console(highlight=False), "jalki doctor",
                [Column("check", wrap=False), Column("result"), Column("detail", min_width=20)], rows)


def _print_error(message: str) -> None:
    try:
        _stderr_console().print(f"[bold red]error:[/] {message}", soft_wrap=True, markup=True)
    except Exception:
        print(f"error: {message}", file=sys.stderr)


def _click_exception_types() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """Usage-error and abort exception classes of the click that typer runs on.

    Older typer releases use the ``click`` package; newer ones vendor it as
    ``typer._click``. Both are looked up so the one-line error holds for either.
    """
    usage: list[type[BaseException]] = []
    abort: list[type[BaseException]] = [typer.Abort]
    for module_name in ("click.exceptions", "typer._click.exceptions"):
        try:
            module = __import__(module_name, fromlist=["UsageError"])
        except ImportError:
            continue
        usage.append(module.UsageError)
        if hasattr(module, "Abort"):
            abort.append(module.Abort)
    return tuple(usage), tuple(abort)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``jalki`` console script; returns the exit code."""
    from rich.markup import escape

    level = logging.DEBUG if os.environ.get("JALKI_DEBUG") else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not os.environ.get("JALKI_DEBUG"):
        logging.getLogger("jalki.libbpf").setLevel(logging.ERROR)
        logging.getLogger("jalki.plugins").setLevel(logging.ERROR)  # shown by the CLI itself
        logging.getLogger("jalki.session").setLevel(logging.ERROR)  # shown in the summary
    usage_errors, aborts = _click_exception_types()
    interrupts: tuple[type[BaseException], ...] = (*aborts, KeyboardInterrupt)
    try:
        result = app(args=argv, prog_name="jalki", standalone_mode=False)
    except JalkiError as exc:
        if os.environ.get("JALKI_DEBUG"):
            traceback.print_exc()
        _print_error(escape(exc.one_line()))
        return exc.exit_code
    except usage_errors as exc:
        _print_error(escape(exc.format_message()) + " (see 'jalki --help')")  # type: ignore[attr-defined]
        return 2
    except interrupts:
        _print_error("interrupted")
        return 130
    except typer.Exit as exc:
        return exc.exit_code
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
