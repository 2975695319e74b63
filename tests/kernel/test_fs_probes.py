"""jalki-fs on the real kernel: failed opens by real child processes, exact events.

The EACCES case opens a root-only file (mode 0600, owned by root) as
``nobody`` (``setpriv`` sets the ids and execs ``cat``, so the pid is the
child's); ENOENT opens a missing file. Both run with and without the
path-prefix filter.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from jalki_fs.probes import OpenFailedProbe
from netns_helpers import tracing
from rung_helpers import RUNGS, check_rung, on_rung

from jalki_core.events import Event
from jalki_core.testing import event_validator

pytestmark = pytest.mark.kernel
validate = event_validator()
SETPRIV = shutil.which("setpriv") or "/usr/bin/setpriv"


@pytest.fixture
def tree() -> Iterator[Path]:
    """A world-traversable directory with a root-only file ``secret`` (mode 0600)."""
    directory = Path(tempfile.mkdtemp(prefix="jalki-fs-"))
    try:
        directory.chmod(0o755)
        secret = directory / "secret"
        secret.write_text("root only\n")
        secret.chmod(0o600)
        yield directory
    finally:
        shutil.rmtree(directory)


def run_child(argv: list[str]) -> tuple[int, int]:
    """Run a child to completion; (pid, exit status)."""
    child = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return child.pid, child.wait()


def failed_opens(events: list[Event], pid: int) -> list[Event]:
    return [e for e in events if e["type"] == "kernel.fs.open_failed" and e["process_data"]["pid"] == pid]


@pytest.mark.parametrize("rung", RUNGS)
def test_permission_denied_and_missing_file(tree: Path, rung: str) -> None:
    probe = on_rung(OpenFailedProbe(path_prefix=""), rung)
    secret, missing = tree / "secret", tree / "missing"
    with tracing([probe]) as trace:
        denied_pid, denied_status = run_child([SETPRIV, "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                                               "cat", str(secret)])
        missing_pid, missing_status = run_child(["cat", str(missing)])
    assert denied_status == 1 and missing_status == 1
    events = trace.events()
    for event in events:
        validate(event)

    [denied] = [e for e in failed_opens(events, denied_pid) if e["data"]["path"] == str(secret)]
    assert denied["error"] == {"code": "EACCES", "message": "Permission denied"}
    assert (denied["severity"], denied["outcome"]) == ("warning", "failure")
    assert denied["process_data"]["command"] == "cat" and denied["process_data"]["cgroup_id"] > 0
    assert denied["data"]["path_truncated"] is False and denied["data"]["syscall"] == "openat"
    assert denied["data"]["flags"] == "O_RDONLY" and denied["data"]["dirfd"] == -100
    assert denied["data"]["mode"] is None

    [absent] = [e for e in failed_opens(events, missing_pid) if e["data"]["path"] == str(missing)]
    assert absent["error"]["code"] == "ENOENT" and absent["severity"] == "info"
    assert absent["process_data"]["command"] == "cat"
    check_rung(probe, rung, [denied, absent])
    assert trace.summary is not None
    [stats] = trace.summary.probes
    assert stats.kernel_drops["ringbuf_full"] == 0 and stats.kernel_drops["sampled"] == 0


@pytest.mark.parametrize("rung", RUNGS)
def test_path_prefix_filter_keeps_only_that_tree(tree: Path, rung: str) -> None:
    probe = on_rung(OpenFailedProbe(path_prefix=f"{tree}/"), rung)
    inside, outside = tree / "nothing-here", f"/nonexistent-{tree.name}/file"
    with tracing([probe]) as trace:
        pid, status = run_child(["cat", str(inside), outside, str(tree / "secret")])
    assert status == 1
    events = trace.events()
    for event in events:
        validate(event)
    # Every event is under the prefix: other processes' failures elsewhere are filtered in the kernel too.
    assert all(e["data"]["path"].startswith(f"{tree}/") for e in events)
    [event] = failed_opens(events, pid)  # root opens the secret: no failure; outside is filtered
    assert event["data"]["path"] == str(inside) and event["error"]["code"] == "ENOENT"
    check_rung(probe, rung, [event])


@pytest.mark.parametrize("rung", RUNGS)
def test_long_relative_path_is_truncated_and_flagged(tree: Path, rung: str) -> None:
    probe = on_rung(OpenFailedProbe(path_prefix="x" * 10), rung)
    relative = "x" * 300
    with tracing([probe]) as trace:
        pid, status = run_child(["cat", relative])
    assert status == 1
    [event] = failed_opens(trace.events(), pid)
    validate(event)
    assert event["data"]["path"] == "x" * 255 and event["data"]["path_truncated"] is True
    assert event["error"]["code"] == "ENAMETOOLONG"
