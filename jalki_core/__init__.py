"""jalki core: plugin discovery, probe loading, events and emitters.

The core knows nothing about TCP, OOM or any probe family: probes live in
plugins (``jalki-tcp`` …) found through the ``jalki`` entry-point group.
Importing this package is cheap: the libbpf binding, rich and typer load only
when used.
"""

from __future__ import annotations

import pluggy

__version__ = "0.1.0"

PROJECT_NAME = "jalki"

hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
"""Marker for plugin hook implementations: ``@jalki_core.hookimpl``."""

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
"""Marker for hook specifications (used only by :mod:`jalki_core.hookspecs`)."""

__all__ = ["PROJECT_NAME", "__version__", "hookimpl", "hookspec"]
