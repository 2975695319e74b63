"""KB-9, KB-20: every interpretation fires on events built from its own condition, and not on its near-misses.

The rules come from ``jalki list --json`` (so a rule added to any KB file, or by
an installed plugin, is covered the moment it exists); the events are built
from the condition by the spec's own reading of it (conformance_support), and
judged by the public ``evaluate``.
"""

from __future__ import annotations

from typing import Any

import pytest
from conformance_support import (
    MISSING,
    SECOND,
    Json,
    field_types,
    field_variants,
    first_witness,
    holds,
    interpretations,
    make_event,
    read_json,
    rule_fires,
    shipped_kb_files,
    typed_values,
)

from jalki_core.kb import Destination, Finding, default_kb, evaluate

KB = default_kb()
RULES = interpretations()
IDS = [f"{listed['id']}/{rule['id']}" for listed, rule in RULES]


def fired(listed: Json, rule: Json, events: list[Json]) -> list[Finding]:
    return [f for f in evaluate(events, KB, entries=[listed["id"]]) if f.interpretation_id == rule["id"]]


def other_type(listed: Json) -> str:
    return str(listed["event_type"]).rsplit(".", 1)[0] + ".conformance_other"


def window_base(listed: Json, window: Json) -> dict[str, Any]:
    base = first_witness(listed, window.get("where"))
    assert base is not None, "no event satisfies the window's where"
    types = field_types(listed)
    for name in window.get("group_by", []):
        if base.get(name, MISSING) is MISSING:
            base[name] = typed_values(types[name])[0]
    return base


def window_offsets(window: Json) -> list[int]:
    """``at_least`` events, the last exactly ``seconds`` after the first (last − first ≤ S: it fires)."""
    n, span = window["at_least"], round(window["seconds"] * SECOND)
    return [i * span // (n - 1) for i in range(n)]


def window_scenarios(listed: Json, window: Json) -> list[tuple[str, list[Json], bool]]:
    base = window_base(listed, window)
    kind = listed["event_type"]
    offsets = window_offsets(window)
    span = round(window["seconds"] * SECOND)

    def events(values: list[dict[str, Any]], at: list[int], event_type: str = kind) -> list[Json]:
        return [make_event(event_type, offset, v) for v, offset in zip(values, at, strict=True)]

    n = len(offsets)
    scenarios = [
        ("fires (last - first == seconds)", events([base] * n, offsets), True),
        ("one event too few", events([base] * (n - 1), offsets[:-1]), False),
        ("spread wider than the window", events([base] * n, [*offsets[:-1], span + 1]), False),
        ("other event type", events([base] * n, offsets, other_type(listed)), False),
    ]
    unstamped = events([base] * n, offsets)
    for event in unstamped:
        event["timestamp"] = "not a timestamp"
    scenarios.append(("no parseable timestamp", unstamped, False))
    types = field_types(listed)
    for name in window.get("group_by", []):
        other = next(value for value in typed_values(types[name]) if value != base[name])
        split = [base if i % 2 == 0 else {**base, name: other} for i in range(n)]
        scenarios.append((f"split across two {name} groups", events(split, offsets), False))
    where = window.get("where")
    if where is not None:
        failing = [values for _, values in field_variants(listed, where, base)
                   if not holds(where, make_event(kind, values=values))]
        assert failing, "a window's where needs a near-miss"
        scenarios.append(("one event fails where", events([*[base] * (n - 1), failing[0]], offsets), False))
    return scenarios


def event_scenarios(listed: Json, condition: Json | None) -> list[tuple[str, list[Json], bool]]:
    base = first_witness(listed, condition)
    assert base is not None, "no event satisfies the condition"
    kind = listed["event_type"]
    scenarios = [("fires", [make_event(kind, values=base)], True),
                 ("other event type", [make_event(other_type(listed), values=base)], False)]
    for label, values in field_variants(listed, condition, base):
        scenarios.append((f"variant {label}", [make_event(kind, values=values)],
                          holds(condition, make_event(kind, values=values))))
    if condition is not None:
        assert any(not expected for _, _, expected in scenarios[2:]), "a rule needs a near-miss of its own fields"
    return scenarios


def scenarios_of(listed: Json, rule: Json) -> list[tuple[str, list[Json], bool]]:
    condition = rule.get("condition")
    if condition is not None and "window" in condition:
        return window_scenarios(listed, condition["window"])
    return event_scenarios(listed, condition)


def test_every_interpretation_in_the_files_is_under_test() -> None:
    in_files = sorted(
        (listed["id"], rule["id"])
        for path in shipped_kb_files()
        if "entries" in (document := read_json(path))
        for listed in document["entries"]
        for rule in listed["interpretations"]
    )
    assert in_files == sorted((listed["id"], rule["id"]) for listed, rule in RULES)
    assert len(RULES) >= 60


@pytest.mark.parametrize(("listed", "rule"), RULES, ids=IDS)
def test_rule_fires_and_near_misses_do_not(listed: Json, rule: Json) -> None:
    scenarios = scenarios_of(listed, rule)
    names = {name for name, _, _ in scenarios}
    assert "other event type" in names
    if "window" in (rule.get("condition") or {}):
        assert {"one event too few", "spread wider than the window"} <= names
    for name, events, expected in scenarios:
        # the scenario means what it says by the spec's reading, and jalki agrees with it
        assert rule_fires(rule.get("condition"), events, listed["event_type"]) == expected, name
        assert bool(fired(listed, rule, events)) == expected, name


@pytest.mark.parametrize(("listed", "rule"), RULES, ids=IDS)
def test_finding_carries_the_rule_and_exact_evidence(listed: Json, rule: Json) -> None:
    [(_, events, _)] = [case for case in scenarios_of(listed, rule) if case[2] and case[0].startswith("fires")]
    [finding] = fired(listed, rule, events)
    assert (finding.entry_id, finding.severity, finding.conclusion, finding.action, finding.errno,
            finding.tcp_state) == (listed["id"], rule["severity"], rule["conclusion"], rule["action"],
                                   rule.get("errno"), rule.get("tcp_state"))
    [evidence] = finding.evidence
    assert evidence.events == finding.events == len(events)
    assert (evidence.first, evidence.last) == (events[0]["timestamp"], events[-1]["timestamp"])
    condition = rule.get("condition") or {}
    if "window" in condition:
        window = condition["window"]
        assert finding.windowed and evidence.peak_in_window == window["at_least"]
        group_by = window.get("group_by", [])
        assert evidence.group == tuple((name, events[0][name.split(".")[0]][name.split(".")[1]]) if "." in name
                                       else (name, events[0][name]) for name in group_by)
    else:
        assert not finding.windowed and evidence.group == () and evidence.peak_in_window is None
    network = events[0].get("network_data", {})
    if "dst_ip" in network and "dst_port" in network:
        ip = network["dst_ip"]
        address = f"[{ip}]:{network['dst_port']}" if ":" in ip else f"{ip}:{network['dst_port']}"
        assert evidence.destinations == (Destination(address, len(events)),)
    if "process_data" not in events[0]:
        assert (evidence.processes, evidence.unattributed) == ((), len(events))
