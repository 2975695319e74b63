"""KB-1 … KB-4, KB-18: the KB files, their inventory, and their agreement with the installed probes and schemas."""

from __future__ import annotations

import json
import re
import socket
from typing import Any

import jsonschema
import pytest
from conformance_support import (
    SECOND,
    SPECS,
    Json,
    entry,
    installed_plugins,
    jalki,
    jalki_json,
    listed_entries,
    make_event,
    read_json,
    shipped_kb_files,
    value_numbers,
    vocabulary,
)
from jalki_tcp.probes import TcpCloseProbe, TcpConnectProbe, TcpRetransmitProbe

from jalki_core.kb import default_kb, evaluate
from jalki_core.testing import FakeRingBuffer, decode_all, event_validator, make_event_context, probe_event_schemas

KB_SCHEMA = read_json(SPECS / "kb.schema.json")
EVENT_SCHEMA = read_json(SPECS / "event.schema.json")
OWNER = {"pid": 4242, "flags": 1, "comm": b"api-server", "cgroup_id": 99}
V4 = {"saddr": socket.inet_pton(socket.AF_INET, "10.42.0.5") + b"\0" * 12,
      "daddr": socket.inet_pton(socket.AF_INET, "10.42.2.8") + b"\0" * 12,
      "sport": 40000, "dport": 5432, "family": socket.AF_INET, "netns": 4026531840}
ENTRY_KEYS = {"id", "summary", "implemented_by", "attach", "event_type", "event_rate", "answers", "keywords",
              "fields", "use_when", "not_when", "combine_with", "interpretations"}


# KB-1 -----------------------------------------------------------------------------------------------------------

def test_kb_schema_is_valid_2020_12_and_every_shipped_file_conforms() -> None:
    jsonschema.Draft202012Validator.check_schema(KB_SCHEMA)
    assert KB_SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    validator = jsonschema.Draft202012Validator(KB_SCHEMA)
    files = shipped_kb_files()
    assert "vocabulary.json" in [path.name for path in files]
    for path in files:
        document = read_json(path)
        assert [error.message for error in validator.iter_errors(document)] == [], path
        if path.name == "vocabulary.json":
            assert "value_sets" in document and "entries" not in document
            continue
        assert document["kb_version"] == 1 and re.fullmatch(r"[a-z][a-z0-9_]*", document["layer"])
        for item in document["entries"]:  # one layer per document: its event types live in that layer
            assert item["event_type"].startswith(f"kernel.{document['layer']}."), (path, item["id"])


def test_default_kb_loads_without_problems() -> None:
    assert default_kb().problems == ()
    result = jalki("list", "--json")
    assert (result.returncode, result.stderr) == (0, "")
    assert len(json.loads(result.stdout)) == len(default_kb())


# KB-2 -----------------------------------------------------------------------------------------------------------

def test_inventory_has_five_layers_and_24_entries() -> None:
    layers: dict[str, list[str]] = {}
    for item in listed_entries():
        layers.setdefault(item["layer"], []).append(item["id"])
    assert {"tcp", "process", "memory", "fs", "sched"} <= set(layers)
    assert len(layers) >= 5
    assert sum(map(len, layers.values())) >= 24
    assert len(layers["tcp"]) >= 8
    ids = [item["id"] for item in listed_entries()]
    assert len(ids) == len(set(ids))
    rules = [rule["id"] for item in listed_entries() for rule in item["interpretations"]]
    assert len(rules) == len(set(rules))


def test_every_entry_is_complete() -> None:
    ids = {item["id"] for item in listed_entries()}
    for item in listed_entries():
        assert set(item) >= ENTRY_KEYS, item["id"]
        assert item.get("function") or item.get("tracepoint"), item["id"]
        assert item["summary"].strip() and item["use_when"].strip() and item["not_when"].strip()
        assert item["answers"] and item["keywords"] and item["fields"] and item["interpretations"], item["id"]
        assert all(keyword == keyword.lower() for keyword in item["keywords"]), item["id"]
        assert item["attach"] and item["event_rate"] in ("low", "medium", "high")
        assert item["event_type"].split(".")[:2] == ["kernel", item["layer"]]
        assert any(spec["important"] for spec in item["fields"]), item["id"]
        assert set(item["combine_with"]) <= ids - {item["id"]}, item["id"]


# KB-3 -----------------------------------------------------------------------------------------------------------

def _installed_probes() -> dict[tuple[str, str], Json]:
    return {(row["plugin"], probe["name"]): probe for row in installed_plugins() if row["status"] == "ok"
            for probe in row["probes"]}


def test_implemented_entries_match_jalki_plugins() -> None:
    probes = _installed_probes()
    implemented = [item for item in listed_entries() if item["implemented_by"] is not None]
    assert {"tcp_connect", "tcp_close", "tcp_retransmit_skb"} <= {item["id"] for item in implemented}
    for item in implemented:
        key = (item["implemented_by"]["plugin"], item["implemented_by"]["probe"])
        assert key in probes, item["id"]
        assert item["event_type"] in probes[key]["event_types"], item["id"]
        assert item["attach"] == probes[key]["ladder"], item["id"]
    assert [entry(name)["event_type"] for name in ("tcp_connect", "tcp_close", "tcp_retransmit_skb")] == [
        "kernel.tcp.connect", "kernel.tcp.close", "kernel.tcp.retransmit"]
    assert all(entry(name)["implemented_by"] == {"plugin": "tcp", "probe": name}
               for name in ("tcp_connect", "tcp_close", "tcp_retransmit_skb"))


def _schema_paths(schema: Json, prefix: str = "") -> set[str]:
    paths = set()
    for name, sub in schema.get("properties", {}).items():
        paths.add(prefix + name)
        paths |= _schema_paths(sub, f"{prefix}{name}.")
    return paths


def _properties(node: Any, fragment: Json) -> set[str]:
    """Property names a schema node declares, through local ``$ref`` and ``allOf``/``anyOf``/``oneOf``."""
    if not isinstance(node, dict):
        return set()
    found = set(node.get("properties", {}))
    if "$ref" in node:  # a local reference: "#/$defs/name"
        target: Any = fragment
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        found |= _properties(target, fragment)
    for keyword in ("allOf", "anyOf", "oneOf"):
        for item in node.get(keyword, []):
            found |= _properties(item, fragment)
    return found


def _data_properties(event_type: str) -> set[str]:
    """The ``data`` properties the probe fragments declare for an event type."""
    found: set[str] = set()
    for fragment in probe_event_schemas():
        for clause in fragment.get("allOf", []):
            if clause.get("if", {}).get("properties", {}).get("type", {}).get("const") == event_type:
                found |= _properties(clause["then"].get("properties", {}).get("data", {}), fragment)
    return found


def test_envelope_fields_exist_in_the_event_schema() -> None:
    envelope = vocabulary()["envelope_fields"]
    assert set(envelope) <= _schema_paths(EVENT_SCHEMA)
    assert envelope["error.code"] == "errno" and envelope["network_data.dst_port"] == "integer"


KNOWN_SCHEMA_GAPS: set[tuple[str, str]] = set()
"""data fields that the decoders emit, the KB and specs/events.md document, but the plugin's schema fragment
does not declare yet (plugins/jalki_tcp/jalki_tcp/events.schema.json). Remove an item when its fragment is fixed."""


def test_fields_of_implemented_entries_are_paths_of_the_event_schema() -> None:
    envelope = vocabulary()["envelope_fields"]
    gaps = set()
    for item in listed_entries():
        if item["implemented_by"] is None:
            continue
        data = _data_properties(item["event_type"])
        assert data, f"no schema fragment of an installed probe describes {item['event_type']}"
        for spec in item["fields"]:
            name = spec["name"]
            if name.startswith("data."):
                if name.removeprefix("data.") not in data:
                    gaps.add((item["event_type"], name.removeprefix("data.")))
            else:
                assert envelope.get(name) == spec["type"], (item["id"], name)
    assert gaps == KNOWN_SCHEMA_GAPS


def decoded_tcp_events() -> dict[str, Json]:
    """One event per jalki-tcp probe, decoded by the plugin from a raw record as the kernel writes it."""
    events = {}
    for probe, values in ((TcpConnectProbe(), {"latency_ns": 51_000, "error": 111}),
                          (TcpCloseProbe(), {"duration_ns": 9, "bytes_sent": 1, "bytes_received": 2, "oldstate": 9}),
                          (TcpRetransmitProbe(), {"state": 1})):
        ring = FakeRingBuffer(probe.layout)
        ring.push_values(ts_ns=SECOND, **OWNER, **V4, **values)
        [event] = decode_all(probe, ring, make_event_context(probe.name, "tp_btf"))
        events[event["type"]] = event
    return events


def _path(event: Json, dotted: str) -> Any:
    node: Any = event
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def test_fields_of_tcp_entries_are_paths_of_decoded_events() -> None:
    events = decoded_tcp_events()
    validate = event_validator()
    for event_type, event in events.items():
        validate(event)
        item = next(i for i in listed_entries() if i["event_type"] == event_type and i["implemented_by"] is not None)
        declared = {spec["name"] for spec in item["fields"]}
        for name in declared - {"data.abandoned_by_application"}:  # present only when the application gave up
            assert _path(event, name) is not None, (item["id"], name)
        assert {f"data.{key}" for key in event["data"]} <= declared, item["id"]
    assert _path(events["kernel.tcp.connect"], "error.code") == "ECONNREFUSED"


# KB-4 -----------------------------------------------------------------------------------------------------------

def test_tcp_states_are_kernel_numbered_like_the_plugin_and_the_schema() -> None:
    numbers = value_numbers("tcp_state")
    assert (numbers["ESTABLISHED"], numbers["SYN_SENT"], numbers["CLOSE"], numbers["CLOSE_WAIT"],
            numbers["LISTEN"]) == (1, 2, 7, 8, 10)
    probe = TcpRetransmitProbe()
    ring = FakeRingBuffer(probe.layout)
    for number in numbers.values():
        ring.push_values(ts_ns=1, state=number, **OWNER, **V4)
    decoded = {event["data"]["tcp_state"]: event["data"]["tcp_state_number"] for event in decode_all(probe, ring)}
    assert decoded == numbers
    [fragment] = probe_event_schemas([probe])
    assert fragment["$defs"]["tcp_state"]["enum"] == list(numbers)
    assert value_numbers("signal")["SIGKILL"] == 9


def test_kernel_state_numbers_mean_the_same_in_explain_and_evaluate() -> None:
    for number, name, holds in (("8", "CLOSE_WAIT", ["close_from_close_wait"]), ("7", "CLOSE", [])):
        result = jalki_json("explain", "tcp_close", f"data.tcp_state={number}")
        assert result["event"]["data"]["tcp_state"] == name
        assert [v["interpretation"] for v in result["verdicts"] if v["holds"]] == holds
    retransmits = [make_event("kernel.tcp.retransmit", i * SECOND, data__tcp_state=state,
                              network_data__dst_ip="10.0.0.1", network_data__dst_port=80)
                   for state in ("CLOSE", "CLOSE_WAIT") for i in range(3)]
    assert [f.interpretation_id for f in evaluate(retransmits)] == ["retransmit_close_wait"]


# KB-18 ----------------------------------------------------------------------------------------------------------

def _rate_rules(item: Json) -> list[Json]:
    return [rule for rule in item["interpretations"]
            if set(rule.get("condition", {}).get("window", {"where": None})) == {"seconds", "at_least", "group_by"}
            and rule["condition"]["window"]["group_by"] == [] and rule["condition"]["window"]["seconds"] == 1]


@pytest.mark.parametrize("item", [item for item in listed_entries() if item["event_rate"] == "high"],
                         ids=lambda item: str(item["id"]))
def test_high_rate_entries_carry_a_sampling_warning(item: Json) -> None:
    [rule] = _rate_rules(item)
    assert rule["severity"] == "warning"
    assert rule["condition"]["window"]["at_least"] == 5000
    assert "--sample" in rule["action"]
    burst = [make_event(item["event_type"], i * 180_000) for i in range(5000)]  # 5000 events in 0.9 s
    assert rule["id"] in [f.interpretation_id for f in evaluate(burst, entries=[item["id"]])]
    assert rule["id"] not in [f.interpretation_id for f in evaluate(burst[:4999], entries=[item["id"]])]


def test_the_busiest_kernel_paths_are_marked_high() -> None:
    high = {item["id"] for item in listed_entries() if item["event_rate"] == "high"}
    assert {"sched_switch", "tcp_sendmsg", "tcp_recvmsg", "tcp_probe", "kfree_skb"} <= high
    for item in listed_entries():  # a rule that warns of 5000 events/s belongs to a high-rate entry only
        if item["event_rate"] != "high":
            assert [r for r in _rate_rules(item) if r["condition"]["window"]["at_least"] >= 5000] == [], item["id"]
