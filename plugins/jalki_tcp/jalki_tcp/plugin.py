"""The ``tcp`` plugin module named by the ``jalki`` entry point."""

from __future__ import annotations

from jalki_core import hookimpl
from jalki_core.registry import BoundProbeRegistry
from jalki_tcp.probes import TcpCloseProbe, TcpConnectProbe, TcpRetransmitProbe


@hookimpl
def jalki_register_probes(registry: BoundProbeRegistry) -> None:
    """Register tcp_connect, tcp_close and tcp_retransmit_skb."""
    registry.register(TcpConnectProbe())
    registry.register(TcpCloseProbe())
    registry.register(TcpRetransmitProbe())
