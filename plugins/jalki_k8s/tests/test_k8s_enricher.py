"""K8sEnricher on a cgroup-shaped directory tree: hits, tombstones, the retry buffer, counters, the schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
from fake_apiserver import make_pod
from jalki_k8s.cgroup_index import V1_EXIT_GRACE_S, V1_NEGATIVE_TTL_S, CgroupIndex
from jalki_k8s.enricher import K8S_SCHEMA, UNRESOLVED_KEY, K8sEnricher
from jalki_k8s.pods import PodIndex, owner_attributes

UID = "5b7c1e2a-9d3f-4e8a-b1c6-0f2d3e4a5b6c"
LATE_UID = "6c8d2f3b-0e4a-4f9b-82d7-1a3e4f5b6c7d"
CID, LATE_CID, DOCKER_CID = "c" * 64, "d" * 64, "e" * 64


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def cgroup(root: Path, relative: str) -> int:
    path = root / relative.strip("/")
    path.mkdir(parents=True)
    return path.stat().st_ino


def event(cgroup_id: int, pid: int = 0) -> dict[str, Any]:
    return {"type": "kernel.tcp.connect", "process_data": {"pid": pid, "cgroup_id": cgroup_id}}


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, int]:
    slice_ = f"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID.replace('-', '_')}.slice"
    late = f"kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{LATE_UID.replace('-', '_')}.slice"
    return {
        "app": cgroup(tmp_path, f"{slice_}/cri-containerd-{CID}.scope"),
        "late": cgroup(tmp_path, f"{late}/crio-{LATE_CID}.scope"),
        "docker": cgroup(tmp_path, f"system.slice/docker-{DOCKER_CID}.scope"),
        "host": cgroup(tmp_path, "user.slice/user-0.slice"),
    }


def test_enrich_hit_late_unresolved_tombstone_and_counters(tmp_path: Path, tree: dict[str, int]) -> None:
    clock = Clock()
    pods = PodIndex(clock=clock)
    pods.replace([make_pod("checkout-7f9c-x2", uid=UID, namespace="payments", containers={"app": f"containerd://{CID}"},
                           owner=("ReplicaSet", "checkout-7f9c"), labels={"pod-template-hash": "7f9c"})])
    enricher = K8sEnricher(node_name="node-a", watch=False, pods=pods, clock=clock, retry_s=2.0,
                           cgroups=CgroupIndex(tmp_path, refresh_interval_s=0.0, clock=clock))
    batch = [event(tree["app"]), event(tree["late"]), event(tree["docker"]), event(tree["host"]),
             event(987654321), {"type": "kernel.tcp.retransmit", "network_data": {}}]
    out = enricher.enrich(batch)
    assert len(out) == 5 and enricher.pending == 1  # the unknown pod's event waits
    assert out[0]["k8s"] == {
        "k8s.pod.name": "checkout-7f9c-x2", "k8s.pod.uid": UID, "k8s.namespace.name": "payments",
        "k8s.node.name": "node-a", "k8s.replicaset.name": "checkout-7f9c", "k8s.deployment.name": "checkout",
        "container.id": CID, "k8s.container.name": "app", "container.runtime": "containerd"}
    assert out[1]["k8s"] == {"container.id": DOCKER_CID, "container.runtime": "docker"}
    assert all("k8s" not in e for e in out[2:])

    # The late pod shows up within the retry window: its event comes out resolved with the next batch.
    pods.apply("ADDED", make_pod("db-0", uid=LATE_UID, namespace="payments", containers={"pg": f"cri-o://{LATE_CID}"},
                                 owner=("StatefulSet", "db")))
    [late] = enricher.enrich([])
    assert late["k8s"]["k8s.statefulset.name"] == "db" and late["k8s"]["container.runtime"] == "cri-o"

    # Deleted: still resolved from the tombstone, marked so.
    pods.apply("DELETED", make_pod("checkout-7f9c-x2", uid=UID, namespace="payments"))
    [dying] = enricher.enrich([event(tree["app"])])
    assert dying["k8s"]["k8s.pod.name"] == "checkout-7f9c-x2" and dying["k8s"]["jalki.k8s.pod_deleted"] is True
    assert dying["k8s"]["k8s.container.name"] == "app"  # the last known statuses, not the DELETED object's

    # A pod that never shows up: out after retry_s, marked unresolved with what the cgroup told.
    pods.apply("DELETED", make_pod("db-0", uid=LATE_UID, namespace="payments"))
    clock.now += pods.tombstone_ttl_s + 1
    assert enricher.enrich([event(tree["late"])]) == [] and enricher.pending == 1
    clock.now += 2.0
    [unresolved] = enricher.enrich([])
    assert unresolved["k8s"] == {"k8s.pod.uid": LATE_UID, "container.id": LATE_CID, UNRESOLVED_KEY: True}

    for enriched in (out[0], out[1], late, dying, unresolved):
        jsonschema.validate(enriched["k8s"], K8S_SCHEMA)
    counters = enricher.status()["counters"]
    assert counters == {"hit": 2, "late": 1, "unresolved": 1, "miss": 1, "host_process": 1, "container_only": 1,
                        "api_unavailable": 0, "no_process": 1, "tombstone": 1, "pending_overflow": 0}


def test_full_buffer_lets_the_oldest_out_unresolved_and_flush_empties_it(tmp_path: Path,
                                                                        tree: dict[str, int]) -> None:
    clock = Clock()
    enricher = K8sEnricher(node_name="n", watch=False, pods=PodIndex(clock=clock), clock=clock, max_pending=2,
                           cgroups=CgroupIndex(tmp_path, clock=clock))
    first, second, third = event(tree["late"], pid=1), event(tree["late"], pid=2), event(tree["late"], pid=3)
    assert enricher.enrich([first, second]) == []
    assert enricher.enrich([third]) == [first]  # nothing lost: out, marked, counted
    assert first["k8s"][UNRESOLVED_KEY] is True
    assert enricher.flush() == [second, third] and enricher.pending == 0
    assert enricher.counters.pending_overflow == 1 and enricher.counters.unresolved == 3


def test_cgroup_index_refresh_is_rate_limited(tmp_path: Path) -> None:
    clock = Clock()
    index = CgroupIndex(tmp_path, refresh_interval_s=1.0, clock=clock)
    assert index.path_of(1) is None and index.stats.refreshes == 1
    made = cgroup(tmp_path, "kubepods/pod" + UID)
    assert index.path_of(made) is None and index.stats.refresh_skipped == 1  # too soon: no second walk
    clock.now += 1.0
    assert index.path_of(made) == f"/kubepods/pod{UID}" and index.stats.refreshes == 2


def test_cronjob_candidate_and_deployment_need_the_hash() -> None:
    job = make_pod("x", uid=UID, owner=("Job", "nightly-report-29160000"))
    assert owner_attributes(job) == {"k8s.job.name": "nightly-report-29160000", "k8s.cronjob.name": "nightly-report"}
    bare_rs = make_pod("x", uid=UID, owner=("ReplicaSet", "hand-made"))
    assert owner_attributes(bare_rs) == {"k8s.replicaset.name": "hand-made"}
    daemon = make_pod("x", uid=UID, owner=("DaemonSet", "agent"))
    assert owner_attributes(daemon) == {"k8s.daemonset.name": "agent"}


def test_the_core_event_schema_carries_the_k8s_object_as_the_plugin_defines_it() -> None:
    from jalki_core.testing import load_event_schema

    assert load_event_schema()["properties"]["k8s"] == K8S_SCHEMA


def test_a_cgroup_made_since_the_last_walk_waits_for_the_next_walk_not_a_miss(tmp_path: Path,
                                                                               tree: dict[str, int]) -> None:
    """A new pod's short-lived process: its cgroup is newer than the index, its pid already gone."""
    clock = Clock()
    pods = PodIndex(clock=clock)
    pods.replace([make_pod("checkout-7f9c-x2", uid=UID, namespace="payments", containers={"app": f"containerd://{CID}"})])
    enricher = K8sEnricher(node_name="node-a", watch=False, pods=pods, clock=clock, retry_s=2.0,
                           cgroups=CgroupIndex(tmp_path, refresh_interval_s=1.0, clock=clock))
    assert len(enricher.enrich([event(tree["host"])])) == 1  # walks the tree now
    slice_ = f"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID.replace('-', '_')}.slice"
    new = cgroup(tmp_path, f"{slice_}/cri-containerd-{'f' * 64}.scope")  # a second container of the pod, made now
    assert enricher.enrich([event(new, pid=999_999_999)]) == [] and enricher.pending == 1  # no walk yet: it waits
    clock.now += 1.5  # the next walk is allowed
    [out] = enricher.enrich([])
    assert out["k8s"]["k8s.pod.name"] == "checkout-7f9c-x2" and out["k8s"]["container.id"] == "f" * 64
    assert enricher.counters.late == 1 and enricher.counters.miss == 0
    gone = 123_456_789  # a cgroup id no walk finds: a miss once its wait is over
    clock.now += 0.1
    assert enricher.enrich([event(gone)]) == []
    clock.now += 3.0
    assert len(enricher.enrich([])) == 1 and enricher.counters.miss == 1


def test_a_flush_walks_once_more_for_events_whose_cgroup_was_not_indexed(tmp_path: Path, tree: dict[str, int]) -> None:
    clock = Clock()
    pods = PodIndex(clock=clock)
    pods.replace([make_pod("checkout-7f9c-x2", uid=UID, namespace="payments", containers={"app": f"containerd://{CID}"})])
    enricher = K8sEnricher(node_name="node-a", watch=False, pods=pods, clock=clock,
                           cgroups=CgroupIndex(tmp_path, refresh_interval_s=1.0, clock=clock))
    enricher.enrich([event(tree["host"])])  # the walk
    slice_ = f"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID.replace('-', '_')}.slice"
    new = cgroup(tmp_path, f"{slice_}/cri-containerd-{'f' * 64}.scope")
    assert enricher.enrich([event(new)]) == []
    [out] = enricher.flush()  # at stop, within the walk interval: still found
    assert out["k8s"]["k8s.pod.name"] == "checkout-7f9c-x2" and enricher.counters.miss == 0


# -- hybrid node: containers in cgroup v1 hierarchies only ------------------------------------------------------

V1_PID, HOST_PID = 4242, 4343


def v1_setup(tmp_path: Path) -> tuple[Clock, K8sEnricher, Path, int]:
    """A hybrid node: the pod's container in a v1 hierarchy only, its process's v2 cgroup the runtime's."""
    clock = Clock()
    root, proc = tmp_path / "v2", tmp_path / "proc"
    runtime = cgroup(root, "system.slice/containerd.service")
    pods = PodIndex(clock=clock)
    pods.replace([make_pod("legacy-0", uid=UID, namespace="old", containers={"app": f"docker://{CID}"},
                           owner=("StatefulSet", "legacy"))])
    enricher = K8sEnricher(node_name="n", watch=False, pods=pods, clock=clock,
                           cgroups=CgroupIndex(root, proc_root=proc, v1_hierarchies=True, clock=clock))
    return clock, enricher, proc, runtime


def proc_cgroup(proc: Path, pid: int, v1_path: str) -> None:
    (proc / str(pid)).mkdir(parents=True, exist_ok=True)
    (proc / str(pid) / "cgroup").write_text(f"4:memory:{v1_path}\n0::/system.slice/containerd.service\n")


def typed(kind: str, cgroup_id: int, pid: int) -> dict[str, Any]:
    return {"type": kind, "process_data": {"pid": pid, "cgroup_id": cgroup_id}}


def test_a_v1_container_process_oom_event_after_its_exit_event_still_names_the_pod(tmp_path: Path) -> None:
    """The exit and the OOM kill come from different probes' rings: the exit may be enriched first."""
    clock, enricher, proc, runtime = v1_setup(tmp_path)
    proc_cgroup(proc, V1_PID, f"/kubepods/besteffort/pod{UID}/{CID}")
    [connect] = enricher.enrich([typed("kernel.tcp.connect", runtime, V1_PID)])
    assert connect["k8s"]["k8s.pod.name"] == "legacy-0"
    proc_cgroup(proc, V1_PID, "/")  # killed: its zombie shows the v1 roots
    exit_, oom = typed("kernel.process.exit", runtime, V1_PID), typed("kernel.memory.oom_kill", runtime, V1_PID)
    assert enricher.enrich([exit_]) == [exit_] and exit_["k8s"]["k8s.pod.name"] == "legacy-0"
    (proc / str(V1_PID) / "cgroup").unlink()  # reaped
    clock.now += V1_EXIT_GRACE_S / 2
    assert enricher.enrich([oom]) == [oom] and oom["k8s"]["k8s.pod.name"] == "legacy-0"
    clock.now += V1_EXIT_GRACE_S / 2  # the grace is over: forgotten (the pid may be reused now)
    late = typed("kernel.memory.oom_kill", runtime, V1_PID)
    assert enricher.enrich([late]) == [late] and "k8s" not in late
    assert enricher.cgroups.v1_container_path(V1_PID, runtime, enricher._parse) is None
    assert (enricher.counters.hit, enricher.counters.host_process) == (3, 1)


def test_host_processes_on_a_hybrid_node_are_read_once_per_negative_ttl(tmp_path: Path) -> None:
    """The kubelet's and containerd's events do not read /proc each; a process runc moves into a container
    later is named once the short negative answer has expired."""
    clock, enricher, proc, runtime = v1_setup(tmp_path)
    proc_cgroup(proc, HOST_PID, "/system.slice/containerd.service")
    stats = enricher.cgroups.stats
    batch = [typed("kernel.tcp.connect", runtime, HOST_PID) for _ in range(3)]
    assert enricher.enrich(batch) == batch and all("k8s" not in e for e in batch)
    assert (stats.v1_lookups, stats.v1_negative_hits) == (1, 2)
    proc_cgroup(proc, HOST_PID, f"/kubepods/besteffort/pod{UID}/{CID}")  # runc moved it into the container
    [before] = enricher.enrich([typed("kernel.tcp.connect", runtime, HOST_PID)])
    assert "k8s" not in before and stats.v1_lookups == 1  # the negative answer stands for its short time
    clock.now += V1_NEGATIVE_TTL_S
    [after] = enricher.enrich([typed("kernel.tcp.connect", runtime, HOST_PID)])
    assert after["k8s"]["k8s.pod.name"] == "legacy-0" and stats.v1_lookups == 2
    assert enricher.counters.host_process == 4 and enricher.counters.hit == 1
