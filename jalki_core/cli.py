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
    from jalki_core.emitters.base import Emitter
    from jalki_core.plugins import JalkiPlugins
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
    if pid is not None and pid <= 0:
        raise UsageError(f"--pid must be a positive process id, not {pid}")
    if port is not None and not 0 < port < 65536:
        raise UsageError(f"--port must be between 1 and 65535, not {port}")
    if not 0.0 < sample <= 1.0:
        raise UsageError(f"--sample must be in (0, 1], not {sample}", hint="e.g. --sample 0.1 keeps 10%")
    if seconds is not None and seconds <= 0:
        raise UsageError(f"--seconds must be positive, not {seconds}")


@app.command()
def run(
    plugin: Annotated[
        list[str] | None, typer.Option("--plugin", "-p", help="Plugin (or single probe) to run; repeatable.")
    ] = None,
    emit: Annotated[
        list[str] | None, typer.Option(help="stdout, or file:PATH[,max_bytes=N][,backups=K]; repeatable.")
    ] = None,
    seconds: Annotated[float | None, typer.Option(help="Stop after N seconds (default: until Ctrl-C/SIGTERM).")] = None,
    cluster: Annotated[str | None, typer.Option(help="Cluster name written into every event.")] = None,
    pid: Annotated[int | None, typer.Option(help="Only events of this process id.")] = None,
    port: Annotated[int | None, typer.Option(help="Only events with this source or destination port.")] = None,
    sample: Annotated[
        float, typer.Option(help="Fraction of events to keep, in (0, 1]; the rest are counted as drops.")
    ] = 1.0,
    strict: Annotated[bool, typer.Option(help="Fail if any probe cannot be attached.")] = False,
    summary_json: Annotated[Path | None, typer.Option(help="Also write the run summary as JSON to this file.")] = None,
    serve: Annotated[bool, typer.Option("--serve", help="Stay up as a node agent behind a local API "
                                        "(specs/protocol.md); probes can be deployed at run time.")] = False,
    socket: Annotated[Path | None, typer.Option("--socket", help="With --serve: the API socket "
                                                "(default: $JALKI_SOCKET or /run/jalki/jalki.sock).")] = None,
    socket_group: Annotated[str | None, typer.Option(help="With --serve: group allowed to use the socket "
                                                     "(mode 0660).")] = None,
    history: Annotated[str, typer.Option(help="With --serve: SQLite event history PATH, or off "
                                         "(default /var/lib/jalki/history.db).")] = "",
    history_max_mb: Annotated[int, typer.Option(help="With --serve: most MiB the history takes on disk "
                                                "(database and WAL); the oldest events go first.")] = 256,
    history_max_age: Annotated[str, typer.Option(help="With --serve: history events older than this are "
                                                 "deleted: 90s, 30m, 12h, 7d.")] = "7d",
    metrics_addr: Annotated[str, typer.Option(help="With --serve: Prometheus HOST:PORT, or off.")]
    = "127.0.0.1:9464",
) -> None:
    """Attach the probes of the given plugins and stream their events."""
    from jalki_core.loader import ProbeOptions
    from jalki_core.session import TraceSession

    _validate_run_options(pid, port, sample, seconds)
    from jalki_core.cli_daemon import parse_duration

    if history_max_mb <= 0:
        raise UsageError(f"--history-max-mb must be a positive number of MiB, not {history_max_mb}",
                         hint="e.g. --history-max-mb 256")
    history_max_age_s = parse_duration(history_max_age, "--history-max-age")
    _check_summary_path(summary_json)
    plugins = _load_plugins()
    if serve:
        from jalki_core import cli_daemon
        from jalki_core.daemon.protocol import DeploySpec
        from jalki_core.daemon.store import MIB, HistoryLimits
        from jalki_core.privileges import require_bpf_privileges

        require_bpf_privileges()
        initial = [DeploySpec(entry.probe.name, sample=sample, pid=pid, port=port)
                   for entry in plugins.probes_for(plugin or [])]
        cli_daemon.serve(plugins, initial, _build_emitters(plugins, emit or []), socket_path=socket,
                         socket_group=socket_group, history=history, metrics_addr=metrics_addr, cluster=cluster,
                         history_limits=HistoryLimits(max_bytes=history_max_mb * MIB, max_age_s=history_max_age_s))
        return
    if not plugin:
        raise UsageError("--plugin is required (or --serve to deploy probes at run time)",
                         hint="e.g. jalki run --plugin tcp")
    selected = plugins.probes_for(plugin)
    emitters = _build_emitters(plugins, emit or ["stdout"])
    options = ProbeOptions(filter_pid=pid or 0, filter_port=port or 0, sample_rate=sample)
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
                    soft_wrap=True,
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


def _print_summary(summary: SessionSummary) -> None:
    from rich.markup import escape
    from rich.table import Table

    console = _stderr_console()
    table = Table(title=f"jalki run summary ({summary.duration_s:.1f}s)", title_justify="left")
    for column in ("probe", "attach", "events", "dropped", "drop causes"):
        table.add_column(column)
    for probe in summary.probes:
        cause_text = ", ".join(f"{k}={v}" for k, v in probe.drops_by_cause.items() if v) or "-"
        table.add_row(probe.name, probe.rung or "[red]not attached[/]", str(probe.events),
                      str(probe.dropped), cause_text)
    console.print(table)
    for probe in summary.probes:
        if probe.error and not probe.failed_rungs:
            # no failed rung explains it (e.g. Probe.unavailable_reason: none was tried): say the error itself
            console.print(f"  {probe.name}: not attached: {escape(probe.error)}", soft_wrap=True)
        for failure in probe.failed_rungs:
            console.print(f"  {probe.name}: rung {escape(failure.one_line())}", soft_wrap=True)
            if failure.log_excerpt and os.environ.get("JALKI_DEBUG"):
                console.print(escape(failure.log_excerpt), soft_wrap=True)
    for name, stats in summary.emitters.items():
        line = f"  emitter {name}: {stats['events_emitted']} events written"
        if stats["events_dropped"] or stats["errors"]:
            line += f", [red]{stats['events_dropped']} dropped, {stats['errors']} errors[/]"
            if stats["last_error"]:
                line += f" (last: {escape(stats['last_error'])})"
        console.print(line, soft_wrap=True)


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
    from rich.table import Table

    table = Table(title="jalki plugins", title_justify="left")
    for column in ("plugin", "distribution", "version", "probes", "emitters", "status"):
        table.add_column(column)
    for row in rows:
        status = "ok" if row["status"] == "ok" else f"[red]broken: {row['error']}[/]"
        table.add_row(row["plugin"], row["distribution"], row["version"],
                      ", ".join(p["name"] for p in row["probes"]) or "-",
                      ", ".join(row["emitters"]) or "-", status)
    Console().print(table)


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
    from rich.table import Table

    table = Table(title="jalki doctor", title_justify="left")
    for column in ("check", "result", "detail"):
        table.add_column(column)
    for check in report["checks"]:
        mark = {"ok": "[green]ok[/]", "fail": "[red]fail[/]", "warn": "[yellow]warn[/]"}[check["status"]]
        table.add_row(check["name"], mark, check["detail"])
    Console().print(table)


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
