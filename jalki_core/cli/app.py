"""The ``jalki`` typer app: every command registered from its module, and :func:`main`.

This is the only module that turns :class:`JalkiError` into a red line and an
exit code (:mod:`jalki_core.cli.exit_codes`). ``JALKI_DEBUG=1`` shows the
traceback as well.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from typing import Annotated

import typer

from jalki_core.cli.common import load_plugins, print_json, stderr_console
from jalki_core.cli.exit_codes import ExitCode, exit_code_for
from jalki_core.errors import JalkiError

app = typer.Typer(
    name="jalki",
    help="Ask the Linux kernel why: attach eBPF probes and stream structured events.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command()
def plugins(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List installed plugin distributions, versions, probes and emitters."""
    loaded = load_plugins()
    rows = loaded.describe()
    if as_json:
        print_json(rows)
        return
    from rich.console import Console
    from rich.markup import escape

    from jalki_core.cli.tables import Column, print_table

    cells = []
    for row in rows:
        status = "ok" if row["status"] == "ok" else f"[red]broken: {escape(row['error'])}[/]"
        cells.append([row["plugin"], f"{row['distribution']} {row['version']}",
                      ", ".join(p["name"] for p in row["probes"]) or "-", ", ".join(row["emitters"]) or "-",
                      status])
    columns = [Column("plugin"), Column("distribution"), Column("probes"), Column("emitters", drop=1),
               Column("status", min_width=12)]
    print_table(Console(highlight=False), "jalki plugins", columns, cells)


def _register_commands() -> None:
    """Every command, from its module by stage (run, serve, ask, kb, daemon clients, doctor, new-probe)."""
    from jalki_core.cli import ask, daemon, doctor, kb, newprobe, run, serve

    app.command("run")(run.run)
    app.command("serve")(serve.serve_command)
    app.command("find")(kb.find_command)
    app.command("list")(kb.list_command)
    app.command("explain")(kb.explain_command)
    app.command("ask")(ask.ask_command)
    for name in ("status", "deploy", "undeploy", "watch", "stream", "recent", "health"):
        app.command(name)(getattr(daemon, f"{name}_command"))
    app.command("doctor")(doctor.doctor_command)
    app.command("new-probe")(newprobe.new_probe_command)


_register_commands()


def _print_error(message: str) -> None:
    try:
        stderr_console().print(f"[bold red]error:[/] {message}", soft_wrap=True, markup=True)
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
        return exit_code_for(exc)
    except usage_errors as exc:
        _print_error(escape(exc.format_message()) + " (see 'jalki --help')")  # type: ignore[attr-defined]
        return ExitCode.USAGE
    except interrupts:
        _print_error("interrupted")
        return ExitCode.INTERRUPTED
    except typer.Exit as exc:
        return exc.exit_code
    return result if isinstance(result, int) else ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
