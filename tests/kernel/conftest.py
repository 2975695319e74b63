"""Kernel-test fixtures (the helpers live in netns_helpers.py)."""

from __future__ import annotations

from netns_helpers import netns

__all__ = ["netns"]
