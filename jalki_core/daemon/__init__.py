"""The jalki daemon: ``jalki run --serve`` keeps probes running behind a local API.

- :mod:`.protocol`: frames, message types, errors and limits (``specs/protocol.md``);
- :mod:`.agent`: the long-running session, runtime deploy/undeploy with TTLs, signals;
- :mod:`.server`: the Unix-socket API (asyncio, one thread), subscriptions;
- :mod:`.store`: per-probe rings and the SQLite history;
- :mod:`.metrics`: Prometheus ``/metrics``, ``/healthz``, ``/readyz``;
- :mod:`.ask`: ``ask`` answered from the daemon's session.

Clients use the SDK, :mod:`jalki_core.sdk` (:class:`~jalki_core.sdk.Client`, :class:`~jalki_core.sdk.AsyncClient`).
"""
