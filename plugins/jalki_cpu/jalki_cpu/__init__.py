"""jalki-cpu: hardware-counter probes for jalki (cycles, instructions, IPC, stalled cycles per process)."""

__version__ = "0.1.0"
