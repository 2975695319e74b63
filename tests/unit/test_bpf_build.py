"""jalki_core.bpf_build and build_bpf.py: compiling the BPF sources.

Needs clang (skipped without it); the "generated" vmlinux mode also needs
bpftool and /sys/kernel/btf/vmlinux. No root needed: nothing is loaded.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from jalki_core import bpf_build
from jalki_core.errors import BpfBuildError

REPO = Path(__file__).resolve().parents[2]
SOURCES = sorted(
    p
    for pattern in ("jalki_core/bpf/*.bpf.c", "plugins/*/*/bpf/*.bpf.c", "bench/bpf/*.bpf.c")
    for p in REPO.glob(pattern)
)

needs_clang = pytest.mark.skipif(shutil.which("clang") is None, reason="clang not installed")


def _can_generate() -> bool:
    return shutil.which("bpftool") is not None and bpf_build.KERNEL_BTF.is_file()


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # generated headers go to a per-session temp cache, not ~/.cache
    monkeypatch.setenv("JALKI_BPF_CACHE", str(tmp_path_factory.getbasetemp() / "bpf-cache"))
    bpf_build._resolve_vmlinux.cache_clear()
    yield
    bpf_build._resolve_vmlinux.cache_clear()


def test_repo_has_the_expected_sources() -> None:
    names = {p.name for p in SOURCES}
    assert {
        "doctor.bpf.c",
        "drain.bpf.c",
        "tcp_connect.bpf.c",
        "tcp_close.bpf.c",
        "tcp_retransmit.bpf.c",
    } <= names


@needs_clang
@pytest.mark.parametrize("mode", ["minimal", "generated"])
@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.name)
def test_every_source_compiles(src: Path, mode: str, tmp_path: Path) -> None:
    if mode == "generated" and not _can_generate():
        pytest.skip("bpftool or kernel BTF missing")
    out = bpf_build.compile_source(src, tmp_path / "x.bpf.o", vmlinux=mode, force=True)
    data = out.read_bytes()
    assert data[:4] == b"\x7fELF"
    assert b".BTF" in data  # llvm-strip -g keeps BTF
    assert b".debug_info" not in data  # ... and drops DWARF


@needs_clang
def test_broken_source_raises_with_command_and_error(tmp_path: Path) -> None:
    src = tmp_path / "broken.bpf.c"
    src.write_text(
        '#include "jalki/common.bpf.h"\n'
        "int broken(void *ctx)\n"
        "{\n"
        "\treturn this_symbol_does_not_exist;\n"
        "}\n"
    )
    with pytest.raises(BpfBuildError) as info:
        bpf_build.compile_source(src, vmlinux="minimal")
    text = str(info.value)
    assert "clang" in text and "-target bpf" in text and str(src) in text
    assert "-D__TARGET_ARCH_" in text
    assert "this_symbol_does_not_exist" in text and "error" in text
    assert not bpf_build.object_path(src).exists()


@needs_clang
def test_up_to_date_objects_are_not_rebuilt(tmp_path: Path) -> None:
    src = tmp_path / "tiny.bpf.c"
    src.write_text('#include "jalki/common.bpf.h"\nchar LICENSE[] SEC("license") = "GPL";\n')
    out = bpf_build.compile_source(src, vmlinux="minimal")
    assert out == tmp_path / "tiny.bpf.o"
    first = out.stat().st_mtime_ns
    assert bpf_build.compile_source(src, vmlinux="minimal").stat().st_mtime_ns == first
    out.write_bytes(b"stale")
    assert bpf_build.compile_source(src, vmlinux="minimal").read_bytes() == b"stale"
    assert bpf_build.compile_source(src, vmlinux="minimal", force=True).read_bytes()[:4] == b"\x7fELF"


def test_find_sources_and_object_path(tmp_path: Path) -> None:
    (tmp_path / "bpf").mkdir()
    (tmp_path / "bpf" / "a.bpf.c").write_text("")
    (tmp_path / "b.bpf.c").write_text("")
    (tmp_path / "bpf" / "helper.h").write_text("")
    assert [p.name for p in bpf_build.find_sources(tmp_path)] == ["b.bpf.c", "a.bpf.c"]
    assert bpf_build.object_path(tmp_path / "x.bpf.c") == tmp_path / "x.bpf.o"


def test_arch_define() -> None:
    assert bpf_build.arch_define("x86_64") == "-D__TARGET_ARCH_x86"
    assert bpf_build.arch_define("aarch64") == "-D__TARGET_ARCH_arm64"
    assert bpf_build.arch_define("s390x") == "-D__TARGET_ARCH_s390"
    with pytest.raises(BpfBuildError):
        bpf_build.arch_define("vax")


def test_vmlinux_modes() -> None:
    minimal = bpf_build.vmlinux_header("minimal")
    assert minimal == REPO / "bpf_src" / "vmlinux" / "minimal" / "vmlinux.h"
    with pytest.raises(BpfBuildError):
        bpf_build.vmlinux_header("bogus")
    auto = bpf_build.vmlinux_header("auto")
    if _can_generate():
        assert auto != minimal and auto.read_text().startswith("#ifndef __VMLINUX_H__")
    else:
        assert auto == minimal


def test_copy_headers_into(tmp_path: Path) -> None:
    dest = bpf_build.copy_headers_into(tmp_path / "bpf_include")
    assert (dest / "jalki" / "common.bpf.h").is_file()
    assert (dest / "vmlinux" / "minimal" / "vmlinux.h").is_file()


@needs_clang
def test_build_bpf_check_runs_without_the_venv() -> None:
    python = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
    proc = subprocess.run(
        [python, "-I", str(REPO / "build_bpf.py"), "--check", "--vmlinux", "minimal"],
        capture_output=True,
        text=True,
        cwd="/",
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK   plugins/jalki_tcp/jalki_tcp/bpf/tcp_connect.bpf.c" in proc.stdout
