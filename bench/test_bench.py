"""Unit tests of the benchmark's counting and summarising (no root, no timing).

Run with ``.venv/bin/pytest bench/test_bench.py``. Performance itself is
measured by run_bench.py, never asserted here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
from _churn import (
    bpftrace_tracer,
    classify_full_event,
    count_jalki,
    count_jalki_full,
    rtt_window_gaps,
    tcplife_tracer,
)
from _common import Tools
from run_bench import _split_churn_case, churn_case_name, is_lossless_churn, summarise

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


# ---------------------------------------------------------------------------
# churn_full: every event type of an SO_LINGER {1,0} churn
# ---------------------------------------------------------------------------


def _full_event(kind: str, sport: int | None, dport: int | None, pid: int | None = PID, **data: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": kind,
        "network_data": {"src_port": sport, "dst_port": dport},
        "process_data": {"pid": pid},
        "data": data,
    }
    if kind == "kernel.tcp.connect":
        event["outcome"] = "success"
    return event


def _connection_events(client_port: int, server_pid: int | None = PID) -> list[dict[str, Any]]:
    """What jalki-tcp writes for one RST-closed churn connection (as read from a real run)."""
    return [
        _full_event("kernel.tcp.connect", client_port, PORT),
        _full_event("kernel.tcp.reset", client_port, PORT, direction="sent", tcp_state="CLOSE"),
        _full_event("kernel.tcp.close", client_port, PORT, tcp_state="ESTABLISHED"),
        _full_event("kernel.tcp.reset", PORT, client_port, pid=server_pid, direction="received"),
        _full_event("kernel.tcp.close", PORT, client_port, pid=server_pid, tcp_state="ESTABLISHED"),
    ]


def _rtt(direction: str, window_start: str, samples: int) -> dict[str, Any]:
    event = _full_event(
        "kernel.tcp.rtt",
        None,
        PORT if direction == "active" else None,
        direction=direction,
        window_start=window_start,
        samples=samples,
        interval_ms=1000,
    )
    if direction == "passive":
        event["data"]["local_port"] = PORT
    return event


def test_classify_full_event_sides_and_directions() -> None:
    kinds = [classify_full_event(e, PORT) for e in _connection_events(50001)]
    assert kinds == ["connect", "reset_sent", "close_client", "reset_received", "close_server"]
    assert classify_full_event(_full_event("kernel.tcp.close", 50001, 22), PORT) is None
    # a reset received on the client side is not what an RST close makes: reported, not counted
    odd = _full_event("kernel.tcp.reset", 50001, PORT, direction="received")
    assert classify_full_event(odd, PORT) == "other:kernel.tcp.reset"
    no_socket = _full_event("kernel.tcp.reset", 50001, PORT, direction="sent", tcp_state=None)
    assert classify_full_event(no_socket, PORT) == "other:kernel.tcp.reset(no socket)"
    failed = _full_event("kernel.tcp.connect", 50001, PORT)
    failed["outcome"] = "failure"
    assert classify_full_event(failed, PORT) == "other:kernel.tcp.connect"
    assert classify_full_event(_rtt("active", "2026-12-06T22:28:50.1Z", 3), PORT) == "rtt_active"
    assert classify_full_event(_rtt("passive", "2026-12-06T22:28:50.1Z", 3), PORT) == "rtt_passive"


def test_rtt_window_gaps_counts_missing_windows_once() -> None:
    starts = [
        "2026-12-06T22:28:50.292847478Z",
        "2026-12-06T22:28:51.292847478Z",
        "2026-12-06T22:28:51.292847478Z",  # the same window twice (e.g. emitted then read at stop)
        "2026-12-06T22:28:54.292847478Z",
    ]
    assert rtt_window_gaps(starts, 1000) == (3, 2)
    assert rtt_window_gaps([], 1000) == (0, 0)
    assert rtt_window_gaps(starts[:2], 1000) == (2, 0)


def test_count_jalki_full_lost_per_type_and_drops_per_cause(tmp_path: Path) -> None:
    events = _connection_events(50001) + _connection_events(50002, server_pid=None)
    third = _connection_events(50003)
    del third[3]  # reset received lost
    del third[0]  # connect lost
    events += third
    events += [
        _rtt("active", "2026-12-06T22:28:50.2Z", 10),
        _rtt("active", "2026-12-06T22:28:52.2Z", 5),  # window :51 missing
        _rtt("passive", "2026-12-06T22:28:50.2Z", 20),
        _full_event("kernel.tcp.close", 1234, 22),  # other traffic
    ]
    path = tmp_path / "e.ndjson"
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    summary = tmp_path / "s.json"
    summary.write_text(
        json.dumps(
            {
                "probes": [
                    {"probe": "tcp_reset", "drops": {"ringbuf_full": 1, "sampled": 0}},
                    {"probe": "tcp_connect", "drops": {"ringbuf_full": 1}},
                    {"probe": "tcp_rtt", "drops": {"tracking_full": 4}},
                ],
                "emitters": {"file": {"events_dropped": 0, "errors": 0}},
            }
        )
    )
    result = count_jalki_full(path, summary, PORT, connections=3, client_pid=PID)
    assert result["lost_by_kind"] == {
        "connect": 1,
        "close_client": 0,
        "close_server": 0,
        "reset_sent": 0,
        "reset_received": 1,
    }
    assert (result["lost_connect"], result["lost_close"], result["lost_reset"]) == (1, 0, 1)
    assert result["lost_events"] == 2
    assert result["expected_events"] == 15 and result["received_events"] == 13
    assert result["unowned_server_events"] == 2
    assert result["other_events"] == 1
    assert result["rtt"]["rtt_active"] == {"events": 2, "windows": 2, "missing_windows": 1, "samples": 15}
    assert result["rtt"]["rtt_passive"]["missing_windows"] == 0
    assert result["lost_rtt_windows"] == 1
    assert result["kernel_drops"] == {"ringbuf_full": 2, "sampled": 0, "tracking_full": 4}
    assert result["drops_by_probe"] == {
        "tcp_reset": {"ringbuf_full": 1},
        "tcp_connect": {"ringbuf_full": 1},
        "tcp_rtt": {"tracking_full": 4},
    }
    assert (result["drops_ringbuf_full"], result["drops_tracking_full"]) == (2, 4)
    assert not is_lossless_churn(result)


def test_bpftrace_full_counter_counts_resets(tmp_path: Path) -> None:
    tracer = bpftrace_tracer(_tools(), tmp_path, "bf", full=True)
    tracer.files[0].write_text(
        f"{PID} churn 7 2 0 {PORT}\n"
        f"{PID} churn 1 7 50001 {PORT}\n"
        f"{PID} churn rst_received 0 {PORT} 50001\n"
        f"{PID} churn 1 7 {PORT} 50001\n"
        f"{PID} churn rst_sent 7 50001 {PORT}\n"
        f"{PID} churn rst_sent 7 1234 22\n"  # not churn's
    )
    result = tracer.count(PORT, 2, PID)
    assert (result["reset_sent_events"], result["reset_received_events"]) == (1, 1)
    assert result["expected_events"] == 10 and result["received_events"] == 5
    assert (result["lost_connect"], result["lost_close"], result["lost_reset"]) == (1, 2, 2)
    assert result["lost_events"] == 5


def test_summarise_churn_full_against_its_own_bare() -> None:
    results: list[dict[str, Any]] = [
        {"case": "churn_full_bare", "rate": 200.0},
        {"case": "churn_bare", "rate": 100.0},
        {
            "case": "churn_full_jalki",
            "rate": 150.0,
            "lost_events": 0,
            "lost_rtt_windows": 0,
            "drops_total": 0,
            "emitter_events_dropped": 0,
            "drops_ringbuf_full": 0,
        },
        {"case": "churn_full_jalki", "rate": 100.0, "lost_events": 0, "lost_rtt_windows": 1, "drops_total": 0},
    ]
    summary = summarise(results)
    assert summary["churn_full_jalki"]["ratio_to_bare"] == 0.625
    assert summary["churn_full_jalki"]["lossless_runs"] == 1  # a missing RTT window is a loss
    assert _split_churn_case("churn_full_tcplife") == ("tcplife", "full")
    assert churn_case_name("jalki", "full") == "churn_full_jalki"


# ---------------------------------------------------------------------------
# drain_tcp: the synthetic producer
# ---------------------------------------------------------------------------


def test_drain_tcp_workload_has_churn_full_proportions() -> None:
    from _drain_tcp import make_workload
    from jalki_tcp import layouts

    interval = 1_000_000_000
    workload = make_workload(250, rate=100, start_ns=5 * interval, drain_interval_s=0.5, interval_ns=interval)
    assert workload.records == {
        "tcp_connect": 250,
        "tcp_close": 500,
        "tcp_reset": 500,
        "tcp_retransmit_skb": 0,
        "tcp_rtt": 4,  # windows 5 and 6 ended (2 keys each); window 7 still open
    }
    assert len(workload.batches) == 5  # 50 connections per drain
    sizes = {"tcp_connect": layouts.CONNECT.size, "tcp_close": layouts.CLOSE.size, "tcp_reset": layouts.RESET.size}
    for probe, size in sizes.items():
        total = sum(len(batch.get(probe, b"")) for batch in workload.batches)
        assert total == workload.records[probe] * size
    resets = list(layouts.RESET.struct.iter_unpack(workload.batches[0]["tcp_reset"]))
    directions = [r[layouts.RESET.fields.index("direction")] for r in resets]
    assert directions.count(layouts.RESET_SENT) == directions.count(layouts.RESET_RECEIVED) == 50


def test_drain_tcp_replay_goes_through_the_session_to_the_file(tmp_path: Path) -> None:
    from _drain_tcp import count_lines_by_type, make_workload, replay

    workload = make_workload(300, rate=100, start_ns=10**12)
    out = tmp_path / "out.ndjson"
    replayed = replay(workload, out)
    assert replayed["records"]["tcp_connect"] == 300
    assert replayed["events"]["tcp_reset"] >= 600  # plus any rst_storm the deriver found
    by_type = count_lines_by_type(out)
    assert by_type["kernel.tcp.connect"] == 300
    assert by_type["kernel.tcp.close"] == 600
    assert by_type["kernel.tcp.reset"] == 600
    assert by_type["kernel.tcp.rtt"] == workload.records["tcp_rtt"]
    assert replayed["decode_errors"] == 0 and replayed["derive_errors"] == 0
    assert next(iter(replayed["emitters"].values()))["events_dropped"] == 0


def test_top_functions_self_and_cumulative() -> None:
    from _profile import top_by_self, top_functions

    collapsed = (
        "main (a.py:1);drain (s.py:10);decode (p.py:5) 6\n"
        "main (a.py:1);drain (s.py:11);derive (d.py:7);derive (d.py:9) 3\n"
        "main (a.py:2) 1\n"
        "garbage line\n"
    )
    rows = top_functions(collapsed, top=3)
    assert rows[0] == ("main (a.py)", 1, 10)
    assert rows[1] == ("drain (s.py)", 0, 9)
    assert rows[2] == ("decode (p.py)", 6, 6)
    assert top_by_self(collapsed, top=1) == [("decode (p.py)", 6, 6)]
    assert dict((n, c) for n, _, c in top_functions(collapsed, top=10))["derive (d.py)"] == 3  # once per stack


# ---------------------------------------------------------------------------
# OTLP cases (bench/_otlp.py)
# ---------------------------------------------------------------------------


def test_count_log_records_decodes_real_requests_plain_and_gzip() -> None:
    import gzip

    import pytest
    from _otlp import count_log_records, decoded_batches
    from google.protobuf.message import DecodeError
    from jalki_otlp.encode import export_request

    events = [e for batch in decoded_batches(20, 20_000) for e in batch.events]
    body = export_request(events).SerializeToString()
    assert len({e["type"] for e in events}) >= 3  # several scopes (one per source) in one request
    assert count_log_records(body) == len(events)
    assert count_log_records(gzip.compress(body), gzipped=True) == len(events)
    assert count_log_records(export_request([]).SerializeToString()) == 0
    with pytest.raises(DecodeError):  # the receiver answers 400
        count_log_records(b"\xff\xff\xff not protobuf")


def test_otlp_accounting() -> None:
    from _otlp import otlp_accounting

    drops = {"queue_full": 3, "retry_exhausted": 5, "rejected": 0}
    assert otlp_accounting(100, 92, drops) == {"produced": 100, "received": 92, "dropped": 8, "unaccounted": 0,
                                               "lossless": False}
    assert otlp_accounting(100, 100, {"queue_full": 0})["lossless"] is True
    lost = otlp_accounting(100, 90, {"queue_full": 0})
    assert lost["unaccounted"] == 10 and not lost["lossless"]
    duplicated = otlp_accounting(100, 101, {})  # a retried batch the receiver had taken
    assert duplicated["unaccounted"] == -1 and not duplicated["lossless"]


def test_slope_and_rss_summary() -> None:
    from _otlp import rss_summary, slope_per_minute

    assert slope_per_minute([(0, 10.0), (10, 11.0), (20, 12.0)]) == 6.0
    assert slope_per_minute([(0, 5.0), (30, 5.0)]) == 0.0
    assert slope_per_minute([(5, 1.0)]) is None
    assert slope_per_minute([(5, 1.0), (5, 2.0)]) is None
    samples = [{"t_s": t, "rss_kib": kib} for t, kib in ((0, 1024), (5, 4096), (10, 2048), (15, 2048), (20, None))]
    got = rss_summary(samples)
    assert (got["rss_first_mib"], got["rss_last_mib"], got["rss_min_mib"], got["rss_max_mib"]) == (1.0, 2.0, 1.0,
                                                                                                    4.0)
    assert got["rss_slope_second_half_mib_per_min"] == 0.0  # the last two samples (10 s and 15 s) are flat
    assert rss_summary([]) == {}


def test_sum_drops_over_probes() -> None:
    from _otlp import sum_drops

    probes = {"tcp_connect": {"drops": {"ringbuf_full": 2, "sampled": 0}},
              "tcp_close": {"drops": {"ringbuf_full": 1, "tracking_full": 4}}, "tcp_rtt": {}}
    assert sum_drops(probes) == {"ringbuf_full": 3, "sampled": 0, "tracking_full": 4}


def test_otlp_throughput_counts_every_event_at_the_receiver(capsys: Any) -> None:
    """The whole case on a tiny workload: the real emitter, a receiver process; counts only, no timing."""
    from _otlp import print_otlp, run_otlp_throughput

    result = run_otlp_throughput(connections=40)
    assert result["produced"] > 40 * 4  # ~5 events per connection
    assert result["received"] == result["produced"] == result["sent"]
    assert result["unaccounted"] == 0 and result["lossless"]
    assert set(result["dropped_by_reason"]) >= {"queue_full", "retry_exhausted", "rejected", "shutdown"}
    assert result["requests"] >= 1 and result["bad_requests"] == 0
    dead = {"case": "otlp_dead_receiver", "seconds": 300.0, "connections": 150_000, "connections_per_s": 500.0,
            "events": 450_000, "events_per_s": 1_500.0, "rss_first_mib": 80.0, "rss_last_mib": 700.0,
            "rss_min_mib": 80.0, "rss_max_mib": 700.0, "rss_peak_mib": 701.0, "rss_slope_mib_per_min": 100.0,
            "rss_slope_second_half_mib_per_min": 0.5, "emitter_sent": 0, "emitter_retries": 300,
            "dropped_by_reason": {"queue_full": 150_000, "retry_exhausted": 40_000, "rejected": 0},
            "queue_at_end": {"events": 262_000, "max_events": 262_144}, "kernel_drops": {"ringbuf_full": 0},
            "daemon_stop_s": 5.5, "daemon_exit": 0}
    print_otlp([result, dead])
    out = capsys.readouterr().out
    assert "retry_exhausted 40,000, queue_full" not in out and "queue_full 150,000, retry_exhausted 40,000" in out
    assert "kernel drops                  none" in out
    assert all(len(line) <= 80 for line in out.splitlines())
