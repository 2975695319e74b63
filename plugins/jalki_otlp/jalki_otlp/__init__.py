"""jalki-otlp: ``--emit otlp:http://HOST:4318`` sends events as OpenTelemetry logs (OTLP/HTTP protobuf).

Built on :mod:`jalki_core.emitters.delivery` (bounded queue, batching,
bounded retry, every loss counted by reason); the request is encoded with
``opentelemetry-proto`` and sent with ``httpx`` (not the OpenTelemetry logs
SDK, whose batch processor drops records without counting them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from jalki_core.emitters.selection import split_argument
from jalki_core.hookspecs import hookimpl

if TYPE_CHECKING:
    from jalki_core.registry import BoundEmitterRegistry
    from jalki_otlp.emitter import OtlpEmitter

__version__ = "0.1.0"


def make_emitter(argument: str | None) -> OtlpEmitter:
    """The otlp emitter of ``--emit otlp[:URL][,key=value...]`` (see :mod:`jalki_otlp.config`)."""
    from jalki_otlp.config import parse_config
    from jalki_otlp.emitter import OtlpEmitter

    target, options = split_argument(argument)
    if target is not None and "=" in target and "://" not in target:  # otlp:header=... (URL from OTEL_*)
        _, first = split_argument(f",{target}")
        target, options = None, first + options
    return OtlpEmitter(parse_config(target, options))


@hookimpl
def jalki_register_emitters(registry: BoundEmitterRegistry) -> None:
    """Register the ``otlp`` emitter."""
    registry.register("otlp", make_emitter, "OpenTelemetry logs over OTLP/HTTP protobuf (to an OTel Collector)")
