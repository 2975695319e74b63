"""Plugin discovery and loading (pluggy, entry-point group ``jalki``).

:class:`JalkiPlugins` is the one owner of plugin loading and the typed facade
the rest of the core uses; nothing else calls a plugin's hooks. It loads each
plugin once and calls its registration hooks in one pass: probes, emitters,
enrichers (``jalki_register_enrichers``), KB documents (``jalki_register_kb``) and CLI commands
(``jalki_register_commands``); the knowledge base is then built from
:meth:`JalkiPlugins.kb_documents` (``default_kb(plugins=...)``) and the
``jalki`` CLI adds :attr:`JalkiPlugins.commands` to its app.
Each plugin is loaded and its hooks are called in isolation: a plugin that
fails to import, declares an unknown hook, raises in a hook or registers a
duplicate name is recorded as broken with one line that names its
distribution and version, and every other plugin still loads. A
``jalki_register_kb`` hook that raises does not break its plugin: it becomes
a located problem of the knowledge base, and a ``jalki_register_commands``
hook that raises or registers a taken name costs only that plugin's commands
(one line in :attr:`JalkiPlugins.command_problems`).

Operators choose what loads with two environment variables:
``JALKI_DISABLE_PLUGINS`` (comma-separated plugin names to skip) and
``JALKI_PLUGINS`` (an allow-list; when set, only those plugins load). The
core's default plugins always load.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import metadata
from types import ModuleType
from typing import Any

import pluggy

from jalki_core import hookspecs
from jalki_core.errors import JalkiError, UnknownPluginError
from jalki_core.registry import (
    CommandRegistry,
    EmitterRegistry,
    EnricherRegistry,
    KbDocument,
    KbRegistry,
    PluginIdentity,
    ProbeRegistry,
    RegisteredProbe,
)
from jalki_core.version import PROJECT_NAME, __version__

log = logging.getLogger("jalki.plugins")

ENTRY_POINT_GROUP = "jalki"
DEFAULT_PLUGINS: tuple[str, ...] = ("jalki_core.emitters.builtin",)
CORE_IDENTITY = PluginIdentity(plugin="core", distribution="jalki", version=__version__)


@dataclass(frozen=True)
class BrokenPlugin:
    """A plugin that could not be used, and why (one line)."""

    identity: PluginIdentity
    reason: str

    def one_line(self) -> str:
        """``plugin 'x' (dist 1.0) is broken: reason``."""
        return f"plugin {self.identity.plugin!r} ({self.identity}) is broken: {self.reason}"


@dataclass(frozen=True)
class CommandProblem:
    """A plugin whose ``jalki`` subcommands were not added, and why (its probes still load)."""

    identity: PluginIdentity
    reason: str

    def one_line(self) -> str:
        """``plugin 'x' (dist 1.0): its commands are not added: reason``."""
        return f"plugin {self.identity.plugin!r} ({self.identity}): its commands are not added: {self.reason}"


@dataclass
class PluginInfo:
    """What one loaded plugin provides, for ``jalki plugins``."""

    identity: PluginIdentity
    probes: list[str] = field(default_factory=list)
    emitters: list[str] = field(default_factory=list)
    enrichers: list[str] = field(default_factory=list)
    kb_documents: list[KbDocument] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PluginSource:
    """A plugin to load: its identity and how to import its module."""

    identity: PluginIdentity
    load: Callable[[], Any]


def _split_env(name: str) -> set[str]:
    return {part.strip() for part in os.environ.get(name, "").split(",") if part.strip()}


def discover_entry_points() -> list[PluginSource]:
    """Plugins installed in this environment, from the ``jalki`` entry-point group."""
    sources = []
    for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = entry_point.dist
        identity = PluginIdentity(
            plugin=entry_point.name,
            distribution=dist.metadata["Name"] if dist is not None else "unknown",
            version=dist.version if dist is not None else "unknown",
        )
        sources.append(PluginSource(identity, entry_point.load))
    return sorted(sources, key=lambda source: source.identity.plugin)


class JalkiPlugins:
    """Loads plugins and exposes what they registered.

    :param sources: plugins to load; default: the installed entry points.
    :param load_defaults: also load the core's default plugins (the built-in emitters).
    """

    def __init__(
        self,
        sources: Iterable[PluginSource] | None = None,
        *,
        load_defaults: bool = True,
    ) -> None:
        self.pm = pluggy.PluginManager(PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.probes = ProbeRegistry()
        self.emitters = EmitterRegistry()
        self.enrichers = EnricherRegistry()
        self.commands = CommandRegistry()
        self.broken: list[BrokenPlugin] = []
        self.command_problems: list[CommandProblem] = []
        self.loaded: dict[str, PluginInfo] = {}
        self.skipped: list[PluginIdentity] = []
        if load_defaults:
            for module_name in DEFAULT_PLUGINS:
                self._load_one(PluginSource(CORE_IDENTITY, functools.partial(importlib.import_module, module_name)))
        disabled = _split_env("JALKI_DISABLE_PLUGINS")
        allowed = _split_env("JALKI_PLUGINS")
        for source in discover_entry_points() if sources is None else sources:
            name = source.identity.plugin
            if name in disabled or (allowed and name not in allowed):
                self.skipped.append(source.identity)
                continue
            self._load_one(source)

    def _load_one(self, source: PluginSource) -> None:
        identity = source.identity
        try:
            module = source.load()
        except Exception as exc:  # any import-time failure of third-party code
            self._mark_broken(identity, f"import failed: {type(exc).__name__}: {exc}")
            return
        register_name = f"{identity.plugin}:{identity.distribution}"
        if identity.plugin in self.loaded and identity is not CORE_IDENTITY:
            other = self.loaded[identity.plugin].identity
            self._mark_broken(identity, f"plugin name {identity.plugin!r} is also used by {other}")
            return
        try:
            self.pm.register(module, name=register_name)
        except (pluggy.PluginValidationError, ValueError) as exc:
            self._mark_broken(identity, f"invalid hook implementation: {exc}")
            return
        unknown = _unknown_hooks(self.pm, module)
        if unknown:
            self.pm.unregister(module)
            self._mark_broken(
                identity,
                f"implements unknown hook(s) {', '.join(unknown)}; "
                "hooks are named in jalki_core.hookspecs",
            )
            return
        try:
            probes, emitters, enrichers = self._collect_registrations(module, identity)
            self._commit(identity, probes, emitters, _collect_kb(module, identity), enrichers)
        except JalkiError as exc:
            self.pm.unregister(module)
            self._mark_broken(identity, exc.one_line())
        except Exception as exc:  # a plugin's own bug must not stop the others
            self.pm.unregister(module)
            self._mark_broken(identity, f"registration hook raised {type(exc).__name__}: {exc}")
            return
        self._add_commands(module, identity)

    def _add_commands(self, module: ModuleType, identity: PluginIdentity) -> None:
        """Run the plugin's ``jalki_register_commands``: all its commands or none, never breaking its probes."""
        hook = getattr(module, COMMANDS_HOOK, None)
        if hook is None:
            return
        staged = CommandRegistry()
        try:
            hook(cli=staged.bound_to(identity))
            for command in staged:
                self.commands.ensure_unique(command.name, identity)
        except JalkiError as exc:
            self.drop_commands(identity, exc.one_line())
            return
        except Exception as exc:  # a plugin's own bug must not stop the others
            self.drop_commands(identity, f"{COMMANDS_HOOK} raised {type(exc).__name__}: {exc}")
            return
        for command in staged:
            self.commands.add(command)
        self.loaded[identity.plugin].commands.extend(command.name for command in staged)

    def drop_commands(self, identity: PluginIdentity, reason: str) -> None:
        """Remove every command of one plugin and record why in one line (its probes stay)."""
        self.commands = _without(self.commands, identity)
        info = self.loaded.get(identity.plugin)
        if info is not None:
            info.commands.clear()
        problem = CommandProblem(identity, reason)
        self.command_problems.append(problem)
        log.warning("%s", problem.one_line())

    @staticmethod
    def _collect_registrations(
        module: ModuleType, identity: PluginIdentity
    ) -> tuple[ProbeRegistry, EmitterRegistry, EnricherRegistry]:
        """Run the plugin's registration hooks into staging registries.

        Nothing a plugin registers becomes visible unless all of its hooks
        succeed, so a plugin that fails half-way is not half-loaded.
        """
        probes, emitters, enrichers = ProbeRegistry(), EmitterRegistry(), EnricherRegistry()
        register_probes = getattr(module, "jalki_register_probes", None)
        if register_probes is not None:
            register_probes(registry=probes.bound_to(identity))
        register_emitters = getattr(module, "jalki_register_emitters", None)
        if register_emitters is not None:
            register_emitters(registry=emitters.bound_to(identity))
        register_enrichers = getattr(module, "jalki_register_enrichers", None)
        if register_enrichers is not None:
            register_enrichers(registry=enrichers.bound_to(identity))
        return probes, emitters, enrichers

    def _commit(self, identity: PluginIdentity, probes: ProbeRegistry, emitters: EmitterRegistry,
                kb_documents: list[KbDocument], enrichers: EnricherRegistry | None = None) -> None:
        """Add a plugin's registrations, all or none (duplicates name both distributions)."""
        enrichers = enrichers or EnricherRegistry()
        for entry in probes:
            self.probes.ensure_unique(entry.probe.name, identity)
        for emitter in emitters:
            self.emitters.ensure_unique(emitter.name, identity)
        for enricher in enrichers:
            self.enrichers.ensure_unique(enricher.name, identity)
        for entry in probes:
            self.probes.add(entry.probe, identity)
        for emitter in emitters:
            self.emitters.add(emitter.name, emitter.factory, emitter.description, identity)
        for enricher in enrichers:
            self.enrichers.add(enricher.name, enricher.factory, enricher.description, identity)
        info = self.loaded.setdefault(identity.plugin, PluginInfo(identity))
        info.probes.extend(entry.probe.name for entry in probes)
        info.emitters.extend(emitter.name for emitter in emitters)
        info.enrichers.extend(enricher.name for enricher in enrichers)
        info.kb_documents.extend(kb_documents)

    def _mark_broken(self, identity: PluginIdentity, reason: str) -> None:
        broken = BrokenPlugin(identity, reason)
        self.broken.append(broken)
        log.warning("%s", broken.one_line())

    def kb_documents(self) -> list[KbDocument]:
        """The KB documents the loaded plugins registered, by plugin name, each plugin's in its order.

        A broken plugin contributes none; a ``jalki_register_kb`` hook that
        raised contributes one document carrying the error.
        """
        return [document for _, info in sorted(self.loaded.items()) for document in info.kb_documents]

    def plugin_names(self) -> list[str]:
        """Names of the loaded plugins that provide probes."""
        return sorted(name for name, info in self.loaded.items() if info.probes)

    def probes_for(self, plugin_names: Iterable[str]) -> list[RegisteredProbe]:
        """The probes of the named plugins, or :class:`UnknownPluginError` listing what exists.

        A name may be a plugin name (all its probes) or a single probe name.
        """
        selected: list[RegisteredProbe] = []
        for name in plugin_names:
            by_plugin = self.probes.by_plugin(name)
            single = self.probes.get(name)
            if by_plugin:
                selected.extend(by_plugin)
            elif single is not None:
                selected.append(single)
            else:
                installed = ", ".join(self.plugin_names()) or "none"
                broken = [b.identity.plugin for b in self.broken if b.identity.plugin == name]
                if broken:
                    reason = next(b.reason for b in self.broken if b.identity.plugin == name)
                    raise UnknownPluginError(
                        f"plugin {name!r} is installed but broken: {reason}",
                        hint="reinstall it or run 'jalki plugins' for details",
                    )
                raise UnknownPluginError(
                    f"unknown plugin {name!r}; installed plugins: {installed}",
                    hint=f"install it (pip install jalki-{name}) or pick one of the installed",
                )
        unique: dict[str, RegisteredProbe] = {entry.probe.name: entry for entry in selected}
        return list(unique.values())

    def describe(self) -> list[dict[str, Any]]:
        """A JSON-friendly list of distributions, versions, probes and emitters."""
        rows: list[dict[str, Any]] = []
        for info in sorted(self.loaded.values(), key=lambda i: (i.identity is not CORE_IDENTITY, i.identity.plugin)):
            rows.append(
                {
                    "plugin": info.identity.plugin,
                    "distribution": info.identity.distribution,
                    "version": info.identity.version,
                    "status": "ok",
                    "probes": [self.probes.get(name).probe.describe() for name in info.probes  # type: ignore[union-attr]
                               ],
                    "emitters": list(info.emitters),
                    "enrichers": list(info.enrichers),
                    "commands": list(info.commands),
                }
            )
        for broken in self.broken:
            rows.append(
                {
                    "plugin": broken.identity.plugin,
                    "distribution": broken.identity.distribution,
                    "version": broken.identity.version,
                    "status": "broken",
                    "error": broken.reason,
                    "probes": [],
                    "emitters": [],
                    "enrichers": [],
                    "commands": [],
                }
            )
        return rows


KB_HOOK = "jalki_register_kb"
COMMANDS_HOOK = "jalki_register_commands"


def _without(commands: CommandRegistry, identity: PluginIdentity) -> CommandRegistry:
    kept = CommandRegistry()
    for command in commands:
        if command.owner != identity:
            kept.add(command)
    return kept


def _collect_kb(module: object, identity: PluginIdentity) -> list[KbDocument]:
    """Run a plugin's ``jalki_register_kb``; an exception becomes a document with the error, never a broken plugin."""
    hook = getattr(module, KB_HOOK, None)
    if hook is None:
        return []
    origin = f"plugin {identity.plugin} ({identity})"
    registry = KbRegistry()
    try:
        hook(registry=registry.bound_to(origin, _package_of(module)))
    except Exception as exc:  # a plugin's own bug must not stop the others
        return [KbDocument(origin, error=f"{KB_HOOK} raised {type(exc).__name__}: {exc}")]
    return registry.documents


def _package_of(module: object) -> str | None:
    """The package a plugin module's relative data files resolve against (``None``: none known).

    A module in a package resolves against that package, a top-level module
    against the folder holding it; a module object made in memory has neither.
    """
    package = getattr(module, "__package__", None)
    if isinstance(package, str) and package:
        return package
    name = getattr(module, "__name__", None)
    return name if isinstance(name, str) and getattr(module, "__spec__", None) is not None else None


def _unknown_hooks(pm: pluggy.PluginManager, module: object) -> list[str]:
    """Hook implementations on ``module`` whose name has no spec."""
    unknown = []
    marker = f"{PROJECT_NAME}_impl"
    for name in dir(module):
        if not name.startswith(f"{PROJECT_NAME}_") or not hasattr(getattr(module, name), marker):
            continue
        caller = getattr(pm.hook, name, None)
        if caller is None or caller.spec is None:
            unknown.append(name)
    return unknown
