"""`jalki doctor` tries every attach type for real and reports what this kernel allows."""

from __future__ import annotations

import pytest

from jalki_core.cli import main

pytestmark = pytest.mark.kernel


def test_doctor_reports_attach_types_by_trial(capsys: pytest.CaptureFixture[str]) -> None:
    import orjson

    assert main(["doctor", "--json"]) == 0
    report = orjson.loads(capsys.readouterr().out)
    assert report["btf"] is True
    assert set(report["attach"]) == {"fentry", "fexit", "tp_btf", "raw_tp", "tracepoint", "kprobe"}
    # The fallback rungs jalki relies on work on every BTF kernel it supports.
    for attach_type in ("tp_btf", "raw_tp", "tracepoint"):
        assert report["attach"][attach_type] == {"usable": True, "detail": "loaded and attached"}
    # fentry/fexit: whatever this kernel decides, a refusal names its errno.
    for attach_type in ("fentry", "fexit", "kprobe"):
        entry = report["attach"][attach_type]
        assert entry["usable"] or "refused: E" in entry["detail"]
    checks = {check["name"]: check for check in report["checks"]}
    assert checks["privileges"]["status"] == "ok"
    lockdown_modes = ("none", "integrity", "confidentiality", "unknown (securityfs not readable)")
    assert checks["lockdown"]["detail"].split(":")[0] in lockdown_modes
