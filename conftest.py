"""Shared test configuration (tests/, bench/ and each plugin's plugins/*/tests).

Kernel tests (``@pytest.mark.kernel``) need root and a real kernel. Without
them they skip; with ``JALKI_REQUIRE_KERNEL_TESTS=1`` (set by ``.ci/run``) any
skip of a kernel test is turned into a failure, so CI can never pass by
skipping the tests that matter.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from pathlib import Path

import pytest

REQUIRE_KERNEL = os.environ.get("JALKI_REQUIRE_KERNEL_TESTS") == "1"
REPO_ROOT = Path(__file__).resolve().parent


def kernel_unavailable_reason() -> str | None:
    """Why kernel tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "kernel tests need root"
    if not Path("/sys/kernel/btf/vmlinux").exists():
        return "kernel tests need BTF (/sys/kernel/btf/vmlinux)"
    return None


@pytest.fixture(autouse=True)
def _kernel_gate(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("kernel") is None:
        return
    reason = kernel_unavailable_reason()
    if reason:
        pytest.skip(reason)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, None, None]:
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_KERNEL and report.skipped and item.get_closest_marker("kernel") is not None:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"kernel test skipped but JALKI_REQUIRE_KERNEL_TESTS=1: {reason}"
