"""jalki-fs: filesystem probes for jalki (failed file opens with errno, path and process)."""

__version__ = "0.1.0"
