"""The ``drain_session`` case: the drain probe through jalki's real pipeline.

Where ``_drain.py`` drives ``RingBufferReader`` by hand, this case wraps
``bench/bpf/drain.bpf.o`` in an ordinary :class:`jalki_core.probe.Probe` and
runs it in a :class:`jalki_core.session.TraceSession` with a ``FileEmitter``:
the attach ladder, the session's drain loop (and its drain interval), the
decoder, the emitter worker thread and the fsync on stop are all jalki's own.

The loader only sets ``jalki_self_tgid``; the probe's ``bench_tgid`` filter is
a ``const volatile`` in ``.rodata``, so the object's bytes are patched (ELF
symbol table → file offset) before the loader sees them.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from _common import Tools, cpu_fractions, cpu_times, stop_generator, tracing_programs, wait_with_rusage

SHT_SYMTAB = 2


def patch_symbol(elf: bytes, symbol: str, value: bytes) -> bytes:
    """Return ``elf`` (ELF64, little-endian) with the initial bytes of global ``symbol`` replaced."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        raise ValueError("not a little-endian ELF64 object")
    (shoff,) = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", elf, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", elf, shoff + i * shentsize) for i in range(shnum)]
    for _name, sh_type, _flags, _addr, offset, size, link, _info, _align, entsize in sections:
        if sh_type != SHT_SYMTAB:
            continue
        strtab_offset = sections[link][4]
        for pos in range(offset, offset + size, entsize):
            st_name, _st_info, _st_other, st_shndx, st_value, st_size = struct.unpack_from("<IBBHQQ", elf, pos)
            end = elf.index(b"\0", strtab_offset + st_name)
            if elf[strtab_offset + st_name : end].decode() != symbol:
                continue
            if st_size != len(value):
                raise ValueError(f"{symbol} is {st_size} bytes, value is {len(value)}")
            start = sections[st_shndx][4] + st_value
            return elf[:start] + value + elf[start + len(value) :]
    raise ValueError(f"symbol {symbol} not found")


class _BytesResource:
    """Duck-typed stand-in for ProbeResource: the object's bytes are already in memory."""

    def __init__(self, data: bytes, filename: str) -> None:
        self.data = data
        self.filename = filename
        self.package = "bench"

    def read_bytes(self) -> bytes:
        return self.data


def make_drain_probe(obj_path: Path, tgid: int) -> Any:
    """A jalki Probe over drain.bpf.o, filtered on ``tgid``; events like _drain's json mode."""
    from jalki_core.events import Event, EventContext, kernel_comm
    from jalki_core.probe import AttachRung, Probe, RecordLayout

    data = patch_symbol(obj_path.read_bytes(), "bench_tgid", struct.pack("<I", tgid))
    layout = RecordLayout("drain_event", "<QQII16s", ("ts_ns", "cgroup_id", "pid", "flags", "comm"), 40)

    class DrainProbe(Probe):
        name = "bench_drain"
        observes = "raw_syscalls:sys_enter (getppid of one process)"
        event_types = ("bench.drain.syscall",)
        bpf_object = _BytesResource(data, obj_path.name)  # type: ignore[assignment]
        ladder = (
            AttachRung("tp_btf", ("tpbtf_drain",), "tp_btf/sys_enter"),
            AttachRung("tracepoint", ("tp_drain",), "tracepoint/raw_syscalls/sys_enter"),
        )

        def decode(self, batch: bytes, ctx: EventContext) -> list[Event]:
            events = []
            new_event = ctx.new_event
            for ts, cgroup_id, pid, _flags, comm in layout.struct.iter_unpack(batch):
                event = new_event("bench.drain.syscall", ts)
                event["process_data"] = {"pid": pid, "command": kernel_comm(comm), "cgroup_id": cgroup_id}
                events.append(event)
            return events

    DrainProbe.layout = layout
    return DrainProbe()


def run_session_case(
    tools: Tools, tmp: Path, seconds: float, tag: str, gen_cpu: int | None, consumer_cpu: int | None
) -> dict[str, Any]:
    """Run the generator against a TraceSession writing NDJSON to a file; return its numbers."""
    from jalki_core.emitters.builtin import FileEmitter
    from jalki_core.session import TraceSession

    result: dict[str, Any] = {"case": "drain_session"}
    if tools.drain_obj is None:
        result["error"] = f"drain object unavailable: {tools.drain_error}"
        return result
    argv = [str(tools.syscall_gen), str(seconds)]
    if gen_cpu is not None:
        argv = ["taskset", "-c", str(gen_cpu), *argv]
    gen = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert gen.stdin is not None and gen.stdout is not None
    out_path = tmp / f"{tag}.ndjson"
    old_affinity = os.sched_getaffinity(0)
    session: Any = None
    try:
        tgid = int(json.loads(gen.stdout.readline())["pid"])
        probe = make_drain_probe(tools.drain_obj, tgid)
        session = TraceSession([probe], [FileEmitter(out_path, max_bytes=0)])
        result["drain_interval_s"] = getattr(session, "drain_interval", None)  # absent on older sessions
        if consumer_cpu is not None:
            os.sched_setaffinity(0, {consumer_cpu})  # the drain loop and the emitter thread share one CPU
        session.start()
        if not session.attached:
            result["error"] = f"drain probe not attached: {session.stats['bench_drain'].error}"
            return result
        foreign = tracing_programs([os.getpid()])
        generator_output: list[bytes] = []

        def stop_when_generator_ends() -> None:
            assert gen.stdout is not None
            generator_output.append(gen.stdout.read())
            session.request_stop()

        watcher = threading.Thread(target=stop_when_generator_ends, daemon=True)
        cpu_before = cpu_times()
        proc_before = time.process_time()
        wall_before = time.perf_counter()
        watcher.start()
        gen.stdin.write(b"go\n")
        gen.stdin.flush()
        session.run(None)
        summary = session.stop()  # detach, drain the rest, flush + fsync the file
        session = None
        wall = time.perf_counter() - wall_before
        consumer_cpu_s = time.process_time() - proc_before
        cpu_after = cpu_times()
        watcher.join(10)
        wait_with_rusage(gen, 60)
        stats = json.loads(generator_output[0])

        probe_stats = summary.probes[0]
        emitter = next(iter(summary.emitters.values()))
        kernel = dict(probe_stats.kernel_drops)
        with out_path.open("rb") as stream:
            lines = sum(chunk.count(b"\n") for chunk in iter(lambda: stream.read(1 << 22), b""))
        produced = int(stats["calls"])
        drops_total = sum(kernel.values()) + probe_stats.size_mismatches + probe_stats.decode_errors
        result.update(
            attach=probe_stats.rung,
            produced=produced,
            produce_rate=stats["rate"],
            received=probe_stats.records,
            kernel_drops=kernel,
            emitter_events_dropped=emitter["events_dropped"],
            drops_total=drops_total + emitter["events_dropped"],
            unaccounted=produced - probe_stats.records - drops_total,
            lossless=drops_total == 0 and emitter["events_dropped"] == 0 and lines == produced,
            wall_s=round(wall, 3),
            consumer_cpu_s=round(consumer_cpu_s, 3),
            records_per_s_wall=round(probe_stats.records / wall, 1) if wall else None,
            records_per_cpu_s=round(probe_stats.records / consumer_cpu_s, 1) if consumer_cpu_s else None,
            json_lines_in_file=lines,
            json_file_bytes=out_path.stat().st_size,
            json_lines_per_s_wall=round(lines / wall, 1) if wall else None,
            json_lines_per_cpu_s=round(lines / consumer_cpu_s, 1) if consumer_cpu_s else None,
            foreign_bpf_programs=foreign,
            **cpu_fractions(cpu_before, cpu_after),
        )
        return result
    finally:
        os.sched_setaffinity(0, old_affinity)
        if session is not None:
            with contextlib.suppress(Exception):
                session.stop()
        stop_generator(gen)
        with contextlib.suppress(OSError):
            out_path.unlink()
