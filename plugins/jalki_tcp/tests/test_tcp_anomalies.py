"""Windowed network anomalies (jalki_tcp.anomalies / derived): window boundaries and exact events."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
from jalki_tcp.anomalies import BurstDetector, event_time_ns
from jalki_tcp.probes import TcpConnectProbe, TcpResetProbe, TcpRetransmitProbe, TcpRttProbe

from jalki_core.events import Event
from jalki_core.testing import FIXED_CLOCK_OFFSET_NS, event_validator, make_event_context

S = 1_000_000_000
T0 = FIXED_CLOCK_OFFSET_NS + 100 * S  # realtime ns of kernel time 100 s
validate = event_validator()


class Counter:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def add(self, event: Event) -> None:
        self.events.append(event)


def feed(detector: BurstDetector[Counter], times: list[float], group: Any = "g") -> list[Any]:
    out = []
    for t in times:
        out.extend(detector.add(group, T0 + int(t * S), {"t": t}))
    return out


def test_n_minus_one_events_report_nothing() -> None:
    detector = BurstDetector(5, 10, Counter)
    assert feed(detector, [0, 1, 2, 3]) == []
    assert detector.flush() == []


def test_n_events_within_t_report_exactly_one_window() -> None:
    detector = BurstDetector(5, 10, Counter)
    assert feed(detector, [0, 1, 2, 3, 10]) == []  # last - first == T: still within the window
    [window] = detector.flush()
    assert (window.count, window.start_ns, window.end_ns, window.last_ns) == (5, T0, T0 + 10 * S, T0 + 10 * S)
    assert [e["t"] for e in window.accumulator.events] == [0, 1, 2, 3, 10]
    assert detector.flush() == []


def test_three_n_in_one_window_is_still_one_report_with_every_event() -> None:
    detector = BurstDetector(5, 10, Counter)
    assert feed(detector, [i * 0.5 for i in range(15)]) == []
    [window] = detector.flush()
    assert window.count == 15 and len(window.accumulator.events) == 15


def test_events_spread_wider_than_t_report_nothing() -> None:
    detector = BurstDetector(3, 10, Counter)
    assert feed(detector, [0, 5.1, 10.2, 15.3, 20.4, 25.5]) == []  # any 3 span more than 10 s
    assert detector.flush() == []


def test_just_over_t_is_outside() -> None:
    detector = BurstDetector(2, 10, Counter)
    assert feed(detector, [0, 10.000000001]) == []
    assert detector.flush() == []


def test_a_burst_straddling_a_tumbling_boundary_is_found() -> None:
    detector = BurstDetector(4, 10, Counter)
    feed(detector, [8, 9, 11, 12])  # two on each side of t=10
    [window] = detector.flush()
    assert window.start_ns == T0 + 8 * S and window.count == 4


def test_a_second_window_is_a_second_report_and_the_first_closes_when_time_passes_it() -> None:
    detector = BurstDetector(3, 10, Counter)
    assert feed(detector, [0, 1, 2, 9.5]) == []
    [first] = feed(detector, [10.5])  # after the first window's end: it closes and is reported
    assert (first.count, first.start_ns, first.end_ns) == (4, T0, T0 + 10 * S)
    assert feed(detector, [11, 12]) == []
    [second] = detector.flush()
    assert (second.count, second.start_ns) == (3, T0 + int(10.5 * S))


def test_events_after_a_window_need_n_new_ones() -> None:
    detector = BurstDetector(3, 10, Counter)
    [first] = feed(detector, [0, 1, 2, 10.5])
    assert first.count == 3
    assert detector.flush() == []  # the single event after the window is pending, not a window


def test_groups_are_counted_separately_and_any_group_closes_expired_windows() -> None:
    detector = BurstDetector(3, 10, Counter)
    assert feed(detector, [0, 1], "a") + feed(detector, [0.5, 1.5], "b") == []
    assert feed(detector, [2], "a") == []  # a: 3 events → window opens (reported when it ends)
    [closed] = feed(detector, [30], "b")  # time passes a's end through another group's event
    assert (closed.group, closed.count) == ("a", 3)
    assert detector.flush() == []


def test_out_of_order_event_inside_an_open_window_counts() -> None:
    detector = BurstDetector(2, 10, Counter)
    feed(detector, [5, 6, 4.9])
    [window] = detector.flush()
    assert window.count == 3


def test_idle_groups_are_forgotten() -> None:
    detector = BurstDetector(2, 1, Counter)
    for i in range(2048):
        detector.add(i, T0 + i * 2 * S, {})
    assert detector.groups < 1100


def test_bad_parameters() -> None:
    with pytest.raises(ValueError):
        BurstDetector(0, 1, Counter)
    with pytest.raises(ValueError):
        BurstDetector(1, 0, Counter)


def test_event_time_parses_rfc3339_nanoseconds() -> None:
    assert event_time_ns({"timestamp": "2023-11-14T22:13:20.000000001Z"}) == FIXED_CLOCK_OFFSET_NS + 1
    assert event_time_ns({"timestamp": "2023-11-14T22:13:20Z"}) == FIXED_CLOCK_OFFSET_NS
    assert event_time_ns({"timestamp": "2023-11-14T22:13:20.5Z"}) == FIXED_CLOCK_OFFSET_NS + S // 2
    assert event_time_ns({"timestamp": "yesterday"}) is None
    assert event_time_ns({}) is None


# -- the four anomalies through the probes' derive / final_events ----------------------------------------------

def _at(seconds: float) -> str:
    fmt_ns = T0 + int(seconds * S)
    secs, nanos = divmod(fmt_ns, S)
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{nanos:09d}Z"


def _net(dst_ip: str = "10.0.0.8", dst_port: int = 5432, src_port: int = 40000) -> dict[str, Any]:
    return {"src_ip": "10.0.0.5", "dst_ip": dst_ip, "src_port": src_port, "dst_port": dst_port, "protocol": "tcp",
            "family": "ipv4", "netns": 1}


def run(probe: Any, events: list[Event], batch: int = 3) -> list[Event]:
    ctx = make_event_context(probe.name, "tp_btf")
    out: list[Event] = []
    for i in range(0, len(events), batch):
        out.extend(probe.derive(events[i:i + batch], ctx))
    out.extend(probe.final_events({}, ctx))
    for event in out:
        validate(event)
    return out


def retransmit(t: float, state: str = "ESTABLISHED", **net: Any) -> Event:
    return {"type": "kernel.tcp.retransmit", "timestamp": _at(t), "network_data": _net(**net),
            "data": {"tcp_state": state}}


def test_retransmit_spike_event_exact() -> None:
    probe = TcpRetransmitProbe()
    events = [retransmit(i * 0.5, src_port=40000 + i % 2) for i in range(12)]
    events.append(retransmit(1, "SYN_SENT", src_port=40009))
    [spike] = run(probe, sorted(events, key=lambda e: e["timestamp"]))
    assert spike == {
        "id": "00000000-tcp_retransmit_skb-1", "timestamp": _at(5.5), "source": "jalki/tcp_retransmit_skb",
        "type": "kernel.network.retransmit_spike", "severity": "warning", "cluster": "test", "node": "test-node",
        "attach": "tp_btf",
        # only the destination the window groups by: no invented local endpoint, no 4-tuple to correlate
        "network_data": {"dst_ip": "10.0.0.8", "dst_port": 5432, "protocol": "tcp", "family": "ipv4", "netns": 1},
        "data": {"count": 13, "threshold": 10, "window_seconds": 10.0, "window_start": _at(0),
                 "window_end": _at(10), "last_seen": _at(5.5), "key": "remote_endpoint", "connections": 3,
                 "established": 12, "handshake": 1},
    }


def test_retransmit_spike_groups_by_destination_and_respects_the_threshold() -> None:
    probe = TcpRetransmitProbe()
    probe.spike_threshold = 3
    events = [retransmit(t, dst_port=1) for t in (0, 1, 2)] + [retransmit(t, dst_port=2) for t in (0.5, 1.5)]
    [spike] = run(probe, sorted(events, key=lambda e: e["timestamp"]))
    assert spike["network_data"]["dst_port"] == 1 and spike["data"]["count"] == 3


def reset(t: float, direction: str, state: str | None, **net: Any) -> Event:
    return {"type": "kernel.tcp.reset", "timestamp": _at(t), "network_data": _net(**net),
            "data": {"direction": direction, "tcp_state": state}}


def test_rst_storm_sent_groups_by_local_endpoint_received_by_peer() -> None:
    probe = TcpResetProbe()
    sent = [reset(i * 0.1, "sent", None, src_port=9, dst_ip=f"10.0.1.{i % 4}", dst_port=50000 + i) for i in range(12)]
    received = [reset(i * 0.1 + 0.05, "received", "SYN_SENT", dst_port=9, src_port=50000 + i) for i in range(12)]
    few = [reset(i, "received", "ESTABLISHED", dst_ip="10.9.9.9") for i in range(9)]  # 9 < 10: nothing
    out = run(probe, sorted(sent + received + few, key=lambda e: e["timestamp"]))
    [storm_sent] = [e for e in out if e["data"]["direction"] == "sent"]
    [storm_received] = [e for e in out if e["data"]["direction"] == "received"]
    # sent: the local endpoint the resets came from, no peer (there are 4 of them)
    assert storm_sent["network_data"] == {"src_ip": "10.0.0.5", "src_port": 9, "protocol": "tcp", "family": "ipv4",
                                          "netns": 1}
    assert {k: storm_sent["data"][k] for k in ("key", "count", "no_socket", "peers")} == {
        "key": "local_endpoint", "count": 12, "no_socket": 12, "peers": 4}
    # received: the peer that sent them, no local endpoint (12 local connections)
    assert storm_received["network_data"] == {"dst_ip": "10.0.0.8", "dst_port": 9, "protocol": "tcp",
                                              "family": "ipv4", "netns": 1}
    assert {k: storm_received["data"][k] for k in ("key", "count", "no_socket", "peers")} == {
        "key": "remote_endpoint", "count": 12, "no_socket": 0, "peers": 1}
    assert "correlation_keys" not in storm_sent and "correlation_keys" not in storm_received


def connect(t: float, code: str | None, **net: Any) -> Event:
    event: Event = {"type": "kernel.tcp.connect", "timestamp": _at(t), "network_data": _net(**net),
                    "outcome": "failure" if code else "success", "data": {"latency_ns": 1}}
    if code:
        event["error"] = {"code": code, "message": "x"}
    return event


def test_connect_failures_count_kernel_decided_failures_only() -> None:
    probe = TcpConnectProbe()
    events = [connect(0, "ECONNREFUSED"), connect(1, "ETIMEDOUT"), connect(2, "ECONNABORTED"),
              connect(3, None), connect(4, "EHOSTUNREACH"), connect(5, "ECONNREFUSED"), connect(6, "EADDRNOTAVAIL"),
              connect(7, "ENETUNREACH")]
    [failures] = run(probe, events)
    assert failures["severity"] == "error"
    assert {k: failures["data"][k] for k in ("count", "refused", "timed_out", "unreachable")} == {
        "count": 5, "refused": 2, "timed_out": 1, "unreachable": 2}
    assert failures["data"]["window_start"] == _at(0) and failures["data"]["last_seen"] == _at(7)
    assert failures["network_data"] == {"dst_ip": "10.0.0.8", "dst_port": 5432, "protocol": "tcp", "family": "ipv4",
                                        "netns": 1}
    assert failures["data"]["key"] == "remote_endpoint" and "correlation_keys" not in failures


def rtt(t: float, avg: int, port: int = 5432, *, passive: bool = False) -> Event:
    """An RTT aggregate as tcp_rtt emits it: only the remote side, the key's direction."""
    net = {"dst_ip": "10.0.0.8", "protocol": "tcp", "family": "ipv4", "netns": 1}
    data: dict[str, Any] = {"direction": "passive" if passive else "active", "srtt_us_avg": avg,
                            "srtt_us_max": avg + 10}
    if passive:
        data["local_port"] = port
    else:
        net["dst_port"] = port
    return {"type": "kernel.tcp.rtt", "timestamp": _at(t), "network_data": net, "data": data}


def test_rtt_degradation_learns_a_baseline_per_destination() -> None:
    probe = TcpRttProbe()
    normal = [rtt(i, 10_000) for i in range(5)]
    other = [rtt(i + 0.5, 50_000, port=1) for i in range(8)]  # another destination, steady: nothing
    degraded = [rtt(5 + i, 20_000 + i) for i in range(4)]
    out = run(probe, sorted(normal + other + degraded, key=lambda e: e["timestamp"]))
    [event] = out
    assert event["network_data"] == {"dst_ip": "10.0.0.8", "dst_port": 5432, "protocol": "tcp", "family": "ipv4",
                                     "netns": 1}
    assert (event["data"]["key"], event["data"]["direction"]) == ("remote_endpoint", "active")
    assert {k: event["data"][k] for k in ("count", "baseline_srtt_us", "srtt_us_avg", "srtt_us_max", "factor",
                                          "absolute_threshold_us", "threshold")} == {
        "count": 4, "baseline_srtt_us": 10_000, "srtt_us_avg": 20_002, "srtt_us_max": 20_013, "factor": 2.0,
        "absolute_threshold_us": 500_000, "threshold": 3}


def test_rtt_below_twice_the_baseline_is_not_degraded_and_rises_are_not_absorbed() -> None:
    probe = TcpRttProbe()
    ramp = [rtt(i, 10_000) for i in range(3)] + [rtt(3 + i, 15_000 + 2_000 * i) for i in range(4)]
    assert run(probe, ramp) == []  # 15-21 ms: below 2 x 10 ms
    assert probe._degradation().baseline((1, "10.0.0.8", 5432, "active", None)) == 10_000  # rises never moved it


def test_rtt_degradation_of_a_passive_key_names_the_service_not_a_client_port() -> None:
    probe = TcpRttProbe()
    events = [rtt(i, 10_000, port=8080, passive=True) for i in range(3)]
    events += [rtt(3 + i, 30_000, port=8080, passive=True) for i in range(3)]
    events += [rtt(i + 0.5, 10_000, port=8080) for i in range(6)]  # active key to remote port 8080: its own
    [event] = run(probe, sorted(events, key=lambda e: e["timestamp"]))
    assert event["network_data"] == {"dst_ip": "10.0.0.8", "protocol": "tcp", "family": "ipv4", "netns": 1}
    assert (event["data"]["direction"], event["data"]["local_port"], event["data"]["count"]) == ("passive", 8080, 3)
    assert event["data"]["key"] == "remote_address_and_local_port"
    assert "correlation_keys" not in event


def test_rtt_above_the_absolute_limit_needs_no_baseline() -> None:
    probe = TcpRttProbe()
    [event] = run(probe, [rtt(i, 600_000) for i in range(3)])
    assert event["data"]["baseline_srtt_us"] is None and event["data"]["count"] == 3


def _owned(event: Event, pid: int | None, command: str | None = "client") -> Event:
    event["process_data"] = {"pid": pid, "command": command if pid is not None else None, "cgroup_id": 1}
    return event


def test_an_anomaly_names_the_process_when_one_process_caused_every_attributed_event() -> None:
    one = [_owned(connect(t, "ECONNREFUSED"), 42) for t in (0, 1, 2, 3)]
    one.append(_owned(connect(4, "ECONNREFUSED"), None))  # an event with no known process does not split it
    [failures] = run(TcpConnectProbe(), one)
    assert failures["process_data"] == {"pid": 42, "command": "client", "cgroup_id": 1}
    two = [_owned(connect(t, "ECONNREFUSED"), 42 + int(t) % 2) for t in (0, 1, 2, 3, 4)]
    [shared] = run(TcpConnectProbe(), two)
    assert "process_data" not in shared  # two processes: the anomaly belongs to neither


@pytest.mark.parametrize("side", ["src", "dst"])
def test_the_schema_refuses_an_invented_endpoint_on_an_anomaly(side: str) -> None:
    """The aggregated side is absent, never the unspecified address and port 0 (which validate as an endpoint)."""
    [spike] = run(TcpRetransmitProbe(), [retransmit(i * 0.5) for i in range(10)])
    [storm] = run(TcpResetProbe(), [reset(i * 0.1, "sent", None, dst_port=50000 + i) for i in range(10)])
    event = spike if side == "src" else storm
    event["network_data"].update({f"{side}_ip": "0.0.0.0", f"{side}_port": 0})
    with pytest.raises(jsonschema.ValidationError):
        validate(event)
