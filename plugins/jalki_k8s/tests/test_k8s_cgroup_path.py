"""The cgroup path parser, one row per layout the kubelet and the runtimes write (paths written for the tests)."""

from __future__ import annotations

import pytest
from jalki_k8s.cgroup_index import pick_proc_cgroup_path
from jalki_k8s.cgroup_path import ContainerRef, normalize_pod_uid, parse_cgroup_path

UID = "5b7c1e2a-9d3f-4e8a-b1c6-0f2d3e4a5b6c"
SUID = UID.replace("-", "_")  # systemd slice escaping
STATIC = "0123456789abcdef0123456789abcdef"  # a static pod: the kubelet's hash, no dashes
CID = "a" * 32 + "0123456789abcdef" * 2
OTHER = "f" * 64

ROWS = [
    # systemd driver (cgroup v2 path or v1 hierarchy path: the same text)
    (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{SUID}.slice/cri-containerd-{CID}.scope",
     ContainerRef(UID, CID, "containerd", "burstable")),
    (f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{SUID}.slice/crio-{CID}.scope",
     ContainerRef(UID, CID, "cri-o", "besteffort")),
    (f"/kubepods.slice/kubepods-pod{SUID}.slice/docker-{CID}.scope", ContainerRef(UID, CID, "docker", "guaranteed")),
    (f"/kubepods.slice/kubepods-pod{SUID}.slice/libpod-{CID}.scope", ContainerRef(UID, CID, "podman", "guaranteed")),
    # CRI-O's sub-cgroup of the container, and its monitor (names the pod, not a container)
    (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{SUID}.slice/crio-{CID}.scope/container",
     ContainerRef(UID, CID, "cri-o", "burstable")),
    (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{SUID}.slice/crio-conmon-{CID}.scope",
     ContainerRef(UID, None, "cri-o", "burstable")),
    # cgroupfs driver
    (f"/kubepods/burstable/pod{UID}/{CID}", ContainerRef(UID, CID, None, "burstable")),
    (f"/kubepods/besteffort/pod{UID}/{CID}", ContainerRef(UID, CID, None, "besteffort")),
    (f"/kubepods/pod{UID}/{CID}", ContainerRef(UID, CID, None, "guaranteed")),
    (f"/kubepods/burstable/pod{UID}/crio-{CID}", ContainerRef(UID, CID, "cri-o", "burstable")),
    (f"/kubepods/pod{SUID}/{CID}", ContainerRef(UID, CID, None, "guaranteed")),  # '_' in a cgroupfs uid too
    (f"/kubepods/burstable/pod{STATIC}/{CID}", ContainerRef(STATIC, CID, None, "burstable")),
    # pod-level cgroup (the pause process on some runtimes, or a pod's own cgroup)
    (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{SUID}.slice",
     ContainerRef(UID, None, None, "burstable")),
    # prefixes: a kubelet nested in a container, a cgroup namespace's view from outside it
    (f"/kubelet.slice/kubelet-kubepods.slice/kubepods.slice/kubepods-pod{SUID}.slice/cri-containerd-{CID}.scope",
     ContainerRef(UID, CID, "containerd", "guaranteed")),
    (f"/../../kubepods/besteffort/pod{UID}/{CID}", ContainerRef(UID, CID, None, "besteffort")),
    # containers outside Kubernetes
    (f"/docker/{CID}", ContainerRef(None, CID, "docker", None)),
    (f"/system.slice/docker-{CID}.scope", ContainerRef(None, CID, "docker", None)),
    (f"/machine.slice/libpod-{CID}.scope", ContainerRef(None, CID, "podman", None)),
    (f"/machine.slice/libpod-{CID}.scope/container", ContainerRef(None, CID, "podman", None)),
    # host processes
    ("/", None),
    ("/user.slice/user-0.slice/session-3.scope", None),
    ("/system.slice/containerd.service", None),
    ("/system.slice/kubelet.service", None),
    (f"/machine.slice/libpod-conmon-{CID}.scope", None),
    (f"/{CID}", None),  # a bare id outside kubepods and /docker/ is not a container
    ("/kubepods/burstable/podnot-a-uid/x", None),
    (f"/system.slice/docker-{CID[:12]}.scope", None),  # short ids are not what the runtimes write
]


@pytest.mark.parametrize(("path", "expected"), ROWS, ids=[row[0][-60:] for row in ROWS])
def test_parse_cgroup_path(path: str, expected: ContainerRef | None) -> None:
    assert parse_cgroup_path(path) == expected


def test_pod_uid_normalized_from_systemd_escaping() -> None:
    assert normalize_pod_uid(SUID.upper()) == UID
    assert normalize_pod_uid(STATIC) == STATIC
    assert normalize_pod_uid("not-a-uid") is None


def test_proc_cgroup_prefers_the_line_that_names_a_container() -> None:
    v2_host_v1_pod = (
        f"12:memory:/kubepods/burstable/pod{UID}/{CID}\n"
        f"1:name=systemd:/kubepods/burstable/pod{UID}/{CID}\n"
        "0::/\n"
    )
    assert pick_proc_cgroup_path(v2_host_v1_pod, parse_cgroup_path) == f"/kubepods/burstable/pod{UID}/{CID}"
    pure_v2 = f"0::/kubepods.slice/kubepods-pod{SUID}.slice/cri-containerd-{OTHER}.scope\n"
    assert parse_cgroup_path(pick_proc_cgroup_path(pure_v2, parse_cgroup_path) or "") == ContainerRef(
        UID, OTHER, "containerd", "guaranteed")
    host = "4:memory:/user.slice\n0::/user.slice/user-0.slice\n"
    assert pick_proc_cgroup_path(host, parse_cgroup_path) == "/user.slice/user-0.slice"
    assert pick_proc_cgroup_path("", parse_cgroup_path) is None
