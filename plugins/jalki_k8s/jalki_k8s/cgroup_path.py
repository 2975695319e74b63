"""Cgroup path -> which pod and container a process belongs to. Pure: no file system, no clock.

One parser for every layout the kubelet and container runtimes write, on the systemd and the
cgroupfs cgroup drivers, in cgroup v2 paths and cgroup v1 hierarchy paths alike:

- systemd driver: ``/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice/<scope>``
  where the pod uid's ``-`` are written ``_`` (systemd unit-name escaping) and the scope is
  ``cri-containerd-<id>.scope`` (containerd), ``crio-<id>.scope`` (CRI-O), ``docker-<id>.scope`` or
  ``libpod-<id>.scope`` (podman); guaranteed pods sit directly under ``kubepods.slice``;
- cgroupfs driver: ``/kubepods/<qos>/pod<uid>/<id>`` (containerd, dockershim), ``.../crio-<id>``;
- plain containers: ``/docker/<id>``, ``/system.slice/docker-<id>.scope``, ``/machine.slice/libpod-<id>.scope``.

A path may carry a prefix (nested kubelets, ``/..`` components of a cgroup namespace) and a suffix (a
runtime's sub-cgroup such as CRI-O's ``/container``): components are matched wherever they are.
``crio-conmon-<id>`` and ``libpod-conmon-<id>`` are the runtime's monitor, not the container: the pod
is still named, the container is not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

QOS_CLASSES = ("guaranteed", "burstable", "besteffort")

_UID_DASHED = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_UID_HASH = re.compile(r"[0-9a-f]{32}")  # static pods: the kubelet's hash of the manifest
_ID = r"(?P<id>[0-9a-f]{64})"
_POD_COMPONENT = re.compile(
    r"^(?:kubepods-(?:(?P<qos>burstable|besteffort)-)?)?pod(?P<uid>[0-9a-f_-]{32,36})(?:\.slice)?$")
_QOS_COMPONENT = re.compile(r"^(?:kubepods-)?(?P<qos>burstable|besteffort)(?:\.slice)?$")
_MONITOR = re.compile(r"^(?:crio|libpod)-conmon-[0-9a-f]{64}(?:\.scope)?$")
_CONTAINER_COMPONENTS: tuple[tuple[re.Pattern[str], str | None], ...] = (
    (re.compile(rf"^cri-containerd-{_ID}\.scope$"), "containerd"),
    (re.compile(rf"^crio-{_ID}(?:\.scope)?$"), "cri-o"),
    (re.compile(rf"^docker-{_ID}\.scope$"), "docker"),
    (re.compile(rf"^libpod-{_ID}(?:\.scope)?$"), "podman"),
)
_BARE_ID = re.compile(rf"^{_ID}$")


@dataclass(frozen=True)
class ContainerRef:
    """What a cgroup path says about its processes.

    :ivar pod_uid: the pod's uid, lowercase with ``-`` (``None`` outside a pod).
    :ivar container_id: the runtime's container id, 64 hex digits (``None`` in a pod-level cgroup or a
        runtime monitor such as ``crio-conmon-``).
    :ivar runtime: ``containerd``, ``cri-o``, ``docker`` or ``podman`` where the path names it (a bare
        cgroupfs id does not: the pod's ``containerStatuses`` do).
    :ivar qos: the pod's QoS class (``guaranteed``, ``burstable``, ``besteffort``), inside ``kubepods``.
    """

    pod_uid: str | None
    container_id: str | None
    runtime: str | None
    qos: str | None


def normalize_pod_uid(raw: str) -> str | None:
    """A pod uid as the API server writes it: lowercase, ``-`` separated; ``None`` if not a uid.

    Systemd slice names carry ``_`` for ``-``; static pods have 32-hex-digit uids without dashes.
    """
    uid = raw.lower().replace("_", "-")
    if _UID_DASHED.fullmatch(uid) or _UID_HASH.fullmatch(uid):
        return uid
    return None


def parse_cgroup_path(path: str) -> ContainerRef | None:
    """The pod and container of ``path``; ``None`` for a host process (nothing container-shaped).

    :param path: a cgroup path as in ``/proc/<pid>/cgroup`` or relative to a hierarchy's root.
    """
    parts = [part for part in path.split("/") if part and part != ".."]
    pod_uid: str | None = None
    qos: str | None = None
    in_kubepods = False
    container_id: str | None = None
    runtime: str | None = None
    for part in parts:
        if part in ("kubepods", "kubepods.slice"):
            in_kubepods = True
            continue
        if in_kubepods and pod_uid is None:
            pod_match = _POD_COMPONENT.match(part)
            if pod_match:
                pod_uid = normalize_pod_uid(pod_match["uid"])
                qos = qos or pod_match["qos"]
                continue
            qos_match = _QOS_COMPONENT.match(part)
            if qos_match:
                qos = qos_match["qos"]
                continue
        if _MONITOR.match(part):
            runtime = runtime or ("cri-o" if part.startswith("crio") else "podman")
            continue
        for pattern, name in _CONTAINER_COMPONENTS:
            container_match = pattern.match(part)
            if container_match:
                container_id, runtime = container_match["id"], name
                break
        else:
            # A bare id is a container under a pod (cgroupfs driver) or under /docker/ (plain docker).
            bare = _BARE_ID.match(part)
            if bare and container_id is None and (pod_uid is not None or _follows(parts, part, "docker")):
                container_id = bare["id"]
                runtime = "docker" if pod_uid is None else None
    if pod_uid is None and container_id is None:
        return None  # a host process (a runtime monitor outside any pod included)
    if pod_uid is not None and qos is None:
        qos = "guaranteed"  # guaranteed pods sit directly under kubepods, with no QoS level
    return ContainerRef(pod_uid=pod_uid, container_id=container_id, runtime=runtime,
                        qos=qos if pod_uid is not None else None)


def _follows(parts: list[str], part: str, parent: str) -> bool:
    index = parts.index(part)
    return index > 0 and parts[index - 1] == parent
