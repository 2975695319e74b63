"""The enricher stage: adds a ``k8s`` object to each event whose process runs in a pod of this node.

The object is flat and its keys are the OpenTelemetry semantic-convention attribute names, so that
an OTLP exporter can copy them as resource attributes unchanged::

    "k8s": {"k8s.pod.name": "checkout-7f9c", "k8s.pod.uid": "...", "k8s.namespace.name": "payments",
            "k8s.container.name": "app", "container.id": "<64 hex>", "container.runtime": "containerd",
            "k8s.replicaset.name": "checkout-7f9c", "k8s.deployment.name": "checkout", "k8s.node.name": "n1"}

Workload keys are those of the pod's owner (``k8s.deployment.name``, ``k8s.statefulset.name``,
``k8s.daemonset.name``, ``k8s.job.name`` with a ``k8s.cronjob.name`` candidate). Two jalki keys say how
it was resolved: ``jalki.k8s.pod_deleted`` (from a tombstone) and ``jalki.k8s.unresolved`` (the cgroup
names a pod the API server never showed within the retry window: only its uid and container id).
A container outside any pod (plain docker, podman) gets ``container.id`` and ``container.runtime``.
With ``owner_lookup`` (``JALKI_K8S_OWNER_LOOKUP=1``) the Deployment and CronJob are read from the API
server instead of inferred from names (:mod:`jalki_k8s.owners`).

On a node with cgroup v1 hierarchies (hybrid), a runtime on the cgroupfs driver may put a container in
v1 hierarchies only, leaving its processes in the runtime's own v2 cgroup: an event whose v2 cgroup names
no container is looked up in ``/proc/<pid>/cgroup`` too, whose v1 lines name it while the process lives;
once it has exited (its exit and OOM kill events, in either order), what its earlier events found names it,
for :data:`~jalki_k8s.cgroup_index.V1_EXIT_GRACE_S` after its exit event (counted in ``cgroups.v1_lookups`` /
``v1_fallbacks``). A process whose v1 lines name no container either (the kubelet, the runtime) is not read
again for :data:`~jalki_k8s.cgroup_index.V1_NEGATIVE_TTL_S` (``v1_negative_hits``).

Events whose pod is not yet known wait in a bounded buffer for ``retry_s`` (a pod's first processes
start before its watch event arrives), and so do events whose cgroup id is not indexed while the index
was walked too recently to walk again (a new pod's short-lived process, gone from ``/proc`` already);
they come out of a later :meth:`K8sEnricher.enrich` or
:meth:`K8sEnricher.flush`, resolved ("late") or marked unresolved. Nothing is dropped: a full buffer
lets its oldest event out marked unresolved, counted.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lightkube import KubeConfig
from lightkube.config.kubeconfig import SingleConfig

from jalki_k8s.cgroup_index import CgroupIndex
from jalki_k8s.cgroup_path import ContainerRef, parse_cgroup_path
from jalki_k8s.owners import OWNER_LOOKUP_ENV, OwnerLookup, owner_lookup_from_env
from jalki_k8s.pods import PodIndex, PodInfo
from jalki_k8s.watch import DEFAULT_SILENCE_S, PodWatcher

log = logging.getLogger("jalki.k8s")

DEFAULT_RETRY_S = 2.0
DEFAULT_MAX_PENDING = 10_000
UNRESOLVED_KEY = "jalki.k8s.unresolved"
DELETED_KEY = "jalki.k8s.pod_deleted"
EXIT_EVENT = "kernel.process.exit"
"""A process's last event (jalki-process): what was remembered of its pid is dropped a grace period after it."""

K8S_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Kubernetes names of the event's process (OpenTelemetry semantic conventions); jalki-k8s",
    "properties": {
        **{key: {"type": "string", "minLength": 1} for key in (
            "k8s.pod.name", "k8s.namespace.name", "k8s.container.name", "k8s.node.name", "container.runtime",
            "k8s.replicaset.name", "k8s.deployment.name", "k8s.statefulset.name", "k8s.daemonset.name",
            "k8s.job.name", "k8s.cronjob.name", "k8s.replicationcontroller.name")},
        "k8s.pod.uid": {"type": "string", "pattern": "^[0-9a-f-]{32,36}$"},
        "container.id": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        UNRESOLVED_KEY: {"const": True},
        DELETED_KEY: {"const": True},
    },
    "additionalProperties": False,
    "anyOf": [
        {"required": ["k8s.pod.name", "k8s.pod.uid", "k8s.namespace.name"]},
        {"required": ["k8s.pod.uid", UNRESOLVED_KEY]},
        {"required": ["container.id"], "not": {"required": ["k8s.pod.uid"]}},
    ],
}
"""JSON schema of the ``k8s`` object (for the core's event schema)."""


@dataclass
class EnrichCounters:
    """What happened to each event the enricher saw (every event lands in exactly one of the first eight)."""

    hit: int = 0
    """Resolved at once (tombstones included)."""
    late: int = 0
    """Resolved after waiting in the buffer."""
    unresolved: int = 0
    """Named a pod that stayed unknown: went out marked ``jalki.k8s.unresolved``."""
    miss: int = 0
    """No cgroup path for the event's cgroup id or pid (both gone)."""
    host_process: int = 0
    """A process outside any container."""
    container_only: int = 0
    """A container outside any pod (plain docker, podman)."""
    api_unavailable: int = 0
    """In a pod, but no API server was configured or reachable: no k8s fields."""
    no_process: int = 0
    """Events with neither cgroup id nor pid."""
    tombstone: int = 0
    """Of hit and late: resolved from a deleted pod's tombstone."""
    pending_overflow: int = 0
    """Of unresolved: let out early because the buffer was full."""


class K8sEnricher:
    """Adds ``k8s`` to events (see the module docstring); :meth:`start`, :meth:`enrich`, :meth:`close`.

    :param node_name: this node (default: ``$NODE_NAME``, else the host name, as the kubelet defaults to).
    :param config: the API server (default: in-cluster, else ``KUBECONFIG`` / ``~/.kube/config``).
    :param cgroup_root: the cgroup v2 hierarchy (default: detected; ``/sys/fs/cgroup`` or its ``unified/``).
    :param proc_root: the host's ``/proc`` (default: ``$JALKI_HOST_PROC``, else ``/proc``; the DaemonSet
        mounts it at ``/host/proc``).
    :param retry_s: how long an event whose pod is unknown waits.
    :param max_pending: most events waiting.
    :param watch: start a :class:`PodWatcher` (``False``: the caller fills :attr:`pods` itself).
    :param owner_lookup: read Deployments and CronJobs from the API server (needs ``get`` on
        ``apps/replicasets`` and ``batch/jobs``); default: ``$JALKI_K8S_OWNER_LOOKUP`` (off when unset;
        :class:`ValueError` for a value that is neither on nor off).
    """

    def __init__(
        self,
        *,
        node_name: str | None = None,
        config: KubeConfig | SingleConfig | None = None,
        cgroup_root: Path | None = None,
        proc_root: Path | None = None,
        retry_s: float = DEFAULT_RETRY_S,
        max_pending: int = DEFAULT_MAX_PENDING,
        watch: bool = True,
        pods: PodIndex | None = None,
        cgroups: CgroupIndex | None = None,
        clock: Callable[[], float] = time.monotonic,
        silence_s: float = DEFAULT_SILENCE_S,
        owner_lookup: bool | None = None,
    ) -> None:
        self.node_name = node_name or os.environ.get("NODE_NAME") or socket.gethostname().lower()
        self.pods = pods or PodIndex()
        self.cgroups = cgroups or CgroupIndex(cgroup_root if cgroup_root is not None else "detect",
                                              proc_root=proc_root or Path(os.environ.get("JALKI_HOST_PROC", "/proc")))
        self.retry_s = retry_s
        self.max_pending = max_pending
        self.counters = EnrichCounters()
        self._clock = clock
        self._pending: deque[tuple[float, dict[str, Any], ContainerRef | None]] = deque()
        """(deadline, event, ref): ``ref`` is ``None`` while the event's cgroup is not yet indexed."""
        self._overflow: list[dict[str, Any]] = []
        """Events the current batch pushed out of a full buffer, marked unresolved."""
        self._parse = functools.lru_cache(maxsize=65536)(parse_cgroup_path)
        if owner_lookup is None:
            owner_lookup = owner_lookup_from_env(os.environ.get(OWNER_LOOKUP_ENV))
        self.owners = OwnerLookup() if owner_lookup else None
        self.watcher: PodWatcher | None = None
        if watch:
            self.watcher = PodWatcher(self.pods, self.node_name, config=config, silence_s=silence_s,
                                      owners=self.owners)
        if not node_name and not os.environ.get("NODE_NAME"):
            log.info("jalki-k8s: NODE_NAME is not set; using the host name %r as the node name", self.node_name)

    def start(self) -> None:
        """Start following the pods of this node (returns at once; :attr:`ready` tells when they are known)."""
        if self.watcher is not None:
            self.watcher.start()

    @property
    def ready(self) -> bool:
        """True once the pods of this node have been listed (always, without a watcher)."""
        return self.watcher is None or self.watcher.synced.is_set()

    def enrich(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Add ``k8s`` to ``events``; the events ready to go on (buffered earlier ones first).

        An event whose pod is not yet known is held back and comes out of a later call or :meth:`flush`.
        """
        out = self._release(force=False)
        ready = [event for event in events if self._enrich_one(event)]
        out += self._overflow  # let out of a full buffer by this batch: older than the batch
        self._overflow = []
        return out + ready

    def flush(self) -> list[dict[str, Any]]:
        """Every held event now: resolved if its pod is known, else marked unresolved."""
        return self._release(force=True)

    def close(self) -> list[dict[str, Any]]:
        """Stop watching; the held events (as :meth:`flush`)."""
        if self.watcher is not None:
            self.watcher.close()
        return self.flush()

    @property
    def pending(self) -> int:
        """Events waiting for their pod."""
        return len(self._pending)

    def status(self) -> dict[str, Any]:
        """State and counters, for ``status`` and metrics."""
        watcher = self.watcher
        if watcher is None:
            state, problem = "static", None
        elif watcher.disabled:
            state, problem = "disabled", watcher.problem
        elif watcher.problem is not None:
            state, problem = "unreachable", watcher.problem
        else:
            state, problem = ("synced" if watcher.synced.is_set() else "connecting"), None
        return {
            "state": state,
            "problem": problem,
            "node": self.node_name,
            "cgroup_root": str(self.cgroups.v2_root) if self.cgroups.v2_root else None,
            "pending": self.pending,
            "counters": asdict(self.counters),
            "pods": asdict(self.pods.stats),
            "cgroups": asdict(self.cgroups.stats),
            "watch": asdict(watcher.stats) if watcher is not None else None,
            "owner_lookup": asdict(self.owners.stats) if self.owners is not None else None,
        }

    # -- one event -------------------------------------------------------------------------------------------

    def _enrich_one(self, event: dict[str, Any]) -> bool:
        """Enrich ``event``; False when it was held back."""
        process = event.get("process_data") or {}
        cgroup_id, pid = process.get("cgroup_id") or 0, process.get("pid") or 0
        if not cgroup_id and not pid:
            self.counters.no_process += 1
            return True
        path = self._path_of(cgroup_id, pid)
        if event.get("type") == EXIT_EVENT and pid:
            # its last event but for its OOM kill (another ring, maybe later): forgotten after a grace period
            self.cgroups.forget_process(pid, cgroup_id)
        if path is None:
            if self.cgroups.walk_skipped:  # a cgroup made since the last walk (a new pod's short-lived process)
                self._hold(event, None)
                return False
            self.counters.miss += 1
            return True
        ref = self._classify(event, path)
        if ref is None:
            return True
        self._hold(event, ref)
        return False

    def _path_of(self, cgroup_id: int, pid: int) -> str | None:
        """The cgroup path that says most about the process: its v2 one, or a v1 one naming a container."""
        path = self.cgroups.path_of(cgroup_id, pid)
        if path is not None and pid and self.cgroups.v1_hierarchies and self._parse(path) is None:
            # a container in v1 hierarchies only (hybrid node, cgroupfs driver): its v2 cgroup is the runtime's
            found = self.cgroups.v1_container_path(pid, cgroup_id, self._parse)
            if found is not None:
                return found
        return path

    def _classify(self, event: dict[str, Any], path: str, *, late: bool = False) -> ContainerRef | None:
        """Enrich ``event`` whose cgroup path is ``path`` and count it; its ref when its pod is not known yet."""
        ref = self._parse(path)
        if ref is None:
            self.counters.host_process += 1
            return None
        if ref.pod_uid is None:
            self.counters.container_only += 1
            event["k8s"] = {"container.id": ref.container_id, "container.runtime": ref.runtime or "docker"}
            return None
        info, deleted = self.pods.lookup(ref.pod_uid, ref.container_id)
        if info is not None:
            self._attach(event, ref, info, deleted)
            if late:
                self.counters.late += 1
            else:
                self.counters.hit += 1
            return None
        watcher = self.watcher
        if watcher is not None and (watcher.disabled or (watcher.problem and not watcher.synced.is_set())):
            self.counters.api_unavailable += 1
            return None
        return ref

    def _hold(self, event: dict[str, Any], ref: ContainerRef | None) -> None:
        if len(self._pending) >= self.max_pending:
            _, oldest, oldest_ref = self._pending.popleft()
            self._give_up(oldest, oldest_ref)
            self.counters.pending_overflow += 1
            self._overflow.append(oldest)
        self._pending.append((self._clock() + self.retry_s, event, ref))

    def _give_up(self, event: dict[str, Any], ref: ContainerRef | None) -> None:
        """The wait is over: unresolved (a pod never shown), or a miss (a cgroup never found)."""
        if ref is None:
            self.counters.miss += 1
        else:
            self._mark_unresolved(event, ref)

    def _release(self, *, force: bool) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if not self._pending:
            return out
        now = self._clock()
        if force and any(ref is None for _, _, ref in self._pending):
            self.cgroups.refresh()  # the last chance to find their cgroups: walk now, however recent the last walk
        keep: deque[tuple[float, dict[str, Any], ContainerRef | None]] = deque()
        for deadline, event, ref in self._pending:
            if ref is None:  # its cgroup was not indexed yet: a walk may find it now
                process = event.get("process_data") or {}
                path = self._path_of(process.get("cgroup_id") or 0, process.get("pid") or 0)
                if path is None:
                    if force or deadline <= now:
                        self._give_up(event, None)
                        out.append(event)
                    else:
                        keep.append((deadline, event, None))
                    continue
                ref = self._classify(event, path, late=True)
                if ref is None:
                    out.append(event)
                    continue
            info, deleted = self.pods.lookup(ref.pod_uid, ref.container_id)
            if info is not None:
                self._attach(event, ref, info, deleted)
                self.counters.late += 1
                out.append(event)
            elif force or deadline <= now:
                self._mark_unresolved(event, ref)
                out.append(event)
            else:
                keep.append((deadline, event, ref))
        self._pending = keep
        return out

    def _attach(self, event: dict[str, Any], ref: ContainerRef, info: PodInfo, deleted: bool) -> None:
        k8s: dict[str, Any] = dict(info.attributes)
        if ref.container_id:
            k8s["container.id"] = ref.container_id
            name, runtime = info.containers.get(ref.container_id, ("", ref.runtime or ""))
            if name:
                k8s["k8s.container.name"] = name
            if ref.runtime or runtime:
                k8s["container.runtime"] = ref.runtime or runtime
        if deleted:
            k8s[DELETED_KEY] = True
            self.counters.tombstone += 1
        event["k8s"] = k8s

    def _mark_unresolved(self, event: dict[str, Any], ref: ContainerRef) -> None:
        k8s: dict[str, Any] = {"k8s.pod.uid": ref.pod_uid, UNRESOLVED_KEY: True}
        if ref.container_id:
            k8s["container.id"] = ref.container_id
        event["k8s"] = k8s
        self.counters.unresolved += 1
