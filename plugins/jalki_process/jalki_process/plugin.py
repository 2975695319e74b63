"""The ``process`` plugin module named by the ``jalki`` entry point."""

from __future__ import annotations

from typing import TYPE_CHECKING

from jalki_core import hookimpl
from jalki_process.probes import ProcessExecProbe, ProcessExitProbe

if TYPE_CHECKING:
    from jalki_core import BoundKbRegistry, BoundProbeRegistry


@hookimpl
def jalki_register_probes(registry: BoundProbeRegistry) -> None:
    """Register process_exec and process_exit."""
    registry.register(ProcessExecProbe())
    registry.register(ProcessExitProbe())


@hookimpl
def jalki_register_kb(registry: BoundKbRegistry) -> None:
    """Register the knowledge-base entries this plugin implements (``kb/process.json``)."""
    registry.register_file("kb/process.json")
