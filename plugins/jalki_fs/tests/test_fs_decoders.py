"""jalki-fs: open_failed decoder, flags, path prefix and KB entry (no root)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from jalki_fs import layouts
from jalki_fs.probes import OpenFailedProbe, open_flags_text

from jalki_core.errors import ProbeError
from jalki_core.events import Event
from jalki_core.kb import default_kb
from jalki_core.kb.conditions import get_path
from jalki_core.plugins import JalkiPlugins
from jalki_core.testing import FakeRingBuffer, decode_all, make_event_context

CALLER = {"pid": 31337, "flags": 1, "comm": b"nginx", "cgroup_id": 77}
AT_FDCWD = -100


def decode_one(**values: object) -> Event:
    probe = OpenFailedProbe(path_prefix="")
    ring = FakeRingBuffer(probe.layout)
    ring.push_values(**values)
    [event] = decode_all(probe, ring, make_event_context("open_failed", "tracepoint"))
    return event


def path_fields(path: bytes) -> dict[str, object]:
    return {"path": path, "path_len": len(path)}


def test_permission_denied_open(jalki_validate_event: Callable[[Event], None]) -> None:
    event = decode_one(ts_ns=1_000_000_123, error=13, dfd=AT_FDCWD, open_flags=os.O_RDONLY | os.O_CLOEXEC,
                       syscall=0, **path_fields(b"/etc/shadow"), **CALLER)
    jalki_validate_event(event)
    assert event["type"] == "kernel.fs.open_failed"
    assert (event["severity"], event["outcome"]) == ("warning", "failure")
    assert event["error"] == {"code": "EACCES", "message": "Permission denied"}
    assert event["process_data"] == {"pid": 31337, "command": "nginx", "cgroup_id": 77}
    assert event["data"] == {"path": "/etc/shadow", "path_truncated": False, "flags": "O_RDONLY|O_CLOEXEC",
                             "flags_value": os.O_RDONLY | os.O_CLOEXEC, "mode": None, "dirfd": AT_FDCWD,
                             "syscall": "openat"}
    assert event["source"] == "jalki/open_failed" and event["attach"] == "tracepoint"
    assert event["timestamp"] == "2023-11-14T22:13:21.000000123Z"


def test_missing_file_with_create_flags_and_relative_path(jalki_validate_event: Callable[[Event], None]) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    event = decode_one(ts_ns=2, error=2, dfd=5, open_flags=flags, mode=0o640, syscall=1,
                       **path_fields(b"logs/app.log"), **CALLER)
    jalki_validate_event(event)
    assert event["severity"] == "info" and event["error"]["code"] == "ENOENT"
    assert event["data"] == {"path": "logs/app.log", "path_truncated": False, "flags": "O_WRONLY|O_CREAT|O_EXCL",
                             "flags_value": flags, "mode": "0640", "dirfd": 5, "syscall": "openat2"}


def test_truncated_and_unreadable_paths(jalki_validate_event: Callable[[Event], None]) -> None:
    long_path = b"/" + b"d" * 254
    cut = decode_one(ts_ns=3, error=36, flags=1 | layouts.PATH_TRUNCATED, **path_fields(long_path),
                     pid=1, comm=b"x", cgroup_id=1)
    jalki_validate_event(cut)
    assert cut["data"]["path"] == long_path.decode() and cut["data"]["path_truncated"] is True
    assert cut["error"]["code"] == "ENAMETOOLONG"
    unreadable = decode_one(ts_ns=4, error=14, flags=1 | layouts.PATH_UNREADABLE, syscall=2,
                            pid=1, comm=b"x", cgroup_id=1)
    jalki_validate_event(unreadable)
    assert unreadable["data"]["path"] is None and unreadable["error"]["code"] == "EFAULT"
    assert unreadable["data"]["syscall"] == "open"


def test_descriptor_exhaustion_is_an_error_and_bad_utf8_is_kept(jalki_validate_event: Callable[[Event], None]) -> None:
    event = decode_one(ts_ns=5, error=24, syscall=3, **path_fields(b"/tmp/\xff.txt"), **CALLER)
    jalki_validate_event(event)
    assert event["severity"] == "error" and event["error"]["code"] == "EMFILE"
    assert event["data"]["path"] == "/tmp/\\xff.txt" and event["data"]["syscall"] == "creat"


def test_open_flags_text() -> None:
    assert open_flags_text(os.O_RDWR | os.O_APPEND | os.O_NONBLOCK) == "O_RDWR|O_APPEND|O_NONBLOCK"
    assert open_flags_text(os.O_WRONLY | os.O_SYNC) == "O_WRONLY|O_SYNC"  # not also O_DSYNC
    assert open_flags_text(os.O_RDWR | os.O_TMPFILE) == "O_RDWR|O_TMPFILE"  # not also O_DIRECTORY
    assert open_flags_text(os.O_RDONLY | 0x40000000) == "O_RDONLY|0x40000000"


def test_path_prefix_from_argument_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JALKI_FS_PATH_PREFIX", "/srv/data/")
    assert OpenFailedProbe().path_prefix == "/srv/data/"
    probe = OpenFailedProbe(path_prefix="/etc/")
    assert probe.path_prefix == "/etc/" and probe.describe()["path_prefix"] == "/etc/"
    assert probe.rodata() == {"fs_path_prefix": b"/etc/" + b"\0" * (layouts.PREFIX_MAX - 5), "fs_path_prefix_len": 5}
    with pytest.raises(ProbeError, match="at most 128"):
        OpenFailedProbe(path_prefix="/" + "x" * 128)


def test_record_layout_matches_the_c_header() -> None:
    header = (Path(__file__).resolve().parents[3] / "plugins/jalki_fs/jalki_fs/bpf/open_failed.h").read_text()
    assert "sizeof(struct open_failed_event) == 320" in header and layouts.OPEN_FAILED.size == 320
    assert f"JALKI_FS_PATH_MAX {layouts.PATH_MAX}" in header
    assert f"JALKI_FS_PREFIX_MAX {layouts.PREFIX_MAX}" in header


def test_kb_entry_names_the_probe_and_real_event_paths() -> None:
    kb = default_kb()
    registered = JalkiPlugins().probes.get("open_failed")
    assert registered is not None and registered.owner.plugin == "fs"
    entry = kb.entries["do_sys_openat2"]
    assert entry.layer == "fs" and entry.implemented_by is not None
    assert (entry.implemented_by.plugin, entry.implemented_by.probe) == ("fs", "open_failed")
    assert entry.attach == tuple(rung.name for rung in registered.probe.ladder)
    assert entry.event_type == "kernel.fs.open_failed"
    event = decode_one(ts_ns=1, error=13, open_flags=os.O_CREAT, mode=0o600, **path_fields(b"/x"), **CALLER)
    assert [spec.name for spec in entry.fields if get_path(event, spec.name) is None] == []
    assert not [p for p in kb.problems if "fs_open" in p.source]
