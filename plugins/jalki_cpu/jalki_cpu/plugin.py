"""The ``cpu`` plugin module named by the ``jalki`` entry point."""

from __future__ import annotations

from typing import TYPE_CHECKING

from jalki_core import hookimpl
from jalki_cpu.probes import CpuIpcProbe

if TYPE_CHECKING:
    from jalki_core import BoundKbRegistry, BoundProbeRegistry


@hookimpl
def jalki_register_probes(registry: BoundProbeRegistry) -> None:
    """Register cpu_ipc (interval from ``JALKI_CPU_INTERVAL_MS``, degradation fraction from
    ``JALKI_CPU_DEGRADATION_FRACTION``); it reports itself unavailable where the machine has no PMU."""
    registry.register(CpuIpcProbe())


@hookimpl
def jalki_register_kb(registry: BoundKbRegistry) -> None:
    """Register the cpu layer of the knowledge base (``kb/cpu.json``)."""
    registry.register_file("kb/cpu.json")
