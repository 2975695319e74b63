"""EV-1 … EV-10: the events jalki emits (specs/events.md, specs/event.schema.json).

Without root, events are made the way a probe author tests a probe: raw records
packed with the probe's layout, fed through ``jalki_core.testing.FakeRingBuffer``
and decoded by the jalki-tcp probes. With root (``@pytest.mark.kernel``), the
NDJSON that a real ``jalki run`` prints for loopback traffic is checked too.
"""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from conformance_support import Json, installed_plugins, value_numbers
from jalki_tcp.probes import TcpCloseProbe, TcpConnectProbe, TcpRetransmitProbe

from jalki_core.events import EventContext
from jalki_core.kb import parse_timestamp
from jalki_core.probe import Probe
from jalki_core.testing import FakeRingBuffer, decode_all, event_validator, make_event_context, start_jalki_run

SEVERITIES = ["debug", "info", "warning", "error", "critical"]
OWNER = {"pid": 4242, "flags": 1, "comm": b"api-server", "cgroup_id": 99}
NO_OWNER = {"pid": 0, "flags": 0, "comm": b"swapper/0", "cgroup_id": 0}
NETNS = 4026531840
ID_RE = re.compile(r"^(?P<run>[0-9a-f]{8})-(?P<probe>[a-z0-9_]+)-(?P<sequence>[0-9]+)$")
TIMESTAMP_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{9}Z$")


def v4(sport: int = 40000, dport: int = 5432) -> dict[str, Any]:
    return {"saddr": socket.inet_pton(socket.AF_INET, "10.42.0.5") + b"\0" * 12,
            "daddr": socket.inet_pton(socket.AF_INET, "10.42.2.8") + b"\0" * 12,
            "sport": sport, "dport": dport, "family": socket.AF_INET, "netns": NETNS}


def v6(sport: int = 50000, dport: int = 9) -> dict[str, Any]:
    return {"saddr": socket.inet_pton(socket.AF_INET6, "::1"),
            "daddr": socket.inet_pton(socket.AF_INET6, "2001:db8::8"),
            "sport": sport, "dport": dport, "family": socket.AF_INET6, "netns": NETNS}


def decode(probe: Probe, records: list[dict[str, Any]], ctx: EventContext | None = None) -> list[Json]:
    ring = FakeRingBuffer(probe.layout)
    for record in records:
        ring.push_values(**record)
    events: list[Json] = decode_all(probe, ring, ctx or make_event_context(probe.name, probe.ladder[0].name))
    return events


def one_of_each() -> list[Json]:
    """A successful and a failed connect, a close and a retransmit, IPv4 and IPv6."""
    return [
        *decode(TcpConnectProbe(), [{"ts_ns": 1, "latency_ns": 80_000, "error": 0, **OWNER, **v4()},
                                    {"ts_ns": 2, "latency_ns": 50_000, "error": 111, **OWNER, **v6()}]),
        *decode(TcpCloseProbe(), [{"ts_ns": 3, "duration_ns": 9, "bytes_sent": 1, "bytes_received": 2,
                                   "oldstate": 9, **OWNER, **v4()}]),
        *decode(TcpRetransmitProbe(), [{"ts_ns": 4, "state": 1, **NO_OWNER, **v6()}]),
    ]


def test_decoded_events_are_valid_against_the_envelope_and_the_probe_fragment() -> None:
    validate = event_validator()
    for event in one_of_each():
        validate(event)
        assert set(event) >= {"id", "timestamp", "source", "type", "severity", "cluster", "node", "attach"}


def test_the_probe_fragment_not_the_envelope_defines_probe_types() -> None:
    [close] = decode(TcpCloseProbe(), [{"ts_ns": 3, "duration_ns": 9, "bytes_sent": 1, "bytes_received": 2,
                                        "oldstate": 9, **OWNER, **v4()}])
    del close["data"]["tcp_state"]
    event_validator(probes=())(close)  # the core envelope knows nothing of TCP
    with pytest.raises(jsonschema.ValidationError, match="tcp_state"):
        event_validator()(close)


# EV-1 -----------------------------------------------------------------------------------------------------------

def test_ids_are_run_probe_sequence_and_unique() -> None:
    ctx = EventContext("tcp_connect", "tp_btf")
    events = decode(TcpConnectProbe(), [{"ts_ns": i, "error": 0, **OWNER, **v4(40000 + i)} for i in range(200)], ctx)
    parts = [ID_RE.match(event["id"]) for event in events]
    assert all(parts)
    assert {part["run"] for part in parts if part} == {ctx.run_id}
    assert {part["probe"] for part in parts if part} == {"tcp_connect"}
    assert [int(part["sequence"]) for part in parts if part] == list(range(1, 201))
    assert len({event["id"] for event in events}) == 200
    assert re.fullmatch(r"[0-9a-f]{8}", EventContext("tcp_close", "tp_btf").run_id)
    assert EventContext("tcp_close", "tp_btf").run_id != ctx.run_id  # random per run


# EV-2 -----------------------------------------------------------------------------------------------------------

def test_timestamps_are_rfc3339_utc_nanoseconds_from_kernel_time() -> None:
    [event] = decode(TcpConnectProbe(), [{"ts_ns": 1_000_000_123, "error": 0, **OWNER, **v4()}],
                     make_event_context("tcp_connect", "tp_btf"))  # kernel time 0 is 2023-11-14T22:13:20Z
    assert event["timestamp"] == "2023-11-14T22:13:21.000000123Z"


def test_kernel_monotonic_time_maps_to_now() -> None:
    ctx = EventContext("tcp_connect", "tp_btf")  # samples the CLOCK_MONOTONIC → UTC offset now
    kernel_now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    [event] = decode(TcpConnectProbe(), [{"ts_ns": kernel_now, "error": 0, **OWNER, **v4()}], ctx)
    assert TIMESTAMP_RE.match(event["timestamp"])
    stamp = parse_timestamp(event["timestamp"])
    assert stamp is not None and abs(stamp - time.time_ns()) < 50_000_000


# EV-3 -----------------------------------------------------------------------------------------------------------

def test_source_type_and_attach() -> None:
    ladders = {probe["name"]: probe["ladder"] for row in installed_plugins() for probe in row["probes"]}
    for probe in (TcpConnectProbe(), TcpCloseProbe(), TcpRetransmitProbe()):
        assert [rung.name for rung in probe.ladder] == ladders[probe.name]
        for rung in ladders[probe.name]:
            events = decode(probe, [{"ts_ns": 1, **OWNER, **v4()}], make_event_context(probe.name, rung))
            for event in events:
                assert event["source"] == f"jalki/{probe.name}"
                assert event["type"] in probe.event_types and re.fullmatch(r"kernel\.tcp\.[a-z0-9_]+", event["type"])
                assert event["attach"] == rung


# EV-4, EV-5 -----------------------------------------------------------------------------------------------------

def test_severities() -> None:
    success, failure, close, retransmit = one_of_each()
    assert [e["severity"] for e in (success, failure, close, retransmit)] == ["info", "error", "info", "warning"]
    assert all(e["severity"] in SEVERITIES for e in (success, failure, close, retransmit))


@pytest.mark.parametrize("code", [111, 110, 113, 101, 103, 99])
def test_failed_connect_carries_errno_name_and_strerror(code: int) -> None:
    [event] = decode(TcpConnectProbe(), [{"ts_ns": 1, "error": code, **OWNER, **v4()}])
    assert (event["outcome"], event["severity"]) == ("failure", "error")
    assert event["error"] == {"code": errno.errorcode[code], "message": os.strerror(code)}
    event_validator()(event)


def test_outcome_only_where_the_kernel_decides_one() -> None:
    success, _, close, retransmit = one_of_each()
    assert success["outcome"] == "success" and "error" not in success
    assert "outcome" not in close and "outcome" not in retransmit
    broken = {**success, "outcome": "failure"}
    with pytest.raises(jsonschema.ValidationError, match="'error' is a required property"):
        event_validator(probes=())(broken)


# EV-6 -----------------------------------------------------------------------------------------------------------

def test_cluster_and_node() -> None:
    [event] = decode(TcpConnectProbe(), [{"ts_ns": 1, **OWNER, **v4()}], EventContext("tcp_connect", "tp_btf"))
    assert (event["cluster"], event["node"]) == (None, socket.gethostname())
    [event] = decode(TcpConnectProbe(), [{"ts_ns": 1, **OWNER, **v4()}],
                     EventContext("tcp_connect", "tp_btf", cluster="prod-eu"))
    assert event["cluster"] == "prod-eu"


# EV-7, EV-8 -----------------------------------------------------------------------------------------------------

def test_network_data_and_correlation_keys_ipv4() -> None:
    success = one_of_each()[0]
    assert success["network_data"] == {"src_ip": "10.42.0.5", "dst_ip": "10.42.2.8", "src_port": 40000,
                                       "dst_port": 5432, "protocol": "tcp", "family": "ipv4", "netns": NETNS}
    assert success["correlation_keys"] == ["10.42.0.5:40000->10.42.2.8:5432"]


def test_network_data_and_correlation_keys_ipv6_in_brackets() -> None:
    failure = one_of_each()[1]
    assert failure["network_data"] == {"src_ip": "::1", "dst_ip": "2001:db8::8", "src_port": 50000, "dst_port": 9,
                                       "protocol": "tcp", "family": "ipv6", "netns": NETNS}
    assert failure["correlation_keys"] == ["[::1]:50000->[2001:db8::8]:9"]


# EV-9 -----------------------------------------------------------------------------------------------------------

def test_process_data_names_the_owner_or_is_null() -> None:
    success, _, close, retransmit = one_of_each()
    assert success["process_data"] == close["process_data"] == {"pid": 4242, "command": "api-server",
                                                                "cgroup_id": 99}
    assert retransmit["process_data"] == {"pid": None, "command": None, "cgroup_id": None}  # never pid 0


# EV-10 ----------------------------------------------------------------------------------------------------------

def test_tcp_states_are_kernel_names_and_numbers() -> None:
    numbers = value_numbers("tcp_state")
    assert (numbers["CLOSE"], numbers["CLOSE_WAIT"]) == (7, 8)
    retransmits = decode(TcpRetransmitProbe(), [{"ts_ns": 1, "state": n, **OWNER, **v4()} for n in numbers.values()])
    assert [(e["data"]["tcp_state"], e["data"]["tcp_state_number"]) for e in retransmits] == list(numbers.items())
    closes = decode(TcpCloseProbe(), [{"ts_ns": 1, "oldstate": n, **OWNER, **v4()} for n in (1, 4, 5, 8, 9)])
    assert [e["data"]["tcp_state"] for e in closes] == ["ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2", "CLOSE_WAIT",
                                                        "LAST_ACK"]


# A real run (root) ----------------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _start(*args: str) -> subprocess.Popen[str]:
    return start_jalki_run(*args)


def _traffic(port: int) -> Iterator[tuple[str, int]]:
    """An accepted IPv4 connection with a little data, and an IPv6 connect refused; yields (kind, client port)."""
    with socket.create_server(("127.0.0.1", port)) as server:
        client = socket.create_connection(("127.0.0.1", port), timeout=5)
        accepted, _ = server.accept()
        client.sendall(b"ping")
        assert accepted.recv(4) == b"ping"
        yield "accepted", client.getsockname()[1]
        client.close()
        accepted.close()
    refused = socket.socket(socket.AF_INET6)
    refused.bind(("::1", 0))
    yield "refused", refused.getsockname()[1]
    with pytest.raises(ConnectionRefusedError):
        refused.connect(("::1", port))
    refused.close()


@pytest.mark.kernel
def test_events_of_a_real_run(tmp_path: Path) -> None:
    port = _free_port()
    summary_path = tmp_path / "summary.json"
    started = time.time_ns()
    proc = _start("--plugin", "tcp", "--seconds", "4", "--port", str(port), "--cluster", "conformance",
                  "--summary-json", str(summary_path))
    clients = dict(_traffic(port))
    stdout, stderr = proc.communicate(timeout=60)
    ended = time.time_ns()
    assert proc.returncode == 0, stderr
    events = [json.loads(line) for line in stdout.splitlines()]
    validate = event_validator()
    for event in events:
        validate(event)
    summary = {probe["probe"]: probe["attach"] for probe in json.loads(summary_path.read_text())["probes"]}
    # EV-1: one run id, unique ids; EV-2: the run's wall-clock time; EV-3: the rung each probe ran on; EV-6
    runs = set()
    for event in events:
        match = ID_RE.match(event["id"])
        assert match and event["source"] == f"jalki/{match['probe']}"
        runs.add(match["run"])
        stamp = parse_timestamp(event["timestamp"])
        assert stamp is not None and started <= stamp <= ended
        assert event["attach"] == summary[match["probe"]]
        assert (event["cluster"], event["node"]) == ("conformance", socket.gethostname())
    assert len(runs) == 1 and len({event["id"] for event in events}) == len(events)
    netns = Path("/proc/self/ns/net").stat().st_ino
    me = {"pid": os.getpid(), "command": Path("/proc/self/comm").read_text().strip()}
    [accepted] = [e for e in events if e["type"] == "kernel.tcp.connect"
                  and e["network_data"]["src_port"] == clients["accepted"]]
    assert (accepted["outcome"], accepted["severity"]) == ("success", "info")
    assert accepted["correlation_keys"] == [f"127.0.0.1:{clients['accepted']}->127.0.0.1:{port}"]
    assert accepted["network_data"] == {"src_ip": "127.0.0.1", "dst_ip": "127.0.0.1", "src_port": clients["accepted"],
                                        "dst_port": port, "protocol": "tcp", "family": "ipv4", "netns": netns}
    assert {key: accepted["process_data"][key] for key in me} == me
    [refused] = [e for e in events if e["type"] == "kernel.tcp.connect"
                 and e["network_data"]["src_port"] == clients["refused"]]
    assert (refused["outcome"], refused["severity"]) == ("failure", "error")
    assert refused["error"] == {"code": "ECONNREFUSED", "message": os.strerror(errno.ECONNREFUSED)}
    assert refused["correlation_keys"] == [f"[::1]:{clients['refused']}->[::1]:{port}"]
    assert refused["network_data"]["family"] == "ipv6" and refused["network_data"]["netns"] == netns
    assert {key: refused["process_data"][key] for key in me} == me
    closes = [e for e in events if e["type"] == "kernel.tcp.close"]
    assert {e["network_data"]["src_port"] for e in closes} >= {clients["accepted"], port}
    assert all(e["severity"] == "info" and e["data"]["tcp_state"] in value_numbers("tcp_state") for e in closes)
