"""jalki events → an OTLP ``ExportLogsServiceRequest`` (one log record per event).

Resource: ``service.name=jalki``, ``service.version``, ``host.name`` (the
event's ``node``) and ``k8s.cluster.name`` (its ``cluster``, when set); one
scope per event source (``jalki/tcp_connect``). A record has the event's time,
a severity number from its severity, ``event_name`` = its type, a one-line
summary as body, and its fields as attributes: OpenTelemetry semantic
convention names where one exists (:data:`SEMCONV`), the rest under ``jalki.``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs

from jalki_core.events import Event, event_time_ns
from jalki_core.version import __version__ as JALKI_VERSION

SEVERITY_NUMBERS = {"debug": 5, "info": 9, "warning": 13, "error": 17, "critical": 21}
"""jalki severity → OTLP ``SeverityNumber`` (DEBUG, INFO, WARN, ERROR, FATAL)."""

SEMCONV = {
    ("network_data", "dst_ip"): "network.peer.address",
    ("network_data", "dst_port"): "network.peer.port",
    ("network_data", "src_ip"): "network.local.address",
    ("network_data", "src_port"): "network.local.port",
    ("network_data", "protocol"): "network.transport",
    ("network_data", "family"): "network.type",
    ("process_data", "pid"): "process.pid",
    ("process_data", "command"): "process.command",
    ("error", "code"): "error.type",
}
"""Event fields (object, key) that have an OpenTelemetry semantic-convention attribute."""

_TOP_LEVEL_SKIPPED = frozenset({"timestamp", "type", "severity", "cluster", "node"})
"""Fields carried elsewhere: the record's time, event name, severity; the resource."""

_FAMILY = {"ipv4": "ipv4", "ipv6": "ipv6"}


def any_value(value: Any) -> AnyValue | None:
    """A JSON value as an ``AnyValue`` (``None`` for null: the attribute is left out)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        if -(1 << 63) <= value < (1 << 63):
            return AnyValue(int_value=value)
        return AnyValue(string_value=str(value))  # a u64 past int64: keep every digit
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, str):
        return AnyValue(string_value=value)
    if isinstance(value, list | tuple):
        out = AnyValue()
        for item in value:
            converted = any_value(item)
            out.array_value.values.append(converted if converted is not None else AnyValue())
        return out
    if isinstance(value, Mapping):
        out = AnyValue()
        for key, item in value.items():
            converted = any_value(item)
            if converted is not None:
                out.kvlist_value.values.append(KeyValue(key=str(key), value=converted))
        return out
    return AnyValue(string_value=str(value))


def _attributes(event: Event) -> Iterable[tuple[str, Any]]:
    for key, value in event.items():
        if key in _TOP_LEVEL_SKIPPED or value is None:
            continue
        if key == "id":
            yield "jalki.event.id", value
        elif isinstance(value, Mapping):
            for sub, item in value.items():
                name = SEMCONV.get((key, sub))
                if name is not None:
                    yield name, item
                elif key == "data":
                    yield f"jalki.{sub}", item
                else:
                    yield f"jalki.{key}.{sub}", item
        else:
            yield f"jalki.{key}", value


def summary(event: Event) -> str:
    """One line saying what happened: type, peers, process, error (the record's body)."""
    parts = [str(event.get("type", "event"))]
    net = event.get("network_data")
    if isinstance(net, Mapping) and net.get("dst_ip") is not None:
        parts.append(f"{_host(net.get('src_ip'))}:{net.get('src_port')} -> "
                     f"{_host(net.get('dst_ip'))}:{net.get('dst_port')}")
    proc = event.get("process_data")
    if isinstance(proc, Mapping) and proc.get("pid") is not None:
        parts.append(f"pid {proc.get('pid')} ({proc.get('command')})")
    error = event.get("error")
    if isinstance(error, Mapping) and error.get("code"):
        parts.append(str(error["code"]))
    return " ".join(parts)


def _host(address: object) -> str:
    text = str(address)
    return f"[{text}]" if ":" in text else text


def log_record(event: Event, observed_ns: int) -> LogRecord:
    """One event as a ``LogRecord``."""
    severity = str(event.get("severity", "info"))
    record = LogRecord(
        time_unix_nano=event_time_ns(event) or 0,
        observed_time_unix_nano=observed_ns,
        severity_number=SEVERITY_NUMBERS.get(severity, 0),  # type: ignore[arg-type]
        severity_text=severity.upper(),
        event_name=str(event.get("type", "")),
        body=AnyValue(string_value=summary(event)),
    )
    append = record.attributes.append
    for key, value in _attributes(event):
        converted = any_value(value)
        if converted is not None:
            append(KeyValue(key=key, value=converted))
    return record


def resource_attributes(cluster: object, node: object) -> list[KeyValue]:
    """``service.name``, ``service.version``, ``host.name`` and, with a cluster, ``k8s.cluster.name``."""
    pairs: list[tuple[str, object]] = [("service.name", "jalki"), ("service.version", JALKI_VERSION),
                                       ("host.name", node)]
    if cluster is not None:
        pairs.append(("k8s.cluster.name", cluster))
    return [KeyValue(key=key, value=AnyValue(string_value=str(value))) for key, value in pairs if value is not None]


def export_request(events: list[Event], observed_ns: int | None = None) -> ExportLogsServiceRequest:
    """The request carrying ``events``: one ``ResourceLogs`` per (cluster, node), one scope per source, in order."""
    observed = time.time_ns() if observed_ns is None else observed_ns
    request = ExportLogsServiceRequest()
    resources: dict[tuple[object, object], ResourceLogs] = {}
    scopes: dict[tuple[object, object, object], Any] = {}
    for event in events:
        key = (event.get("cluster"), event.get("node"))
        resource = resources.get(key)
        if resource is None:
            resource = resources[key] = request.resource_logs.add()
            resource.resource.attributes.extend(resource_attributes(*key))
        source = event.get("source", "jalki")
        scope = scopes.get((*key, source))
        if scope is None:
            scope = scopes[(*key, source)] = resource.scope_logs.add()
            scope.scope.name = str(source)
            scope.scope.version = JALKI_VERSION
        scope.log_records.append(log_record(event, observed))
    return request
