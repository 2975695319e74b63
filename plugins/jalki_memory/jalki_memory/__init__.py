"""jalki-memory: memory probes for jalki (OOM kills with the victim's memory cgroup and footprint)."""

__version__ = "0.1.0"
