"""The pods of this node: an index by pod uid and container id, with tombstones and owning workloads.

:class:`PodIndex` is pure data, fed Kubernetes pod objects as JSON dicts (what the API server sends):
``apply("ADDED"|"MODIFIED"|"DELETED", pod)`` and ``replace(pods)`` after a relist. A deleted pod (or one
a relist no longer returns) stays as a tombstone for ``tombstone_ttl_s`` so that the exit and OOM events
of a dying pod, which drain after the API server has forgotten it, still resolve.

The owning workload is read from the pod alone (no extra RBAC): a controller ReplicaSet whose name ends in
the pod's ``pod-template-hash`` label names its Deployment; a Job named ``<name>-<digits>`` names a
CronJob candidate (the CronJob controller names its Jobs after the scheduled minute). With exact lookups
switched on (:mod:`jalki_k8s.owners`), the watcher passes the looked-up workload in as ``owner``.
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from jalki_k8s.cgroup_path import normalize_pod_uid

_RUNTIME_PREFIX = re.compile(r"^(?P<runtime>[a-z0-9-]+)://(?P<id>[0-9a-f]+)$")
_CRONJOB_JOB = re.compile(r"^(?P<cronjob>.+)-(?P<minute>\d{8,})$")
DEFAULT_TOMBSTONE_TTL_S = 300.0
DEFAULT_MAX_TOMBSTONES = 4096
WORKLOAD_KEYS = frozenset((
    "k8s.replicaset.name", "k8s.deployment.name", "k8s.statefulset.name", "k8s.daemonset.name", "k8s.job.name",
    "k8s.cronjob.name", "k8s.replicationcontroller.name"))
"""The attributes :func:`owner_attributes` (or an exact lookup) gives: what :meth:`PodIndex.set_owner` replaces."""
MIRROR_ANNOTATION = "kubernetes.io/config.mirror"
"""On a static pod's mirror: the uid the kubelet gave the pod (its cgroup's), unlike ``metadata.uid``."""


@dataclass(frozen=True)
class PodInfo:
    """What enrichment needs of one pod.

    :ivar attributes: the pod's OpenTelemetry resource attributes (``k8s.pod.name`` ...), without the
        container ones.
    :ivar containers: container id -> (container name, runtime) from the pod's status.
    """

    uid: str
    attributes: Mapping[str, str]
    containers: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    cgroup_uids: tuple[str, ...] = ()
    """Uids the pod's cgroups may carry: ``metadata.uid`` and, for a static pod, its mirror annotation."""


def owner_attributes(pod: Mapping[str, Any]) -> dict[str, str]:
    """The workload attributes of ``pod`` from its controller owner reference (and labels)."""
    metadata = pod.get("metadata") or {}
    labels = metadata.get("labels") or {}
    for ref in metadata.get("ownerReferences") or []:
        if not ref.get("controller"):
            continue
        kind, name = ref.get("kind"), ref.get("name") or ""
        if kind == "ReplicaSet":
            attributes = {"k8s.replicaset.name": name}
            template_hash = labels.get("pod-template-hash")
            if template_hash and name.endswith(f"-{template_hash}"):
                attributes["k8s.deployment.name"] = name[: -len(template_hash) - 1]
            return attributes
        if kind == "Job":
            attributes = {"k8s.job.name": name}
            cronjob = _CRONJOB_JOB.match(name)
            if cronjob:
                attributes["k8s.cronjob.name"] = cronjob["cronjob"]
            return attributes
        if kind in ("StatefulSet", "DaemonSet", "ReplicationController"):
            key = {"StatefulSet": "k8s.statefulset.name", "DaemonSet": "k8s.daemonset.name",
                   "ReplicationController": "k8s.replicationcontroller.name"}[kind]
            return {key: name}
    return {}


def pod_info(pod: Mapping[str, Any], owner: Mapping[str, str] | None = None) -> PodInfo | None:
    """A :class:`PodInfo` from a pod object, or ``None`` when it has no uid.

    :param owner: the pod's workload attributes when already known (an exact lookup); default: from the pod.
    """
    metadata = pod.get("metadata") or {}
    uid = normalize_pod_uid(metadata.get("uid") or "")
    if uid is None:
        return None
    attributes = {
        "k8s.pod.name": metadata.get("name") or "",
        "k8s.pod.uid": uid,
        "k8s.namespace.name": metadata.get("namespace") or "",
    }
    node = (pod.get("spec") or {}).get("nodeName")
    if node:
        attributes["k8s.node.name"] = node
    attributes.update(owner_attributes(pod) if owner is None else owner)
    containers: dict[str, tuple[str, str]] = {}
    status = pod.get("status") or {}
    for key in ("initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses"):
        for container in status.get(key) or []:
            match = _RUNTIME_PREFIX.match(container.get("containerID") or "")
            if match:
                containers[match["id"]] = (container.get("name") or "", match["runtime"])
    uids = [uid]
    mirror = normalize_pod_uid((metadata.get("annotations") or {}).get(MIRROR_ANNOTATION) or "")
    if mirror and mirror != uid:
        uids.append(mirror)
    return PodInfo(uid=uid, attributes=attributes, containers=containers, cgroup_uids=tuple(uids))


@dataclass
class PodIndexStats:
    """Counters of the pod index."""

    pods: int = 0
    tombstones: int = 0
    added: int = 0
    modified: int = 0
    deleted: int = 0
    relists: int = 0
    tombstones_expired: int = 0
    tombstones_evicted: int = 0
    """Tombstones dropped before their time because ``max_tombstones`` were kept."""


class PodIndex:
    """The pods of one node by uid and by container id; deleted ones kept as tombstones.

    Thread-safe: the watcher writes from its thread, the enricher reads from the session's.

    :param tombstone_ttl_s: how long a deleted pod still resolves.
    :param max_tombstones: most tombstones kept (the oldest goes first).
    """

    def __init__(
        self,
        *,
        tombstone_ttl_s: float = DEFAULT_TOMBSTONE_TTL_S,
        max_tombstones: int = DEFAULT_MAX_TOMBSTONES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tombstone_ttl_s = tombstone_ttl_s
        self.max_tombstones = max_tombstones
        self.stats = PodIndexStats()
        self._clock = clock
        self._live: dict[str, PodInfo] = {}
        self._tombstones: OrderedDict[str, tuple[float, PodInfo]] = OrderedDict()
        self._by_uid: dict[str, PodInfo] = {}
        self._by_container: dict[str, PodInfo] = {}
        self._lock = threading.Lock()

    def apply(self, event_type: str, pod: Mapping[str, Any], owner: Mapping[str, str] | None = None) -> None:
        """Apply one watch event (``ADDED``, ``MODIFIED``, ``DELETED``; others are ignored).

        :param owner: the pod's workload attributes, when looked up (see :func:`pod_info`).
        """
        info = pod_info(pod, owner)
        if info is None:
            return
        with self._lock:
            if event_type in ("ADDED", "MODIFIED"):
                self._put(info)
                if event_type == "ADDED":
                    self.stats.added += 1
                else:
                    self.stats.modified += 1
            elif event_type == "DELETED":
                self._bury(info)
                self.stats.deleted += 1
            self._sync_stats()

    def replace(self, pods: Iterable[Mapping[str, Any]],
                owners: Iterable[Mapping[str, str] | None] | None = None) -> None:
        """Make the index what a fresh LIST returned: pods it no longer has become tombstones.

        :param owners: each pod's workload attributes when looked up, in the order of ``pods``.
        """
        pods = list(pods)
        owner_list = list(owners) if owners is not None else [None] * len(pods)
        infos = [info for info in (pod_info(pod, owner) for pod, owner in zip(pods, owner_list, strict=True))
                 if info is not None]
        with self._lock:
            present = {info.uid for info in infos}
            for uid, old in list(self._live.items()):
                if uid not in present:
                    self._bury(old)
            for info in infos:
                self._put(info)
            self.stats.relists += 1
            self._sync_stats()

    def set_owner(self, pod_uid: str, owner: Mapping[str, str]) -> bool:
        """Replace the workload attributes of pod ``pod_uid`` (live or tombstone) with ``owner`` (an exact
        lookup that answered after the pod was applied with the guess); False when the pod is not kept."""
        uid = normalize_pod_uid(pod_uid)
        if uid is None:
            return False
        with self._lock:
            live = self._live.get(uid)
            buried = self._tombstones.get(uid)
            old = live if live is not None else (buried[1] if buried is not None else None)
            if old is None:
                return False
            attributes = {k: v for k, v in old.attributes.items() if k not in WORKLOAD_KEYS}
            attributes.update(owner)
            if attributes == dict(old.attributes):
                return True
            new = replace(old, attributes=attributes)
            self._unindex(old)
            if live is not None:
                self._live[uid] = new
            elif buried is not None:
                self._tombstones[uid] = (buried[0], new)
            self._index(new)
            return True

    def lookup(self, pod_uid: str | None, container_id: str | None) -> tuple[PodInfo | None, bool]:
        """The pod (live, else tombstone) by pod uid first, then by container id; and whether it is a tombstone."""
        with self._lock:
            self._expire()
            info = self._by_uid.get(pod_uid) if pod_uid else None
            if info is None and container_id:
                info = self._by_container.get(container_id)
            if info is None:
                return None, False
            return info, info.uid not in self._live

    def _put(self, info: PodInfo) -> None:
        old = self._live.get(info.uid)
        if old is not None:
            self._unindex(old)
        self._drop_tombstone(info.uid)
        self._live[info.uid] = info
        self._index(info)

    def _bury(self, info: PodInfo) -> None:
        old = self._live.pop(info.uid, None)
        # The last state we saw knows the most containers (a DELETED object may have lost its statuses).
        if old is not None and len(old.containers) > len(info.containers):
            info = old
        if old is not None:
            self._unindex(old)
        self._drop_tombstone(info.uid)
        self._tombstones[info.uid] = (self._clock() + self.tombstone_ttl_s, info)
        self._index(info)
        while len(self._tombstones) > self.max_tombstones:
            _, (_, evicted) = self._tombstones.popitem(last=False)
            self._unindex(evicted)
            self.stats.tombstones_evicted += 1

    def _drop_tombstone(self, uid: str) -> None:
        buried = self._tombstones.pop(uid, None)
        if buried is not None:
            self._unindex(buried[1])

    def _expire(self) -> None:
        now = self._clock()
        while self._tombstones:
            uid, (deadline, info) = next(iter(self._tombstones.items()))
            if deadline > now:
                break
            del self._tombstones[uid]
            self._unindex(info)
            self.stats.tombstones_expired += 1
        self._sync_stats()

    def _index(self, info: PodInfo) -> None:
        for uid in info.cgroup_uids:
            self._by_uid[uid] = info
        for container_id in info.containers:
            self._by_container[container_id] = info

    def _unindex(self, info: PodInfo) -> None:
        for uid in info.cgroup_uids:
            if self._by_uid.get(uid) is info:
                del self._by_uid[uid]
        for container_id in info.containers:
            if self._by_container.get(container_id) is info:
                del self._by_container[container_id]

    def _sync_stats(self) -> None:
        self.stats.pods = len(self._live)
        self.stats.tombstones = len(self._tombstones)
