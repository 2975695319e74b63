"""jalki-storage: block I/O probes for jalki (latency per device and operation, errors)."""

__version__ = "0.1.0"
