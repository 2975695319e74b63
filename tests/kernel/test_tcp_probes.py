"""jalki-tcp on the real kernel: real probes, real traffic in a network namespace, exact events."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from netns_helpers import NetNs, tracing
from tcp_helpers import CLOSED_PORT, COMMAND, Pick, check_rung, drop_input_rule, only, tcp_probes, validate

from jalki_core.errors import AttachLadderExhausted
from jalki_core.events import Event, EventContext
from jalki_core.loader import ProbeOptions
from jalki_core.probe import AttachRung, Probe, RecordLayout
from jalki_core.testing import FileResource

pytestmark = pytest.mark.kernel















def test_connect_send_close_bytes_and_duration(netns: NetNs, pick: Pick) -> None:
    server = netns.server("--reply", "5000")
    with tracing(pick()) as trace:
        client = netns.traffic("client", "--port", str(server["port"]), "--send", "3000")
    assert client["received"] == 5000
    events = trace.events(netns=netns.inode)
    for event in events:
        validate(event)
    check_rung(pick, events)

    [connect] = only(events, type="kernel.tcp.connect", network_data__src_port=client["sport"])
    assert connect["outcome"] == "success" and "error" not in connect
    assert connect["network_data"]["dst_port"] == server["port"]
    assert connect["network_data"]["dst_ip"] == "127.0.0.1" and connect["network_data"]["family"] == "ipv4"
    assert connect["process_data"]["pid"] == client["pid"]
    assert connect["process_data"]["command"] == COMMAND
    assert connect["process_data"]["cgroup_id"] > 0
    assert 0 < connect["data"]["latency_ns"] < 1_000_000_000
    assert connect["attach"] in ("fexit", "tp_btf", "tracepoint")
    assert connect["correlation_keys"] == [f"127.0.0.1:{client['sport']}->127.0.0.1:{server['port']}"]

    [client_close] = only(events, type="kernel.tcp.close", network_data__src_port=client["sport"])
    assert client_close["data"]["bytes_sent"] == 3000
    assert client_close["data"]["bytes_received"] == 5000
    assert client_close["data"]["duration_ns"] > 0
    assert client_close["process_data"]["pid"] == client["pid"]
    assert client_close["network_data"]["dst_port"] == server["port"]

    [server_close] = only(events, type="kernel.tcp.close", network_data__src_port=server["port"],
                          network_data__dst_port=client["sport"])
    assert server_close["data"]["bytes_sent"] == 5000
    assert server_close["data"]["bytes_received"] == 3000
    assert server_close["data"]["tcp_state"] == "LAST_ACK"
    assert server_close["process_data"]["pid"] == server["pid"]
    assert not only(events, type="kernel.tcp.retransmit")
    assert trace.summary is not None
    assert all(sum(p.kernel_drops.values()) == 0 for p in trace.summary.probes)


def test_refused_connect_is_one_failure_event(netns: NetNs, pick: Pick) -> None:
    with tracing(pick()) as trace:
        report = netns.traffic("connect", "--port", str(CLOSED_PORT))
    [attempt] = report["results"]
    assert attempt["error"] == "ECONNREFUSED"
    events = trace.events(netns=netns.inode)
    connects = only(events, type="kernel.tcp.connect", network_data__src_port=attempt["sport"])
    assert len(connects) == 1, connects
    [event] = connects
    validate(event)
    assert event["outcome"] == "failure" and event["severity"] == "error"
    assert event["error"]["code"] == "ECONNREFUSED"
    assert event["network_data"]["dst_port"] == CLOSED_PORT
    assert event["process_data"]["pid"] == report["pid"]
    assert not only(events, type="kernel.tcp.close", network_data__src_port=attempt["sport"])
    check_rung(pick, events)


def test_syn_dropped_connect_times_out_with_syn_sent_retransmits(netns: NetNs, pick: Pick) -> None:
    netns.nft(drop_input_rule(f"tcp dport {CLOSED_PORT}"))
    netns.sysctl("net.ipv4.tcp_syn_retries", "1")
    with tracing(pick()) as trace:
        report = netns.traffic("connect", "--port", str(CLOSED_PORT), "--timeout", "30")
    [attempt] = report["results"]
    assert attempt["error"] == "ETIMEDOUT"
    events = trace.events(netns=netns.inode)
    for event in events:
        validate(event)
    [connect] = only(events, type="kernel.tcp.connect", network_data__src_port=attempt["sport"])
    assert connect["outcome"] == "failure" and connect["error"]["code"] == "ETIMEDOUT"
    assert connect["data"]["latency_ns"] > 1_000_000_000  # the SYN retries took seconds
    retransmits = only(events, type="kernel.tcp.retransmit", network_data__src_port=attempt["sport"])
    assert retransmits, "SYN retransmits were not traced"
    assert {r["data"]["tcp_state"] for r in retransmits} == {"SYN_SENT"}
    assert {r["process_data"]["pid"] for r in retransmits} == {report["pid"]}
    assert {r["process_data"]["command"] for r in retransmits} == {COMMAND}
    check_rung(pick, events)


def test_established_loss_retransmits_attributed_to_sender(netns: NetNs, pick: Pick, tmp_path: Path) -> None:
    server = netns.server("--hold", "30")
    go_file = tmp_path / "go"
    with tracing(pick("tcp_retransmit_skb")) as trace:
        sender, hello = netns.spawn("lossy-sender", "--port", str(server["port"]), "--go-file", str(go_file),
                                    "--send", "2000", "--linger", "1.5")
        netns.nft(drop_input_rule(f"tcp dport {server['port']}"))
        go_file.touch()
        sender.wait(timeout=30)
    retransmits = only(trace.events("kernel.tcp.retransmit", netns.inode), network_data__src_port=hello["sport"])
    assert len(retransmits) >= 2, retransmits
    for event in retransmits:
        validate(event)
        assert event["data"]["tcp_state"] == "ESTABLISHED"
        assert event["process_data"]["pid"] == hello["pid"]  # the owner, not the interrupted task
        assert event["process_data"]["command"] == COMMAND
        assert event["network_data"]["dst_port"] == server["port"]
    check_rung(pick, retransmits)


def test_server_side_retransmits_attributed_to_the_accepting_process(
    netns: NetNs, pick: Pick, tmp_path: Path
) -> None:
    go_file = tmp_path / "go"
    with tracing(pick("tcp_retransmit_skb")) as trace:
        server, hello = netns.spawn("reply-after-go", "--request", "100", "--reply", "2000",
                                    "--go-file", str(go_file), "--linger", "1.5")
        client, request = netns.spawn("request-and-wait", "--port", str(hello["port"]), "--send", "100",
                                      "--linger", "3")
        netns.nft(drop_input_rule(f"tcp dport {request['sport']}"))  # the replies to the client are lost
        go_file.touch()
        server.wait(timeout=30)
        client.wait(timeout=30)
    retransmits = only(trace.events("kernel.tcp.retransmit", netns.inode), network_data__src_port=hello["port"])
    assert len(retransmits) >= 2, retransmits
    for event in retransmits:
        validate(event)
        assert event["data"]["tcp_state"] == "ESTABLISHED"
        assert event["network_data"]["dst_port"] == request["sport"]
        assert event["process_data"]["pid"] == hello["pid"]  # recorded when the server read the request
    check_rung(pick, retransmits)


def test_ipv6_refused_connect(netns: NetNs, pick: Pick) -> None:
    with tracing(pick("tcp_connect")) as trace:
        report = netns.traffic("connect", "--host", "::1", "--port", str(CLOSED_PORT))
    [attempt] = report["results"]
    assert attempt["error"] == "ECONNREFUSED"
    [event] = only(trace.events("kernel.tcp.connect", netns.inode), network_data__src_port=attempt["sport"])
    validate(event)
    assert event["network_data"]["family"] == "ipv6"
    assert event["network_data"]["src_ip"] == "::1" and event["network_data"]["dst_ip"] == "::1"
    assert event["error"]["code"] == "ECONNREFUSED"
    assert event["correlation_keys"] == [f"[::1]:{attempt['sport']}->[::1]:{CLOSED_PORT}"]
    check_rung(pick, [event])


def test_self_filter_hides_jalkis_own_connections(tmp_path: Path) -> None:
    server = subprocess.Popen([sys.executable, str(Path(__file__).with_name("traffic.py")), "serve"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        import json

        port = json.loads(server.stdout.readline())["port"]
        with tracing(tcp_probes("tcp_connect"), ProbeOptions(filter_port=port)) as trace:
            own = socket.create_connection(("127.0.0.1", port))
            own_port = own.getsockname()[1]
            own.close()
            other = subprocess.run(
                [sys.executable, str(Path(__file__).with_name("traffic.py")), "client", "--port", str(port)],
                capture_output=True, text=True, check=True)
        other_report = json.loads(other.stdout)
    finally:
        server.kill()
        server.wait()
    connects = trace.events("kernel.tcp.connect")
    assert [e["process_data"]["pid"] for e in connects] == [other_report["pid"]]
    assert not only(connects, network_data__src_port=own_port)
    assert os.getpid() not in {e["process_data"]["pid"] for e in connects}


def test_sampling_keeps_about_half_and_counts_the_rest(netns: NetNs) -> None:
    attempts = 400
    options = ProbeOptions(sample_rate=0.5, filter_port=CLOSED_PORT)
    with tracing(tcp_probes("tcp_connect"), options) as trace:
        report = netns.traffic("connect", "--port", str(CLOSED_PORT), "--count", str(attempts))
    assert all(r["error"] == "ECONNREFUSED" for r in report["results"])
    kept = len(trace.events("kernel.tcp.connect", netns.inode))
    assert trace.summary is not None
    [stats] = trace.summary.probes
    sampled = stats.kernel_drops["sampled"]
    assert kept + sampled == attempts
    assert 120 <= kept <= 280, (kept, sampled)
    assert stats.dropped == sampled


@pytest.fixture(scope="module")
def broken_object(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from jalki_core.bpf_build import compile_source

    out = tmp_path_factory.mktemp("bpf") / "broken_probe.bpf.o"
    return compile_source(Path(__file__).with_name("bpf") / "broken_probe.bpf.c", out)


def make_broken_probe(path: Path) -> Probe:
    class BrokenProbe(Probe):
        name = "broken_probe"
        observes = "nothing that works"
        event_types = ("kernel.test.broken",)
        bpf_object = FileResource(path)
        ring_buffer_bytes = 1 << 16
        layout = RecordLayout("broken_event", "<Q", ("value",), 8)
        ladder = (
            AttachRung("verifier_reject", ("bad_verifier",)),
            AttachRung("missing_tracepoint", ("missing_tracepoint",)),
        )

        def decode(self, batch: bytes, ctx: EventContext) -> list[Event]:
            return []

    return BrokenProbe()


def test_probe_failing_every_rung_is_reported_and_others_keep_running(netns: NetNs, broken_object: Path) -> None:
    probes = [make_broken_probe(broken_object), *tcp_probes("tcp_connect")]
    with tracing(probes) as trace:
        assert trace.session.attached == ["tcp_connect"]
        report = netns.traffic("connect", "--port", str(CLOSED_PORT))
    assert trace.summary is not None
    broken = next(p for p in trace.summary.probes if p.name == "broken_probe")
    assert broken.rung is None and broken.error and "every attach rung failed" in broken.error
    verifier, attach = broken.failed_rungs
    assert verifier.rung == "verifier_reject" and verifier.stage == "load" and verifier.errno_name.startswith("E")
    assert verifier.log_excerpt, "the verifier's words should be quoted"
    assert attach.rung == "missing_tracepoint" and attach.stage == "attach" and attach.errno_name == "ENOENT"
    [event] = only(trace.events("kernel.tcp.connect", netns.inode),
                   network_data__src_port=report["results"][0]["sport"])
    assert event["error"]["code"] == "ECONNREFUSED"


def test_strict_makes_a_failing_probe_fatal(broken_object: Path) -> None:
    with pytest.raises(AttachLadderExhausted), tracing([make_broken_probe(broken_object)], strict=True):
        pass


def test_ladder_keeps_the_best_rung_the_kernel_allows() -> None:
    """fexit where the kernel allows it; here (fentry refused with EPERM) the tp_btf rung, with the reason kept."""
    from jalki_core.cli.doctor import try_attach_type

    fexit_usable, _ = try_attach_type("doctor_fexit")
    with tracing(tcp_probes("tcp_connect")) as trace:
        pass
    assert trace.summary is not None
    [stats] = trace.summary.probes
    if fexit_usable:
        assert stats.rung == "fexit" and not stats.failed_rungs
    else:
        assert stats.rung == "tp_btf"
        [failure] = stats.failed_rungs
        assert failure.rung == "fexit" and failure.stage == "load" and failure.errno_name == "EPERM"
