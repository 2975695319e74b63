"""``RingBufferReader.fill_ratio``: the ring's fill read from its producer and consumer position pages.

The binding's test object writes one 16-byte record (24 bytes with the ring's 8-byte header) into a
256 KiB ring per ``getppid()`` of this process; nothing reads it until the test does.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_libbpf_binding import EVENT, compile_bpf, open_configured

from jalki_core._libbpf import BpfObject, RingBufferReader

pytestmark = pytest.mark.kernel

SLOT = 8 + EVENT.size  # the kernel's record header, and the record (already a multiple of 8)


@pytest.fixture
def loaded(tmp_path: Path) -> Iterator[BpfObject]:
    obj = open_configured(compile_bpf(tmp_path))
    obj.load()
    try:
        yield obj
    finally:
        obj.close()


def test_fill_ratio_is_the_unread_share_of_the_ring(loaded: BpfObject) -> None:
    ring = loaded.maps["events"].max_entries
    reader = RingBufferReader(loaded.maps["events"], EVENT.size, batch_bytes=100 * EVENT.size)
    assert reader.fill_ratio() == 0
    link = loaded.programs["on_getppid"].attach()
    try:
        for _ in range(1000):
            os.getppid()
        assert reader.fill_ratio() == 1000 * SLOT / ring
        assert len(reader.consume()) == 100 * EVENT.size  # one batch: 100 records released
        assert reader.fill_ratio() == 900 * SLOT / ring
        for _ in range(ring // SLOT + 100):  # more than the ring holds: the kernel refuses the rest
            os.getppid()
        assert reader.fill_ratio() == (ring // SLOT) * SLOT / ring > 0.99
    finally:
        link.destroy()
    while reader.consume():
        pass
    assert reader.fill_ratio() == 0
    reader.close()
    assert reader.fill_ratio() is None
