"""jalki-tcp: TCP probes for jalki (connect outcomes, connection lifetimes, retransmits)."""

__version__ = "0.1.0"
