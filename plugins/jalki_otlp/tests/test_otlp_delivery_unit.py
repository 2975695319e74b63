"""The delivery core and the otlp emitter's parts, without a kernel: backoff, retry classification, the
retry loop on a fake clock, selection and rate limit, the OTLP config and encoding."""

from __future__ import annotations

import gzip
from typing import Any

import pytest
from jalki_otlp import make_emitter
from jalki_otlp.config import parse_config
from jalki_otlp.encode import export_request
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from jalki_core.emitters.base import EventBatch
from jalki_core.emitters.delivery import (
    DeliveryEmitter,
    DeliverySettings,
    DeliveryWorker,
    RetryPolicy,
    classify_http_status,
    parse_retry_after,
    retryable_grpc_code,
)
from jalki_core.emitters.selection import RateLimit, Selection, take_selection
from jalki_core.errors import RejectedSendError, RetryableSendError, UsageError
from jalki_core.events import Event, timestamp_ns


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class ScriptedSender(DeliveryEmitter):
    """Answers each send with the next item: an exception to raise, or a number of rejected events."""

    name = "scripted"

    def __init__(self, script: list[Any], settings: DeliverySettings, clock: FakeClock | None = None,
                 takes: float = 0.0) -> None:
        super().__init__(settings)
        self.script = script
        self.calls: list[tuple[int, float | None]] = []
        self.clock, self.takes = clock, takes

    def send(self, events: list[Event], time_left: float | None) -> int:
        self.calls.append((len(events), time_left))
        if self.clock is not None:
            self.clock.now += self.takes
        step = self.script.pop(0) if self.script else 0
        if isinstance(step, BaseException):
            raise step
        return int(step)


def worker(script: list[Any], clock: FakeClock, takes: float = 0.0, **settings: Any) -> DeliveryWorker:
    sender = ScriptedSender(script, DeliverySettings(**settings), clock, takes)
    return DeliveryWorker(sender, clock=clock, sleep=clock.sleep, draw=lambda: 0.0)


def events(n: int) -> list[Event]:
    return [{"id": f"r-p-{i}", "type": "kernel.tcp.connect", "severity": "info"} for i in range(n)]


# ---- classification -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "verdict"), [(200, "ok"), (204, "ok"), (408, "retry"), (429, "retry"),
                                                 (502, "retry"), (503, "retry"), (504, "retry"), (400, "reject"),
                                                 (401, "reject"), (404, "reject"), (413, "reject"),
                                                 (500, "reject"), (501, "reject")])
def test_http_status_classification(status: int, verdict: str) -> None:
    assert classify_http_status(status) == verdict


def test_grpc_codes() -> None:
    assert retryable_grpc_code("UNAVAILABLE") and retryable_grpc_code("resource_exhausted")
    assert not retryable_grpc_code("INVALID_ARGUMENT") and not retryable_grpc_code("PERMISSION_DENIED")


def test_retry_after_seconds_and_date() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412490.0) == 0.0  # in the past
    assert parse_retry_after("99999999") == 3600.0


# ---- backoff ----------------------------------------------------------------------------------------------


def test_backoff_grows_exponentially_capped_with_jitter_below() -> None:
    policy = RetryPolicy(initial_backoff=0.5, max_backoff=4.0, multiplier=2.0, jitter=0.5)
    assert [policy.backoff(n, 0.0) for n in range(1, 6)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert policy.backoff(3, 0.999999) == pytest.approx(1.0, rel=1e-5)  # jitter only shortens, by half at most


def test_next_delay_bounds_attempts_elapsed_and_honours_retry_after() -> None:
    policy = RetryPolicy(initial_backoff=1.0, max_backoff=10.0, max_attempts=3, max_elapsed=20.0)
    assert policy.next_delay(1, 0.0, None, 0.0) == 1.0
    assert policy.next_delay(2, 1.0, 8.0, 0.0) == 8.0  # Retry-After longer than the backoff wins
    assert policy.next_delay(3, 9.0, None, 0.0) is None  # max_attempts tries made
    assert policy.next_delay(1, 0.0, 25.0, 0.0) is None  # the receiver asks to wait past max_elapsed
    assert policy.next_delay(2, 19.5, None, 0.0) is None


# ---- the retry loop on a fake clock ------------------------------------------------------------------------


def test_retries_until_success_with_backoff_and_retry_after() -> None:
    clock = FakeClock()
    w = worker([RetryableSendError("503", retry_after=3.0), RetryableSendError("refused"), 0], clock,
               initial_backoff=0.5)
    assert w.deliver(events(10)) is None
    assert w.stats.events_emitted == 10 and w.stats.retries == 2 and w.stats.events_dropped == 0
    assert clock.slept == [3.0, 1.0]  # Retry-After 3 s, then the second backoff step
    assert w.stats.failing_since is None and w.stats.last_success is not None


def test_retry_exhausted_after_max_attempts() -> None:
    clock = FakeClock()
    w = worker([RetryableSendError("503")] * 10, clock, max_attempts=4)
    assert w.deliver(events(7)) == "retry_exhausted"
    sender = w.sender
    assert isinstance(sender, ScriptedSender) and len(sender.calls) == 4
    assert w.stats.drops_by_cause["retry_exhausted"] == 7 and w.stats.retries == 3 and w.stats.errors == 1
    assert w.as_dict()["failing_for_s"] == pytest.approx(clock.now - 1000.0)


def test_retry_exhausted_by_max_elapsed() -> None:
    clock = FakeClock()
    # every try takes 4 s (a slow receiver timing out): the third try would start past 10 s
    w = worker([RetryableSendError("timeout")] * 10, clock, takes=4.0, max_elapsed=10.0, max_attempts=100,
               initial_backoff=1.0)
    assert w.deliver(events(3)) == "retry_exhausted"
    assert w.stats.retry_exhausted == 3 and w.stats.retries == 1


def test_rejected_and_partial_success_counted() -> None:
    clock = FakeClock()
    w = worker([RejectedSendError("HTTP 400"), 2], clock)
    assert w.deliver(events(5)) == "rejected"
    assert w.deliver(events(6)) == "rejected"
    assert w.stats.rejected == 5 + 2 and w.stats.events_emitted == 4 and w.stats.retries == 0


def test_bug_in_sender_is_sink_error() -> None:
    clock = FakeClock()
    w = worker([ValueError("bug")], clock)
    assert w.deliver(events(4)) == "sink_error"
    assert w.stats.drops_by_cause["sink_error"] == 4


def test_shutdown_deadline_cuts_a_backoff_and_counts_shutdown() -> None:
    clock = FakeClock()
    w = worker([RetryableSendError("503", retry_after=10.0)] * 3, clock, max_elapsed=60.0)
    w._deadline = clock.now + 5.0  # a stop with 5 s to drain
    assert w.deliver(events(9)) == "shutdown"
    sender = w.sender
    assert isinstance(sender, ScriptedSender) and sender.calls == [(9, 5.0)]  # told the time left
    assert w.stats.shutdown == 9 and w.stats.retry_exhausted == 0


def test_worker_thread_batches_and_counts_queue_full_and_shutdown() -> None:
    # a real thread: the receiver refuses everything, the queue holds 20 events; at stop (0 s to drain)
    # everything queued or in flight is counted, and nothing is counted twice
    sender = ScriptedSender([RetryableSendError("503")] * 1000, DeliverySettings(
        batch_events=5, batch_age=0.01, queue_events=20, initial_backoff=0.01, max_backoff=0.01,
        max_attempts=1000, max_elapsed=1000.0))
    w = DeliveryWorker(sender)
    w.start()
    produced = 0
    for _ in range(30):
        w.submit(EventBatch(events(3)))
        produced += 3
    w.stop(0.0)
    drops = w.as_dict()["dropped_by_reason"]
    assert isinstance(drops, dict)
    assert drops["queue_full"] > 0 and drops["shutdown"] > 0
    assert w.stats.events_emitted + sum(drops.values()) == produced
    assert all(n <= 5 for n, _ in sender.calls)


# ---- selection and rate limit ------------------------------------------------------------------------------


def test_selection_by_type_glob_skip_and_severity() -> None:
    selection, rest = take_selection("http://x:4318,types=kernel.tcp.*|kernel.process.exit,"
                                     "skip_types=kernel.tcp.rtt*,min_severity=warning,header=a=b")
    assert rest == "http://x:4318,header=a=b" and selection is not None
    batch = [{"type": "kernel.tcp.connect", "severity": "error"},
             {"type": "kernel.tcp.connect", "severity": "info"},
             {"type": "kernel.tcp.rtt_high", "severity": "critical"},
             {"type": "kernel.process.exit", "severity": "warning"},
             {"type": "kernel.fs.open", "severity": "critical"}]
    kept, filtered, limited = selection.select(batch)
    assert kept == [batch[0], batch[3]] and filtered == 3 and limited == 0


def test_rate_limit_token_bucket_on_fake_clock() -> None:
    clock = FakeClock()
    selection = Selection(rate=RateLimit(10.0, clock=clock))
    kept, _, limited = selection.select(events(25))
    assert len(kept) == 10 and limited == 15  # a burst of one second's worth
    clock.now += 0.5
    kept, _, limited = selection.select(events(10))
    assert len(kept) == 5 and limited == 5
    clock.now += 100.0  # the bucket holds one second's worth at most
    kept, _, limited = selection.select(events(30))
    assert len(kept) == 10 and limited == 20


@pytest.mark.parametrize("argument", ["x,types=", "x,min_severity=loud", "x,rate=0/s", "x,rate=fast", "x,novalue"])
def test_bad_selection_options_are_one_line(argument: str) -> None:
    with pytest.raises(UsageError):
        take_selection(argument)


def test_stdout_selection_without_target() -> None:
    selection, rest = take_selection("min_severity=error")
    assert rest is None and selection is not None and selection.min_severity == "error"


# ---- otlp config ---------------------------------------------------------------------------------------


def test_config_from_env_and_options() -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/", "OTEL_EXPORTER_OTLP_HEADERS": "x-org=a%20b",
           "OTEL_EXPORTER_OTLP_TIMEOUT": "2500", "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip"}
    config = parse_config(None, [], env)
    assert config.url == "http://collector:4318/v1/logs" and config.headers == {"x-org": "a b"}
    assert config.timeout_s == 2.5 and config.gzip
    config = parse_config(None, [], {**env, "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": "https://c:4318/custom/logs"})
    assert config.url == "https://c:4318/custom/logs"  # the signal's own endpoint is used as is
    config = parse_config("http://127.0.0.1:9999", [("timeout", "1s"), ("compression", "none"),
                                                     ("max_attempts", "3")], env)
    assert config.url == "http://127.0.0.1:9999/v1/logs" and config.timeout_s == 1.0 and not config.gzip
    assert config.settings.max_attempts == 3
    assert parse_config(None, [], {}).url == "http://localhost:4318/v1/logs"


def test_credentials_in_plain_text_to_a_remote_host_are_refused() -> None:
    with pytest.raises(UsageError, match="plain text"):
        make_emitter("http://10.0.0.5:4318,header=Authorization=Bearer t")
    with pytest.raises(UsageError, match="plain text"):
        parse_config(None, [], {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
                                "OTEL_EXPORTER_OTLP_HEADERS": "api-key=s"})
    assert make_emitter("http://10.0.0.5:4318,header=Authorization=Bearer t,allow_insecure=true")
    assert make_emitter("https://10.0.0.5:4318,header=Authorization=Bearer t")
    assert make_emitter("http://127.0.0.1:4318,header=Authorization=Bearer t")
    assert make_emitter("http://10.0.0.5:4318,header=X-Scope-OrgID=tenant")  # not a credential


@pytest.mark.parametrize("argument", ["ftp://x:1", "http://:4318", "http://x:99999", "http://x:1,colour=red",
                                      "http://x:1,compression=zstd", "http://x:1,timeout=-1"])
def test_bad_otlp_arguments(argument: str) -> None:
    with pytest.raises(UsageError):
        make_emitter(argument)


def test_grpc_protocol_is_refused_with_the_fix() -> None:
    with pytest.raises(UsageError, match="http/protobuf"):
        parse_config(None, [], {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})


# ---- encoding -----------------------------------------------------------------------------------------


def test_encoding_semconv_attributes_resource_and_time() -> None:
    event = {"id": "ab12-tcp_connect-7", "timestamp": "2025-01-02T03:04:05.123456789Z", "source": "jalki/tcp_connect",
             "type": "kernel.tcp.connect", "severity": "warning", "outcome": "failure", "cluster": "prod",
             "node": "n1", "attach": "tp_btf",
             "network_data": {"src_ip": "10.0.0.1", "dst_ip": "10.0.0.2", "src_port": 40000, "dst_port": 9,
                              "protocol": "tcp", "family": "ipv4", "netns": 4026531840},
             "process_data": {"pid": 42, "command": "curl", "cgroup_id": 18446744073709551615},
             "error": {"code": "ECONNREFUSED", "message": "Connection refused"},
             "data": {"latency_ns": 1500, "tcp_state": None}}
    raw = export_request([event], observed_ns=5).SerializeToString()
    request = ExportLogsServiceRequest()
    request.ParseFromString(gzip.decompress(gzip.compress(raw)))
    [resource] = request.resource_logs
    res = {kv.key: kv.value.string_value for kv in resource.resource.attributes}
    assert res["service.name"] == "jalki" and res["host.name"] == "n1" and res["k8s.cluster.name"] == "prod"
    assert res["service.version"]
    [scope] = resource.scope_logs
    assert scope.scope.name == "jalki/tcp_connect"
    [record] = scope.log_records
    assert record.time_unix_nano == timestamp_ns(event["timestamp"]) and record.observed_time_unix_nano == 5
    assert record.severity_number == 13 and record.event_name == "kernel.tcp.connect"
    assert record.body.string_value == "kernel.tcp.connect 10.0.0.1:40000 -> 10.0.0.2:9 pid 42 (curl) ECONNREFUSED"
    attrs = {kv.key: kv.value for kv in record.attributes}
    assert attrs["network.peer.address"].string_value == "10.0.0.2"
    assert attrs["network.peer.port"].int_value == 9
    assert attrs["network.local.port"].int_value == 40000
    assert attrs["network.transport"].string_value == "tcp" and attrs["network.type"].string_value == "ipv4"
    assert attrs["process.pid"].int_value == 42 and attrs["process.command"].string_value == "curl"
    assert attrs["error.type"].string_value == "ECONNREFUSED"
    assert attrs["jalki.error.message"].string_value == "Connection refused"
    assert attrs["jalki.event.id"].string_value == "ab12-tcp_connect-7"
    assert attrs["jalki.network_data.netns"].int_value == 4026531840
    assert attrs["jalki.process_data.cgroup_id"].string_value == "18446744073709551615"  # past int64: text
    assert attrs["jalki.latency_ns"].int_value == 1500 and "jalki.tcp_state" not in attrs  # nulls left out
    assert attrs["jalki.outcome"].string_value == "failure" and attrs["jalki.attach"].string_value == "tp_btf"
