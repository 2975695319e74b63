"""The loader checks a probe's Python record layout against its C struct, field by field, on a real load.

tests/kernel/bpf/layout_check.bpf.c has a record with two same-size fields
(``tid``, ``cpu``) after the shared header. A Python layout naming them in
the other order has the right size; before the field-by-field check it
loaded and emitted each one's value under the other's name.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from jalki_core.errors import LayoutMismatchError
from jalki_core.events import Event, EventContext
from jalki_core.loader import ProbeLoader, ProbeOptions
from jalki_core.probe import AttachRung, Probe, RecordLayout
from jalki_core.testing import FileResource

pytestmark = pytest.mark.kernel

SOURCE = Path(__file__).with_name("bpf") / "layout_check.bpf.c"
HEADER = ("ts_ns", "cgroup_id", "pid", "flags", "comm")
MATCHING = RecordLayout("layout_check_event", "<QQII16sIIQH2x4x", (*HEADER, "tid", "cpu", "value", "port"), 64)
SWAPPED = RecordLayout("layout_check_event", "<QQII16sIIQH2x4x", (*HEADER, "cpu", "tid", "value", "port"), 64)


@pytest.fixture(scope="module")
def layout_object(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from jalki_core.bpf_build import compile_source

    return compile_source(SOURCE, tmp_path_factory.mktemp("bpf") / "layout_check.bpf.o")


def make_probe(path: Path, record: RecordLayout) -> Probe:
    class LayoutCheckProbe(Probe):
        name = "layout_check"
        observes = "getppid(2)"
        event_types = ("kernel.test.layout",)
        bpf_object = FileResource(path)
        ring_buffer_bytes = 1 << 16
        layout = record
        ladder = (AttachRung("tracepoint", ("layout_check_getppid",)),)

        def decode(self, batch: bytes, ctx: EventContext) -> list[Event]:
            return []

    return LayoutCheckProbe()


def test_swapped_same_size_fields_are_refused_before_anything_loads(layout_object: Path) -> None:
    with pytest.raises(LayoutMismatchError) as info:
        ProbeLoader(ProbeOptions(filter_pid=os.getpid(), self_tgid=0)).load(make_probe(layout_object, SWAPPED))
    message = info.value.message
    assert message.startswith("probe layout_check: record layout layout_check_event: field 'cpu' is at offset 40")
    assert "in the Python RecordLayout in" in message and "test_layout_btf" in message
    assert "the C struct layout_check_event (BTF of layout_check.bpf.o) has 'tid'" in message
    assert "'cpu' at offset 44 (4 bytes)" in message


def test_matching_layout_loads_and_its_fields_carry_the_right_values(layout_object: Path) -> None:
    from jalki_core._libbpf import RingBufferReader, num_possible_cpus

    loaded = ProbeLoader(ProbeOptions(filter_pid=os.getpid(), self_tgid=0)).load(make_probe(layout_object, MATCHING))
    try:
        assert loaded.rung.name == "tracepoint"
        reader = RingBufferReader(loaded.obj.maps["events"], MATCHING.size)
        tid = threading.get_native_id()
        os.getppid()
        batch = reader.poll(1000)
        records = [MATCHING.struct.unpack_from(batch, off) for off in range(0, len(batch), MATCHING.size)]
        values = [dict(zip(MATCHING.fields, record, strict=True)) for record in records]
        mine = [v for v in values if v["tid"] == tid]
        assert mine, values
        assert mine[0]["pid"] == os.getpid() and mine[0]["value"] == 42 and mine[0]["port"] == 8080
        assert 0 <= mine[0]["cpu"] < num_possible_cpus()
    finally:
        loaded.close()
