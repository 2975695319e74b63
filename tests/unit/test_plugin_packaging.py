"""Every plugin under plugins/ builds alone into a wheel that carries all it needs.

A plugin is written as a third party would write one: its wheel must hold its
compiled BPF objects, its event-schema fragment, its KB documents and its
``jalki`` entry point, and must depend on nothing but ``jalki``. The build
runs the core's build hook named in the plugin's pyproject.toml (which compiles its
BPF C with the core's clang driver), the way ``pip install ./plugins/jalki_<family>`` does.
"""

from __future__ import annotations

import configparser
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PLUGINS = sorted(path for path in (REPO / "plugins").glob("jalki_*") if (path / "pyproject.toml").is_file())


@pytest.mark.parametrize("plugin_dir", PLUGINS, ids=[path.name for path in PLUGINS])
def test_plugin_builds_alone_into_a_complete_wheel(plugin_dir: Path, tmp_path: Path) -> None:
    package = plugin_dir.name
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-q", "-w", str(tmp_path),
         str(plugin_dir)],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    [wheel] = tmp_path.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        dist_info = next(name.split("/")[0] for name in names if name.endswith(".dist-info/METADATA"))
        entry_points = configparser.ConfigParser()
        entry_points.read_string(archive.read(f"{dist_info}/entry_points.txt").decode())
        metadata = archive.read(f"{dist_info}/METADATA").decode()
    # BPF sources may sit in any folder of the package (bpf/x.bpf.c or next to the module).
    sources = sorted(path.relative_to(plugin_dir).as_posix() for path in (plugin_dir / package).rglob("*.bpf.c"))
    if not sources:  # an emitter, enricher or command plugin: pure Python, so a pure wheel
        assert wheel.name.endswith("-py3-none-any.whl"), wheel.name
    for source in sources:
        assert f"{source.removesuffix('.c')}.o" in names, f"{source} was not compiled into the wheel"
    schemas = list((plugin_dir / package).glob("*.schema.json"))
    assert schemas or not sources, f"{package} has probes but ships no event-schema fragment"
    for schema in schemas:
        assert f"{package}/{schema.name}" in names
    for document in (plugin_dir / package).rglob("kb/*.json"):
        assert document.relative_to(plugin_dir).as_posix() in names
    assert entry_points.has_section("jalki") and len(entry_points["jalki"]) == 1
    [(plugin_name, target)] = entry_points["jalki"].items()
    # The entry point names the plugin module: a single-module plugin names its package itself.
    assert target in (package, f"{package}.plugin") and plugin_name == package.removeprefix("jalki_")
    requirements = [line.split(":", 1)[1].strip() for line in metadata.splitlines()
                    if line.startswith("Requires-Dist:") and "extra ==" not in line]
    names_required = [re.split(r"[<>=!~ ;\[]", requirement, maxsplit=1)[0] for requirement in requirements]
    # probe plugins need nothing but the core; emitter, enricher and command plugins add their client libraries
    assert names_required[:1] == ["jalki"] and (not sources or names_required == ["jalki"]), requirements
