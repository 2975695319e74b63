"""Daemon benchmarks: overhead on the churn benchmark with 0, 1 and 10 subscribers, and RSS under load.

Needs root (like the kernel tests: skipped without it). Run::

    .venv/bin/python -m pytest -q -s bench/test_bench_daemon.py                   # CI: ~95 s
    JALKI_BENCH_ROUNDS=3 JALKI_BENCH_CHURN_SECONDS=5 .venv/bin/python -m pytest -q -s bench/test_bench_daemon.py
    JALKI_BENCH_LONG=1 .venv/bin/python -m pytest -q -s bench/test_bench_daemon.py -k long   # + 10 min RSS

- ``test_daemon_churn_overhead``: the churn harness of ``_churn.py`` (pinned
  mode) with the cases bare, jalki (``run``), daemon with 0, 1 and 10
  subscribers, tcplife and bpftrace in interleaved rounds; ratios vs bare are
  taken in the same run. Writes ``bench/results/daemon_churn.json``. Nothing
  about speed is asserted; every case must run, and the daemon's cases must
  account for every churn event (lost == 0 or counted as a drop).
- ``test_daemon_rss_short``: 60 s of churn bursts (4,000 connections every
  2 s, one subscriber), RSS and the history's size on disk sampled every 5 s;
  printed and written to ``bench/results/daemon_rss_short.json``. Asserts the
  history stayed within its bound (256 MiB, reached after ~45 s) and every
  RSS sample under :data:`RSS_SHORT_BOUND_MIB`, a regression bound (190 MiB
  before the rings and queues held encoded events), not the target, less the ring
  buffers' growth since (:data:`RINGS_WHEN_BOUNDS_SET_MIB`).
- ``test_daemon_rss_long``: opt-in (``JALKI_BENCH_LONG=1``): the same for 10
  minutes; asserts the target, an RSS under 80 MiB that stays flat (not met
  yet: see bench/README.md).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _churn import run_churn_case
from _common import BENCH_DIR, QuietWaiter, Tools, build_tools
from _daemon import SUBSCRIBER_COUNTS, measure_rss, register_tracers
from run_bench import _cpus, churn_case_name, summarise

ROUNDS = int(os.environ.get("JALKI_BENCH_ROUNDS", "1"))
CHURN_SECONDS = float(os.environ.get("JALKI_BENCH_CHURN_SECONDS", "2"))
LONG = os.environ.get("JALKI_BENCH_LONG") == "1"
RSS_TARGET_MIB = 80.0
RSS_SHORT_BOUND_MIB = 100.0
"""Every RSS sample of the 60 s run stays under this (measured: 72-81 MiB, peak 90; 190 MiB before)."""
RINGS_WHEN_BOUNDS_SET_MIB = 10.0
"""Resident ring buffers when the two bounds above were set: five 1 MiB rings, each counted twice (the
kernel maps a ring's data pages twice in a row, all resident from mmap on). jalki-tcp's rings are now sized
for a busy node (12 MiB, 24 MiB resident, fixed at attach and shown in ``status``): the bounds hold the
daemon's own memory, i.e. RSS less the ring mappings beyond those 10 MiB (:func:`own_rss_max_mib`)."""
HISTORY_MAX_BYTES = 256 << 20
"""The daemon's default ``--history-max-mb``."""
RESULTS = BENCH_DIR / "results"

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the daemon benchmarks need root"),
]


@pytest.fixture(scope="module")
def tools() -> Iterator[Tools]:
    with tempfile.TemporaryDirectory(prefix="jalki-bench-daemon-") as tmp:
        yield build_tools(Path(tmp))


def _save(name: str, data: dict[str, Any]) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / name).write_text(json.dumps(data, indent=2))


def churn_tracers(tools: Tools) -> list[str]:
    """The churn cases of this benchmark: bare, the peers found on this machine, jalki run, the daemon."""
    tracers = ["bare", "jalki", *SUBSCRIBER_COUNTS]
    if tools.tcplife is not None:
        tracers.append("tcplife")
    if tools.bpftrace is not None:
        tracers.append("bpftrace")
    return tracers


def print_churn(summary: dict[str, dict[str, Any]], tracers: list[str], rounds: int) -> None:
    print(f"\nchurn (pinned), {CHURN_SECONDS:g} s per case, medians of {rounds} round(s)")
    header = (f"{'case':<22}{'conn/s':>9}{'vs bare':>9}{'churn µs/c':>11}{'tracer µs/c':>12}{'daemon µs/c':>12}"
              f"{'subs µs/c':>10}{'lost':>6}{'drops':>7}{'sub lost':>9}{'RSS MiB':>8}")
    print(header)
    print("-" * len(header))
    for tracer in tracers:
        case = churn_case_name(tracer, "pinned")
        entry = summary.get(case)
        if entry is None:
            continue
        extra = entry.get("_extra", {})

        def fmt(value: Any, digits: int = 0) -> str:
            return "-" if value is None else f"{value:,.{digits}f}"

        print(f"{case:<22}{fmt(entry.get('rate')):>9}{fmt(entry.get('ratio_to_bare'), 3):>9}"
              f"{fmt(entry.get('churn_cpu_us_per_conn'), 1):>11}{fmt(entry.get('tracer_cpu_us_per_conn'), 1):>12}"
              f"{fmt(extra.get('daemon_us_per_conn'), 1):>12}{fmt(extra.get('subscriber_us_per_conn'), 1):>10}"
              f"{fmt(entry.get('lost_events')):>6}{fmt(entry.get('drops_total')):>7}"
              f"{fmt(extra.get('subscriber_lost_max')):>9}{fmt(extra.get('rss_mib'), 1):>8}")
        for error in entry["errors"]:
            print(f"    error: {error}")


def _extras(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of the daemon's own figures (its CPU apart from the subscribers', subscriber losses, RSS)."""
    import statistics

    def median(values: list[float]) -> float | None:
        return statistics.median(values) if values else None

    ok = [r for r in runs if "error" not in r and r.get("connections")]
    return {
        "daemon_us_per_conn": median([r["daemon_cpu_s"] / r["connections"] * 1e6 for r in ok if "daemon_cpu_s" in r]),
        "subscriber_us_per_conn": median([r["subscriber_cpu_s"] / r["connections"] * 1e6 for r in ok
                                          if r.get("subscribers")]),
        "subscriber_lost_max": median([r["subscriber_lost_max"] for r in ok if "subscriber_lost_max" in r]),
        "rss_mib": median([r["daemon_rss_kib"] / 1024 for r in ok if r.get("daemon_rss_kib")]),
    }


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temporary directory with a short path (bpftrace's ready-file command must fit in 64 bytes)."""
    with tempfile.TemporaryDirectory(prefix="jbd-", dir="/tmp") as tmp:
        yield Path(tmp)


def test_daemon_churn_overhead(tools: Tools, short_tmp: Path) -> None:
    register_tracers()
    load_cpu, _ = _cpus()
    tracers = churn_tracers(tools)
    quiet = QuietWaiter(2.0, 30.0)
    results: list[dict[str, Any]] = []
    started = time.monotonic()
    for round_index in range(ROUNDS):
        order = tracers[round_index % len(tracers):] + tracers[:round_index % len(tracers)]
        for tracer in order:
            case = churn_case_name(tracer, "pinned")
            waited, _ = quiet.wait()
            result = run_churn_case(tools, short_tmp, case, None if tracer == "bare" else tracer, CHURN_SECONDS,
                                    f"{tracer}-{round_index}", load_cpu)
            # the daemon's own programs are held by the host's child, not the host: they are not foreign
            own = set(result.pop("daemon_prog_ids", []))
            result["foreign_bpf_programs"] = [p for p in result.get("foreign_bpf_programs", [])
                                              if int(p.split(":")[0]) not in own]
            result["round"], result["quiet_wait_s"] = round_index, waited
            results.append(result)
            print(f"  round {round_index} {case}: {result.get('rate')} conn/s {result.get('error', '')}",
                  file=sys.stderr)
    summary = summarise(results)
    for tracer in SUBSCRIBER_COUNTS:
        case = churn_case_name(tracer, "pinned")
        summary[case]["_extra"] = _extras([r for r in results if r["case"] == case])
    print_churn(summary, tracers, ROUNDS)
    _save("daemon_churn.json", {"config": {"rounds": ROUNDS, "churn_seconds": CHURN_SECONDS, "mode": "pinned",
                                           "wall_s": round(time.monotonic() - started, 1)},
                                "summary": summary, "runs": results})
    for case, entry in summary.items():
        assert not entry["errors"], (case, entry["errors"])
    for result in results:
        if result["case"].startswith("churn_daemon"):
            assert result["daemon_exit"] == 0, result
            # every churn event reached the daemon's file, or its loss was counted as a drop
            assert result["lost_events"] <= result["drops_total"] + result["emitter_events_dropped"], result


def _rss_report(name: str, result: dict[str, Any]) -> None:
    print(f"\n{name}: {result['seconds']:g} s, {result['connections_per_s']:,.0f} conn/s in bursts, "
          f"{result['subscribers']} subscriber(s), {result['events_emitted']:,} events; RSS first "
          f"{result['rss_first_mib']} MiB, last {result['rss_last_mib']} MiB, max {result['rss_max_mib']} MiB, "
          f"growth after the first quarter {result['rss_growth_after_first_quarter_mib']} MiB")
    print("  samples (s: MiB): " + ", ".join(f"{s['t_s']:g}: {s['rss_kib'] / 1024:.1f}" for s in result["samples"]))
    print(f"  peak (VmHWM) {result['rss_peak_mib']} MiB; at the end (KiB): {result['rss_breakdown_kib']}; "
          f"history: largest {result['history_bytes_max'] / 2**20:.1f} MiB on disk, {result['history_written']:,} "
          f"written, {result['history_dropped']:,} dropped, {result['history_pruned']:,} pruned; kernel drops "
          f"{result['drops']}; subscriber dropped {result['subscriber_dropped']}")


def test_daemon_rss_short(tools: Tools, tmp_path: Path) -> None:
    result = measure_rss(tools, tmp_path, seconds=60, interval=5)
    _rss_report("daemon RSS, short", result)
    _save("daemon_rss_short.json", result)
    assert result["daemon_exit"] == 0
    assert result["events_emitted"] > 0
    assert result["history_bytes_max"] <= HISTORY_MAX_BYTES, result
    # a bound on what was sampled (a regression guard); the 80 MiB target is checked by the long run
    assert own_rss_max_mib(result) < RSS_SHORT_BOUND_MIB, result


def own_rss_max_mib(result: dict[str, Any]) -> float:
    """The largest RSS sample less the ring mappings beyond :data:`RINGS_WHEN_BOUNDS_SET_MIB` (constant from
    attach on, so the breakdown at the end holds for every sample)."""
    rings_mib = result["rss_breakdown_kib"]["bpf_maps"] / 1024
    return float(result["rss_max_mib"]) - max(0.0, rings_mib - RINGS_WHEN_BOUNDS_SET_MIB)


@pytest.mark.skipif(not LONG, reason="10 minutes: opt in with JALKI_BENCH_LONG=1")
def test_daemon_rss_long(tools: Tools, tmp_path: Path) -> None:
    result = measure_rss(tools, tmp_path, seconds=600, interval=5)
    _rss_report("daemon RSS, 10 minutes", result)
    _save("daemon_rss_long.json", result)
    assert result["daemon_exit"] == 0
    assert result["history_bytes_max"] <= HISTORY_MAX_BYTES, result
    assert own_rss_max_mib(result) < RSS_TARGET_MIB, result
    # flat: the last quarter's largest sample is not above the second quarter's
    assert result["rss_max_last_quarter_mib"] - result["rss_max_second_quarter_mib"] < 10, result
