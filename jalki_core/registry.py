"""Registries that plugins fill through the registration hooks.

Each plugin gets a view of a registry bound to its own identity, so a
duplicate name is reported with both distributions named. The five
registries (probes, emitters, enrichers, KB documents, CLI commands) live here, below
:mod:`jalki_core.plugins` (which fills them) and :mod:`jalki_core.hookspecs`
(which names them), and import neither.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jalki_core.errors import PluginError, ProbeError
from jalki_core.package_data import check_relative, package_file
from jalki_core.probe import Probe, ProbeResource, check_probe_contract

if TYPE_CHECKING:
    from jalki_core.emitters.base import Emitter
    from jalki_core.enrich import EnricherFactory

EmitterFactory = Callable[[str | None], "Emitter"]


@dataclass(frozen=True)
class PluginIdentity:
    """Who registered something: the plugin (entry-point) name and its distribution."""

    plugin: str
    distribution: str
    version: str

    def __str__(self) -> str:
        return f"{self.distribution} {self.version}"


@dataclass(frozen=True)
class RegisteredProbe:
    """A probe together with the plugin that provides it."""

    probe: Probe
    owner: PluginIdentity


@dataclass(frozen=True)
class RegisteredEmitter:
    """An emitter factory together with the plugin that provides it."""

    name: str
    factory: EmitterFactory
    description: str
    owner: PluginIdentity


class ProbeRegistry:
    """All probes known to this process, by name."""

    def __init__(self) -> None:
        self._probes: dict[str, RegisteredProbe] = {}

    def bound_to(self, owner: PluginIdentity) -> BoundProbeRegistry:
        """The view of this registry handed to one plugin's hook."""
        return BoundProbeRegistry(self, owner)

    def add(self, probe: Probe, owner: PluginIdentity) -> None:
        """Add a probe; a duplicate name raises :class:`PluginError` naming both owners."""
        try:
            check_probe_contract(probe)
            ProbeResource.of(probe, "bpf_object")  # a bad path is refused at registration, not at attach
            if probe.event_schema is not None:
                ProbeResource.of(probe, "event_schema")
        except ProbeError as exc:
            raise PluginError(f"{owner}: {exc.message}") from exc
        self.ensure_unique(probe.name, owner)
        self._probes[probe.name] = RegisteredProbe(probe, owner)

    def ensure_unique(self, name: str, owner: PluginIdentity) -> None:
        """Raise :class:`PluginError` naming both distributions if ``name`` is taken."""
        existing = self._probes.get(name)
        if existing is not None:
            raise PluginError(
                f"probe {name!r} from {owner} duplicates the one from {existing.owner}",
                hint="uninstall one of the two distributions or disable one with JALKI_DISABLE_PLUGINS",
            )

    def get(self, name: str) -> RegisteredProbe | None:
        """The probe registered under ``name``, if any."""
        return self._probes.get(name)

    def by_plugin(self, plugin: str) -> list[RegisteredProbe]:
        """Probes registered by the plugin (entry-point name) ``plugin``."""
        return [entry for entry in self._probes.values() if entry.owner.plugin == plugin]

    def __iter__(self) -> Iterator[RegisteredProbe]:
        return iter(self._probes.values())

    def __len__(self) -> int:
        return len(self._probes)


class BoundProbeRegistry:
    """The registry as one plugin sees it: ``register(probe)``."""

    def __init__(self, registry: ProbeRegistry, owner: PluginIdentity) -> None:
        self._registry = registry
        self.owner = owner

    def register(self, probe: Probe) -> None:
        """Register one probe instance."""
        self._registry.add(probe, self.owner)


class EmitterRegistry:
    """All emitters known to this process, by name."""

    def __init__(self) -> None:
        self._emitters: dict[str, RegisteredEmitter] = {}

    def bound_to(self, owner: PluginIdentity) -> BoundEmitterRegistry:
        """The view of this registry handed to one plugin's hook."""
        return BoundEmitterRegistry(self, owner)

    def add(self, name: str, factory: EmitterFactory, description: str, owner: PluginIdentity) -> None:
        """Add an emitter; a duplicate name raises :class:`PluginError` naming both owners."""
        self.ensure_unique(name, owner)
        self._emitters[name] = RegisteredEmitter(name, factory, description, owner)

    def ensure_unique(self, name: str, owner: PluginIdentity) -> None:
        """Raise :class:`PluginError` naming both distributions if ``name`` is taken."""
        existing = self._emitters.get(name)
        if existing is not None:
            raise PluginError(
                f"emitter {name!r} from {owner} duplicates the one from {existing.owner}",
                hint="uninstall one of the two distributions or disable one with JALKI_DISABLE_PLUGINS",
            )

    def get(self, name: str) -> RegisteredEmitter | None:
        """The emitter registered under ``name``, if any."""
        return self._emitters.get(name)

    def __iter__(self) -> Iterator[RegisteredEmitter]:
        return iter(self._emitters.values())


class BoundEmitterRegistry:
    """The emitter registry as one plugin sees it: ``register(name, factory, description)``."""

    def __init__(self, registry: EmitterRegistry, owner: PluginIdentity) -> None:
        self._registry = registry
        self.owner = owner

    def register(self, name: str, factory: EmitterFactory, description: str = "") -> None:
        """Register an emitter factory under ``name``."""
        self._registry.add(name, factory, description, self.owner)


@dataclass(frozen=True)
class RegisteredEnricher:
    """An enricher factory together with the plugin that provides it (``--enrich NAME``)."""

    name: str
    factory: EnricherFactory
    description: str
    owner: PluginIdentity


class EnricherRegistry:
    """All enrichers known to this process, by name."""

    def __init__(self) -> None:
        self._enrichers: dict[str, RegisteredEnricher] = {}

    def bound_to(self, owner: PluginIdentity) -> BoundEnricherRegistry:
        """The view of this registry handed to one plugin's hook."""
        return BoundEnricherRegistry(self, owner)

    def add(self, name: str, factory: EnricherFactory, description: str, owner: PluginIdentity) -> None:
        """Add an enricher; a bad or duplicate name raises :class:`PluginError` naming the owners."""
        if not name or not set(name) <= COMMAND_NAME_CHARS or name.startswith("-"):
            raise PluginError(f"enricher name {name!r} from {owner} is not a name",
                              hint="use lower-case letters, digits and '-'")
        self.ensure_unique(name, owner)
        self._enrichers[name] = RegisteredEnricher(name, factory, description, owner)

    def ensure_unique(self, name: str, owner: PluginIdentity) -> None:
        """Raise :class:`PluginError` naming both distributions if ``name`` is taken."""
        existing = self._enrichers.get(name)
        if existing is not None:
            raise PluginError(
                f"enricher {name!r} from {owner} duplicates the one from {existing.owner}",
                hint="uninstall one of the two distributions or disable one with JALKI_DISABLE_PLUGINS",
            )

    def get(self, name: str) -> RegisteredEnricher | None:
        """The enricher registered under ``name``, if any."""
        return self._enrichers.get(name)

    def __iter__(self) -> Iterator[RegisteredEnricher]:
        return iter(self._enrichers.values())


class BoundEnricherRegistry:
    """The enricher registry as one plugin sees it: ``register(name, factory, description)``."""

    def __init__(self, registry: EnricherRegistry, owner: PluginIdentity) -> None:
        self._registry = registry
        self.owner = owner

    def register(self, name: str, factory: EnricherFactory, description: str = "") -> None:
        """Register an enricher factory under ``name``: ``factory(EnricherOptions)`` builds the enricher."""
        self._registry.add(name, factory, description, self.owner)


@dataclass(frozen=True)
class KbDocument:
    """One KB document handed to the loader by a plugin (or a test).

    Exactly one of ``data`` (parsed JSON), ``text`` (JSON text) or ``error``
    (why the document could not even be read) is meaningful.
    """

    origin: str
    data: Any = None
    text: str | None = None
    error: str | None = None


class KbRegistry:
    """Collects KB documents, in registration order (:mod:`jalki_core.kb` parses them)."""

    def __init__(self) -> None:
        self.documents: list[KbDocument] = []

    def bound_to(self, origin: str, package: str | None = None) -> BoundKbRegistry:
        """The view handed to one plugin's hook.

        :param origin: names the plugin in problems (``plugin tcp (jalki-tcp 0.1.0)``).
        :param package: the plugin module's package, against which relative file names resolve.
        """
        return BoundKbRegistry(self, origin, package)


class BoundKbRegistry:
    """What a plugin's ``jalki_register_kb`` hook receives."""

    def __init__(self, registry: KbRegistry, origin: str, package: str | None = None) -> None:
        self._registry = registry
        self.origin = origin
        self.package = package

    def register_file(self, path: str | os.PathLike[str] | Traversable) -> None:
        """Register a KB JSON file; a problem reading it becomes a located problem of the KB, never an exception.

        :param path: a string relative to the plugin's package
            (``"kb/memory.json"``; no ``kb/__init__.py`` needed), an absolute
            path or :class:`os.PathLike`, or an ``importlib.resources`` file.
        """
        if isinstance(path, str) and not Path(path).is_absolute():
            self._register_relative(path)
            return
        source: Traversable = Path(path) if isinstance(path, str | os.PathLike) else path
        self._add_text(f"{self.origin}: {source.name}", source)

    def _register_relative(self, name: str) -> None:
        origin = f"{self.origin}: {name}"  # as written: it locates the file in the package
        problem = check_relative(name)
        if problem is None and self.package is None:
            problem = f"{name!r} is relative, but the plugin module has no package to resolve it against"
        if problem is not None:
            self._registry.documents.append(KbDocument(origin, error=problem))
            return
        assert self.package is not None
        try:
            source = package_file(self.package, name)
        except ModuleNotFoundError as exc:
            self._registry.documents.append(KbDocument(origin, error=f"cannot read: {exc}"))
            return
        self._add_text(origin, source)

    def _add_text(self, origin: str, source: Traversable) -> None:
        try:
            text = source.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            self._registry.documents.append(KbDocument(origin, error=f"cannot read: {exc}"))
            return
        self._registry.documents.append(KbDocument(origin, text=text))

    def register_document(self, data: Mapping[str, Any], name: str = "document") -> None:
        """Register an already-parsed KB document (a layer or vocabulary object)."""
        self._registry.documents.append(KbDocument(f"{self.origin}: {name}", data=data))


@dataclass(frozen=True)
class RegisteredCommand:
    """A ``jalki`` subcommand a plugin adds: a typer command function or a typer sub-app.

    :param callback: the command function (``typer.Typer.command`` semantics) or ``None`` for a sub-app.
    :param app: a ``typer.Typer`` added as a command group, or ``None`` for a plain command.
    :param options: keyword arguments for ``Typer.command``/``Typer.add_typer`` (``help``, ``hidden`` ...).
    """

    name: str
    owner: PluginIdentity
    callback: Callable[..., Any] | None = None
    app: Any = None
    options: Mapping[str, Any] | None = None


COMMAND_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")


class CommandRegistry:
    """The subcommands plugins add to ``jalki``, by name (checked against each other, not yet the built-ins)."""

    def __init__(self) -> None:
        self._commands: dict[str, RegisteredCommand] = {}

    def bound_to(self, owner: PluginIdentity) -> BoundCommandRegistry:
        """The view of this registry handed to one plugin's ``jalki_register_commands``."""
        return BoundCommandRegistry(self, owner)

    def add(self, command: RegisteredCommand) -> None:
        """Add a command; a bad or duplicate name raises :class:`PluginError` naming the owners."""
        name = command.name
        if not name or not set(name) <= COMMAND_NAME_CHARS or name.startswith("-"):
            raise PluginError(
                f"command name {name!r} from {command.owner} is not a command name",
                hint="use lower-case letters, digits and '-'",
            )
        self.ensure_unique(name, command.owner)
        self._commands[name] = command

    def ensure_unique(self, name: str, owner: PluginIdentity) -> None:
        """Raise :class:`PluginError` naming both distributions if ``name`` is taken."""
        existing = self._commands.get(name)
        if existing is not None:
            raise PluginError(
                f"command {name!r} from {owner} duplicates the one from {existing.owner}",
                hint="uninstall one of the two distributions or disable one with JALKI_DISABLE_PLUGINS",
            )

    def get(self, name: str) -> RegisteredCommand | None:
        """The command registered under ``name``, if any."""
        return self._commands.get(name)

    def __iter__(self) -> Iterator[RegisteredCommand]:
        return iter(self._commands.values())

    def __len__(self) -> int:
        return len(self._commands)


class BoundCommandRegistry:
    """The ``cli`` a plugin's ``jalki_register_commands(cli)`` receives.

    ``cli.command("name", help=...)`` is a decorator like ``typer.Typer.command``;
    ``cli.add_typer(sub_app, name="name")`` adds a command group. Nothing is
    imported or run here: the ``jalki`` CLI adds the commands to its app.
    """

    def __init__(self, registry: CommandRegistry, owner: PluginIdentity) -> None:
        self._registry = registry
        self.owner = owner

    def command(self, name: str, **options: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Register the decorated function as ``jalki NAME`` (typer options and arguments in its signature)."""

        def decorator(function: Callable[..., Any]) -> Callable[..., Any]:
            self._registry.add(RegisteredCommand(name, self.owner, callback=function, options=options))
            return function

        return decorator

    def add_typer(self, app: Any, *, name: str, **options: Any) -> None:
        """Register a ``typer.Typer`` as the command group ``jalki NAME``."""
        self._registry.add(RegisteredCommand(name, self.owner, app=app, options=options))
