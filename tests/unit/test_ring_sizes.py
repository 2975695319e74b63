"""Ring-buffer sizes: --ring-mib values, jalki-tcp's per-probe defaults, and where the size is reported."""

from __future__ import annotations

import pytest
from jalki_tcp.probes import TcpCloseProbe, TcpConnectProbe, TcpResetProbe, TcpRetransmitProbe, TcpRttProbe

from jalki_core.errors import UsageError
from jalki_core.loader import RING_MIB_MAX, ProbeOptions, ring_bytes_from_mib
from jalki_core.probe import check_probe_contract
from jalki_core.session import ProbeRunStats


def test_ring_mib_is_a_power_of_two_in_range() -> None:
    assert ring_bytes_from_mib(1) == 1 << 20 and ring_bytes_from_mib(8) == 8 << 20
    assert ring_bytes_from_mib(RING_MIB_MAX) == RING_MIB_MAX << 20
    for bad in (0, -4, 3, 12, RING_MIB_MAX * 2):
        with pytest.raises(UsageError, match="power of two"):
            ring_bytes_from_mib(bad)
    assert ProbeOptions(ring_buffer_bytes=ring_bytes_from_mib(16)).ring_buffer_bytes == 16 << 20


def test_tcp_rings_hold_a_second_of_a_busy_node() -> None:
    # 20,000 connections/s: 2 close and 2 reset records (112 and 96 bytes), 1 connect (96) per connection
    rate = 20_000
    for probe, per_connection in ((TcpCloseProbe, 2), (TcpResetProbe, 2), (TcpConnectProbe, 1)):
        check_probe_contract(probe())  # still a power of two the kernel takes
        assert probe.ring_buffer_bytes >= 0.9 * rate * per_connection * probe.layout.size, probe.name
    assert TcpRetransmitProbe.ring_buffer_bytes == TcpRttProbe.ring_buffer_bytes == 1 << 20


def test_run_summary_reports_ring_bytes() -> None:
    stats = ProbeRunStats("tcp_close")
    assert stats.as_dict()["ring_bytes"] is None
    stats.ring_bytes = 4 << 20
    assert stats.as_dict()["ring_bytes"] == 4 << 20
