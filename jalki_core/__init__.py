"""jalki core: plugin discovery, probe loading, events and emitters.

The core knows nothing about TCP, OOM or any probe family: probes live in
plugins (``jalki-tcp`` …) found through the ``jalki`` entry-point group.
Importing this package is cheap: the libbpf binding, rich and typer load only
when used.

The author kit: a probe package needs only names from here::

    from jalki_core import (AttachRung, BoundKbRegistry, BoundProbeRegistry, Event, EventContext, Probe,
                            RecordLayout, hookimpl)

They are imported lazily, on first use (``jalki_core.Probe`` imports
:mod:`jalki_core.probe`, nothing more).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from jalki_core.hookspecs import hookimpl, hookspec
from jalki_core.version import PROJECT_NAME, __version__

if TYPE_CHECKING:
    from jalki_core.ask.result import AskResult
    from jalki_core.errors import ProbeError, ProbeUnavailableError, errno_name
    from jalki_core.events import Event, EventContext, kernel_comm
    from jalki_core.kb import KnowledgeBase, Match
    from jalki_core.probe import AttachRung, Probe, ProbeResource, RecordLayout
    from jalki_core.registry import (
        BoundEmitterRegistry,
        BoundKbRegistry,
        BoundProbeRegistry,
        EmitterRegistry,
        KbRegistry,
        ProbeRegistry,
    )

_AUTHOR_KIT: dict[str, str] = {
    "AttachRung": "jalki_core.probe",
    "BoundEmitterRegistry": "jalki_core.registry",
    "BoundKbRegistry": "jalki_core.registry",
    "BoundProbeRegistry": "jalki_core.registry",
    "EmitterRegistry": "jalki_core.registry",
    "Event": "jalki_core.events",
    "EventContext": "jalki_core.events",
    "KbRegistry": "jalki_core.registry",
    "Probe": "jalki_core.probe",
    "ProbeError": "jalki_core.errors",
    "ProbeRegistry": "jalki_core.registry",
    "ProbeResource": "jalki_core.probe",
    "ProbeUnavailableError": "jalki_core.errors",
    "RecordLayout": "jalki_core.probe",
    "errno_name": "jalki_core.errors",
    "kernel_comm": "jalki_core.events",
}
"""Names a probe package uses, and the module each is imported from on first use."""


def find(question: str, *, limit: int | None = None, kb: KnowledgeBase | None = None) -> list[Match]:
    """KB entries that answer ``question``, best first (the logic of ``jalki find``).

    :param limit: at most this many matches.
    :param kb: the knowledge base; default: built-in + ``JALKI_KB_PATH`` + installed plugins.
    """
    from jalki_core.kb import find as find_entries

    return find_entries(question, kb, limit=limit)


def ask(question: str, **options: Any) -> AskResult:
    """Answer ``question`` from the kernel (the logic of ``jalki ask``); see :func:`jalki_core.ask.engine.ask`.

    Options: ``seconds``, ``pid``, ``port``, ``kb``, ``plugins``, ``progress``, ``cancel``.
    Never raises for a condition of the machine (no privileges, no plugin): the
    result's ``mode`` says how it was answered.
    """
    from jalki_core.ask.engine import ask as ask_kernel

    return ask_kernel(question, **options)


async def ask_async(question: str, **options: Any) -> AskResult:
    """:func:`ask` for asyncio code: runs in a worker thread; cancelling stops collection early."""
    from jalki_core.ask.engine import ask_async as ask_kernel_async

    return await ask_kernel_async(question, **options)


def __getattr__(name: str) -> Any:
    """Import an author-kit name on first use, so ``import jalki_core`` stays cheap."""
    module_name = _AUTHOR_KIT.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_AUTHOR_KIT})


__all__ = [
    "PROJECT_NAME",
    "AttachRung",
    "BoundEmitterRegistry",
    "BoundKbRegistry",
    "BoundProbeRegistry",
    "EmitterRegistry",
    "Event",
    "EventContext",
    "KbRegistry",
    "Probe",
    "ProbeError",
    "ProbeRegistry",
    "ProbeResource",
    "ProbeUnavailableError",
    "RecordLayout",
    "__version__",
    "ask",
    "ask_async",
    "errno_name",
    "find",
    "hookimpl",
    "hookspec",
    "kernel_comm",
]
