"""The lines path derives what the decode path derives.

When a session writes jalki-tcp's events as lines in C (``record_json``), the anomalies come from
``derive_records`` on the unpacked records; they must be the same events, ids included, that
``derive`` makes from the decoded events of the same batches: storms of received resets from one
peer and of sent resets from one local port, refused and timed-out connects to one destination
(and failures that do not count), retransmit spikes, all among unrelated traffic, over several
batches and windows, then the windows still open at stop.
"""

from __future__ import annotations

import random
import socket
from typing import Any

import orjson
import pytest
from jalki_tcp import layouts
from jalki_tcp.probes import TcpConnectProbe, TcpResetProbe, TcpRetransmitProbe

from jalki_core.events import EventContext
from jalki_core.probe import Probe
from jalki_core.recordjson import RecordEncoder

PEER = socket.inet_aton("10.9.8.7") + bytes(12)
LOCAL = socket.inet_aton("127.0.0.1") + bytes(12)
PEER6 = socket.inet_pton(socket.AF_INET6, "2001:db8::7")


def record(probe: Probe, rng: random.Random, ts_ns: int, *, hot: bool) -> bytes:
    """One record: a hot one belongs to a storm's group, the others to groups of their own."""
    layout = probe.layout
    values: dict[str, Any] = {name: 0 for name in layout.fields}
    family = socket.AF_INET6 if hot and rng.random() < 0.3 else socket.AF_INET
    values.update(ts_ns=ts_ns, cgroup_id=rng.choice([0, 77]), pid=rng.choice([0, 812, 813]),
                  flags=rng.choice([0, 1]), comm=b"api".ljust(16, b"\0"), family=family, netns=4026531840)
    peer = PEER6 if family == socket.AF_INET6 else PEER
    values["saddr"] = LOCAL if family == socket.AF_INET else socket.inet_pton(socket.AF_INET6, "::1")
    values["daddr"] = peer if hot else rng.randbytes(4) + bytes(12)
    values["sport"] = 8080 if hot else rng.randrange(32768, 61000)
    values["dport"] = 5432 if hot else rng.randrange(1, 65535)
    if isinstance(probe, TcpResetProbe):
        values.update(direction=rng.choice([layouts.RESET_SENT, layouts.RESET_RECEIVED]), state=rng.choice([0, 1, 7]))
    if isinstance(probe, TcpConnectProbe):
        values["error"] = rng.choice([111, 110, 113, 103, 0]) if hot else rng.choice([0, 0, 111])
        values["latency_ns"] = rng.getrandbits(20)
    if isinstance(probe, TcpRetransmitProbe):
        values["state"] = rng.choice([1, 2, 3])
    return layout.struct.pack(*(values[name] for name in layout.fields))


def batches(probe: Probe, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    ts = 5_000_000_000
    out = []
    for _ in range(12):
        batch = bytearray()
        for _ in range(rng.randrange(1, 60)):
            ts += rng.randrange(1, 400_000_000)
            batch += record(probe, rng, ts, hot=rng.random() < 0.5)
        out.append(bytes(batch))
    return out


def context(probe: Probe) -> EventContext:
    return EventContext(probe.name, "tp_btf", cluster=None, node="n1", clock_offset_ns=1_765_000_000_000_000_000,
                        run_id="feedbeef")


def threshold_low(probe: Probe) -> Probe:
    probe.failures_threshold = probe.spike_threshold = probe.storm_threshold = 3  # type: ignore[attr-defined]
    probe.failures_seconds = probe.spike_seconds = probe.storm_seconds = 2.0  # type: ignore[attr-defined]
    return probe


@pytest.mark.parametrize("kind", [TcpConnectProbe, TcpResetProbe, TcpRetransmitProbe], ids=lambda k: k.name)
@pytest.mark.parametrize("seed", range(4))
def test_derive_records_makes_the_anomalies_derive_makes(kind: type[Probe], seed: int) -> None:
    decoded, lined = threshold_low(kind()), threshold_low(kind())
    decoded_ctx, lined_ctx = context(decoded), context(lined)
    assert lined.record_json is not None and lined.derive_records is not None
    encoder = RecordEncoder(lined.record_json, lined_ctx, lined.decode)
    expected: list[bytes] = []
    got: list[bytes] = []
    for batch in batches(kind(), seed):
        events = decoded.decode(batch, decoded_ctx)
        expected += [orjson.dumps(event) for event in events + decoded.derive(events, decoded_ctx)]
        lines, _ = encoder.encode(batch)
        derived = lined.derive_records(list(lined.layout.struct.iter_unpack(batch)), lined_ctx)
        got += lines.splitlines() + [orjson.dumps(event) for event in derived]
    expected += [orjson.dumps(event) for event in decoded.final_events({}, decoded_ctx)]
    got += [orjson.dumps(event) for event in lined.final_events({}, lined_ctx)]
    anomalies = [line for line in expected if b'"kernel.network.' in line]
    assert anomalies, "the batches made no anomaly: the comparison would prove nothing"
    assert got == expected
