"""Kubernetes filters against a real daemon (``jalki run --serve --enrich k8s``) and the fake API server (real
lightkube over real HTTP): real refused connects from processes in containerd-, CRI-O- and docker-shaped cgroups,
and ``get_events``/``recent``/``stream`` (SDK and CLI ``--json``), ``ask`` and the MCP tools (through a real MCP
client) give only the events of the pod, namespace, container or workload asked for. Events of host processes
(other tests, the system) carry no ``k8s`` object and never match.
"""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests" / "kernel"))
from daemon_helpers import Daemon, running_daemon, wait_for
from fake_apiserver import FakeApiServer
from jalki_mcp.server import build_server
from jalki_mcp.tools import JalkiTools
from mcp import Client as McpClient
from test_k8s_cli_kernel import environment, run_children
from test_k8s_kernel_cgroups import V2_ROOT, make_cgroup, shapes

from jalki_core.errors import RequestError
from jalki_core.sdk import Gap

pytestmark = pytest.mark.kernel


@dataclass
class Cluster:
    """A daemon with ``--enrich k8s``, the fake API server with one pod per runtime layout, and a way to make
    one refused connect from each pod (``round``: the pids by runtime)."""

    daemon: Daemon
    rows: list[dict[str, Any]]
    round: Callable[[], dict[str, int]]
    env: dict[str, str]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    assert V2_ROOT is not None
    tmp_path = tmp_path_factory.mktemp("k8s-filters")
    netns = f"jalki-k8sf-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    made: list[Path] = []

    def make(relative: str) -> Path:
        assert V2_ROOT is not None
        return make_cgroup(relative, made, V2_ROOT)

    rows = shapes()
    server = FakeApiServer().start()
    try:
        subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
        for row in rows:
            server.add(row["pod"])
        env = environment(tmp_path, server)
        lock = threading.Lock()  # one round at a time (a stream test and an ask may overlap)

        def one_round() -> dict[str, int]:
            with lock:
                run_children(rows, netns, make)
                return {row["runtime"]: row["pid"] for row in rows}

        with running_daemon(tmp_path, "-p", "tcp_connect", "--enrich", "k8s", env=env) as daemon:
            with daemon.client() as client:
                wait_for(lambda: (client.status().raw.get("enrich") or {}).get("enrichers", {}).get("k8s", {})
                         .get("state") == "synced", timeout=60, what="the k8s enricher's first pod list")
            yield Cluster(daemon, rows, one_round, env)
    finally:
        server.stop()
        for path in reversed(made):
            for _ in range(50):  # a killed process leaves its cgroup once the kernel has reaped it
                try:
                    path.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)
        subprocess.run(["ip", "netns", "del", netns], check=False)


def pod_of(event: dict[str, Any]) -> str | None:
    return (event.get("k8s") or {}).get("k8s.pod.name")


def connects(events: list[Any], pids: dict[str, int]) -> dict[str, str | None]:
    """The pod of the refused connect of each runtime's process in ``events`` (absent: not there)."""
    by_pid = {pid: runtime for runtime, pid in pids.items()}
    found = {}
    for event in events:
        raw = getattr(event, "raw", event)
        runtime = by_pid.get((raw.get("process_data") or {}).get("pid"))
        if runtime is not None and raw.get("type") == "kernel.tcp.connect":
            found[runtime] = pod_of(raw)
    return found


FILTERS: list[tuple[dict[str, str], set[str]]] = [
    ({"pod": "containerd-pod"}, {"containerd"}),
    ({"namespace": "ns-cri-o"}, {"cri-o"}),
    ({"container": "main"}, {"containerd", "cri-o", "docker"}),
    ({"workload": "checkout"}, {"containerd"}),  # the Deployment, from the ReplicaSet's pod-template-hash
    ({"workload": "deployment/checkout"}, {"containerd"}),
    ({"workload": "StatefulSet/ledger"}, {"cri-o"}),
    ({"workload": "cronjob/nightly"}, {"docker"}),
    ({"workload": "statefulset/checkout"}, set()),
    ({"namespace": "ns-docker", "pod": "containerd-pod"}, set()),
]


def test_get_events_and_recent_return_only_the_events_of_the_filtered_names(cluster: Cluster) -> None:
    pids = cluster.round()
    with cluster.daemon.client() as client:
        # every pod's connect is in the rings (enriched), and in the history once written
        everything = wait_for(lambda: (found := connects(client.events(probe="tcp_connect", limit=10_000), pids))
                              .keys() == pids.keys() and found, timeout=30, what="the three connects")
        assert everything == {runtime: f"{runtime}-pod" for runtime in pids}
        wait_for(lambda: connects(client.recent(since=600, limit=10_000), pids).keys() == pids.keys(), timeout=30,
                 what="the three connects in the history")
        for filters, runtimes in FILTERS:
            for read in (client.events, client.recent):
                events = read(limit=10_000, **filters)  # type: ignore[operator]
                assert all(isinstance(e.raw.get("k8s"), dict) for e in events), filters  # host events never
                assert set(connects(events, pids)) == runtimes, (read.__name__, filters)
                pods = {pod_of(e.raw) for e in events}
                assert pods <= {f"{runtime}-pod" for runtime in runtimes}, (read.__name__, filters, pods)

    # the CLI, --json: the same events as the SDK's
    done = cluster.daemon.cli("recent", "--since", "10m", "--pod", "cri-o-pod", "--limit", "10000", "--json")
    assert done.returncode == 0, done.stderr
    events = json.loads(done.stdout)
    assert set(connects(events, pids)) == {"cri-o"} and {pod_of(e) for e in events} == {"cri-o-pod"}
    done = cluster.daemon.cli("recent", "--since", "10m", "--workload", "deployment/checkout", "--namespace",
                              "ns-containerd", "--limit", "10000", "--json")
    assert done.returncode == 0, done.stderr
    assert set(connects(json.loads(done.stdout), pids)) == {"containerd"}
    text = cluster.daemon.cli("recent", "--since", "10m", "--pod", "docker-pod")
    assert text.returncode == 0 and "docker-pod/ns-docker" in text.stdout, text.stdout


def test_a_stream_delivers_only_the_filtered_pod_and_loses_nothing(cluster: Cluster) -> None:
    items: list[Any] = []
    subscribed = threading.Event()
    done = threading.Event()

    def listen() -> None:
        with cluster.daemon.client() as client:
            while not done.is_set():  # windows of a second, so the thread ends soon after the test is done
                subscribed.set()
                for item in client.stream(workload="ledger", seconds=1):
                    items.append(item)

    reader = threading.Thread(target=listen, daemon=True)
    reader.start()
    # the CLI's stream too: JSON lines of the namespace asked for only
    cli = cluster.daemon.popen("stream", "--namespace", "ns-docker")
    lines: list[str] = []
    assert cli.stdout is not None
    stdout = cli.stdout

    def read_lines() -> None:
        for line in iter(stdout.readline, ""):
            lines.append(line)

    threading.Thread(target=read_lines, daemon=True).start()
    subscribed.wait(10)
    deadline = time.monotonic() + 60
    while True:  # rounds until both streams saw a connect of their pod (a subscription starts at its reply)
        pids = cluster.round()
        time.sleep(1)
        got_sdk = "cri-o" in connects(items, pids)
        got_cli = "docker" in connects([json.loads(line) for line in list(lines)], pids)
        if got_sdk and got_cli:
            break
        assert time.monotonic() < deadline, (items[-5:], lines[-5:])
    done.set()
    reader.join(30)
    cli.send_signal(signal.SIGTERM)
    _, err = cli.communicate(timeout=30)
    assert cli.returncode == 0, err
    assert not [item for item in items if isinstance(item, Gap)], items  # filtered in the daemon: nothing lost
    assert items and {pod_of(item.raw) for item in items} == {"cri-o-pod"}
    streamed = [json.loads(line) for line in lines]
    assert streamed and {pod_of(event) for event in streamed} == {"docker-pod"}
    assert "lost" not in err


def test_ask_with_pod_answers_only_about_that_pod(cluster: Cluster) -> None:
    ask = cluster.daemon.popen("ask", "--pod", "containerd-pod", "--seconds", "8", "--json",
                               "why are connections refused")
    rounds = 0
    while ask.poll() is None:  # connects from all three pods throughout the window: two are left out
        cluster.round()
        rounds += 1
        time.sleep(0.5)
    out, err = ask.communicate(timeout=60)
    assert ask.returncode == 0, err
    assert "asking the jalki daemon" in err
    answer = json.loads(out)
    assert answer["via"] == "daemon" and answer["mode"] == "observed", answer
    assert "(only events of pod containerd-pod)" in answer["answer"], answer["answer"]
    [finding] = [f for f in answer["findings"] if f["errno"] == "ECONNREFUSED"][:1]
    pods = {p["pod"] for group in finding["evidence"] for p in group["pods"]}
    assert pods == {"containerd-pod"}, finding["evidence"]
    assert finding["events"] <= rounds
    [note] = [n for n in answer["notes"] if n.startswith("only events of pod containerd-pod were evaluated")]
    left_out = int(note.split("; ")[1].split()[0])
    assert left_out >= 2, note  # the other pods' connects, and host processes'


def test_the_mcp_tools_take_the_same_filters(cluster: Cluster) -> None:
    pids = cluster.round()
    tools = JalkiTools(cluster.daemon.socket)
    with cluster.daemon.client() as client:
        wait_for(lambda: connects(client.events(probe="tcp_connect", limit=10_000), pids).keys() == pids.keys(),
                 timeout=30, what="the three connects")

    async def calls() -> dict[str, Any]:
        async with McpClient(build_server(tools)) as client:
            listed = {tool.name: tool for tool in (await client.list_tools()).tools}
            return {
                "schemas": {name: listed[name].input_schema for name in ("get_events", "ask")},
                "pod": await client.call_tool("get_events", {"filters": {"pod": "docker-pod"}, "limit": 500}),
                "workload": await client.call_tool("get_events", {"filters": {"workload": "deployment/checkout",
                                                                              "history": True}, "limit": 500}),
                "bad": await client.call_tool("get_events", {"filters": {"workload": "pod/checkout"}}),
                "ask": await client.call_tool("ask", {"question": "why are connections refused", "seconds": 1,
                                                      "namespace": "ns-cri-o"}),
            }

    results = anyio.run(calls)
    schema = json.dumps(results["schemas"])
    for name in ("pod", "namespace", "container", "workload"):
        assert f'"{name}"' in schema
    assert "KIND/NAME" in schema and "--enrich k8s" in schema
    pod = results["pod"].structured_content
    assert set(connects(pod["events"], pids)) == {"docker"} and {pod_of(e) for e in pod["events"]} == {"docker-pod"}
    assert pod["summary"]["by_pod"][0]["key"] == "docker-pod/ns-docker"
    workload = results["workload"].structured_content["events"]
    assert set(connects(workload, pids)) == {"containerd"}
    assert {pod_of(e) for e in workload} == {"containerd-pod"}
    assert results["bad"].is_error and "kind 'pod' is not one of" in results["bad"].content[0].text
    ask = results["ask"].structured_content
    assert ask["daemon"] is True and ask["mode"] == "observed", ask
    assert [note for note in ask["notes"] if note.startswith("only events of namespace ns-cri-o were evaluated")]


def test_bad_names_are_refused_in_one_line(cluster: Cluster) -> None:
    for args, message in ((("--pod", ""), "--pod must not be empty"),
                          (("--workload", "pods/x"), "--workload kind 'pods' is not one of"),
                          (("--namespace", "Payments"), "--namespace must be a Kubernetes name")):
        done = cluster.daemon.cli("recent", *args)
        assert done.returncode == 2, done
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert message in lines[0], done.stderr
    with cluster.daemon.client() as client:
        for fields in ({"pod": ""}, {"workload": "deployment/"}, {"container": "A"}):
            with pytest.raises(RequestError) as caught:
                client.request("get_events", **fields)
            assert caught.value.code == "bad_request"


def test_a_daemon_without_enrich_k8s_refuses_k8s_filters_of_live_events(tmp_path: Path) -> None:
    with running_daemon(tmp_path, "-p", "tcp_connect") as daemon:
        with daemon.client() as client:
            for kind in ("get_events", "subscribe"):
                with pytest.raises(RequestError) as caught:
                    client.request(kind, pod="web-1")
                assert caught.value.code == "bad_request"
                assert "start it with --enrich k8s" in caught.value.message, caught.value.message
            assert client.recent(pod="web-1", since=60) == []  # the history may hold an earlier run's
        done = daemon.cli("ask", "--namespace", "payments", "--seconds", "1", "why are connections refused")
        assert done.returncode == 2 and "start it with --enrich k8s" in done.stderr, done
