"""What several ``jalki`` commands share: the stderr console, plugin loading with warnings, emitters from
``--emit``, JSON printing, drop counts as text."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from jalki_core.errors import UnknownEmitterError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from jalki_core.emitters.base import Emitter
    from jalki_core.plugins import JalkiPlugins


def stderr_console() -> Any:
    """A rich console on stderr (summaries, warnings, progress), without highlighting."""
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def load_plugins() -> JalkiPlugins:
    """The installed plugins, each broken one named in one warning line on stderr."""
    from rich.markup import escape

    from jalki_core.plugins import JalkiPlugins

    plugins = JalkiPlugins()
    if plugins.broken:
        console = stderr_console()
        for broken in plugins.broken:
            console.print(f"[yellow]warning:[/] {escape(broken.one_line())}", soft_wrap=True)
    return plugins


def build_emitters(plugins: JalkiPlugins, specs: list[str]) -> list[Emitter]:
    """The emitters named by ``--emit NAME[:ARGUMENT]`` values; an unknown name is one line."""
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
        from jalki_core.emitters.selection import take_selection

        selection, rest = take_selection(argument or None)  # types=, skip_types=, min_severity=, rate=
        emitter = registered.factory(rest)
        emitter.selection = selection
        emitters.append(emitter)
    return emitters




def print_json(value: Any) -> None:
    """``value`` as indented JSON on stdout (the ``--json`` form of every command that prints a table)."""
    import orjson

    sys.stdout.buffer.write(orjson.dumps(value, option=orjson.OPT_INDENT_2) + b"\n")
    sys.stdout.flush()


def drops_text(drops: Mapping[str, int]) -> str:
    """``cause=count`` for every cause that counted, or ``0``."""
    return ", ".join(f"{cause}={count}" for cause, count in drops.items() if count) or "0"
