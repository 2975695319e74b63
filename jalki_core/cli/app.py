"""The ``jalki`` typer app: every command registered from its module, and :func:`main`.

Plugins add commands through ``jalki_register_commands``
(:func:`add_plugin_commands`). Loading plugins costs time, so :func:`main`
loads them only when the command line names no built-in command (``jalki``,
``jalki --help``, a plugin's command): built-in commands start as fast as
before, and the help lists the plugins' commands.

This is the only module that turns :class:`JalkiError` into a red line and an
exit code (:mod:`jalki_core.cli.exit_codes`). ``JALKI_DEBUG=1`` shows the
traceback as well.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Iterable
from typing import TYPE_CHECKING, Annotated

import typer

from jalki_core.cli.common import load_plugins, print_json, stderr_console
from jalki_core.cli.exit_codes import ExitCode, exit_code_for
from jalki_core.errors import JalkiError

if TYPE_CHECKING:
    from jalki_core.plugins import JalkiPlugins
    from jalki_core.registry import PluginIdentity, RegisteredCommand

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


def builtin_command_names(target: typer.Typer = app) -> frozenset[str]:
    """The names of the commands and groups registered on ``target`` (typer's name for an unnamed one)."""
    names = {info.name or typer.main.get_command_name(info.callback.__name__)  # type: ignore[union-attr]
             for info in target.registered_commands}
    names.update(info.name for info in target.registered_groups if info.name)
    return frozenset(names)


BUILTIN_COMMANDS = builtin_command_names()
"""The core's own commands; a plugin may not take these names."""


def add_plugin_commands(target: typer.Typer, plugins: JalkiPlugins,
                        reserved: Iterable[str] = BUILTIN_COMMANDS) -> list[str]:
    """Add the commands plugins registered to ``target``; the names added.

    A plugin whose command takes a ``reserved`` name, or whose commands typer
    cannot build (a bad signature), loses all its commands, recorded by
    :meth:`JalkiPlugins.drop_commands` with one line naming it; every other
    plugin's commands are added.
    """
    taken = set(reserved)
    by_owner: dict[PluginIdentity, list[RegisteredCommand]] = {}
    for command in plugins.commands:
        by_owner.setdefault(command.owner, []).append(command)
    added: list[str] = []
    for owner, commands in by_owner.items():
        trial = typer.Typer()
        try:
            for command in commands:
                name = command.name
                if name in taken:
                    raise JalkiError(f"command {name!r} is a built-in jalki command",
                                     hint="the plugin must pick another name")
                _add_command(trial, command)
            typer.main.get_command(trial)  # typer checks signatures here; a bad one costs only its plugin
        except JalkiError as exc:
            plugins.drop_commands(owner, exc.one_line())
            continue
        except Exception as exc:  # a plugin's own bug must not stop the CLI
            plugins.drop_commands(owner, f"typer refused a command: {type(exc).__name__}: {exc}")
            continue
        for command in commands:
            _add_command(target, command)
            added.append(command.name)
    return added


def _add_command(target: typer.Typer, command: RegisteredCommand) -> None:
    options = dict(command.options or {})
    if command.app is not None:
        target.add_typer(command.app, name=command.name, **options)
    elif command.callback is not None:
        target.command(command.name, **options)(command.callback)


_plugin_commands_added = False


def _wants_plugin_commands(argv: list[str]) -> bool:
    """Whether the command line names no built-in command (so a plugin's command or the help may be asked for)."""
    first = next((arg for arg in argv if not arg.startswith("-")), None)
    return first is None or first not in BUILTIN_COMMANDS


def _load_plugin_commands() -> None:
    """Load the plugins once per process and add their commands to ``app``, each problem one warning line."""
    global _plugin_commands_added
    if _plugin_commands_added:
        return
    _plugin_commands_added = True
    from rich.markup import escape

    from jalki_core.cli.common import load_plugins

    plugins = load_plugins()
    add_plugin_commands(app, plugins)
    if plugins.command_problems:
        console = stderr_console()
        for problem in plugins.command_problems:
            console.print(f"[yellow]warning:[/] {escape(problem.one_line())}", soft_wrap=True)


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
    if _wants_plugin_commands(sys.argv[1:] if argv is None else argv):
        _load_plugin_commands()
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
