"""The perf events of the cpu_ipc probe, opened through the core's checked binding.

Only what the probe needs: a counting (not sampling) event of one type and
config on one CPU for every task, enabled at once
(:func:`jalki_core._libbpf.perf.perf_event_open`). The events go into the
probe's ``PERF_EVENT_ARRAY`` maps, which keep their own reference: the caller
closes them right after. A refusal is one line: which call, which errno, what
it means here (:func:`explain_failure`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from jalki_core._libbpf import perf as kperf
from jalki_core.errors import PerfEventOpenError, errno_name

PERF_TYPE_HARDWARE = kperf.PERF_TYPE_HARDWARE
PERF_TYPE_SOFTWARE = kperf.PERF_TYPE_SOFTWARE
PERF_COUNT_HW_CPU_CYCLES = kperf.PERF_COUNT_HW_CPU_CYCLES
PERF_COUNT_HW_INSTRUCTIONS = kperf.PERF_COUNT_HW_INSTRUCTIONS
PERF_COUNT_HW_STALLED_CYCLES_FRONTEND = kperf.PERF_COUNT_HW_STALLED_CYCLES_FRONTEND
PERF_COUNT_HW_STALLED_CYCLES_BACKEND = kperf.PERF_COUNT_HW_STALLED_CYCLES_BACKEND
PERF_COUNT_SW_CPU_CLOCK = kperf.PERF_COUNT_SW_CPU_CLOCK
PERF_COUNT_SW_TASK_CLOCK = kperf.PERF_COUNT_SW_TASK_CLOCK

ONLINE_CPUS_PATH = "/sys/devices/system/cpu/online"


@dataclass(frozen=True)
class CounterSpec:
    """One perf event: its type and its config (names from :mod:`jalki_core._libbpf.perf`).

    :param type: ``PERF_TYPE_HARDWARE`` or ``PERF_TYPE_SOFTWARE``.
    :param config: the event within the type (``PERF_COUNT_HW_CPU_CYCLES``…).
    """

    type: int
    config: int

    @property
    def config_name(self) -> str:
        """The config's name without its prefix (``CPU_CYCLES``)."""
        return kperf.config_name(self.type, self.config)

    @property
    def label(self) -> str:
        """``perf_event_open(PERF_TYPE_HARDWARE, CPU_CYCLES)``."""
        return kperf.event_label(self.type, self.config)


CPU_CYCLES = CounterSpec(PERF_TYPE_HARDWARE, PERF_COUNT_HW_CPU_CYCLES)
INSTRUCTIONS = CounterSpec(PERF_TYPE_HARDWARE, PERF_COUNT_HW_INSTRUCTIONS)
STALLED_CYCLES_FRONTEND = CounterSpec(PERF_TYPE_HARDWARE, PERF_COUNT_HW_STALLED_CYCLES_FRONTEND)
STALLED_CYCLES_BACKEND = CounterSpec(PERF_TYPE_HARDWARE, PERF_COUNT_HW_STALLED_CYCLES_BACKEND)
SW_CPU_CLOCK = CounterSpec(PERF_TYPE_SOFTWARE, PERF_COUNT_SW_CPU_CLOCK)
SW_TASK_CLOCK = CounterSpec(PERF_TYPE_SOFTWARE, PERF_COUNT_SW_TASK_CLOCK)


def explain_failure(spec: CounterSpec, err: int, cpu: int = 0) -> str:
    """One line: which call failed, with which errno, and what that means on this machine."""
    return f"{spec.label} failed with {errno_name(err)}: {kperf.explain(spec.type, spec.config, err, cpu)}"


def reason(exc: PerfEventOpenError) -> str:
    """The one line of :func:`explain_failure` for a refusal."""
    return f"{exc.operation} failed with {exc.errno_name}: {exc.hint}"


def open_counter(spec: CounterSpec, cpu: int) -> kperf.PerfEvent:
    """Open ``spec`` as a counting event on ``cpu`` for every task.

    :raises PerfEventOpenError: the kernel refused (:func:`reason` says why in one line).
    """
    return kperf.perf_event_open(spec.type, spec.config, cpu=cpu)


def probe_counters(specs: tuple[CounterSpec, ...], cpu: int) -> str | None:
    """Open and close each of ``specs`` on ``cpu``; the first failure's reason, or None when all open."""
    for spec in specs:
        try:
            open_counter(spec, cpu).close()
        except PerfEventOpenError as exc:
            return reason(exc)
    return None


def online_cpus(path: str = ONLINE_CPUS_PATH) -> list[int]:
    """The online CPUs (``0-3,6`` → ``[0, 1, 2, 3, 6]``); ``[0]`` when the file is unreadable."""
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return [0]
    cpus: list[int] = []
    for part in filter(None, text.split(",")):
        low, _, high = part.partition("-")
        cpus.extend(range(int(low), int(high or low) + 1))
    return cpus or [0]
