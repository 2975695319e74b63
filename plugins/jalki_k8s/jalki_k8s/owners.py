"""Exact owning workloads through the API server (opt-in: ``JALKI_K8S_OWNER_LOOKUP=1``, extra RBAC).

A pod names only its direct controller (a ReplicaSet, a Job). :func:`jalki_k8s.pods.owner_attributes`
infers the workload above it from names alone: a ReplicaSet named ``<deployment>-<pod-template-hash>``,
a Job named ``<cronjob>-<scheduled minute>``. That guess is wrong for a ReplicaSet or Job made by hand
or by another controller, and silent about names that do not follow the pattern.

:class:`OwnerLookup` asks instead: ``GET`` the ReplicaSet (``apps/v1``) or Job (``batch/v1``) and read
its controller ``ownerReference`` (a Deployment, a CronJob). Answers are kept in a bounded cache for
``ttl_s`` (an object's controller does not change in practice), keyed by namespace and name, so a
node's pods cost one request per ReplicaSet or Job. A lookup that fails (no RBAC: 403, the object gone:
404, the server unreachable) keeps the name-based guess, is counted by cause, and is not repeated for
``failure_ttl_s``; a 403 is said once in the log (the ClusterRole lacks ``get`` on the resource).
Each GET is bounded by ``timeout_s`` (a stalled answer counts as a timeout), and any other exception
(an answer that decodes to something unexpected) is counted and keeps the guess: a lookup never raises.

The pod watcher does not wait for them: :meth:`OwnerLookup.known` answers from the cache (or the guess)
at once, and the watcher runs the lookups it could not answer in the background, applying their answers
when they come (:class:`jalki_k8s.watch.PodWatcher`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx2
from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.resources.apps_v1 import ReplicaSet
from lightkube.resources.batch_v1 import Job

from jalki_k8s.pods import owner_attributes

log = logging.getLogger("jalki.k8s")

OWNER_LOOKUP_ENV = "JALKI_K8S_OWNER_LOOKUP"
"""Environment variable that switches the lookups on (``1``/``true``/``yes``/``on``)."""
DEFAULT_TTL_S = 600.0
DEFAULT_FAILURE_TTL_S = 30.0
DEFAULT_MAX_ENTRIES = 4096
DEFAULT_TIMEOUT_S = 5.0
"""Longest wait for one GET (an answer later than this counts as a timeout; the guess is kept)."""

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")

# What each looked-up kind's controller becomes: (resource, controller kind, attribute, guessed attribute).
_LOOKUPS: dict[str, tuple[Any, str, str]] = {
    "ReplicaSet": (ReplicaSet, "Deployment", "k8s.deployment.name"),
    "Job": (Job, "CronJob", "k8s.cronjob.name"),
}


def owner_lookup_from_env(value: str | None) -> bool:
    """Whether ``JALKI_K8S_OWNER_LOOKUP``'s value switches lookups on; :class:`ValueError` naming the
    accepted values otherwise."""
    text = (value or "").strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"{OWNER_LOOKUP_ENV}={value!r} is neither on ({'/'.join(_TRUE)}) nor off "
                     f"({'/'.join(v for v in _FALSE if v)} or empty)")


@dataclass
class OwnerLookupStats:
    """Counters of the lookups, for status and metrics."""

    requests: int = 0
    """GETs sent to the API server."""
    cache_hits: int = 0
    exact: int = 0
    """Answers that named a controller (a Deployment, a CronJob)."""
    no_controller: int = 0
    """Answers without one (a ReplicaSet or Job made on its own): the name-based guess is dropped."""
    forbidden: int = 0
    """403: the ClusterRole lacks ``get`` on replicasets/jobs (the guess is kept)."""
    not_found: int = 0
    """404: the ReplicaSet or Job is gone (the guess is kept)."""
    errors: int = 0
    """Other failures: unreachable server, other HTTP errors, undecodable answers (the guess is kept)."""
    timeouts: int = 0
    """GETs not answered within ``timeout_s`` (the guess is kept)."""
    unexpected: int = 0
    """Lookups that failed with any other exception (a malformed answer; the guess is kept, said once)."""
    pending: int = 0
    """Lookups the watcher runs in the background now (waiting for a slot or in flight)."""
    skipped: int = 0
    """Lookups not started because ``max_pending`` were already waiting (the pod keeps the guess)."""
    evicted: int = 0
    """Cache entries dropped for room (``max_entries``)."""


class OwnerLookup:
    """The workload attributes of a pod, with the ReplicaSet's or Job's controller read from the API server.

    Runs on the watcher's event loop (see :class:`jalki_k8s.watch.PodWatcher`).

    :param ttl_s: how long an answer is kept.
    :param failure_ttl_s: how long a failed lookup is not repeated.
    :param max_entries: most answers kept (least recently used go first).
    :param timeout_s: longest wait for one GET.
    """

    def __init__(
        self,
        *,
        ttl_s: float = DEFAULT_TTL_S,
        failure_ttl_s: float = DEFAULT_FAILURE_TTL_S,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self.failure_ttl_s = failure_ttl_s
        self.max_entries = max_entries
        self.stats = OwnerLookupStats()
        self._clock = clock
        # (kind, namespace, name) -> (expires, controller name or "" for none, or None after a failure)
        self._cache: OrderedDict[tuple[str, str, str], tuple[float, str | None]] = OrderedDict()
        self._said: set[str] = set()

    async def attributes(self, client: AsyncClient, pod: Mapping[str, Any]) -> dict[str, str]:
        """``pod``'s workload attributes: :func:`owner_attributes`, corrected by the lookup where it answered."""
        target = _lookup_target(pod)
        if target is None:
            return owner_attributes(pod)
        controller = await self._controller(client, *target)
        return _corrected(pod, target[0], controller)

    def known(self, pod: Mapping[str, Any]) -> dict[str, str] | None:
        """``pod``'s workload attributes if they need no request (no lookup applies, or its answer or failure
        is cached), else ``None``: :meth:`attributes` would ask the API server."""
        target = _lookup_target(pod)
        if target is None:
            return owner_attributes(pod)
        cached = self._cache.get(target)
        if cached is None or cached[0] <= self._clock():
            return None
        self._cache.move_to_end(target)
        self.stats.cache_hits += 1
        return _corrected(pod, target[0], cached[1])

    async def _controller(self, client: AsyncClient, kind: str, namespace: str, name: str) -> str | None:
        """The controller's name ("" for none), or ``None`` when the lookup failed (now or recently)."""
        key = (kind, namespace, name)
        now = self._clock()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            self._cache.move_to_end(key)
            self.stats.cache_hits += 1
            return cached[1]
        resource, controller_kind, _ = _LOOKUPS[kind]
        self.stats.requests += 1
        answer: str | None
        try:
            async with asyncio.timeout(self.timeout_s):
                obj = await client.get(resource, name=name, namespace=namespace)
        except TimeoutError:  # before OSError, of which it is one
            self.stats.timeouts += 1
            self._say("timeout", f"owner lookup of {kind} {namespace}/{name} not answered within "
                      f"{self.timeout_s:g} s; keeping name-based workloads until it answers")
            answer = None
        except ApiError as exc:
            code = exc.status.code
            if code == 403:
                self.stats.forbidden += 1
                self._say("forbidden", f"owner lookup of {kind} {namespace}/{name} refused (403): the ClusterRole "
                          "needs get on apps/replicasets and batch/jobs (jalki k8s render --owner-lookup); "
                          "keeping name-based workloads")
            elif code == 404:
                self.stats.not_found += 1
            else:
                self.stats.errors += 1
            answer = None
        except (httpx2.HTTPError, OSError, ValueError) as exc:  # ValueError: an answer that does not decode
            self.stats.errors += 1
            self._say("error", f"owner lookup of {kind} {namespace}/{name} failed ({exc or type(exc).__name__}); "
                      "keeping name-based workloads until it answers")
            answer = None
        except Exception as exc:  # a malformed answer must not end the watch: keep the guess, count, say once
            self.stats.unexpected += 1
            self._say("unexpected", f"owner lookup of {kind} {namespace}/{name} failed unexpectedly "
                      f"({type(exc).__name__}: {exc}); keeping name-based workloads for it")
            answer = None
        else:
            try:
                answer = _controller_of(obj, controller_kind)
            except Exception as exc:  # an object that decoded but is not shaped as one
                self.stats.unexpected += 1
                self._say("unexpected", f"owner lookup of {kind} {namespace}/{name}: malformed answer "
                          f"({type(exc).__name__}: {exc}); keeping name-based workloads for it")
                answer = None
            else:
                if answer:
                    self.stats.exact += 1
                else:
                    self.stats.no_controller += 1
        self._cache[key] = (now + (self.ttl_s if answer is not None else self.failure_ttl_s), answer)
        self._cache.move_to_end(key)
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)
            self.stats.evicted += 1
        return answer

    def _say(self, key: str, line: str) -> None:
        if key not in self._said:
            self._said.add(key)
            log.warning("jalki-k8s: %s", line)


def _lookup_target(pod: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """(kind, namespace, name) of the controller ReplicaSet or Job of ``pod`` to look up, else ``None``."""
    metadata = pod.get("metadata") or {}
    for ref in metadata.get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") in _LOOKUPS:
            return str(ref["kind"]), str(metadata.get("namespace") or ""), str(ref.get("name") or "")
    return None


def _corrected(pod: Mapping[str, Any], kind: str, controller: str | None) -> dict[str, str]:
    """The guess from ``pod``, with the looked-up ``controller`` in place of its guessed key (``None``:
    the lookup failed, the guess stays; ``""``: no controller, the guess goes)."""
    attributes = owner_attributes(pod)
    if controller is not None:
        key = _LOOKUPS[kind][2]
        attributes.pop(key, None)
        if controller:
            attributes[key] = controller
    return attributes


def _controller_of(obj: Any, controller_kind: str) -> str:
    """The name of ``obj``'s controller of ``controller_kind`` ("" for none)."""
    for ref in (obj.metadata.ownerReferences if obj.metadata is not None else None) or []:
        if ref.controller and ref.kind == controller_kind:
            return str(ref.name)
    return ""
