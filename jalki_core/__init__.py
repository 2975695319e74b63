"""jalki core: plugin discovery, probe loading, events and emitters.

The core knows nothing about TCP, OOM or any probe family: probes live in
plugins (``jalki-tcp`` …) found through the ``jalki`` entry-point group.
Importing this package is cheap: the libbpf binding, rich and typer load only
when used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

__version__ = "0.1.0"

PROJECT_NAME = "jalki"

hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
"""Marker for plugin hook implementations: ``@jalki_core.hookimpl``."""

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
"""Marker for hook specifications (used only by :mod:`jalki_core.hookspecs`)."""

if TYPE_CHECKING:
    from jalki_core.answer import AskResult
    from jalki_core.kb import KnowledgeBase, Match


def find(question: str, *, limit: int | None = None, kb: KnowledgeBase | None = None) -> list[Match]:
    """KB entries that answer ``question``, best first (the logic of ``jalki find``).

    :param limit: at most this many matches.
    :param kb: the knowledge base; default: built-in + ``JALKI_KB_PATH`` + installed plugins.
    """
    from jalki_core.kb import find as find_entries

    return find_entries(question, kb, limit=limit)


def ask(question: str, **options: Any) -> AskResult:
    """Answer ``question`` from the kernel (the logic of ``jalki ask``); see :func:`jalki_core.ask_engine.ask`.

    Options: ``seconds``, ``pid``, ``port``, ``kb``, ``plugins``, ``progress``, ``cancel``.
    Never raises for a condition of the machine (no privileges, no plugin): the
    result's ``mode`` says how it was answered.
    """
    from jalki_core.ask_engine import ask as ask_kernel

    return ask_kernel(question, **options)


async def ask_async(question: str, **options: Any) -> AskResult:
    """:func:`ask` for asyncio code: runs in a worker thread; cancelling stops collection early."""
    from jalki_core.ask_engine import ask_async as ask_kernel_async

    return await ask_kernel_async(question, **options)


__all__ = ["PROJECT_NAME", "__version__", "ask", "ask_async", "find", "hookimpl", "hookspec"]
