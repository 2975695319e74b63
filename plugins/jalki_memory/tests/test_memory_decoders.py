"""jalki-memory decoders fed with raw records through the fake ring buffer (no root)."""

from __future__ import annotations

from collections.abc import Callable

from jalki_memory import layouts
from jalki_memory.probes import OomKillProbe, memcg_path

from jalki_core.events import OWNER_KNOWN, Event
from jalki_core.testing import FakeRingBuffer, decode_all, make_event_context

VICTIM = {"pid": 3001, "comm": b"java", "cgroup_id": 812}
TRIGGER = {"trigger_pid": 3001, "trigger_comm": b"java"}


def names(*levels: str) -> bytes:
    """memcg_names as the kernel fills them: leaf first, MEMCG_NAME bytes each."""
    return b"".join(level.encode().ljust(layouts.MEMCG_NAME, b"\0") for level in levels)


def decode(values: dict[str, object], *, page_size: int = 4096, attach: str = "tp_btf") -> Event:
    probe = OomKillProbe(page_size=page_size)
    ring = FakeRingBuffer(probe.layout)
    ring.push_values(**{"ts_ns": 1_000, **VICTIM, **TRIGGER, **values})
    [event] = decode_all(probe, ring, make_event_context("oom_kill", attach))
    return event


def test_tp_btf_record_pages_become_bytes(jalki_validate_event: Callable[[Event], None]) -> None:
    event = decode({
        "flags": OWNER_KNOWN | layouts.SCORE_ADJ_KNOWN,
        "total_vm": 12066, "anon_rss": 9344, "file_rss": 1371, "shmem_rss": 2, "pgtables": 139264,
        "memcg_id": 12971, "memcg_depth": 2, "memcg_names": names("web", "kubepods"), "oom_score_adj": -500,
        "uid": 1000,
    })
    jalki_validate_event(event)
    assert (event["type"], event["severity"], event["source"]) == ("kernel.memory.oom_kill", "critical",
                                                                   "jalki/oom_kill")
    assert event["process_data"] == {"pid": 3001, "command": "java", "cgroup_id": 812}
    assert event["data"] == {
        "total_vm_bytes": 12066 * 4096, "anon_rss_bytes": 9344 * 4096, "file_rss_bytes": 1371 * 4096,
        "shmem_rss_bytes": 2 * 4096, "pgtables_bytes": 139264,
        "memcg_path": "/kubepods/web", "memcg_id": 12971, "oom_score_adj": -500, "uid": 1000,
        "trigger_pid": 3001, "trigger_command": "java",
    }


def test_page_size_is_the_probes(jalki_validate_event: Callable[[Event], None]) -> None:
    event = decode({"flags": OWNER_KNOWN, "anon_rss": 10}, page_size=65536)
    jalki_validate_event(event)
    assert event["data"]["anon_rss_bytes"] == 655360
    assert event["data"]["memcg_path"] == "/" and event["data"]["oom_score_adj"] is None


def test_classic_record_kb_become_bytes(jalki_validate_event: Callable[[Event], None]) -> None:
    event = decode({
        "flags": OWNER_KNOWN | layouts.FIGURES_KB | layouts.SCORE_ADJ_KNOWN,
        "total_vm": 48264, "anon_rss": 37376, "file_rss": 5484, "shmem_rss": 0, "pgtables": 136,
        "memcg_id": 77, "memcg_depth": 1, "memcg_names": names("jalki-oom"),
    }, attach="tracepoint")
    jalki_validate_event(event)
    assert event["attach"] == "tracepoint"
    assert [event["data"][k] for k in ("total_vm_bytes", "anon_rss_bytes", "file_rss_bytes", "shmem_rss_bytes",
                                       "pgtables_bytes")] == [48264 * 1024, 37376 * 1024, 5484 * 1024, 0, 136 * 1024]
    assert event["data"]["memcg_path"] == "/jalki-oom" and event["data"]["oom_score_adj"] == 0


def test_victim_unseen_on_the_classic_rung(jalki_validate_event: Callable[[Event], None]) -> None:
    event = decode({"flags": layouts.VICTIM_UNSEEN | layouts.FIGURES_KB, "cgroup_id": 0, "anon_rss": 1,
                    "trigger_pid": 999, "trigger_comm": b"allocator"}, attach="tracepoint")
    jalki_validate_event(event)
    assert event["process_data"] == {"pid": 3001, "command": "java", "cgroup_id": None}
    assert (event["data"]["memcg_path"], event["data"]["memcg_id"]) == (None, None)
    assert (event["data"]["trigger_pid"], event["data"]["trigger_command"]) == (999, "allocator")


def test_old_kernel_without_figures(jalki_validate_event: Callable[[Event], None]) -> None:
    event = decode({"flags": OWNER_KNOWN | layouts.FIGURES_ABSENT, "comm": b""}, attach="tracepoint")
    jalki_validate_event(event)
    assert event["process_data"]["command"] is None
    assert all(event["data"][f"{name}_bytes"] is None
               for name in ("total_vm", "anon_rss", "file_rss", "shmem_rss", "pgtables"))


def test_no_memcg_and_deep_memcg(jalki_validate_event: Callable[[Event], None]) -> None:
    none = decode({"flags": OWNER_KNOWN | layouts.NO_MEMCG})
    deep = decode({"flags": OWNER_KNOWN | layouts.MEMCG_TRUNCATED, "memcg_depth": 8,
                   "memcg_names": names(*(f"l{i}" for i in range(8, 0, -1)))})
    for event in (none, deep):
        jalki_validate_event(event)
    assert none["data"]["memcg_path"] is None and none["data"]["memcg_id"] is None
    assert deep["data"]["memcg_path"] == "/.../l1/l2/l3/l4/l5/l6/l7/l8"


def test_memcg_path_names_are_cut_at_the_nul() -> None:
    assert memcg_path(0, b"") == "/"
    assert memcg_path(3, names("c", "b", "a")) == "/a/b/c"
    # a runtime's scope name with a 64-hex container id, and a name of NAME_MAX bytes, whole
    scope, longest = f"cri-containerd-{'ab' * 32}.scope", "n" * 255
    assert memcg_path(3, names(scope, longest, "kubepods.slice")) == f"/kubepods.slice/{longest}/{scope}"


def test_layout_size_matches_the_c_header() -> None:
    assert layouts.OOM_KILL.size == 2168
