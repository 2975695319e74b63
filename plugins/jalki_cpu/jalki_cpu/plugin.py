"""The ``cpu`` plugin module named by the ``jalki`` entry point."""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING

from jalki_core import hookimpl
from jalki_cpu.probes import CpuIpcProbe

if TYPE_CHECKING:
    from jalki_core.kb.contrib import BoundKbRegistry
    from jalki_core.registry import BoundProbeRegistry


@hookimpl
def jalki_register_probes(registry: BoundProbeRegistry) -> None:
    """Register cpu_ipc (interval from ``JALKI_CPU_INTERVAL_MS``, degradation fraction from
    ``JALKI_CPU_DEGRADATION_FRACTION``); it reports itself unavailable where the machine has no PMU."""
    registry.register(CpuIpcProbe())


@hookimpl
def jalki_register_kb(registry: BoundKbRegistry) -> None:
    """Register the cpu layer of the knowledge base (``kb/cpu.json``)."""
    registry.register_file(resources.files("jalki_cpu") / "kb" / "cpu.json")
