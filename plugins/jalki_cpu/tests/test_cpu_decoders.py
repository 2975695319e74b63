"""jalki-cpu: cpu_ipc decoder, pending intervals, IPC degradation windows, perf availability (no root)."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from jalki_cpu import layouts, perf
from jalki_cpu.derived import DegradationSettings, IpcDegradationDetector
from jalki_cpu.probes import CpuIpcProbe

from jalki_core._libbpf import perf as kperf
from jalki_core.errors import PerfEventOpenError, ProbeError, ProbeUnavailableError
from jalki_core.events import Event
from jalki_core.kb import default_kb
from jalki_core.kb.conditions import get_path
from jalki_core.plugins import JalkiPlugins
from jalki_core.testing import FakeMap, FakeRingBuffer, decode_all, make_event_context

REPO = Path(__file__).resolve().parents[3]
OWNER = {"pid": 4242, "flags": 1, "comm": b"postgres", "cgroup_id": 77}
SECOND = 1_000_000_000
ENOENT_LINE = ("perf_event_open(PERF_TYPE_HARDWARE, CPU_CYCLES) failed with ENOENT: this machine exposes no "
               "hardware performance counters (a VM without a virtual PMU)")


def record(ts_ns: int, *, cycles: int = 2_000_000_000, instructions: int = 3_000_000_000, run_ns: int = 900_000_000,
           counted: tuple[int, int, int, int] | None = None, stalls: tuple[int, int] = (0, 0),
           reason: int = 0, window_ns: int = SECOND, **owner: Any) -> dict[str, Any]:
    """Field values of one cpu_ipc_event record (every counter measured for all of run_ns by default)."""
    counted = counted if counted is not None else (run_ns, run_ns, 0, 0)
    return {**(owner or OWNER), "ts_ns": ts_ns, "window_start_ns": ts_ns - window_ns, "run_ns": run_ns,
            "cycles": cycles, "instructions": instructions, "stalled_frontend": stalls[0],
            "stalled_backend": stalls[1], "cycles_ns": counted[0], "instructions_ns": counted[1],
            "stalled_frontend_ns": counted[2], "stalled_backend_ns": counted[3],
            "switches": 40, "scaled": 0, "reason": reason}


def decode(probe: CpuIpcProbe, *records: dict[str, Any], attach: str = "tp_btf") -> list[Event]:
    ring = FakeRingBuffer(probe.layout)
    for values in records:
        ring.push_values(**values)
    return decode_all(probe, ring, make_event_context("cpu_ipc", attach))


# -- decoding ----------------------------------------------------------------


def test_interval_record_gives_ipc_and_stall_ratios(jalki_validate_event: Callable[[Event], None]) -> None:
    probe = CpuIpcProbe()
    run = 800_000_000
    [event] = decode(probe, record(5 * SECOND + 123, cycles=2_400_000_000, instructions=1_200_000_000, run_ns=run,
                                   stalls=(360_000_000, 1_320_000_000), counted=(run, run, run, run)))
    jalki_validate_event(event)
    assert (event["type"], event["severity"], event["source"], event["attach"]) == (
        "kernel.cpu.ipc", "info", "jalki/cpu_ipc", "tp_btf")
    assert event["timestamp"] == "2023-11-14T22:13:25.000000123Z"
    assert event["process_data"] == {"pid": 4242, "command": "postgres", "cgroup_id": 77}
    assert event["data"] == {
        "interval_ns": SECOND, "run_ns": run, "cycles": 2_400_000_000, "instructions": 1_200_000_000,
        "stalled_cycles_frontend": 360_000_000, "stalled_cycles_backend": 1_320_000_000, "ipc": 0.5,
        "stalled_frontend_ratio": 0.15, "stalled_backend_ratio": 0.55, "counted_ratio": 1.0,
        "multiplexed_switches": 0, "switches": 40, "counter_type": "hardware", "reason": "interval"}


def test_counters_the_cpu_lacks_are_null_never_zero(jalki_validate_event: Callable[[Event], None]) -> None:
    probe = CpuIpcProbe()
    [no_stalls, no_cycles] = decode(
        probe,
        record(SECOND, stalls=(0, 0), counted=(900_000_000, 900_000_000, 0, 0)),
        record(2 * SECOND, cycles=0, counted=(0, 900_000_000, 0, 0)))
    for event in (no_stalls, no_cycles):
        jalki_validate_event(event)
    assert no_stalls["data"]["stalled_cycles_frontend"] is None and no_stalls["data"]["stalled_backend_ratio"] is None
    assert no_stalls["data"]["ipc"] == 1.5
    assert no_cycles["data"]["cycles"] is None and no_cycles["data"]["ipc"] is None
    assert no_cycles["data"]["counted_ratio"] == 0.0


def test_multiplexed_counts_and_exit_reason(jalki_validate_event: Callable[[Event], None]) -> None:
    probe = CpuIpcProbe()
    values = record(SECOND, run_ns=1_000_000_000, counted=(400_000_000, 450_000_000, 0, 0), reason=1)
    values["scaled"] = 12
    [event] = decode(probe, values, attach="tracepoint")
    jalki_validate_event(event)
    assert event["data"]["counted_ratio"] == 0.4 and event["data"]["multiplexed_switches"] == 12
    assert event["data"]["reason"] == "exit" and event["attach"] == "tracepoint"


def test_unknown_owner_has_null_command() -> None:
    [event] = decode(CpuIpcProbe(), record(SECOND, pid=9, flags=0, comm=b"", cgroup_id=0))
    assert event["process_data"] == {"pid": 9, "command": None, "cgroup_id": 0}


def acc_value(*, start: int, last: int, run_ns: int, cycles: int, instructions: int, comm: bytes = b"worker") -> bytes:
    return layouts.PROCESS_VALUE.pack(start, last, run_ns, cycles, instructions, 0, 0, run_ns, run_ns, 0, 0,
                                      7, 0, 55, comm)


def test_intervals_still_open_at_the_end_are_final_events(jalki_validate_event: Callable[[Event], None]) -> None:
    probe = CpuIpcProbe(min_run_ns=1_000_000)
    maps = {"cpu_ipc_procs": FakeMap({
        layouts.PROCESS_KEY.pack(300): acc_value(start=SECOND, last=SECOND + 600_000_000, run_ns=500_000_000,
                                                 cycles=1_000_000_000, instructions=2_500_000_000),
        layouts.PROCESS_KEY.pack(200): acc_value(start=SECOND, last=SECOND + 200_000_000, run_ns=90_000_000,
                                                 cycles=100_000_000, instructions=80_000_000, comm=b"cron"),
        layouts.PROCESS_KEY.pack(100): acc_value(start=SECOND, last=SECOND + 1_000, run_ns=999,  # under min_run_ns
                                                 cycles=1_000, instructions=1_000),
    })}
    events = probe.final_events(maps, make_event_context("cpu_ipc", "tp_btf"))
    for event in events:
        jalki_validate_event(event)
    owners = [(e["process_data"]["pid"], e["process_data"]["command"]) for e in events]
    assert owners == [(200, "cron"), (300, "worker")]
    worker = events[1]
    assert worker["data"]["reason"] == "session_end" and worker["data"]["ipc"] == 2.5
    assert worker["data"]["interval_ns"] == 600_000_000 and worker["data"]["switches"] == 7
    assert worker["process_data"]["cgroup_id"] == 55


# -- IPC degradation -----------------------------------------------------------


def ipc_events(probe: CpuIpcProbe, ipcs: list[float], *, start: int = 100, step: int = 1,
               pid: int = 4242, comm: bytes = b"postgres", reason: int = 0) -> list[Event]:
    """Decode one interval per IPC value, ``step`` seconds apart, 1e9 cycles each."""
    owner: dict[str, Any] = {"pid": pid, "flags": 1, "comm": comm, "cgroup_id": 77}
    return decode(probe, *(record((start + i * step) * SECOND, cycles=1_000_000_000,
                                  instructions=int(ipc * 1_000_000_000), reason=reason, **owner)
                           for i, ipc in enumerate(ipcs)))


def degradations(probe: CpuIpcProbe, events: list[Event]) -> list[Event]:
    return probe.derive(events, make_event_context("cpu_ipc", "tp_btf"))


def test_degradation_needs_a_warm_baseline_and_fires_once_per_window(
        jalki_validate_event: Callable[[Event], None]) -> None:
    probe = CpuIpcProbe(degradation=DegradationSettings(fraction=0.5, window_ns=60 * SECOND, warmup=3))
    # 3 intervals build the baseline (2.0); a low one before that is learned, not judged
    assert degradations(probe, ipc_events(probe, [2.0, 2.0, 2.0], start=120)) == []
    assert probe.detector.baseline(4242) == pytest.approx(2.0)
    # t=180..210 s lie in one epoch-aligned minute: three degraded intervals, one event (the first)
    events = ipc_events(probe, [0.8, 0.7, 0.9, 1.9], start=180, step=10)
    [anomaly] = degradations(probe, events)
    jalki_validate_event(anomaly)
    assert anomaly["type"] == "kernel.cpu.ipc_degradation" and anomaly["severity"] == "warning"
    assert anomaly["timestamp"] == events[0]["timestamp"]
    assert anomaly["process_data"] == events[0]["process_data"]
    assert anomaly["data"] == {"ipc": 0.8, "baseline_ipc": 2.0, "ratio": 0.4, "fraction": 0.5,
                               "window_ns": 60 * SECOND, "interval_ns": SECOND, "cycles": 1_000_000_000,
                               "instructions": 800_000_000, "source_event": events[0]["id"]}
    assert probe.detector.baseline(4242) == pytest.approx(0.2 * 1.9 + 0.8 * 2.0)
    # the next window reports again; below fraction / 2 it is an error
    [again] = degradations(probe, ipc_events(probe, [0.3], start=240))
    assert again["severity"] == "error" and again["data"]["ratio"] < 0.25


def test_degradation_is_judged_on_event_time_so_a_replay_gives_the_same_answer() -> None:
    ipcs = [2.0, 2.1, 1.9, 2.0, 0.6, 0.5, 2.0, 0.4]
    first, second = CpuIpcProbe(), CpuIpcProbe()
    a = degradations(first, ipc_events(first, ipcs, step=30))
    b = degradations(second, ipc_events(second, ipcs, step=30))
    assert [(e["timestamp"], e["data"]["ratio"]) for e in a] == [(e["timestamp"], e["data"]["ratio"]) for e in b]
    # windows are epoch-aligned minutes; kernel time 0 is 22:13:20 here, so 0.6 (t=220 s) and 0.5 (t=250 s)
    # share the minute from 22:17:00 and 0.4 (t=310 s) opens the next one
    assert len(a) == 2


def test_degradation_ignores_thin_intervals_reused_pids_and_exited_processes() -> None:
    probe = CpuIpcProbe()
    warm = ipc_events(probe, [2.0, 2.0, 2.0])
    degradations(probe, warm)
    thin = decode(probe, record(110 * SECOND, cycles=1_000_000, instructions=100_000))  # under min_cycles
    assert degradations(probe, thin) == [] and probe.detector.baseline(4242) == pytest.approx(2.0)
    # the pid now runs another command: a new baseline, nothing judged yet
    assert degradations(probe, ipc_events(probe, [0.2], start=120, comm=b"reused")) == []
    assert probe.detector.baseline(4242) is None
    # a process that exits is forgotten
    degradations(probe, ipc_events(probe, [1.0, 1.0, 1.0], start=200, pid=7, comm=b"job"))
    assert probe.detector.baseline(7) == pytest.approx(1.0)
    degradations(probe, ipc_events(probe, [1.0], start=210, pid=7, comm=b"job", reason=1))
    assert probe.detector.baseline(7) is None


def test_detector_remembers_a_bounded_number_of_processes() -> None:
    detector = IpcDegradationDetector(DegradationSettings(warmup=1, max_processes=2))
    probe = CpuIpcProbe()
    for pid in (1, 2, 3):
        detector.derive(ipc_events(probe, [1.0], pid=pid), make_event_context("cpu_ipc", "tp_btf"))
    assert [detector.baseline(pid) for pid in (1, 2, 3)] == [None, 1.0, 1.0]


def test_degradation_settings_are_checked() -> None:
    for bad in ({"fraction": 0.0}, {"fraction": 1.0}, {"alpha": 0.0}, {"window_ns": 0}, {"warmup": 0}):
        with pytest.raises(ProbeError):
            DegradationSettings(**bad)


# -- settings ------------------------------------------------------------------


def test_interval_and_fraction_from_arguments_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JALKI_CPU_INTERVAL_MS", raising=False)
    monkeypatch.delenv("JALKI_CPU_DEGRADATION_FRACTION", raising=False)
    probe = CpuIpcProbe()
    assert probe.rodata() == {"cpu_ipc_interval_ns": SECOND, "cpu_ipc_min_run_ns": 1_000_000}
    assert probe.detector.settings.fraction == 0.5
    monkeypatch.setenv("JALKI_CPU_INTERVAL_MS", "250")
    monkeypatch.setenv("JALKI_CPU_DEGRADATION_FRACTION", "0.7")
    probe = CpuIpcProbe()
    assert probe.interval_ns == 250_000_000 and probe.detector.settings.fraction == 0.7
    assert CpuIpcProbe(interval_ns=5, min_run_ns=0).rodata() == {"cpu_ipc_interval_ns": 5, "cpu_ipc_min_run_ns": 0}
    assert probe.describe()["counters"]["cycles"] == "perf_event_open(PERF_TYPE_HARDWARE, CPU_CYCLES)"
    monkeypatch.setenv("JALKI_CPU_INTERVAL_MS", "often")
    with pytest.raises(ProbeError, match="not a number"):
        CpuIpcProbe()
    with pytest.raises(ProbeError, match="not positive"):
        CpuIpcProbe(interval_ns=0)


def test_record_layout_matches_the_c_header() -> None:
    header = (REPO / "plugins/jalki_cpu/jalki_cpu/bpf/cpu_ipc.h").read_text()
    assert "sizeof(struct cpu_ipc_event) == 136" in header and layouts.CPU_IPC.size == 136
    assert "sizeof(struct cpu_ipc_acc) == 120" in header and layouts.PROCESS_VALUE.size == 120
    assert f"JALKI_CPU_COUNTERS {len(layouts.COUNTERS)}" in header
    source = (REPO / "plugins/jalki_cpu/jalki_cpu/bpf/cpu_ipc.bpf.c").read_text()
    for map_name in layouts.COUNTER_MAPS:
        assert f"JALKI_CPU_PERF_ARRAY({map_name});" in source


# -- availability: perf_event_open with a simulated system call -----------------


class FakeSyscall:
    """Stands in for the kernel's perf_event_open (the binding's ``syscall``): an errno per (type, config),
    else a real fd (/dev/null)."""

    def __init__(self, failures: dict[tuple[int, int], int] | None = None) -> None:
        self.failures = failures or {}
        self.calls: list[tuple[int, int, int, int]] = []  # (type, config, pid, cpu)
        self.fds: list[int] = []

    def __call__(self, event_type: int, config: int, pid: int, cpu: int) -> int:
        self.calls.append((event_type, config, pid, cpu))
        err = self.failures.get((event_type, config))
        if err:
            return -err
        fd = os.open(os.devnull, os.O_RDONLY)
        self.fds.append(fd)
        return fd

    def all_closed(self) -> bool:
        for fd in self.fds:
            try:
                os.fstat(fd)
            except OSError:
                continue
            return False
        return True


@pytest.fixture
def fake_syscall(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., FakeSyscall]]:
    def install(failures: dict[tuple[int, int], int] | None = None) -> FakeSyscall:
        fake = FakeSyscall(failures)
        monkeypatch.setattr(kperf, "syscall", fake)
        return fake

    yield install


HW_CYCLES = (perf.PERF_TYPE_HARDWARE, perf.PERF_COUNT_HW_CPU_CYCLES)
HW_INSTRUCTIONS = (perf.PERF_TYPE_HARDWARE, perf.PERF_COUNT_HW_INSTRUCTIONS)


def test_no_pmu_is_reported_with_errno_and_meaning_once_per_instance(fake_syscall: Callable[..., FakeSyscall]) -> None:
    fake = fake_syscall({HW_CYCLES: errno.ENOENT})
    probe = CpuIpcProbe()
    assert probe.unavailable_reason() == ENOENT_LINE
    assert probe.unavailable_reason() == ENOENT_LINE
    assert fake.calls == [(0, 0, -1, perf.online_cpus()[0])]  # checked once, CPU-wide, on the first online CPU


def test_paranoid_refusal_names_the_setting_and_the_fix(fake_syscall: Callable[..., FakeSyscall],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kperf, "paranoid_level", lambda path=kperf.PARANOID_PATH: "2")
    fake_syscall({HW_CYCLES: errno.EACCES})
    assert CpuIpcProbe().unavailable_reason() == (
        "perf_event_open(PERF_TYPE_HARDWARE, CPU_CYCLES) failed with EACCES: kernel.perf_event_paranoid=2 "
        "forbids CPU-wide counters to this process (they need CAP_PERFMON or CAP_SYS_ADMIN, or a paranoid level "
        "of 0 or less): run jalki as root, or lower it with 'sysctl -w kernel.perf_event_paranoid=0'")
    fake_syscall({HW_CYCLES: errno.EPERM})
    assert "seccomp" in (CpuIpcProbe().unavailable_reason() or "")


def test_counters_that_open_are_closed_and_the_probe_is_available(fake_syscall: Callable[..., FakeSyscall]) -> None:
    fake = fake_syscall()
    assert CpuIpcProbe().unavailable_reason() is None
    assert [(t, c) for t, c, _, _ in fake.calls] == [HW_CYCLES, HW_INSTRUCTIONS]
    assert fake.all_closed()


def test_a_pmu_without_instructions_is_named(fake_syscall: Callable[..., FakeSyscall]) -> None:
    fake = fake_syscall({HW_INSTRUCTIONS: errno.ENOENT})
    assert CpuIpcProbe().unavailable_reason() == (
        "perf_event_open(PERF_TYPE_HARDWARE, INSTRUCTIONS) failed with ENOENT: this CPU's performance monitoring "
        "unit has no INSTRUCTIONS event")
    assert fake.all_closed()  # the cycles event that did open


def test_unavailable_probe_is_never_loaded(fake_syscall: Callable[..., FakeSyscall]) -> None:
    from jalki_core.loader import ProbeLoader

    fake_syscall({HW_CYCLES: errno.ENOENT})
    with pytest.raises(ProbeUnavailableError, match="failed with ENOENT: this machine exposes no hardware"):
        ProbeLoader().load(CpuIpcProbe())


@pytest.mark.parametrize(("err", "meaning"), [
    (errno.EOPNOTSUPP, "cannot count this event here"),
    (errno.ENODEV, "CPU 3 is not online"),
    (errno.EBUSY, "held exclusively"),
    (errno.EMFILE, "ulimit -n"),
    (errno.EINVAL, "rejected the event's attributes"),
    (errno.ENOSYS, "CONFIG_PERF_EVENTS"),
    (errno.EIO, os.strerror(errno.EIO)),
])
def test_every_errno_gets_one_line(err: int, meaning: str) -> None:
    line = perf.explain_failure(perf.STALLED_CYCLES_BACKEND, err, cpu=3)
    assert line.startswith(f"perf_event_open(PERF_TYPE_HARDWARE, STALLED_CYCLES_BACKEND) failed with "
                           f"{errno.errorcode[err]}: ")
    assert meaning in line and "\n" not in line


def test_a_build_without_the_system_call_is_enosys_not_a_guess(fake_syscall: Callable[..., FakeSyscall]) -> None:
    """The shim answers -ENOSYS where the C library's headers have no perf_event_open number."""
    fake_syscall({HW_CYCLES: errno.ENOSYS})
    with pytest.raises(PerfEventOpenError) as info:
        perf.open_counter(perf.CPU_CYCLES, 0)
    assert info.value.errno == errno.ENOSYS and "no perf_event_open system call" in perf.reason(info.value)


def test_the_real_system_call_answers_in_the_same_form() -> None:
    """On any machine: either the counters open, or the reason is one line in the documented form."""
    reason = CpuIpcProbe().unavailable_reason()
    assert reason is None or reason.startswith("perf_event_open(PERF_TYPE_HARDWARE, ")
    if reason is not None:
        assert " failed with E" in reason and "\n" not in reason


def test_online_cpus(tmp_path: Path) -> None:
    online = tmp_path / "online"
    online.write_text("0-3,6,8-9\n")
    assert perf.online_cpus(str(online)) == [0, 1, 2, 3, 6, 8, 9]
    assert perf.online_cpus(str(tmp_path / "missing")) == [0]


# -- prepare: perf event fds into the PERF_EVENT_ARRAY maps ---------------------


class FakePerfArray:
    """Records map updates, and checks every fd is open when it is handed over."""

    def __init__(self) -> None:
        self.entries: dict[int, int] = {}

    def update(self, key: bytes, value: bytes) -> None:
        [cpu] = layouts.CPU_KEY.unpack(key)
        [fd] = layouts.FD_VALUE.unpack(value)
        os.fstat(fd)  # raises when already closed
        self.entries[cpu] = fd


def test_prepare_fills_each_counter_map_per_cpu_and_closes_the_fds(
        fake_syscall: Callable[..., FakeSyscall], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(perf, "online_cpus", lambda path=perf.ONLINE_CPUS_PATH: [0, 1, 3])
    fake = fake_syscall({(perf.PERF_TYPE_HARDWARE, perf.PERF_COUNT_HW_STALLED_CYCLES_FRONTEND): errno.ENOENT})
    maps = {name: FakePerfArray() for name in layouts.COUNTER_MAPS}
    probe = CpuIpcProbe()
    probe.prepare(maps)
    assert {name: sorted(m.entries) for name, m in maps.items()} == {
        "cpu_cycles": [0, 1, 3], "cpu_instructions": [0, 1, 3], "cpu_stalled_frontend": [],
        "cpu_stalled_backend": [0, 1, 3]}
    assert probe.opened == {"cycles": 3, "instructions": 3, "stalled_cycles_frontend": 0,
                            "stalled_cycles_backend": 3}
    assert fake.all_closed()


def test_prepare_fails_the_probe_when_a_required_counter_fails_on_a_cpu(
        fake_syscall: Callable[..., FakeSyscall], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(perf, "online_cpus", lambda path=perf.ONLINE_CPUS_PATH: [0])
    fake = fake_syscall({HW_INSTRUCTIONS: errno.EBUSY})
    with pytest.raises(ProbeUnavailableError, match=r"INSTRUCTIONS\) failed with EBUSY: .* \(CPU 0\)"):
        CpuIpcProbe().prepare({name: FakePerfArray() for name in layouts.COUNTER_MAPS})
    assert fake.all_closed()


# -- plugin and KB -------------------------------------------------------------------


def test_plugin_registers_the_probe_and_its_kb_layer() -> None:
    registered = JalkiPlugins().probes.get("cpu_ipc")
    assert registered is not None and registered.owner.plugin == "cpu"
    assert isinstance(registered.probe, CpuIpcProbe)
    assert [rung.name for rung in registered.probe.ladder] == ["tp_btf", "tracepoint"]
    kb = default_kb()
    assert [entry.id for entry in kb.in_layer("cpu")] == ["cpu_ipc", "cpu_ipc_degradation"]
    for entry in kb.in_layer("cpu"):
        assert entry.implemented_by is not None and entry.implemented_by.probe == "cpu_ipc"
        assert entry.event_type in CpuIpcProbe.event_types
        assert entry.attach == ("tp_btf", "tracepoint")


def _schema_data_properties(event_type: str) -> set[str]:
    import json

    schema = json.loads((REPO / "plugins/jalki_cpu/jalki_cpu/events.schema.json").read_text())
    [clause] = [c for c in schema["allOf"] if c["if"]["properties"]["type"]["const"] == event_type]
    return set(clause["then"]["properties"]["data"]["properties"])


def test_kb_fields_are_the_real_event_paths() -> None:
    probe = CpuIpcProbe(degradation=DegradationSettings(warmup=1))
    run = 900_000_000
    [ipc] = decode(probe, record(SECOND, stalls=(1, 1), counted=(run, run, run, run)))
    degradations(probe, [ipc])
    [low] = decode(probe, record(2 * SECOND, instructions=100_000_000))
    [anomaly] = degradations(probe, [low])
    kb = default_kb()
    for entry_id, event in (("cpu_ipc", ipc), ("cpu_ipc_degradation", anomaly)):
        entry = kb.entries[entry_id]
        data_fields = {spec.name.removeprefix("data.") for spec in entry.fields if spec.name.startswith("data.")}
        assert data_fields == _schema_data_properties(entry.event_type)
        for spec in entry.fields:
            assert get_path(event, spec.name) is not None, (entry_id, spec.name)
