"""The ``drain_tcp`` case: jalki-tcp's real decoders, derivers and file emitter on a synthetic producer.

No kernel: the records a ``churn_full`` run produces (``SO_LINGER {1,0}``
loopback churn; see bench/README.md for what each connection makes) are
packed in advance with each probe's own ``RecordLayout.pack``, in the
proportions that churn produces, and cut into one batch per probe per drain
interval (what a session draining every 20 ms at ``rate`` connections/s would
read). They are then fed through ``TraceSession.drain_once()`` — the session's
own ``_drain_probe`` → ``Probe.decode`` → ``Probe.derive`` → ``_deliver`` →
``EventBatch`` → ``EmitterWorker`` → the ``file`` emitter that ``jalki run
--emit file:PATH`` builds — with a stand-in ring reader (:class:`ReplayReader`)
and a stand-in loaded object (:class:`ReplayLoaded`) in place of libbpf's.
``TraceSession.stop()`` then drains what is left, calls every probe's
``final_events`` and flushes/fsyncs the file, as on SIGTERM.

Measured: events written to the file per second of the consumer's CPU time
(``time.process_time()``: the drain loop and the emitter thread together),
not wall time. The records are generated before the clock starts.

The session's probe slots (``_ActiveProbe``, ``TraceSession._active``) are
private: this module builds them from the dataclass's own field list so
that a field added with a default does not break it.
"""

from __future__ import annotations

import dataclasses
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_RATE = 20_000
"""Connections per second the records are stamped at (the issue's busy node)."""
DRAIN_INTERVAL_S = 0.02
"""One batch per probe per this much of the producer's time (the session's default drain interval)."""
SERVER_PORT = 40_000
CLIENT_PID = 4242
NETNS = 4026531840
SERVER_OWNED_EVERY = 2
"""One server-side record in this many names its owner: an accepted socket the server thread has
not yet touched when the RST arrives has no recorded owner (about half of them in churn_full)."""

# Records per connection that churn_full produces (see bench/README.md, "churn_full: what each
# connection produces"): tcp_connect 1 (client), tcp_close 2 (client + server), tcp_reset 2
# (sent by the client, received by the server), tcp_retransmit_skb 0; tcp_rtt 2 per interval
# (the active key and the passive key), not per connection.
RECORDS_PER_CONNECTION: Mapping[str, int] = {
    "tcp_connect": 1,
    "tcp_close": 2,
    "tcp_reset": 2,
    "tcp_retransmit_skb": 0,
}
RTT_KEYS_PER_INTERVAL = 2

_LOOPBACK = socket.inet_aton("127.0.0.1") + bytes(12)


def _ephemeral(i: int) -> int:
    return 32_768 + i % 28_232


def _owner(i: int, client: bool) -> dict[str, Any]:
    if client or i % SERVER_OWNED_EVERY == 0:
        return {"pid": CLIENT_PID, "cgroup_id": 1, "comm": b"churn", "flags": 1}  # OWNER_KNOWN
    return {}


def connection_records(i: int, ts_ns: int) -> dict[str, list[bytes]]:
    """The records one ``SO_LINGER {1,0}`` loopback connection makes, by probe name."""
    from jalki_tcp import layouts

    sport = _ephemeral(i)
    client = {
        "saddr": _LOOPBACK,
        "daddr": _LOOPBACK,
        "sport": sport,
        "dport": SERVER_PORT,
        "family": socket.AF_INET,
        **_owner(i, True),
    }
    server = {
        "saddr": _LOOPBACK,
        "daddr": _LOOPBACK,
        "sport": SERVER_PORT,
        "dport": sport,
        "family": socket.AF_INET,
        **_owner(i, False),
    }
    return {
        "tcp_connect": [layouts.CONNECT.pack(ts_ns=ts_ns, latency_ns=25_000, error=0, netns=NETNS, **client)],
        "tcp_reset": [
            layouts.RESET.pack(ts_ns=ts_ns + 30_000, state=7, netns=NETNS, direction=layouts.RESET_SENT, **client),
            layouts.RESET.pack(ts_ns=ts_ns + 40_000, state=1, netns=NETNS, direction=layouts.RESET_RECEIVED, **server),
        ],
        "tcp_close": [
            layouts.CLOSE.pack(
                ts_ns=ts_ns + 30_000, duration_ns=30_000, bytes_sent=64, oldstate=1, netns=NETNS, **client
            ),
            layouts.CLOSE.pack(
                ts_ns=ts_ns + 40_000, duration_ns=20_000, bytes_received=64, oldstate=1, netns=NETNS, **server
            ),
        ],
    }


def rtt_records(window: int, interval_ns: int, samples: int) -> list[bytes]:
    """The two aggregates (client key, server key) the kernel emits for one finished RTT window."""
    from jalki_tcp import layouts

    records = []
    for direction, per_connection in ((layouts.RTT_ACTIVE, 1), (layouts.RTT_PASSIVE, 2)):
        records.append(
            layouts.RTT.pack(
                ts_ns=(window + 1) * interval_ns,
                cgroup_id=1,
                pid=CLIENT_PID,
                flags=1,
                comm=b"churn",
                raddr=_LOOPBACK,
                port=SERVER_PORT,
                family=socket.AF_INET,
                direction=direction,
                netns=NETNS,
                window=window,
                first_ns=window * interval_ns + 1_000,
                last_ns=(window + 1) * interval_ns - 1_000,
                sum_us=10 * samples * per_connection,
                samples=samples * per_connection,
                min_us=6,
                max_us=40,
                owner_tgid=CLIENT_PID,
                owner_cgroup_id=1,
                owner_comm=b"churn",
                owner0=CLIENT_PID,
                interval_ns=interval_ns,
            )
        )
    return records


@dataclass
class Workload:
    """Pre-packed batches: ``batches[n][probe]`` is what drain ``n`` reads from that probe's ring."""

    connections: int
    records: dict[str, int]
    batches: list[dict[str, bytes]]


def make_workload(
    connections: int,
    rate: int = DEFAULT_RATE,
    start_ns: int | None = None,
    drain_interval_s: float = DRAIN_INTERVAL_S,
    interval_ns: int = 1_000_000_000,
) -> Workload:
    """``connections`` connections stamped ``rate`` per second apart, cut into per-drain batches."""
    start_ns = time.monotonic_ns() if start_ns is None else start_ns
    per_drain = max(1, round(rate * drain_interval_s))
    counts: dict[str, int] = {name: 0 for name in (*RECORDS_PER_CONNECTION, "tcp_rtt")}
    batches: list[dict[str, bytes]] = []
    current: dict[str, list[bytes]] = {}
    step_ns = 1_000_000_000 // rate
    window = start_ns // interval_ns
    for i in range(connections):
        ts = start_ns + i * step_ns
        if ts // interval_ns > window:  # a window ended: its aggregates come out on the next sample
            current.setdefault("tcp_rtt", []).extend(rtt_records(window, interval_ns, rate))
            counts["tcp_rtt"] += RTT_KEYS_PER_INTERVAL
            window = ts // interval_ns
        for probe, records in connection_records(i, ts).items():
            current.setdefault(probe, []).extend(records)
            counts[probe] += len(records)
        if (i + 1) % per_drain == 0 or i + 1 == connections:
            batches.append({probe: b"".join(records) for probe, records in current.items()})
            current = {}
    return Workload(connections, counts, batches)


class ReplayReader:
    """Stands in for ``RingBufferReader``: ``consume()`` returns the next pre-packed batch, then b""."""

    def __init__(self, record_size: int) -> None:
        self.record_size = record_size
        self.batch_bytes = 1 << 40  # never "full": the feeder decides when to drain
        self.size_mismatches = 0
        self.unknown_kinds = 0
        self.epoll_fd = -1
        self.pending = b""

    def fill_ratio(self) -> float:
        """Nothing is waiting in a kernel ring."""
        return 0.0

    def consume(self) -> bytes:
        """The batch queued by the feeder (once)."""
        batch, self.pending = self.pending, b""
        return batch

    def consume_runs(self) -> list[tuple[int, bytes]]:
        """For probes with several record kinds (none in jalki-tcp): one run of kind 0."""
        batch = self.consume()
        return [(0, batch)] if batch else []

    def close(self) -> None:
        """Nothing to free."""


class _NoMaps(dict[str, Any]):
    """The loaded object's maps: none (``TcpRttProbe.final_events`` then reads no ``rtt_agg``)."""


@dataclass
class _ReplayObject:
    maps: _NoMaps


class ReplayLoaded:
    """Stands in for ``LoadedProbe``: the probe, no programs, no kernel counters."""

    def __init__(self, probe: Any) -> None:
        self.probe = probe
        self.obj = _ReplayObject(_NoMaps())

    def kernel_drops(self) -> dict[str, int]:
        """No kernel, no kernel drops."""
        return {}

    def program_stats(self) -> dict[str, tuple[int, int]]:
        """No programs."""
        return {}

    def detach(self) -> None:
        """Nothing attached."""

    def close(self) -> None:
        """Nothing loaded."""


def tcp_probes() -> list[Any]:
    """Fresh instances of every probe ``jalki run --plugin tcp`` runs, from the installed plugin."""
    from jalki_core.plugins import JalkiPlugins

    return [entry.probe for entry in JalkiPlugins().probes_for(["tcp"])]


def file_emitter(path: Path) -> Any:
    """The emitter ``--emit file:PATH`` builds."""
    from jalki_core.plugins import JalkiPlugins

    registered = JalkiPlugins().emitters.get("file")
    assert registered is not None, "the built-in file emitter is not registered"
    return registered.factory(str(path))


def _active_probe(session: Any, probe: Any, reader: ReplayReader) -> Any:
    """One ``_ActiveProbe`` slot built the way ``TraceSession._attach`` builds it."""
    from jalki_core import session as session_module
    from jalki_core.events import EventContext
    from jalki_core.loader import ProbeOptions

    stats = session.stats[probe.name] = session_module.ProbeRunStats(probe.name)
    stats.rung = "tp_btf"
    context = EventContext(probe.name, "tp_btf", cluster=None, clock_offset_ns=session._clock_offset, run_id="bench")
    values: dict[str, Any] = {
        "loaded": ReplayLoaded(probe),
        "reader": reader,
        "context": context,
        "stats": stats,
        "options": ProbeOptions(),
    }
    if hasattr(probe, "record_kinds"):
        values["kinds"] = probe.record_kinds()[0]
    fields = {f.name for f in dataclasses.fields(session_module._ActiveProbe)}
    return session_module._ActiveProbe(**{k: v for k, v in values.items() if k in fields})


def replay(
    workload: Workload, out_path: Path, probes: Sequence[Any] | None = None, emitter: Any = None
) -> dict[str, Any]:
    """Feed ``workload`` through a TraceSession writing to ``out_path``; return counts and CPU time.

    ``probes``/``emitter``: fresh instances (default: :func:`tcp_probes`, :func:`file_emitter`).
    """
    from jalki_core.events import monotonic_to_realtime_offset
    from jalki_core.session import TraceSession

    probes = list(probes) if probes is not None else tcp_probes()
    session = TraceSession(probes, [emitter if emitter is not None else file_emitter(out_path)])
    session._clock_offset = monotonic_to_realtime_offset()
    session._started_at = time.monotonic()
    readers: dict[str, ReplayReader] = {}
    for probe in probes:
        readers[probe.name] = ReplayReader(probe.layout.size)
        session._active.append(_active_probe(session, probe, readers[probe.name]))
    cpu_before = time.process_time()
    wall_before = time.perf_counter()
    for worker in session.workers:  # what TraceSession.start() does first, minus the BPF checks
        worker.start()
    drains = 0
    for batch in workload.batches:
        for name, data in batch.items():
            readers[name].pending = data
        session.drain_once()
        drains += 1
    summary = session.stop()  # final events, flush + fsync of the file
    consumer_cpu_s = time.process_time() - cpu_before
    wall_s = time.perf_counter() - wall_before
    return {
        "drains": drains,
        "consumer_cpu_s": consumer_cpu_s,
        "wall_s": wall_s,
        "records": {p.name: p.records for p in summary.probes},
        "events": {p.name: p.events for p in summary.probes},
        "decode_errors": sum(p.decode_errors for p in summary.probes),
        "derive_errors": sum(p.derive_errors for p in summary.probes),
        "emitters": summary.emitters,
    }


def count_lines_by_type(path: Path) -> dict[str, int]:
    """Events in an NDJSON file by ``type``."""
    import orjson

    counts: dict[str, int] = {}
    with path.open("rb") as stream:
        for line in stream:
            kind = orjson.loads(line).get("type", "?")
            counts[kind] = counts.get(kind, 0) + 1
    return counts


def run_drain_tcp_case(
    tmp: Path,
    seconds: float,
    tag: str,
    rate: int = DEFAULT_RATE,
    keep_files: bool = False,
    profile_dir: Path | None = None,
) -> dict[str, Any]:
    """``seconds`` of churn_full's records at ``rate`` conn/s through jalki-tcp; events/s per consumer core.

    ``profile_dir``: profile the replay (not the record generation) into ``drain_tcp.*`` there.
    """
    result: dict[str, Any] = {"case": "drain_tcp"}
    connections = max(1, int(rate * seconds))
    workload = make_workload(connections, rate)
    out_path = tmp / f"{tag}.ndjson"
    try:
        probes, emitter = tcp_probes(), file_emitter(out_path)  # plugin loading is not the drain's cost
        if profile_dir is None:
            replayed = replay(workload, out_path, probes, emitter)
        else:
            from _profile import profile_this_process

            with profile_this_process(profile_dir, "drain_tcp") as info:
                replayed = replay(workload, out_path, probes, emitter)
            result["profile"] = info
        by_type = count_lines_by_type(out_path)
        lines = sum(by_type.values())
        emitter = next(iter(replayed["emitters"].values()))
        records = sum(workload.records.values())
        received = sum(replayed["records"].values())
        cpu = replayed["consumer_cpu_s"]
        result.update(
            connections=connections,
            produce_rate=rate,
            produced=records,
            received=received,
            records_by_probe=workload.records,
            events_by_type=by_type,
            json_lines_in_file=lines,
            json_file_bytes=out_path.stat().st_size,
            drains=replayed["drains"],
            records_per_batch=round(received / replayed["drains"], 1) if replayed["drains"] else None,
            consumer_cpu_s=round(cpu, 3),
            wall_s=round(replayed["wall_s"], 3),
            emitter_events_dropped=emitter["events_dropped"],
            drops_total=replayed["decode_errors"] + emitter["events_dropped"],
            derive_errors=replayed["derive_errors"],
            unaccounted=records - received,
            lossless=received == records and emitter["events_dropped"] == 0 and replayed["decode_errors"] == 0,
            records_per_cpu_s=round(received / cpu, 1) if cpu else None,
            json_lines_per_cpu_s=round(lines / cpu, 1) if cpu else None,
            json_lines_per_s_wall=round(lines / replayed["wall_s"], 1) if replayed["wall_s"] else None,
        )
        return result
    finally:
        if not keep_files:
            out_path.unlink(missing_ok=True)
