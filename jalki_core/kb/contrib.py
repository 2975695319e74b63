"""Where the KB registry types used to live; kept so plugins written against it still import.

The registry a ``jalki_register_kb`` hook receives is
:class:`jalki_core.registry.BoundKbRegistry` (also ``jalki_core.BoundKbRegistry``),
filled by :class:`jalki_core.plugins.JalkiPlugins` in the same pass as probes
and emitters::

    from jalki_core import BoundKbRegistry, hookimpl

    @hookimpl
    def jalki_register_kb(registry: BoundKbRegistry) -> None:
        registry.register_file("kb/http.json")   # relative to the plugin's package

This module imports only the registry, so it takes part in no import cycle.
"""

from __future__ import annotations

from jalki_core.registry import BoundKbRegistry, KbRegistry

HOOK_NAME = "jalki_register_kb"

__all__ = ["HOOK_NAME", "BoundKbRegistry", "KbRegistry"]
