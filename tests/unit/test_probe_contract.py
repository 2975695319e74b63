"""Record layouts and the probe contract."""

from __future__ import annotations

import pytest

from jalki_core.errors import LayoutMismatchError, ProbeError
from jalki_core.probe import RecordLayout, batch_records


def test_layout_size_must_match_c_size() -> None:
    with pytest.raises(LayoutMismatchError, match="its c_size says 16"):
        RecordLayout("x_event", "<QI", ("a", "b"), 16)


def test_layout_needs_explicit_byte_order() -> None:
    with pytest.raises(LayoutMismatchError, match="byte order"):
        RecordLayout("x_event", "QQ", ("a", "b"), 16)


def test_pack_roundtrip_and_padding() -> None:
    layout = RecordLayout("x_event", "<QI4x16s", ("a", "b", "name"), 32)
    packed = layout.pack(a=7, name=b"abc")
    assert len(packed) == 32
    assert layout.struct.unpack(packed) == (7, 0, b"abc" + b"\0" * 13)
    with pytest.raises(ProbeError, match="unknown fields"):
        layout.pack(zzz=1)


def test_batch_records_rejects_wrong_sizes() -> None:
    layout = RecordLayout("x_event", "<Q", ("a",), 8)
    assert batch_records(layout, [layout.pack(a=1), layout.pack(a=2)]) == layout.pack(a=1) + layout.pack(a=2)
    with pytest.raises(ProbeError):
        batch_records(layout, [b"123"])


def test_tcp_layouts_match_c_header_asserts() -> None:
    from pathlib import Path

    from jalki_tcp import layouts

    header = (Path(__file__).resolve().parents[2] / "plugins/jalki_tcp/jalki_tcp/bpf/tcp_events.h").read_text()
    for layout in (layouts.CONNECT, layouts.CLOSE, layouts.RETRANSMIT):
        assert f"sizeof(struct {layout.c_struct}) == {layout.size}" in header


def test_extra_drop_causes_are_limited_to_the_kernel_slots() -> None:
    from jalki_tcp.probes import TcpRetransmitProbe

    from jalki_core.probe import check_probe_contract

    class TooManyCauses(TcpRetransmitProbe):
        extra_drop_causes = ("a", "b", "c", "d", "e", "f")

    class FiveCauses(TcpRetransmitProbe):
        extra_drop_causes = ("a", "b", "c", "d", "e")

    check_probe_contract(FiveCauses())
    with pytest.raises(ProbeError, match="at most 5 extra_drop_causes"):
        check_probe_contract(TooManyCauses())


def test_hooks_default_to_no_extra_events() -> None:
    from jalki_tcp.probes import TcpRetransmitProbe

    from jalki_core.testing import make_event_context

    probe = TcpRetransmitProbe()
    assert probe.derive([{"type": "kernel.tcp.retransmit"}], make_event_context()) == []
    assert probe.final_events({}, make_event_context()) == []
    assert probe.extra_drop_causes == ()


def test_an_unavailable_probe_is_refused_before_any_rung() -> None:
    from jalki_tcp.probes import TcpRetransmitProbe

    from jalki_core.errors import ProbeUnavailableError
    from jalki_core.loader import ProbeLoader
    from jalki_core.probe import ProbeResource

    class NoCounters(TcpRetransmitProbe):
        bpf_object = ProbeResource("jalki_tcp.bpf", "no_such_object.bpf.o")  # never read

        def unavailable_reason(self) -> str | None:
            return "no hardware performance counters (PERF_TYPE_HARDWARE: ENOENT)"

    with pytest.raises(ProbeUnavailableError, match="unavailable here: no hardware performance counters"):
        ProbeLoader().load(NoCounters())
