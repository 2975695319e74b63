#!/usr/bin/env python3
"""Build jalki's BPF objects (a thin CLI over ``jalki_core.bpf_build``).

    python3 build_bpf.py                    compile every package of the repo in place
    python3 build_bpf.py PKG_DIR ...        compile those packages in place (a plugin folder such as
                                            plugins/jalki_tcp, or any folder: its *.bpf.c at any depth)
    python3 build_bpf.py --check            compile every *.bpf.c into a temp dir, OK/FAIL each
    --vmlinux auto|generated|minimal        which vmlinux.h to compile against
    --force                                 rebuild even when the objects are up to date

Standard library only: runs with the system python3, without a venv and
without importing the rest of jalki_core.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
import tempfile
import types
from pathlib import Path

REPO = Path(__file__).resolve().parent

# Where the repository keeps BPF sources (relative to the repo root); plugins
# are searched whole (any folder of their packages), like their build hook does.
SOURCE_GLOBS = (
    "jalki_core/bpf/*.bpf.c",
    "bench/bpf/*.bpf.c",
    "tests/**/bpf/*.bpf.c",
)
PLUGIN_DIRS = "plugins/*/"


def _load_bpf_build() -> types.ModuleType:
    """Import jalki_core.bpf_build (and jalki_core.errors) without jalki_core/__init__.py."""
    if "jalki_core" not in sys.modules:
        pkg = types.ModuleType("jalki_core")
        pkg.__path__ = [str(REPO / "jalki_core")]
        sys.modules["jalki_core"] = pkg
    name = "jalki_core.bpf_build"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "jalki_core" / "bpf_build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def all_sources(bb: types.ModuleType) -> list[Path]:
    found: set[Path] = set()
    for pattern in SOURCE_GLOBS:
        found.update(p for p in REPO.glob(pattern) if p.is_file())
    for plugin in REPO.glob(PLUGIN_DIRS):
        found.update(bb.find_sources(plugin))
    return sorted(found)


def check(bb: types.ModuleType, vmlinux: str) -> int:
    sources = all_sources(bb)
    if not sources:
        print("no *.bpf.c sources found", file=sys.stderr)
        return 1
    failed = 0
    with tempfile.TemporaryDirectory(prefix="jalki-bpf-check-") as tmp:
        for src in sources:
            rel = src.relative_to(REPO)
            out = Path(tmp) / (str(rel).replace("/", "__")[: -len(".c")] + ".o")
            try:
                bb.compile_source(src, out, vmlinux=vmlinux, force=True)
            except bb.BpfBuildError as exc:
                failed += 1
                print(f"FAIL {rel}")
                print("    " + str(exc).replace("\n", "\n    "))
            else:
                print(f"OK   {rel}")
    print(f"{len(sources) - failed}/{len(sources)} compiled (vmlinux: {vmlinux})")
    return 1 if failed else 0


def build(bb: types.ModuleType, packages: list[str], vmlinux: str, force: bool) -> int:
    if packages:
        sources = [s for pkg in packages for s in bb.find_sources(pkg)]
        missing = [pkg for pkg in packages if not bb.find_sources(pkg)]
        for pkg in missing:
            print(f"no *.bpf.c under {pkg}", file=sys.stderr)
        if missing:
            return 2
    else:
        sources = all_sources(bb)
    failed = 0
    for src in sources:
        try:
            obj = bb.compile_source(src, vmlinux=vmlinux, force=force)
        except bb.BpfBuildError as exc:
            failed += 1
            print(f"FAIL {src}\n    " + str(exc).replace("\n", "\n    "))
        else:
            print(f"OK   {obj}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build jalki's BPF objects.")
    parser.add_argument("packages", nargs="*", metavar="PKG_DIR",
                        help="package directories to build in place (default: the whole repo)")
    parser.add_argument("--check", action="store_true",
                        help="compile every *.bpf.c of the repo into a temp dir and report")
    parser.add_argument("--vmlinux", choices=("auto", "generated", "minimal"), default="auto")
    parser.add_argument("--force", action="store_true", help="rebuild up-to-date objects")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    bb = _load_bpf_build()
    try:
        if args.check:
            return check(bb, args.vmlinux)
        return build(bb, args.packages, args.vmlinux, args.force)
    except bb.BpfBuildError as exc:
        print(f"error: {exc.one_line()}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
