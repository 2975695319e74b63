"""Real kernel, real cgroups, real lightkube over HTTP: events of processes in containerd-, CRI-O- and
docker-shaped cgroup v2 directories name their pod, namespace, container and workload.

The test makes the cgroup directories a kubelet and its runtime would (under the v2 root: /sys/fs/cgroup
on a pure v2 host, /sys/fs/cgroup/unified on a hybrid one), moves a real process into each, has it make
a real TCP connect in a network namespace of its own and die by a signal, traces that with the real
jalki-tcp and jalki-process probes, and enriches the real events from the fake API server.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fake_apiserver import FakeApiServer, make_pod
from jalki_k8s.cgroup_index import detect_v2_root
from jalki_k8s.enricher import K8sEnricher
from lightkube import KubeConfig

from jalki_core.plugins import JalkiPlugins
from jalki_core.session import TraceSession
from jalki_core.testing import MemoryEmitter

pytestmark = pytest.mark.kernel
V2_ROOT = detect_v2_root()
if os.geteuid() != 0 or V2_ROOT is None:
    pytest.skip("needs root and a cgroup v2 hierarchy", allow_module_level=True)

NODE = "node-k"
CHILD = """
import os, signal, socket, sys
sys.stdin.readline()  # the parent has moved us into the cgroup ('ip netns exec' remounts /sys: not from here)
sock = socket.socket()
try:
    sock.connect(("127.0.0.1", 9))
except ConnectionRefusedError:
    pass
print(os.getpid(), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def shapes() -> list[dict[str, Any]]:
    """One pod per runtime layout; uids and ids fresh per run so a leftover cgroup can never answer."""
    rows = []
    for runtime, owner, labels in (
        ("containerd", ("ReplicaSet", "checkout-7f9c8d"), {"pod-template-hash": "7f9c8d"}),
        ("cri-o", ("StatefulSet", "ledger"), {}),
        ("docker", ("Job", "nightly-29160000"), {}),
    ):
        uid = "-".join(secrets.token_hex(n) for n in (4, 2, 2, 2, 6))
        cid = secrets.token_hex(32)
        escaped = uid.replace("-", "_")
        scope = {"containerd": f"cri-containerd-{cid}.scope", "cri-o": f"crio-{cid}.scope",
                 "docker": f"docker-{cid}.scope"}[runtime]
        rows.append({
            "runtime": runtime, "uid": uid, "cid": cid, "owner": owner,
            "path": (f"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{escaped}.slice/{scope}"),
            "pod": make_pod(f"{runtime}-pod", uid=uid, namespace=f"ns-{runtime}", node=NODE, labels=labels,
                            containers={"main": f"{runtime}://{cid}"}, owner=owner),
        })
    return rows


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"jalki-k8s-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def cgroups() -> Iterator[Callable[[str], Path]]:
    """Make cgroup v2 directories; remove them (deepest first) afterwards."""
    assert V2_ROOT is not None
    made: list[Path] = []

    def make(relative: str) -> Path:
        path = V2_ROOT
        for part in relative.split("/"):
            path = path / part
            if not path.exists():
                path.mkdir()
                made.append(path)
        return path

    yield make
    for path in reversed(made):
        for _ in range(50):  # a killed process leaves its cgroup once the kernel has reaped it
            try:
                path.rmdir()
                break
            except OSError:
                time.sleep(0.1)


def wait_for(condition: Callable[[], object], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_events_from_runtime_shaped_cgroups_name_pod_namespace_container_workload(
    netns: str, cgroups: Callable[[str], Path]
) -> None:
    rows = shapes()
    server = FakeApiServer().start()
    enricher = K8sEnricher(node_name=NODE, config=KubeConfig.from_dict(server.kubeconfig()))
    probes = [entry.probe for entry in JalkiPlugins().probes_for(["tcp_connect", "process_exit"])]
    emitter = MemoryEmitter()
    session = TraceSession(probes, [emitter], strict=True, cluster="k8s-test")
    try:
        for row in rows[:2]:
            server.add(row["pod"])
        enricher.start()
        wait_for(lambda: enricher.ready, "the first pod list")
        server.add(rows[2]["pod"])  # arrives on the watch, not the list
        wait_for(lambda: enricher.pods.lookup(rows[2]["uid"], None)[0] is not None, "the watched pod")
        session.start()
        for row in rows:
            directory = cgroups(row["path"])
            row["cgroup_id"] = directory.stat().st_ino
            child = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c", CHILD],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            (directory / "cgroup.procs").write_text(str(child.pid))  # 'ip' execs python: the same process
            out, err = child.communicate("go\n", timeout=60)
            assert child.returncode == -signal.SIGKILL, err
            row["pid"] = int(out.split()[0])
            assert row["pid"] == child.pid
        # The docker-shaped pod is deleted before its events are enriched: its tombstone answers.
        server.delete(rows[2]["uid"])
        wait_for(lambda: enricher.pods.lookup(rows[2]["uid"], None)[1], "the deletion")

        def drained() -> bool:
            session.drain_once()
            pids = {event.get("process_data", {}).get("pid") for event in emitter.events}
            return all(row["pid"] in pids for row in rows)

        wait_for(drained, "the events of every child")
    finally:
        session.request_stop()
        session.stop()
    events = enricher.enrich([dict(event) for event in emitter.events])
    enricher.close()
    server.stop()

    for row in rows:
        mine = [e for e in events if e.get("process_data", {}).get("pid") == row["pid"]]
        types = {e["type"] for e in mine}
        assert any("connect" in t for t in types) and any("exit" in t for t in types), types
        for event in mine:
            assert event["process_data"]["cgroup_id"] == row["cgroup_id"]  # the v2 cgroup's inode
            k8s = event["k8s"]
            assert k8s["k8s.pod.name"] == f"{row['runtime']}-pod"
            assert k8s["k8s.pod.uid"] == row["uid"]
            assert k8s["k8s.namespace.name"] == f"ns-{row['runtime']}"
            assert k8s["k8s.container.name"] == "main" and k8s["container.id"] == row["cid"]
            assert k8s["container.runtime"] == row["runtime"]
            assert k8s["k8s.node.name"] == NODE
    by_runtime = {row["runtime"]: row for row in rows}

    def workload(runtime: str) -> dict[str, Any]:
        [first] = [e["k8s"] for e in events if e.get("process_data", {}).get("pid") == by_runtime[runtime]["pid"]][:1]
        return first  # type: ignore[no-any-return]

    assert workload("containerd")["k8s.deployment.name"] == "checkout"
    assert workload("cri-o")["k8s.statefulset.name"] == "ledger"
    assert workload("docker")["k8s.cronjob.name"] == "nightly"
    assert workload("docker")["jalki.k8s.pod_deleted"] is True
    counters = enricher.counters
    assert counters.unresolved == 0 and counters.tombstone >= 2 and counters.hit >= 6
