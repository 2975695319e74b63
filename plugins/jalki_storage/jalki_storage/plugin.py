"""The ``storage`` plugin module named by the ``jalki`` entry point."""

from __future__ import annotations

from typing import TYPE_CHECKING

from jalki_core import hookimpl
from jalki_storage.probes import BlockIoProbe

if TYPE_CHECKING:
    from jalki_core import BoundKbRegistry, BoundProbeRegistry


@hookimpl
def jalki_register_probes(registry: BoundProbeRegistry) -> None:
    """Register block_io (thresholds from ``JALKI_STORAGE_WARNING_MS`` / ``JALKI_STORAGE_CRITICAL_MS``)."""
    registry.register(BlockIoProbe())


@hookimpl
def jalki_register_kb(registry: BoundKbRegistry) -> None:
    """Register the storage layer of the knowledge base (``kb/storage.json``)."""
    registry.register_file("kb/storage.json")
