"""KB documents contributed by plugins through the ``jalki_register_kb`` hook.

A plugin ships KB JSON files as package data and registers them::

    from importlib import resources
    from jalki_core import hookimpl

    @hookimpl
    def jalki_register_kb(registry):
        registry.register_file(resources.files("jalki_http") / "kb" / "http.json")

Nothing a plugin registers here can stop the tool: an unreadable file, bad
JSON or a hook that raises becomes a located problem in the loaded
knowledge base (``KnowledgeBase.problems``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jalki_core.kb.model import KbDocument

if TYPE_CHECKING:
    from jalki_core.plugins import JalkiPlugins

HOOK_NAME = "jalki_register_kb"


class KbRegistry:
    """Collects the KB documents of every plugin, in registration order."""

    def __init__(self) -> None:
        self.documents: list[KbDocument] = []

    def bound_to(self, origin: str) -> BoundKbRegistry:
        """The view handed to one plugin's hook; ``origin`` names the plugin in problems."""
        return BoundKbRegistry(self, origin)


class BoundKbRegistry:
    """What a plugin's ``jalki_register_kb`` hook receives."""

    def __init__(self, registry: KbRegistry, origin: str) -> None:
        self._registry = registry
        self.origin = origin

    def register_file(self, path: str | os.PathLike[str] | Traversable) -> None:
        """Register a KB JSON file (a path, or a ``importlib.resources`` file of the plugin's package)."""
        source: Traversable = Path(path) if isinstance(path, str | os.PathLike) else path
        name = f"{self.origin}: {source.name}"
        try:
            text = source.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            self._registry.documents.append(KbDocument(name, error=f"cannot read: {exc}"))
            return
        self._registry.documents.append(KbDocument(name, text=text))

    def register_document(self, data: Mapping[str, Any], name: str = "document") -> None:
        """Register an already-parsed KB document (a layer or vocabulary object)."""
        self._registry.documents.append(KbDocument(f"{self.origin}: {name}", data=data))


def collect(plugins: JalkiPlugins) -> list[KbDocument]:
    """Call ``jalki_register_kb`` of every loaded plugin, each in isolation.

    A hook that raises is recorded as a document with an error (reported by
    the loader with the plugin named); the other plugins still contribute.
    """
    registry = KbRegistry()
    for info in sorted(plugins.loaded.values(), key=lambda item: item.identity.plugin):
        identity = info.identity
        module = plugins.pm.get_plugin(f"{identity.plugin}:{identity.distribution}")
        hook = getattr(module, HOOK_NAME, None) if module is not None else None
        if hook is None:
            continue
        origin = f"plugin {identity.plugin} ({identity})"
        try:
            hook(registry=registry.bound_to(origin))
        except Exception as exc:  # a plugin's own bug must not stop the others
            registry.documents.append(KbDocument(origin, error=f"{HOOK_NAME} raised {type(exc).__name__}: {exc}"))
    return registry.documents


def plugin_documents() -> list[KbDocument]:
    """The KB documents of the installed plugins (loading them as the CLI does)."""
    from jalki_core.plugins import JalkiPlugins

    return collect(JalkiPlugins())
