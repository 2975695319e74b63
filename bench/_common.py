"""Shared helpers of jalki's benchmarks: building the C helpers, machine facts,
other people's BPF programs, CPU accounting and medians.

Standard library only (plus jalki_core.bpf_build for the BPF object).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent

# Program types that can add cost to the code paths we measure.
TRACING_PROG_TYPES = frozenset(
    {"tracing", "tracepoint", "raw_tracepoint", "raw_tracepoint_writable", "kprobe", "perf_event"}
)


@dataclass(frozen=True)
class Tools:
    """Paths of the compiled helpers and the peers found on this machine."""

    churn: Path
    syscall_gen: Path
    drain_obj: Path | None
    drain_error: str | None
    tcplife: str | None
    bpftrace: str | None
    jalki: list[str]


def build_tools(tmp: Path) -> Tools:
    """Compile churn.c, syscall_gen.c and bench/bpf/drain.bpf.c into ``tmp``."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise SystemExit("bench: gcc not found (apt install gcc)")
    churn = tmp / "churn"
    gen = tmp / "syscall_gen"
    subprocess.run([gcc, "-O2", "-Wall", "-pthread", "-o", str(churn), str(BENCH_DIR / "churn.c")], check=True)
    subprocess.run([gcc, "-O2", "-Wall", "-o", str(gen), str(BENCH_DIR / "syscall_gen.c")], check=True)

    drain_obj: Path | None = None
    drain_error: str | None = None
    src = BENCH_DIR / "bpf" / "drain.bpf.c"
    if not src.is_file():
        drain_error = f"{src} does not exist"
    else:
        from jalki_core.bpf_build import compile_source
        from jalki_core.errors import JalkiError

        try:
            drain_obj = compile_source(src, tmp / "drain.bpf.o")
        except JalkiError as exc:
            drain_error = exc.one_line()

    jalki_script = Path(sys.executable).parent / "jalki"
    jalki = [str(jalki_script)] if jalki_script.is_file() else [sys.executable, "-m", "jalki_core.cli"]
    return Tools(
        churn=churn,
        syscall_gen=gen,
        drain_obj=drain_obj,
        drain_error=drain_error,
        tcplife=_find_tcplife(),
        bpftrace=shutil.which("bpftrace"),
        jalki=jalki,
    )


def _find_tcplife() -> str | None:
    found = shutil.which("tcplife") or shutil.which("tcplife-bpfcc")
    if found:
        return found
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        listing = subprocess.run(["dpkg", "-L", "libbpf-tools"], capture_output=True, text=True, check=True).stdout
        for line in listing.splitlines():
            if Path(line).name.startswith("tcplife") and os.access(line, os.X_OK) and Path(line).is_file():
                return line
    return None


# ---------------------------------------------------------------------------
# Machine facts and versions
# ---------------------------------------------------------------------------


def _first_line(cmd: Sequence[str]) -> str | None:
    try:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, check=False, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (proc.stdout or proc.stderr).strip()
    return text.splitlines()[0] if text else None


def _dpkg_version(package: str) -> str | None:
    return _first_line(["dpkg-query", "-W", "-f", "${Version}", package])


def machine_facts() -> dict[str, Any]:
    """Kernel, CPUs, memory and the knobs that change the numbers."""
    cpu_model = None
    virtualised = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu_model is None:
                cpu_model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and virtualised is None:
                virtualised = "hypervisor" in line.split()
    mem_kb = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kb = int(Path("/proc/meminfo").read_text().split("\n", 1)[0].split()[1])

    def read(path: str) -> str | None:
        try:
            return Path(path).read_text().strip()
        except OSError:
            return None

    return {
        "kernel": platform.release(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "mem_total_mib": mem_kb // 1024 if mem_kb else None,
        "cpuidle_driver": read("/sys/devices/system/cpu/cpuidle/current_driver"),
        "virtual_machine": virtualised,
        "bpf_stats_enabled": read("/proc/sys/kernel/bpf_stats_enabled"),
        "ip_local_port_range": read("/proc/sys/net/ipv4/ip_local_port_range"),
    }


def versions(tools: Tools) -> dict[str, Any]:
    """Versions of everything measured."""
    from importlib import metadata

    def dist(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    return {
        "jalki_tree": _tree_state(),
        "python": platform.python_version(),
        "jalki": dist("jalki"),
        "jalki-tcp": dist("jalki-tcp"),
        "orjson": dist("orjson"),
        "libbpf1": _dpkg_version("libbpf1"),
        "libbpf-tools": _dpkg_version("libbpf-tools"),
        "bpftrace": _first_line([tools.bpftrace, "--version"]) if tools.bpftrace else None,
        "clang": _first_line(["clang", "--version"]),
        "gcc": _first_line(["gcc", "--version"]),
    }


def _tree_state() -> dict[str, Any]:
    """The commit measured, whether jalki's sources differ from it, and the BPF objects' digests.

    Other people edit jalki while benchmarks run: this says which code was measured.
    """
    import hashlib

    def git(*args: str) -> str | None:
        return _first_line(["git", "-C", str(REPO_DIR), *args])

    dirty = subprocess.run(
        ["git", "-C", str(REPO_DIR), "status", "--porcelain", "--", "jalki_core", "plugins", "bpf_src"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    objects = {
        str(path.relative_to(REPO_DIR)): hashlib.sha256(path.read_bytes()).hexdigest()[:12]
        for path in sorted((REPO_DIR / "plugins").glob("*/*/bpf/*.bpf.o"))
    }
    return {"commit": git("rev-parse", "--short", "HEAD"), "sources_modified": bool(dirty), "bpf_objects": objects}


# ---------------------------------------------------------------------------
# Other people's BPF programs (the machine is shared)
# ---------------------------------------------------------------------------


def tracing_programs(exclude_pids: Iterable[int] = ()) -> list[str]:
    """``"id:type:name"`` of every tracing-type BPF program loaded, minus those held by ``exclude_pids``."""
    try:
        proc = subprocess.run(["bpftool", "-j", "prog", "list"], capture_output=True, text=True, timeout=10)
        programs = json.loads(proc.stdout or "[]")
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return []
    owned: set[int] = set()
    for pid in exclude_pids:
        owned |= _prog_ids_of(pid)
    return [
        f"{p['id']}:{p.get('type')}:{p.get('name', '?')}"
        for p in programs
        if p.get("type") in TRACING_PROG_TYPES and p["id"] not in owned
    ]


def _prog_ids_of(pid: int) -> set[int]:
    ids: set[int] = set()
    fdinfo = Path(f"/proc/{pid}/fdinfo")
    with contextlib.suppress(OSError):
        for entry in fdinfo.iterdir():
            with contextlib.suppress(OSError):
                for line in entry.read_text().splitlines():
                    if line.startswith("prog_id:"):
                        ids.add(int(line.split()[1]))
    return ids


class QuietWaiter:
    """Waits, within a per-case and a total budget, until no foreign tracing program is loaded."""

    def __init__(self, per_case_s: float, total_s: float) -> None:
        self.per_case_s = per_case_s
        self.left_s = total_s

    def wait(self) -> tuple[float, list[str]]:
        """Return (seconds waited, foreign programs still loaded)."""
        start = time.monotonic()
        foreign = tracing_programs()
        while foreign and self.left_s > 0 and time.monotonic() - start < self.per_case_s:
            time.sleep(0.5)
            self.left_s -= 0.5
            foreign = tracing_programs()
        return round(time.monotonic() - start, 2), foreign


# ---------------------------------------------------------------------------
# Processes, CPU accounting
# ---------------------------------------------------------------------------


def cpu_times() -> tuple[int, int, int]:
    """(busy, steal, total) jiffies over all CPUs from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    busy = user + nice + system + irq + softirq
    return busy, steal, busy + steal + idle + iowait


def cpu_fractions(before: tuple[int, int, int], after: tuple[int, int, int]) -> dict[str, float]:
    """Busy and steal fractions of all CPUs between two :func:`cpu_times` readings."""
    total = max(after[2] - before[2], 1)
    return {
        "system_cpu_busy": round((after[0] - before[0]) / total, 3),
        "system_cpu_steal": round((after[1] - before[1]) / total, 3),
    }


def wait_with_rusage(proc: subprocess.Popen[Any], timeout: float) -> tuple[int, float, float]:
    """Reap ``proc`` (SIGKILL after ``timeout``); return (exit status, user CPU s, system CPU s)."""
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, usage.ru_utime, usage.ru_stime
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL)
            deadline = time.monotonic() + 10
        time.sleep(0.02)


TW_BUCKETS_SYSCTL = "net.ipv4.tcp_max_tw_buckets"


def root_tw_buckets() -> int:
    """``net.ipv4.tcp_max_tw_buckets`` of the root network namespace (the kernel's default unless changed)."""
    # Network sysctls read as the reader's namespace: enter pid 1's, in case this process is elsewhere.
    with contextlib.suppress(OSError, ValueError, subprocess.SubprocessError):
        out = subprocess.run(
            ["nsenter", "-t", "1", "-n", "sysctl", "-n", TW_BUCKETS_SYSCTL],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout
        return int(out)
    return int(Path("/proc/sys/net/ipv4/tcp_max_tw_buckets").read_text())


@contextlib.contextmanager
def private_netns(name: str, tw_buckets: int = 0) -> Iterator[str]:
    """A fresh network namespace with lo up and ``tcp_max_tw_buckets`` set (default 0: TIME_WAIT off).

    ``tw_buckets`` is set explicitly whatever its value: a new namespace's own default
    depends on the kernel version (it may be sized from the namespace's hash table).
    """
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        # See README "Why a private namespace without TIME_WAIT".
        subprocess.run(["ip", "netns", "exec", name, "sysctl", "-qw", f"{TW_BUCKETS_SYSCTL}={tw_buckets}"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


# ---------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------


def median_of(results: Sequence[dict[str, Any]], key: str) -> float | None:
    """Median of ``key`` over the results that have a number there."""
    values = [r[key] for r in results if isinstance(r.get(key), int | float) and not isinstance(r.get(key), bool)]
    return statistics.median(values) if values else None


def spread_of(results: Sequence[dict[str, Any]], key: str) -> tuple[float, float] | None:
    """(min, max) of ``key`` over the results."""
    values = [r[key] for r in results if isinstance(r.get(key), int | float) and not isinstance(r.get(key), bool)]
    return (min(values), max(values)) if values else None


def stop_generator(gen: subprocess.Popen[bytes]) -> None:
    """Kill a drain generator that is still running (releasing it first if it waits for "go")."""
    if gen.poll() is None:
        with contextlib.suppress(OSError):
            assert gen.stdin is not None
            gen.stdin.write(b"go\n")
            gen.stdin.flush()
        gen.kill()
        gen.wait()


def ndjson_events(path: Path) -> Iterator[dict[str, Any]]:
    """The events of a tracer's NDJSON output, one per line; none when it wrote no file."""
    import orjson

    if not path.exists():
        return
    with path.open("rb") as stream:
        for line in stream:
            yield orjson.loads(line)
