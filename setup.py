"""Build hooks of the jalki core: the cffi libbpf binding and the doctor's BPF object.

Metadata lives in pyproject.toml; this file only adds what setuptools cannot
declare there: the cffi extension and compiling ``jalki_core/bpf/*.bpf.c``
(with the shared headers copied in as package data so plugin builds find them
in an installed core).
"""

from __future__ import annotations

import importlib
import shutil
import sys
import types
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


def _bpf_build():  # type: ignore[no-untyped-def]
    """Import jalki_core.bpf_build without running jalki_core/__init__.py.

    At build time the package's run-time dependencies (pluggy …) may not be
    installed yet, so the package is stood in for by a bare module whose
    ``__path__`` points at the source tree; its submodules import normally.
    """
    if "jalki_core" not in sys.modules:
        package = types.ModuleType("jalki_core")
        package.__path__ = [str(ROOT / "jalki_core")]
        sys.modules["jalki_core"] = package
    return importlib.import_module("jalki_core.bpf_build")


class BuildPyWithBpf(build_py):  # type: ignore[misc]
    """Compile the core's BPF objects and ship the shared headers."""

    def run(self) -> None:
        bpf_build = _bpf_build()
        bpf_build.compile_package(ROOT / "jalki_core")
        bpf_build.copy_headers_into(ROOT / "jalki_core" / "bpf_include")
        schemas = ROOT / "jalki_core" / "schemas"
        schemas.mkdir(exist_ok=True)
        for name in ("event.schema.json", "kb.schema.json", "ask.schema.json"):
            shutil.copyfile(ROOT / "specs" / name, schemas / name)
        kb_data = ROOT / "jalki_core" / "kb" / "data"
        kb_data.mkdir(exist_ok=True)
        for stale in kb_data.glob("*.json"):  # a renamed kb/ file must not linger as a second copy
            stale.unlink()
        for source in (ROOT / "kb").glob("*.json"):
            shutil.copyfile(source, kb_data / source.name)
        super().run()


setup(
    cffi_modules=["jalki_core/_libbpf/build_ffi.py:ffibuilder"],
    cmdclass={"build_py": BuildPyWithBpf},
)
