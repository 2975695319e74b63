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

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests" / "kernel"))
from fake_apiserver import FakeApiServer, make_pod
from jalki_k8s.cgroup_index import detect_v2_root
from jalki_k8s.enricher import K8sEnricher
from lightkube import KubeConfig
from proc_helpers import memory_hog

from jalki_core.plugins import JalkiPlugins
from jalki_core.session import TraceSession
from jalki_core.testing import MemoryEmitter, wait_for

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


def make_cgroup(relative: str, made: list[Path], root: Path) -> Path:
    """The cgroup directory ``root/relative``, each missing level made and appended to ``made`` (to be
    removed deepest first)."""
    path = root
    for part in relative.split("/"):
        path = path / part
        if not path.exists():
            path.mkdir()
            made.append(path)
    return path


@pytest.fixture
def cgroups() -> Iterator[Callable[..., Path]]:
    """Make cgroup directories (v2 unless ``root`` names another hierarchy); remove them (deepest first) afterwards."""
    assert V2_ROOT is not None
    made: list[Path] = []

    def make(relative: str, root: Path = V2_ROOT) -> Path:
        return make_cgroup(relative, made, root)

    yield make
    for path in reversed(made):
        for _ in range(50):  # a killed process leaves its cgroup once the kernel has reaped it
            try:
                path.rmdir()
                break
            except OSError:
                time.sleep(0.1)



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
    # only the children's events: the probes see the whole machine, other tests' pod-shaped cgroups included
    pids = {row["pid"] for row in rows}
    events = enricher.enrich([dict(e) for e in emitter.events if e.get("process_data", {}).get("pid") in pids])
    events += enricher.close()
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


# -- OOM kill in a runtime-shaped cgroup ---------------------------------------------------------------------

MIB = 1 << 20
OOM_LIMIT = 32 * MIB
HOG = memory_hog("jalki-k8s-hog")


def memory_in_v2() -> bool:
    assert V2_ROOT is not None
    return "memory" in (V2_ROOT / "cgroup.controllers").read_text().split()


def memory_limited(relative: str, cgroups: Callable[..., Path]) -> list[Path]:
    """The runtime-shaped cgroup ``relative`` limited to :data:`OOM_LIMIT` without swap, where the memory
    controller is: in v2 (pure v2 node; ``memory`` enabled in each parent's subtree_control) or, on a hybrid
    node, in the v1 memory hierarchy at the same path (as a kubelet on such a node makes it). Its
    ``cgroup.procs`` files (the v2 one first)."""
    assert V2_ROOT is not None
    v2_dir = cgroups(relative)
    if memory_in_v2():
        parent = V2_ROOT
        for part in relative.split("/"):
            control = parent / "cgroup.subtree_control"
            if "memory" not in control.read_text().split():
                control.write_text("+memory")
            parent = parent / part
        (v2_dir / "memory.max").write_text(str(OOM_LIMIT))
        if (v2_dir / "memory.swap.max").exists():
            (v2_dir / "memory.swap.max").write_text("0")
        return [v2_dir / "cgroup.procs"]
    v1_memory = Path("/sys/fs/cgroup/memory")
    if not (v1_memory / "memory.limit_in_bytes").is_file():
        pytest.skip("no memory controller: neither in the cgroup v2 hierarchy nor mounted as v1 at "
                    "/sys/fs/cgroup/memory")
    memory_dir = cgroups(relative, v1_memory)
    (memory_dir / "memory.limit_in_bytes").write_text(str(OOM_LIMIT))
    if (memory_dir / "memory.memsw.limit_in_bytes").exists():
        (memory_dir / "memory.memsw.limit_in_bytes").write_text(str(OOM_LIMIT))
    elif (memory_dir / "memory.swappiness").exists():
        # no memsw accounting (swapaccount=0): with swap the hog would swap instead of being killed; in v1
        # limit reclaim, swappiness 0 really prevents swapping (cgroup-v1/memory.rst)
        (memory_dir / "memory.swappiness").write_text("0")
    return [v2_dir / "cgroup.procs", memory_dir / "cgroup.procs"]


def test_oom_killed_process_in_a_pod_cgroup_names_its_pod_also_after_the_pod_is_deleted(
    cgroups: Callable[..., Path]
) -> None:
    """A real OOM kill (memory limit of a containerd/cgroupfs-shaped container cgroup): the OOM event and
    the victim's exit name the pod, namespace, container and Deployment, from the pod's tombstone."""
    uid = "-".join(secrets.token_hex(n) for n in (4, 2, 2, 2, 6))
    cid = secrets.token_hex(32)
    # a unique prefix (as under a nested kubelet): concurrent tests never share a directory
    relative = f"jalki-k8s-{secrets.token_hex(3)}/kubepods/burstable/pod{uid}/{cid}"
    server = FakeApiServer().start()
    server.add(make_pod("hog-5f6d7c8b9-x2x4z", uid=uid, namespace="batch", node=NODE,
                        labels={"pod-template-hash": "5f6d7c8b9"}, containers={"eater": f"containerd://{cid}"},
                        owner=("ReplicaSet", "hog-5f6d7c8b9")))
    enricher = K8sEnricher(node_name=NODE, config=KubeConfig.from_dict(server.kubeconfig()))
    probes = [entry.probe for entry in JalkiPlugins().probes_for(["oom_kill", "process_exit"])]
    emitter = MemoryEmitter()
    session = TraceSession(probes, [emitter], strict=True, cluster="k8s-test")
    child: subprocess.Popen[bytes] | None = None
    try:
        procs_files = memory_limited(relative, cgroups)
        cgroup_id = procs_files[0].parent.stat().st_ino
        enricher.start()
        wait_for(lambda: enricher.ready, "the first pod list")
        session.start()
        child = subprocess.Popen([sys.executable, "-c", HOG, *map(str, procs_files)], stderr=subprocess.PIPE)
        _, err = child.communicate(timeout=120)
        assert child.returncode == -signal.SIGKILL, err
        # the pod is deleted (the kubelet reports the OOM-killed container, the Job or user removes the
        # pod) before its last events are enriched: the tombstone answers
        server.delete(uid)
        wait_for(lambda: enricher.pods.lookup(uid, None)[1], "the deletion")

        def drained() -> bool:
            session.drain_once()
            types = {e["type"] for e in emitter.events if e.get("process_data", {}).get("pid") == child.pid}
            return {"kernel.memory.oom_kill", "kernel.process.exit"} <= types

        wait_for(drained, "the OOM kill and the exit of the child", timeout=60)
    finally:
        # a hog the limit did not stop (swapping, communicate() timed out) must not outlive the test
        if child is not None and child.poll() is None:
            child.kill()
            child.wait()
        session.request_stop()
        session.stop()
    assert child is not None
    # only the child's events: the probes see the whole machine, other tests' pod-shaped cgroups included
    events = enricher.enrich([dict(e) for e in emitter.events if e.get("process_data", {}).get("pid") == child.pid])
    events += enricher.close()
    server.stop()

    mine = {e["type"]: e for e in events if e.get("process_data", {}).get("pid") == child.pid}
    oom, exit_event = mine["kernel.memory.oom_kill"], mine["kernel.process.exit"]
    assert oom["process_data"]["cgroup_id"] == exit_event["process_data"]["cgroup_id"] == cgroup_id
    # the memory cgroup is the container's, every name whole (the container id's 64 hex digits)
    assert oom["data"]["memcg_path"] == "/" + relative
    assert exit_event["data"]["oom_killed"] is True and exit_event["data"]["signal"] == "SIGKILL"
    for event in (oom, exit_event):
        assert event["k8s"] == {
            "k8s.pod.name": "hog-5f6d7c8b9-x2x4z", "k8s.pod.uid": uid, "k8s.namespace.name": "batch",
            "k8s.node.name": NODE, "k8s.replicaset.name": "hog-5f6d7c8b9", "k8s.deployment.name": "hog",
            "k8s.container.name": "eater", "container.id": cid, "container.runtime": "containerd",
            "jalki.k8s.pod_deleted": True,
        }
    counters = enricher.counters
    assert (counters.hit, counters.tombstone, counters.unresolved) == (len(events), len(events), 0)


# -- cgroup v1: a container placed in v1 hierarchies only -------------------------------------------------------

V1_NAME = "jalki-k8s-test"


@pytest.fixture
def v1_hierarchy(tmp_path: Path) -> Iterator[Path]:
    """A named cgroup v1 hierarchy of its own (no controller: it changes nothing for other processes),
    mounted for the test and unmounted afterwards; skipped, naming what is missing, where v1 cannot be
    mounted."""
    mountpoint = tmp_path / "v1"
    mountpoint.mkdir()
    mounted = subprocess.run(["mount", "-t", "cgroup", "-o", f"none,name={V1_NAME}", "cgroup", str(mountpoint)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        filesystems = Path("/proc/filesystems").read_text().split()
        missing = ("the kernel has no cgroup v1 ('cgroup' is not in /proc/filesystems)" if "cgroup" not in
                   filesystems else f"a named cgroup v1 hierarchy cannot be mounted: {mounted.stderr.strip()} "
                   "(cgroup_no_v1=named on the kernel command line, or no CAP_SYS_ADMIN)")
        pytest.skip(missing)
    try:
        yield mountpoint
    finally:
        for directory in sorted((p for p in mountpoint.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            for _ in range(50):
                try:
                    directory.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)
        subprocess.run(["umount", str(mountpoint)], check=True)


V1_CHILD = """
import os, signal, socket, sys
sys.stdin.readline()  # the parent has moved us into the v1 cgroup
sock = socket.socket()
try:
    sock.connect(("127.0.0.1", 9))
except ConnectionRefusedError:
    pass
print(os.getpid(), flush=True)
sys.stdin.readline()  # the parent has enriched the connect
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_container_in_a_v1_hierarchy_only_is_named_through_proc_pid_cgroup(
    netns: str, v1_hierarchy: Path
) -> None:
    """A hybrid node whose runtime (cgroupfs driver) put the container in v1 hierarchies only: the process's v2
    cgroup is the runtime's (no container in it), its ``/proc/<pid>/cgroup`` v1 line names the pod while it
    lives. Its connect is named from there; its SIGKILL exit (the zombie's v1 lines show the roots) from
    what the connect found."""
    uid = "-".join(secrets.token_hex(n) for n in (4, 2, 2, 2, 6))
    cid = secrets.token_hex(32)
    directory = v1_hierarchy / "kubepods" / "besteffort" / f"pod{uid}" / cid
    directory.mkdir(parents=True)
    server = FakeApiServer().start()
    server.add(make_pod("legacy-0", uid=uid, namespace="old", node=NODE, containers={"app": f"docker://{cid}"},
                        owner=("StatefulSet", "legacy")))
    enricher = K8sEnricher(node_name=NODE, config=KubeConfig.from_dict(server.kubeconfig()))
    probes = [entry.probe for entry in JalkiPlugins().probes_for(["tcp_connect", "process_exit"])]
    emitter = MemoryEmitter()
    session = TraceSession(probes, [emitter], strict=True, cluster="k8s-test")
    child = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c", V1_CHILD],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    events: list[dict[str, Any]] = []

    def enrich_child_events(done: Callable[[set[str]], bool]) -> None:
        seen = len(events)

        def drained() -> bool:
            session.drain_once()
            types = {e["type"] for e in emitter.events if e.get("process_data", {}).get("pid") == child.pid}
            return done(types)

        wait_for(drained, "the child's events")
        mine = [dict(e) for e in emitter.events if e.get("process_data", {}).get("pid") == child.pid]
        events.extend(enricher.enrich(mine[seen:]))

    try:
        assert enricher.cgroups.v1_hierarchies  # read from /proc/self/cgroup: the mounted hierarchy is listed
        enricher.start()
        wait_for(lambda: enricher.ready, "the first pod list")
        session.start()
        (directory / "cgroup.procs").write_text(str(child.pid))
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write("go\n")
        child.stdin.flush()
        assert int(child.stdout.readline()) == child.pid
        proc_cgroup = Path(f"/proc/{child.pid}/cgroup").read_text()
        assert f":name={V1_NAME}:/kubepods/besteffort/pod{uid}/{cid}\n" in proc_cgroup
        [own_v2] = [line[3:] for line in proc_cgroup.splitlines() if line.startswith("0::")]
        assert enricher._parse(own_v2) is None  # its v2 cgroup names no container
        enrich_child_events(lambda types: any("connect" in t for t in types))  # while it lives
        child.stdin.write("die\n")
        child.stdin.flush()
        assert child.wait(timeout=60) == -signal.SIGKILL
        enrich_child_events(lambda types: "kernel.process.exit" in types)  # reaped: /proc has nothing
    finally:
        session.request_stop()
        session.stop()
        if child.poll() is None:
            child.kill()
            child.wait()
        closed = enricher.close()
        server.stop()
    assert closed == []
    types = [e["type"] for e in events]
    assert any("connect" in t for t in types) and types[-1] == "kernel.process.exit", types
    for event in events:
        assert event["k8s"] == {
            "k8s.pod.name": "legacy-0", "k8s.pod.uid": uid, "k8s.namespace.name": "old", "k8s.node.name": NODE,
            "k8s.statefulset.name": "legacy", "k8s.container.name": "app", "container.id": cid,
            "container.runtime": "docker",
        }, event["type"]
    stats = enricher.cgroups.stats
    assert stats.v1_fallbacks == len(events) and enricher.counters.hit == len(events)
    # after its exit, what it was is kept for a grace period only (its OOM kill event may come later),
    # then forgotten (unit test: test_k8s_enricher.py)
    assert enricher.cgroups.v1_container_path(child.pid, events[-1]["process_data"]["cgroup_id"],
                                              enricher._parse) == f"/kubepods/besteffort/pod{uid}/{cid}"
