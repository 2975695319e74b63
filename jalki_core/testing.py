"""Test helpers for probe authors, installed as a pytest plugin (``-p jalki``, auto-loaded).

Probe decoders can be tested without root: pack records with the probe's
:class:`~jalki_core.probe.RecordLayout`, feed them through
:class:`FakeRingBuffer` (which hands out batches exactly as the real C-shim
reader does: fixed-size records back to back), decode with a deterministic
:class:`~jalki_core.events.EventContext`, and validate against the event
schema.

Fixtures: ``jalki_event_context``, ``jalki_fake_ring_buffer``,
``jalki_validate_event``, ``jalki_memory_emitter``.
"""

from __future__ import annotations

import json
import select
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from jalki_core.emitters.base import Emitter, EventBatch
from jalki_core.errors import JalkiError
from jalki_core.events import Event, EventContext
from jalki_core.probe import Probe, ProbeResource, RecordLayout

FIXED_CLOCK_OFFSET_NS = 1_700_000_000_000_000_000
"""Wall-clock offset used by :func:`make_event_context`: kernel time 0 is 2023-11-14T22:13:20Z."""


class FileResource:
    """A BPF object (or schema) at a path of the test's own, e.g. one it compiled into ``tmp_path``: what a
    probe's ``bpf_object`` needs (``filename`` and ``read_bytes``) without a package around it."""

    def __init__(self, path: Path) -> None:
        self.filename = path.name
        self.path = path

    def read_bytes(self) -> bytes:
        """The file's bytes."""
        return self.path.read_bytes()


class FakeMap:
    """An in-memory stand-in for a loaded BPF hash map (``keys`` and ``lookup``, like the real one), for
    testing a probe's ``final_events`` or ``tick`` without the kernel."""

    def __init__(self, items: dict[bytes, bytes]) -> None:
        self.items = items

    def keys(self) -> list[bytes]:
        """The map's keys."""
        return list(self.items)

    def lookup(self, key: bytes) -> bytes | None:
        """The value of ``key``, or ``None``."""
        return self.items.get(key)


class FakeRingBuffer:
    """Stands in for :class:`jalki_core._libbpf.RingBufferReader` in tests.

    :param layout: the record layout; records must be exactly ``layout.size`` bytes.
    :param batch_records: most records returned by one :meth:`consume`.
    """

    def __init__(self, layout: RecordLayout, *, batch_records: int = 1024) -> None:
        self.layout = layout
        self.batch_records = batch_records
        self._pending: list[bytes] = []
        self.size_mismatches = 0
        self.records_total = 0

    def push(self, record: bytes) -> None:
        """Queue one raw record (a wrong size is counted and skipped, like the C shim)."""
        if len(record) != self.layout.size:
            self.size_mismatches += 1
            return
        self._pending.append(record)

    def push_values(self, **values: Any) -> None:
        """Pack one record from field values and queue it."""
        self.push(self.layout.pack(**values))

    def consume(self) -> bytes:
        """The next batch (possibly empty)."""
        batch, self._pending = self._pending[: self.batch_records], self._pending[self.batch_records :]
        self.records_total += len(batch)
        return b"".join(batch)

    def poll(self, timeout_ms: int = 0) -> bytes:
        """Same as :meth:`consume`; never blocks."""
        return self.consume()

    def close(self) -> None:
        """Forget pending records."""
        self._pending.clear()


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 20.0, interval: float = 0.02) -> Any:
    """Poll ``condition()`` until it is true and return its value; fail naming ``what`` after ``timeout``
    seconds (a bound on a hang, never a timing check)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


def start_jalki_run(*args: str, timeout: float = 60.0, stdout: int | None = subprocess.PIPE
                    ) -> subprocess.Popen[str]:
    """``jalki run ARGS`` (the ``jalki`` beside this interpreter), returned once it says ``tracing`` on stderr;
    killed, and an AssertionError with its stderr, when it exits or stays silent for ``timeout`` seconds."""
    jalki = str(Path(sys.executable).with_name("jalki"))
    proc = subprocess.Popen([jalki, "run", *args], stdout=stdout, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # never block past the deadline if jalki hangs without a word
        ready, _, _ = select.select([proc.stderr], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        line = proc.stderr.readline()
        if "tracing" in line:
            return proc
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"jalki run did not start: {proc.communicate()[1]}")


def make_event_context(probe: str = "test_probe", attach: str = "tracepoint") -> EventContext:
    """An :class:`EventContext` with a fixed clock and run id, for reproducible events."""
    return EventContext(probe, attach, cluster="test", node="test-node",
                        clock_offset_ns=FIXED_CLOCK_OFFSET_NS, run_id="00000000")


def decode_all(probe: Probe, ring: FakeRingBuffer, ctx: EventContext | None = None) -> list[Event]:
    """Drain ``ring`` batch by batch through ``probe.decode``."""
    ctx = ctx or make_event_context(probe.name)
    events: list[Event] = []
    while batch := ring.consume():
        events.extend(probe.decode(batch, ctx))
    return events


def load_event_schema() -> dict[str, Any]:
    """The event JSON Schema: the source checkout's specs/ when present, else the installed copy."""
    checkout = Path(__file__).resolve().parents[1] / "specs" / "event.schema.json"
    if checkout.is_file():
        text = checkout.read_text()
    else:
        text = resources.files("jalki_core").joinpath("schemas/event.schema.json").read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema


def probe_event_schemas(probes: Iterable[Probe] | None = None) -> list[dict[str, Any]]:
    """The event-schema fragments of ``probes`` (default: every installed plugin's probes).

    Each probe names its fragment with ``Probe.event_schema``; a probe without
    one contributes nothing, a fragment that cannot be read or parsed raises.
    """
    if probes is None:
        from jalki_core.plugins import JalkiPlugins

        probes = [registered.probe for registered in JalkiPlugins().probes]
    fragments = []
    for probe in probes:
        if probe.event_schema is not None:
            fragment: dict[str, Any] = json.loads(ProbeResource.of(probe, "event_schema").read_bytes())
            fragments.append(fragment)
    return fragments


def event_validator(probes: Iterable[Probe] | None = None) -> Callable[[Event], None]:
    """A function that raises ``jsonschema.ValidationError`` for an event that breaks the schema.

    An event must satisfy the core envelope (``specs/event.schema.json``) and
    the schema fragment of every probe in ``probes`` (default: the installed
    plugins' probes), so a plugin's event types are checked by its own schema.
    """
    import jsonschema

    checker = jsonschema.Draft202012Validator.FORMAT_CHECKER
    validators = [jsonschema.Draft202012Validator(schema, format_checker=checker)
                  for schema in (load_event_schema(), *probe_event_schemas(probes))]

    def validate(event: Event) -> None:
        for validator in validators:
            validator.validate(event)

    return validate


class MemoryEmitter(Emitter):
    """Keeps every event in a list (tests and in-process consumers)."""

    name = "memory"

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.closed = False

    def emit(self, batch: EventBatch) -> None:
        self.events.extend(batch.events)

    def close(self) -> None:
        self.closed = True

    def of_type(self, event_type: str) -> list[Event]:
        """Events whose ``type`` is ``event_type``."""
        return [e for e in self.events if e["type"] == event_type]


def example_kb_entry(entry_id: str = "demo_probe", rule_id: str = "demo_refused", **overrides: Any) -> dict[str, Any]:
    """A complete, valid KB entry of a made-up probe (specs/kb.md, "Entry"), with one interpretation
    ``rule_id`` (refused connects); ``overrides`` replace top-level keys. For tests of KB documents."""
    item: dict[str, Any] = {
        "id": entry_id,
        "summary": "A demo probe.",
        "tracepoint": "demo:demo_event",
        "implemented_by": None,
        "attach": ["tracepoint"],
        "event_type": "kernel.demo.event",
        "event_rate": "low",
        "answers": ["Is the demo failing?"],
        "keywords": ["demo"],
        "fields": [
            {"name": "error.code", "type": "errno", "meaning": "why it failed", "important": True},
            {"name": "data.count", "type": "integer", "meaning": "how many", "important": False},
            {"name": "data.state", "type": "tcp_state", "meaning": "socket state", "important": True},
        ],
        "use_when": "Always.",
        "not_when": "Never.",
        "combine_with": [],
        "interpretations": [
            {"id": rule_id, "condition": {"field": "error.code", "eq": "ECONNREFUSED"},
             "conclusion": "Refused.", "severity": "error", "action": "Start the service."},
        ],
    }
    item.update(overrides)
    return item


def require_fields(events: Iterable[Event], **expected: Any) -> list[Event]:
    """Events whose dotted fields equal the expected values (``network_data__dst_port=80``)."""
    matched = []
    for event in events:
        ok = True
        for dotted, value in expected.items():
            current: Any = event
            for part in dotted.split("__"):
                current = current.get(part) if isinstance(current, dict) else None
            if current != value:
                ok = False
                break
        if ok:
            matched.append(event)
    return matched


@pytest.fixture
def jalki_event_context() -> EventContext:
    """A deterministic :class:`EventContext`."""
    return make_event_context()


@pytest.fixture
def jalki_fake_ring_buffer() -> Callable[[RecordLayout], FakeRingBuffer]:
    """Factory: ``jalki_fake_ring_buffer(probe.layout)`` → :class:`FakeRingBuffer`."""
    return FakeRingBuffer


@pytest.fixture
def jalki_validate_event() -> Callable[[Event], None]:
    """Validates an event against the jalki event JSON Schema."""
    try:
        return event_validator()
    except (ImportError, JalkiError) as exc:  # pragma: no cover - needs jsonschema
        pytest.skip(f"event schema validation unavailable: {exc}")


@pytest.fixture
def jalki_memory_emitter() -> MemoryEmitter:
    """A fresh :class:`MemoryEmitter`."""
    return MemoryEmitter()
