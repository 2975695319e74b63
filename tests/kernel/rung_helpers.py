"""Attach-rung choice for kernel tests of any probe family (the general form of tcp_helpers.make_pick).

``restricted_to`` keeps the probe instance's own configuration (thresholds,
filters set in its constructor), so a configured probe can be forced onto a
fallback rung; tcp_helpers' version builds a fresh instance with defaults.
"""

from __future__ import annotations

import copy

from jalki_core.events import Event
from jalki_core.loader import forced_ladder
from jalki_core.probe import Probe

RUNGS = ("best", "tracepoint")
"""The two ways every probe is exercised: its full ladder, and forced onto the classic tracepoint rung."""


def restricted_to(probe: Probe, rung_name: str) -> Probe:
    """A copy of ``probe`` (same instance attributes) whose ladder has only the rung ``rung_name``.

    The ladder is cut by the loader's own rule (``forced_ladder``), the one ``jalki run --rung`` uses.
    """
    rungs = forced_ladder(probe, rung_name)
    variant = copy.copy(probe)
    variant.__class__ = type(f"{type(probe).__name__}Only{rung_name}", (type(probe),), {"ladder": rungs})
    return variant


def on_rung(probe: Probe, rung: str) -> Probe:
    """``probe`` itself for ``"best"``, else the probe restricted to that rung."""
    return probe if rung == "best" else restricted_to(probe, rung)


def expected_rung(probe: Probe, rung: str) -> str:
    """The rung a probe attaches on in a test: its first rung for ``"best"`` (the kernel must allow it)."""
    return probe.ladder[0].name if rung == "best" else rung


def check_rung(probe: Probe, rung: str, events: list[Event]) -> None:
    """Every event came from the rung the test asked for."""
    assert events and {event["attach"] for event in events} == {expected_rung(probe, rung)}

