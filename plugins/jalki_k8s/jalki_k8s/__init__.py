"""jalki-k8s: name the pod, namespace, container and workload of every event; DaemonSet manifests.

- :mod:`.cgroup_path`: cgroup path -> (pod uid, container id, runtime, QoS class), pure;
- :mod:`.cgroup_index`: cgroup v2 id -> cgroup path (inode index, ``/proc/<pid>/cgroup`` fallback);
- :mod:`.pods`: the pods of this node (index, tombstones, owners) and their list+watch through lightkube;
- :mod:`.enricher`: :class:`~jalki_k8s.enricher.K8sEnricher`, the stage that adds ``k8s`` to events;
- :mod:`.manifests`: the deployment manifests, one source of truth (``render(profile, fmt)``).
"""

__version__ = "0.1.0"
