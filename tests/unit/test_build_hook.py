"""jalki_core.build_hook: probe packages build their BPF C from pyproject.toml alone.

A package made here the way a third party would make one (its ``.bpf.c`` in
the package folder itself, a compiler flag it needs in ``[tool.jalki.bpf]``)
is built into a wheel and an sdist; the built-in plugins carry no setup.py.
Needs clang (skipped without it); nothing is loaded, no root needed.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

from jalki_core import bpf_build, build_hook
from jalki_core.errors import BpfBuildError

REPO = Path(__file__).resolve().parents[2]
PLUGINS = sorted(path for path in (REPO / "plugins").glob("jalki_*") if (path / "pyproject.toml").is_file())
needs_clang = pytest.mark.skipif(shutil.which("clang") is None, reason="clang not installed")

# A 32-bit compare-and-swap: clang 14 needs -mcpu=v3 for it (and crashes without).
CAS_SOURCE = """\
#include "jalki/common.bpf.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

__u32 hits = 0;

SEC("tracepoint/syscalls/sys_enter_getppid")
int cas_getppid(void *ctx)
{
	if (__sync_val_compare_and_swap(&hits, 0, 1))
		hits = 5;
	return 0;
}
"""

PYPROJECT = """\
[build-system]
requires = ["setuptools>=77", "jalki>=0.1"]
build-backend = "setuptools.build_meta"

[project]
name = "jalki-castest"
version = "0.1.0"
license = "Apache-2.0"
dependencies = ["jalki>=0.1"]

[project.entry-points.jalki]
castest = "jalki_castest.plugin"

[tool.setuptools.cmdclass]
build_py = "jalki_core.build_hook.build_py"
sdist = "jalki_core.build_hook.sdist"
bdist_wheel = "jalki_core.build_hook.bdist_wheel"

[tool.setuptools.package-data]
"*" = ["*.bpf.o", "*.bpf.c", "*.h"]

[tool.jalki.bpf]
cflags = ["-mcpu=v3"]
"""


@pytest.fixture
def third_party(tmp_path: Path) -> Path:
    root = tmp_path / "jalki-castest"
    package = root / "jalki_castest"
    package.mkdir(parents=True)
    (root / "pyproject.toml").write_text(PYPROJECT)
    (package / "__init__.py").write_text("")
    (package / "plugin.py").write_text('"""A test plugin."""\n')
    (package / "cas.bpf.c").write_text(CAS_SOURCE)
    return root


def pip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
                          capture_output=True, text=True, timeout=600, check=False)


def build_sdist(project: Path, out: Path) -> Path:
    code = f"import setuptools.build_meta as b; print(b.build_sdist({str(out)!r}))"
    result = subprocess.run([sys.executable, "-c", code], cwd=project, capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    return out / result.stdout.strip().splitlines()[-1]


def wheel_platform() -> str:
    return f"linux_{platform.machine()}"


@needs_clang
def test_package_cflags_come_from_pyproject_and_are_needed(third_party: Path, tmp_path: Path) -> None:
    source = third_party / "jalki_castest" / "cas.bpf.c"
    assert bpf_build.package_cflags(source) == ["-mcpu=v3"]
    with pytest.raises(BpfBuildError):  # clang 14 crashes on a 32-bit CAS for the default CPU
        bpf_build.compile_source(source, tmp_path / "plain.bpf.o", vmlinux="minimal", cflags=[])
    assert bpf_build.compile_source(source, tmp_path / "v3.bpf.o", vmlinux="minimal").is_file()


def test_malformed_cflags_are_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.jalki.bpf]\ncflags = "-mcpu=v3"\n')
    with pytest.raises(BpfBuildError, match=r"\[tool.jalki.bpf\] cflags must be a list of strings"):
        bpf_build.package_cflags(tmp_path / "pkg" / "x.bpf.c")


@needs_clang
def test_wheel_is_built_by_the_hook_and_tagged_for_the_architecture(third_party: Path, tmp_path: Path) -> None:
    out = tmp_path / "wheels"
    result = pip("wheel", "--no-build-isolation", "--no-deps", "-q", "-w", str(out), str(third_party))
    assert result.returncode == 0, result.stderr[-3000:]
    [wheel] = out.glob("*.whl")
    assert wheel.name == f"jalki_castest-0.1.0-py3-none-{wheel_platform()}.whl"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        wheel_file = archive.read("jalki_castest-0.1.0.dist-info/WHEEL").decode()
        metadata = archive.read("jalki_castest-0.1.0.dist-info/METADATA").decode()
    assert {"jalki_castest/cas.bpf.o", "jalki_castest/cas.bpf.c"} <= names  # at the root, not under .data/
    assert "Root-Is-Purelib: false" in wheel_file
    assert "License-Expression: Apache-2.0" in metadata


@needs_clang
def test_sdist_ships_sources_never_objects(third_party: Path, tmp_path: Path) -> None:
    bpf_build.compile_source(third_party / "jalki_castest" / "cas.bpf.c")  # a built object lies in the tree
    sdist = build_sdist(third_party, tmp_path)
    with tarfile.open(sdist) as archive:
        names = archive.getnames()
    assert "jalki_castest-0.1.0/jalki_castest/cas.bpf.c" in names
    assert not [name for name in names if name.endswith(".o")], names


def test_a_package_without_bpf_sources_stays_pure(third_party: Path, tmp_path: Path) -> None:
    (third_party / "jalki_castest" / "cas.bpf.c").unlink()
    out = tmp_path / "wheels"
    result = pip("wheel", "--no-build-isolation", "--no-deps", "-q", "-w", str(out), str(third_party))
    assert result.returncode == 0, result.stderr[-3000:]
    assert [wheel.name for wheel in out.glob("*.whl")] == ["jalki_castest-0.1.0-py3-none-any.whl"]


@needs_clang
def test_an_editable_install_of_c_that_does_not_compile_fails_with_clangs_message(third_party: Path) -> None:
    """setuptools' editable build turns a build step's exception into a warning and installs anyway (with the
    stale object, if any): the hook must make pip fail, and say what clang said."""
    source = third_party / "jalki_castest" / "cas.bpf.c"
    source.write_text(source.read_text() + "\nint broken(void *ctx) { return no_such_symbol; }\n")
    # what pip install --editable runs (PEP 660), without installing anything
    code = f"import setuptools.build_meta as b; b.build_editable({str(third_party.parent / 'wheels')!r})"
    result = subprocess.run([sys.executable, "-c", code], cwd=third_party, capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode != 0, result.stdout[-2000:]
    assert "use of undeclared identifier 'no_such_symbol'" in result.stderr, result.stderr[-3000:]
    assert "KeyError" not in result.stderr, result.stderr[-3000:]


@needs_clang
@pytest.mark.parametrize("command", ["build_bpf.py", "-m jalki_core.build_hook"])
def test_dev_build_commands_rebuild_a_package_in_place(third_party: Path, command: str) -> None:
    result = subprocess.run([sys.executable, *command.split(), str(third_party)], cwd=REPO,
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (third_party / "jalki_castest" / "cas.bpf.o").is_file()


def test_stale_object_is_named_once_at_load_time(
    third_party: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from jalki_core.loader import warn_if_stale
    from jalki_core.probe import ProbeResource

    package = third_party / "jalki_castest"
    obj = package / "cas.bpf.o"
    obj.write_bytes(b"old")  # written after its source: up to date
    assert bpf_build.stale_sources(obj) == []
    header = package / "cas.h"
    header.write_text("/* newer */\n")
    old = obj.stat().st_mtime_ns - 10**9
    os.utime(obj, ns=(old, old))
    assert bpf_build.stale_sources(obj) == [package / "cas.bpf.c", header]
    monkeypatch.syspath_prepend(str(third_party))

    class Stub:
        name = "castest"
        bpf_object = ProbeResource("jalki_castest", "cas.bpf.o")

    with caplog.at_level(logging.WARNING, logger="jalki.loader"):
        warn_if_stale(Stub())  # type: ignore[arg-type]
        warn_if_stale(Stub())  # type: ignore[arg-type]
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 1, lines
    assert str(obj) in lines[0] and "cas.h" in lines[0]
    assert f"python -m jalki_core.build_hook {package}" in lines[0]


PROBE_PLUGINS = [path for path in PLUGINS if any(path.rglob("*.bpf.c"))]
"""The plugins with BPF C: the ones the build hook compiles (emitter, enricher and command plugins are pure)."""


@pytest.mark.parametrize("plugin_dir", PROBE_PLUGINS, ids=[path.name for path in PROBE_PLUGINS])
def test_builtin_plugins_use_the_hook_not_a_setup_py(plugin_dir: Path, tmp_path: Path) -> None:
    assert not (plugin_dir / "setup.py").exists()
    config = tomllib.loads((plugin_dir / "pyproject.toml").read_text())
    assert config["project"]["license"] == "Apache-2.0"
    cmdclass = config["tool"]["setuptools"]["cmdclass"]
    assert cmdclass == {name: f"jalki_core.build_hook.{name}" for name in ("build_py", "sdist", "bdist_wheel")}
    sdist = build_sdist(plugin_dir, tmp_path)
    with tarfile.open(sdist) as archive:
        names = archive.getnames()
    assert any(name.endswith(".bpf.c") for name in names)
    assert not [name for name in names if name.endswith(".o")], names


def test_core_declares_an_spdx_license() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert config["project"]["license"] == "Apache-2.0"
    assert "global-exclude *.bpf.o" in (REPO / "MANIFEST.in").read_text()


def test_hook_is_documented_with_its_own_cmdclass_names() -> None:
    text = build_hook.__doc__ or ""
    for name in ("build_py", "sdist", "bdist_wheel"):
        assert f'{name} = "jalki_core.build_hook.{name}"' in text
