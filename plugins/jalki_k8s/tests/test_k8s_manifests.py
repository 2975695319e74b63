"""The deployment manifests: committed files = the generator's output, Kubernetes schemas, security policy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from jalki_k8s.manifests import (
    CAPABILITIES,
    PROFILES,
    TERMINATION_GRACE_S,
    kustomize_tree,
    objects,
    render,
    strategic_merge,
)

from jalki_core.errors import UsageError

DEPLOY = Path(__file__).resolve().parents[3] / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.30.0"  # the oldest release still supported upstream when this was written


def by_kind(documents: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {document["kind"]: document for document in documents}


def container(documents: list[dict[str, Any]]) -> dict[str, Any]:
    [jalki] = by_kind(documents)["DaemonSet"]["spec"]["template"]["spec"]["containers"]
    return jalki  # type: ignore[no-any-return]


def test_committed_files_are_the_generator_output() -> None:
    expected = kustomize_tree()
    committed = {str(path.relative_to(DEPLOY)): path.read_text() for path in DEPLOY.rglob("*.yaml")}
    assert sorted(committed) == sorted(expected), "regenerate: python -m jalki_k8s.manifests deploy/kubernetes"
    for relative, text in expected.items():
        assert committed[relative] == text, f"{relative} is stale: python -m jalki_k8s.manifests deploy/kubernetes"


@pytest.mark.parametrize("profile", PROFILES)
def test_overlay_applied_to_the_base_is_the_profile(profile: str) -> None:
    """What kustomize builds from base + overlay (strategic merge) equals what 'jalki k8s render' prints."""
    tree = kustomize_tree()
    base = [yaml.safe_load(tree[f"base/{name}"]) for name in yaml.safe_load(tree["base/kustomization.yaml"])
            ["resources"]]
    overlay = yaml.safe_load(tree[f"overlays/{profile}/kustomization.yaml"])
    assert overlay["resources"] == ["../../base"]
    built = base
    for patch_ref in overlay.get("patches", []):
        patch = yaml.safe_load(tree[f"overlays/{profile}/{patch_ref['path']}"])
        built = [strategic_merge(doc, patch) if doc["kind"] == patch["kind"] else doc for doc in built]
    assert built == objects(profile)
    assert list(yaml.safe_load_all(tree[f"rendered/{profile}.yaml"])) == objects(profile)


@pytest.mark.parametrize("profile", PROFILES)
def test_every_object_validates_against_the_kubernetes_schema(profile: str) -> None:
    for document in objects(profile):
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    for document in json.loads(render(profile, "json"))["items"]:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_a_schema_violation_is_caught() -> None:
    """The validator is not a no-op: a misspelt field fails strict validation."""
    broken = by_kind(objects("minimal"))["DaemonSet"]
    broken["spec"]["template"]["spec"]["containers"][0]["securityContxt"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_minimal_is_unprivileged_with_only_the_allowed_capabilities() -> None:
    documents = objects("minimal")
    context = container(documents)["securityContext"]
    assert context["privileged"] is False and context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"], "add": ["BPF", "PERFMON", "SYS_RESOURCE", "SYS_PTRACE",
                                                               "DAC_READ_SEARCH"]}
    assert "SYS_ADMIN" not in context["capabilities"]["add"]
    pod = by_kind(documents)["DaemonSet"]["spec"]["template"]["spec"]
    assert pod["hostPID"] is False and pod["hostNetwork"] is False
    text = render("minimal")
    for capability, reason in CAPABILITIES.items():  # each one justified where an operator reads it
        assert f"- {capability}  # {reason}" in text


def test_compat_adds_only_sys_admin_and_privileged_is_privileged() -> None:
    minimal = container(objects("minimal"))["securityContext"]["capabilities"]["add"]
    compat = container(objects("compat"))["securityContext"]
    assert compat["privileged"] is False
    assert compat["capabilities"]["add"] == [*minimal, "SYS_ADMIN"]
    assert container(objects("privileged"))["securityContext"]["privileged"] is True


@pytest.mark.parametrize("profile", PROFILES)
def test_host_mounts_are_read_only_but_the_socket(profile: str) -> None:
    documents = objects(profile)
    pod = by_kind(documents)["DaemonSet"]["spec"]["template"]["spec"]
    host_volumes = {volume["name"]: volume["hostPath"]["path"] for volume in pod["volumes"] if "hostPath" in volume}
    mounts = {mount["name"]: mount for mount in container(documents)["volumeMounts"]}
    assert host_volumes == {"host-proc": "/proc", "cgroup": "/sys/fs/cgroup", "btf": "/sys/kernel/btf",
                            "tracefs": "/sys/kernel/tracing", "socket": "/run/jalki", "history": "/var/lib/jalki"}
    assert mounts["host-proc"]["mountPath"] == "/host/proc"
    # written: the API socket, and the event history at the daemon's default --history path
    assert mounts["history"]["mountPath"] == "/var/lib/jalki"
    for name in host_volumes:
        assert mounts[name].get("readOnly", False) is (name not in ("socket", "history")), name
    assert container(documents)["securityContext"]["readOnlyRootFilesystem"] is True


@pytest.mark.parametrize("profile", PROFILES)
def test_rbac_reads_pods_only(profile: str) -> None:
    documents = by_kind(objects(profile))
    assert documents["ClusterRole"]["rules"] == [{"apiGroups": [""], "resources": ["pods"],
                                                  "verbs": ["get", "list", "watch"]}]
    assert "JALKI_K8S_OWNER_LOOKUP" not in {item["name"] for item in container(list(documents.values()))["env"]}
    binding = documents["ClusterRoleBinding"]
    assert binding["roleRef"]["name"] == documents["ClusterRole"]["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": documents["ServiceAccount"]["metadata"]["name"],
                                    "namespace": documents["ServiceAccount"]["metadata"]["namespace"]}]


def test_daemonset_operations_fields() -> None:
    documents = objects("minimal")
    daemonset = by_kind(documents)["DaemonSet"]
    jalki = container(documents)
    env = {item["name"]: item for item in jalki["env"]}
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert jalki["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert jalki["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert set(jalki["resources"]) == {"requests", "limits"}
    annotations = daemonset["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(jalki["ports"][0]["containerPort"])
    assert daemonset["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == TERMINATION_GRACE_S


def test_render_refuses_unknown_profile_and_format() -> None:
    with pytest.raises(UsageError, match="unknown profile 'root'"):
        render("root")
    with pytest.raises(UsageError, match="unknown format 'toml'"):
        render("minimal", "toml")


def jalki(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "jalki_core.cli", *args], capture_output=True, text=True,
                          check=False, timeout=120)


def test_jalki_k8s_render_command() -> None:
    """'jalki k8s render', added through the plugin's jalki_register_commands hook, prints render()."""
    result = jalki("k8s", "render", "--profile", "compat", "--format", "json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["items"] == objects("compat")
    assert jalki("k8s", "render").stdout == render("minimal")
    refused = jalki("k8s", "render", "--profile", "root")
    assert refused.returncode != 0 and refused.stdout == ""
    assert "unknown profile 'root'" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("profile", PROFILES)
def test_owner_lookup_adds_get_on_replicasets_and_jobs_and_the_env_switch_only(profile: str) -> None:
    plain, looked_up = objects(profile), objects(profile, owner_lookup=True)
    rules = by_kind(looked_up)["ClusterRole"]["rules"]
    assert rules == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
                     {"apiGroups": ["apps"], "resources": ["replicasets"], "verbs": ["get"]},
                     {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get"]}]
    env = container(looked_up)["env"]
    assert {"name": "JALKI_K8S_OWNER_LOOKUP", "value": "1"} in env
    # nothing else differs from the profile
    by_kind(looked_up)["ClusterRole"]["rules"] = by_kind(plain)["ClusterRole"]["rules"]
    env.remove({"name": "JALKI_K8S_OWNER_LOOKUP", "value": "1"})
    assert looked_up == plain
    for document in objects(profile, owner_lookup=True):
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_jalki_k8s_render_owner_lookup_option() -> None:
    result = jalki("k8s", "render", "--profile", "minimal", "--owner-lookup", "--format", "json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["items"] == objects("minimal", owner_lookup=True)
    assert jalki("k8s", "render", "--owner-lookup").stdout == render("minimal", owner_lookup=True)
