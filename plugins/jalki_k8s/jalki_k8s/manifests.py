"""The Kubernetes deployment of jalki, from one source of truth.

:func:`render` gives the manifests of one profile (``minimal``, ``compat``, ``privileged``) as YAML or
JSON; ``jalki k8s render`` prints it. :func:`kustomize_tree` gives the files committed under
``deploy/kubernetes/``: a kustomize ``base`` (the ``minimal`` profile), one overlay per profile whose
strategic-merge patch turns the base into that profile, and ``rendered/<profile>.yaml`` (what
``kubectl apply -f`` takes without kustomize). A test checks the committed files are this output;
``python -m jalki_k8s.manifests DIR`` rewrites them.

Profiles:

- ``minimal``: not privileged; all capabilities dropped, then only those in :data:`CAPABILITIES`
  added back, each for a reason written next to it in the YAML;
- ``compat``: adds ``SYS_ADMIN``, for kernels older than 5.8 (no ``CAP_BPF``/``CAP_PERFMON``: the
  ``bpf()`` and ``perf_event_open()`` checks want ``CAP_SYS_ADMIN``) and runtimes whose default
  seccomp profile refuses ``bpf()`` without it (seccomp unconfined);
- ``privileged``: ``privileged: true``, for nodes where neither works (other LSMs in the way).

``owner_lookup=True`` (``jalki k8s render --owner-lookup``) adds, to any profile, ``get`` on
``apps/replicasets`` and ``batch/jobs`` to the ClusterRole and ``JALKI_K8S_OWNER_LOOKUP=1`` to the
DaemonSet: exact Deployment and CronJob names (:mod:`jalki_k8s.owners`). The committed files are the
default (without it).
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from jalki_core.errors import UsageError

PROFILES = ("minimal", "compat", "privileged")
FORMATS = ("yaml", "json")
NAME = "jalki"
NAMESPACE = "jalki"
IMAGE = "jalki:0.1.0"
METRICS_PORT = 9464
SOCKET_DIR = "/run/jalki"
TERMINATION_GRACE_S = 60
"""Longer than the emitters' drain at shutdown: SIGTERM drains the rings and flushes every emitter first."""
SERVE_COMMAND = [
    "jalki", "serve",
    "--plugin", "tcp", "--plugin", "process", "--plugin", "memory",
    "--enrich", "k8s",
    "--socket", f"{SOCKET_DIR}/jalki.sock",
    "--metrics-addr", f"0.0.0.0:{METRICS_PORT}",
]

CAPABILITIES: dict[str, str] = {
    "BPF": "load BPF programs and create BPF maps (bpf(); kernel 5.8+)",
    "PERFMON": "attach tracepoints and perf events, read kernel memory from BPF (kernel 5.8+)",
    "SYS_RESOURCE": "raise RLIMIT_MEMLOCK, which kernels before 5.11 charge BPF maps to",
    "SYS_PTRACE": "read /host/proc/<pid> of other processes (exe, ns, cgroup: ptrace access checks)",
    "DAC_READ_SEARCH": "read host files root cannot by mode alone (/host/proc/<pid>/fdinfo, tracefs ids)",
}
"""The ``minimal`` profile's capabilities, each with why jalki needs it (written next to it in the YAML)."""
COMPAT_CAPABILITIES: dict[str, str] = {
    "SYS_ADMIN": "kernels before 5.8 (no CAP_BPF/CAP_PERFMON) and seccomp profiles that want it for bpf()",
}

HISTORY_DIR = "/var/lib/jalki"
"""Where the daemon keeps its SQLite history (``jalki serve``'s default ``--history``), a hostPath."""

LABELS = {"app.kubernetes.io/name": NAME, "app.kubernetes.io/component": "node-agent"}
READ_ONLY_HOST_PATHS: tuple[tuple[str, str, str, str], ...] = (
    # (volume name, host path, mount path, hostPath type)
    ("host-proc", "/proc", "/host/proc", "Directory"),
    ("cgroup", "/sys/fs/cgroup", "/sys/fs/cgroup", "Directory"),
    ("btf", "/sys/kernel/btf", "/sys/kernel/btf", ""),
    ("tracefs", "/sys/kernel/tracing", "/sys/kernel/tracing", ""),
)
"""Host paths mounted read-only: procfs instead of ``hostPID``, the cgroup tree (pod lookups), the kernel's
BTF (CO-RE relocations) and tracefs (classic tracepoint ids). ``btf``/``tracefs`` are unchecked: a kernel
without them still starts jalki, which then says which probes cannot attach."""


def _security_context(profile: str) -> dict[str, Any]:
    if profile == "privileged":
        return {"privileged": True, "allowPrivilegeEscalation": True, "readOnlyRootFilesystem": True,
                "runAsUser": 0, "seccompProfile": {"type": "Unconfined"}}
    add = list(CAPABILITIES) + (list(COMPAT_CAPABILITIES) if profile == "compat" else [])
    return {
        "privileged": False,
        # no_new_privs: the kernel refuses it together with CAP_SYS_ADMIN (compat)
        "allowPrivilegeEscalation": profile == "compat",
        "readOnlyRootFilesystem": True,
        "runAsUser": 0,
        "capabilities": {"drop": ["ALL"], "add": add},
        # containerd 1.7+ and CRI-O's default profiles allow bpf()/perf_event_open() with CAP_BPF/CAP_PERFMON
        "seccompProfile": {"type": "Unconfined" if profile == "compat" else "RuntimeDefault"},
    }


OWNER_LOOKUP_RULES: list[dict[str, Any]] = [
    {"apiGroups": ["apps"], "resources": ["replicasets"], "verbs": ["get"]},
    {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get"]},
]
"""What ``owner_lookup`` adds to the ClusterRole: read one ReplicaSet or Job by name, nothing else."""


def _daemonset(profile: str, owner_lookup: bool = False) -> dict[str, Any]:
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    for name, host, mount, kind in READ_ONLY_HOST_PATHS:
        host_path: dict[str, Any] = {"path": host}
        if kind:
            host_path["type"] = kind
        volumes.append({"name": name, "hostPath": host_path})
        mounts.append({"name": name, "mountPath": mount, "readOnly": True})
    volumes.append({"name": "socket", "hostPath": {"path": SOCKET_DIR, "type": "DirectoryOrCreate"}})
    mounts.append({"name": "socket", "mountPath": SOCKET_DIR})
    volumes.append({"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}})
    mounts.append({"name": "tmp", "mountPath": "/tmp"})
    # the event history (the root filesystem is read-only): on the node, so it outlives a pod restart
    volumes.append({"name": "history", "hostPath": {"path": HISTORY_DIR, "type": "DirectoryOrCreate"}})
    mounts.append({"name": "history", "mountPath": HISTORY_DIR})
    probe = {"port": "metrics", "scheme": "HTTP"}
    container = {
        "name": NAME,
        "image": IMAGE,
        "imagePullPolicy": "IfNotPresent",
        "command": list(SERVE_COMMAND),
        "env": [
            {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "JALKI_HOST_PROC", "value": "/host/proc"},
            {"name": "JALKI_SOCKET", "value": f"{SOCKET_DIR}/jalki.sock"},
            *([{"name": "JALKI_K8S_OWNER_LOOKUP", "value": "1"}] if owner_lookup else []),
        ],
        "ports": [{"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}],
        "livenessProbe": {"httpGet": {"path": "/healthz", **probe}, "initialDelaySeconds": 10,
                          "periodSeconds": 10, "timeoutSeconds": 2, "failureThreshold": 3},
        # ready: probes attached, draining, and the pods of this node listed once
        "readinessProbe": {"httpGet": {"path": "/readyz", **probe}, "periodSeconds": 5, "timeoutSeconds": 2,
                           "failureThreshold": 3},
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"},
                      "limits": {"cpu": "1", "memory": "1Gi"}},
        "securityContext": _security_context(profile),
        "volumeMounts": mounts,
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": NAME, "namespace": NAMESPACE, "labels": dict(LABELS)},
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/name": NAME}},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
            "template": {
                "metadata": {
                    "labels": dict(LABELS),
                    "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": str(METRICS_PORT),
                                    "prometheus.io/path": "/metrics"},
                },
                "spec": {
                    "serviceAccountName": NAME,
                    "hostPID": False,
                    "hostNetwork": False,
                    "terminationGracePeriodSeconds": TERMINATION_GRACE_S,
                    "tolerations": [{"operator": "Exists"}],  # every node, tainted ones included
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }


def _base_objects(profile: str, owner_lookup: bool = False) -> list[dict[str, Any]]:
    meta = {"name": NAME, "labels": dict(LABELS)}
    return [
        {"apiVersion": "v1", "kind": "Namespace",
         # hostPath volumes and added capabilities are beyond the baseline Pod Security Standard
         "metadata": {"name": NAMESPACE, "labels": {**LABELS, "pod-security.kubernetes.io/enforce": "privileged"}}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {**meta, "namespace": NAMESPACE}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": dict(meta),
         # the pods of this node only: read, never write; owners are read from the pods themselves
         "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
                   *(copy.deepcopy(OWNER_LOOKUP_RULES) if owner_lookup else [])]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": dict(meta),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": NAME},
         "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": NAMESPACE}]},
        _daemonset(profile, owner_lookup),
    ]


def objects(profile: str, *, owner_lookup: bool = False) -> list[dict[str, Any]]:
    """The manifests of ``profile`` as Kubernetes objects (dicts); ``owner_lookup``: see the module docstring."""
    if profile not in PROFILES:
        raise UsageError(f"unknown profile {profile!r}", hint=f"use one of: {', '.join(PROFILES)}")
    return _base_objects(profile, owner_lookup)


def _yaml(documents: list[dict[str, Any]]) -> str:
    text = "---\n".join(yaml.safe_dump(doc, sort_keys=False, default_flow_style=False) for doc in documents)
    reasons = {**CAPABILITIES, **COMPAT_CAPABILITIES}
    lines = []
    for line in text.splitlines():
        item = line.strip()
        if item.startswith("- ") and item[2:] in reasons:
            line = f"{line}  # {reasons[item[2:]]}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def render(profile: str, fmt: str = "yaml", *, owner_lookup: bool = False) -> str:
    """The manifests of ``profile`` as one YAML stream (capabilities commented) or a JSON ``List``."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r}", hint="use --format yaml or --format json")
    documents = objects(profile, owner_lookup=owner_lookup)
    if fmt == "json":
        return json.dumps({"apiVersion": "v1", "kind": "List", "items": documents}, indent=2) + "\n"
    what = f"the {profile} profile" + (" with owner lookups" if owner_lookup else "")
    return HEADER.format(what=what) + _yaml(documents)


HEADER = ("# Generated by jalki_k8s.manifests ({what}); do not edit: change manifests.py and run\n"
          "# python -m jalki_k8s.manifests deploy/kubernetes\n")
BASE_FILES = ("namespace", "serviceaccount", "clusterrole", "clusterrolebinding", "daemonset")


def _container_patch(profile: str) -> dict[str, Any]:
    """The strategic-merge patch from the base (minimal) DaemonSet to ``profile``'s."""
    base = _security_context("minimal")
    wanted = _security_context(profile)
    context: dict[str, Any] = {key: None for key in base if key not in wanted}  # null deletes in a merge patch
    context.update(wanted)
    return {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": NAME, "namespace": NAMESPACE},
            "spec": {"template": {"spec": {"containers": [{"name": NAME, "securityContext": context}]}}}}


def kustomize_tree() -> dict[str, str]:
    """The files of ``deploy/kubernetes/`` by relative path."""
    files: dict[str, str] = {}
    for name, document in zip(BASE_FILES, _base_objects("minimal"), strict=True):
        files[f"base/{name}.yaml"] = HEADER.format(what="kustomize base") + _yaml([document])
    files["base/kustomization.yaml"] = HEADER.format(what="kustomize base") + _yaml([{
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [f"{name}.yaml" for name in BASE_FILES]}])
    for profile in PROFILES:
        kustomization: dict[str, Any] = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                                         "resources": ["../../base"]}
        if profile != "minimal":
            kustomization["patches"] = [{"path": "security-context.yaml"}]
            files[f"overlays/{profile}/security-context.yaml"] = (
                HEADER.format(what=f"{profile} overlay") + _yaml([_container_patch(profile)]))
        files[f"overlays/{profile}/kustomization.yaml"] = HEADER.format(what=f"{profile} overlay") + _yaml(
            [kustomization])
        files[f"rendered/{profile}.yaml"] = render(profile, "yaml")
    return files


def write_tree(directory: Path) -> list[Path]:
    """Write :func:`kustomize_tree` under ``directory``; the files written."""
    written = []
    for relative, text in kustomize_tree().items():
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written


def strategic_merge(base: Any, patch: Any) -> Any:
    """Apply a strategic-merge patch the way kustomize does for the fields used here: maps merge, ``null``
    deletes, lists of named maps (containers, volumes) merge by ``name``, other lists are replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = copy.deepcopy(base)
        for key, value in patch.items():
            if value is None:
                merged.pop(key, None)
            elif key in merged:
                merged[key] = strategic_merge(merged[key], value)
            else:
                merged[key] = copy.deepcopy(value)
        return merged
    named = isinstance(base, list) and isinstance(patch, list) and all(
        isinstance(item, dict) and "name" in item for item in [*base, *patch])
    if named:
        merged_list = copy.deepcopy(base)
        for item in patch:
            for index, existing in enumerate(merged_list):
                if existing["name"] == item["name"]:
                    merged_list[index] = strategic_merge(existing, item)
                    break
            else:
                merged_list.append(copy.deepcopy(item))
        return merged_list
    return copy.deepcopy(patch)


if __name__ == "__main__":  # pragma: no cover - the maintainer's regeneration command
    for written_path in write_tree(Path(sys.argv[1] if len(sys.argv) > 1 else "deploy/kubernetes")):
        print(written_path)
