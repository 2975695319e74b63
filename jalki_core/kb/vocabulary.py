"""The KB's vocabulary: field types and the named value sets (signals, TCP states…) from ``kb/vocabulary.json``.

Kept apart from :mod:`jalki_core.kb.model` so the condition compiler, which
needs only the vocabulary, does not import the model that refers back to it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

BASE_FIELD_TYPES: tuple[str, ...] = ("string", "integer", "number", "boolean", "ip", "errno")
"""Field types every KB may use; further types are the vocabulary's value sets."""


@dataclass(frozen=True)
class ValueSet:
    """A named set of symbolic values (e.g. ``signal``), with optional kernel numbers."""

    name: str
    names: tuple[str, ...]
    numbers: Mapping[str, int] = field(default_factory=dict)
    description: str = ""

    def name_of(self, number: int) -> str | None:
        """The symbolic name of a kernel number (``9`` → ``"SIGKILL"`` for ``signal``)."""
        for name, value in self.numbers.items():
            if value == number:
                return name
        return None


@dataclass(frozen=True)
class Vocabulary:
    """Data the validator needs, kept in ``kb/vocabulary.json`` rather than in code.

    :param reported_names: value sets whose name an interpretation may state
        beside its conclusion (``"tcp_state": "CLOSE_WAIT"``), as it may an
        errno; answers carry each of them (and ``errno``) under its own key.
    """

    value_sets: Mapping[str, ValueSet] = field(default_factory=dict)
    attach_kinds: tuple[str, ...] = ()
    envelope_fields: Mapping[str, str] = field(default_factory=dict)
    reported_names: tuple[str, ...] = ()

    def field_types(self) -> tuple[str, ...]:
        """Every type a field may declare: the base types and the value-set names."""
        return (*BASE_FIELD_TYPES, *sorted(self.value_sets))

    def name_kinds(self) -> tuple[str, ...]:
        """The kinds of name an interpretation may state: ``errno``, then the reported value sets."""
        return ("errno", *self.reported_names)
