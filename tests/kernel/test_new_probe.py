"""``new_probe``: a generated package installs, is listed, runs, and passes its own tests; bad names are refused.

The package is installed editable into this environment (the repository's
``.venv``) for the test and uninstalled at the end, also when the test fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from jalki_core.cli.newprobe import new_probe
from jalki_core.errors import UsageError

BIN = Path(sys.executable).parent
TRUE = shutil.which("true") or "/bin/true"


def pip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def installed(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A package made by new_probe, installed editable; uninstalled afterwards."""
    name = f"np{os.getpid()}"
    package = new_probe(name, tmp_path)
    try:
        result = pip("install", "--no-build-isolation", "--no-deps", "-e", str(package))
        assert result.returncode == 0, result.stderr
        yield name, package
    finally:
        pip("uninstall", "-y", f"jalki-{name}")
        assert subprocess.run([BIN / "jalki", "plugins", "--json"], capture_output=True, text=True,
                              timeout=120).stdout.count(f'"{name}"') == 0


@pytest.mark.kernel
def test_generated_package_installs_runs_and_passes_its_tests(installed: tuple[str, Path]) -> None:
    name, package = installed
    assert sorted(p.relative_to(package).as_posix() for p in package.rglob("*") if p.is_file()
                  and "egg-info" not in p.as_posix() and "__pycache__" not in p.parts) == sorted([
        "README.md", "pyproject.toml", f"jalki_{name}/__init__.py", f"jalki_{name}/{name}.bpf.c",
        f"jalki_{name}/{name}.bpf.o", f"jalki_{name}/{name}.h", f"tests/test_{name}_probe.py"])

    listed = json.loads(subprocess.run([BIN / "jalki", "plugins", "--json"], capture_output=True, text=True,
                                       check=True, timeout=120).stdout)
    [plugin] = [p for p in listed if p["plugin"] == name]
    assert (plugin["status"], plugin["distribution"]) == ("ok", f"jalki-{name}")
    assert [probe["name"] for probe in plugin["probes"]] == [name]

    # start programs while `jalki run` traces: each one is an event
    started: list[int] = []
    stop = threading.Event()

    def start_programs() -> None:
        while not stop.wait(0.2):
            child = subprocess.Popen([TRUE])
            child.wait()
            started.append(child.pid)

    runner = threading.Thread(target=start_programs, daemon=True)
    runner.start()
    try:
        run = subprocess.run([BIN / "jalki", "run", "--plugin", name, "--seconds", "2"], capture_output=True,
                             text=True, timeout=120)
    finally:
        stop.set()
        runner.join()
    assert run.returncode == 0, run.stderr
    events = [json.loads(line) for line in run.stdout.splitlines() if line.strip()]
    mine = [e for e in events if e["process_data"]["pid"] in started]
    assert mine, run.stderr
    for event in mine:
        assert (event["type"], event["attach"], event["process_data"]["command"]) == (
            f"kernel.{name}.exec", "tracepoint", "true")
        assert event["data"]["tid"] == event["process_data"]["pid"]

    own = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], cwd=package,
                         capture_output=True, text=True, timeout=300)
    assert own.returncode == 0, own.stdout + own.stderr
    assert "2 passed" in own.stdout


@pytest.mark.parametrize(("name", "problem"), [
    ("Not-A-Name", "is not a probe name"),
    ("1st", "is not a probe name"),
    ("example", "already installed"),
    ("core", "already installed"),
])
def test_bad_names_are_refused(tmp_path: Path, name: str, problem: str) -> None:
    with pytest.raises(UsageError, match=problem) as caught:
        new_probe(name, tmp_path)
    assert "\n" not in caught.value.one_line()
    assert list(tmp_path.iterdir()) == []


def test_existing_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "jalki-fresh").mkdir()
    with pytest.raises(UsageError, match="already exists"):
        new_probe("fresh", tmp_path)
    with pytest.raises(UsageError, match="is not a directory"):
        new_probe("fresh", tmp_path / "missing")
