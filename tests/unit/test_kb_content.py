"""The built-in KB's content agrees with the real probes, events and kernel names."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from jalki_tcp.probes import TcpCloseProbe, TcpConnectProbe, TcpResetProbe, TcpRetransmitProbe, TcpRttProbe
from jalki_tcp.tcp_states import TCP_STATES
from kb_inventory import ENTRIES_PER_LAYER, ENTRY_COUNT

from jalki_core.events import Event
from jalki_core.kb import default_kb
from jalki_core.kb.conditions import Window, get_path
from jalki_core.plugins import JalkiPlugins
from jalki_core.testing import FakeRingBuffer, decode_all, make_event_context, probe_event_schemas

REPO = Path(__file__).resolve().parents[2]
KB = default_kb()  # the built-in KB plus every installed plugin's documents
EVENT_SCHEMA = json.loads((REPO / "specs" / "event.schema.json").read_text())
TCP_EVENT_SCHEMA = json.loads((REPO / "plugins" / "jalki_tcp" / "jalki_tcp" / "events.schema.json").read_text())


def test_inventory_layers_and_counts() -> None:
    per_layer = {layer: [entry.id for entry in KB.in_layer(layer)] for layer in KB.layers()}
    assert {layer: len(ids) for layer, ids in per_layer.items()} == ENTRIES_PER_LAYER
    assert sum(map(len, per_layer.values())) == ENTRY_COUNT == 34
    assert per_layer["tcp"] == ["tcp_close", "tcp_connect", "tcp_probe", "tcp_receive_reset", "tcp_recvmsg",
                                "tcp_retransmit_skb", "tcp_send_reset", "tcp_sendmsg", "tcp_state_change"]


def test_implemented_entries_match_the_installed_probes() -> None:
    plugins = JalkiPlugins()
    implemented = {entry.id: entry for entry in KB if entry.implemented_by is not None}
    assert sorted(implemented) == ["block_io_error", "block_rq_complete", "cpu_ipc", "cpu_ipc_degradation",
                                   "do_sys_openat2", "oom_mark_victim",
                                   "process_exec", "process_exit",
                                   "tcp_close", "tcp_connect", "tcp_connect_failures", "tcp_probe",
                                   "tcp_receive_reset", "tcp_retransmit_skb", "tcp_retransmit_spike",
                                   "tcp_rst_storm", "tcp_rtt_degradation", "tcp_send_reset"]
    for entry in implemented.values():
        assert entry.implemented_by is not None
        registered = plugins.probes.get(entry.implemented_by.probe)
        assert registered is not None, entry.id
        assert registered.owner.plugin == entry.implemented_by.plugin
        assert entry.event_type in registered.probe.event_types
        assert entry.attach == tuple(rung.name for rung in registered.probe.ladder)
    assert [implemented[name].event_type for name in ("tcp_connect", "tcp_close", "tcp_retransmit_skb")] == [
        "kernel.tcp.connect", "kernel.tcp.close", "kernel.tcp.retransmit"]


def test_tcp_states_are_kernel_numbered_like_the_plugin() -> None:
    tcp_state = KB.vocabulary.value_sets["tcp_state"]
    assert dict(tcp_state.numbers) == {name: number for number, name in TCP_STATES.items()}
    assert tcp_state.numbers["CLOSE"] == 7 and tcp_state.numbers["CLOSE_WAIT"] == 8
    assert tcp_state.names == tuple(TCP_EVENT_SCHEMA["$defs"]["tcp_state"]["enum"])
    assert KB.vocabulary.value_sets["signal"].numbers["SIGKILL"] == 9


def _schema_paths(schema: dict[str, Any], prefix: str = "") -> set[str]:
    paths = set()
    for name, sub in schema.get("properties", {}).items():
        paths.add(prefix + name)
        paths |= _schema_paths(sub, f"{prefix}{name}.")
    return paths


def test_envelope_fields_exist_in_the_event_schema() -> None:
    assert set(KB.vocabulary.envelope_fields) <= _schema_paths(EVENT_SCHEMA)


def _data_properties(event_type: str) -> set[str]:
    for clause in [clause for schema in (EVENT_SCHEMA, *probe_event_schemas()) for clause in schema.get("allOf", [])]:
        if clause["if"]["properties"].get("type", {}).get("const") == event_type:
            return set(clause["then"]["properties"]["data"]["properties"])
    return set()


OWNER = {"pid": 4242, "flags": 1, "comm": b"api-server", "cgroup_id": 99}
TUPLE = {"saddr": socket.inet_pton(socket.AF_INET, "10.42.0.5") + b"\0" * 12,
         "daddr": socket.inet_pton(socket.AF_INET, "10.42.2.8") + b"\0" * 12,
         "sport": 40000, "dport": 5432, "family": socket.AF_INET, "netns": 4026531840}


def real_events() -> dict[str, Event]:
    """One decoded event per implemented probe, through the plugin's own decoders."""
    events = {}
    for probe, values in (
        (TcpConnectProbe(), {"latency_ns": 51_000, "error": 111}),
        (TcpCloseProbe(), {"duration_ns": 9, "bytes_sent": 1, "bytes_received": 2, "oldstate": 9}),
        (TcpRetransmitProbe(), {"state": 1}),
        (TcpResetProbe(), {"state": 1, "direction": 1}),
        (TcpRttProbe(), {"window": 1, "samples": 2, "sum_us": 10, "min_us": 4, "max_us": 6, "interval_ns": 10**9,
                         "raddr": TUPLE["daddr"], "port": 5432, "direction": 1, "owner_tgid": 4242, "owner0": 4242}),
    ):
        ring = FakeRingBuffer(probe.layout)
        record = {"ts_ns": 1, **OWNER, **TUPLE, **values}
        ring.push_values(**{name: value for name, value in record.items() if name in probe.layout.fields})
        [event] = decode_all(probe, ring, make_event_context(probe.name, "tp_btf"))
        events[event["type"]] = event
    return events | derived_events(events)


def derived_events(events: dict[str, Event]) -> dict[str, Event]:
    """One event per jalki-tcp anomaly, derived by the probes (threshold 1) from decoded events."""
    derived: dict[str, Event] = {}
    slow = {**events["kernel.tcp.rtt"], "timestamp": "2023-11-14T22:13:25.000000000Z",
            "data": {**events["kernel.tcp.rtt"]["data"], "srtt_us_avg": 30}}
    for probe, inputs in ((TcpConnectProbe(), [events["kernel.tcp.connect"]]),
                          (TcpRetransmitProbe(), [events["kernel.tcp.retransmit"]]),
                          (TcpResetProbe(), [events["kernel.tcp.reset"]]),
                          (TcpRttProbe(), [events["kernel.tcp.rtt"]] * 3 + [slow])):
        for name in ("failures_threshold", "spike_threshold", "storm_threshold", "degradation_threshold"):
            if hasattr(probe, name):
                setattr(probe, name, 1)
        ctx = make_event_context(probe.name, "tp_btf")
        [event] = probe.derive(inputs, ctx) + probe.final_events({}, ctx)
        derived[event["type"]] = event
    return derived


OPTIONAL_FIELDS = {"data.abandoned_by_application", "data.local_port", "data.processes_at_least"}
"""Fields the decoders add only in some cases (the schema does not require them)."""
ONE_SIDE = {"tcp_rst_storm": {"network_data.src_ip", "network_data.src_port", "network_data.dst_ip",
                              "network_data.dst_port"}}
"""A reset storm names the local endpoint (sent) or the peer (received), never both (the schema checks which)."""


def test_fields_of_implemented_entries_are_real_event_paths() -> None:
    events = real_events()
    for entry in KB:
        if entry.implemented_by is None or entry.implemented_by.plugin != "tcp":
            continue  # jalki-storage and jalki-fs check theirs in test_storage_kb.py / test_fs_kb.py
        event = events[entry.event_type]
        data_fields = {spec.name.removeprefix("data.") for spec in entry.fields if spec.name.startswith("data.")}
        assert data_fields == _data_properties(entry.event_type) | ({"tcp_state_number"} if
                                                                      entry.id == "tcp_retransmit_skb" else set())
        for spec in entry.fields:
            if spec.name in OPTIONAL_FIELDS or spec.name in ONE_SIDE.get(entry.id, ()):
                continue
            assert get_path(event, spec.name) is not None, (entry.id, spec.name)
    assert get_path(events["kernel.tcp.connect"], "error.code") == "ECONNREFUSED"


def test_every_entry_is_complete_and_keywords_are_lowercase() -> None:
    for entry in KB:
        assert entry.function or entry.tracepoint
        assert entry.answers and entry.keywords and entry.fields and entry.interpretations, entry.id
        assert all(keyword == keyword.lower() for keyword in entry.keywords)
        assert entry.event_type.split(".")[1] == entry.layer
        assert all(other in KB.entries for other in entry.combine_with)
        assert any(spec.important for spec in entry.fields)


HIGH_FREQUENCY = ["kfree_skb", "mm_page_alloc", "sched_switch", "sched_wakeup", "tcp_probe", "tcp_recvmsg",
                  "tcp_sendmsg", "vfs_read", "vfs_write"]


def test_high_frequency_probes_carry_a_sampling_warning() -> None:
    assert sorted(entry.id for entry in KB if entry.event_rate == "high") == HIGH_FREQUENCY
    for entry_id in HIGH_FREQUENCY:
        entry = KB.entries[entry_id]
        [rule] = [r for r in entry.interpretations if isinstance(r.rule, Window) and r.rule.where is None
                  and r.rule.group_by == () and r.rule.seconds == 1]
        assert rule.severity == "warning"
        assert "--sample" in rule.action and "Sample" in rule.action
        assert rule.rule is not None and rule.rule.at_least == 5000  # type: ignore[union-attr]


@pytest.mark.parametrize("validate", ["jalki_validate_event"])
def test_decoded_events_are_schema_valid(validate: str, request: pytest.FixtureRequest) -> None:
    validator: Callable[[Event], None] = request.getfixturevalue(validate)
    for event in real_events().values():
        validator(event)
