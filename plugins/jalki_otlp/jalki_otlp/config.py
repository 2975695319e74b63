"""Where and how the otlp emitter sends: ``--emit otlp:...`` options and the standard OTEL_* variables.

``--emit otlp:URL`` gives the endpoint base (records go to ``URL/v1/logs``);
without a URL, ``OTEL_EXPORTER_OTLP_LOGS_ENDPOINT`` (used as is) or
``OTEL_EXPORTER_OTLP_ENDPOINT`` (a base), else ``http://localhost:4318``.
Headers come from ``OTEL_EXPORTER_OTLP_HEADERS`` / ``_LOGS_HEADERS``
(``k=v,k2=v2``, values URL-encoded) and ``header=NAME=VALUE`` options; the
timeout from ``OTEL_EXPORTER_OTLP_TIMEOUT`` / ``_LOGS_TIMEOUT`` (milliseconds)
or ``timeout=5s``; compression from ``OTEL_EXPORTER_OTLP_COMPRESSION`` /
``_LOGS_COMPRESSION`` or ``compression=gzip|none``. A header that carries
credentials is never sent in plain text to a host other than loopback unless
``allow_insecure=true``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field

from jalki_core.emitters.delivery import DeliverySettings, parse_seconds
from jalki_core.errors import UsageError

DEFAULT_ENDPOINT = "http://localhost:4318"
LOGS_PATH = "/v1/logs"
DEFAULT_TIMEOUT_S = 10.0
"""The OTLP exporter's default timeout (the specification's 10 s)."""

_SECRET_HEADER = re.compile(r"auth|key|token|secret|password|cookie|credential", re.IGNORECASE)
OWN_KEYS = ("header", "timeout", "compression", "allow_insecure")


@dataclass(frozen=True)
class OtlpConfig:
    """Everything the otlp emitter needs to send."""

    url: str
    headers: dict[str, str] = field(default_factory=dict)
    timeout_s: float = DEFAULT_TIMEOUT_S
    gzip: bool = False
    settings: DeliverySettings = field(default_factory=DeliverySettings)


def _env(environ: Mapping[str, str], name: str) -> str | None:
    """``OTEL_EXPORTER_OTLP_LOGS_<name>``, else ``OTEL_EXPORTER_OTLP_<name>`` (empty counts as unset)."""
    for key in (f"OTEL_EXPORTER_OTLP_LOGS_{name}", f"OTEL_EXPORTER_OTLP_{name}"):
        value = environ.get(key, "").strip()
        if value:
            return value
    return None


def logs_url(base: str) -> str:
    """The endpoint base with ``/v1/logs`` appended (a trailing slash dropped first)."""
    parts = urllib.parse.urlsplit(base)
    return urllib.parse.urlunsplit(parts._replace(path=parts.path.rstrip("/") + LOGS_PATH))


def _check_url(url: str, origin: str) -> urllib.parse.SplitResult:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"{origin} must be an http:// or https:// URL with a host, not {url!r}",
                         hint="e.g. --emit otlp:http://127.0.0.1:4318")
    try:
        parts.port  # noqa: B018 (a bad port raises here)
    except ValueError:
        raise UsageError(f"{origin} has a bad port: {url!r}", hint="e.g. http://127.0.0.1:4318") from None
    return parts


def parse_headers(text: str, origin: str) -> dict[str, str]:
    """``k=v,k2=v2`` (values URL-encoded, as in ``OTEL_EXPORTER_OTLP_HEADERS``) → a dict."""
    headers = {}
    for item in text.split(","):
        if not item.strip():
            continue
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise UsageError(f"bad header {item!r} in {origin}: give NAME=VALUE", hint="e.g. api-key=secret")
        headers[name.strip()] = urllib.parse.unquote(value.strip())
    return headers


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_config(target: str | None, options: list[tuple[str, str]],
                 environ: Mapping[str, str] | None = None) -> OtlpConfig:
    """The config from the ``--emit otlp:`` target and options, and the OTEL_* variables.

    :raises UsageError: a bad URL, header, timeout or compression; an unknown option; credentials in plain
        text to a remote host without ``allow_insecure=true``; a protocol other than http/protobuf.
    """
    env = os.environ if environ is None else environ
    settings, options = DeliverySettings.take(options)
    protocol = _env(env, "PROTOCOL")
    if protocol is not None and protocol != "http/protobuf":
        raise UsageError(f"the otlp emitter speaks http/protobuf, not OTEL_EXPORTER_OTLP_PROTOCOL={protocol}",
                         hint="unset it or set it to http/protobuf, and use the Collector's port 4318")
    if target:
        _check_url(target, "--emit otlp:URL")
        url = logs_url(target)
    elif (logs_endpoint := env.get("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "").strip()):
        _check_url(logs_endpoint, "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT")
        url = logs_endpoint
    else:
        base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip() or DEFAULT_ENDPOINT
        _check_url(base, "OTEL_EXPORTER_OTLP_ENDPOINT")
        url = logs_url(base)
    headers = parse_headers(_env(env, "HEADERS") or "", "OTEL_EXPORTER_OTLP_HEADERS")
    timeout_ms = _env(env, "TIMEOUT")
    timeout = DEFAULT_TIMEOUT_S
    if timeout_ms is not None:
        if not timeout_ms.isdigit() or int(timeout_ms) <= 0:
            raise UsageError(f"OTEL_EXPORTER_OTLP_TIMEOUT must be milliseconds, a positive whole number, "
                             f"not {timeout_ms!r}")
        timeout = int(timeout_ms) / 1000.0
    compression = (_env(env, "COMPRESSION") or "none").lower()
    insecure_ok = False
    for key, value in options:
        if key == "header":
            headers.update(parse_headers(value, "--emit otlp:...,header="))
        elif key == "timeout":
            timeout = parse_seconds(value, "timeout")
        elif key == "compression":
            compression = value.lower()
        elif key == "allow_insecure":
            if value not in ("true", "false"):
                raise UsageError(f"allow_insecure must be true or false, not {value!r}")
            insecure_ok = value == "true"
        else:
            known = ", ".join(OWN_KEYS + DeliverySettings.KEYS + ("types", "skip_types", "min_severity", "rate"))
            raise UsageError(f"unknown otlp emitter option {key!r}", hint=f"options are {known}")
    if compression not in ("gzip", "none"):
        raise UsageError(f"otlp compression must be gzip or none, not {compression!r}")
    parts = urllib.parse.urlsplit(url)
    secret = sorted(name for name in headers if _SECRET_HEADER.search(name))
    if parts.scheme == "http" and secret and not _loopback(parts.hostname or "") and not insecure_ok:
        raise UsageError(f"refusing to send the {', '.join(secret)} header in plain text to {parts.hostname}",
                         hint="use an https:// endpoint, or add allow_insecure=true to --emit otlp:...")
    return OtlpConfig(url, headers, timeout, compression == "gzip", settings)
