"""Every byte of every jalki-tcp record is what the traffic made: no kernel memory reaches user space.

One traffic run per rung (the best rung, and the classic tracepoint rung whose
programs read sockets through bpf_probe_read_kernel) makes, over IPv4 and IPv6
in a namespace that has only loopback, one connection of each kind the TCP
probes report: established and closed, refused (a reset sent with no socket and
one received), SYN dropped until the kernel retransmits (then closed by the
application), and a connect() that fails before SYN_SENT (no route to
192.0.2.1 / 2001:db8::77). Each record is then checked against that ground
truth field by field, on its raw bytes: addresses byte for byte (the unused 12
bytes of an IPv4 address zero, an unspecified source all zero), padding zero,
``comm`` zero after its NUL.

Every connect() goes through libc with a 128-byte sockaddr whose bytes past the
real address are a poison pattern: the kernel copies all of them onto its stack
(``__sys_connect``'s ``sockaddr_storage``), where a program that runs later on
that stack may find them. A record carrying any run of poison, or an aligned
word that looks like a kernel address, shows a byte the programs never wrote.

What an unwritten byte holds is whatever the kernel (or the program's own
earlier run) left in that stack slot; no test can choose it. Measured with the
objects from before the zeroed-record rule: the classic-tracepoint reset
records carried kernel text addresses (caught here); the connect() failing
before SYN_SENT read one byte of an IPv6 source, and on this kernel the slot
happened to hold tcp_v6_connect's copy of the same address, so its record came
out right by luck (the bound source ``::1`` case is there to catch it wherever
the slot holds anything else).
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import json
import os
import socket
import struct
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
from jalki_tcp import layouts
from netns_helpers import NetNs, tracing
from tcp_helpers import COMMAND, Pick, drop_input_rule, validate

from jalki_core.events import OWNER_KNOWN, Event, EventContext
from jalki_core.probe import Probe
from jalki_core.recordjson import RecordEncoder

pytestmark = pytest.mark.kernel

CLOSED_PORT = 9
"""Nothing listens there: a connect is refused (RST)."""
DROPPED_PORT = 7
"""Inbound segments to this port are dropped: the SYN is retransmitted."""
UNROUTED_PORT = 443
HOSTS: dict[int, tuple[str, str]] = {
    # family: (loopback address, an address with no route in a namespace that has only lo)
    socket.AF_INET: ("127.0.0.1", "192.0.2.1"),
    socket.AF_INET6: ("::1", "2001:db8::77"),
}
POISON = 0xA5
SOCKADDR_STORAGE = 128
CLIENT_SENDS = b"ping"
SERVER_SENDS = b"pong-pong"

ENETUNREACH, ECONNREFUSED, ETIMEDOUT = 101, 111, 110
SYN_SENT, FIN_WAIT2, LAST_ACK = 2, 5, 9
HEADER_COMM = slice(24, 40)
TUPLE_PAD = slice(78, 80)
TCP_PROBES = ("tcp_connect", "tcp_close", "tcp_reset", "tcp_retransmit_skb")


# ---------------------------------------------------------------------------
# traffic (run inside the namespace: python test_record_bytes.py)
# ---------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)


def poisoned_sockaddr(family: int, host: str, port: int) -> bytes:
    """A sockaddr_in / sockaddr_in6 for host:port, padded with poison to a full sockaddr_storage."""
    addr = socket.inet_pton(family, host)
    if family == socket.AF_INET6:
        head = struct.pack("=H", family) + struct.pack("!HI", port, 0) + addr + struct.pack("=I", 0)
    else:
        head = struct.pack("=H", family) + struct.pack("!H", port) + addr + bytes(8)
    return head + bytes([POISON]) * (SOCKADDR_STORAGE - len(head))


def poisoned_connect(sock: socket.socket, host: str, port: int) -> int:
    """connect() through libc with a poisoned 128-byte address; the errno, 0 on success."""
    buf = ctypes.create_string_buffer(poisoned_sockaddr(sock.family, host, port), SOCKADDR_STORAGE)
    if _libc.connect(sock.fileno(), buf, SOCKADDR_STORAGE) == 0:
        return 0
    return ctypes.get_errno()


def _tcp_info(sock: socket.socket) -> bytes:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)


def _wait(what: str, done: Any, limit: float = 30) -> None:
    deadline = time.monotonic() + limit
    while not done():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.01)


def traffic_for(family: int) -> dict[str, Any]:
    """Each kind of connection once over ``family``; what the kernel said of each."""
    local, unrouted = HOSTS[family]
    report: dict[str, Any] = {}
    # established, data both ways, closed (the client half-closes first and waits for FIN_WAIT2,
    # so the client's socket leaves FIN_WAIT2 and the server's LAST_ACK for CLOSE)
    with socket.socket(family) as listener:
        listener.bind((local, 0))
        listener.listen(1)
        server_port = listener.getsockname()[1]
        client = socket.socket(family)
        assert poisoned_connect(client, local, server_port) == 0
        conn, _ = listener.accept()
        client.sendall(CLIENT_SENDS)
        assert conn.recv(len(CLIENT_SENDS), socket.MSG_WAITALL) == CLIENT_SENDS
        conn.sendall(SERVER_SENDS)
        assert client.recv(len(SERVER_SENDS), socket.MSG_WAITALL) == SERVER_SENDS
        client_port = client.getsockname()[1]
        client.shutdown(socket.SHUT_WR)
        _wait("FIN_WAIT2", lambda: _tcp_info(client)[0] == FIN_WAIT2)
        assert conn.recv(1) == b""
        conn.close()
        assert client.recv(1) == b""
        client.close()
        report["established"] = {"sport": client_port, "dport": server_port}
    # refused
    with socket.socket(family) as sock:
        report["refused"] = {"error": poisoned_connect(sock, local, CLOSED_PORT), "sport": sock.getsockname()[1]}
    # failing before SYN_SENT: from a socket bound to the loopback address (the record's source is
    # that address, all 16 bytes of it), and from an unbound one (the source is unspecified)
    with socket.socket(family) as sock:
        sock.bind((local, 0))
        report["unrouted_bound"] = {"error": poisoned_connect(sock, unrouted, UNROUTED_PORT),
                                    "sport": sock.getsockname()[1]}
    with socket.socket(family) as sock:
        report["unrouted"] = {"error": poisoned_connect(sock, unrouted, UNROUTED_PORT),
                              "sport": sock.getsockname()[1]}
    return report


def traffic() -> dict[str, Any]:
    """Both families; the SYN-dropped connects of both run at once (the first retransmit takes ~1 s)."""
    reports = {family: traffic_for(family) for family in HOSTS}
    dropped = {}
    for family, (local, _) in HOSTS.items():
        sock = socket.socket(family)
        sock.setblocking(False)
        first = poisoned_connect(sock, local, DROPPED_PORT)
        dropped[family] = (sock, first)
    for family, (sock, first) in dropped.items():
        # the kernel says the SYN was retransmitted (tcpi_retransmits) before the socket is closed
        _wait("a SYN retransmit", lambda s=sock: _tcp_info(s)[2] > 0)
        reports[family]["dropped"] = {"first": first, "sport": sock.getsockname()[1]}
        sock.close()
    return {"pid": os.getpid(), "families": {str(f): r for f, r in reports.items()}}


# ---------------------------------------------------------------------------
# capturing raw records
# ---------------------------------------------------------------------------


def capturing(probe: Probe) -> Probe:
    """``probe`` (same attributes and ladder) keeping a copy of every raw batch it decodes."""
    base = type(probe)
    batches: list[bytes] = []

    def decode(self: Probe, batch: bytes, ctx: EventContext) -> list[Event]:
        batches.append(bytes(batch))
        return base.decode(self, batch, ctx)

    variant = copy.copy(probe)
    variant.__class__ = type(f"{base.__name__}Raw", (base,), {"decode": decode})
    variant.__dict__["raw_batches"] = batches
    return variant


def raw_records(probe: Probe) -> list[bytes]:
    """The records a capturing probe received, one bytes object each."""
    size = probe.layout.size
    data = b"".join(probe.__dict__["raw_batches"])
    assert len(data) % size == 0
    return [data[i:i + size] for i in range(0, len(data), size)]


def check_lines_written_in_c(probe: Probe) -> None:
    """The lines the C encoder writes (``record_json``) for every record the kernel made in this session
    are the bytes orjson writes for the probe's own decoder's events (random records are in
    tests/unit/test_recordjson.py; these are the kernel's)."""
    base = type(probe).__mro__[1]  # the probe's class, under the capturing variant
    if base.record_json is None:
        return
    data = b"".join(probe.__dict__["raw_batches"])

    def context() -> EventContext:
        return EventContext(probe.name, "tp_btf", node="node-1", clock_offset_ns=1_765_000_000_000_000_000,
                            run_id="cafe0001")

    def decode(batch: bytes, ctx: EventContext) -> list[Event]:
        return base.decode(probe, batch, ctx)  # type: ignore[no-any-return]

    lines, count = RecordEncoder(base.record_json, context(), decode).encode(data)
    expected = b"".join(orjson.dumps(event) + b"\n" for event in base.decode(probe, data, context()))
    assert count == len(data) // probe.layout.size
    assert lines == expected


def fields(probe: Probe, raw: bytes) -> dict[str, Any]:
    return dict(zip(probe.layout.fields, probe.layout.struct.unpack(raw), strict=True))


# ---------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------


def check_written(raw: bytes) -> None:
    """Bytes any TCP record must have: padding zero, comm zero after its NUL, IPv4 tails zero."""
    assert raw[TUPLE_PAD] == b"\0\0", raw.hex()
    comm = raw[HEADER_COMM]
    nul = comm.find(b"\0")
    assert nul < 0 or comm[nul:] == bytes(len(comm) - nul), raw.hex()
    family = struct.unpack_from("<H", raw, 76)[0]
    assert family in (socket.AF_INET, socket.AF_INET6), raw.hex()
    if family == socket.AF_INET:
        assert raw[44:56] == bytes(12) and raw[60:72] == bytes(12), raw.hex()  # saddr[4:], daddr[4:]


def check_no_stray_bytes(raw: bytes) -> None:
    """No poison and no kernel address anywhere in a record of our traffic."""
    assert bytes([POISON]) * 4 not in raw, raw.hex()
    for (word,) in struct.iter_unpack("<Q", raw):
        assert word < 0xFFFF800000000000, f"kernel address {word:#x} in {raw.hex()}"


def addr(family: int, host: str) -> bytes:
    return socket.inet_pton(family, host).ljust(16, b"\0")


def tuple_of(family: int, src: str, sport: int, dst: str, dport: int) -> dict[str, Any]:
    return {"family": family, "saddr": addr(family, src), "sport": sport, "daddr": addr(family, dst),
            "dport": dport}


def check_owner(record: dict[str, Any], pid: int | None) -> None:
    """The header names the traffic process, or (``pid`` None) nobody, with every byte zero."""
    if pid is None:
        assert (record["pid"], record["flags"] & OWNER_KNOWN, record["cgroup_id"]) == (0, 0, 0), record
        assert record["comm"] == bytes(16), record
    else:
        assert record["pid"] == pid and record["flags"] & OWNER_KNOWN, record
        assert record["comm"] == COMMAND.encode().ljust(16, b"\0"), record
        assert record["cgroup_id"] > 0, record


def matching(records: list[dict[str, Any]], **expected: Any) -> list[dict[str, Any]]:
    return [r for r in records if all(r[k] == v for k, v in expected.items())]


@contextmanager
def bracket() -> Iterator[list[int]]:
    """CLOCK_MONOTONIC before and after the body (bpf_ktime_get_ns() is that clock)."""
    times = [time.monotonic_ns()]
    yield times
    times.append(time.monotonic_ns())


def run_traffic(netns: NetNs) -> dict[str, Any]:
    result = netns.run(sys.executable, str(Path(__file__).resolve()))
    report: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return report


def test_every_tcp_record_byte_is_what_the_traffic_made(netns: NetNs, pick: Pick) -> None:
    netns.nft(drop_input_rule(f"tcp dport {DROPPED_PORT}"))
    probes = {probe.name: capturing(probe) for probe in pick(*TCP_PROBES)}
    with bracket() as times, tracing(list(probes.values())) as trace:
        report = run_traffic(netns)
    start, end = times
    pid = report["pid"]

    # every record of the session, ours or not: what every record must have
    ours: dict[str, list[dict[str, Any]]] = {}
    for name, probe in probes.items():
        ours[name] = []
        for raw in raw_records(probe):
            check_written(raw)
            record = fields(probe, raw)
            if record["netns"] == netns.inode:
                check_no_stray_bytes(raw)
                assert start < record["ts_ns"] < end, record
                ours[name].append(record)
    events = trace.events(netns=netns.inode)
    for probe in probes.values():
        check_lines_written_in_c(probe)
    for event in events:
        validate(event)
    expected_attach = {"tracepoint"} if pick.rung == "tracepoint" else {"tp_btf", "fexit"}  # type: ignore[attr-defined]
    assert events and {e["attach"] for e in events} <= expected_attach

    connects, closes, resets, retransmits = (ours[name] for name in TCP_PROBES)
    expected_connects = expected_closes = expected_resets = 0
    for family_key, got in report["families"].items():
        family = int(family_key)
        local, unrouted = HOSTS[family]
        unspecified = "::" if family == socket.AF_INET6 else "0.0.0.0"
        est, refused, dropped = got["established"], got["refused"], got["dropped"]
        unreached, unreached_bound = got["unrouted"], got["unrouted_bound"]
        assert (refused["error"], unreached["error"], unreached_bound["error"]) == (
            ECONNREFUSED, ENETUNREACH, ENETUNREACH), got
        assert unreached["sport"] == 0 and unreached_bound["sport"] > 0, got
        assert dropped["first"] == 115, got  # EINPROGRESS

        # tcp_connect: one record per attempt, tuple and outcome as the kernel had them
        for attempt, src, dst, dport, error, flags in (
            (est, local, local, est["dport"], 0, 0),
            (refused, local, local, CLOSED_PORT, ECONNREFUSED, 0),
            (unreached_bound, local, unrouted, UNROUTED_PORT, ENETUNREACH, layouts.SYNC_FAILURE),
            (unreached, unspecified, unrouted, UNROUTED_PORT, ENETUNREACH, layouts.SYNC_FAILURE),
            (dropped, local, local, DROPPED_PORT, ETIMEDOUT, layouts.ABANDONED),
        ):
            [record] = matching(connects, **tuple_of(family, src, attempt["sport"], dst, dport))
            check_owner(record, pid)
            assert (record["error"], record["flags"] & ~OWNER_KNOWN) == (error, flags), record
            assert 0 < record["latency_ns"] < end - start, record
            expected_connects += 1
        sync_events = [e for e in events
                       if e["type"] == "kernel.tcp.connect" and e["network_data"]["dst_ip"] == unrouted]
        assert sorted((e["network_data"]["src_ip"], e["network_data"]["src_port"]) for e in sync_events) == sorted(
            [(unspecified, 0), (local, unreached_bound["sport"])])

        # tcp_close: both ends of the established connection
        for sport, dport, oldstate, sent, received in (
            (est["sport"], est["dport"], FIN_WAIT2, CLIENT_SENDS, SERVER_SENDS),
            (est["dport"], est["sport"], LAST_ACK, SERVER_SENDS, CLIENT_SENDS),
        ):
            [record] = matching(closes, **tuple_of(family, local, sport, local, dport))
            check_owner(record, pid)
            assert record["flags"] & ~OWNER_KNOWN == 0, record  # birth seen
            assert (record["oldstate"], record["bytes_sent"], record["bytes_received"]) == (
                oldstate, len(sent), len(received)), record
            assert 0 < record["duration_ns"] < end - start, record
            expected_closes += 1

        # tcp_reset: the reset the closed port sent (no socket: no state, no owner; the tuple from
        # that end) and the one the connecting socket received in SYN_SENT
        [sent_rst] = matching(resets, **tuple_of(family, local, CLOSED_PORT, local, refused["sport"]))
        check_owner(sent_rst, None)
        assert (sent_rst["state"], sent_rst["direction"], sent_rst["_pad"]) == (0, layouts.RESET_SENT, 0)
        [received_rst] = matching(resets, **tuple_of(family, local, refused["sport"], local, CLOSED_PORT))
        check_owner(received_rst, pid)
        assert (received_rst["state"], received_rst["direction"], received_rst["_pad"]) == (
            SYN_SENT, layouts.RESET_RECEIVED, 0)
        expected_resets += 2

        # tcp_retransmit_skb: the dropped SYN, retransmitted in SYN_SENT
        mine = matching(retransmits, **tuple_of(family, local, dropped["sport"], local, DROPPED_PORT))
        assert mine, retransmits
        for record in mine:
            check_owner(record, pid)
            assert record["state"] == SYN_SENT, record

    # nothing else in the namespace made a record
    assert (len(connects), len(closes), len(resets)) == (expected_connects, expected_closes, expected_resets)
    assert all(r["dport"] == DROPPED_PORT for r in retransmits), retransmits
    assert trace.summary is not None
    assert all(stats.dropped == 0 for stats in trace.summary.probes), trace.summary.probes


def test_poisoned_sockaddr_is_a_valid_address_with_poison_after_it() -> None:
    """The traffic's address: what the kernel reads as the sockaddr, then only poison."""
    raw = poisoned_sockaddr(socket.AF_INET6, "2001:db8::77", UNROUTED_PORT)
    assert len(raw) == SOCKADDR_STORAGE
    assert struct.unpack_from("=H", raw)[0] == socket.AF_INET6
    assert struct.unpack_from("!H", raw, 2)[0] == UNROUTED_PORT
    assert raw[8:24] == socket.inet_pton(socket.AF_INET6, "2001:db8::77")
    assert raw[28:] == bytes([POISON]) * (SOCKADDR_STORAGE - 28)
    raw4 = poisoned_sockaddr(socket.AF_INET, "192.0.2.1", 9)
    assert raw4[4:8] == socket.inet_aton("192.0.2.1") and raw4[16:] == bytes([POISON]) * 112


def main() -> None:
    argparse.ArgumentParser(description="traffic for test_record_bytes (run in a namespace)").parse_args()
    print(json.dumps(traffic()), flush=True)


if __name__ == "__main__":
    main()
