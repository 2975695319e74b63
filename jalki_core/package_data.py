"""Files shipped next to a plugin's code, found relative to its package.

A probe names its BPF object as ``"oom_kill.bpf.o"`` and a plugin its KB
file as ``"kb/memory.json"``: both are resolved against the package of the
module that wrote them, so a plugin needs no ``importlib.resources``
boilerplate and no empty ``__init__.py`` in its data folders. This module
imports nothing from jalki, so every other module may use it.
"""

from __future__ import annotations

import importlib
import sys
from functools import reduce
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path, PurePosixPath


def anchor_of(module_name: str) -> str:
    """The package a module belongs to (itself for a package; the module itself when top-level)."""
    module = sys.modules.get(module_name) or importlib.import_module(module_name)
    return getattr(module, "__package__", None) or module.__name__


def package_files(anchor: str) -> Traversable:
    """The folder of package ``anchor`` (for a top-level module: the folder holding its file).

    :raises ModuleNotFoundError: no such package or module.
    """
    module = importlib.import_module(anchor)
    if hasattr(module, "__path__"):
        return resources.files(anchor)
    file = getattr(module, "__file__", None)
    if file is None:
        raise ModuleNotFoundError(f"module {anchor!r} has no file to resolve package data against", name=anchor)
    return Path(file).resolve().parent


def check_relative(name: str) -> str | None:
    """Why ``name`` cannot be a path relative to a package (``None`` when it can)."""
    path = PurePosixPath(name)
    if not name or path.is_absolute() or ".." in path.parts or "\\" in name:
        return f"{name!r} must be a relative path inside the package ('kb/x.json'), without '..'"
    return None


def package_file(anchor: str, name: str) -> Traversable:
    """The file ``name`` (``bpf/x.bpf.o``: '/'-separated, relative) inside package ``anchor``."""
    return reduce(lambda folder, part: folder.joinpath(part), PurePosixPath(name).parts, package_files(anchor))
