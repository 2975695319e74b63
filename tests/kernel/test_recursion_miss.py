"""Program runs the kernel skips under recursion protection are a counted drop cause, read for real.

tests/kernel/bpf/recursion.bpf.c: on getppid of this process a tracepoint
program prints once; a tp_btf program on the bpf_trace_printk tracepoint
prints again, which fires its own tracepoint on the same CPU while it runs:
the kernel skips that nested run and counts it in the program's
``recursion_misses``. So each getppid is exactly one skipped run, and the
probe's ``recursion_miss`` drops must say so (summary, ``drops``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from jalki_core.events import Event, EventContext
from jalki_core.loader import RECURSION_MISS, ProbeOptions
from jalki_core.probe import AttachRung, Probe, RecordLayout
from jalki_core.session import TraceSession
from jalki_core.testing import FileResource

pytestmark = pytest.mark.kernel

SOURCE = Path(__file__).with_name("bpf") / "recursion.bpf.c"
CALLS = 25


def _kernel_before(major: int, minor: int) -> bool:
    release = os.uname().release.split("-", 1)[0].split(".")
    return (int(release[0]), int(release[1])) < (major, minor)


@pytest.fixture(scope="module")
def recursion_object(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from jalki_core.bpf_build import compile_source

    return compile_source(SOURCE, tmp_path_factory.mktemp("bpf") / "recursion.bpf.o")


def test_each_run_the_kernel_skipped_is_a_recursion_miss_drop(recursion_object: Path) -> None:
    if _kernel_before(6, 2):
        # bpf_trace_printk held a raw spinlock around its tracepoint until 6.2: the nested print deadlocks
        pytest.skip("needs Linux 6.2 or later (older bpf_trace_printk would deadlock on the nested print)")
    class RecursionProbe(Probe):
        name = "recursion"
        observes = "getppid(2), bpf_trace_printk"
        event_types = ("kernel.test.recursion",)
        bpf_object = FileResource(recursion_object)
        ring_buffer_bytes = 1 << 16
        layout = RecordLayout.with_header("recursion_record", "", (), 40)
        ladder = (AttachRung("tp_btf", ("recursion_getppid", "recursion_printk")),)

        def decode(self, record: bytes, ctx: EventContext) -> Event:
            raise AssertionError("this object writes no records")

    session = TraceSession([RecursionProbe()], options=ProbeOptions(filter_pid=os.getpid(), self_tgid=0),
                           strict=True)
    session.start()
    try:
        assert session.attached == ["recursion"]
        for _ in range(CALLS):
            os.getppid()
        session.run(0.05)
    finally:
        summary = session.stop()
    [stats] = summary.probes
    assert stats.kernel_drops[RECURSION_MISS] == CALLS, stats.kernel_drops
    assert stats.as_dict()["drops"][RECURSION_MISS] == CALLS
    assert stats.dropped == CALLS  # a loss like any other, in the probe's total
    assert {cause: n for cause, n in stats.kernel_drops.items() if cause != RECURSION_MISS} == {
        "ringbuf_full": 0, "sampled": 0, "tracking_full": 0}
