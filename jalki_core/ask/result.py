"""What ``jalki ask`` answers: typed, immutable results and their JSON form.

The JSON form (:meth:`AskResult.as_dict`) is specified by ``specs/ask.md`` and
``specs/ask.schema.json``; the CLI's ``--json`` prints exactly it, and the
Python API returns the objects themselves.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from jalki_core.kb.model import SEVERITY_RANK

if TYPE_CHECKING:
    from jalki_core.kb import Finding, Match

ASK_RESULT_VERSION = 1
"""Version of the ``jalki ask --json`` object; bumped on an incompatible change."""

MODES: tuple[str, ...] = ("observed", "kb_only", "no_match")
"""``observed``: probes ran and the findings come from real events; ``kb_only``:
nothing could be observed, the answer comes from the knowledge base alone;
``no_match``: no knowledge-base entry matches the question."""

UNOBSERVED_REASONS: tuple[str, ...] = (
    "not_implemented", "plugin_not_installed", "not_attachable", "no_privileges", "no_btf", "collection_failed",
)
"""Why a relevant probe entry could not be observed (``Unobserved.code``)."""


@dataclass(frozen=True)
class ProbeUse:
    """One probe ``ask`` attached (or tried to), and what it collected.

    :param entries: the KB entries this probe implements that the question selected.
    :param attach: the attach-ladder rung it ran on; ``None`` when it could not attach.
    :param drops: records lost per cause (``ringbuf_full``, ``sampled``, ``decode_error``…).
    :param failed_rungs: the rungs tried before (or instead of) ``attach``, one line each.
    """

    probe: str
    plugin: str
    entries: tuple[str, ...]
    attach: str | None
    events: int
    drops: Mapping[str, int]
    failed_rungs: tuple[str, ...] = ()
    error: str | None = None

    @property
    def dropped(self) -> int:
        """Records lost for this probe, every cause together."""
        return sum(self.drops.values())

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {
            "probe": self.probe,
            "plugin": self.plugin,
            "entries": list(self.entries),
            "attach": self.attach,
            "events": self.events,
            "drops": dict(self.drops),
            "failed_rungs": list(self.failed_rungs),
            "error": self.error,
        }


@dataclass(frozen=True)
class Unobserved:
    """A relevant KB entry whose events ``ask`` could not collect, and why.

    :param code: one of :data:`UNOBSERVED_REASONS`.
    :param reason: one line a person can act on (what to install or run).
    """

    entry: str
    kernel: str
    code: str
    reason: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {"entry": self.entry, "kernel": self.kernel, "code": self.code, "reason": self.reason}


@dataclass(frozen=True)
class PossibleCause:
    """What an entry's events would mean (an interpretation), for answers from the KB alone."""

    entry: str
    interpretation: str
    severity: str
    conclusion: str
    action: str
    errno: str | None
    tcp_state: str | None

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {
            "entry": self.entry,
            "interpretation": self.interpretation,
            "severity": self.severity,
            "conclusion": self.conclusion,
            "action": self.action,
            "errno": self.errno,
            "tcp_state": self.tcp_state,
        }


@dataclass(frozen=True)
class AskResult:
    """The answer to one question.

    :param mode: one of :data:`MODES`.
    :param answer: one sentence: the top finding with its evidence, that
        nothing is wrong (and how much was observed), or why only the KB answered.
    :param findings: every interpretation that held over the collected events,
        most important first (severity, then event count).
    :param matches: the KB entries that matched the question, best first.
    :param selected: the entries whose probes were attached.
    :param unobserved: relevant entries that could not be observed, with the reason.
    :param possible_causes: in ``kb_only`` mode, what the relevant entries'
        events would mean; empty otherwise.
    :param events_by_type: events collected per event type.
    :param events_not_kept: events beyond the in-memory limit (counted, not evaluated).
    :param understood_words: in ``no_match`` mode, the words the KB understands.
    :param notes: anything else the reader must know (drops, limits, errors).
    """

    question: str
    mode: str
    answer: str
    seconds: float
    duration_s: float
    findings: tuple[Finding, ...] = ()
    matches: tuple[Match, ...] = ()
    selected: tuple[str, ...] = ()
    probes: tuple[ProbeUse, ...] = ()
    unobserved: tuple[Unobserved, ...] = ()
    possible_causes: tuple[PossibleCause, ...] = ()
    events_by_type: Mapping[str, int] = field(default_factory=dict)
    events_not_kept: int = 0
    understood_words: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def events(self) -> int:
        """Events collected over every probe."""
        return sum(self.events_by_type.values())

    @property
    def top(self) -> Finding | None:
        """The most important finding, or ``None``."""
        return self.findings[0] if self.findings else None

    @property
    def problem_found(self) -> bool:
        """Whether any finding is of severity ``error`` or ``critical``."""
        return any(SEVERITY_RANK[finding.severity] >= SEVERITY_RANK["error"] for finding in self.findings)

    def as_dict(self) -> dict[str, Any]:
        """The documented JSON object (``specs/ask.schema.json``)."""
        return {
            "version": ASK_RESULT_VERSION,
            "question": self.question,
            "mode": self.mode,
            "answer": self.answer,
            "problem_found": self.problem_found,
            "seconds": self.seconds,
            "duration_s": round(self.duration_s, 3),
            "findings": [finding.as_dict() for finding in self.findings],
            "matches": [
                {"entry": match.entry.id, "score": match.score, "layer": match.entry.layer,
                 "implemented_by": (None if match.entry.implemented_by is None else
                                    {"plugin": match.entry.implemented_by.plugin,
                                     "probe": match.entry.implemented_by.probe}),
                 "selected": match.entry.id in self.selected}
                for match in self.matches
            ],
            "selected": list(self.selected),
            "probes": [probe.as_dict() for probe in self.probes],
            "unobserved": [item.as_dict() for item in self.unobserved],
            "possible_causes": [cause.as_dict() for cause in self.possible_causes],
            "events": {"total": self.events, "by_type": dict(self.events_by_type),
                       "not_kept": self.events_not_kept},
            "understood_words": list(self.understood_words),
            "notes": list(self.notes),
        }
