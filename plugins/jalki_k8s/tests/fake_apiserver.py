"""A Kubernetes API server for tests: pods (list/watch), ReplicaSets and Jobs (GET), real HTTP.

``GET /api/v1/pods`` (and ``/api/v1/namespaces/<ns>/pods``) with ``fieldSelector=spec.nodeName=<node>``,
``limit``/``continue`` chunking and a ``resourceVersion`` in the list metadata; with ``watch=true`` a
chunked stream of ``{"type": ADDED|MODIFIED|DELETED|BOOKMARK|ERROR, "object": ...}`` lines from the
requested ``resourceVersion`` (replayed from history; a version older than the compaction point gets
an ``ERROR`` event whose Status is ``410 Gone``, as the real server does), ending at ``timeoutSeconds``.
Tests inject a bookmark, a 410 on open streams, a dropped connection, or silence.

``GET /apis/apps/v1/namespaces/<ns>/replicasets/<name>`` and ``/apis/batch/v1/namespaces/<ns>/jobs/<name>``
answer the objects put with :meth:`FakeApiServer.put` (404 otherwise; 403 for a resource in ``forbidden``,
as without the RBAC rule; no answer at all, until released, for a name in ``stall``); every request is
in ``requests``.

Plain asyncio (no web framework is installed here), on its own thread; the control methods are
thread-safe.
"""

from __future__ import annotations

import asyncio
import copy
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit


def make_owned(kind: str, name: str, *, namespace: str = "default",
               controller: tuple[str, str] | None = None) -> dict[str, Any]:
    """A ReplicaSet or Job object whose controller is ``controller`` (kind, name), e.g. a Deployment."""
    api_version = {"ReplicaSet": "apps/v1", "Job": "batch/v1"}[kind]
    metadata: dict[str, Any] = {"name": name, "namespace": namespace,
                                "uid": "00000000-0000-0000-0000-0000000000b1", "resourceVersion": "1"}
    if controller is not None:
        metadata["ownerReferences"] = [{
            "apiVersion": {"Deployment": "apps/v1", "CronJob": "batch/v1"}.get(controller[0], "v1"),
            "kind": controller[0], "name": controller[1], "uid": "00000000-0000-0000-0000-0000000000c1",
            "controller": True, "blockOwnerDeletion": True}]
    template = {"metadata": {}, "spec": {"containers": [{"name": "main", "image": "x"}]}}
    spec: dict[str, Any] = {"template": template}
    if kind == "ReplicaSet":
        spec["selector"] = {"matchLabels": {"app": name}}
    return {"apiVersion": api_version, "kind": kind, "metadata": metadata, "spec": spec}


def make_pod(name: str, *, uid: str, namespace: str = "default", node: str = "node-a",
             containers: dict[str, str] | None = None, owner: tuple[str, str] | None = None,
             labels: dict[str, str] | None = None) -> dict[str, Any]:
    """A pod object; ``containers`` maps container name -> ``<runtime>://<id>``; ``owner`` is (kind, name)."""
    metadata: dict[str, Any] = {"name": name, "namespace": namespace, "uid": uid, "labels": labels or {}}
    if owner is not None:
        metadata["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": owner[0], "name": owner[1],
                                        "uid": "00000000-0000-0000-0000-00000000000a", "controller": True}]
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": metadata,
        "spec": {"nodeName": node, "containers": [{"name": cname, "image": "x"} for cname in (containers or {})]},
        "status": {"phase": "Running", "containerStatuses": [
            {"name": cname, "containerID": cid, "ready": True, "restartCount": 0, "image": "x", "imageID": "x"}
            for cname, cid in (containers or {}).items()]},
    }


@dataclass
class _Watcher:
    queue: asyncio.Queue[dict[str, Any] | str | bytes]
    node: str | None
    writer: asyncio.StreamWriter


@dataclass
class FakeApiServer:
    """The server; ``url`` once :meth:`start` returned."""

    host: str = "127.0.0.1"
    port: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)
    """Every request: ``{"path": ..., "params": {...}}``."""
    silent: bool = False
    """While True, watch streams send nothing (no event, no bookmark): a stuck stream."""
    forbidden: set[str] = field(default_factory=set)
    """Resources (``replicasets``, ``jobs``) whose GET answers 403 Forbidden."""
    stall: set[str] = field(default_factory=set)
    """Names of ReplicaSets and Jobs whose GET gets no answer while the name is in the set (a stalled
    server); removing it lets the answer go."""

    def __post_init__(self) -> None:
        self._pods: dict[str, dict[str, Any]] = {}  # uid -> pod
        self._objects: dict[tuple[str, str, str], dict[str, Any]] = {}  # (plural, namespace, name) -> object
        self._history: list[tuple[int, str, dict[str, Any]]] = []  # (rv, type, pod)
        self._rv = 100
        self._compacted = 0
        self._watchers: list[_Watcher] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------------------------------

    def start(self) -> FakeApiServer:
        ready = threading.Event()

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._server = loop.run_until_complete(asyncio.start_server(self._handle, self.host, self.port))
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=main, daemon=True, name="fake-apiserver")
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is None:
            return

        async def shutdown() -> None:
            assert self._server is not None
            self._server.close()
            for watcher in list(self._watchers):
                watcher.writer.transport.abort()
            tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            loop.stop()

        asyncio.run_coroutine_threadsafe(shutdown(), loop)
        if self._thread is not None:
            self._thread.join(10)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def kubeconfig(self) -> dict[str, Any]:
        """A kubeconfig document pointing at this server (plain http)."""
        return {"apiVersion": "v1", "kind": "Config", "current-context": "fake",
                "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
                "users": [{"name": "fake", "user": {}}]}

    # -- control (any thread) --------------------------------------------------------------------------------

    def add(self, pod: dict[str, Any]) -> int:
        return self._change("ADDED", pod)

    def modify(self, pod: dict[str, Any]) -> int:
        return self._change("MODIFIED", pod)

    def delete(self, uid: str) -> int:
        with self._lock:
            pod = self._pods[uid]
        return self._change("DELETED", pod)

    def change_quietly(self, event_type: str, pod: dict[str, Any]) -> int:
        """Change the state without telling open watches (a change a compacted history lost)."""
        return self._change(event_type, pod, notify=False)

    def compact(self) -> None:
        """Forget history: a watch from any version so far gets 410 Gone."""
        with self._lock:
            self._compacted = self._rv
            self._history.clear()

    def bookmark(self) -> None:
        """Send a BOOKMARK with the current version to every open watch."""
        with self._lock:
            rv = self._rv
        self._broadcast({"type": "BOOKMARK", "object": {"kind": "Pod", "apiVersion": "v1",
                                                        "metadata": {"resourceVersion": str(rv)}}})

    def gone(self) -> None:
        """Send 410 Gone on every open watch and end it (history compacted, as after an etcd compaction)."""
        self.compact()
        self._broadcast({"type": "ERROR", "object": _status(410, "Expired", "too old resource version")})
        self._broadcast("close")

    def send_line(self, line: bytes) -> None:
        """Send ``line`` as one raw chunk on every open watch (e.g. something that is not a watch event)."""
        self._broadcast(line)

    def drop(self) -> None:
        """Cut every open watch connection mid-stream (no final chunk)."""
        self._broadcast("abort")

    def put(self, obj: dict[str, Any]) -> None:
        """Serve ``obj`` (a ReplicaSet or Job, see :func:`make_owned`) on GET."""
        plural = {"ReplicaSet": "replicasets", "Job": "jobs"}[obj["kind"]]
        with self._lock:
            self._objects[(plural, obj["metadata"]["namespace"], obj["metadata"]["name"])] = copy.deepcopy(obj)

    def gets(self, plural: str) -> list[str]:
        """The paths of the GET requests for ``plural`` (``replicasets``, ``jobs``) so far."""
        return [r["path"] for r in list(self.requests) if r["path"].split("/")[-2:-1] == [plural]]

    def watch_count(self) -> int:
        return len(self._watchers)

    # -- internals -------------------------------------------------------------------------------------------

    def _change(self, event_type: str, pod: dict[str, Any], *, notify: bool = True) -> int:
        with self._lock:
            self._rv += 1
            pod = copy.deepcopy(pod)
            pod["metadata"]["resourceVersion"] = str(self._rv)
            uid = pod["metadata"]["uid"]
            if event_type == "DELETED":
                self._pods.pop(uid, None)
            else:
                self._pods[uid] = pod
            self._history.append((self._rv, event_type, pod))
            rv = self._rv
        if notify:
            self._broadcast({"type": event_type, "object": pod})
        return rv

    def _broadcast(self, item: dict[str, Any] | str | bytes) -> None:
        loop = self._loop
        assert loop is not None
        done = threading.Event()

        def put() -> None:
            for watcher in self._watchers:
                if isinstance(item, dict) and item["type"] != "ERROR":
                    obj = item["object"]
                    if watcher.node and obj.get("spec", {}).get("nodeName", watcher.node) != watcher.node:
                        continue
                watcher.queue.put_nowait(item)
            done.set()

        loop.call_soon_threadsafe(put)
        done.wait(5)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request_line = await reader.readline()
                if not request_line:
                    return
                headers = {}
                while True:
                    line = await reader.readline()
                    if line in (b"\r\n", b"\n", b""):
                        break
                    key, _, value = line.decode().partition(":")
                    headers[key.strip().lower()] = value.strip()
                method, target, _ = request_line.decode().split(" ", 2)
                url = urlsplit(target)
                params = {key: values[-1] for key, values in parse_qs(url.query).items()}
                self.requests.append({"method": method, "path": url.path, "params": params})
                owned = _owned_path(url.path) if method == "GET" else None
                if owned is not None:
                    await self._get_owned(writer, *owned)
                    continue
                if method != "GET" or not _is_pods_path(url.path):
                    await _reply(writer, 404, _status(404, "NotFound", f"{url.path} not found"))
                    continue
                if params.get("watch") in ("true", "1"):
                    await self._watch(writer, params)
                    return
                await self._list(writer, params)
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()

    async def _get_owned(self, writer: asyncio.StreamWriter, plural: str, namespace: str, name: str) -> None:
        while name in self.stall:  # a server that does not answer (until the test releases it)
            await asyncio.sleep(0.01)
        if plural in self.forbidden:
            group = "apps" if plural == "replicasets" else "batch"
            await _reply(writer, 403, _status(403, "Forbidden", f'{plural}.{group} "{name}" is forbidden: User '
                                              f'cannot get resource "{plural}" in API group "{group}"'))
            return
        with self._lock:
            obj = copy.deepcopy(self._objects.get((plural, namespace, name)))
        if obj is None:
            await _reply(writer, 404, _status(404, "NotFound", f'{plural} "{name}" not found'))
        else:
            await _reply(writer, 200, obj)

    async def _list(self, writer: asyncio.StreamWriter, params: dict[str, str]) -> None:
        node = _node_of(params)
        with self._lock:
            rv = self._rv
            pods = [copy.deepcopy(pod) for pod in self._pods.values()
                    if node is None or pod["spec"].get("nodeName") == node]
        pods.sort(key=lambda pod: pod["metadata"]["uid"])
        start = int(params.get("continue") or 0)
        limit = int(params.get("limit") or 0) or len(pods) or 1
        chunk = pods[start:start + limit]
        metadata: dict[str, Any] = {"resourceVersion": str(rv)}
        if start + limit < len(pods):
            metadata["continue"] = str(start + limit)
        await _reply(writer, 200, {"apiVersion": "v1", "kind": "PodList", "metadata": metadata, "items": chunk})

    async def _watch(self, writer: asyncio.StreamWriter, params: dict[str, str]) -> None:
        node = _node_of(params)
        queue: asyncio.Queue[dict[str, Any] | str | bytes] = asyncio.Queue()
        backlog: list[dict[str, Any]] = []
        gone = False
        with self._lock:
            since = params.get("resourceVersion")
            if since in (None, "", "0"):
                backlog = [{"type": "ADDED", "object": copy.deepcopy(pod)} for pod in self._pods.values()]
            elif int(since) < self._compacted:
                gone = True
            else:
                backlog = [{"type": kind, "object": copy.deepcopy(pod)}
                           for rv, kind, pod in self._history if rv > int(since)]
            watcher = _Watcher(queue, node, writer)
            if not gone:
                self._watchers.append(watcher)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        try:
            if gone:
                await _chunk(writer, {"type": "ERROR", "object": _status(410, "Expired", "too old resource version")})
                writer.write(b"0\r\n\r\n")
                await writer.drain()
                return
            for item in backlog:
                if node is None or item["object"]["spec"].get("nodeName") == node:
                    await _chunk(writer, item)
            deadline = time.monotonic() + float(params.get("timeoutSeconds") or 1800)
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), max(0.0, deadline - time.monotonic()))
                except TimeoutError:
                    writer.write(b"0\r\n\r\n")  # the server's clean end of a watch (timeoutSeconds)
                    await writer.drain()
                    return
                if item == "abort":
                    writer.transport.abort()
                    return
                if item == "close":
                    writer.write(b"0\r\n\r\n")
                    await writer.drain()
                    return
                if isinstance(item, bytes):
                    writer.write(f"{len(item):x}\r\n".encode() + item + b"\r\n")
                    await writer.drain()
                    continue
                assert isinstance(item, dict)
                if self.silent:
                    continue  # a stream that went quiet: not even bookmarks
                await _chunk(writer, item)
        finally:
            if watcher in self._watchers:
                self._watchers.remove(watcher)


def _is_pods_path(path: str) -> bool:
    parts = path.strip("/").split("/")
    return parts in (["api", "v1", "pods"],) or (len(parts) == 5 and parts[:3] == ["api", "v1", "namespaces"]
                                                  and parts[4] == "pods")


def _owned_path(path: str) -> tuple[str, str, str] | None:
    """(plural, namespace, name) of a ReplicaSet or Job GET path, else ``None``."""
    parts = path.strip("/").split("/")
    if len(parts) == 7 and parts[0] == "apis" and parts[3] == "namespaces" and (
            (parts[1:3], parts[5]) in ((["apps", "v1"], "replicasets"), (["batch", "v1"], "jobs"))):
        return parts[5], parts[4], parts[6]
    return None


def _node_of(params: dict[str, str]) -> str | None:
    selector = params.get("fieldSelector") or ""
    for term in selector.split(","):
        key, _, value = term.partition("=")
        if key == "spec.nodeName":
            return value
    return None


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}


async def _chunk(writer: asyncio.StreamWriter, item: dict[str, Any]) -> None:
    data = json.dumps(item).encode() + b"\n"
    writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
    await writer.drain()


async def _reply(writer: asyncio.StreamWriter, code: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    reason = {200: "OK", 403: "Forbidden", 404: "Not Found", 410: "Gone"}.get(code, "Error")
    writer.write(f"HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n"
                 "\r\n".encode() + data)
    await writer.drain()
