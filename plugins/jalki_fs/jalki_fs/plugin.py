"""The ``fs`` plugin module named by the ``jalki`` entry point."""

from __future__ import annotations

from typing import TYPE_CHECKING

from jalki_core import hookimpl
from jalki_fs.probes import OpenFailedProbe

if TYPE_CHECKING:
    from jalki_core import BoundKbRegistry, BoundProbeRegistry


@hookimpl
def jalki_register_probes(registry: BoundProbeRegistry) -> None:
    """Register open_failed (path prefix from ``JALKI_FS_PATH_PREFIX``)."""
    registry.register(OpenFailedProbe())


@hookimpl
def jalki_register_kb(registry: BoundKbRegistry) -> None:
    """Register the fs entries of the knowledge base this plugin implements (``kb/fs_open.json``)."""
    registry.register_file("kb/fs_open.json")
