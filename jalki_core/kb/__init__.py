"""The knowledge base: which probe answers which question, and how to read its events.

KB documents (``kb/*.json``, ``JALKI_KB_PATH``, plugins' ``jalki_register_kb``)
describe probe entries per layer; their interpretations are structured
conditions evaluated over events, never text matched against text.

Public API::

    kb = load_kb(paths, extra_entries=())   # never raises for a bad document: kb.problems
    find(question, kb=None) -> list[Match]   # ranked entries (specs/kb.md)
    evaluate(events, kb=None) -> list[Finding]
    explain(entry_id, ["field=value", ...], kb=None) -> Explanation

The format is specified in ``specs/kb.md`` and ``specs/kb.schema.json``.
"""

from __future__ import annotations

from jalki_core.kb.evaluate import Destination, Evidence, Finding, ProcessRef, evaluate, parse_timestamp
from jalki_core.kb.explain import Explanation, Verdict, explain
from jalki_core.kb.find import Match, find, understood_words
from jalki_core.kb.load import builtin_kb_dir, default_kb, load_kb
from jalki_core.kb.model import (
    SEVERITIES,
    FieldSpec,
    Implementation,
    Interpretation,
    KbDocument,
    KbEntry,
    KbProblem,
    KnowledgeBase,
    ValueSet,
    Vocabulary,
)

__all__ = [
    "SEVERITIES",
    "Destination",
    "Evidence",
    "Explanation",
    "FieldSpec",
    "Finding",
    "Implementation",
    "Interpretation",
    "KbDocument",
    "KbEntry",
    "KbProblem",
    "KnowledgeBase",
    "Match",
    "ProcessRef",
    "ValueSet",
    "Verdict",
    "Vocabulary",
    "builtin_kb_dir",
    "default_kb",
    "evaluate",
    "explain",
    "find",
    "load_kb",
    "parse_timestamp",
    "understood_words",
]
