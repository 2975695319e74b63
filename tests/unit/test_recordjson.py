"""The C record encoder (jalki_core.recordjson) writes what the probes' Python decoders write.

For every probe that declares ``record_json``: random records (every field random, addresses of both
families and of neither, owner flag on and off, commands with quotes, backslashes, control bytes,
and non-ASCII bytes that the C side leaves to Python) are decoded by the probe's ``decode`` and
encoded by :class:`RecordEncoder` with the same context; the lines must be the same bytes as orjson
writes for the decoded events, ids and timestamps included.
"""

from __future__ import annotations

import random
import socket
from typing import Any

import orjson
import pytest

from jalki_core.events import EventContext
from jalki_core.plugins import JalkiPlugins
from jalki_core.probe import Probe
from jalki_core.recordjson import RecordEncoder, RecordJson, flag_const, obj, uint

_PLUGINS = JalkiPlugins()
DECLARED = [entry.probe for entry in _PLUGINS.probes_for(_PLUGINS.plugin_names())
            if entry.probe.record_json is not None]

COMMS = [b"churn", b'q"uo\\te', b"tab\there\x01\x1f\x7f", b"x" * 16, b"", b"caf\xc3\xa9", b"bad\xff\xfeutf8",
         b"nul\0after"]


def _random_value(rng: random.Random, name: str, size: int, code: str) -> Any:
    if code == "s":
        if name in ("saddr", "daddr"):
            return rng.choice([bytes(16), bytes([127, 0, 0, 1]) + bytes(12), rng.randbytes(16),
                               socket.inet_pton(socket.AF_INET6, "::ffff:10.0.0.1"),
                               socket.inet_pton(socket.AF_INET6, "::"), bytes([255] * 4) + bytes(12)])
        if name == "comm":
            return rng.choice(COMMS).ljust(16, b"\0")[:16]
        return rng.randbytes(size)
    if name == "family":
        return rng.choice([socket.AF_INET, socket.AF_INET6, 0, 3])
    if name == "flags":
        return rng.getrandbits(12)
    if name in ("oldstate", "state"):
        return rng.choice([0, 1, 7, 12, 13, 99, rng.getrandbits(32)])
    if name == "error":  # mostly errnos with prepared texts, some the Python decoder must write
        return rng.choice([0, 0, 111, 110, 113, 101, 13, 1, 103, 255, 256, 4095, -5, rng.getrandbits(31)])
    if name == "direction":
        return rng.choice([0, 1, 2, rng.getrandbits(32)])
    if name == "ts_ns":
        return rng.choice([rng.getrandbits(40), rng.getrandbits(58), 0, 999_999_999, 1_000_000_000, 1 << 62,
                           (1 << 62) + 1, (1 << 64) - 1])
    bits = size * 8
    value = rng.getrandbits(bits)
    return value - (1 << bits) if code.islower() and code not in "sx" and value >> (bits - 1) else value


def random_records(probe: type[Probe] | Probe, count: int, seed: int) -> bytes:
    rng = random.Random(seed)
    layout = probe.layout
    codes = [c for c in layout.fmt[1:] if c.isalpha() and c != "x"]
    out = bytearray()
    for _ in range(count):
        values = []
        for field, code in zip(layout.field_offsets, codes, strict=True):
            values.append(_random_value(rng, field.name, field.size, code))
        out += layout.struct.pack(*values)
    return bytes(out)


def context(probe: Probe) -> EventContext:
    return EventContext(probe.name, "tp_btf", cluster="c\"1", node="node-ü", clock_offset_ns=1_765_000_000_123_456_789,
                        run_id="0a1b2c3d")


@pytest.mark.parametrize("probe", DECLARED, ids=lambda probe: probe.name)
@pytest.mark.parametrize("seed", range(5))
def test_lines_are_the_bytes_orjson_writes_for_the_decoded_events(probe: Probe, seed: int) -> None:
    batch = random_records(probe, 400, seed)
    expected = b"".join(orjson.dumps(event) + b"\n" for event in probe.decode(batch, context(probe)))
    ctx = context(probe)
    encoder = RecordEncoder(probe.record_json, ctx, probe.decode)  # type: ignore[arg-type]
    lines, count = encoder.encode(batch)
    assert count == 400
    assert lines == expected, _first_difference(lines, expected)
    again, _ = encoder.encode(batch)  # ids go on from the context's counter
    assert orjson.loads(again.splitlines()[0])["id"] == f"0a1b2c3d-{probe.name}-401"


def test_there_is_a_declared_probe() -> None:
    assert "tcp_close" in {probe.name for probe in DECLARED}


def test_batches_of_commands_python_must_decode_keep_order_and_ids() -> None:
    [close] = [probe for probe in DECLARED if probe.name == "tcp_close"]
    layout = close.layout
    records = []
    for index in range(6):
        values = [0] * len(layout.fields)
        values[layout.fields.index("ts_ns")] = index
        values[layout.fields.index("flags")] = 1  # owner known: the command is written
        values[layout.fields.index("comm")] = (b"caf\xc3\xa9" if index % 2 else b"plain").ljust(16, b"\0")
        values[layout.fields.index("saddr")] = bytes(16)
        values[layout.fields.index("daddr")] = bytes(16)
        values[layout.fields.index("pid")] = index
        records.append(layout.struct.pack(*values))
    encoder = RecordEncoder(close.record_json, context(close), close.decode)  # type: ignore[arg-type]
    lines, count = encoder.encode(b"".join(records))
    events = [orjson.loads(line) for line in lines.splitlines()]
    assert count == 6 and [event["process_data"]["pid"] for event in events] == list(range(6))
    assert [event["id"].rsplit("-", 1)[1] for event in events] == [str(n) for n in range(1, 7)]
    assert events[1]["process_data"]["command"] == "café"


def test_a_conditional_member_cannot_come_first() -> None:
    [close] = [probe for probe in DECLARED if probe.name == "tcp_close"]
    spec = RecordJson(close.layout, "x.y", (obj("data", (flag_const("f", True, "flags", 1), uint("p", "pid"))),))
    with pytest.raises(ValueError, match="cannot come first"):
        RecordEncoder(spec, context(close), close.decode)


def _first_difference(a: bytes, b: bytes) -> str:
    for x, y in zip(a.splitlines(), b.splitlines(), strict=False):
        if x != y:
            i = next(i for i in range(min(len(x), len(y))) if x[i] != y[i])
            return f"{x[max(0, i - 60):i + 60]!r}\n{y[max(0, i - 60):i + 60]!r}"
    return "same"


def test_the_session_writes_lines_only_for_what_decode_makes() -> None:
    from jalki_core.session import lines_apply_to

    [close] = [probe for probe in DECLARED if probe.name == "tcp_close"]
    [reset] = [probe for probe in DECLARED if probe.name == "tcp_reset"]
    assert lines_apply_to(close) and lines_apply_to(reset)

    class OwnDecode(type(close)):  # type: ignore[misc]
        def decode(self, batch: bytes, ctx: EventContext) -> list[dict[str, Any]]:
            return []

    class OwnDerive(type(reset)):  # type: ignore[misc]
        def derive(self, events: list[dict[str, Any]], ctx: EventContext) -> list[dict[str, Any]]:
            return []

    assert not lines_apply_to(OwnDecode()) and not lines_apply_to(OwnDerive())
