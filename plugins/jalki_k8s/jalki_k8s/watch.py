"""List+watch the pods of this node with lightkube's async client, into a :class:`~jalki_k8s.pods.PodIndex`.

The protocol is the API server's own (what client-go's reflector does):

1. LIST ``/api/v1/pods?fieldSelector=spec.nodeName=<node>`` -> the pods and a ``resourceVersion``;
   the index is replaced (pods gone since become tombstones);
2. WATCH from that ``resourceVersion`` with ``allowWatchBookmarks=true``; every event, bookmarks
   included, advances the version we resume from;
3. a dropped stream or a server-side timeout resumes the WATCH from the last version; ``410 Gone``
   (the version was compacted away) or a stream silent for longer than ``silence_s`` (no event, not
   even a bookmark) goes back to 1.

The client finds the API server the standard way (:meth:`lightkube.KubeConfig.from_env`: the in-cluster
service account, else ``KUBECONFIG``, else ``~/.kube/config``; plain ``http://`` servers work). Without
one, or while it cannot be reached, the watcher says so once in the log and in :attr:`PodWatcher.problem`,
and keeps retrying with backoff.

With an :class:`~jalki_k8s.owners.OwnerLookup` (opt-in), each pod's owning workload is looked up
through the same client. The watch never waits for a lookup: a pod whose answer is not cached enters the
index at once with the name-based guess, and the lookup runs in the background (at most
``max_lookups_in_flight`` GETs at once, at most ``max_lookups_pending`` waiting, each bounded by the
lookup's timeout); its answer replaces the pod's workload attributes when it comes.

Anything unexpected while listing or handling the stream (an undecodable event line, a malformed object)
does not end the watcher: it is counted (:attr:`WatchStats.failures`), said once per kind, and the pods
are listed again.

It runs on its own thread and event loop so that a synchronous session can use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx2
from lightkube import AsyncClient, ConfigError, KubeConfig
from lightkube.config.kubeconfig import SingleConfig
from lightkube.core.exceptions import ApiError
from lightkube.core.generic_client import ALL_NS
from lightkube.resources.core_v1 import Pod
from lightkube.types import OnErrorAction, OnErrorResult

from jalki_k8s.owners import OwnerLookup
from jalki_k8s.pods import PodIndex

log = logging.getLogger("jalki.k8s")

DEFAULT_SILENCE_S = 120.0
"""No event nor bookmark for this long: relist (API servers send a bookmark about every minute)."""
DEFAULT_SERVER_TIMEOUT_S = 300
"""``timeoutSeconds`` of each WATCH: the server ends it cleanly and the client resumes."""
DEFAULT_MAX_LOOKUPS_IN_FLIGHT = 4
"""Most owner lookups sent to the API server at once."""
DEFAULT_MAX_LOOKUPS_PENDING = 1024
"""Most owner lookups waiting (one per pod); beyond it a pod keeps its guess, counted as skipped."""


@dataclass
class WatchStats:
    """Counters of the list+watch, for status and metrics."""

    lists: int = 0
    watches: int = 0
    events: int = 0
    bookmarks: int = 0
    gone: int = 0
    """Relists because the server answered 410 Gone (resourceVersion compacted)."""
    silent: int = 0
    """Relists because the stream said nothing for ``silence_s``."""
    drops: int = 0
    """Streams that broke (resumed from the last resourceVersion)."""
    errors: int = 0
    """Requests that failed (unreachable server, HTTP errors)."""
    failures: int = 0
    """Unexpected exceptions while listing or handling the stream (an undecodable event): relisted."""
    resource_version: str = ""


class PodWatcher:
    """Keeps a :class:`PodIndex` equal to the pods the API server has for ``node_name``.

    :param index: the index to fill.
    :param node_name: this node's name (``spec.nodeName`` of its pods).
    :param config: the API server; default: :meth:`lightkube.KubeConfig.from_env`.
    :param silence_s: relist after a stream silent this long.
    :param server_timeout_s: ``timeoutSeconds`` of each WATCH request.
    :param max_backoff_s: longest wait between two failed attempts.
    :param owners: exact owner lookups through the API server (``None``: owners from the pods alone).
    :param max_lookups_in_flight: most owner lookups sent at once.
    :param max_lookups_pending: most owner lookups waiting or in flight.
    """

    def __init__(
        self,
        index: PodIndex,
        node_name: str,
        *,
        config: KubeConfig | SingleConfig | None = None,
        silence_s: float = DEFAULT_SILENCE_S,
        server_timeout_s: int = DEFAULT_SERVER_TIMEOUT_S,
        max_backoff_s: float = 30.0,
        owners: OwnerLookup | None = None,
        max_lookups_in_flight: int = DEFAULT_MAX_LOOKUPS_IN_FLIGHT,
        max_lookups_pending: int = DEFAULT_MAX_LOOKUPS_PENDING,
    ) -> None:
        self.index = index
        self.node_name = node_name
        self.silence_s = silence_s
        self.server_timeout_s = server_timeout_s
        self.max_backoff_s = max_backoff_s
        self.owners = owners
        self.max_lookups_in_flight = max_lookups_in_flight
        self.max_lookups_pending = max_lookups_pending
        self.stats = WatchStats()
        self.synced = threading.Event()
        """Set once the first LIST has filled the index (readiness)."""
        self.problem: str | None = None
        """Why pods are not known now (no API server configured, unreachable), else ``None``."""
        self.disabled = False
        """True when no API server is configured at all: nothing will ever be known."""
        self._config = config
        self._said: set[str] = set()
        self._watch_error: Exception | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None
        self._lookups: dict[str, asyncio.Task[None]] = {}
        """Pod uid -> its background owner lookup (on the watcher's loop only)."""
        self._lookup_slots: asyncio.Semaphore | None = None

    @property
    def lookups_pending(self) -> int:
        """Owner lookups running in the background now (waiting for a slot or in flight)."""
        return len(self._lookups)

    # -- thread control --------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start listing and watching on a background thread (returns at once)."""
        if self._thread is not None:
            return
        started = threading.Event()

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._task = loop.create_task(self.run())
            started.set()
            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(self._task)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=main, name="jalki-k8s-watch", daemon=True)
        self._thread.start()
        started.wait()

    def close(self, timeout: float = 5.0) -> None:
        """Stop watching and wait for the thread."""
        loop, task, thread = self._loop, self._task, self._thread
        if loop is not None and task is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed between the check and the call
                loop.call_soon_threadsafe(task.cancel)
        if thread is not None:
            thread.join(timeout)
        self._thread = None

    # -- the reflector ---------------------------------------------------------------------------------------

    async def run(self) -> None:
        """List, then watch, forever (until cancelled)."""
        try:
            config = self._config if self._config is not None else KubeConfig.from_env()
        except (ConfigError, OSError, KeyError) as exc:
            self.problem = f"no Kubernetes API server configured ({exc})"
            self.disabled = True
            self._say("config", f"{self.problem}: events get no k8s fields; "
                      "run in a pod with a service account, or set KUBECONFIG")
            return
        client = AsyncClient(config=config, timeout=httpx2.Timeout(10.0), trust_env=False)
        self._lookup_slots = asyncio.Semaphore(self.max_lookups_in_flight)
        backoff = 0.0
        resource_version: str | None = None
        try:
            while True:
                try:
                    if resource_version is None:
                        resource_version = await self._relist(client)
                    resource_version = await self._watch(client, resource_version)
                    backoff = 0.0
                except (httpx2.HTTPError, OSError, ApiError) as exc:
                    self.stats.errors += 1
                    if isinstance(exc, ApiError) and exc.status.code == 410:
                        self.stats.gone += 1
                        resource_version = None
                    elif resource_version is not None:
                        resource_version = self.stats.resource_version  # resume after what the stream gave
                    if not self.synced.is_set() or self.problem is None:
                        self.problem = f"Kubernetes API server unreachable: {exc or type(exc).__name__}"
                        self._say("unreachable", f"{self.problem}; events get no k8s fields until it answers "
                                  "(retrying)")
                    backoff = min(self.max_backoff_s, max(0.2, backoff * 2))
                    await asyncio.sleep(backoff)
                except Exception as exc:  # anything else must not end the watcher for good: relist
                    self.stats.failures += 1
                    resource_version = None
                    self._say(f"failure:{type(exc).__name__}", f"unexpected {type(exc).__name__} while watching "
                              f"pods ({exc}); listing them again", exc_info=exc)
                    backoff = min(self.max_backoff_s, max(0.2, backoff * 2))
                    await asyncio.sleep(backoff)
        finally:
            lookups = list(self._lookups.values())
            for task in lookups:
                task.cancel()
            await asyncio.gather(*lookups, return_exceptions=True)
            with contextlib.suppress(Exception):
                await client.close()

    async def _relist(self, client: AsyncClient) -> str:
        listing = client.list(Pod, namespace=ALL_NS, fields={"spec.nodeName": self.node_name}, chunk_size=500)
        pods: list[dict[str, Any]] = [pod.to_dict() async for pod in listing]
        version = listing.resourceVersion
        if self.owners is not None:
            self.index.replace(pods, [self._owner_now(client, pod) for pod in pods])
        else:
            self.index.replace(pods)
        self.stats.lists += 1
        self.stats.resource_version = version
        self.problem = None
        self.synced.set()
        return version

    async def _watch(self, client: AsyncClient, resource_version: str) -> str | None:
        """Watch from ``resource_version``; the version to resume from, or ``None`` to relist."""
        self.stats.watches += 1
        self._watch_error = None
        stream = self._stream(client, resource_version)
        try:
            while True:
                try:
                    event_type, pod = await asyncio.wait_for(anext(stream), self.silence_s)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    self.stats.silent += 1
                    return None
                version = pod.metadata.resourceVersion if pod.metadata is not None else None
                if version:
                    resource_version = version
                    self.stats.resource_version = version
                if event_type == "BOOKMARK":
                    self.stats.bookmarks += 1
                    continue
                self.stats.events += 1
                pod_dict = pod.to_dict()
                owner = self._owner_now(client, pod_dict)
                self.index.apply(event_type, pod_dict, owner)
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
        error = self._watch_error
        if isinstance(error, ApiError) and error.status.code == 410:
            self.stats.gone += 1
            return None
        if error is not None:
            self.stats.drops += 1
            await asyncio.sleep(0.2)  # a server restarting: not in a tight loop
        return resource_version

    def _owner_now(self, client: AsyncClient, pod: dict[str, Any]) -> dict[str, str] | None:
        """``pod``'s workload attributes without waiting: cached or needing no lookup; else ``None`` (the
        index guesses from the pod) and the lookup starts in the background."""
        owners = self.owners
        if owners is None:
            return None
        known = owners.known(pod)
        if known is not None:
            return known
        uid = str((pod.get("metadata") or {}).get("uid") or "")
        if not uid or uid in self._lookups:  # one lookup per pod at a time: it answers for the latest state
            return None
        if len(self._lookups) >= self.max_lookups_pending:
            owners.stats.skipped += 1
            return None
        self._lookups[uid] = asyncio.get_running_loop().create_task(self._look_up(client, uid, pod))
        owners.stats.pending = len(self._lookups)
        return None

    async def _look_up(self, client: AsyncClient, uid: str, pod: dict[str, Any]) -> None:
        """One background owner lookup; its answer replaces the guess the pod entered the index with."""
        owners, slots = self.owners, self._lookup_slots
        assert owners is not None and slots is not None
        try:
            async with slots:
                owner = await owners.attributes(client, pod)  # never raises (failures keep the guess)
            self.index.set_owner(uid, owner)
        except Exception as exc:  # not CancelledError: stopping cancels the lookups
            self.stats.failures += 1
            self._say(f"lookup:{type(exc).__name__}", f"unexpected {type(exc).__name__} in an owner lookup "
                      f"({exc}); the pod keeps its name-based workload", exc_info=exc)
        finally:
            self._lookups.pop(uid, None)
            owners.stats.pending = len(self._lookups)

    def _stream(self, client: AsyncClient, resource_version: str) -> AsyncIterator[tuple[str, Any]]:
        # lightkube's public watch() cannot ask for bookmarks: build the same request with
        # allowWatchBookmarks through its generic client (the version-tracking watch loop is lightkube's).
        generic = client._client
        request = generic.prepare_request("list", res=Pod, namespace=ALL_NS, watch=True, params={
            "timeoutSeconds": self.server_timeout_s,
            "resourceVersion": resource_version,
            "fieldSelector": f"spec.nodeName={self.node_name}",
            "allowWatchBookmarks": "true",
        })
        stream: AsyncIterator[tuple[str, Any]] = generic.watch(request, on_error=self._on_error)
        return stream

    def _on_error(self, error: Exception, count: int) -> OnErrorResult:
        """Every stream error ends the stream; :meth:`_watch` decides between resuming and relisting."""
        self._watch_error = error
        return OnErrorResult(OnErrorAction.STOP)

    def _say(self, key: str, line: str, exc_info: BaseException | None = None) -> None:
        if key not in self._said:
            self._said.add(key)
            log.warning("jalki-k8s: %s", line, exc_info=exc_info)
