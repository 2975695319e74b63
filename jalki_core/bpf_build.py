"""Compile jalki's BPF C sources into CO-RE objects (``x.bpf.c`` → ``x.bpf.o``).

Standard library only, and importable on its own (``build_bpf.py`` loads this
file without importing the rest of ``jalki_core``). Each source is built with::

    clang -g -O2 -target bpf -D__TARGET_ARCH_<arch> [cflags] \\
          -I<bpf_src> -I<vmlinux dir> -I<source dir> -c x.bpf.c -o x.bpf.o
    llvm-strip -g x.bpf.o          # drops DWARF, keeps .BTF / .BTF.ext

No ``-mcpu``: clang's default BPF CPU (``generic``, i.e. v1) is used unless
the package asks for more. ``[cflags]`` are the package's own flags, read from
the nearest ``pyproject.toml`` above the source::

    [tool.jalki.bpf]
    cflags = ["-mcpu=v3"]   # e.g. 32-bit compare-and-swap (clang 14 crashes without it)

``vmlinux.h`` is either generated from the running kernel's BTF with bpftool
(cached per kernel) or the minimal hand-written CO-RE header shipped in
``bpf_src/vmlinux/minimal``. Thanks to CO-RE both give objects that load on
any BTF-enabled kernel. Environment: ``JALKI_BPF_CACHE`` (cache directory),
``CLANG``, ``LLVM_STRIP``, ``BPFTOOL`` (tool paths).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import tomllib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

from jalki_core.errors import BpfBuildError

__all__ = [
    "VmlinuxMode",
    "arch_define",
    "compile_package",
    "compile_source",
    "copy_headers_into",
    "find_sources",
    "include_dirs",
    "object_path",
    "package_cflags",
    "stale_sources",
    "vmlinux_header",
]

log = logging.getLogger("jalki.build")

VmlinuxMode = Literal["auto", "generated", "minimal"]
VMLINUX_MODES: tuple[str, ...] = ("auto", "generated", "minimal")

KERNEL_BTF = Path("/sys/kernel/btf/vmlinux")
SOURCE_SUFFIX = ".bpf.c"

# platform.machine() → the __TARGET_ARCH_* name libbpf's bpf_tracing.h expects
_ARCH_NAMES: dict[str, str] = {
    "x86_64": "x86",
    "amd64": "x86",
    "i386": "x86",
    "i686": "x86",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv6l": "arm",
    "armv7l": "arm",
    "armv8l": "arm",
    "ppc64le": "powerpc",
    "ppc64": "powerpc",
    "s390x": "s390",
    "riscv64": "riscv",
    "loongarch64": "loongarch",
    "mips": "mips",
    "mips64": "mips",
    "sparc64": "sparc",
}

_CLANG_NAMES = ("clang", *(f"clang-{v}" for v in range(20, 10, -1)))
_STRIP_NAMES = ("llvm-strip", *(f"llvm-strip-{v}" for v in range(20, 10, -1)))


# --------------------------------------------------------------------------
# Locations
# --------------------------------------------------------------------------


def include_dirs() -> Path:
    """Return the ``bpf_src`` directory (holds ``jalki/`` and ``vmlinux/minimal/``).

    In a repository checkout (``bpf_src`` next to ``jalki_core``) that is the
    source of truth: a ``jalki_core/bpf_include`` copy left there by an
    install would be stale as soon as a header is edited. An installed jalki
    has no ``bpf_src`` beside it and uses its packaged copy,
    ``jalki_core/bpf_include``.
    """
    checkout = Path(__file__).resolve().parents[1] / "bpf_src"
    if (checkout / "jalki" / "common.bpf.h").is_file():
        return checkout
    installed = Path(__file__).resolve().parent / "bpf_include"
    if (installed / "jalki" / "common.bpf.h").is_file():
        return installed
    raise BpfBuildError(
        "jalki's BPF headers (jalki/common.bpf.h) were not found",
        hint=f"looked in {checkout} and {installed}; reinstall jalki",
    )


def copy_headers_into(dest_dir: str | os.PathLike[str]) -> Path:
    """Copy ``bpf_src/jalki/`` and ``bpf_src/vmlinux/minimal/`` into ``dest_dir``.

    Used at packaging time to ship the headers as ``jalki_core/bpf_include``,
    so that third-party probe packages can be built from an installed jalki.
    Returns ``dest_dir``.
    """
    src = include_dirs()
    dest = Path(dest_dir)
    if dest.resolve() == src.resolve():
        return dest
    for sub in (Path("jalki"), Path("vmlinux") / "minimal"):
        target = dest / sub
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(src / sub, target, ignore=shutil.ignore_patterns("*.o", "__pycache__"))
    return dest


def minimal_vmlinux_header() -> Path:
    """The shipped hand-written CO-RE ``vmlinux.h``."""
    return include_dirs() / "vmlinux" / "minimal" / "vmlinux.h"


def cache_dir() -> Path:
    """Where generated headers are cached (``$JALKI_BPF_CACHE`` or ``~/.cache/jalki``)."""
    env = os.environ.get("JALKI_BPF_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "jalki"


def arch_define(machine: str | None = None) -> str:
    """The ``-D__TARGET_ARCH_<arch>`` flag for ``machine`` (default: this host)."""
    machine = (machine or platform.machine()).lower()
    arch = _ARCH_NAMES.get(machine)
    if arch is None:
        if machine.startswith("arm"):
            arch = "arm"
        elif machine.startswith("mips"):
            arch = "mips"
        else:
            raise BpfBuildError(
                f"unknown machine architecture {machine!r} for __TARGET_ARCH",
                hint="supported: " + ", ".join(sorted(set(_ARCH_NAMES.values()))),
            )
    return f"-D__TARGET_ARCH_{arch}"


def _find_tool(env_var: str, names: Sequence[str]) -> str | None:
    explicit = os.environ.get(env_var)
    if explicit:
        return explicit
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    return None


# --------------------------------------------------------------------------
# vmlinux.h
# --------------------------------------------------------------------------


def _btf_fingerprint(btf: Path) -> str:
    digest = hashlib.sha256()
    with btf.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def _generate_vmlinux(btf: Path, bpftool: str) -> Path:
    target = cache_dir() / "vmlinux" / _btf_fingerprint(btf) / "vmlinux.h"
    if target.is_file() and target.stat().st_size > 0:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    cmd = [bpftool, "btf", "dump", "file", str(btf), "format", "c"]
    fd, tmp_name = tempfile.mkstemp(prefix=".vmlinux.", suffix=".h", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            proc = subprocess.run(cmd, stdout=out, stderr=subprocess.PIPE, check=False)
        if proc.returncode != 0:
            raise BpfBuildError(
                f"generating vmlinux.h failed (exit {proc.returncode}): {shlex.join(cmd)}\n"
                + proc.stderr.decode(errors="replace").strip()
            )
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def vmlinux_header(mode: VmlinuxMode | str = "auto") -> Path:
    """Return the ``vmlinux.h`` to compile against.

    ``"generated"``: dumped from ``/sys/kernel/btf/vmlinux`` with bpftool into
    the cache (raises :class:`BpfBuildError` when impossible); ``"minimal"``:
    the shipped CO-RE header; ``"auto"``: generated when bpftool and kernel BTF
    exist, else minimal. Logs which one is used (once per process and mode).
    """
    return _resolve_vmlinux(mode)


@functools.cache
def _resolve_vmlinux(mode: str) -> Path:
    if mode not in VMLINUX_MODES:
        raise BpfBuildError(f"unknown vmlinux mode {mode!r}", hint="use auto, generated or minimal")
    if mode == "minimal":
        header = minimal_vmlinux_header()
        log.info("vmlinux.h: minimal CO-RE header %s", header)
        return header
    bpftool = _find_tool("BPFTOOL", ("bpftool",))
    problem = None
    if bpftool is None:
        problem = "bpftool not found"
    elif not KERNEL_BTF.is_file():
        problem = f"{KERNEL_BTF} missing (kernel without CONFIG_DEBUG_INFO_BTF)"
    if problem is None:
        assert bpftool is not None
        try:
            header = _generate_vmlinux(KERNEL_BTF, bpftool)
        except (BpfBuildError, OSError) as exc:
            if mode == "generated":
                raise BpfBuildError(f"cannot generate vmlinux.h: {exc}") from exc
            problem = str(exc)
        else:
            log.info("vmlinux.h: generated from %s: %s", KERNEL_BTF, header)
            return header
    if mode == "generated":
        raise BpfBuildError(
            f"cannot generate vmlinux.h: {problem}",
            hint="install bpftool, or build with --vmlinux minimal",
        )
    header = minimal_vmlinux_header()
    log.info("vmlinux.h: %s; using the minimal CO-RE header %s", problem, header)
    return header


# --------------------------------------------------------------------------
# Compiling
# --------------------------------------------------------------------------


# Folders under a distribution that never hold its sources (build output, venvs, metadata).
_SKIP_DIRS = frozenset({"build", "dist", ".venv", "venv", "__pycache__", ".git", ".tox", ".eggs"})


def find_sources(pkg_dir: str | os.PathLike[str]) -> list[Path]:
    """The ``*.bpf.c`` sources under a package or distribution folder, in any sub-folder.

    ``pkg/x.bpf.c``, ``pkg/bpf/x.bpf.c`` and deeper are all found; build
    output (``build/``, ``dist/``), virtual environments, ``*.egg-info`` and
    hidden folders are skipped.
    """
    base = Path(pkg_dir)
    found: list[Path] = []
    if not base.is_dir():
        return found
    for root, dirs, files in os.walk(base):
        dirs[:] = [d for d in dirs if d not in _SKIP_DIRS and not d.startswith(".") and not d.endswith(".egg-info")]
        found.extend(Path(root) / name for name in files if name.endswith(SOURCE_SUFFIX))
    return sorted(found)


def package_cflags(src: str | os.PathLike[str]) -> list[str]:
    """Extra clang flags for ``src``: ``[tool.jalki.bpf] cflags`` of the nearest ``pyproject.toml`` above it.

    ``[]`` when there is none or it has no such table. Raises
    :class:`BpfBuildError` when the table is malformed.
    """
    pyproject = _nearest_pyproject(src)
    if pyproject is not None:
        try:
            data = tomllib.loads(pyproject.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise BpfBuildError(f"cannot read {pyproject}: {exc}") from exc
        cflags = data.get("tool", {}).get("jalki", {}).get("bpf", {}).get("cflags", [])
        if not isinstance(cflags, list) or not all(isinstance(flag, str) for flag in cflags):
            raise BpfBuildError(
                f"{pyproject}: [tool.jalki.bpf] cflags must be a list of strings",
                hint='e.g. cflags = ["-mcpu=v3"]',
            )
        return list(cflags)
    return []


def _nearest_pyproject(src: str | os.PathLike[str]) -> Path | None:
    for folder in Path(src).resolve().parents:
        pyproject = folder / "pyproject.toml"
        if pyproject.is_file():
            return pyproject
    return None


def stale_sources(obj: str | os.PathLike[str]) -> list[Path]:
    """The sources next to a ``x.bpf.o`` that are newer than it (``x.bpf.c``, ``*.h``).

    Only sources in the object's own folder count (an editable or development
    install); an installed wheel ships none, or ships them with the object's
    build time, so this returns ``[]`` there.
    """
    path = Path(obj)
    name = path.name
    if not name.endswith(".o"):
        return []
    try:
        built = path.stat().st_mtime_ns
    except OSError:
        return []
    candidates = [path.with_name(name[: -len(".o")] + ".c"), *path.parent.glob("*.h")]
    stale = []
    for dep in candidates:
        try:
            if dep.stat().st_mtime_ns > built:
                stale.append(dep)
        except OSError:
            continue
    return sorted(stale)


def object_path(src: str | os.PathLike[str]) -> Path:
    """``x.bpf.c`` → ``x.bpf.o`` next to it."""
    path = Path(src)
    name = path.name
    stem = name[: -len(".c")] if name.endswith(".c") else name
    return path.with_name(stem + ".o")


def _dependencies(src: Path, bpf_src: Path, vmlinux: Path) -> list[Path]:
    deps = [src, vmlinux]
    deps.extend(src.parent.glob("*.h"))
    deps.extend((bpf_src / "jalki").glob("*.h"))
    return deps


def _up_to_date(out: Path, deps: Iterable[Path]) -> bool:
    try:
        built = out.stat().st_mtime_ns
    except FileNotFoundError:
        return False
    return all(dep.stat().st_mtime_ns <= built for dep in deps if dep.exists())


def compile_command(
    src: Path,
    out: Path,
    *,
    include_dirs: Sequence[str | os.PathLike[str]] = (),
    vmlinux_dir: Path,
    clang: str = "clang",
    cflags: Sequence[str] = (),
) -> list[str]:
    """The clang command line that builds ``src`` into ``out`` (``cflags`` after jalki's own)."""
    bpf_src = _bpf_src_dir()
    cmd = [clang, "-g", "-O2", "-target", "bpf", arch_define(), *cflags]
    for inc in (bpf_src, vmlinux_dir, src.parent, *include_dirs):
        cmd.append(f"-I{inc}")
    asm_dir = _multiarch_include()
    if asm_dir is not None:
        # Last in the search order: only sources that include UAPI headers
        # (<linux/types.h> needs <asm/types.h>) ever look there; vmlinux.h
        # based sources never do.
        cmd += ["-idirafter", str(asm_dir)]
    cmd += ["-c", str(src), "-o", str(out)]
    return cmd


@functools.cache
def _multiarch_include() -> Path | None:
    """``/usr/include/<multiarch>`` when it holds ``asm/types.h`` (Debian layout)."""
    candidates: list[str] = []
    gcc = shutil.which("gcc")
    if gcc:
        try:
            proc = subprocess.run(
                [gcc, "-print-multiarch"], capture_output=True, text=True, check=False
            )
        except OSError:
            proc = None
        if proc is not None and proc.returncode == 0 and proc.stdout.strip():
            candidates.append(proc.stdout.strip())
    candidates.append(f"{platform.machine()}-linux-gnu")
    for triplet in candidates:
        path = Path("/usr/include") / triplet
        if (path / "asm" / "types.h").is_file():
            return path
    return None


def _bpf_src_dir() -> Path:
    # compile_source()'s ``include_dirs`` argument shadows the function there
    return include_dirs()


def _run(cmd: list[str], what: str) -> None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise BpfBuildError(f"{what} could not run: {shlex.join(cmd)}\n{exc}") from exc
    if proc.returncode != 0:
        output = (proc.stderr + proc.stdout).strip()
        raise BpfBuildError(f"{what} failed (exit {proc.returncode}): {shlex.join(cmd)}\n{output}")
    if proc.stderr.strip():
        log.warning("%s: %s", what, proc.stderr.strip())


def compile_source(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    include_dirs: Sequence[str | os.PathLike[str]] = (),
    vmlinux: VmlinuxMode | str = "auto",
    force: bool = False,
    cflags: Sequence[str] | None = None,
) -> Path:
    """Compile one ``*.bpf.c`` into a stripped CO-RE object; return its path.

    ``out`` defaults to ``x.bpf.o`` next to the source. ``cflags`` are extra
    clang flags; ``None`` reads them from the package (:func:`package_cflags`).
    Skipped when ``out``
    is newer than the source, the headers next to it, jalki's headers and the
    ``vmlinux.h`` in use (``force=True`` rebuilds). Raises
    :class:`BpfBuildError` (with the full clang command line and its stderr)
    on failure.
    """
    src_path = Path(src).resolve()
    if not src_path.is_file():
        raise BpfBuildError(f"BPF source not found: {src_path}")
    out_path = Path(out) if out is not None else object_path(src_path)
    header = vmlinux_header(vmlinux)
    bpf_src = _bpf_src_dir()
    # the package's pyproject.toml is a dependency too: its cflags change the object
    deps = [*_dependencies(src_path, bpf_src, header), *filter(None, [_nearest_pyproject(src_path)])]
    if not force and _up_to_date(out_path, deps):
        log.debug("up to date: %s", out_path)
        return out_path

    clang = _find_tool("CLANG", _CLANG_NAMES)
    if clang is None:
        raise BpfBuildError(
            f"cannot compile {src_path.name}: clang not found",
            hint="install clang (Debian/Ubuntu: apt install clang llvm)",
        )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    flags = package_cflags(src_path) if cflags is None else list(cflags)
    cmd = compile_command(
        src_path, out_path, include_dirs=include_dirs, vmlinux_dir=header.parent, clang=clang, cflags=flags
    )
    log.info("compiling %s", src_path)
    try:
        _run(cmd, "clang")
    except BpfBuildError:
        if out_path.exists():
            out_path.unlink()
        raise

    strip = _find_tool("LLVM_STRIP", _STRIP_NAMES)
    if strip is None:
        log.warning("llvm-strip not found; %s keeps its DWARF debug info", out_path.name)
    else:
        _run([strip, "-g", str(out_path)], "llvm-strip")
    return out_path


def compile_package(
    pkg_dir: str | os.PathLike[str], *, vmlinux: VmlinuxMode | str = "auto", force: bool = False
) -> list[Path]:
    """Compile every ``*.bpf.c`` under a package (or distribution) folder in place; return the objects."""
    return [compile_source(src, vmlinux=vmlinux, force=force) for src in find_sources(pkg_dir)]
