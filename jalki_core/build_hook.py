"""The build hook of a probe package: setuptools commands that compile its BPF C at ``pip install`` time.

A probe package names these classes in its ``pyproject.toml`` instead of
carrying a ``setup.py``::

    [build-system]
    requires = ["setuptools>=77", "jalki>=0.1"]
    build-backend = "setuptools.build_meta"

    [tool.setuptools.cmdclass]
    build_py = "jalki_core.build_hook.build_py"
    sdist = "jalki_core.build_hook.sdist"
    bdist_wheel = "jalki_core.build_hook.bdist_wheel"

    [tool.jalki.bpf]            # optional: extra clang flags for this package
    cflags = ["-mcpu=v3"]

- :class:`build_py` compiles every ``*.bpf.c`` found in any folder of the
  distribution's packages (``pkg/x.bpf.c``, ``pkg/bpf/x.bpf.c``…) into
  ``x.bpf.o`` next to it, with :mod:`jalki_core.bpf_build` (clang, CO-RE),
  before the package data is collected; also for ``pip install -e``.
  Nothing is compiled at run time.
- :class:`sdist` leaves built ``*.bpf.o`` out of source distributions.
- :class:`bdist_wheel` tags a wheel that carries BPF objects for the machine
  it was built on (``py3-none-linux_x86_64``), since the objects are compiled
  with that architecture's ``__TARGET_ARCH_*``; a package without BPF sources
  stays ``py3-none-any``.

``python -m jalki_core.build_hook DIR…`` rebuilds the objects under ``DIR``
in place (the development loop of an editable install).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from setuptools.command.bdist_wheel import bdist_wheel as _bdist_wheel
from setuptools.command.build_py import build_py as _build_py
from setuptools.command.sdist import sdist as _sdist

from jalki_core import bpf_build
from jalki_core.errors import BpfBuildError

__all__ = ["bdist_wheel", "build_py", "distribution_sources", "main", "sdist"]

OBJECT_SUFFIX = ".bpf.o"


def distribution_sources(command: Any) -> list[Path]:
    """The ``*.bpf.c`` files in the folders of the distribution's packages (any depth)."""
    build = command.get_finalized_command("build_py")
    root = Path(command.distribution.src_root or os.curdir)
    folders = {(root / build.get_package_dir(package)).resolve() for package in build.packages or ()}
    # a folder inside another package folder is searched with it
    tops = [folder for folder in folders if not any(parent in folders for parent in folder.parents)]
    return sorted({source for folder in tops for source in bpf_build.find_sources(folder)})


class build_py(_build_py):  # type: ignore[misc]  # lower case: the setuptools command names
    """``build_py`` that first compiles the distribution's BPF sources in place."""

    def run(self) -> None:
        """Compile every ``*.bpf.c`` (with the package's ``[tool.jalki.bpf] cflags``), then build as usual."""
        for source in distribution_sources(self):
            try:
                bpf_build.compile_source(source)
            except BpfBuildError as exc:
                # SystemExit, not an Exception: setuptools' editable build turns an Exception of a build step
                # into a warning and goes on, installing the stale object (its warning text can even break on
                # the braces of a C error); the install must fail, with clang's message
                raise SystemExit(f"error: {exc}") from exc
        super().run()


class sdist(_sdist):  # type: ignore[misc]
    """``sdist`` without built BPF objects: a source distribution ships sources only."""

    def make_release_tree(self, base_dir: str, files: list[str]) -> None:
        """Copy the release files, less any ``*.bpf.o``."""
        super().make_release_tree(base_dir, [name for name in files if not name.endswith(OBJECT_SUFFIX)])


class bdist_wheel(_bdist_wheel):  # type: ignore[misc]
    """``bdist_wheel`` tagged for the platform when the wheel carries BPF objects."""

    def finalize_options(self) -> None:
        """Mark the distribution impure when it has BPF sources (its objects are architecture-specific)."""
        if distribution_sources(self):
            # setuptools' own sign of platform content: with it the wheel is
            # "Root-Is-Purelib: false" and the packages stay at its root
            # (installed to platlib) instead of moving under .data/purelib.
            self.distribution.has_ext_modules = lambda: True
        super().finalize_options()

    def get_tag(self) -> tuple[str, str, str]:
        """``py3-none-<platform>`` for a wheel with BPF objects: any Python, one architecture."""
        python, abi, plat = super().get_tag()
        if self.root_is_pure:
            return python, abi, plat
        return "py3", "none", plat


def main(argv: list[str] | None = None) -> int:
    """``python -m jalki_core.build_hook DIR…``: rebuild the BPF objects under each DIR in place."""
    parser = argparse.ArgumentParser(
        prog="python -m jalki_core.build_hook",
        description="Rebuild the BPF objects of probe packages in place (after editing their C).",
    )
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="a probe package or distribution folder")
    parser.add_argument("--force", action="store_true", help="rebuild up-to-date objects too")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    failed = 0
    for folder in args.dirs:
        sources = bpf_build.find_sources(folder)
        if not sources:
            print(f"error: no *{bpf_build.SOURCE_SUFFIX} under {folder}", file=sys.stderr)
            failed += 1
            continue
        for source in sources:
            try:
                print(f"OK   {bpf_build.compile_source(source, force=args.force)}")
            except BpfBuildError as exc:
                failed += 1
                print(f"FAIL {source}\n    " + str(exc).replace("\n", "\n    "), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
