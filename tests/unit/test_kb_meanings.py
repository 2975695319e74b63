"""The meanings that must hold, evaluated over real decoder output and constructed events."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from jalki_tcp.probes import TcpCloseProbe, TcpConnectProbe, TcpRetransmitProbe

from jalki_core.events import Event, Rfc3339Formatter
from jalki_core.kb import Destination, Finding, ProcessRef, default_kb, evaluate, parse_timestamp
from jalki_core.probe import Probe
from jalki_core.testing import FakeRingBuffer, decode_all, make_event_context

KB = default_kb()  # the built-in KB plus every installed plugin's documents
SECOND = 1_000_000_000
OWNER = {"pid": 4242, "flags": 1, "comm": b"api-server", "cgroup_id": 99}
NO_OWNER = {"pid": 0, "flags": 0, "comm": b"", "cgroup_id": 0}
V4_SRC = socket.inet_pton(socket.AF_INET, "10.42.0.5") + b"\0" * 12


def v4(dst: str = "10.42.2.8", dport: int = 5432, sport: int = 40000) -> dict[str, Any]:
    return {"saddr": V4_SRC, "daddr": socket.inet_pton(socket.AF_INET, dst) + b"\0" * 12, "sport": sport,
            "dport": dport, "family": socket.AF_INET, "netns": 4026531840}


def decode(probe: Probe, *records: dict[str, Any]) -> list[Event]:
    ring = FakeRingBuffer(probe.layout)
    for record in records:
        ring.push_values(**record)
    return decode_all(probe, ring, make_event_context(probe.name, "tp_btf"))


def connects(*errors: int, dst: str = "10.42.2.8", latency_ns: int = 80_000, step_ns: int = SECOND) -> list[Event]:
    return decode(TcpConnectProbe(), *({"ts_ns": i * step_ns, "latency_ns": latency_ns, "error": error, **OWNER,
                                        **v4(dst, sport=40000 + i)} for i, error in enumerate(errors)))


def retransmits(state: int, count: int, *, dst: str = "10.42.2.8", step_ns: int = 300_000_000,
                owner: dict[str, Any] = NO_OWNER) -> list[Event]:
    return decode(TcpRetransmitProbe(), *({"ts_ns": i * step_ns, "state": state, **owner, **v4(dst)}
                                          for i in range(count)))


def closes(*states: int) -> list[Event]:
    return decode(TcpCloseProbe(), *({"ts_ns": i, "duration_ns": 5_000_000, "bytes_sent": 100,
                                      "bytes_received": 2000, "oldstate": state, **OWNER, **v4(sport=41000 + i)}
                                     for i, state in enumerate(states)))


_FORMAT = Rfc3339Formatter()


def event(event_type: str, offset_ns: int = 0, **fields: Any) -> Event:
    """A constructed event; ``fields`` use ``__`` for dots (``data__signal``)."""
    result: dict[str, Any] = {"type": event_type, "timestamp": _FORMAT(1_767_225_600 * SECOND + offset_ns)}
    for key, value in fields.items():
        *parents, leaf = key.split("__")
        node = result
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return result


def ids(findings: list[Finding]) -> list[str]:
    return [finding.interpretation_id for finding in findings]


def only(findings: list[Finding], rule_id: str) -> Finding:
    [finding] = [f for f in findings if f.interpretation_id == rule_id]
    return finding


def test_refused_means_nothing_listening_not_the_network() -> None:
    findings = evaluate(connects(111), KB)
    assert ids(findings) == ["connect_refused"]
    [finding] = findings
    assert (finding.severity, finding.errno) == ("error", "ECONNREFUSED")
    assert "Nothing is listening on the destination port" in finding.conclusion
    assert "this is not a network problem" in finding.conclusion
    [evidence] = finding.evidence
    assert evidence.destinations == (Destination("10.42.2.8:5432", 1),)
    assert evidence.processes == (ProcessRef(4242, "api-server", 1),)
    assert evidence.first == evidence.last == "2023-11-14T22:13:20.000000000Z"


def test_timeout_means_host_or_path_not_answering() -> None:
    [finding] = evaluate(connects(110), KB)
    assert (finding.interpretation_id, finding.severity, finding.errno) == ("connect_timed_out", "error", "ETIMEDOUT")
    for phrase in ("The host or the path is not answering", "down or unreachable", "(filtered)", "overloaded"):
        assert phrase in finding.conclusion


@pytest.mark.parametrize(("errno_value", "rule_id"), [(113, "connect_host_unreachable"),
                                                      (101, "connect_network_unreachable")])
def test_unreachable_means_routing_or_interface(errno_value: int, rule_id: str) -> None:
    [finding] = evaluate(connects(errno_value), KB)
    assert finding.interpretation_id == rule_id and finding.severity == "error"
    assert "A routing or interface problem" in finding.conclusion


@pytest.mark.parametrize("errno_value", [13, 1])  # EACCES (a prohibit route), EPERM (a cgroup connect program)
def test_a_connect_denied_on_this_host_is_local_policy_not_the_network(errno_value: int) -> None:
    [finding] = evaluate(connects(errno_value), KB)
    assert finding.interpretation_id == "connect_denied_locally" and finding.severity == "error"
    assert "Neither the network nor the destination is involved" in finding.conclusion


def test_application_abandoned_connect_is_a_timeout_and_says_who_gave_up() -> None:
    abandoned = event("kernel.tcp.connect", outcome="failure", error__code="ETIMEDOUT",
                      data__abandoned_by_application=True)
    assert ids(evaluate([abandoned], KB)) == ["connect_timed_out", "connect_abandoned_by_application"]


def test_established_retransmits_mean_path_loss_not_the_application() -> None:
    findings = evaluate(retransmits(1, 3), KB)
    assert ids(findings) == ["retransmit_established_loss"]
    [finding] = findings
    assert (finding.severity, finding.tcp_state) == ("warning", "ESTABLISHED")
    assert "packets are lost on the network path" in finding.conclusion
    assert "This is not the application" in finding.conclusion
    [evidence] = finding.evidence
    assert evidence.group == (("network_data.dst_ip", "10.42.2.8"), ("network_data.dst_port", 5432))
    assert evidence.destinations == (Destination("10.42.2.8:5432", 3),)
    assert (evidence.processes, evidence.unattributed, evidence.peak_in_window) == ((), 3, 3)


def test_two_established_retransmits_are_not_yet_loss() -> None:
    assert evaluate(retransmits(1, 2), KB) == []


def test_syn_sent_retransmits_mean_handshake_failing() -> None:
    findings = evaluate(retransmits(2, 3, step_ns=2 * SECOND, owner=OWNER), KB)
    assert ids(findings) == ["retransmit_syn_repeated", "retransmit_syn"]
    repeated = findings[0]
    assert (repeated.severity, repeated.tcp_state) == ("error", "SYN_SENT")
    for phrase in ("handshake to this destination keeps failing", "unreachable or down", "firewall filters"):
        assert phrase in repeated.conclusion
    assert repeated.evidence[0].processes == (ProcessRef(4242, "api-server", 3),)


def test_close_wait_means_local_application_not_reading_or_closing() -> None:
    [finding] = evaluate(closes(8), KB)
    assert finding.interpretation_id == "close_from_close_wait"
    assert "The local application is not reading or not closing" in finding.conclusion
    lingering = event("kernel.tcp.state_change", data__old_state="CLOSE_WAIT", data__new_state="LAST_ACK",
                      data__old_state_duration_ns=6 * SECOND)
    [finding] = evaluate([lingering], KB)
    assert finding.interpretation_id == "close_wait_lingering"
    assert "the local application is not closing (or not reading)" in finding.conclusion


def test_state_7_is_close_and_8_is_close_wait() -> None:
    assert evaluate(retransmits(7, 3), KB) == []
    [finding] = evaluate(retransmits(8, 3), KB)
    assert finding.interpretation_id == "retransmit_close_wait"
    assert "The local application is not reading or not closing" in finding.conclusion


@pytest.mark.parametrize(("window_field", "rule_id", "phrase"), [
    ("data__peer_zero_window_samples", "peer_zero_window", "the application on the destination host is not reading"),
    ("data__local_zero_window_samples", "local_zero_window", "the local application is not reading its socket"),
])
def test_stuck_windows_name_the_reader(window_field: str, rule_id: str, phrase: str) -> None:
    events = [event("kernel.tcp.rtt", i * SECOND, network_data__dst_ip="10.42.2.8", network_data__dst_port=5432,
                    **{window_field: 1}) for i in range(5)]
    [finding] = evaluate(events, KB)
    assert finding.interpretation_id == rule_id and phrase in finding.conclusion
    assert evaluate(events[:4], KB) == []


@pytest.mark.parametrize("fields", [{"data__exit_code": 137}, {"data__signal": "SIGKILL", "data__exit_code": 137}])
def test_exit_137_means_sigkill_often_oom(fields: dict[str, Any]) -> None:
    [finding] = evaluate([event("kernel.process.exit", process_data__pid=77, process_data__command="java",
                                **fields)], KB)
    assert (finding.interpretation_id, finding.severity) == ("exit_sigkill", "error")
    assert "SIGKILL (exit status 137 = 128 + 9)" in finding.conclusion and "OOM killer" in finding.conclusion
    assert finding.evidence[0].processes == (ProcessRef(77, "java", 1),)


def test_ordinary_failure_exit_is_not_a_kill() -> None:
    assert ids(evaluate([event("kernel.process.exit", data__exit_code=1)], KB)) == ["exit_failure_status"]


def test_oom_kill_is_critical_and_ranks_first() -> None:
    events = [*connects(111, 111), event("kernel.memory.oom_kill", process_data__pid=77, process_data__command="java",
                                         data__anon_rss_kb=204800)]
    findings = evaluate(events, KB)
    assert ids(findings) == ["oom_kill", "connect_refused"]
    assert findings[0].severity == "critical"


@pytest.mark.parametrize(("event_type", "rule_id"), [
    ("kernel.tcp.send", "tcp_sendmsg_rate_high"), ("kernel.tcp.recv", "tcp_recvmsg_rate_high"),
    ("kernel.sched.switch", "sched_switch_rate_high"), ("kernel.sched.runq_latency", "sched_wakeup_rate_high"),
])
def test_high_frequency_probes_warn_to_sample(event_type: str, rule_id: str) -> None:
    burst = [event(event_type, i * 180_000) for i in range(5000)]  # 5000 events in 0.9 s
    [finding] = [f for f in evaluate(burst, KB) if f.interpretation_id == rule_id]
    assert finding.severity == "warning" and "--sample" in finding.action
    assert rule_id not in ids(evaluate(burst[:4999], KB))


def test_healthy_traffic_yields_no_finding() -> None:
    healthy = [*connects(*[0] * 50, step_ns=SECOND // 50), *closes(*[9, 5, 6] * 16),
               *retransmits(1, 1, owner=OWNER)]
    assert evaluate(healthy, KB) == []


def test_findings_rank_by_severity_then_evidence() -> None:
    events = [*connects(110), *connects(111, 111, 111), *retransmits(1, 3, dst="10.42.9.9")]
    assert ids(evaluate(events, KB)) == ["connect_refused", "connect_timed_out", "retransmit_established_loss"]
    assert [f.events for f in evaluate(events, KB)] == [3, 1, 3]


def test_one_refused_connect_is_not_also_a_timeout() -> None:
    assert "connect_timed_out" not in ids(evaluate(connects(111), KB))


def test_windows_group_by_destination() -> None:
    events = [*retransmits(1, 3, dst="10.42.2.8"), *retransmits(1, 2, dst="10.42.3.9")]
    [finding] = evaluate(events, KB)
    assert [group.destinations for group in finding.evidence] == [(Destination("10.42.2.8:5432", 3),)]


def test_ipv6_destinations_are_bracketed() -> None:
    events = [event("kernel.tcp.connect", outcome="failure", error__code="ECONNREFUSED",
                    network_data__dst_ip="::1", network_data__dst_port=9)]
    assert evaluate(events, KB)[0].evidence[0].destinations == (Destination("[::1]:9", 1),)


def test_odd_events_never_raise() -> None:
    odd: list[Any] = [None, 1, {}, {"type": 5}, {"type": "kernel.tcp.connect", "outcome": "failure", "error": "x"},
                      {"type": "kernel.tcp.connect", "timestamp": "yesterday", "outcome": "failure",
                       "error": {"code": "ECONNREFUSED"}, "network_data": [], "process_data": {"pid": True}}]
    findings = evaluate(odd, KB)
    # the failure without an error object is "a failure with no known errno", nothing more
    assert ids(findings) == ["connect_refused", "connect_failed_other"]
    [evidence] = findings[0].evidence
    assert (evidence.events, evidence.first, evidence.last, evidence.destinations, evidence.unattributed) == (
        1, None, None, (), 1)


@pytest.mark.parametrize(("text", "expected"), [
    ("1970-01-01T00:00:00Z", 0),
    ("1970-01-01T00:00:01.5Z", 1_500_000_000),
    ("2023-11-14T22:13:20.000000123Z", 1_700_000_000_000_000_123),
    ("2023-11-14T23:13:20.000000123+01:00", 1_700_000_000_000_000_123),
    ("2023-11-14T22:13:20", None),
    ("2023-13-14T22:13:20Z", None),
    (12, None),
])
def test_parse_timestamp(text: Any, expected: int | None) -> None:
    assert parse_timestamp(text) == expected
