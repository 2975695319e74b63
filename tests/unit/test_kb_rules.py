"""Every interpretation fires on a sequence built from the rule itself and not on its near-misses.

The cases are generated from the KB, so a rule added to kb/*.json is covered
the moment it exists; a rule the generator cannot make fire fails here (and
the loader reports it as unreachable).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from jalki_core.kb import default_kb, evaluate
from jalki_core.kb.conditions import AllOf, FieldTest, Window
from jalki_core.kb.model import Interpretation
from jalki_core.kb.witness import Scenario, UnsatisfiableRule, satisfiable, scenarios

KB = default_kb()  # the built-in KB plus every installed plugin's documents
RULES = [(entry, rule) for entry, rule in KB.interpretations()]
KB_DIR = Path(__file__).resolve().parents[2] / "kb"


def _fired(rule_id: str, entry_id: str, scenario: Scenario) -> bool:
    return any(f.interpretation_id == rule_id for f in evaluate(scenario.events, KB, entries=[entry_id]))


def test_every_interpretation_in_the_files_is_under_test() -> None:
    in_files = [
        (entry["id"], rule["id"])
        for path in sorted([*KB_DIR.glob("*.json"), *KB_DIR.parent.glob("plugins/*/*/kb/*.json")])
        if path.name != "vocabulary.json"
        for entry in json.loads(path.read_text())["entries"]
        for rule in entry["interpretations"]
    ]
    assert sorted(in_files) == sorted((entry.id, rule.id) for entry, rule in RULES)


@pytest.mark.parametrize(("entry", "rule"), RULES, ids=[f"{e.id}/{r.id}" for e, r in RULES])
def test_rule_fires_and_near_misses_do_not(entry, rule) -> None:  # type: ignore[no-untyped-def]
    cases = scenarios(entry, rule, KB.vocabulary)
    firing = [case for case in cases if case.should_fire]
    misses = [case for case in cases if not case.should_fire]
    assert len(firing) == 1
    assert misses, "a rule needs at least one near-miss"
    assert _fired(rule.id, entry.id, firing[0]), firing[0]
    for case in misses:
        assert not _fired(rule.id, entry.id, case), case.name
    expected = {"other event type"}
    if isinstance(rule.rule, Window):
        expected |= {"one event too few", "spread wider than the window"}
    assert expected <= {case.name for case in misses}


@pytest.mark.parametrize(("entry", "rule"), RULES, ids=[f"{e.id}/{r.id}" for e, r in RULES])
def test_finding_carries_the_rule_and_exact_evidence(entry, rule) -> None:  # type: ignore[no-untyped-def]
    [firing] = [case for case in scenarios(entry, rule, KB.vocabulary) if case.should_fire]
    [finding] = [f for f in evaluate(firing.events, KB, entries=[entry.id]) if f.interpretation_id == rule.id]
    assert (finding.entry_id, finding.severity, finding.conclusion, finding.action, finding.errno) == (
        entry.id, rule.severity, rule.conclusion, rule.action, rule.errno)
    [evidence] = finding.evidence
    assert evidence.events == len(firing.events) == finding.events
    assert evidence.first == firing.events[0]["timestamp"]
    assert evidence.last == firing.events[-1]["timestamp"]
    if isinstance(rule.rule, Window):
        assert finding.windowed and evidence.peak_in_window == rule.rule.at_least
        assert [name for name, _ in evidence.group] == list(rule.rule.group_by)
    else:
        assert not finding.windowed and evidence.group == () and evidence.peak_in_window is None


def test_unsatisfiable_rule_is_reported_by_the_loader_and_refused_by_the_generator() -> None:
    entry = KB.entries["tcp_connect"]
    never = Interpretation("never", entry.id, AllOf((FieldTest("error.code", "eq", "EPIPE"),
                                                     FieldTest("error.code", "eq", "EIO"))),
                           "Never.", "info", "Nothing.")
    with pytest.raises(UnsatisfiableRule, match="tcp_connect/never: no event satisfies the condition"):
        scenarios(replace(entry, interpretations=(never,)), never, KB.vocabulary)
    field_types = {spec.name: spec.type for spec in entry.fields}
    assert not satisfiable(never.rule, field_types, KB.vocabulary)
    assert all(satisfiable(rule.rule, field_types, KB.vocabulary) for rule in entry.interpretations)
