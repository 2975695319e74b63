"""jalki-process: process probes for jalki (program starts, process exits with status and signal)."""

__version__ = "0.1.0"
