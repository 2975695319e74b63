"""Kubernetes filters (``pod``, ``namespace``, ``container``, ``workload``): the protocol's checks, the matching of
decoded events, the raw-JSON pre-filter of the rings, the history and the subscriptions (exactly the decoded
filter's result), and the CLI's one-line refusals."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from jalki_core.cli.options import check_k8s_filters
from jalki_core.daemon.protocol import EventFilter, parse_filter
from jalki_core.daemon.store import EventRings, History, HistoryLimits, RawFilter, encode_events, event_stamps
from jalki_core.errors import ProtocolError, UsageError


def event(pid: int, k8s: dict[str, Any] | None, stamp_ns: int = 0) -> dict[str, Any]:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(stamp_ns // 1_000_000_000))
    result: dict[str, Any] = {
        "id": f"e{pid}", "timestamp": f"{stamp}.{stamp_ns % 1_000_000_000:09d}Z", "source": "jalki/tcp_connect",
        "type": "kernel.tcp.connect", "severity": "error", "process_data": {"pid": pid, "command": "curl"},
        "network_data": {"dst_ip": "10.0.3.4", "dst_port": 5432},
    }
    if k8s is not None:
        result["k8s"] = k8s
    return result


CHECKOUT = {"k8s.pod.name": "checkout-7f9c", "k8s.pod.uid": "0" * 32, "k8s.namespace.name": "payments",
            "k8s.container.name": "app", "k8s.replicaset.name": "checkout-7f9c8d",
            "k8s.deployment.name": "checkout"}
LEDGER = {"k8s.pod.name": "ledger-0", "k8s.pod.uid": "1" * 32, "k8s.namespace.name": "payments",
          "k8s.container.name": "db", "k8s.statefulset.name": "ledger"}
NIGHTLY = {"k8s.pod.name": "nightly-29160000-abcde", "k8s.pod.uid": "2" * 32, "k8s.namespace.name": "batch",
           "k8s.container.name": "app", "k8s.job.name": "nightly-29160000", "k8s.cronjob.name": "nightly"}
# a decoy: the names appear, but not under the keys a filter compares
DECOY = {"k8s.pod.uid": "3" * 32, "jalki.k8s.unresolved": True}
EVENTS = [event(1, CHECKOUT), event(2, LEDGER), event(3, NIGHTLY), event(4, None), event(5, DECOY),
          {**event(6, None), "data": {"k8s.pod.name": "checkout-7f9c", "k8s.deployment.name": "checkout"}}]

CASES: list[tuple[dict[str, Any], set[int]]] = [
    ({"pod": "checkout-7f9c"}, {1}),
    ({"namespace": "payments"}, {1, 2}),
    ({"namespace": "payments", "container": "db"}, {2}),
    ({"container": "app"}, {1, 3}),
    ({"workload": "checkout"}, {1}),  # the Deployment, by name
    ({"workload": "checkout-7f9c8d"}, {1}),  # its ReplicaSet, by name
    ({"workload": "deployment/checkout"}, {1}),
    ({"workload": "Deployment/checkout"}, {1}),  # the kind in any case
    ({"workload": "statefulset/checkout"}, set()),
    ({"workload": "ledger"}, {2}),
    ({"workload": "cronjob/nightly"}, {3}),
    ({"workload": "job/nightly-29160000"}, {3}),
    ({"workload": "job/nightly"}, set()),
    ({"pod": "ledger-0", "workload": "checkout"}, set()),
    ({"pod": "nope"}, set()),
    ({"pod": "checkout-7f9c", "pid": 1, "dst_port": 5432}, {1}),
    ({"pod": "checkout-7f9c", "pid": 2}, set()),
]


@pytest.mark.parametrize(("fields", "pids"), CASES)
def test_decoded_and_raw_filters_match_exactly_the_events_of_those_names(fields: dict[str, Any],
                                                                         pids: set[int]) -> None:
    where = parse_filter(fields)
    assert {e["process_data"]["pid"] for e in EVENTS if where.matches(e)} == pids
    raw_filter = RawFilter(where)
    assert raw_filter.decode
    for item in EVENTS:
        raw = orjson.dumps(item)
        passes = raw_filter.candidate(raw) and raw_filter.confirm(raw) is not None
        assert passes == where.matches(item), item
        if where.matches(item):
            assert raw_filter.candidate(raw)  # the pre-filter never drops a match


def test_events_without_a_k8s_object_never_match_a_k8s_filter() -> None:
    for fields in ({"pod": "checkout-7f9c"}, {"namespace": "payments"}, {"container": "app"},
                   {"workload": "checkout"}):
        where = parse_filter(fields)
        assert not where.matches(event(4, None))
        assert not where.matches({**event(4, None), "k8s": "checkout-7f9c"})  # not an object
    assert EventFilter().matches(event(4, None)) and not EventFilter().has_k8s


def test_the_rings_and_the_history_answer_a_k8s_filter_like_the_decoded_filter(tmp_path: Path) -> None:
    now = time.time_ns()
    # many events, so the rings seal blocks (the pre-filter then runs on compressed blocks too)
    events = [event(n, (CHECKOUT, LEDGER, NIGHTLY, None, DECOY)[n % 5], now - (1000 - n) * 1_000_000)
              for n in range(1, 1001)]
    raws = encode_events(events)
    stamps = event_stamps(events)
    rings = EventRings(capacity=5000)
    rings.add("jalki/tcp_connect", stamps, raws, first_seq=1)
    history = History(tmp_path / "h.db", HistoryLimits())
    history.start()
    try:
        history.add("tcp_connect", events, stamps, raws, first_seq=1)
        deadline = time.monotonic() + 30
        while history.written < len(events):
            assert time.monotonic() < deadline, history.stats()
            time.sleep(0.05)
        for fields, _ in CASES:
            where = parse_filter({key: value for key, value in fields.items() if key not in ("pid",)})
            expected = [e for e in events if where.matches(e)]
            assert rings.query(where, limit=10_000) == expected, fields
            assert history.query(where, since_ns=None, limit=10_000) == expected, fields
            after = [orjson.loads(raw) for _, raw in rings.after(where, 0, None, 10_000)]
            assert [{k: v for k, v in e.items() if k != "seq"} for e in after] == expected, fields
            assert [seq for seq, _ in history.after(where, 0, None, 10_000)] == \
                [events.index(e) + 1 for e in expected], fields
    finally:
        history.close()


@pytest.mark.parametrize(("fields", "message"), [
    ({"pod": ""}, "field 'pod' must not be empty"),
    ({"namespace": "Payments"}, "field 'namespace' must be a Kubernetes name (a DNS label"),
    ({"namespace": "a.b"}, "field 'namespace' must be a Kubernetes name"),
    ({"container": "x" * 64}, "at most 63 characters"),
    ({"pod": "x" * 254}, "at most 253 characters"),
    ({"workload": "pod/checkout"}, "field 'workload' kind 'pod' is not one of deployment, statefulset"),
    ({"workload": "deployment/"}, "field 'workload' must be NAME or KIND/NAME"),
    ({"workload": "/checkout"}, "field 'workload' must be NAME or KIND/NAME"),
    ({"workload": "a/b/c"}, "field 'workload' must be NAME or KIND/NAME"),
    ({"pod": 5}, "field 'pod' must be a string"),
])
def test_a_name_no_kubernetes_object_can_have_is_bad_request(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_filter(fields)
    assert caught.value.code == "bad_request" and message in caught.value.message, caught.value.message


def test_filters_are_echoed_with_the_kind_in_lower_case() -> None:
    assert parse_filter({"workload": "StatefulSet/ledger", "pod": "ledger-0"}).as_dict() == \
        {"pod": "ledger-0", "workload": "statefulset/ledger"}
    assert parse_filter({"namespace": "payments"}).describe_k8s() == "namespace payments"


@pytest.mark.parametrize(("options", "message"), [
    ({"pod": ""}, "--pod must not be empty"),
    ({"workload": "cronjobs/nightly"}, "--workload kind 'cronjobs' is not one of"),
    ({"namespace": "kube_system"}, "--namespace must be a Kubernetes name"),
])
def test_the_cli_refuses_a_bad_name_in_one_line(options: dict[str, str], message: str) -> None:
    values: dict[str, str | None] = {"pod": None, "namespace": None, "container": None, "workload": None}
    with pytest.raises(UsageError) as caught:
        check_k8s_filters(**{**values, **options})
    assert message in caught.value.message and "\n" not in caught.value.message
