"""What several ``jalki`` commands share: the stderr console, plugin loading with warnings, emitters from
``--emit``, JSON printing, drop counts as text."""

from __future__ import annotations

import re
import sys
from typing import TYPE_CHECKING, Any

from jalki_core.errors import JalkiError, PluginError, UnknownEmitterError, UsageError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from jalki_core.emitters.base import Emitter
    from jalki_core.enrich import EnrichStage
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



_DNS_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def split_list(values: list[str] | None) -> list[str]:
    """Repeated and comma-separated option values, in order, each once."""
    names = (part.strip() for value in values or () for part in value.split(","))
    return list(dict.fromkeys(name for name in names if name))


def build_enrich(plugins: JalkiPlugins, enrich: list[str] | None, node_name: str | None,
                 namespaces: list[str] | None) -> EnrichStage | None:
    """The enricher stage of ``--enrich NAME``, ``--node-name`` and ``--namespace``; ``None`` without ``--enrich``.

    An unknown name is one line listing the available enrichers; ``--node-name`` or ``--namespace``
    without ``--enrich`` is refused (they would do nothing).
    """
    from jalki_core.enrich import EnricherOptions, EnrichStage

    names, allowed = split_list(enrich), split_list(namespaces)
    if not names:
        for option, given in (("--node-name", node_name is not None), ("--namespace", bool(namespaces))):
            if given:
                raise UsageError(f"{option} only applies with --enrich k8s", hint="add --enrich k8s, or leave "
                                 f"{option} out")
        return None
    if node_name is not None and not _DNS_NAME.match(node_name):
        raise UsageError(f"--node-name must be a Kubernetes node name (lower-case letters, digits, '-' and '.'), "
                         f"not {node_name!r}")
    for namespace in allowed:
        if not _DNS_LABEL.match(namespace):
            raise UsageError(f"--namespace must be a Kubernetes namespace name (lower-case letters, digits and "
                             f"'-', at most 63), not {namespace!r}")
    options = EnricherOptions(node_name=node_name)
    enrichers = []
    for name in names:
        registered = plugins.enrichers.get(name)
        if registered is None:
            known = ", ".join(sorted(entry.name for entry in plugins.enrichers)) or "none"
            raise UsageError(f"unknown enricher {name!r}; available enrichers: {known}",
                             hint="e.g. --enrich k8s (pip install jalki-k8s)")
        try:
            enrichers.append((name, registered.factory(options)))
        except JalkiError:
            raise
        except Exception as exc:  # a plugin's bug: one line naming it
            raise PluginError(f"enricher {name!r} ({registered.owner}) could not be made: "
                              f"{type(exc).__name__}: {exc}") from exc
    return EnrichStage(enrichers, allowed or None)


def enrich_lines(status: Mapping[str, Any]) -> list[str]:
    """One line per enricher (state, counters that counted), and one for the namespace scope."""
    lines = []
    for name, info in status["enrichers"].items():
        counters = {**info.get("counters", {}), "errors": info["errors"],
                    "events_unenriched": info["events_unenriched"]}
        state = info.get("state", "ready" if info["ready"] else "not ready")
        problem = f" ({info['problem']})" if info.get("problem") else ""
        lines.append(f"enricher {name}: {state}{problem}; {drops_text(counters)}")
    if status["namespaces"] is not None:
        lines.append(f"--namespace {','.join(status['namespaces'])}: {status['out_of_scope']} events of other "
                     "namespaces not written by the emitters (out of scope, not lost)")
    return lines


def print_json(value: Any) -> None:
    """``value`` as indented JSON on stdout (the ``--json`` form of every command that prints a table)."""
    import orjson

    sys.stdout.buffer.write(orjson.dumps(value, option=orjson.OPT_INDENT_2) + b"\n")
    sys.stdout.flush()


def drops_text(drops: Mapping[str, int]) -> str:
    """``cause=count`` for every cause that counted, or ``0``."""
    return ", ".join(f"{cause}={count}" for cause, count in drops.items() if count) or "0"
