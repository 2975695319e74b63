"""jalki-example: the runqslow decoder, its settings and its layout (no root needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from jalki_example import PREEMPTED, RUNQSLOW, THRESHOLD_ENV, RunqSlowProbe

from jalki_core.errors import ProbeError
from jalki_core.events import OWNER_KNOWN
from jalki_core.testing import FakeRingBuffer, decode_all, event_validator, make_event_context

WAITER = {"pid": 4242, "flags": OWNER_KNOWN, "comm": b"nginx", "cgroup_id": 99}


def test_a_long_wait_after_a_wakeup() -> None:
    probe = RunqSlowProbe(threshold_ns=5_000_000)
    ring = FakeRingBuffer(RUNQSLOW)
    ring.push_values(ts_ns=1_000_000_000, latency_ns=12_500_000, tid=4243, cpu=1, prev_tid=777,
                     prev_comm=b"make", **WAITER)
    [event] = decode_all(probe, ring, make_event_context("runqslow", "tp_btf"))
    event_validator([probe])(event)
    assert (event["type"], event["severity"], event["attach"]) == ("kernel.sched.runq_latency", "warning", "tp_btf")
    assert event["timestamp"] == "2023-11-14T22:13:21.000000000Z"
    assert event["process_data"] == {"pid": 4242, "command": "nginx", "cgroup_id": 99}
    assert event["data"] == {"latency_ns": 12_500_000, "tid": 4243, "cpu": 1, "cause": "wakeup",
                             "prev_tid": 777, "prev_command": "make"}


def test_a_preempted_thread_and_an_idle_cpu() -> None:
    ring = FakeRingBuffer(RUNQSLOW)
    ring.push_values(ts_ns=5, latency_ns=20_000_000, tid=4242, cpu=0, prev_tid=0, prev_comm=b"swapper/0",
                     **{**WAITER, "flags": OWNER_KNOWN | PREEMPTED})
    [event] = decode_all(RunqSlowProbe(), ring)
    assert event["data"]["cause"] == "preemption"
    assert (event["data"]["prev_tid"], event["data"]["prev_command"]) == (0, "swapper/0")


def test_owner_unknown_is_null() -> None:
    ring = FakeRingBuffer(RUNQSLOW)
    ring.push_values(ts_ns=5, latency_ns=20_000_000, tid=9, **{**WAITER, "flags": 0})
    [event] = decode_all(RunqSlowProbe(), ring)
    assert event["process_data"] == {"pid": None, "command": None, "cgroup_id": None}


def test_threshold_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(THRESHOLD_ENV, raising=False)
    assert RunqSlowProbe().rodata() == {"runqslow_min_ns": 10_000_000}
    monkeypatch.setenv(THRESHOLD_ENV, "2.5")
    assert RunqSlowProbe().threshold_ns == 2_500_000
    assert RunqSlowProbe(threshold_ns=7).describe()["threshold_ns"] == 7
    for bad in ("soon", "0", "-3"):
        monkeypatch.setenv(THRESHOLD_ENV, bad)
        with pytest.raises(ProbeError, match=THRESHOLD_ENV):
            RunqSlowProbe()


def test_layout_matches_the_c_header() -> None:
    header = (Path(__file__).parents[1] / "jalki_example" / "runqslow.h").read_text()
    assert "sizeof(struct runqslow_event) == 80" in header and RUNQSLOW.size == 80
    assert "JALKI_RUNQ_PREEMPTED (1u << 8)" in header and PREEMPTED == 1 << 8
