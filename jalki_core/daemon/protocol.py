"""The jalki local API protocol, version 1 (``specs/protocol.md``).

Framing: one JSON object per line (UTF-8, ``\\n``-terminated), at most
:data:`MAX_FRAME_BYTES` bytes including the newline, in both directions.

A request is ``{"v": 1, "id": <any JSON scalar>, "type": "<message type>", ...}``.
Every request gets exactly one reply carrying the same ``id``:
``{"v": 1, "id": …, "ok": true, "result": {...}}`` or
``{"v": 1, "id": …, "ok": false, "error": {"code": "...", "message": "..."}}``.
A subscription additionally receives pushes ``{"v": 1, "push": "event",
"subscription": N, "event": {...}}`` and ``{"v": 1, "push": "dropped",
"subscription": N, "count": K}`` until it is cancelled.

This module only parses and checks; it never touches probes or sockets.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import orjson

from jalki_core.errors import ProbeNotFound, ProtocolError, RequestError

DEFAULT_SOCKET = Path("/run/jalki/jalki.sock")
"""Where the daemon listens and clients look, unless ``--socket`` or ``JALKI_SOCKET`` say otherwise."""


def socket_path_from_env(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The API socket path: ``explicit``, else ``JALKI_SOCKET``, else :data:`DEFAULT_SOCKET`."""
    if explicit:
        return Path(explicit)
    from_env = os.environ.get("JALKI_SOCKET")
    return Path(from_env) if from_env else DEFAULT_SOCKET


PROTOCOL_VERSION = 1
"""The ``v`` every frame carries; a different version is refused with ``unsupported_version``."""

MAX_FRAME_BYTES = 1 << 20
"""Largest frame (request or reply) in bytes, newline included."""

MAX_EVENTS_PER_REPLY = 10_000
"""Most events one ``get_events``/``recent`` reply carries (``limit`` is capped here)."""

MAX_ID_CHARS = 256
"""Longest string ``id`` a request may carry; a longer one is refused (``bad_request``, reply ``id`` null),
so an echoed id can never push a reply over :data:`MAX_FRAME_BYTES`."""

MAX_INT = 2**63 - 1
"""Largest integer any field takes (``limit``, ``subscription``): beyond it a value is refused, not wrapped."""

PID_MAX = 4_194_304
"""Largest process id the kernel hands out (``PID_MAX_LIMIT`` on 64-bit kernels); ``pid`` filters above it
are refused before they reach a probe's 32-bit filter."""

MAX_SINCE_NS = 2**63 - 1
"""Latest ``since`` (nanoseconds since the epoch, 2262-04-11): the history keeps stamps as 64-bit integers."""

ERROR_CODES: tuple[str, ...] = (
    "bad_frame",            # not UTF-8 JSON, or not an object
    "frame_too_large",      # over MAX_FRAME_BYTES; the rest of the line is skipped
    "unsupported_version",  # "v" missing or not 1
    "unknown_type",         # no such message type
    "bad_request",          # a field is missing, of the wrong type or out of range
    "unknown_probe",        # no installed probe of that name
    "not_attached",         # undeploy/unsubscribe of something that is not there
    "attach_failed",        # every rung of the probe's ladder failed
    "unavailable",          # the daemon cannot do it now (history off, shutting down)
    "limit_reached",        # a cap on clients or subscriptions (specs/protocol.md §5); try again later
    "internal",             # a bug; the daemon logs it and keeps serving
)
"""Every ``error.code`` a reply may carry."""


USER_ERROR_CODES = frozenset({"bad_request", "unknown_probe", "not_attached", "unknown_type"})
"""Error codes that mean the request itself was wrong (a client's usage error), not that the daemon failed."""


def request_error(code: str, message: str) -> RequestError:
    """The error a client raises for an error reply: the one place protocol codes meet the error tree."""
    if code == "unknown_probe":
        return ProbeNotFound(code, message)
    return RequestError(code, message)


@dataclass(frozen=True)
class Request:
    """A parsed request frame."""

    id: Any
    type: str
    fields: Mapping[str, Any]


def encode(message: Mapping[str, Any]) -> bytes:
    """One frame: compact JSON and a newline."""
    return orjson.dumps(message) + b"\n"


def reply_ok(request_id: Any, result: Any) -> dict[str, Any]:
    """A success reply."""
    return {"v": PROTOCOL_VERSION, "id": request_id, "ok": True, "result": result}


def reply_error(request_id: Any, error: ProtocolError) -> dict[str, Any]:
    """An error reply (a code outside :data:`ERROR_CODES` is a bug: it goes out as ``internal``)."""
    code = error.code if error.code in ERROR_CODES else "internal"
    return {"v": PROTOCOL_VERSION, "id": request_id, "ok": False,
            "error": {"code": code, "message": error.message}}


def push(kind: str, subscription: int, **fields: Any) -> dict[str, Any]:
    """A push frame of a subscription (``event`` or ``dropped``)."""
    return {"v": PROTOCOL_VERSION, "push": kind, "subscription": subscription, **fields}


# ---- field checks -----------------------------------------------------------

def _field(fields: Mapping[str, Any], name: str, kind: type | tuple[type, ...], *, required: bool = False,
           check: Callable[[Any], bool] | None = None, rule: str = "") -> Any:
    value = fields.get(name)
    if value is None:
        if required:
            raise ProtocolError("bad_request", f"field {name!r} is required")
        return None
    # bool is an int in Python; never accept it where a number is meant
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise ProtocolError("bad_request", f"field {name!r} must be {_kind_name(kind)}")
    if not isinstance(value, kind):
        raise ProtocolError("bad_request", f"field {name!r} must be {_kind_name(kind)}")
    if check is not None and not check(value):
        raise ProtocolError("bad_request", f"field {name!r} {rule}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {str: "a string", int: "an integer", float: "a number", bool: "a boolean", dict: "an object",
             list: "an array"}
    return " or ".join(dict.fromkeys(names.get(k, k.__name__) for k in kinds))


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


WORKLOAD_KEYS: dict[str, str] = {
    "deployment": "k8s.deployment.name", "statefulset": "k8s.statefulset.name",
    "daemonset": "k8s.daemonset.name", "cronjob": "k8s.cronjob.name", "job": "k8s.job.name",
    "replicaset": "k8s.replicaset.name", "replicationcontroller": "k8s.replicationcontroller.name",
}
"""The kinds a ``workload`` filter names (``KIND/NAME``, the kind in any case), and the ``k8s`` key of each."""

K8S_FILTER_KEYS: dict[str, str] = {"pod": "k8s.pod.name", "namespace": "k8s.namespace.name",
                                   "container": "k8s.container.name"}
"""The Kubernetes filters besides ``workload``, and the ``k8s`` key each compares."""

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def k8s_name_problem(field: str, value: str, label: str | None = None) -> str | None:
    """Why ``value`` cannot be the Kubernetes name a ``pod``/``namespace``/``container``/``workload`` filter
    compares (``None`` when it can): the API server accepts no other, so no event could match it.

    Namespaces and container names are DNS labels (at most 63 characters); pod and workload names DNS
    subdomains (at most 253). ``workload`` may be ``KIND/NAME`` with a kind of :data:`WORKLOAD_KEYS`.
    ``label`` names the value in the message (``field 'pod'``, ``--pod``); default ``field``.
    """
    label = label or field
    if field == "workload" and "/" in value:
        kind, _, name = value.partition("/")
        if not kind or not name or "/" in name:
            return f"{label} must be NAME or KIND/NAME (e.g. deployment/checkout), not {value!r}"
        if kind.lower() not in WORKLOAD_KEYS:
            return (f"{label} kind {kind!r} is not one of {', '.join(WORKLOAD_KEYS)} "
                    f"(e.g. deployment/checkout)")
        value = name
    dns_label = field in ("namespace", "container")
    limit = 63 if dns_label else 253
    if not value:
        return f"{label} must not be empty"
    if len(value) > limit or not (_DNS_LABEL if dns_label else _DNS_SUBDOMAIN).match(value):
        what = "a DNS label: lowercase letters, digits and '-'" if dns_label else \
            "a DNS subdomain: lowercase letters, digits, '-' and '.'"
        return f"{label} must be a Kubernetes name ({what}, at most {limit} characters), not {value!r}"
    return None


def split_workload(value: str) -> tuple[str | None, str]:
    """``deployment/checkout`` -> ``("deployment", "checkout")``; ``checkout`` -> ``(None, "checkout")``
    (the value already checked by :func:`k8s_name_problem`)."""
    kind, slash, name = value.partition("/")
    return (kind.lower(), name) if slash else (None, value)


@dataclass(frozen=True)
class EventFilter:
    """Server-side filters of ``get_events``, ``subscribe`` and ``recent``; ``None`` matches anything.

    ``pod``, ``namespace``, ``container`` and ``workload`` compare the event's ``k8s`` object (``--enrich k8s``):
    an event without one never matches them. ``workload`` is a name matched against every workload key
    (Deployment, StatefulSet, DaemonSet, Job, CronJob, ReplicaSet, ReplicationController), or ``KIND/NAME``
    for one kind (stored with the kind in lower case).
    """

    probe: str | None = None
    type: str | None = None
    pid: int | None = None
    command: str | None = None
    src_ip: str | None = None
    dst_ip: str | None = None
    src_port: int | None = None
    dst_port: int | None = None
    pod: str | None = None
    namespace: str | None = None
    container: str | None = None
    workload: str | None = None

    def matches(self, event: Mapping[str, Any]) -> bool:
        """Whether ``event`` passes every filter that is set."""
        if self.probe is not None and event.get("source") != f"jalki/{self.probe}":
            return False
        if self.type is not None and event.get("type") != self.type:
            return False
        if self.pid is not None or self.command is not None:
            process = event.get("process_data") or {}
            if self.pid is not None and process.get("pid") != self.pid:
                return False
            if self.command is not None and process.get("command") != self.command:
                return False
        if self.src_ip or self.dst_ip or self.src_port is not None or self.dst_port is not None:
            network = event.get("network_data") or {}
            for name in ("src_ip", "dst_ip", "src_port", "dst_port"):
                wanted = getattr(self, name)
                if wanted is not None and network.get(name) != wanted:
                    return False
        return not self.has_k8s or self.matches_k8s(event)

    @property
    def has_k8s(self) -> bool:
        """Whether any Kubernetes filter (``pod``, ``namespace``, ``container``, ``workload``) is set."""
        return any(value is not None for value in (self.pod, self.namespace, self.container, self.workload))

    def matches_k8s(self, event: Mapping[str, Any]) -> bool:
        """Whether ``event`` passes the Kubernetes filters (an event without a ``k8s`` object never does)."""
        k8s = event.get("k8s")
        if not isinstance(k8s, Mapping):
            return False
        for name, key in K8S_FILTER_KEYS.items():
            wanted = getattr(self, name)
            if wanted is not None and k8s.get(key) != wanted:
                return False
        if self.workload is not None:
            kind, name = split_workload(self.workload)
            keys = WORKLOAD_KEYS.values() if kind is None else (WORKLOAD_KEYS[kind],)
            if not any(k8s.get(key) == name for key in keys):
                return False
        return True

    def k8s_only(self) -> EventFilter:
        """Only the Kubernetes filters of this one (what ``ask`` takes)."""
        return EventFilter(pod=self.pod, namespace=self.namespace, container=self.container, workload=self.workload)

    def describe_k8s(self) -> str:
        """The Kubernetes filters in words: ``pod checkout-7f9c, namespace payments, workload deployment/checkout``."""
        return ", ".join(f"{name} {value}" for name in ("pod", "namespace", "container", "workload")
                         if (value := getattr(self, name)) is not None)

    def as_dict(self) -> dict[str, Any]:
        """The filters that are set, named as in requests (``type`` is the ``event_type`` field)."""
        return {"event_type" if name == "type" else name: value for name, value in self.__dict__.items()
                if value is not None}


def _port(value: int) -> bool:
    return 0 < value < 65536


def _pid(value: int) -> bool:
    return 0 < value <= PID_MAX


PID_RULE = f"must be a process id between 1 and {PID_MAX}"


def parse_pid(fields: Mapping[str, Any]) -> int | None:
    """``pid`` of a request (a filter or a probe option): 1 to :data:`PID_MAX`, never a boolean."""
    value: int | None = _field(fields, "pid", int, check=_pid, rule=PID_RULE)
    return value


def parse_subscription(fields: Mapping[str, Any]) -> int:
    """``subscription`` of an ``unsubscribe``: a positive integer, never a boolean."""
    value: int = _field(fields, "subscription", int, required=True, check=lambda v: 0 < v <= MAX_INT,
                        rule="must be a positive subscription number")
    return value


def parse_filter(fields: Mapping[str, Any]) -> EventFilter:
    """The :class:`EventFilter` of a request's fields."""
    src_ip = _field(fields, "src_ip", str, check=_is_ip, rule="must be an IPv4 or IPv6 address")
    dst_ip = _field(fields, "dst_ip", str, check=_is_ip, rule="must be an IPv4 or IPv6 address")
    return EventFilter(
        probe=_field(fields, "probe", str),
        type=_field(fields, "event_type", str),
        pid=parse_pid(fields),
        command=_field(fields, "command", str, check=lambda v: 0 < len(v) <= 15, rule="must be 1 to 15 characters"),
        src_ip=None if src_ip is None else str(ipaddress.ip_address(src_ip)),
        dst_ip=None if dst_ip is None else str(ipaddress.ip_address(dst_ip)),
        src_port=_field(fields, "src_port", int, check=_port, rule="must be between 1 and 65535"),
        dst_port=_field(fields, "dst_port", int, check=_port, rule="must be between 1 and 65535"),
        **parse_k8s_fields(fields),
    )


class K8sFields(TypedDict):
    """The Kubernetes filters as request fields (and keyword arguments of :class:`EventFilter`)."""

    pod: str | None
    namespace: str | None
    container: str | None
    workload: str | None


def parse_k8s_fields(fields: Mapping[str, Any]) -> K8sFields:
    """``pod``, ``namespace``, ``container`` and ``workload`` of a request, each a Kubernetes name (``workload``
    also ``KIND/NAME``; its kind kept in lower case); ``bad_request`` names a value no event can match."""
    found = K8sFields(pod=None, namespace=None, container=None, workload=None)
    for name in ("pod", "namespace", "container", "workload"):
        value = _field(fields, name, str)
        if value is not None:
            problem = k8s_name_problem(name, value, f"field {name!r}")
            if problem is not None:
                raise ProtocolError("bad_request", problem)
            if name == "workload":
                kind, workload = split_workload(value)
                value = workload if kind is None else f"{kind}/{workload}"
        found[name] = value
    return found


@dataclass(frozen=True)
class DeploySpec:
    """What ``deploy`` asks for: a probe with its kernel-side options and an optional time to live."""

    probe: str
    sample: float = 1.0
    pid: int | None = None
    port: int | None = None
    ttl_s: float | None = None


def parse_deploy(fields: Mapping[str, Any]) -> DeploySpec:
    """Check a ``deploy`` request."""
    return DeploySpec(
        probe=_field(fields, "probe", str, required=True),
        sample=_field(fields, "sample", (int, float), check=lambda v: 0 < v <= 1, rule="must be in (0, 1]") or 1.0,
        pid=parse_pid(fields),
        port=_field(fields, "port", int, check=_port, rule="must be between 1 and 65535"),
        ttl_s=_field(fields, "ttl", (int, float), check=lambda v: 0 < v <= 7 * 86400,
                     rule="must be in (0, 604800] seconds"),
    )


def parse_seq(fields: Mapping[str, Any], name: str) -> int | None:
    """A sequence-number cursor (``since_seq`` of ``subscribe``, ``after_seq`` of ``get_events``/``recent``):
    0 (before the first event) to 2^63 - 1, never a boolean."""
    value: int | None = _field(fields, name, int, check=lambda v: 0 <= v <= MAX_INT,
                               rule=f"must be a sequence number from 0 to {MAX_INT}")
    return value


def parse_limit(fields: Mapping[str, Any], default: int = 100) -> int:
    """``limit`` of a listing request, capped at :data:`MAX_EVENTS_PER_REPLY`."""
    limit = _field(fields, "limit", int, check=lambda v: 0 < v <= MAX_INT,
                   rule=f"must be a positive integer (at most {MAX_INT})")
    return min(limit or default, MAX_EVENTS_PER_REPLY)


def parse_since(fields: Mapping[str, Any]) -> int | None:
    """``since`` as nanoseconds since the epoch: an RFC 3339 timestamp, or seconds ago as a number."""
    import time

    from jalki_core.kb import parse_timestamp

    value = fields.get("since")
    if value is None:
        return None
    if isinstance(value, bool):
        raise ProtocolError("bad_request", "field 'since' must be an RFC 3339 timestamp or seconds ago")
    if isinstance(value, int | float):
        now_ns = time.time_ns()
        # compared as numbers, never converted first: 1e308 seconds must not overflow on the way
        if not 0 <= value <= now_ns / 1_000_000_000:
            raise ProtocolError("bad_request", "field 'since' in seconds ago must be between 0 and the "
                                "seconds since 1970-01-01")
        return max(0, now_ns - int(value * 1_000_000_000))
    stamp = parse_timestamp(value)
    if stamp is None:
        raise ProtocolError("bad_request", "field 'since' must be an RFC 3339 timestamp or seconds ago")
    if not 0 <= stamp <= MAX_SINCE_NS:
        raise ProtocolError("bad_request", "field 'since' must be a time between 1970-01-01 and 2262-04-11")
    return stamp


def parse_frame(line: bytes) -> Request:
    """Parse one request frame (without its newline).

    :raises ProtocolError: ``bad_frame``, ``unsupported_version`` or ``bad_request``.
    """
    try:
        message = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError("bad_frame", f"not a JSON object: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError("bad_frame", "a frame must be a JSON object")
    request_id = message.get("id")
    if isinstance(request_id, dict | list):
        raise ProtocolError("bad_request", "field 'id' must be a string, number or null")
    if isinstance(request_id, str) and len(request_id) > MAX_ID_CHARS:
        raise ProtocolError("bad_request", f"field 'id' must be at most {MAX_ID_CHARS} characters")
    if message.get("v") != PROTOCOL_VERSION or isinstance(message.get("v"), bool):
        raise ProtocolError("unsupported_version", f"this daemon speaks protocol version {PROTOCOL_VERSION}",
                            request_id=request_id)
    kind = message.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("bad_request", "field 'type' must be a string", request_id=request_id)
    return Request(request_id, kind, message)
