"""The ``jalki_register_commands`` hook: a plugin adds a ``jalki`` subcommand; clashes and bugs cost only it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path
from typing import Any

import typer
from typer.testing import CliRunner

from jalki_core import hookimpl
from jalki_core.cli.app import BUILTIN_COMMANDS, add_plugin_commands
from jalki_core.plugins import JalkiPlugins, PluginSource
from jalki_core.registry import PluginIdentity

JALKI = str(Path(sys.executable).with_name("jalki"))


def commands_plugin(*names: str, fail: bool = False) -> types.ModuleType:
    module = types.ModuleType("commands_plugin")

    @hookimpl
    def jalki_register_commands(cli: Any) -> None:
        for name in names:
            def command(who: str = "world", name: str = name) -> None:
                print(f"{name}: hello {who}")
            cli.command(name, help=f"Say hello ({name}).")(command)
        if fail:
            raise RuntimeError("boom")

    module.jalki_register_commands = jalki_register_commands  # type: ignore[attr-defined]
    return module


def source(plugin: str, module: types.ModuleType) -> PluginSource:
    return PluginSource(PluginIdentity(plugin, f"jalki-{plugin}", "1.0"), lambda: module)


def app_with(plugins: JalkiPlugins) -> typer.Typer:
    app = typer.Typer()

    @app.command("status")
    def status() -> None:
        """A built-in."""

    add_plugin_commands(app, plugins, reserved={"status"})
    return app


def test_a_plugin_command_runs_and_others_are_unaffected_by_a_broken_or_clashing_one() -> None:
    plugins = JalkiPlugins([source("good", commands_plugin("hello")),
                            source("buggy", commands_plugin("buggy-cmd", fail=True)),
                            source("greedy", commands_plugin("greet", "status")),
                            source("copycat", commands_plugin("hello"))], load_defaults=False)
    app = app_with(plugins)
    result = CliRunner().invoke(app, ["hello", "--who", "kernel"])
    assert result.exit_code == 0 and result.output == "hello: hello kernel\n"
    problems = {p.identity.plugin: p.one_line() for p in plugins.command_problems}
    assert set(problems) == {"buggy", "greedy", "copycat"}
    assert problems["buggy"] == ("plugin 'buggy' (jalki-buggy 1.0): its commands are not added: "
                                 "jalki_register_commands raised RuntimeError: boom")
    assert "'status' is a built-in jalki command" in problems["greedy"]
    assert "duplicates the one from jalki-good 1.0" in problems["copycat"]
    # all or none: greedy's other command is not added, and its probes/emitters are unaffected
    assert CliRunner().invoke(app, ["greet"]).exit_code != 0
    assert plugins.broken == [] and {row["plugin"] for row in plugins.describe()} >= {"good", "greedy"}
    assert [row["commands"] for row in plugins.describe() if row["plugin"] == "good"] == [["hello"]]


def test_a_command_typer_cannot_build_costs_only_its_plugin() -> None:
    module = types.ModuleType("bad_group")

    @hookimpl
    def jalki_register_commands(cli: Any) -> None:
        cli.add_typer("not a typer app", name="bad")

    module.jalki_register_commands = jalki_register_commands  # type: ignore[attr-defined]
    plugins = JalkiPlugins([source("bad", module), source("good", commands_plugin("hello"))], load_defaults=False)
    app = app_with(plugins)
    assert CliRunner().invoke(app, ["hello"]).output == "hello: hello world\n"
    assert [p.identity.plugin for p in plugins.command_problems] == ["bad"]
    assert "typer refused a command" in plugins.command_problems[0].reason


def test_builtin_names_are_reserved() -> None:
    assert {"run", "serve", "ask", "status", "plugins", "new-probe"} <= BUILTIN_COMMANDS


def installed_plugin(tmp_path: Path, body: str) -> dict[str, str]:
    """An installed third-party plugin: its module and a dist-info with a ``jalki`` entry point, on PYTHONPATH."""
    (tmp_path / "jalki_hello.py").write_text(textwrap.dedent(body))
    dist = tmp_path / "jalki_hello-2.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: jalki-hello\nVersion: 2.0\n")
    (dist / "entry_points.txt").write_text("[jalki]\nhello = jalki_hello\n")
    return {**os.environ, "PYTHONPATH": str(tmp_path), "JALKI_PLUGINS": "hello", "COLUMNS": "200"}


def test_an_installed_plugin_adds_a_jalki_subcommand(tmp_path: Path) -> None:
    env = installed_plugin(tmp_path, '''
        import typer
        from jalki_core import hookimpl
        from jalki_core.errors import UsageError

        @hookimpl
        def jalki_register_commands(cli):
            @cli.command("hello", help="Greet the kernel.")
            def hello(name: str = typer.Option("kernel", help="Who.")) -> None:
                if name == "nobody":
                    raise UsageError("nobody to greet", hint="pass --name")
                print(f"hello {name}")
    ''')
    run = [JALKI]
    said = subprocess.run([*run, "hello", "--name", "you"], capture_output=True, text=True, env=env, timeout=60)
    assert (said.returncode, said.stdout, said.stderr) == (0, "hello you\n", "")
    refused = subprocess.run([*run, "hello", "--name", "nobody"], capture_output=True, text=True, env=env,
                             timeout=60)
    assert refused.returncode == 2 and refused.stderr == "error: nobody to greet (pass --name)\n"
    listed = subprocess.run([*run, "--help"], capture_output=True, text=True, env=env, timeout=60)
    assert "Greet the kernel." in listed.stdout
    plugins = subprocess.run([*run, "plugins", "--json"], capture_output=True, text=True, env=env, timeout=60)
    assert '"commands": [\n      "hello"\n    ]' in plugins.stdout


def test_an_installed_plugin_cannot_take_a_builtin_name(tmp_path: Path) -> None:
    env = installed_plugin(tmp_path, '''
        from jalki_core import hookimpl

        @hookimpl
        def jalki_register_commands(cli):
            cli.command("status")(lambda: print("hijacked"))
            cli.command("hello")(lambda: print("hello"))
    ''')
    result = subprocess.run([JALKI, "hello"], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 2
    assert result.stderr.splitlines()[0] == ("warning: plugin 'hello' (jalki-hello 2.0): its commands are not "
                                            "added: command 'status' is a built-in jalki command (the plugin "
                                            "must pick another name)")
    assert "No such command 'hello'" in result.stderr
