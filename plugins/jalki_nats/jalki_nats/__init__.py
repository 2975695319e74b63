"""jalki-nats: ``--emit nats:nats://HOST:PORT``, events published to NATS (core, or JetStream with acks).

The hook registers the factory only; nats-py is imported when a ``nats``
emitter is built (:mod:`jalki_nats.emitter`), so other commands pay nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from jalki_core.hookspecs import hookimpl

if TYPE_CHECKING:
    from jalki_core.emitters.base import Emitter
    from jalki_core.registry import BoundEmitterRegistry

__version__ = "0.1.0"


def _factory(argument: str | None) -> Emitter:
    from jalki_nats.emitter import parse_nats_argument

    return parse_nats_argument(argument)


@hookimpl
def jalki_register_emitters(registry: BoundEmitterRegistry) -> None:
    """Register the ``nats`` emitter."""
    registry.register("nats", _factory, "JSON events to NATS subjects <prefix>.<cluster>.<node>.<type>")
