"""NATS subjects for events: ``<prefix>.<cluster>.<node>.<type>``.

A NATS subject is a dot-separated list of tokens; a token must not be empty
and must not hold whitespace, ``.``, ``*`` or ``>``. Cluster and node names
come from the event and may hold any of these (a node named by its FQDN), so
each is reduced to one safe token. The event type keeps its dots: they are
subject levels, so ``jalki.*.*.kernel.tcp.>`` selects every TCP event.
"""

from __future__ import annotations

import re

from jalki_core.errors import UsageError
from jalki_core.events import Event

DEFAULT_PREFIX = "jalki"
MISSING_TOKEN = "_"
"""The token written for a missing or empty cluster/node (an event without a cluster)."""

SUBJECTS_KEPT = 4096
"""Most (cluster, node, type) subjects remembered; the cache is emptied when it grows past this."""

_UNSAFE = re.compile(r"[^A-Za-z0-9_\-]")
_TOKEN = re.compile(r"[A-Za-z0-9_\-]+")


def token(value: object) -> str:
    """One subject token from a name: every character outside ``[A-Za-z0-9_-]`` becomes ``_``.

    ``None`` and the empty string become :data:`MISSING_TOKEN`; ``node-1.example.com``
    becomes ``node-1_example_com``.
    """
    if value is None:
        return MISSING_TOKEN
    text = _UNSAFE.sub("_", str(value))
    return text or MISSING_TOKEN


def type_tokens(event_type: object) -> str:
    """The event type as subject levels: each dot-separated part made a safe token."""
    return ".".join(token(part) for part in str(event_type or "").split("."))


def check_prefix(prefix: str) -> str:
    """Return ``prefix`` when it is one or more safe tokens joined by dots, else raise :class:`UsageError`."""
    if not prefix or not all(_TOKEN.fullmatch(part) for part in prefix.split(".")):
        raise UsageError(
            f"bad NATS subject prefix {prefix!r}",
            hint="use tokens of letters, digits, '_' or '-' joined by dots, e.g. subject_prefix=acme.jalki",
        )
    return prefix


class SubjectMaker:
    """Builds each event's subject, remembering recent (cluster, node, type) combinations.

    :param prefix: the first subject levels (checked with :func:`check_prefix`).
    """

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        self.prefix = check_prefix(prefix)
        self._cache: dict[tuple[object, object, object], str] = {}

    def __call__(self, event: Event) -> str:
        """The subject of ``event``: ``<prefix>.<cluster>.<node>.<type levels>``."""
        key = (event.get("cluster"), event.get("node"), event.get("type"))
        try:
            return self._cache[key]
        except (KeyError, TypeError):  # TypeError: an unhashable value (a decoder's bug): build it anyway
            pass
        subject = f"{self.prefix}.{token(key[0])}.{token(key[1])}.{type_tokens(key[2])}"
        try:
            if len(self._cache) >= SUBJECTS_KEPT:
                self._cache.clear()
            self._cache[key] = subject
        except TypeError:
            pass
        return subject
