"""Registries that plugins fill through the registration hooks.

Each plugin gets a view of a registry bound to its own identity, so a
duplicate name is reported with both distributions named.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from jalki_core.errors import PluginError, ProbeError
from jalki_core.probe import Probe, check_probe_contract

if TYPE_CHECKING:
    from jalki_core.emitters.base import Emitter

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
