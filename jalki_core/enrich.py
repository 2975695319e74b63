"""The enricher stage: plugins add fields to events before the emitters, the store and the rules see them.

An enricher (registered through ``jalki_register_enrichers``, chosen with ``--enrich NAME``) is an object
with ``start()``, ``enrich(events)``, ``flush()``, ``close()``, ``ready`` and ``status()``
(:class:`Enricher`). :class:`EnrichStage` runs the chosen enrichers in order on every batch the session
delivers and isolates their failures: an enricher that raises costs that batch its enrichment, counted
in ``errors`` and ``events_unenriched``, never the events, which go on as they were.

An enricher may hold events back (e.g. until the pod a process runs in is known) and let them out of a
later ``enrich`` call: the session calls ``enrich([])`` at every wake-up of its drain loop (at least
every 250 ms) and ``close()`` at stop, whose returned events are delivered before the emitters are
flushed. So nothing an enricher holds is lost.

The stage also applies an optional namespace scope for emitters (``--namespace``): events whose
``k8s.namespace.name`` is not in the allow-list are not written by the emitters, counted in
``out_of_scope`` (a scope the operator chose, not a loss); the store, the subscribers and the rules
still get every event.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger("jalki.enrich")

MAX_GUARDED = 100_000
"""Most events of failed batches remembered so that an enricher that held some is not let deliver them twice."""


class Enricher(Protocol):
    """What an enricher provides (see the module docstring)."""

    def start(self) -> None:
        """Start background work (returns at once)."""

    def enrich(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Add fields to ``events`` in place; return the events ready to go on (ones held earlier first)."""

    def flush(self) -> list[dict[str, Any]]:
        """Every held event, now."""

    def close(self) -> list[dict[str, Any]]:
        """Stop background work; every held event."""

    @property
    def ready(self) -> bool:
        """True once the enricher knows enough to enrich (``/readyz`` waits for it)."""

    def status(self) -> dict[str, Any]:
        """State and counters (JSON-friendly), for ``status`` and metrics."""


@dataclass(frozen=True)
class EnricherOptions:
    """What the command line passes to an enricher factory.

    :param node_name: this node's name (``--node-name``; ``None``: the enricher's default).
    """

    node_name: str | None = None


EnricherFactory = Callable[[EnricherOptions], Enricher]
"""Builds an enricher; raises :class:`jalki_core.errors.UsageError` for options it cannot work with."""


@dataclass
class _Slot:
    name: str
    enricher: Enricher
    batches: int = 0
    errors: int = 0
    events_unenriched: int = 0
    last_error: str | None = None
    guarded: dict[int, dict[str, Any]] = field(default_factory=dict)
    """id -> event of events already let through unenriched after an error (see :meth:`EnrichStage._run`)."""


class EnrichStage:
    """Runs enrichers in order on each batch (drain thread), and the emitters' namespace scope.

    :param enrichers: ``(name, enricher)`` pairs, in the order they run.
    :param namespaces: the emitters' allow-list of ``k8s.namespace.name`` values; ``None``: every event.
    """

    def __init__(self, enrichers: Sequence[tuple[str, Enricher]] = (),
                 namespaces: Iterable[str] | None = None) -> None:
        self.slots = [_Slot(name, enricher) for name, enricher in enrichers]
        self.namespaces = frozenset(namespaces) if namespaces is not None else None
        self.out_of_scope = 0
        """Events the emitters did not get because of :attr:`namespaces`."""

    @property
    def names(self) -> list[str]:
        """The enrichers' names, in order."""
        return [slot.name for slot in self.slots]

    def start(self) -> None:
        """Start every enricher."""
        for slot in self.slots:
            slot.enricher.start()

    @property
    def ready(self) -> bool:
        """True when every enricher is ready."""
        return all(slot.enricher.ready for slot in self.slots)

    def not_ready(self) -> list[str]:
        """``name: state`` of each enricher that is not ready."""
        lines = []
        for slot in self.slots:
            if not slot.enricher.ready:
                status = self._status_of(slot)
                problem = status.get("problem")
                lines.append(f"{slot.name}: {status.get('state', 'not ready')}" + (f" ({problem})" if problem else ""))
        return lines

    def process(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The events to deliver after every enricher ran on ``events`` (``[]``: let out what is due)."""
        for slot in self.slots:
            events = self._run(slot, events, functools.partial(slot.enricher.enrich, events))
        return events

    def close(self) -> list[dict[str, Any]]:
        """Close every enricher; what they still held, through the enrichers after them."""
        events: list[dict[str, Any]] = []
        for slot in self.slots:
            events = self._run(slot, events, functools.partial(slot.enricher.enrich, events))
            events = events + self._run(slot, [], slot.enricher.close)
            slot.guarded.clear()
        return events

    @staticmethod
    def _run(slot: _Slot, events: list[dict[str, Any]],
             call: Callable[[], list[dict[str, Any]]]) -> list[dict[str, Any]]:
        """``call()`` (the enricher on ``events``); on an exception, ``events`` unenriched, counted."""
        if events:
            slot.batches += 1
        try:
            out = call()
        except Exception as exc:  # a plugin's bug costs this batch its enrichment, never its events
            slot.errors += 1
            slot.events_unenriched += len(events)
            slot.last_error = f"{type(exc).__name__}: {exc}"
            log.error("enricher %s failed; the batch goes on unenriched (counted): %s", slot.name, slot.last_error)
            # The enricher may have kept some of these events to let out later: remember them, so they go
            # out once (now), not twice.
            for event in events:
                slot.guarded[id(event)] = event
            while len(slot.guarded) > MAX_GUARDED:
                del slot.guarded[next(iter(slot.guarded))]
            return list(events)
        if slot.guarded:
            out = [event for event in out if slot.guarded.pop(id(event), None) is not event]
        return out

    def in_scope(self, event: dict[str, Any]) -> bool:
        """Whether the emitters get ``event`` (always, without a namespace allow-list)."""
        if self.namespaces is None:
            return True
        k8s = event.get("k8s")
        return isinstance(k8s, dict) and k8s.get("k8s.namespace.name") in self.namespaces

    def scope_mask(self, events: list[dict[str, Any]]) -> list[int] | None:
        """Indexes of the events the emitters get, or ``None`` for all of them; counts the others."""
        if self.namespaces is None:
            return None
        keep = [index for index, event in enumerate(events) if self.in_scope(event)]
        self.out_of_scope += len(events) - len(keep)
        return keep

    @staticmethod
    def _status_of(slot: _Slot) -> dict[str, Any]:
        try:
            return dict(slot.enricher.status())
        except Exception as exc:  # a plugin's bug must not break status
            return {"state": "error", "problem": f"status() raised {type(exc).__name__}: {exc}"}

    def status(self) -> dict[str, Any]:
        """Per enricher its own status plus the stage's counters; the namespace scope."""
        return {
            "enrichers": {
                slot.name: {**self._status_of(slot), "ready": bool(slot.enricher.ready), "batches": slot.batches,
                            "errors": slot.errors, "events_unenriched": slot.events_unenriched,
                            "last_error": slot.last_error}
                for slot in self.slots
            },
            "namespaces": sorted(self.namespaces) if self.namespaces is not None else None,
            "out_of_scope": self.out_of_scope,
        }
