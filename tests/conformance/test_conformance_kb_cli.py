"""KB-24, KB-25: ``jalki list`` and ``jalki explain`` (and the public ``explain`` behind it)."""

from __future__ import annotations

from typing import Any

import pytest
from conformance_support import (
    Json,
    entry,
    holds,
    jalki,
    jalki_json,
    listed_entries,
    referenced_fields,
    table_rows,
    value_names,
)

from jalki_core.errors import UsageError
from jalki_core.kb import default_kb, explain


def errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if not line.startswith("warning:")]


# KB-24 ----------------------------------------------------------------------------------------------------------

def test_list_json_is_every_entry_by_layer_then_id() -> None:
    listed = list(listed_entries())
    assert [(item["layer"], item["id"]) for item in listed] == sorted((e.layer, e.id) for e in default_kb())
    for item in listed:
        assert item["source"] and item["layer"] == item["event_type"].split(".")[1]


def test_list_layer_filter() -> None:
    for layer in sorted({item["layer"] for item in listed_entries()}):
        only = jalki_json("list", "--layer", layer)
        assert [item["id"] for item in only] == sorted(item["id"] for item in listed_entries()
                                                       if item["layer"] == layer)


def test_list_table() -> None:
    result = jalki("list", "--layer", "tcp")
    assert result.returncode == 0
    rows = {row[0]: row for row in table_rows(result.stdout)}
    tcp = [item for item in listed_entries() if item["layer"] == "tcp"]
    assert list(rows) == [item["id"] for item in tcp]
    for item in tcp:
        row = rows[item["id"]]
        implemented = item["implemented_by"]
        by = "-" if implemented is None else f"{implemented['plugin']}/{implemented['probe']}"
        # columns: entry, implemented by, layer, rate, rules, event type, kernel, summary
        assert (row[1], row[2], row[3], row[4], row[5]) == (
            by, "tcp", item["event_rate"], str(len(item["interpretations"])), item["event_type"])


def test_unknown_layer_is_one_line_listing_the_layers_exit_2() -> None:
    result = jalki("list", "--layer", "nope")
    assert (result.returncode, result.stdout) == (2, "")
    layers = sorted({item["layer"] for item in listed_entries()})
    assert errors(result.stderr) == [f"error: unknown layer 'nope'; layers: {', '.join(layers)}"]


# KB-25 ----------------------------------------------------------------------------------------------------------

def _verdicts(result: Json) -> dict[str, Json]:
    return {verdict["interpretation"]: verdict for verdict in result["verdicts"]}


def test_explain_json_gives_a_verdict_per_interpretation() -> None:
    result = jalki_json("explain", "tcp_connect", "error.code=ECONNREFUSED", "outcome=failure")
    assert result["entry"] == "tcp_connect"
    event = result["event"]
    assert (event["type"], event["error"], event["outcome"]) == ("kernel.tcp.connect", {"code": "ECONNREFUSED"},
                                                                 "failure")
    verdicts = _verdicts(result)
    rules = entry("tcp_connect")["interpretations"]
    assert list(verdicts) == [rule["id"] for rule in rules]
    assert [name for name, verdict in verdicts.items() if verdict["holds"]] == ["connect_refused"]
    given = {"error.code", "outcome"}
    for rule in rules:
        verdict = verdicts[rule["id"]]
        assert (verdict["severity"], verdict["conclusion"], verdict["action"]) == (
            rule["severity"], rule["conclusion"], rule["action"])
        window = (rule.get("condition") or {}).get("window")
        read = [*referenced_fields(rule.get("condition")), *(window or {}).get("group_by", [])]
        assert verdict["missing_fields"] == [name for name in dict.fromkeys(read) if name not in given]
        if window is None:
            assert verdict["needs_events"] is None and verdict["counts_toward"] is None
            assert verdict["holds"] == holds(rule.get("condition"), event)
        else:  # a window never holds on one event: the verdict says what it needs
            assert verdict["holds"] is False
            assert (verdict["needs_events"], verdict["window_seconds"], verdict["group_by"]) == (
                window["at_least"], window["seconds"], window.get("group_by", []))
            assert verdict["counts_toward"] == holds(window.get("where"), event)


def test_explain_api_matches_the_cli() -> None:
    api = explain("tcp_connect", ["error.code=ECONNREFUSED", "outcome=failure"])
    cli = jalki_json("explain", "tcp_connect", "error.code=ECONNREFUSED", "outcome=failure")
    assert [v.as_dict()["holds"] for v in api.verdicts] == [v["holds"] for v in cli["verdicts"]]
    assert api.event["error"] == cli["event"]["error"]
    assert [v.interpretation.id for v in explain("tcp_connect", {"error.code": "111"}).verdicts if v.holds] == []


@pytest.mark.parametrize(("entry_id", "pair", "path", "value", "holding"), [
    ("tcp_retransmit_skb", "data.tcp_state=2", ("data", "tcp_state"), "SYN_SENT", ["retransmit_syn"]),
    ("tcp_close", "data.tcp_state=8", ("data", "tcp_state"), "CLOSE_WAIT", ["close_from_close_wait"]),
    ("tcp_close", "data.tcp_state=7", ("data", "tcp_state"), "CLOSE", []),
    ("tcp_close", "data.tcp_state=close_wait", ("data", "tcp_state"), "CLOSE_WAIT", ["close_from_close_wait"]),
    ("process_exit", "data.signal=9", ("data", "signal"), "SIGKILL", ["exit_sigkill"]),
    ("process_exit", "data.exit_code=137", ("data", "exit_code"), 137, ["exit_sigkill"]),
    ("tcp_connect", "error.code=111", ("error", "code"), "ECONNREFUSED", []),
])
def test_explain_accepts_kernel_numbers_for_symbolic_fields(entry_id: str, pair: str, path: tuple[str, str],
                                                            value: Any, holding: list[str]) -> None:
    result = jalki_json("explain", entry_id, pair)
    assert result["event"][path[0]][path[1]] == value
    assert [name for name, verdict in _verdicts(result).items() if verdict["holds"]] == holding


def test_explain_table_says_what_holds_and_what_a_window_needs() -> None:
    result = jalki("explain", "tcp_retransmit_skb", "data.tcp_state=ESTABLISHED", "network_data.dst_ip=10.0.0.1",
                   "network_data.dst_port=5432")
    assert result.returncode == 0
    rows = {row[0]: row for row in table_rows(result.stdout)}
    rules = {rule["id"]: rule for rule in entry("tcp_retransmit_skb")["interpretations"]}
    assert list(rows) == list(rules)
    loss = rules["retransmit_established_loss"]["condition"]["window"]
    assert rows["retransmit_established_loss"][2] == (
        f"needs >= {loss['at_least']} matching events within {loss['seconds']:g} s per "
        f"{', '.join(loss['group_by'])} (this event counts)")
    assert rows["retransmit_syn"][2] == "does not hold"
    assert rows["retransmit_syn"][1] == rules["retransmit_syn"]["severity"]
    held = jalki("explain", "tcp_retransmit_skb", "data.tcp_state=SYN_SENT")
    assert {row[0]: row[2] for row in table_rows(held.stdout)}["retransmit_syn"] == "holds"


@pytest.mark.parametrize(("argv", "line"), [
    (["tcp_conect"], "error: unknown knowledge-base entry 'tcp_conect' (did you mean tcp_connect"),
    (["tcp_connect", "error.code"], "error: expected field=value, got 'error.code'"),
    (["tcp_connect", "error.code=EFOO"], "error: 'EFOO': unknown errno name 'EFOO'"),
    (["tcp_connect", "error.code=EWOULDBLOCK"], "error: 'EWOULDBLOCK': "),
    (["tcp_connect", "data.latency_ns=fast"], "error: 'fast' is not a valid integer"),
    (["tcp_connect", "network_data.dst_ip=10.0.0.300"], "error: '10.0.0.300' is not a valid ip"),
    (["tcp_close", "data.tcp_state=CLOSED"], "error: 'CLOSED': unknown tcp_state name 'CLOSED'"),
    (["tcp_connect", "outcome=failure", "outcome=success"], "error: field 'outcome' is given twice"),
])
def test_explain_errors_are_one_line_exit_2(argv: list[str], line: str) -> None:
    result = jalki("explain", *argv)
    assert (result.returncode, result.stdout) == (2, "")
    [error] = errors(result.stderr)
    assert error.startswith(line)


def test_unknown_tcp_state_lists_the_kernel_names() -> None:
    [error] = errors(jalki("explain", "tcp_close", "data.tcp_state=CLOSED").stderr)
    assert error.endswith(f"known: {', '.join(value_names('tcp_state'))}")


def test_explain_unknown_field_lists_the_entry_fields() -> None:
    result = jalki("explain", "oom_mark_victim", "data.rss=1")
    assert result.returncode == 2
    fields = ", ".join(spec["name"] for spec in entry("oom_mark_victim")["fields"])
    assert errors(result.stderr) == [f"error: entry 'oom_mark_victim' has no field 'data.rss'; its fields: {fields}"]


def test_explain_api_raises_usage_errors() -> None:
    with pytest.raises(UsageError, match="unknown knowledge-base entry 'nope'"):
        explain("nope", [])
    with pytest.raises(UsageError, match=r"has no field 'data\.rss'"):
        explain("oom_mark_victim", ["data.rss=1"])
