"""``jalki doctor``: what this machine allows, found by trying, not by version numbers."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import typer

from jalki_core.errors import JalkiError, LibbpfError
from jalki_core.privileges import (
    BTF_PATH,
    CAP_BPF,
    CAP_PERFMON,
    CAP_SYS_ADMIN,
    can_load_bpf,
    has_capability,
)

LOCKDOWN_PATH = Path("/sys/kernel/security/lockdown")

ATTACH_TRIALS: tuple[tuple[str, str], ...] = (
    ("fentry", "doctor_fentry"),
    ("fexit", "doctor_fexit"),
    ("tp_btf", "doctor_tp_btf"),
    ("raw_tp", "doctor_raw_tp"),
    ("tracepoint", "doctor_tracepoint"),
    ("kprobe", "doctor_kprobe"),
)
"""Attach types tried, with the program in ``doctor.bpf.o`` that tries each."""


def _check(name: str, status: str, detail: str) -> dict[str, str]:
    return {"name": name, "status": status, "detail": detail}


def lockdown_mode() -> str | None:
    """The active kernel lockdown mode (``none``, ``integrity``, ``confidentiality``), if readable."""
    if not LOCKDOWN_PATH.exists() and os.geteuid() == 0:
        subprocess.run(["mount", "-t", "securityfs", "securityfs", "/sys/kernel/security"],
                       capture_output=True, check=False)
    try:
        text = LOCKDOWN_PATH.read_text()
    except OSError:
        return None
    for word in text.split():
        if word.startswith("["):
            return word.strip("[]")
    return None


def try_attach_type(program: str) -> tuple[bool, str]:
    """Load and attach one trial program; return (worked, detail)."""
    from jalki_core._libbpf import BpfObject, capture_libbpf_log

    data = resources.files("jalki_core").joinpath("bpf/doctor.bpf.o").read_bytes()
    with capture_libbpf_log(), BpfObject.open_memory(data, "jalki_doctor") as obj:
        for name, prog in obj.programs.items():
            prog.autoload = name == program
        try:
            obj.load()
        except LibbpfError as exc:
            return False, f"load refused: {exc.errno_name}"
        try:
            link = obj.programs[program].attach()
        except LibbpfError as exc:
            return False, f"attach refused: {exc.errno_name}"
        link.destroy()
    return True, "loaded and attached"


def run_checks() -> dict[str, Any]:
    """Every check, as a JSON-friendly report."""
    checks = [
        _check("kernel", "ok", f"{platform.release()} ({platform.machine()})"),
        _check("btf", "ok" if BTF_PATH.exists() else "fail",
               str(BTF_PATH) if BTF_PATH.exists() else
               f"{BTF_PATH} missing: CO-RE probes cannot load (needs CONFIG_DEBUG_INFO_BTF=y)"),
    ]
    caps = [name for cap, name in ((CAP_SYS_ADMIN, "CAP_SYS_ADMIN"), (CAP_BPF, "CAP_BPF"),
                                   (CAP_PERFMON, "CAP_PERFMON")) if has_capability(cap)]
    privileged = can_load_bpf()
    checks.append(_check(
        "privileges", "ok" if privileged else "fail",
        f"euid {os.geteuid()}, capabilities: {', '.join(caps) or 'none'}"
        + ("" if privileged else " (run as root or grant CAP_BPF+CAP_PERFMON)"),
    ))
    mode = lockdown_mode()
    if mode is None:
        checks.append(_check("lockdown", "warn", "unknown (securityfs not readable)"))
    else:
        detail = mode
        if mode == "confidentiality":
            detail += ": bpf_probe_read_kernel is refused; only tp_btf direct reads work"
        checks.append(_check("lockdown", "warn" if mode == "confidentiality" else "ok", detail))
    attach: dict[str, dict[str, Any]] = {}
    for attach_type, program in ATTACH_TRIALS:
        if not privileged:
            attach[attach_type] = {"usable": False, "detail": "not tried: no privileges"}
            checks.append(_check(f"attach {attach_type}", "warn", "not tried: no privileges"))
            continue
        try:
            usable, detail = try_attach_type(program)
        except JalkiError as exc:
            usable, detail = False, exc.one_line()
        attach[attach_type] = {"usable": usable, "detail": detail}
        checks.append(_check(f"attach {attach_type}", "ok" if usable else "fail", detail))
    return {"checks": checks, "attach": attach, "lockdown": mode, "btf": BTF_PATH.exists()}


def doctor_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Check BTF, privileges, lockdown, and which attach types really work here (by trial)."""
    report = run_checks()
    if as_json:
        import orjson

        sys.stdout.buffer.write(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
        return
    from rich.console import Console
    from rich.markup import escape

    from jalki_core.cli.tables import Column, print_table

    rows = []
    for check in report["checks"]:
        mark = {"ok": "[green]ok[/]", "fail": "[red]fail[/]", "warn": "[yellow]warn[/]"}[check["status"]]
        rows.append([escape(check["name"]), mark, escape(check["detail"])])
    print_table(Console(highlight=False), "jalki doctor",
                [Column("check", wrap=False), Column("result"), Column("detail", min_width=20)], rows)
