"""RecordLayout.check_btf: the Python record layout against the C struct's members in BTF.

The rules are tested on member lists written out here; the last tests read the
members from a real object compiled from tests/kernel/bpf/layout_check.bpf.c
(clang needed; opening an object reads its BTF without root or a load).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from jalki_core._libbpf.objects import BtfMember
from jalki_core.errors import LayoutMismatchError
from jalki_core.probe import LayoutField, RecordLayout, is_padding_name

REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO / "tests" / "kernel" / "bpf" / "layout_check.bpf.c"
HEADER_FMT = "QQII16s"
HEADER_FIELDS = ("ts_ns", "cgroup_id", "pid", "flags", "comm")
HEADER = [
    BtfMember("hdr.ts_ns", "ts_ns", 0, 8, 8),
    BtfMember("hdr.cgroup_id", "cgroup_id", 8, 8, 8),
    BtfMember("hdr.pid", "pid", 16, 4, 4),
    BtfMember("hdr.flags", "flags", 20, 4, 4),
    BtfMember("hdr.comm", "comm", 24, 16, 1),
]
# struct layout_check_event of layout_check.bpf.c, as the binding reads it
EVENT = [
    *HEADER,
    BtfMember("tid", "tid", 40, 4, 4),
    BtfMember("cpu", "cpu", 44, 4, 4),
    BtfMember("value", "value", 48, 8, 8),
    BtfMember("port", "port", 56, 2, 2),
    BtfMember("_pad", "_pad", 58, 2, 2),
    BtfMember("reserved", "reserved", 60, 4, 4),
]


def layout(fmt: str, *fields: str, **kwargs: object) -> RecordLayout:
    return RecordLayout("layout_check_event", "<" + fmt, fields, 64, **kwargs)  # type: ignore[arg-type]


MATCHING = layout(HEADER_FMT + "IIQH2x4x", *HEADER_FIELDS, "tid", "cpu", "value", "port")


def test_field_offsets_follow_the_format_with_explicit_padding() -> None:
    assert MATCHING.field_offsets[4:] == (
        LayoutField("comm", 24, 16), LayoutField("tid", 40, 4), LayoutField("cpu", 44, 4),
        LayoutField("value", 48, 8), LayoutField("port", 56, 2),
    )


def test_matching_layout_passes() -> None:
    MATCHING.check_btf(EVENT, 64, c_side="BTF of layout_check.bpf.o")


def test_swapped_same_size_fields_are_refused_naming_field_offsets_and_sides() -> None:
    swapped = layout(HEADER_FMT + "IIQH2x4x", *HEADER_FIELDS, "cpu", "tid", "value", "port")
    assert swapped.size == MATCHING.size  # the old size-only check let this through
    with pytest.raises(LayoutMismatchError) as info:
        swapped.check_btf(EVENT, 64, c_side="BTF of layout_check.bpf.o")
    message = info.value.message
    assert "field 'cpu' is at offset 40 (4 bytes) in the Python RecordLayout in tests.unit.test_layout_btf" \
        in message or "field 'cpu' is at offset 40 (4 bytes) in the Python RecordLayout in test_layout_btf" \
        in message, message
    assert "the C struct layout_check_event (BTF of layout_check.bpf.o) has 'tid'" in message
    assert "'cpu' at offset 44 (4 bytes)" in message


def test_a_c_member_the_python_side_skips_is_refused_unless_it_is_padding() -> None:
    # `reserved` and `_pad` are padding names: 'x' in Python is fine (MATCHING does it);
    # `value` is not: skipping it with 'x' hides a field.
    skipping = layout(HEADER_FMT + "II8xH2x4x", *HEADER_FIELDS, "tid", "cpu", "port")
    with pytest.raises(LayoutMismatchError, match=r"C member 'value' at offset 48 \(8 bytes\) .* has no field"):
        skipping.check_btf(EVENT, 64, c_side="BTF of x.bpf.o")


def test_padding_fields_may_cover_padding_members_and_holes() -> None:
    named = layout(HEADER_FMT + "IIQHHI", *HEADER_FIELDS, "tid", "cpu", "value", "port", "pad", "_reserved")
    named.check_btf(EVENT, 64, c_side="BTF of x.bpf.o")
    hole = [m for m in EVENT if m.name not in ("_pad", "reserved")]  # 6 bytes of implicit padding in C
    layout(HEADER_FMT + "IIQHH4x", *HEADER_FIELDS, "tid", "cpu", "value", "port", "_pad").check_btf(
        hole, 64, c_side="BTF of x.bpf.o")
    with pytest.raises(LayoutMismatchError, match=r"'spare' at offset 58 .* lies on no member"):
        layout(HEADER_FMT + "IIQHH4x", *HEADER_FIELDS, "tid", "cpu", "value", "port", "spare").check_btf(
            hole, 64, c_side="BTF of x.bpf.o")


def test_size_difference_inside_a_member_is_refused() -> None:
    narrow = RecordLayout("e", "<QI4x", ("a", "b"), 16)
    with pytest.raises(LayoutMismatchError, match=r"field 'b' is at offset 8 \(4 bytes\).*'b' at offset 8 \(8"):
        narrow.check_btf([BtfMember("a", "a", 0, 8, 8), BtfMember("b", "b", 8, 8, 8)], 16, c_side="BTF")


def test_an_array_of_scalars_may_be_split_into_named_elements() -> None:
    members = [BtfMember("count", "count", 0, 32, 8), BtfMember("n", "n", 32, 8, 8)]
    RecordLayout("e", "<4QQ", ("cycles", "instructions", "front", "back", "n"), 40).check_btf(
        members, 40, c_side="BTF")
    RecordLayout("e", "<32sQ", ("count", "n"), 40).check_btf(members, 40, c_side="BTF")
    with pytest.raises(LayoutMismatchError):  # uneven split
        RecordLayout("e", "<QQ16sQ", ("a", "b", "c", "n"), 40).check_btf(members, 40, c_side="BTF")


def test_nested_members_match_by_leaf_name_path_or_c_names() -> None:
    members = [*HEADER, BtfMember("tuple.sport", "sport", 40, 2, 2), BtfMember("flags", "flags", 42, 2, 2),
               BtfMember("tuple._pad", "_pad", 44, 4, 4)]
    RecordLayout("e", "<" + HEADER_FMT + "HH4x", (*HEADER_FIELDS, "tuple_sport", "open_flags"), 48,
                 c_names={"open_flags": "flags"}).check_btf(members, 48, c_side="BTF")
    with pytest.raises(LayoutMismatchError, match=r"'open_flags'.*has 'flags'"):
        RecordLayout("e", "<" + HEADER_FMT + "HH4x", (*HEADER_FIELDS, "sport", "open_flags"), 48).check_btf(
            members, 48, c_side="BTF")
    with pytest.raises(LayoutMismatchError, match="c_names names unknown fields"):
        RecordLayout("e", "<Q", ("a",), 8, c_names={"b": "b"})


def test_bit_fields_and_total_size_are_reported() -> None:
    with pytest.raises(LayoutMismatchError, match="'mode' is a bit field"):
        RecordLayout("e", "<I", ("mode",), 4).check_btf([BtfMember("mode", "mode", 0, 1, 1, bitfield=True)], 4,
                                                         c_side="BTF")
    with pytest.raises(LayoutMismatchError, match=r"is 16 bytes but the Python RecordLayout .* is 8"):
        RecordLayout("e", "<Q", ("a",), 8).check_btf([BtfMember("a", "a", 0, 8, 8)], 16, c_side="BTF")


def test_the_hand_typed_size_is_not_called_the_c_header() -> None:
    with pytest.raises(LayoutMismatchError) as info:
        RecordLayout("x_event", "<QI", ("a", "b"), 16)
    assert "C header says" not in info.value.message
    assert "its c_size says 16" in info.value.message and "in test_layout_btf" in info.value.message


def test_padding_names() -> None:
    assert all(map(is_padding_name, ("pad", "_pad", "__pad2", "reserved", "_reserved", "_agg_pad", "unused1")))
    assert not any(map(is_padding_name, ("netpad", "padding_bytes", "spare", "tid")))


@pytest.fixture(scope="module")
def layout_object(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("clang") is None:
        pytest.skip("clang not installed")
    from jalki_core.bpf_build import compile_source

    return compile_source(SOURCE, tmp_path_factory.mktemp("bpf") / "layout_check.bpf.o", vmlinux="minimal")


def test_members_are_read_from_a_real_objects_btf(layout_object: Path) -> None:
    from jalki_core._libbpf import BpfObject

    with BpfObject.open_file(layout_object) as obj:
        members = obj.btf_struct_members("layout_check_event")
        assert obj.btf_struct_members("no_such_struct") is None
    assert members == EVENT
    MATCHING.check_btf(members, 64, c_side="BTF of layout_check.bpf.o")
