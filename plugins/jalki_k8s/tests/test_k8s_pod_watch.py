"""The pod watcher drives the real lightkube client over real HTTP against the fake API server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fake_apiserver import FakeApiServer, make_pod
from jalki_k8s.enricher import K8sEnricher
from jalki_k8s.pods import PodIndex
from jalki_k8s.watch import PodWatcher
from lightkube import KubeConfig

from jalki_core.testing import wait_for

NODE = "node-a"
UIDS = [f"1111111{i}-2222-4333-8444-55555555555{i}" for i in range(6)]
CIDS = [f"{i}" * 64 for i in range(6)]



def pod(i: int, *, node: str = NODE, **extra: object) -> dict[str, object]:
    return make_pod(f"web-{i}", uid=UIDS[i], namespace="shop", node=node,
                    containers={"app": f"containerd://{CIDS[i]}"}, **extra)  # type: ignore[arg-type]


@pytest.fixture
def server() -> Iterator[FakeApiServer]:
    fake = FakeApiServer().start()
    yield fake
    fake.stop()


def start_watcher(server: FakeApiServer, index: PodIndex, **options: float) -> PodWatcher:
    watcher = PodWatcher(index, NODE, config=KubeConfig.from_dict(server.kubeconfig()), **options)  # type: ignore[arg-type]
    watcher.start()
    wait_for(watcher.synced.is_set, "the first list")
    return watcher


def known(index: PodIndex, i: int) -> bool:
    info, deleted = index.lookup(UIDS[i], None)
    return info is not None and not deleted


def test_list_then_watch_adds_modifies_deletes_only_this_node(server: FakeApiServer) -> None:
    server.add(pod(0))
    server.add(pod(1, node="node-b"))
    index = PodIndex()
    watcher = start_watcher(server, index)
    try:
        assert known(index, 0) and not known(index, 1)
        [listing] = [r for r in server.requests if "watch" not in r["params"]]
        assert listing["params"]["fieldSelector"] == f"spec.nodeName={NODE}"
        wait_for(lambda: server.watch_count() == 1, "the watch")
        [watch] = [r for r in server.requests if r["params"].get("watch") == "true"]
        assert watch["params"]["allowWatchBookmarks"] == "true"
        assert watch["params"]["resourceVersion"] == watcher.stats.resource_version

        server.add(pod(2))
        wait_for(lambda: known(index, 2), "ADDED pod 2")
        renamed = pod(2)
        renamed["status"]["containerStatuses"][0]["name"] = "main"  # type: ignore[index]
        server.modify(renamed)
        wait_for(lambda: index.lookup(None, CIDS[2])[0] is not None
                 and index.lookup(None, CIDS[2])[0].containers[CIDS[2]][0] == "main",  # type: ignore[union-attr]
                 "MODIFIED pod 2")
        server.delete(UIDS[0])
        wait_for(lambda: index.lookup(UIDS[0], None)[1], "pod 0 deleted")
        info, deleted = index.lookup(None, CIDS[0])  # the tombstone still resolves its container
        assert deleted and info is not None and info.attributes["k8s.pod.name"] == "web-0"
        server.bookmark()
        wait_for(lambda: watcher.stats.bookmarks == 1, "the bookmark")
        assert watcher.stats.resource_version == str(server._rv)
        assert watcher.stats.lists == 1 and watcher.stats.gone == 0
    finally:
        watcher.close()


def test_410_gone_relists_and_buries_pods_deleted_meanwhile(server: FakeApiServer) -> None:
    server.add(pod(0))
    server.add(pod(1))
    index = PodIndex()
    watcher = start_watcher(server, index)
    try:
        wait_for(lambda: server.watch_count() == 1, "the watch")
        # Changes the watch never delivers (lost in a compaction), then 410 on the open stream.
        server.change_quietly("DELETED", pod(0))
        server.change_quietly("ADDED", pod(3))
        server.gone()
        wait_for(lambda: watcher.stats.lists == 2, "the relist after 410")
        assert watcher.stats.gone == 1
        assert known(index, 3) and known(index, 1)
        info, deleted = index.lookup(UIDS[0], None)
        assert deleted and info is not None  # gone from the list: a tombstone, not forgotten
        wait_for(lambda: server.watch_count() == 1, "the new watch")
        server.add(pod(4))
        wait_for(lambda: known(index, 4), "an event on the new watch")
    finally:
        watcher.close()


def test_dropped_connection_resumes_from_the_last_version_without_relisting(server: FakeApiServer) -> None:
    index = PodIndex()
    watcher = start_watcher(server, index)
    try:
        wait_for(lambda: server.watch_count() == 1, "the watch")
        server.add(pod(0))
        wait_for(lambda: known(index, 0), "pod 0")
        version = watcher.stats.resource_version
        server.drop()
        wait_for(lambda: watcher.stats.drops == 1, "the drop noticed")
        server.change_quietly("ADDED", pod(1))  # made while no watch was open: replayed from history
        wait_for(lambda: known(index, 1), "pod 1 replayed on the resumed watch")
        resumed = [r for r in server.requests if r["params"].get("watch") == "true"][-1]
        assert int(resumed["params"]["resourceVersion"]) >= int(version)
        assert watcher.stats.lists == 1  # resumed, not relisted
    finally:
        watcher.close()


def test_silent_stream_relists(server: FakeApiServer) -> None:
    index = PodIndex()
    watcher = start_watcher(server, index, silence_s=1.0)
    try:
        wait_for(lambda: server.watch_count() == 1, "the watch")
        server.silent = True
        server.add(pod(0))  # the stuck stream never tells
        wait_for(lambda: watcher.stats.silent >= 1 and known(index, 0), "the relist after silence")
        assert watcher.stats.lists >= 2
    finally:
        watcher.close()


def test_unreachable_server_says_so_once_and_enriches_nothing(caplog: pytest.LogCaptureFixture) -> None:
    dead = FakeApiServer().start()
    url = dead.url
    config = KubeConfig.from_dict(dead.kubeconfig())
    dead.stop()
    enricher = K8sEnricher(node_name=NODE, config=config)
    enricher.start()
    try:
        wait_for(lambda: enricher.status()["state"] == "unreachable", "the unreachable state")
        wait_for(lambda: enricher.watcher is not None and enricher.watcher.stats.errors >= 2, "a retry")
        lines = [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage()]
        assert len(lines) == 1 and "retrying" in lines[0], (url, lines)
        assert not enricher.ready
    finally:
        enricher.close()


def test_no_kubeconfig_at_all_is_disabled(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", f"{tmp_path}/missing")
    enricher = K8sEnricher(node_name=NODE)
    enricher.start()
    try:
        wait_for(lambda: enricher.status()["state"] == "disabled", "the disabled state")
        assert "no Kubernetes API server configured" in (enricher.status()["problem"] or "")
    finally:
        enricher.close()


def test_an_undecodable_watch_event_is_counted_said_once_and_relisted(server: FakeApiServer,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    """Anything unexpected in the stream must not end the watcher for good (``synced`` would stay set while
    the index goes stale): it is counted, said once, and the pods are listed again."""

    def watches() -> int:  # a watch request is registered for broadcasts before the server reads any other
        return sum(1 for r in list(server.requests) if r["params"].get("watch") == "true")

    server.add(pod(0))
    index = PodIndex()
    watcher = start_watcher(server, index)
    try:
        for round_ in (1, 2):
            wait_for(lambda n=round_: watches() == n, "the watch")
            server.send_line(b"this is not a watch event\n")
            wait_for(lambda n=round_: watcher.stats.failures == n, "the failure")
            server.add(pod(round_))
            wait_for(lambda n=round_: known(index, n), "the pod added after the failure")
    finally:
        watcher.close()
    assert watcher.stats.lists == 3 and known(index, 0)
    said = [r.getMessage() for r in caplog.records if "unexpected" in r.getMessage()]
    assert len(said) == 1 and "DecodeError" in said[0] and "listing them again" in said[0]
