"""What the default KB holds with every built-in plugin installed: one place for the KB tests' counts."""

from __future__ import annotations

ENTRIES_PER_LAYER = {
    "cpu": 2, "fs": 4, "memory": 4, "network": 5, "process": 4, "sched": 4, "storage": 2, "tcp": 9,
}
ENTRY_COUNT = sum(ENTRIES_PER_LAYER.values())
LAYERS_TEXT = ", ".join(sorted(ENTRIES_PER_LAYER))
