"""The ``memory`` plugin module named by the ``jalki`` entry point."""

from __future__ import annotations

from typing import TYPE_CHECKING

from jalki_core import hookimpl
from jalki_memory.probes import OomKillProbe

if TYPE_CHECKING:
    from jalki_core import BoundKbRegistry, BoundProbeRegistry


@hookimpl
def jalki_register_probes(registry: BoundProbeRegistry) -> None:
    """Register oom_kill."""
    registry.register(OomKillProbe())


@hookimpl
def jalki_register_kb(registry: BoundKbRegistry) -> None:
    """Register the knowledge-base entries this plugin implements (``kb/memory.json``)."""
    registry.register_file("kb/memory.json")
