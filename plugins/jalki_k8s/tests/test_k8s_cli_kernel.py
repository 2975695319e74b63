"""The real ``jalki run --enrich k8s`` and ``jalki ask --enrich k8s``: real refused connects from processes in
containerd-, CRI-O- and docker-shaped cgroups carry their pod, namespace, container and workload from the fake
API server (real lightkube over real HTTP, found through KUBECONFIG), and ``ask`` names the pod and workload.
Off-cluster (no API server configured) the enricher says so once and enriches nothing, counted.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from fake_apiserver import FakeApiServer
from test_k8s_kernel_cgroups import CHILD, NODE, cgroups, netns, shapes  # noqa: F401  (fixtures)

from jalki_core.testing import event_validator

pytestmark = pytest.mark.kernel
JALKI = str(Path(sys.executable).with_name("jalki"))


def jalki(*args: str, env: dict[str, str], wait_for: str) -> tuple[subprocess.Popen[str], list[str]]:
    """Start ``jalki ARGS``; return once a stderr line contains ``wait_for`` (the probes are attached), with the
    stderr lines so far."""
    proc = subprocess.Popen([JALKI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stderr is not None
    deadline = time.monotonic() + 60
    seen = []
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stderr], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        line = proc.stderr.readline()
        seen.append(line)
        if wait_for in line:
            return proc, seen
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"jalki did not start: {''.join(seen)}{proc.stderr.read()}")


def run_children(rows: list[dict[str, Any]], namespace: str, make: Callable[[str], Path]) -> None:
    """One real process per row, in the row's cgroup: a refused connect in network namespace ``namespace``,
    then SIGKILL."""
    for row in rows:
        directory = make(row["path"])
        row["cgroup_id"] = directory.stat().st_ino
        child = subprocess.Popen(["ip", "netns", "exec", namespace, sys.executable, "-c", CHILD],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        (directory / "cgroup.procs").write_text(str(child.pid))
        out, err = child.communicate("go\n", timeout=60)
        assert child.returncode == -signal.SIGKILL, err
        row["pid"] = int(out.split()[0])


def environment(tmp_path: Path, server: FakeApiServer | None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("KUBERNETES_")}
    config = tmp_path / "kubeconfig"
    if server is not None:
        config.write_text(yaml.safe_dump(server.kubeconfig()))
    env.update(KUBECONFIG=str(config), NODE_NAME=NODE, HOME=str(tmp_path))  # no ~/.kube/config either
    return env


def test_run_and_ask_name_pod_namespace_container_and_workload(
    netns: str, cgroups: Callable[[str], Path], tmp_path: Path  # noqa: F811
) -> None:
    rows = shapes()
    server = FakeApiServer().start()
    try:
        for row in rows:
            server.add(row["pod"])
        env = environment(tmp_path, server)
        out, summary_path = tmp_path / "events.ndjson", tmp_path / "summary.json"
        proc, _ = jalki("run", "--plugin", "tcp", "--enrich", "k8s", "--emit", f"file:{out}",
                     "--summary-json", str(summary_path), env=env, wait_for="tracing")
        run_children(rows, netns, cgroups)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, stderr

        validate = event_validator()
        events = [json.loads(line) for line in out.read_text().splitlines()]
        enriched = json.loads(summary_path.read_text())["enrich"]  # shown when an assertion below fails
        for row in rows:
            [refused] = [e for e in events if e["type"] == "kernel.tcp.connect"
                         and (e.get("process_data") or {}).get("pid") == row["pid"]]
            validate(refused)  # the k8s object is in the event schema
            assert refused["error"]["code"] == "ECONNREFUSED"
            assert refused["process_data"]["cgroup_id"] == row["cgroup_id"]
            assert "k8s" in refused, (refused, enriched)
            k8s = refused["k8s"]
            assert k8s["k8s.pod.name"] == f"{row['runtime']}-pod" and k8s["k8s.pod.uid"] == row["uid"]
            assert k8s["k8s.namespace.name"] == f"ns-{row['runtime']}" and k8s["k8s.node.name"] == NODE
            assert k8s["k8s.container.name"] == "main" and k8s["container.id"] == row["cid"]
            assert k8s["container.runtime"] == row["runtime"]
        by_runtime = {row["runtime"]: row for row in rows}
        k8s_of = {runtime: next(e["k8s"] for e in events if (e.get("process_data") or {}).get("pid") == row["pid"])
                  for runtime, row in by_runtime.items()}
        assert k8s_of["containerd"]["k8s.deployment.name"] == "checkout"
        assert k8s_of["cri-o"]["k8s.statefulset.name"] == "ledger"
        assert k8s_of["docker"]["k8s.cronjob.name"] == "nightly"
        counters = json.loads(summary_path.read_text())["enrich"]["enrichers"]["k8s"]
        assert counters["state"] == "synced" and counters["errors"] == 0
        assert counters["counters"]["hit"] + counters["counters"]["late"] >= 3
        assert counters["counters"]["unresolved"] == 0
        assert "enricher k8s: synced" in stderr

        # ask, in this process with --enrich k8s: one refused connect from the containerd-shaped pod
        ask, _ = jalki("ask", "--enrich", "k8s", "--json", "--seconds", "6", "why are connections refused",
                    env=env, wait_for="observing")
        asked = shapes()[:1]
        server.add(asked[0]["pod"])
        run_children(asked, netns, cgroups)
        answer_text, ask_err = ask.communicate(timeout=60)
        assert ask.returncode == 0, ask_err
    finally:
        server.stop()
    answer = json.loads(answer_text)
    pod = f"{asked[0]['runtime']}-pod/ns-{asked[0]['runtime']} (Deployment checkout)"
    assert f"from {pod}" in answer["answer"], answer["answer"]
    [finding] = [f for f in answer["findings"] if f["errno"] == "ECONNREFUSED"][:1]
    pods = [p for group in finding["evidence"] for p in group["pods"]]
    assert {"pod": "containerd-pod", "namespace": "ns-containerd", "workload_kind": "Deployment",
            "workload": "checkout", "events": 1} in pods


def test_off_cluster_says_so_once_and_enriches_nothing_counted(
    netns: str, cgroups: Callable[[str], Path], tmp_path: Path  # noqa: F811
) -> None:
    rows = shapes()[:1]
    env = environment(tmp_path, None)  # KUBECONFIG names a file that does not exist; no in-cluster account
    out, summary_path = tmp_path / "events.ndjson", tmp_path / "summary.json"
    proc, early = jalki("run", "--plugin", "tcp_connect", "--enrich", "k8s", "--emit", f"file:{out}",
                 "--summary-json", str(summary_path), env=env, wait_for="tracing")
    run_children(rows, netns, cgroups)
    proc.send_signal(signal.SIGTERM)
    _, rest = proc.communicate(timeout=60)
    stderr = "".join(early) + rest
    assert proc.returncode == 0, stderr
    events = [json.loads(line) for line in out.read_text().splitlines()]
    [refused] = [e for e in events if (e.get("process_data") or {}).get("pid") == rows[0]["pid"]]
    assert refused["error"]["code"] == "ECONNREFUSED" and "k8s" not in refused
    assert stderr.count("no Kubernetes API server configured") == 2, stderr  # the warning, the summary line
    status = json.loads(summary_path.read_text())["enrich"]["enrichers"]["k8s"]
    assert status["state"] == "disabled" and status["counters"]["api_unavailable"] >= 1
    assert status["counters"]["hit"] == status["counters"]["late"] == status["counters"]["unresolved"] == 0


def test_unknown_enricher_is_one_line_listing_the_available() -> None:
    done = subprocess.run([JALKI, "run", "--plugin", "tcp", "--enrich", "k8s,nope"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert "unknown enricher 'nope'; available enrichers: k8s" in lines[0], done.stderr
    done = subprocess.run([JALKI, "run", "--plugin", "tcp", "--namespace", "payments"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode != 0 and "--namespace only applies with --enrich k8s" in done.stderr


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except urllib.error.URLError:  # the metrics port is not listening yet
        return 0, ""


def test_serve_is_ready_after_the_first_pod_list_and_shows_the_enricher_counters(
    netns: str, cgroups: Callable[[str], Path], tmp_path: Path  # noqa: F811
) -> None:
    api_port, metrics_port = free_port(), free_port()
    server = FakeApiServer(port=api_port)
    env = environment(tmp_path, server)  # the API server is not up yet: nothing answers at its address
    sock = tmp_path / "jalki.sock"
    proc, _ = jalki("serve", "--plugin", "tcp_connect", "--enrich", "k8s", "--history", "off", "--socket", str(sock),
                    "--metrics-addr", f"127.0.0.1:{metrics_port}", env=env, wait_for="jalki daemon")
    try:
        readyz = f"http://127.0.0.1:{metrics_port}/readyz"
        deadline = time.monotonic() + 30
        while (answer := http_get(readyz))[1].strip() in ("not ready: not draining", "") \
                and time.monotonic() < deadline:
            time.sleep(0.1)
        assert answer[0] == 503 and "enricher k8s" in answer[1], answer  # probes attached, pods never listed
        rows = shapes()[:1]
        server.start()
        server.add(rows[0]["pod"])
        while http_get(readyz)[0] != 200:
            assert time.monotonic() < deadline + 30, http_get(readyz)
            time.sleep(0.1)
        run_children(rows, netns, cgroups)

        def status() -> dict[str, Any]:
            done = subprocess.run([JALKI, "status", "--json", "--socket", str(sock)], capture_output=True, text=True,
                                  timeout=30, env=env)
            assert done.returncode == 0, done.stderr
            return json.loads(done.stdout)  # type: ignore[no-any-return]

        def resolved(counters: dict[str, int]) -> int:
            return counters["hit"] + counters["late"]

        while resolved((enrich := status()["enrich"]["enrichers"]["k8s"])["counters"]) < 1:
            assert time.monotonic() < deadline + 60, json.dumps(enrich)
            time.sleep(0.2)
        assert enrich["state"] == "synced" and enrich["ready"] is True and enrich["errors"] == 0
        metrics = http_get(f"http://127.0.0.1:{metrics_port}/metrics")[1]
        hits = [float(line.split()[-1]) for line in metrics.splitlines()
                if line.startswith(('jalki_enrich_events_total{enricher="k8s",result="hit"}',
                                    'jalki_enrich_events_total{enricher="k8s",result="late"}'))]
        assert len(hits) == 2 and sum(hits) >= 1, metrics
        assert 'jalki_enrich_ready{enricher="k8s"} 1.0' in metrics
        text = subprocess.run([JALKI, "status", "--socket", str(sock)], capture_output=True, text=True, timeout=30,
                              env=env).stdout
        assert "enricher k8s: synced" in text
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
        server.stop()
    assert proc.returncode == 0, stderr
