"""Unit tests of the benchmark's counting and summarising (no root, no timing).

Run with ``.venv/bin/pytest bench/test_bench.py``. Performance itself is
measured by run_bench.py, never asserted here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
from _churn import bpftrace_tracer, count_jalki, tcplife_tracer
from _common import Tools
from run_bench import _split_churn_case, churn_case_name, summarise

PORT = 40000
PID = 4242


def _tools() -> Tools:
    return Tools(
        churn=Path("churn"),
        syscall_gen=Path("gen"),
        drain_obj=None,
        drain_error="n/a",
        tcplife="/usr/sbin/tcplife",
        bpftrace="/usr/bin/bpftrace",
        jalki=["jalki"],
    )


def _event(kind: str, sport: int, dport: int, pid: int | None = PID, outcome: str | None = None) -> bytes:
    event = {
        "type": kind,
        "network_data": {"src_port": sport, "dst_port": dport},
        "process_data": {"pid": pid},
    }
    if outcome:
        event["outcome"] = outcome
    return orjson.dumps(event) + b"\n"


def test_count_jalki_counts_both_close_sides_and_losses(tmp_path: Path) -> None:
    events = tmp_path / "e.ndjson"
    summary = tmp_path / "s.json"
    lines = [
        _event("kernel.tcp.connect", 50001, PORT, outcome="success"),
        _event("kernel.tcp.connect", 50002, PORT, outcome="success"),
        _event("kernel.tcp.close", 50001, PORT),
        _event("kernel.tcp.close", PORT, 50001),
        _event("kernel.tcp.close", 50002, PORT, pid=None),  # owner unknown
        _event("kernel.tcp.connect", 50003, 22, outcome="success"),  # not churn's
    ]
    events.write_bytes(b"".join(lines))
    summary.write_text(
        json.dumps(
            {
                "probes": [
                    {
                        "probe": "tcp_connect",
                        "attach": "tp_btf",
                        "drops": {"ringbuf_full": 3, "sampled": 0},
                        "run_time_ns": 1000,
                        "run_count": 10,
                    },
                    {
                        "probe": "tcp_close",
                        "attach": "tp_btf",
                        "drops": {"ringbuf_full": 1},
                        "run_time_ns": 0,
                        "run_count": 0,
                    },
                ],
                "emitters": {"file": {"events_dropped": 2, "errors": 0}},
            }
        )
    )
    result = count_jalki(events, summary, PORT, connections=2, client_pid=PID)
    assert result["connect_events"] == 2
    assert result["close_events_client"] == 2
    assert result["close_events_server"] == 1
    assert result["lost_connect"] == 0
    assert result["lost_close"] == 1
    assert result["lost_events"] == 1
    assert result["other_events"] == 1
    assert result["wrong_owner_events"] == 1
    assert result["kernel_drops"] == {"ringbuf_full": 4, "sampled": 0}
    assert result["drops_total"] == 4
    assert result["emitter_events_dropped"] == 2
    assert result["bpf_ns_per_run"] == 100.0


def test_count_jalki_without_output_reports_everything_lost(tmp_path: Path) -> None:
    result = count_jalki(tmp_path / "missing", tmp_path / "missing.json", PORT, connections=5, client_pid=PID)
    assert result["lost_events"] == 15
    assert result["summary_missing"] is True


def test_tcplife_counter_uses_columns_from_the_right(tmp_path: Path) -> None:
    tracer = tcplife_tracer(_tools(), tmp_path, "t")
    assert tracer.stdout is not None
    tracer.stdout.write_text(
        "PID     COMM             LADDR           LPORT RADDR           RPORT TX_KB  RX_KB  MS\n"
        f"{PID}   churn            127.0.0.1       55186 127.0.0.1       {PORT} 0.06   0.00   0.12\n"
        f"{PID}   my comm          127.0.0.1       {PORT} 127.0.0.1       55186 0.00   0.06   0.99\n"
        "1       other            127.0.0.1       1234  127.0.0.1       22    0.00   0.00   0.10\n"
    )
    result = tracer.count(PORT, 2, PID)
    assert (result["close_events_client"], result["close_events_server"]) == (1, 1)
    assert result["lost_events"] == 2


def test_bpftrace_counter_skips_listener_and_reads_lost_lines(tmp_path: Path) -> None:
    tracer = bpftrace_tracer(_tools(), tmp_path, "b")
    out = tracer.files[0]
    out.write_text(
        "Attaching 2 probes...\n"
        f"{PID} churn 7 2 0 {PORT}\n"
        f"{PID} churn 5 7 50001 {PORT}\n"
        f"{PID} churn 9 7 {PORT} 50001\n"
        f"{PID} churn 10 7 {PORT} 0\n"
        "Lost 7 events\n"
    )
    result = tracer.count(PORT, 1, PID)
    assert result["received_events"] == 3
    assert result["lost_events"] == 0
    assert result["lost_reported_by_bpftrace"] == 7


def test_case_names_round_trip() -> None:
    for tracer in ("bare", "jalki"):
        for mode in ("pinned", "unpinned"):
            assert _split_churn_case(churn_case_name(tracer, mode)) == (tracer, mode)


def test_summarise_ratios_against_the_bare_run_of_the_same_mode() -> None:
    results: list[dict[str, Any]] = [
        {"case": "churn_bare", "rate": 100.0},
        {"case": "churn_bare", "rate": 120.0},
        {"case": "churn_jalki", "rate": 55.0, "lost_events": 0, "drops_total": 0},
        {"case": "churn_bare_unpinned", "rate": 200.0},
        {"case": "churn_jalki_unpinned", "rate": 50.0, "lost_events": 1, "drops_total": 0},
        {"case": "churn_jalki_unpinned", "error": "boom"},
        {"case": "drain_decode", "produced": 10, "received": 10, "lossless": True},
    ]
    summary = summarise(results)
    assert summary["churn_bare"]["rate"] == 110.0
    assert summary["churn_jalki"]["ratio_to_bare"] == 0.5
    assert summary["churn_jalki"]["lossless_runs"] == 1
    assert summary["churn_jalki_unpinned"]["ratio_to_bare"] == 0.25
    assert summary["churn_jalki_unpinned"]["lossless_runs"] == 0
    assert summary["churn_jalki_unpinned"]["errors"] == ["boom"]
    assert summary["drain_decode"]["lossless_runs"] == 1
