"""jalki's benchmarks: connection churn under tracers, and ring-buffer drain speed.

Run as root from the repository root::

    .venv/bin/python bench/run_bench.py            # full run (5 rounds, about 4-6 minutes)
    .venv/bin/python bench/run_bench.py --quick    # smoke run (1 round, short cases)

Cases (see bench/README.md for what each measures):
  churn_bare, churn_jalki, churn_tcplife, churn_bpftrace (each also _unpinned)
  churn_full_bare, churn_full_jalki, churn_full_tcplife, churn_full_bpftrace
    (``--cases churn_full`` selects all four: RST churn, every jalki-tcp probe)
  drain_gen_bare, drain_decode, drain_decode_batched, drain_json, drain_session
  drain_tcp (jalki-tcp decoders + derivers + file emitter, no kernel)
  otlp_throughput, otlp_dead_receiver (only when named in --cases; bench/_otlp.py)

``--profile CASE`` records a profile of that case's first run (py-spy, else cProfile).

Rounds are interleaved (every case once per round, the order rotated each
round) so slow drifts of a shared VM hit every case alike; medians are
reported. Results go to stdout as a table and to bench/results/latest.json.
Nothing here asserts a number: targets are printed next to what was measured.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _churn import FULL_EXPECTED_PER_CONNECTION, run_churn_case
from _common import BENCH_DIR, QuietWaiter, Tools, build_tools, machine_facts, median_of, spread_of, versions
from _drain import run_drain_case
from _drain_tcp import DEFAULT_RATE, run_drain_tcp_case
from _otlp import OTLP_CASES, print_otlp, run_otlp_case
from _session_drain import run_session_case

TARGET_DECODE_PER_CORE = 1_000_000
TARGET_JSON_LINES = 300_000
TARGET_DRAIN_TCP = 250_000
TARGET_FULL_RATIO = 0.80

CHURN_TRACERS = ("bare", "jalki", "tcplife", "bpftrace")
CHURN_MODES = ("pinned", "unpinned")
FULL_MODE = "full"
"""churn_full: RST closes, root-like TIME_WAIT, unpinned, every jalki-tcp probe (its own table)."""
PROFILABLE = ("churn_full_jalki", "churn_jalki", "churn_jalki_unpinned", "drain_tcp")
DRAIN_CASES = ("gen_bare", "decode", "decode_batched", "json", "session")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="1 round, 2 s cases (smoke run, < 90 s)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 5, quick 1)")
    parser.add_argument("--churn-seconds", type=float, help="churn duration per case (default 5, quick 2)")
    parser.add_argument("--drain-seconds", type=float, help="generator duration per drain case (default 4, quick 2)")
    parser.add_argument("--ring-mib", type=int, default=1, help="drain ring size in MiB (default 1 = jalki's default)")
    parser.add_argument("--cases", help="comma-separated subset, e.g. churn_bare,churn_jalki,drain_decode")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        help="per case, wait up to N s for other people's tracing BPF programs to go away (default 10, quick 2)",
    )
    parser.add_argument(
        "--churn-modes",
        default="pinned,unpinned",
        help="pinned (churn on one CPU, the tracer's user space free to use the other), unpinned, or both (default)",
    )
    parser.add_argument("--output", type=Path, default=BENCH_DIR / "results" / "latest.json")
    parser.add_argument("--keep-files", action="store_true", help="keep the tracers' output files in the temp dir")
    parser.add_argument("--report", type=Path, help="only re-print the tables of a saved results JSON")
    parser.add_argument(
        "--profile",
        help=f"profile the first run of these cases ({', '.join(PROFILABLE)}; churn_full = churn_full_jalki): "
        "py-spy (all threads) when installed, else cProfile (drain_tcp only, its drain thread)",
    )
    parser.add_argument("--profile-dir", type=Path, default=BENCH_DIR / "results" / "profile")
    parser.add_argument(
        "--drain-tcp-rate",
        type=int,
        default=DEFAULT_RATE,
        help=f"drain_tcp: connections/s the synthetic records are stamped at (default {DEFAULT_RATE:,})",
    )
    parser.add_argument("--otlp-dead-seconds", type=float, help="otlp_dead_receiver: seconds (default 300, quick 60)")
    parser.add_argument("--otlp-connections", type=int, help="otlp_throughput: drain_tcp connections whose events "
                        "are sent, ~5 events each (default 20,000, quick 5,000)")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 5)
    args.otlp_dead_seconds = args.otlp_dead_seconds or (60.0 if args.quick else 300.0)
    args.otlp_connections = args.otlp_connections or (5_000 if args.quick else 20_000)
    args.churn_seconds = args.churn_seconds or (2.0 if args.quick else 5.0)
    args.drain_seconds = args.drain_seconds or (2.0 if args.quick else 4.0)
    args.quiet_wait = args.quiet_wait if args.quiet_wait is not None else (2.0 if args.quick else 10.0)
    args.profile = _profile_cases(args.profile)
    return args


def _profile_cases(text: str | None) -> set[str]:
    cases = {"churn_full_jalki" if c == "churn_full" else c for c in (text or "").split(",") if c}
    unknown = cases - set(PROFILABLE)
    if unknown:
        raise SystemExit(f"bench: cannot profile {sorted(unknown)}; choose from {', '.join(PROFILABLE)}")
    return cases


def _selected_cases(args: argparse.Namespace, tools: Tools) -> tuple[list[str], list[str], list[str]]:
    wanted = set(args.cases.split(",")) if args.cases else None
    if wanted is not None and "churn_full" in wanted:  # the family: bare, jalki and the peers
        wanted |= {churn_case_name(t, FULL_MODE) for t in CHURN_TRACERS}
    modes = [m for m in args.churn_modes.split(",") if m]
    unknown = set(modes) - set(CHURN_MODES)
    if unknown:
        raise SystemExit(f"bench: unknown churn mode(s) {sorted(unknown)}; choose from {CHURN_MODES}")
    skipped: list[str] = []
    churn = []
    for mode in (*CHURN_MODES, FULL_MODE):
        if mode not in modes and mode != FULL_MODE:
            continue
        for name in CHURN_TRACERS:
            case = churn_case_name(name, mode)
            if wanted is not None and case not in wanted:
                continue
            if name == "tcplife" and tools.tcplife is None:
                skipped.append(f"{case} (tcplife not found; apt install libbpf-tools)")
                continue
            if name == "bpftrace" and tools.bpftrace is None:
                skipped.append(f"{case} (bpftrace not found)")
                continue
            churn.append(case)
    drain = []
    for name in (*DRAIN_CASES, "tcp"):
        if wanted is not None and f"drain_{name}" not in wanted:
            continue
        if name not in ("gen_bare", "tcp") and tools.drain_obj is None:
            skipped.append(f"drain_{name} ({tools.drain_error})")
            continue
        drain.append(name)
    return churn, drain, skipped


def churn_case_name(tracer: str, mode: str) -> str:
    """``churn_<tracer>`` when pinned, ``churn_<tracer>_unpinned``, or ``churn_full_<tracer>``."""
    if mode == FULL_MODE:
        return f"churn_full_{tracer}"
    return f"churn_{tracer}" if mode == "pinned" else f"churn_{tracer}_{mode}"


def _split_churn_case(case: str) -> tuple[str, str]:
    """(tracer, mode) of a churn case name."""
    if case.startswith("churn_full_"):
        return case.removeprefix("churn_full_"), FULL_MODE
    name = case.removeprefix("churn_")
    for mode in CHURN_MODES[1:]:
        if name.endswith(f"_{mode}"):
            return name.removesuffix(f"_{mode}"), mode
    return name, CHURN_MODES[0]


def _rotate(items: list[str], by: int) -> list[str]:
    if not items:
        return items
    by %= len(items)
    return items[by:] + items[:by]


def _cpus() -> tuple[int | None, int | None]:
    """(load CPU, consumer CPU): the workload on the last CPU, the consumer on the first."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    return cpus[-1], cpus[0]


# ---------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------

CHURN_KEYS = (
    "rate",
    "connections",
    "churn_cpu_us_per_conn",
    "tracer_cpu_us_per_conn",
    "tracer_cpu_us_per_event",
    "lost_events",
    "drops_total",
    "emitter_events_dropped",
    "wrong_owner_events",
    "bpf_ns_per_run",
    "tracer_startup_s",
    "tracer_stop_s",
    "system_cpu_busy",
    "system_cpu_steal",
)
FULL_KEYS = (
    *CHURN_KEYS,
    "lost_connect",
    "lost_close",
    "lost_reset",
    "lost_rtt_windows",
    "drops_ringbuf_full",
    "drops_tracking_full",
    "drops_sampled",
    "drops_size_mismatch",
    "drops_decode_error",
    "unowned_server_events",
    "lost_reported_by_bpftrace",
)
DRAIN_KEYS = (
    "produce_rate",
    "received",
    "drops_total",
    "unaccounted",
    "records_per_s_wall",
    "records_per_cpu_s",
    "json_lines_per_s_wall",
    "json_lines_per_cpu_s",
    "records_per_batch",
    "consume_ns_per_record",
    "sink_ns_per_record",
    "other_ns_per_record",
    "consumer_cpu_s",
    "emitter_events_dropped",
    "system_cpu_steal",
    "wall_s",
    "json_lines_in_file",
)


def _usable(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs medians are taken over: without error, and, when such runs exist, without a profiler
    attached and without foreign BPF programs."""
    ok = [r for r in runs if "error" not in r]
    unprofiled = [r for r in ok if "profile" not in r] or ok
    clean = [r for r in unprofiled if not r.get("foreign_bpf_programs")]
    return clean or unprofiled


def summarise(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per case: medians and (min, max) of its numbers, rounds with foreign BPF programs, errors.

    Medians skip the runs during which someone else's tracing BPF program was
    loaded, unless every run of the case had one (``median_runs`` says how many
    runs the medians are over).
    """
    by_case: dict[str, list[dict[str, Any]]] = {}
    for result in results:
        by_case.setdefault(result["case"], []).append(result)
    bare_rate = {
        mode: median_of(_usable(by_case.get(churn_case_name("bare", mode), [])), "rate")
        for mode in (*CHURN_MODES, FULL_MODE)
    }
    gen_rate = median_of(_usable(by_case.get("drain_gen_bare", [])), "produce_rate")
    summary: dict[str, dict[str, Any]] = {}
    for case, runs in by_case.items():
        ok = [r for r in runs if "error" not in r]
        usable = _usable(runs)
        keys = (FULL_KEYS if case.startswith("churn_full") else CHURN_KEYS) if case.startswith("churn") else DRAIN_KEYS
        entry: dict[str, Any] = {"runs": len(runs), "ok_runs": len(ok), "median_runs": len(usable)}
        for key in keys:
            median = median_of(usable, key)
            if median is not None:
                entry[key] = median
                entry[f"{key}_range"] = spread_of(usable, key)
        if case.startswith("churn") and entry.get("rate"):
            bare = bare_rate[_split_churn_case(case)[1]]
            if bare:
                entry["ratio_to_bare"] = round(entry["rate"] / bare, 3)
        if case.startswith("drain") and case != "drain_gen_bare" and gen_rate and entry.get("produce_rate"):
            entry["producer_ratio_to_bare"] = round(entry["produce_rate"] / gen_rate, 3)
        if "lossless" in (ok[0] if ok else {}):
            entry["lossless_runs"] = sum(1 for r in ok if r.get("lossless"))
        if case.startswith("churn") and _split_churn_case(case)[0] != "bare" and ok:
            entry["lossless_runs"] = sum(1 for r in ok if is_lossless_churn(r))
        entry["rounds_with_foreign_bpf"] = sum(1 for r in runs if r.get("foreign_bpf_programs"))
        entry["errors"] = [r["error"] for r in runs if "error" in r]
        summary[case] = entry
    return summary


def is_lossless_churn(run: dict[str, Any]) -> bool:
    """No event of any counted type lost, no RTT window missing, no drop of any cause (kernel or emitter)."""
    return (
        run.get("lost_events") == 0
        and not run.get("lost_rtt_windows")
        and not run.get("drops_total")
        and not run.get("emitter_events_dropped")
        and not run.get("lost_reported_by_bpftrace")
    )


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and digits:
        return f"{value:,.{digits}f}"
    if isinstance(value, int | float):
        return f"{value:,.0f}"
    return str(value)


def print_table(summary: dict[str, dict[str, Any]], rounds: int) -> None:
    """The human summary: one block for churn, one for drain."""
    if any(case.startswith("churn") and not case.startswith("churn_full") for case in summary):
        _print_churn(summary, rounds)
    if any(case.startswith("churn_full") for case in summary):
        _print_churn_full(summary, rounds)
    if "drain_tcp" in summary:
        _print_drain_tcp(summary["drain_tcp"], rounds)
    if any(case.startswith("drain") and case != "drain_tcp" for case in summary):
        _print_drain(summary, rounds)


def _print_churn(summary: dict[str, dict[str, Any]], rounds: int) -> None:
    print(f"\nchurn: loopback connect -> write 64 B -> close, medians of {rounds} round(s)")
    header = (
        f"{'case':<25}{'conn/s':>10}{'vs bare':>9}{'churn µs/conn':>15}{'tracer µs/conn':>16}"
        f"{'lost':>8}{'drops':>7}{'lossless':>10}{'foreign':>9}"
    )
    print(header)
    print("-" * len(header))
    for case in (churn_case_name(t, m) for m in CHURN_MODES for t in CHURN_TRACERS):
        entry = summary.get(case)
        if entry is None:
            continue
        lossless = f"{entry['lossless_runs']}/{entry['ok_runs']}" if "lossless_runs" in entry else "-"
        is_jalki = _split_churn_case(case)[0] == "jalki"
        drops = entry.get("drops_total", 0) + entry.get("emitter_events_dropped", 0) if is_jalki else None
        print(
            f"{case:<25}{_fmt(entry.get('rate')):>10}{_fmt(entry.get('ratio_to_bare'), 3):>9}"
            f"{_fmt(entry.get('churn_cpu_us_per_conn'), 1):>15}{_fmt(entry.get('tracer_cpu_us_per_conn'), 1):>16}"
            f"{_fmt(entry.get('lost_events')):>8}{_fmt(drops):>7}{lossless:>10}"
            f"{entry['rounds_with_foreign_bpf']:>9}"
        )
        for error in entry["errors"]:
            print(f"    error: {error}")


def _print_churn_full(summary: dict[str, dict[str, Any]], rounds: int) -> None:
    per_conn = sum(FULL_EXPECTED_PER_CONNECTION.values())
    print(
        f"\nchurn_full: RST churn (SO_LINGER {{1,0}}), unpinned, every jalki-tcp probe,\n"
        f"medians of {rounds} round(s); lost = expected - received per type\n"
        f"(jalki {per_conn}/conn, tcplife 2 closes, bpftrace connect + 2 closes + 2 RSTs)"
    )
    header = f"{'case':<21}{'conn/s':>9}{'vs bare':>9}{'churn µs/c':>12}{'tracer µs/c':>13}{'lossless':>10}"
    print(header)
    print("-" * len(header))
    rows = [(t, summary.get(churn_case_name(t, FULL_MODE))) for t in CHURN_TRACERS]
    for tracer, entry in rows:
        if entry is None:
            continue
        lossless = f"{entry['lossless_runs']}/{entry['ok_runs']}" if "lossless_runs" in entry else "-"
        print(
            f"{churn_case_name(tracer, FULL_MODE):<21}{_fmt(entry.get('rate')):>9}"
            f"{_fmt(entry.get('ratio_to_bare'), 3):>9}{_fmt(entry.get('churn_cpu_us_per_conn'), 1):>12}"
            f"{_fmt(entry.get('tracer_cpu_us_per_conn'), 1):>13}{lossless:>10}"
        )
        for error in entry["errors"]:
            print(f"    error: {error}")
    header = (
        f"{'lost / drops':<21}{'connect':>8}{'close':>8}{'reset':>8}{'rtt win':>8}"
        f"{'ringbuf':>9}{'tracking':>9}{'other':>7}"
    )
    print(header)
    print("-" * len(header))
    for tracer, entry in rows:
        if entry is None or tracer == "bare":
            continue
        close = entry.get("lost_close", entry.get("lost_events") if tracer == "tcplife" else None)
        other_drops = None
        if tracer == "jalki":
            other_drops = sum(entry.get(f"drops_{c}", 0) for c in ("sampled", "size_mismatch", "decode_error"))
            other_drops += entry.get("emitter_events_dropped", 0)
        elif tracer == "bpftrace":
            other_drops = entry.get("lost_reported_by_bpftrace")
        print(
            f"{churn_case_name(tracer, FULL_MODE):<21}{_fmt(entry.get('lost_connect')):>8}{_fmt(close):>8}"
            f"{_fmt(entry.get('lost_reset')):>8}{_fmt(entry.get('lost_rtt_windows')):>8}"
            f"{_fmt(entry.get('drops_ringbuf_full')):>9}{_fmt(entry.get('drops_tracking_full')):>9}"
            f"{_fmt(other_drops):>7}"
        )
    jalki = summary.get(churn_case_name("jalki", FULL_MODE), {})
    tcplife = summary.get(churn_case_name("tcplife", FULL_MODE), {})
    if jalki:
        ratio, peer = jalki.get("ratio_to_bare"), tcplife.get("ratio_to_bare")
        print("targets (reported, not asserted):")
        print(f"  lossless in every round: {jalki.get('lossless_runs', 0)}/{jalki.get('ok_runs', 0)}")
        if ratio is not None:
            verdict = "met" if ratio >= TARGET_FULL_RATIO and (peer is None or ratio > peer) else "MISSED"
            print(f"  vs bare >= {TARGET_FULL_RATIO} and above tcplife ({_fmt(peer, 3)}): {ratio:.3f} ({verdict})")


def _print_drain_tcp(entry: dict[str, Any], rounds: int) -> None:
    print(f"\ndrain_tcp: churn_full's records -> jalki-tcp decode/derive -> file, medians of {rounds} round(s)")
    header = f"{'records':>10}{'lines':>10}{'per cpu-s':>11}{'wall/s':>10}{'cpu s':>8}{'drops':>7}{'lossless':>10}"
    print(header)
    print("-" * len(header))
    lossless = f"{entry['lossless_runs']}/{entry['ok_runs']}" if "lossless_runs" in entry else "-"
    print(
        f"{_fmt(entry.get('received')):>10}{_fmt(entry.get('json_lines_in_file')):>10}"
        f"{_fmt(entry.get('json_lines_per_cpu_s')):>11}{_fmt(entry.get('json_lines_per_s_wall')):>10}"
        f"{_fmt(entry.get('consumer_cpu_s'), 2):>8}{_fmt(entry.get('drops_total')):>7}{lossless:>10}"
    )
    for error in entry["errors"]:
        print(f"    error: {error}")
    per_cpu = entry.get("json_lines_per_cpu_s")
    if per_cpu is not None:
        verdict = "met" if per_cpu >= TARGET_DRAIN_TCP else "MISSED"
        print(f"target: >= {TARGET_DRAIN_TCP:,} events/s per consumer core: {per_cpu:,.0f} ({verdict})")


def _print_drain(summary: dict[str, dict[str, Any]], rounds: int) -> None:
    print(f"\ndrain: getppid() generator -> 40-byte records -> consumer, medians of {rounds} round(s)")
    header = (
        f"{'case':<22}{'produced/s':>12}{'received/s':>12}{'per cpu-s':>12}{'drops':>12}"
        f"{'unacc.':>8}{'lossless':>10}{'rec/batch':>10}{'foreign':>9}"
    )
    print(header)
    print("-" * len(header))
    for case in (f"drain_{c}" for c in DRAIN_CASES):
        entry = summary.get(case)
        if entry is None:
            continue
        writes_json = case in ("drain_json", "drain_session")
        per_cpu = entry.get("json_lines_per_cpu_s") if writes_json else entry.get("records_per_cpu_s")
        wall = entry.get("json_lines_per_s_wall") if writes_json else entry.get("records_per_s_wall")
        lossless = f"{entry['lossless_runs']}/{entry['ok_runs']}" if "lossless_runs" in entry else "-"
        print(
            f"{case:<22}{_fmt(entry.get('produce_rate')):>12}{_fmt(wall):>12}{_fmt(per_cpu):>12}"
            f"{_fmt(entry.get('drops_total')):>12}{_fmt(entry.get('unaccounted')):>8}{lossless:>10}"
            f"{_fmt(entry.get('records_per_batch')):>10}{entry['rounds_with_foreign_bpf']:>9}"
        )
        for error in entry["errors"]:
            print(f"    error: {error}")
    batched = summary.get("drain_decode_batched", {}).get("records_per_cpu_s")
    decode = summary.get("drain_decode", {}).get("records_per_cpu_s")
    lines = summary.get("drain_json", {}).get("json_lines_per_cpu_s")
    session_lines = summary.get("drain_session", {}).get("json_lines_per_cpu_s")
    print("\ntargets (reported, not asserted):")
    if decode is not None:
        verdict = "met" if decode >= TARGET_DECODE_PER_CORE else "MISSED"
        print(f"  decode >= {TARGET_DECODE_PER_CORE:,} records/s per consumer core: {decode:,.0f} ({verdict})")
    if batched is not None:
        verdict = "met" if batched >= TARGET_DECODE_PER_CORE else "MISSED"
        print(f"    (drained every 2 ms instead of per wake-up: {batched:,.0f} ({verdict}))")
    if lines is not None:
        verdict = "met" if lines >= TARGET_JSON_LINES else "MISSED"
        print(f"  JSON   >= {TARGET_JSON_LINES:,} lines/s per consumer core:   {lines:,.0f} ({verdict})")
    if session_lines is not None:
        verdict = "met" if session_lines >= TARGET_JSON_LINES else "MISSED"
        print(f"    (through jalki's TraceSession + FileEmitter: {session_lines:,.0f} ({verdict}))")
    print(
        "  'foreign' = rounds during which someone else's tracing BPF program was loaded (noise);"
        " medians leave them out when the case has clean rounds."
    )


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Build, run every case in interleaved rounds, print and save the results."""
    args = _parse_args(argv)
    if args.report is not None:
        saved = json.loads(args.report.read_text())
        print_table(summarise(saved["runs"]), saved["config"]["rounds"])
        print_otlp(saved["runs"])
        return 0
    if os.geteuid() != 0:
        print("bench: run as root (BPF programs, network namespaces)", file=sys.stderr)
        return 2
    started = time.monotonic()
    load_cpu, consumer_cpu = _cpus()
    quiet = QuietWaiter(args.quiet_wait, 12 * args.quiet_wait)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="jalki-bench-") as tmp_name:
        tmp = Path(tmp_name)
        tools = build_tools(tmp)
        churn_cases, drain_cases, skipped = _selected_cases(args, tools)
        otlp_cases = [c for c in OTLP_CASES if args.cases and c in args.cases.split(",")]
        for reason in skipped:
            print(f"bench: skipping {reason}", file=sys.stderr)
        print(
            f"bench: {args.rounds} round(s); churn {args.churn_seconds:g}s, drain {args.drain_seconds:g}s per case; "
            f"load CPU {load_cpu}, consumer CPU {consumer_cpu}; temp dir {tmp}",
            file=sys.stderr,
        )
        for round_index in range(args.rounds):
            plan = [("churn", c) for c in _rotate(churn_cases, round_index)]
            plan += [("drain", d) for d in _rotate(list(drain_cases), round_index)]
            # the dead-receiver case runs once (minutes long), the throughput case every round
            plan += [("otlp", c) for c in otlp_cases if round_index == 0 or c == "otlp_throughput"]
            profiled = args.profile if round_index == 0 else set()
            for kind, name in plan:
                tag = f"r{round_index}-{name}"
                waited, _ = quiet.wait()
                case_started = time.monotonic()
                try:
                    if kind == "otlp":
                        result = run_otlp_case(name, tools, tmp, args, load_cpu, consumer_cpu)
                    elif kind == "churn":
                        tracer, mode = _split_churn_case(name)
                        result = run_churn_case(
                            tools,
                            tmp,
                            name,
                            None if tracer == "bare" else tracer,
                            args.churn_seconds,
                            tag,
                            load_cpu if mode == "pinned" else None,
                            keep_files=args.keep_files,
                            full=mode == FULL_MODE,
                            profile_dir=args.profile_dir if name in profiled else None,
                        )
                    elif name == "tcp":
                        result = _run_drain_tcp(args, tmp, tag, "drain_tcp" in profiled)
                    elif name == "session":
                        result = run_session_case(tools, tmp, args.drain_seconds, tag, load_cpu, consumer_cpu)
                    else:
                        result = run_drain_case(
                            tools, tmp, name, args.drain_seconds, tag, load_cpu, consumer_cpu, args.ring_mib << 20
                        )
                except Exception as exc:  # one broken case must not hide the others
                    case = name if kind in ("churn", "otlp") else f"drain_{name}"
                    result = {"case": case, "error": f"{type(exc).__name__}: {exc}"}
                result.update(
                    round=round_index, quiet_wait_s=waited, case_wall_s=round(time.monotonic() - case_started, 2)
                )
                results.append(result)
                _progress(result)
        summary = summarise(results)
        print_table(summary, args.rounds)
        print_otlp(results)
        total = round(time.monotonic() - started, 1)
        report = {
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "mode": "quick" if args.quick else "full",
            "machine": machine_facts(),
            "versions": versions(tools),
            "config": {
                "rounds": args.rounds,
                "churn_seconds": args.churn_seconds,
                "drain_seconds": args.drain_seconds,
                "churn_payload_bytes": 64,
                "drain_ring_bytes": args.ring_mib << 20,
                "churn_modes": args.churn_modes,
                "drain_tcp_rate": args.drain_tcp_rate,
                "otlp_dead_seconds": args.otlp_dead_seconds,
                "otlp_connections": args.otlp_connections,
                "profiled": sorted(args.profile),
                "load_cpu": load_cpu,
                "consumer_cpu": consumer_cpu,
                "skipped": skipped,
            },
            "targets": {
                "decode_records_per_cpu_s": TARGET_DECODE_PER_CORE,
                "json_lines_per_cpu_s": TARGET_JSON_LINES,
                "drain_tcp_events_per_cpu_s": TARGET_DRAIN_TCP,
                "churn_full_ratio_to_bare": TARGET_FULL_RATIO,
            },
            "medians": summary,
            "runs": results,
            "total_wall_s": total,
        }
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nbench: wrote {args.output} ({total} s in all)")
    return 0


def _run_drain_tcp(args: argparse.Namespace, tmp: Path, tag: str, profile: bool) -> dict[str, Any]:
    """drain_tcp, its replay profiled when asked (the profiler's own cost is in that run's numbers)."""
    result = run_drain_tcp_case(
        tmp,
        args.drain_seconds,
        tag,
        args.drain_tcp_rate,
        keep_files=args.keep_files,
        profile_dir=args.profile_dir if profile else None,
    )
    info = result.get("profile")
    if info:
        print(f"bench: drain_tcp profile ({info['tool']}): {info['path']}\n{info.pop('top')}", file=sys.stderr)
    return result


def _progress(result: dict[str, Any]) -> None:
    if "error" in result:
        line = f"error: {result['error']}"
    elif result["case"].startswith("churn"):
        line = f"{result['rate']:,.0f} conn/s"
        if "lost_events" in result:
            line += f", lost {result['lost_events']}, drops {result.get('drops_total', '-')}"
        if "lost_by_kind" in result:
            line += f" (lost {result['lost_by_kind']}, rtt windows {result.get('lost_rtt_windows')})"
    elif result["case"] == "otlp_throughput":
        line = f"{result['received']:,} of {result['produced']:,} events, {result['events_per_cpu_s']:,.0f}/cpu-s"
    elif result["case"] == "otlp_dead_receiver":
        line = f"RSS {result.get('rss_first_mib')}-{result.get('rss_max_mib')} MiB, drops {result['dropped_by_reason']}"
    elif result["case"] == "drain_tcp":
        line = f"{result['json_lines_in_file']:,} events, {result['json_lines_per_cpu_s']:,.0f} events/cpu-s"
    elif "records_per_cpu_s" in result:
        line = (
            f"produced {result['produced']:,}, received {result['received']:,}, drops {result['drops_total']:,}, "
            f"{result['records_per_cpu_s']:,.0f} rec/cpu-s"
        )
    else:
        line = f"{result.get('produce_rate', 0):,.0f} calls/s"
    foreign = " [foreign BPF programs loaded]" if result.get("foreign_bpf_programs") else ""
    print(
        f"  round {result['round']} {result['case']:<25} {line}{foreign} ({result['case_wall_s']} s)", file=sys.stderr
    )


if __name__ == "__main__":
    sys.exit(main())
