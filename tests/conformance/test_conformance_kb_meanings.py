"""KB-10 … KB-20: what the interpretations mean, evaluated with the public ``evaluate``.

TCP events are decoded by the jalki-tcp probes from raw records (as a probe
author tests them, through ``jalki_core.testing``); events of entries that no
installed probe implements yet are constructed as the entry's fields describe.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest
from conformance_support import SECOND, Json, first_witness, interpretations, make_event
from jalki_tcp.probes import TcpCloseProbe, TcpConnectProbe, TcpRetransmitProbe

from jalki_core.kb import SEVERITIES, Destination, Finding, ProcessRef, evaluate, parse_timestamp
from jalki_core.testing import FakeRingBuffer, decode_all, make_event_context

OWNER = {"pid": 4242, "flags": 1, "comm": b"api-server", "cgroup_id": 99}
NO_OWNER = {"pid": 0, "flags": 0, "comm": b"", "cgroup_id": 0}
V4_SRC = socket.inet_pton(socket.AF_INET, "10.42.0.5") + b"\0" * 12
ESTABLISHED, SYN_SENT, CLOSE, CLOSE_WAIT, LAST_ACK, FIN_WAIT1, FIN_WAIT2 = 1, 2, 7, 8, 9, 4, 5
ECONNREFUSED, ETIMEDOUT, EHOSTUNREACH, ENETUNREACH = 111, 110, 113, 101


def v4(dst: str = "10.42.2.8", dport: int = 5432, sport: int = 40000) -> dict[str, Any]:
    return {"saddr": V4_SRC, "daddr": socket.inet_pton(socket.AF_INET, dst) + b"\0" * 12, "sport": sport,
            "dport": dport, "family": socket.AF_INET, "netns": 4026531840}


def decode(probe: Any, records: list[dict[str, Any]]) -> list[Json]:
    ring = FakeRingBuffer(probe.layout)
    for record in records:
        ring.push_values(**record)
    events: list[Json] = decode_all(probe, ring, make_event_context(probe.name, "tp_btf"))
    return events


def connects(*errors: int, dst: str = "10.42.2.8", step_ns: int = SECOND, latency_ns: int = 80_000) -> list[Json]:
    return decode(TcpConnectProbe(), [{"ts_ns": i * step_ns, "latency_ns": latency_ns, "error": error, **OWNER,
                                       **v4(dst, sport=40000 + i)} for i, error in enumerate(errors)])


def retransmits(state: int, count: int, *, dst: str = "10.42.2.8", step_ns: int = 300_000_000,
                owner: dict[str, Any] = NO_OWNER) -> list[Json]:
    return decode(TcpRetransmitProbe(), [{"ts_ns": i * step_ns, "state": state, **owner, **v4(dst)}
                                         for i in range(count)])


def closes(*states: int) -> list[Json]:
    return decode(TcpCloseProbe(), [{"ts_ns": i, "duration_ns": 5_000_000, "bytes_sent": 100, "bytes_received": 2000,
                                     "oldstate": state, **OWNER, **v4(sport=41000 + i)}
                                    for i, state in enumerate(states)])


def event_type_of(rule_id: str) -> str:
    """The event type of the entry that owns an interpretation."""
    [event_type] = [listed["event_type"] for listed, rule in interpretations() if rule["id"] == rule_id]
    return str(event_type)


def ids(findings: list[Finding]) -> list[str]:
    return [finding.interpretation_id for finding in findings]


# KB-10 … KB-12: connect outcomes --------------------------------------------------------------------------------

def test_refused_means_nothing_listening_not_the_network() -> None:
    findings = evaluate(connects(ECONNREFUSED))
    assert ids(findings) == ["connect_refused"]  # exactly one finding: never also a timeout
    [finding] = findings
    assert (finding.entry_id, finding.severity, finding.errno) == ("tcp_connect", "error", "ECONNREFUSED")
    assert "Nothing is listening on the destination port" in finding.conclusion
    assert "not a network problem" in finding.conclusion
    [evidence] = finding.evidence
    assert evidence.destinations == (Destination("10.42.2.8:5432", 1),)
    assert evidence.processes == (ProcessRef(4242, "api-server", 1),)
    assert evidence.first == evidence.last == "2023-11-14T22:13:20.000000000Z"


def test_timeout_means_host_or_path_not_answering() -> None:
    [finding] = evaluate(connects(ETIMEDOUT))
    assert (finding.interpretation_id, finding.severity, finding.errno) == ("connect_timed_out", "error", "ETIMEDOUT")
    for phrase in ("The host or the path is not answering", "down", "filtered", "overloaded"):
        assert phrase in finding.conclusion


def test_application_abandoned_connect_is_a_timeout_and_says_who_gave_up() -> None:
    abandoned = make_event("kernel.tcp.connect", outcome="failure", error__code="ETIMEDOUT",
                           error__message="Connection timed out", data__latency_ns=3 * SECOND,
                           data__abandoned_by_application=True)
    findings = evaluate([abandoned])
    assert ids(findings) == ["connect_timed_out", "connect_abandoned_by_application"]
    assert "application" in findings[1].conclusion


@pytest.mark.parametrize(("errno_value", "rule_id"), [(EHOSTUNREACH, "connect_host_unreachable"),
                                                      (ENETUNREACH, "connect_network_unreachable")])
def test_unreachable_means_routing_or_interface(errno_value: int, rule_id: str) -> None:
    [finding] = evaluate(connects(errno_value))
    assert (finding.interpretation_id, finding.severity) == (rule_id, "error")
    assert "routing or interface problem" in finding.conclusion


# KB-13, KB-14: retransmits --------------------------------------------------------------------------------------

def test_established_retransmits_mean_path_loss_not_the_application() -> None:
    findings = evaluate(retransmits(ESTABLISHED, 3))
    assert ids(findings) == ["retransmit_established_loss"]
    [finding] = findings
    assert (finding.severity, finding.tcp_state) == ("warning", "ESTABLISHED")
    assert "lost on the network path" in finding.conclusion and "not the application" in finding.conclusion
    [evidence] = finding.evidence
    assert evidence.group == (("network_data.dst_ip", "10.42.2.8"), ("network_data.dst_port", 5432))
    assert (evidence.events, evidence.peak_in_window, evidence.unattributed) == (3, 3, 3)
    assert evidence.destinations == (Destination("10.42.2.8:5432", 3),)


def test_fewer_established_retransmits_are_not_yet_loss() -> None:
    assert evaluate(retransmits(ESTABLISHED, 2)) == []
    assert evaluate(retransmits(ESTABLISHED, 3, step_ns=6 * SECOND)) == []  # 12 s apart: not within 10 s


def test_syn_sent_retransmits_mean_handshake_failing() -> None:
    findings = evaluate(retransmits(SYN_SENT, 3, step_ns=2 * SECOND, owner=OWNER))
    assert ids(findings) == ["retransmit_syn_repeated", "retransmit_syn"]
    repeated = findings[0]
    assert (repeated.severity, repeated.tcp_state) == ("error", "SYN_SENT")
    for phrase in ("handshake", "unreachable", "filter"):
        assert phrase in repeated.conclusion
    assert repeated.evidence[0].processes == (ProcessRef(4242, "api-server", 3),)
    assert ids(evaluate(retransmits(SYN_SENT, 1, owner=OWNER))) == ["retransmit_syn"]


# KB-15: CLOSE_WAIT and stuck windows name the application -------------------------------------------------------

def test_close_from_close_wait_names_the_local_application() -> None:
    [finding] = evaluate(closes(CLOSE_WAIT))
    assert finding.interpretation_id == "close_from_close_wait"
    assert "local application is not reading or not closing" in finding.conclusion
    assert finding.evidence[0].processes == (ProcessRef(4242, "api-server", 1),)


def test_lingering_in_close_wait_names_the_local_application() -> None:
    kind = event_type_of("close_wait_lingering")
    lingering = make_event(kind, data__old_state="CLOSE_WAIT", data__new_state="LAST_ACK",
                           data__old_state_duration_ns=6 * SECOND)
    [finding] = evaluate([lingering])
    assert finding.interpretation_id == "close_wait_lingering"
    assert "local application is not closing" in finding.conclusion
    short = make_event(kind, data__old_state="CLOSE_WAIT", data__new_state="LAST_ACK",
                       data__old_state_duration_ns=SECOND)
    assert evaluate([short]) == []


def test_retransmits_in_close_wait_not_in_close() -> None:
    assert evaluate(retransmits(CLOSE, 3)) == []  # 7 is CLOSE
    [finding] = evaluate(retransmits(CLOSE_WAIT, 3))  # 8 is CLOSE_WAIT
    assert finding.interpretation_id == "retransmit_close_wait"
    assert "local application is not reading or not closing" in finding.conclusion


@pytest.mark.parametrize(("rule_id", "phrase"), [
    ("peer_zero_window", "the application on the destination host is not reading"),
    ("local_zero_window", "the local application is not reading"),
])
def test_stuck_windows_name_the_reader(rule_id: str, phrase: str) -> None:
    [(listed, rule)] = [(listed, rule) for listed, rule in interpretations() if rule["id"] == rule_id]
    window = rule["condition"]["window"]
    assert window["group_by"] == ["network_data.dst_ip", "network_data.dst_port"]  # per destination
    stuck = first_witness(listed, window["where"])  # a zero window, in the entry's own fields
    assert stuck is not None
    events = [make_event(listed["event_type"], i * SECOND, stuck, network_data__dst_ip="10.42.2.8",
                         network_data__dst_port=5432) for i in range(window["at_least"])]
    [finding] = evaluate(events)
    assert finding.interpretation_id == rule_id and phrase in finding.conclusion
    assert finding.evidence[0].destinations == (Destination("10.42.2.8:5432", window["at_least"]),)
    assert evaluate(events[:-1]) == []


# KB-16, KB-17: kills --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fields", [{"data__exit_code": 137}, {"data__signal": "SIGKILL", "data__exit_code": 137},
                                    {"data__signal": "SIGKILL"}], ids=["137", "137+SIGKILL", "SIGKILL"])
def test_exit_137_or_sigkill_means_killed_often_by_the_oom_killer(fields: dict[str, Any]) -> None:
    kind = event_type_of("exit_sigkill")
    [finding] = evaluate([make_event(kind, process_data__pid=77, process_data__command="java", **fields)])
    assert (finding.interpretation_id, finding.severity) == ("exit_sigkill", "error")
    assert "SIGKILL" in finding.conclusion and "137" in finding.conclusion and "OOM killer" in finding.conclusion
    assert finding.evidence[0].processes == (ProcessRef(77, "java", 1),)


@pytest.mark.parametrize("status", [1, 2, 125])
def test_ordinary_failure_status_is_not_a_kill(status: int) -> None:
    kind = event_type_of("exit_sigkill")
    assert ids(evaluate([make_event(kind, data__exit_code=status)])) == ["exit_failure_status"]


def test_oom_kill_is_critical_and_ranks_first() -> None:
    kind = event_type_of("oom_kill")
    oom = make_event(kind, process_data__pid=77, process_data__command="java", data__anon_rss_kb=204800)
    findings = evaluate([*connects(ECONNREFUSED, ECONNREFUSED), oom])
    assert ids(findings) == ["oom_kill", "connect_refused"]
    assert findings[0].severity == "critical" == SEVERITIES[-1]
    assert findings[0].evidence[0].processes == (ProcessRef(77, "java", 1),)


# KB-18: high-rate probes warn to sample -------------------------------------------------------------------------

@pytest.mark.parametrize("rule_id", ["tcp_sendmsg_rate_high", "tcp_recvmsg_rate_high", "sched_switch_rate_high"])
def test_high_frequency_probes_warn_to_sample(rule_id: str) -> None:
    kind = event_type_of(rule_id)
    burst = [make_event(kind, i * 200_000) for i in range(5000)]  # 5000 events in 1 s (last − first = 0.9998 s)
    [finding] = [f for f in evaluate(burst) if f.interpretation_id == rule_id]
    assert finding.severity == "warning" and "--sample" in finding.action
    assert finding.evidence[0].peak_in_window == 5000
    assert rule_id not in ids(evaluate(burst[:4999]))


# KB-19: healthy traffic -----------------------------------------------------------------------------------------

def test_healthy_traffic_yields_no_finding() -> None:
    healthy = [*connects(*[0] * 50, step_ns=SECOND // 50), *closes(*[LAST_ACK, FIN_WAIT1, FIN_WAIT2] * 16),
               *retransmits(ESTABLISHED, 1, owner=OWNER), *retransmits(ESTABLISHED, 2, dst="10.42.3.3")]
    assert evaluate(healthy) == []
    kind = event_type_of("exit_sigkill")
    assert evaluate([make_event(kind, i * SECOND, data__exit_code=0, process_data__command="cron")
                     for i in range(5)]) == []


# KB-20: evidence and ranking ------------------------------------------------------------------------------------

def test_findings_rank_by_severity_then_event_count_then_ids() -> None:
    events = [*connects(ETIMEDOUT), *connects(ECONNREFUSED, ECONNREFUSED, ECONNREFUSED),
              *retransmits(ESTABLISHED, 3, dst="10.42.9.9")]
    findings = evaluate(events)
    assert [(f.interpretation_id, f.severity, f.events) for f in findings] == [
        ("connect_refused", "error", 3), ("connect_timed_out", "error", 1),
        ("retransmit_established_loss", "warning", 3)]
    tie = evaluate([*connects(ETIMEDOUT), *connects(ECONNREFUSED)])
    assert ids(tie) == ["connect_refused", "connect_timed_out"]  # same severity and count: by interpretation id


def test_windows_give_one_evidence_group_per_destination() -> None:
    events = [*retransmits(ESTABLISHED, 4, dst="10.42.2.8"), *retransmits(ESTABLISHED, 3, dst="10.42.3.9"),
              *retransmits(ESTABLISHED, 2, dst="10.42.4.4")]
    [finding] = evaluate(events)
    assert [(group.group, group.events) for group in finding.evidence] == [
        ((("network_data.dst_ip", "10.42.2.8"), ("network_data.dst_port", 5432)), 4),
        ((("network_data.dst_ip", "10.42.3.9"), ("network_data.dst_port", 5432)), 3)]
    assert finding.events == 7


def test_evidence_counts_processes_and_unattributed_events() -> None:
    mixed = [*retransmits(ESTABLISHED, 2, owner=OWNER), *retransmits(ESTABLISHED, 1)]
    for i, event in enumerate(mixed):  # three retransmits in 0.6 s
        event["timestamp"] = f"2026-01-01T00:00:00.{i * 200_000_000:09d}Z"
    [finding] = evaluate(mixed)
    [evidence] = finding.evidence
    assert (evidence.processes, evidence.unattributed) == ((ProcessRef(4242, "api-server", 2),), 1)
    assert (evidence.first, evidence.last) == ("2026-01-01T00:00:00.000000000Z", "2026-01-01T00:00:00.400000000Z")


def test_ipv6_destinations_are_bracketed() -> None:
    event = make_event("kernel.tcp.connect", outcome="failure", error__code="ECONNREFUSED",
                       error__message="Connection refused", network_data__dst_ip="::1", network_data__dst_port=9)
    assert evaluate([event])[0].evidence[0].destinations == (Destination("[::1]:9", 1),)


def test_odd_events_never_raise_and_match_nothing_they_should_not() -> None:
    odd: list[Any] = [None, 1, "x", [], {}, {"type": 5}, {"type": "kernel.tcp.connect", "outcome": True},
                      {"type": "kernel.tcp.connect", "outcome": "failure", "error": "x"},
                      {"type": "kernel.tcp.connect", "timestamp": "yesterday", "outcome": "failure",
                       "error": {"code": "ECONNREFUSED"}, "network_data": [], "process_data": {"pid": True}}]
    findings = evaluate(odd)
    # the failure without an error object is "a failure with no known errno"
    assert ids(findings) == ["connect_refused", "connect_failed_other"]
    [evidence] = findings[0].evidence
    assert (evidence.events, evidence.first, evidence.last, evidence.destinations, evidence.processes,
            evidence.unattributed) == (1, None, None, (), (), 1)


@pytest.mark.parametrize(("text", "expected"), [
    ("2023-11-14T22:13:20.000000123Z", 1_700_000_000_000_000_123),
    ("2023-11-14T23:13:20.000000123+01:00", 1_700_000_000_000_000_123),
    ("1970-01-01T00:00:01.5Z", 1_500_000_000),
    ("2023-11-14T22:13:20", None),
    ("2023-13-14T22:13:20Z", None),
    (12, None),
])
def test_timestamps_are_rfc3339_with_nanoseconds(text: Any, expected: int | None) -> None:
    assert parse_timestamp(text) == expected
