"""The core's name and version, in a module that imports nothing, so any module may use them.

Modules inside :mod:`jalki_core` import from here (or from the module that
defines a name), never from the ``jalki_core`` package itself: the package is
the public facade and re-exports the rest, so importing from it would make
every module part of one import cycle.
"""

from __future__ import annotations

__version__ = "0.1.0"

PROJECT_NAME = "jalki"
"""The pluggy project name: hooks are ``jalki_*``, the entry-point group is ``jalki``."""
