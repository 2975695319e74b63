"""jalki-process decoders fed with raw records through the fake ring buffer (no root)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from jalki_process import layouts
from jalki_process.probes import ProcessExecProbe, ProcessExitProbe, split_argv
from jalki_process.signals import decode_wait_status, signal_name

from jalki_core.events import OWNER_KNOWN, Event
from jalki_core.testing import FakeRingBuffer, decode_all, make_event_context

PROC = {"pid": 4242, "comm": b"api-server", "cgroup_id": 99}
PARENT = {"ppid": 1, "parent_comm": b"systemd"}


def exit_event(status: int, flags: int = OWNER_KNOWN | layouts.GROUP_EXIT, **extra: object) -> Event:
    probe = ProcessExitProbe()
    ring = FakeRingBuffer(probe.layout)
    ring.push_values(ts_ns=2_000_000_000, status=status, runtime_ns=1_500_000_000, tid=4242, flags=flags,
                     **{**PROC, **PARENT, **extra})
    [event] = decode_all(probe, ring, make_event_context("process_exit", "tp_btf"))
    return event


def test_exit_with_status_3_is_a_warning(jalki_validate_event: Callable[[Event], None]) -> None:
    event = exit_event(3 << 8)
    jalki_validate_event(event)
    assert (event["type"], event["severity"], event["source"]) == ("kernel.process.exit", "warning",
                                                                   "jalki/process_exit")
    assert "outcome" not in event and event["attach"] == "tp_btf"
    assert event["timestamp"] == "2023-11-14T22:13:22.000000000Z"
    assert event["process_data"] == {"pid": 4242, "command": "api-server", "cgroup_id": 99}
    assert event["data"] == {"exit_code": 3, "signal": None, "core_dumped": False, "abnormal": True,
                             "oom_killed": False, "runtime_ns": 1_500_000_000, "ppid": 1,
                             "parent_command": "systemd"}


def test_sigkill_is_137_and_an_error(jalki_validate_event: Callable[[Event], None]) -> None:
    event = exit_event(9)
    jalki_validate_event(event)
    assert event["severity"] == "error"
    assert event["data"]["exit_code"] == 137 and event["data"]["signal"] == "SIGKILL"
    assert event["data"]["abnormal"] is True and event["data"]["core_dumped"] is False
    assert event["data"]["oom_killed"] is False


def test_oom_victim_flag_and_core_dump(jalki_validate_event: Callable[[Event], None]) -> None:
    oom = exit_event(9, OWNER_KNOWN | layouts.GROUP_EXIT | layouts.OOM_VICTIM)
    segv = exit_event(11 | 0x80)
    for event in (oom, segv):
        jalki_validate_event(event)
    assert oom["data"]["oom_killed"] is True and oom["data"]["exit_code"] == 137
    assert (segv["data"]["exit_code"], segv["data"]["signal"], segv["data"]["core_dumped"]) == (139, "SIGSEGV", True)
    assert segv["severity"] == "error"


def test_clean_exit_is_info_and_not_abnormal(jalki_validate_event: Callable[[Event], None]) -> None:
    event = exit_event(0, OWNER_KNOWN)
    jalki_validate_event(event)
    assert event["severity"] == "info"
    assert (event["data"]["exit_code"], event["data"]["signal"], event["data"]["abnormal"]) == (0, None, False)


def test_unknown_parent_is_null(jalki_validate_event: Callable[[Event], None]) -> None:
    event = exit_event(0, OWNER_KNOWN | layouts.NO_PARENT, ppid=0, parent_comm=b"")
    jalki_validate_event(event)
    assert (event["data"]["ppid"], event["data"]["parent_command"]) == (None, None)


@pytest.mark.parametrize(("number", "name"), [
    (1, "SIGHUP"), (6, "SIGABRT"), (9, "SIGKILL"), (15, "SIGTERM"), (16, "SIGSTKFLT"), (31, "SIGSYS"),
    (32, "SIGRTMIN"), (34, "SIGRTMIN+2"), (64, "SIGRTMIN+32"), (65, "SIG65"),
])
def test_signal_names_follow_the_kernel_numbering(number: int, name: str) -> None:
    assert signal_name(number) == name


@pytest.mark.parametrize(("status", "decoded"), [
    (0, (0, None, False)), (1 << 8, (1, None, False)), (255 << 8, (255, None, False)),
    (9, (137, 9, False)), (15, (143, 15, False)), (6 | 0x80, (134, 6, True)),
])
def test_wait_status_decoding(status: int, decoded: tuple[int, int | None, bool]) -> None:
    assert decode_wait_status(status) == decoded


def exec_records(*records: dict[str, object]) -> list[Event]:
    probe = ProcessExecProbe()
    ring = FakeRingBuffer(probe.layout)
    for values in records:
        ring.push_values(**{"ts_ns": 5, "flags": OWNER_KNOWN, **PROC, "pid": 5000, "old_pid": 5000,
                            **PARENT, **values})
    return decode_all(probe, ring, make_event_context("process_exec", "tracepoint"))


def test_exec_event_with_argv(jalki_validate_event: Callable[[Event], None]) -> None:
    argv = b"/bin/sh\0-c\0exit 3\0"
    [event] = exec_records({"filename": b"/bin/sh", "argv": argv, "argv_len": len(argv),
                            "argv_full_len": len(argv), "comm": b"sh"})
    jalki_validate_event(event)
    assert (event["type"], event["severity"], event["attach"]) == ("kernel.process.exec", "info", "tracepoint")
    assert event["process_data"] == {"pid": 5000, "command": "sh", "cgroup_id": 99}
    assert event["data"] == {"ppid": 1, "parent_command": "systemd", "filename": "/bin/sh",
                             "argv": ["/bin/sh", "-c", "exit 3"], "argv_truncated": False, "argv_bytes": 18}


def test_exec_argv_truncated_unreadable_and_thread_exec(jalki_validate_event: Callable[[Event], None]) -> None:
    long_argv = b"\0".join([b"x" * 100] * 3) + b"\0"  # 303 bytes: the kernel keeps 256
    cut, unreadable = exec_records(
        {"filename": b"/usr/bin/x", "argv": long_argv[:256], "argv_len": 256, "argv_full_len": len(long_argv),
         "flags": OWNER_KNOWN | layouts.ARGV_TRUNCATED, "old_pid": 5003},
        {"filename": b"/usr/bin/y", "argv_len": 0, "argv_full_len": 12,
         "flags": OWNER_KNOWN | layouts.ARGV_UNREADABLE},
    )
    for event in (cut, unreadable):
        jalki_validate_event(event)
    assert cut["data"]["argv"] == ["x" * 100, "x" * 100, "x" * 54]
    assert cut["data"]["argv_truncated"] is True and cut["data"]["argv_bytes"] == 303
    assert cut["data"]["exec_tid"] == 5003
    assert unreadable["data"]["argv"] is None and unreadable["data"]["argv_truncated"] is False
    assert "exec_tid" not in unreadable["data"]


def test_split_argv_keeps_empty_arguments() -> None:
    assert split_argv(b"") == []
    assert split_argv(b"echo\0\0b\0") == ["echo", "", "b"]
    assert split_argv(b"echo\0cut-her") == ["echo", "cut-her"]


def test_batches_decode_in_order() -> None:
    probe = ProcessExitProbe()
    ring = FakeRingBuffer(probe.layout, batch_records=2)
    for code in range(5):
        ring.push_values(ts_ns=code, status=code << 8, flags=OWNER_KNOWN, **PROC)
    events = decode_all(probe, ring)
    assert [e["data"]["exit_code"] for e in events] == [0, 1, 2, 3, 4]
    assert ring.size_mismatches == 0


def test_layout_sizes_match_the_c_header() -> None:
    assert (layouts.EXEC.size, layouts.EXIT.size) == (584, 80)
