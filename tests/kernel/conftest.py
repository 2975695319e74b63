"""Kernel-test fixtures (helpers live in netns_helpers.py and tcp_helpers.py)."""

from __future__ import annotations

import pytest
from netns_helpers import netns
from tcp_helpers import Pick, make_pick

__all__ = ["netns", "pick"]


@pytest.fixture(params=["best", "tracepoint"])
def pick(request: pytest.FixtureRequest) -> Pick:
    """Choose probes on their best rung, or forced onto the classic tracepoint rung."""
    return make_pick(request)
