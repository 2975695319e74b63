"""Opt-in exact owner lookups: the real lightkube client GETs ReplicaSets and Jobs from the fake API server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fake_apiserver import FakeApiServer, make_owned, make_pod
from jalki_k8s.owners import OwnerLookup, owner_lookup_from_env
from jalki_k8s.pods import PodIndex, PodInfo
from jalki_k8s.watch import PodWatcher
from lightkube import KubeConfig

from jalki_core.errors import UsageError
from jalki_core.testing import wait_for

NODE = "node-o"
UIDS = [f"3333333{i}-2222-4333-8444-55555555555{i}" for i in range(5)]



@pytest.fixture
def server() -> Iterator[FakeApiServer]:
    fake = FakeApiServer().start()
    # A ReplicaSet whose name does not end in the pod-template-hash (made by a tool, renamed, adopted):
    fake.put(make_owned("ReplicaSet", "frontend-blue", namespace="shop", controller=("Deployment", "frontend")))
    # A Job whose name is not <cronjob>-<minute>:
    fake.put(make_owned("Job", "backup-manual-run", namespace="ops", controller=("CronJob", "nightly-backup")))
    # A ReplicaSet that looks like a Deployment's by name, but has no controller:
    fake.put(make_owned("ReplicaSet", "lonely-5d8f9c", namespace="shop"))
    yield fake
    fake.stop()


def pods() -> list[dict[str, object]]:
    return [
        make_pod("frontend-blue-x1", uid=UIDS[0], namespace="shop", node=NODE, owner=("ReplicaSet", "frontend-blue"),
                 labels={"pod-template-hash": "7c9d8b"}),
        make_pod("backup-manual-run-q", uid=UIDS[1], namespace="ops", node=NODE, owner=("Job", "backup-manual-run")),
        make_pod("lonely-5d8f9c-z", uid=UIDS[2], namespace="shop", node=NODE, owner=("ReplicaSet", "lonely-5d8f9c"),
                 labels={"pod-template-hash": "5d8f9c"}),
        # a ReplicaSet the server does not have: the lookup fails (404), the name-based guess stays
        make_pod("gone-6b7c8d-y", uid=UIDS[3], namespace="shop", node=NODE, owner=("ReplicaSet", "gone-6b7c8d"),
                 labels={"pod-template-hash": "6b7c8d"}),
    ]


def watch(server: FakeApiServer, owners: OwnerLookup | None) -> tuple[PodIndex, PodWatcher]:
    """A started watcher, once the first list is in and the owner lookups it started have answered."""
    index = PodIndex()
    watcher = PodWatcher(index, NODE, config=KubeConfig.from_dict(server.kubeconfig()), owners=owners)
    watcher.start()
    wait_for(watcher.synced.is_set, "the first list")
    wait_for(lambda: watcher.lookups_pending == 0, "the lookups of the listed pods")
    return index, watcher


def info(index: PodIndex, i: int) -> PodInfo:
    found, _ = index.lookup(UIDS[i], None)
    assert found is not None
    return found


def workload(index: PodIndex, i: int) -> dict[str, str]:
    return {k: v for k, v in info(index, i).attributes.items()
            if k.split(".")[1] in ("replicaset", "deployment", "job", "cronjob")}


def test_lookups_on_name_the_deployment_and_cronjob_whatever_the_names(server: FakeApiServer) -> None:
    listed = pods()
    for pod in listed[:2]:
        server.add(pod)
    owners = OwnerLookup()
    index, watcher = watch(server, owners)
    try:
        for pod in listed[2:]:  # through the watch, not the list
            server.add(pod)
        wait_for(lambda: index.lookup(UIDS[3], None)[0] is not None, "the watched pods")
        server.modify(listed[0])  # a MODIFIED pod: answered from the cache, no second GET
        wait_for(lambda: watcher.stats.events >= 3, "the modification")
        wait_for(lambda: watcher.lookups_pending == 0, "the lookups of the watched pods")
    finally:
        watcher.close()
    assert workload(index, 0) == {"k8s.replicaset.name": "frontend-blue", "k8s.deployment.name": "frontend"}
    assert workload(index, 1) == {"k8s.job.name": "backup-manual-run", "k8s.cronjob.name": "nightly-backup"}
    # exact: a ReplicaSet without a controller names no Deployment, though its name fits the pattern
    assert workload(index, 2) == {"k8s.replicaset.name": "lonely-5d8f9c"}
    # a failed lookup keeps the guess from the pod alone
    assert workload(index, 3) == {"k8s.replicaset.name": "gone-6b7c8d", "k8s.deployment.name": "gone"}
    assert sorted(server.gets("replicasets")) == sorted(
        f"/apis/apps/v1/namespaces/shop/replicasets/{name}" for name in ("frontend-blue", "lonely-5d8f9c",
                                                                          "gone-6b7c8d"))
    assert server.gets("jobs") == ["/apis/batch/v1/namespaces/ops/jobs/backup-manual-run"]
    stats = owners.stats
    assert (stats.requests, stats.exact, stats.no_controller, stats.not_found) == (4, 2, 1, 1)
    assert stats.cache_hits >= 1 and stats.forbidden == stats.errors == 0


def test_lookups_off_send_no_request_for_replicasets_or_jobs(server: FakeApiServer) -> None:
    for pod in pods():
        server.add(pod)
    index, watcher = watch(server, None)
    watcher.close()
    assert server.gets("replicasets") == [] and server.gets("jobs") == []
    assert all(r["path"] == "/api/v1/pods" for r in server.requests)
    # the names alone: the hash decides, the Job name is not <cronjob>-<minute>
    assert workload(index, 0) == {"k8s.replicaset.name": "frontend-blue"}
    assert workload(index, 1) == {"k8s.job.name": "backup-manual-run"}
    assert workload(index, 2) == {"k8s.replicaset.name": "lonely-5d8f9c", "k8s.deployment.name": "lonely"}


def test_forbidden_lookups_keep_the_guess_are_counted_and_said_once(server: FakeApiServer,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    server.forbidden |= {"replicasets", "jobs"}
    listed = pods()
    for pod in listed:
        server.add(pod)
    owners = OwnerLookup()
    index, watcher = watch(server, owners)
    watcher.close()
    assert workload(index, 2) == {"k8s.replicaset.name": "lonely-5d8f9c", "k8s.deployment.name": "lonely"}
    assert owners.stats.forbidden == 4 and owners.stats.exact == 0
    said = [r.getMessage() for r in caplog.records if "403" in r.getMessage()]
    assert len(said) == 1 and "--owner-lookup" in said[0]


def test_the_cache_is_bounded_and_failures_expire_sooner(server: FakeApiServer) -> None:
    import asyncio

    from lightkube import AsyncClient

    now = [0.0]
    owners = OwnerLookup(ttl_s=100.0, failure_ttl_s=5.0, max_entries=2, clock=lambda: now[0])

    async def ask(*which: int) -> list[dict[str, str]]:
        client = AsyncClient(config=KubeConfig.from_dict(server.kubeconfig()))
        try:
            return [await owners.attributes(client, pods()[i]) for i in which]
        finally:
            await client.close()

    first = asyncio.run(ask(0, 1, 2, 3))
    assert first[0]["k8s.deployment.name"] == "frontend" and owners.stats.requests == 4
    assert owners.stats.evicted == 2  # four answers, room for the last two (lonely's, gone's failure)
    now[0] = 10.0  # gone-6b7c8d's failure (404) has expired, lonely-5d8f9c's answer has not
    asyncio.run(ask(2, 3))
    assert (owners.stats.cache_hits, owners.stats.requests, owners.stats.not_found) == (1, 5, 2)
    asyncio.run(ask(0))  # evicted: asked again
    assert owners.stats.requests == 6


def test_env_switch_values() -> None:
    assert owner_lookup_from_env("1") and owner_lookup_from_env(" True ") and owner_lookup_from_env("on")
    assert not owner_lookup_from_env(None) and not owner_lookup_from_env("") and not owner_lookup_from_env("0")
    with pytest.raises(ValueError, match="JALKI_K8S_OWNER_LOOKUP='maybe'"):
        owner_lookup_from_env("maybe")


def test_a_bad_env_value_is_one_usage_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from jalki_k8s.plugin import make_enricher

    from jalki_core.enrich import EnricherOptions

    monkeypatch.setenv("JALKI_K8S_OWNER_LOOKUP", "maybe")
    with pytest.raises(UsageError, match="neither on"):
        make_enricher(EnricherOptions(node_name="n"))



def test_a_stalled_lookup_holds_up_no_other_pod_and_its_answer_replaces_the_guess(server: FakeApiServer) -> None:
    """The watch does not wait for a lookup: a ReplicaSet GET that gets no answer leaves its pod with the
    name-based guess, later pods enter the index meanwhile, and the answer, when it comes, is applied."""
    server.stall.add("frontend-blue")
    owners = OwnerLookup(timeout_s=120.0)  # far beyond this test: the stall is released, not timed out
    index, watcher = watch(server, owners)
    listed = pods()
    try:
        server.add(listed[0])  # its ReplicaSet's GET stalls
        server.add(listed[2])  # a later pod: in the index with its exact owner while the first lookup hangs
        wait_for(lambda: index.lookup(UIDS[2], None)[0] is not None and owners.stats.no_controller == 1,
                 "the later pod and its lookup")
        # the first lookup has not ended (no timeout, no error): the later pod did not wait for it
        assert watcher.lookups_pending == 1 and owners.stats.pending == 1
        assert owners.stats.timeouts == owners.stats.errors == owners.stats.unexpected == 0
        assert workload(index, 0) == {"k8s.replicaset.name": "frontend-blue"}  # the guess, for now
        assert workload(index, 2) == {"k8s.replicaset.name": "lonely-5d8f9c"}
        server.stall.clear()  # the server answers
        wait_for(lambda: watcher.lookups_pending == 0, "the stalled lookup")
    finally:
        watcher.close()
    assert workload(index, 0) == {"k8s.replicaset.name": "frontend-blue", "k8s.deployment.name": "frontend"}
    assert (owners.stats.exact, owners.stats.no_controller, owners.stats.pending) == (1, 1, 0)


def test_a_lookup_past_its_timeout_keeps_the_guess_and_is_counted(server: FakeApiServer) -> None:
    server.stall.add("frontend-blue")  # never released in this test
    owners = OwnerLookup(timeout_s=0.5)
    index, watcher = watch(server, owners)
    try:
        server.add(pods()[0])
        wait_for(lambda: owners.stats.timeouts == 1 and watcher.lookups_pending == 0, "the lookup's timeout")
        server.add(pods()[1])  # the watch goes on
        wait_for(lambda: index.lookup(UIDS[1], None)[0] is not None and watcher.lookups_pending == 0,
                 "the next pod")
    finally:
        watcher.close()
    assert workload(index, 0) == {"k8s.replicaset.name": "frontend-blue"}
    assert workload(index, 1) == {"k8s.job.name": "backup-manual-run", "k8s.cronjob.name": "nightly-backup"}
    assert owners.stats.timeouts == 1 and owners.stats.errors == 0


def test_a_malformed_owner_object_keeps_the_guess_and_does_not_stop_the_watch(server: FakeApiServer) -> None:
    server.put({"kind": "ReplicaSet", "metadata": {"name": "frontend-blue", "namespace": "shop",
                                                   "ownerReferences": "not a list"}})
    owners = OwnerLookup()
    index, watcher = watch(server, owners)
    try:
        server.add(pods()[0])
        server.add(pods()[1])
        wait_for(lambda: index.lookup(UIDS[1], None)[0] is not None, "the pod after the malformed answer")
        wait_for(lambda: watcher.lookups_pending == 0, "the lookups")
    finally:
        watcher.close()
    assert workload(index, 0) == {"k8s.replicaset.name": "frontend-blue"}
    assert workload(index, 1) == {"k8s.job.name": "backup-manual-run", "k8s.cronjob.name": "nightly-backup"}
    assert owners.stats.errors == 1 and watcher.stats.failures == 0


def test_known_answers_from_the_cache_without_a_request(server: FakeApiServer) -> None:
    import asyncio

    from lightkube import AsyncClient

    owners = OwnerLookup()
    pod = pods()[0]
    assert owners.known(pod) is None  # not asked yet
    assert owners.known(make_pod("x", uid=UIDS[4], owner=("StatefulSet", "db"))) == {"k8s.statefulset.name": "db"}

    async def ask() -> dict[str, str]:
        client = AsyncClient(config=KubeConfig.from_dict(server.kubeconfig()))
        try:
            return await owners.attributes(client, pod)
        finally:
            await client.close()

    asked = asyncio.run(ask())
    assert owners.known(pod) == asked == {"k8s.replicaset.name": "frontend-blue", "k8s.deployment.name": "frontend"}
    assert owners.stats.requests == 1
