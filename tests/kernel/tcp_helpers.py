"""Helpers shared by the jalki-tcp kernel tests: probe choice per rung, event matching, nft rules."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from jalki_core.events import Event
from jalki_core.plugins import JalkiPlugins
from jalki_core.probe import Probe
from jalki_core.testing import event_validator, require_fields

COMMAND = Path(sys.executable).name[:15]
"""The ``comm`` of traffic.py processes (the interpreter's file name)."""
CLOSED_PORT = 9
validate = event_validator()
only = require_fields
Pick = Callable[..., list[Probe]]


def tcp_probes(*names: str) -> list[Probe]:
    """The installed jalki-tcp probes (all, or the named ones)."""
    return [entry.probe for entry in JalkiPlugins().probes_for(names or ["tcp"])]


def restricted_to(probe: Probe, rung_name: str) -> Probe:
    """The same probe with a ladder of one rung (to exercise fallback rungs for real)."""
    rungs = tuple(rung for rung in probe.ladder if rung.name == rung_name)
    assert rungs, f"{probe.name} has no {rung_name} rung"
    variant = type(f"{type(probe).__name__}Only{rung_name}", (type(probe),), {"ladder": rungs})
    return variant()  # type: ignore[no-any-return]


def make_pick(request: pytest.FixtureRequest) -> Pick:
    """Probes with their full ladder ("best") or forced onto the classic tracepoint rung."""

    def choose(*names: str) -> list[Probe]:
        probes = tcp_probes(*names)
        if request.param == "tracepoint":
            probes = [restricted_to(probe, "tracepoint") for probe in probes]
        return probes

    choose.rung = request.param  # type: ignore[attr-defined]
    return choose


def check_rung(pick: Pick, events: list[Event]) -> None:
    """Every event came from the rung the test asked for."""
    expected = {"tracepoint"} if pick.rung == "tracepoint" else {"fexit", "tp_btf"}  # type: ignore[attr-defined]
    assert events and {e["attach"] for e in events} <= expected


def drop_input_rule(match: str) -> str:
    """An nft ruleset dropping inbound packets that match ``match`` (e.g. ``tcp dport 9``)."""
    return (
        "table inet jalki_test {\n"
        "  chain input { type filter hook input priority 0; policy accept;\n"
        f"    {match} drop\n"
        "  }\n"
        "}\n"
    )
