"""The ``tcp`` plugin module named by the ``jalki`` entry point."""

from __future__ import annotations

from typing import TYPE_CHECKING

from jalki_core import hookimpl
from jalki_tcp.probes import TcpCloseProbe, TcpConnectProbe, TcpResetProbe, TcpRetransmitProbe, TcpRttProbe

if TYPE_CHECKING:
    from jalki_core import BoundKbRegistry, BoundProbeRegistry

KB_FILES = ("kb/tcp.json", "kb/network.json")
"""The plugin's knowledge-base documents, relative to the ``jalki_tcp`` package."""


@hookimpl
def jalki_register_probes(registry: BoundProbeRegistry) -> None:
    """Register tcp_connect, tcp_close, tcp_retransmit_skb, tcp_reset and tcp_rtt."""
    registry.register(TcpConnectProbe())
    registry.register(TcpCloseProbe())
    registry.register(TcpRetransmitProbe())
    registry.register(TcpResetProbe())
    registry.register(TcpRttProbe())


@hookimpl
def jalki_register_kb(registry: BoundKbRegistry) -> None:
    """Register the KB entries of the probes this plugin implements and of its anomalies."""
    for name in KB_FILES:
        registry.register_file(name)
