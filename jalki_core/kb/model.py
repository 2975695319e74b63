"""The knowledge base as typed, immutable objects.

A :class:`KnowledgeBase` holds the entries of every KB document that loaded
(built-in ``kb/*.json``, the user's ``JALKI_KB_PATH``, plugins), the shared
:class:`Vocabulary` (value sets, attach kinds, the event envelope's fields, the
names an answer reports) and the :class:`KbProblem` list of everything that
did not load. Conditions are compiled objects from
:mod:`jalki_core.kb.conditions`, never text. Nothing here knows a probe
family: what is specific to one (its state names, …) is vocabulary data.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from jalki_core.kb.vocabulary import BASE_FIELD_TYPES as BASE_FIELD_TYPES
from jalki_core.kb.vocabulary import ValueSet as ValueSet
from jalki_core.kb.vocabulary import Vocabulary as Vocabulary
from jalki_core.registry import KbDocument as KbDocument  # what plugins register: defined with the registries

if TYPE_CHECKING:
    from jalki_core.kb.conditions import Rule

SEVERITIES: tuple[str, ...] = ("info", "warning", "error", "critical")
"""Finding severities, least to most important."""

SEVERITY_RANK: dict[str, int] = {name: rank for rank, name in enumerate(SEVERITIES)}
"""``severity name → rank``; a higher rank is more important."""

EVENT_RATES: tuple[str, ...] = ("low", "medium", "high")
"""How often an entry's event fires on a busy machine; ``high`` means: sample or filter."""

@dataclass(frozen=True)
class KbProblem:
    """Something in a KB document that could not be used, located precisely.

    :param source: the file (or plugin origin) of the document.
    :param entry: the entry id (``#3`` when the entry has no usable id), or
        ``None`` for a problem with the document itself.
    :param path: the field path inside the entry (or document), e.g.
        ``interpretations[1].condition.all[0].eq``; empty for the whole thing.
    :param message: what is wrong.
    """

    source: str
    entry: str | None
    path: str
    message: str

    def one_line(self) -> str:
        """``kb/demo.json: entry 'demo_probe': interpretations[0].errno: unknown errno name 'EFOO'``."""
        parts = [self.source]
        if self.entry is not None:
            parts.append(f"entry {self.entry!r}")
        if self.path:
            parts.append(self.path)
        return ": ".join([*parts, self.message])


@dataclass(frozen=True)
class FieldSpec:
    """One event field an entry documents: a dotted path into the event."""

    name: str
    type: str
    meaning: str
    important: bool


@dataclass(frozen=True)
class Implementation:
    """The plugin and probe of this project that produce an entry's events."""

    plugin: str
    probe: str


@dataclass(frozen=True)
class Interpretation:
    """A rule: when ``rule`` holds over an entry's events, conclude something.

    ``rule`` is ``None`` when every event of the entry's type is the finding
    (an OOM kill needs no further condition).

    ``names`` are the kernel names the conclusion is about, one per kind the
    vocabulary lets an interpretation state (``errno``, then its
    ``reported_names``), ``None`` where it states none: ``(("errno",
    "ECONNREFUSED"), ("tcp_state", None))``. Each kind also reads as an
    attribute (``rule.errno``; ``rule.tcp_state`` when the vocabulary reports
    ``tcp_state``); see :func:`named`.
    """

    id: str
    entry_id: str
    rule: Rule | None
    conclusion: str
    severity: str
    action: str
    names: tuple[tuple[str, str | None], ...] = ()
    raw_condition: Any = field(default=None, compare=False, repr=False)

    def __getattr__(self, kind: str) -> str | None:
        return named(self, kind)

    def name(self, kind: str) -> str | None:
        """The stated name of this kind (``"errno"``, a reported value set), or ``None``."""
        return dict(self.names).get(kind)

    @property
    def errno(self) -> str | None:
        """The errno name the conclusion is about, if any."""
        return self.name("errno")

    @property
    def windowed(self) -> bool:
        """Whether the rule is a windowed aggregate (needs several events)."""
        from jalki_core.kb.conditions import Window

        return isinstance(self.rule, Window)


def named(holder: object, kind: str) -> str | None:
    """Attribute access to a kind in ``holder.names``; other names raise :class:`AttributeError`.

    Lets ``interpretation.tcp_state`` read the vocabulary's ``tcp_state`` name
    without the model declaring a field for one probe family.
    """
    names: tuple[tuple[str, str | None], ...] = vars(holder).get("names", ())
    for name_kind, value in names:
        if name_kind == kind:
            return value
    raise AttributeError(f"{type(holder).__name__!r} object has no attribute {kind!r}")


@dataclass(frozen=True)
class KbEntry:
    """One probe entry: what it observes, what it answers, how to read its events."""

    id: str
    layer: str
    source: str
    summary: str
    function: str | None
    tracepoint: str | None
    implemented_by: Implementation | None
    attach: tuple[str, ...]
    event_type: str
    event_rate: str
    answers: tuple[str, ...]
    keywords: tuple[str, ...]
    fields: tuple[FieldSpec, ...]
    use_when: str
    not_when: str
    combine_with: tuple[str, ...]
    interpretations: tuple[Interpretation, ...]
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    implements: str | None = None
    """The placeholder entry id this entry replaced (set by the loader, also for the same-id case)."""

    @property
    def placeholder(self) -> bool:
        """No probe of this project emits the entry's events yet (``implemented_by`` is null)."""
        return self.implemented_by is None

    def field_spec(self, name: str) -> FieldSpec | None:
        """The declared field ``name`` (a dotted event path), or ``None``."""
        for spec in self.fields:
            if spec.name == name:
                return spec
        return None

    def as_dict(self) -> dict[str, Any]:
        """The entry as written in its KB file, plus ``layer``, ``source`` and the placeholder it replaced."""
        implements = {"implements": self.implements} if self.implements else {}
        return {**dict(self.raw), **implements, "layer": self.layer, "source": self.source}


@dataclass(frozen=True)
class KnowledgeBase:
    """Every entry that loaded, the vocabulary, and the problems of what did not.

    :param implemented: placeholder entry id → id of the entry that implements
        it and replaced it (``implements``, or the same id); :meth:`get`
        follows it.
    """

    entries: Mapping[str, KbEntry]
    vocabulary: Vocabulary
    problems: tuple[KbProblem, ...] = ()
    sources: tuple[str, ...] = ()
    implemented: Mapping[str, str] = field(default_factory=dict)

    def __iter__(self) -> Iterator[KbEntry]:
        return iter(self.entries[key] for key in sorted(self.entries))

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, entry_id: str) -> KbEntry | None:
        """The entry with this id (or the entry that implements this placeholder), or ``None``."""
        entry = self.entries.get(entry_id)
        if entry is None and entry_id in self.implemented:
            entry = self.entries.get(self.implemented[entry_id])
        return entry

    def layers(self) -> tuple[str, ...]:
        """The layers that have at least one entry, sorted."""
        return tuple(sorted({entry.layer for entry in self.entries.values()}))

    def in_layer(self, layer: str) -> list[KbEntry]:
        """The entries of one layer, sorted by id."""
        return [entry for entry in self if entry.layer == layer]

    def interpretations(self) -> Iterator[tuple[KbEntry, Interpretation]]:
        """Every (entry, interpretation) pair, in entry-id then file order."""
        for entry in self:
            for interpretation in entry.interpretations:
                yield entry, interpretation
