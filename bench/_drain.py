"""The drain cases: how fast jalki's consumer side takes records off a ring buffer.

A generator process (``syscall_gen``, pinned to one CPU) calls getppid() in a
tight loop; ``bench/bpf/drain.bpf.c``, filtered on the generator's tgid,
writes one 40-byte record per call through ``jalki_reserve`` (ring-full
failures are counted in ``jalki_drops[ringbuf_full]``). This process,
pinned to the other CPU, is the consumer: it waits on the ring's epoll fd
like ``TraceSession`` does and drains it with ``RingBufferReader.consume()``
(records copied in C into one batch per call). Records produced = the
generator's call count, so ``produced - received - dropped`` must be 0.

Modes:
  gen_bare  the generator alone, nothing loaded (the producer's ceiling)
  decode    every record unpacked with ``struct.iter_unpack`` into Python values,
            its pid checked
  decode_batched
            the same decoding, but the consumer does not wait on the ring's
            epoll fd: it sleeps 2 ms between drains, so each consume() returns
            a large batch and the kernel sends few wake-ups (what a
            timer-driven drain, or BPF_RB_NO_WAKEUP, would give)
  json      every record turned into an event dict (``EventContext.new_event``
            plus process_data, like jalki-tcp's decoders), serialised with
            orjson through ``EventBatch`` and written with ``FileEmitter``
            (fsync'd on close), synchronously in this one thread
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import select
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

from _common import Tools, cpu_fractions, cpu_times, stop_generator, tracing_programs, wait_with_rusage

RECORD = struct.Struct("<QQII16s")  # struct drain_event = struct jalki_event_header (40 bytes)
BATCH_INTERVAL_S = 0.002  # decode_batched: drain every 2 ms instead of on every ring wake-up
DROP_CAUSES = ("ringbuf_full", "sampled", "tracking_full")


def _load_drain(obj_path: Path, tgid: int, ring_bytes: int) -> tuple[Any, Any, str, list[str]]:
    """Open, configure, load and attach the drain object; tp_btf first, tracepoint as fallback."""
    from jalki_core._libbpf import BpfObject
    from jalki_core.errors import LibbpfError

    failures: list[str] = []
    for rung, program in (("tp_btf", "tpbtf_drain"), ("tracepoint", "tp_drain")):
        obj = BpfObject.open_file(obj_path)
        try:
            obj.set_rodata("bench_tgid", tgid)
            for name, prog in obj.programs.items():
                prog.autoload = name == program
            obj.maps["events"].max_entries = ring_bytes
            obj.load()
            link = obj.programs[program].attach()
            return obj, link, rung, failures
        except LibbpfError as exc:
            failures.append(f"{rung}: {exc.one_line()}")
            obj.close()
    raise RuntimeError("drain probe could not be attached: " + "; ".join(failures))


def _kernel_drops(obj: Any) -> dict[str, int]:
    drops_map = obj.maps["jalki_drops"]
    result = {}
    for index, cause in enumerate(DROP_CAUSES):
        values = drops_map.lookup_per_cpu(struct.pack("<I", index))
        result[cause] = sum(struct.unpack_from("<Q", value)[0] for value in values)
    return result


class _Decoder:
    """Mode ``decode``: unpack every field of every record; count the foreign pids."""

    def __init__(self, tgid: int) -> None:
        self.tgid = tgid
        self.records = 0
        self.wrong_pid = 0

    def __call__(self, batch: bytes) -> None:
        tgid = self.tgid
        wrong = 0
        for _ts, _cgroup, pid, _flags, _comm in RECORD.iter_unpack(batch):
            if pid != tgid:
                wrong += 1
        self.wrong_pid += wrong
        self.records += len(batch) // RECORD.size

    def close(self) -> dict[str, Any]:
        return {"wrong_pid_records": self.wrong_pid}


class _JsonWriter:
    """Mode ``json``: event dicts -> orjson NDJSON -> FileEmitter, in this thread."""

    def __init__(self, tgid: int, path: Path) -> None:
        from jalki_core.emitters.builtin import FileEmitter
        from jalki_core.events import EventContext

        self.tgid = tgid
        self.path = path
        self.context = EventContext("bench_drain", "tp_btf", cluster=None)
        self.emitter = FileEmitter(path, max_bytes=0)
        self.emitter.open()
        self.records = 0
        self.lines = 0
        self.bytes = 0

    def __call__(self, batch: bytes) -> None:
        from jalki_core.emitters.base import EventBatch
        from jalki_core.events import kernel_comm

        new_event = self.context.new_event
        events = []
        for ts, cgroup_id, pid, _flags, comm in RECORD.iter_unpack(batch):
            event = new_event("bench.drain.syscall", ts)
            event["process_data"] = {"pid": pid, "command": kernel_comm(comm), "cgroup_id": cgroup_id}
            events.append(event)
        event_batch = EventBatch(events)
        self.emitter.emit(event_batch)
        self.records += len(events)
        self.lines += len(events)
        self.bytes += len(event_batch.ndjson)

    def close(self) -> dict[str, Any]:
        self.emitter.close()  # flush + fsync: part of "written"
        return {"json_lines": self.lines, "json_bytes": self.bytes}


def run_drain_case(
    tools: Tools,
    tmp: Path,
    mode: str,
    seconds: float,
    tag: str,
    gen_cpu: int | None,
    consumer_cpu: int | None,
    ring_bytes: int,
) -> dict[str, Any]:
    """Run one drain case (``gen_bare``, ``decode``, ``decode_batched`` or ``json``); return its numbers."""
    result: dict[str, Any] = {"case": f"drain_{mode}"}
    argv = [str(tools.syscall_gen), str(seconds)]
    if gen_cpu is not None:
        argv = ["taskset", "-c", str(gen_cpu), *argv]
    gen = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert gen.stdin is not None and gen.stdout is not None
    obj: Any = None
    link: Any = None
    old_affinity = os.sched_getaffinity(0)
    json_path = tmp / f"{tag}.ndjson"
    try:
        tgid = int(json.loads(gen.stdout.readline())["pid"])
        if mode != "gen_bare":
            if tools.drain_obj is None:
                result["error"] = f"drain object unavailable: {tools.drain_error}"
                return result
            obj, link, rung, failures = _load_drain(tools.drain_obj, tgid, ring_bytes)
            result["attach"] = rung
            if failures:
                result["failed_rungs"] = failures
        foreign = tracing_programs([os.getpid()])
        if mode == "gen_bare":
            gen.stdin.write(b"go\n")
            gen.stdin.flush()
            output = gen.stdout.read()
            wait_with_rusage(gen, seconds + 60)
            stats = json.loads(output)
            result.update(produced=stats["calls"], produce_rate=stats["rate"], foreign_bpf_programs=foreign)
            return result

        from jalki_core._libbpf import RingBufferReader

        reader = RingBufferReader(obj.maps["events"], RECORD.size)
        sink: _Decoder | _JsonWriter = _JsonWriter(tgid, json_path) if mode == "json" else _Decoder(tgid)
        epoll = select.epoll()
        # decode_batched does not wait on the ring: it sleeps BATCH_INTERVAL_S between drains.
        timeout = BATCH_INTERVAL_S if mode == "decode_batched" else 0.25
        if mode != "decode_batched":
            epoll.register(reader.epoll_fd, select.EPOLLIN)
        epoll.register(gen.stdout.fileno(), select.EPOLLIN | select.EPOLLHUP)
        batches = 0
        if consumer_cpu is not None:
            os.sched_setaffinity(0, {consumer_cpu})
        cpu_before = cpu_times()
        ru_before = resource.getrusage(resource.RUSAGE_SELF)
        proc_before = time.process_time()
        wall_before = time.perf_counter()
        gen.stdin.write(b"go\n")
        gen.stdin.flush()
        generator_done = False
        consume_s = sink_s = 0.0  # wall time inside consume() and inside decoding/writing
        clock = time.perf_counter
        while not generator_done:
            for fd, _events in epoll.poll(timeout):
                if fd == gen.stdout.fileno():
                    generator_done = True
            while True:
                t0 = clock()
                batch = reader.consume()
                t1 = clock()
                consume_s += t1 - t0
                if not batch:
                    break
                sink(batch)
                sink_s += clock() - t1
                batches += 1
        link.destroy()  # nothing more can arrive; take what is left
        while batch := reader.consume():
            sink(batch)
            batches += 1
        t0 = clock()
        extra = sink.close()
        sink_s += clock() - t0
        wall = time.perf_counter() - wall_before
        consumer_cpu_s = time.process_time() - proc_before
        ru_after = resource.getrusage(resource.RUSAGE_SELF)
        cpu_after = cpu_times()
        output = gen.stdout.read()
        wait_with_rusage(gen, 60)
        stats = json.loads(output)
        drops = _kernel_drops(obj)
        epoll.close()
        reader.close()

        produced = int(stats["calls"])
        received = sink.records
        dropped = sum(drops.values())
        result.update(
            produced=produced,
            produce_rate=stats["rate"],
            received=received,
            kernel_drops=drops,
            drops_total=dropped,
            unaccounted=produced - received - dropped,
            lossless=dropped == 0 and produced == received,
            batches=batches,
            records_per_batch=round(received / batches, 1) if batches else None,
            wall_s=round(wall, 3),
            consumer_cpu_s=round(consumer_cpu_s, 3),
            consumer_user_s=round(ru_after.ru_utime - ru_before.ru_utime, 3),
            consumer_sys_s=round(ru_after.ru_stime - ru_before.ru_stime, 3),
            records_per_s_wall=round(received / wall, 1) if wall else None,
            records_per_cpu_s=round(received / consumer_cpu_s, 1) if consumer_cpu_s else None,
            consume_ns_per_record=round(consume_s / received * 1e9, 1) if received else None,
            sink_ns_per_record=round(sink_s / received * 1e9, 1) if received else None,
            other_ns_per_record=(
                round((consumer_cpu_s - consume_s - sink_s) / received * 1e9, 1) if received else None
            ),
            ring_bytes=ring_bytes,
            foreign_bpf_programs=foreign,
            **cpu_fractions(cpu_before, cpu_after),
            **extra,
        )
        if mode == "json":
            written = json_path.stat().st_size
            with json_path.open("rb") as stream:
                lines_in_file = sum(chunk.count(b"\n") for chunk in iter(lambda: stream.read(1 << 22), b""))
            result.update(
                json_file_bytes=written,
                json_lines_in_file=lines_in_file,
                json_lines_per_s_wall=round(lines_in_file / wall, 1) if wall else None,
                json_lines_per_cpu_s=round(lines_in_file / consumer_cpu_s, 1) if consumer_cpu_s else None,
            )
        return result
    finally:
        os.sched_setaffinity(0, old_affinity)
        stop_generator(gen)
        if link is not None and not link.destroyed:
            link.destroy()
        if obj is not None:
            obj.close()
        with contextlib.suppress(OSError):
            json_path.unlink()
