"""The ``tcp`` plugin module named by the ``jalki`` entry point."""

from __future__ import annotations

from importlib import resources

from jalki_core import hookimpl
from jalki_core.kb.contrib import BoundKbRegistry
from jalki_core.registry import BoundProbeRegistry
from jalki_tcp.probes import TcpCloseProbe, TcpConnectProbe, TcpResetProbe, TcpRetransmitProbe, TcpRttProbe

KB_FILES = ("tcp.json", "network.json")
"""The plugin's knowledge-base documents (package data under ``jalki_tcp/kb/``)."""


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
    kb_dir = resources.files("jalki_tcp") / "kb"
    for name in KB_FILES:
        registry.register_file(kb_dir / name)
