"""The plugin contract of jalki: every hook a plugin may implement.

A plugin is a module named by an entry point in the ``jalki`` group; it
implements some of these hooks, decorated with :data:`jalki_core.hookimpl`.
Registration hooks receive a registry and call its ``register`` method, so one
plugin can add several probes or emitters and the registry can name both
distributions when two register the same name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

from jalki_core.version import PROJECT_NAME

hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
"""Marker for plugin hook implementations: ``@jalki_core.hookimpl``."""

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
"""Marker for the hook specifications below."""

if TYPE_CHECKING:
    from jalki_core.registry import (
        BoundCommandRegistry,
        BoundEmitterRegistry,
        BoundEnricherRegistry,
        BoundKbRegistry,
        BoundProbeRegistry,
    )


@hookspec
def jalki_register_probes(registry: BoundProbeRegistry) -> None:
    """Register the probes this plugin provides.

    Called once per process, when the plugin manager loads plugins.

    :param registry: call ``registry.register(probe)`` with one instance of a
        :class:`jalki_core.probe.Probe` subclass per probe. Registering a name
        that another plugin already registered raises
        :class:`jalki_core.errors.PluginError` naming both distributions.
    :return: nothing; results are ignored.
    """


@hookspec
def jalki_register_emitters(registry: BoundEmitterRegistry) -> None:
    """Register the event emitters (sinks) this plugin provides.

    Called once per process, when the plugin manager loads plugins. The core's
    ``stdout`` and ``file`` emitters are registered through this same hook by
    the default plugin :mod:`jalki_core.emitters.builtin`.

    :param registry: call ``registry.register(name, factory, description)``
        where ``factory(argument)`` builds a :class:`jalki_core.emitters.base.Emitter`
        from the text after ``name:`` in ``--emit name:argument`` (``None`` when
        absent) and raises :class:`jalki_core.errors.UsageError` on a bad argument.
    :return: nothing; results are ignored.
    """


@hookspec
def jalki_register_enrichers(registry: BoundEnricherRegistry) -> None:
    """Register the enrichers this plugin provides (chosen with ``--enrich NAME``).

    Called once per process, when the plugin manager loads plugins (in the
    same pass as probes and emitters, all or nothing with them). An enricher
    adds fields to events before the emitters, the daemon's store and the KB
    rules see them (:mod:`jalki_core.enrich`): ``jalki-k8s`` adds ``k8s``.

    :param registry: call ``registry.register(name, factory, description)``
        where ``factory(options)`` gets a :class:`jalki_core.enrich.EnricherOptions`
        (``node_name``) and returns a :class:`jalki_core.enrich.Enricher`
        (``start``, ``enrich(events)``, ``flush``, ``close``, ``ready``,
        ``status``); it raises :class:`jalki_core.errors.UsageError` for
        options it cannot work with. Keep the hook cheap: import heavy
        dependencies inside the factory. An enricher that raises in
        ``enrich`` costs that batch its enrichment (counted), never events.
    :return: nothing; results are ignored.
    """


@hookspec
def jalki_register_kb(registry: BoundKbRegistry) -> None:
    """Register the knowledge-base documents this plugin ships.

    Called once per process, when the plugin manager loads plugins (in the
    same pass as the other registration hooks); the knowledge base is built
    from what the loaded plugins registered (:func:`jalki_core.kb.default_kb`).

    :param registry: call ``registry.register_file("kb/http.json")`` with a KB
        JSON file named relative to the plugin's package (no ``kb/__init__.py``
        needed; an absolute path, a :class:`pathlib.Path` or an
        ``importlib.resources`` file also work), or
        ``registry.register_document(data, name)`` with a parsed document
        (``specs/kb.schema.json``). A malformed document, an unreadable file
        or an exception in this hook becomes a problem naming the plugin,
        file, entry and field; it never stops other documents or plugins, and
        the plugin's probes still load.
    :return: nothing; results are ignored.
    """


@hookspec
def jalki_register_commands(cli: BoundCommandRegistry) -> None:
    """Add subcommands to the ``jalki`` command line (the way ``jalki mcp`` is added).

    Called once per process in the same loading pass as the other
    registration hooks. The ``jalki`` CLI runs the pass only when the command
    line names no built-in command (``jalki``, ``jalki --help``, a plugin's
    command), so built-in commands start no slower for it. Keep this hook
    cheap: register the functions and import heavy dependencies inside them.

    :param cli: ``@cli.command("name", help=...)`` registers a function as
        ``jalki name`` exactly like ``typer.Typer.command`` (its typer
        options and arguments are read from its signature); or
        ``cli.add_typer(sub_app, name="name")`` adds a ``typer.Typer`` as a
        command group. A name used by a built-in command or by another
        plugin, a bad name, or an exception in this hook drops this plugin's
        commands (all of them) with one warning line naming the plugin; its
        probes, emitters and KB documents still load, and other plugins'
        commands are unaffected. A command raises
        :class:`jalki_core.errors.JalkiError` subclasses for bad input; the
        CLI turns them into one line and an exit code.
    :return: nothing; results are ignored.
    """
