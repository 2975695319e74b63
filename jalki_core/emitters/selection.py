"""Which events an emitter takes, and how many per second: the ``--emit`` options every emitter shares.

``--emit NAME:TARGET,key=value,...`` is split at commas. The keys here apply to
any emitter and are taken out before the emitter's factory sees the rest:

- ``types=GLOB|GLOB`` — only events whose type matches a glob (``kernel.tcp.*``);
- ``skip_types=GLOB|GLOB`` — never events whose type matches;
- ``min_severity=LEVEL`` — only events at least this severe (debug < info < warning < error < critical);
- ``rate=N/s`` (or ``N/m``) — at most N events per second (a token bucket holding one second's worth);
  events over it are dropped and counted as ``rate_limited``.

Repeating ``types=`` or ``skip_types=`` adds globs. Events left out by
``types``/``skip_types``/``min_severity`` are not losses (the user asked for
them to go elsewhere) and are counted apart as ``filtered``.
"""

from __future__ import annotations

import fnmatch
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from jalki_core.errors import UsageError
from jalki_core.events import SEVERITIES, Event

SELECTION_KEYS = ("types", "skip_types", "min_severity", "rate")
"""The ``--emit`` option keys every emitter takes."""

_RATE = re.compile(r"^(\d+(?:\.\d+)?)/(s|m)$")
_TYPES_KEPT = 4096
"""Most event types whose verdict a selection remembers (there are a few dozen in practice)."""


def split_argument(argument: str | None) -> tuple[str | None, list[tuple[str, str]]]:
    """``TARGET,key=value,...`` → ``(TARGET or None, [(key, value), ...])``, in order.

    :raises UsageError: an option without ``=``.
    """
    if not argument:
        return None, []
    target, *parts = argument.split(",")
    options = []
    for part in parts:
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise UsageError(f"bad --emit option {part!r}: options are key=value",
                             hint="e.g. --emit otlp:http://127.0.0.1:4318,types=kernel.tcp.*")
        options.append((key.strip(), value))
    return target or None, options


def join_argument(target: str | None, options: list[tuple[str, str]]) -> str | None:
    """The inverse of :func:`split_argument`."""
    parts = [target or ""] + [f"{key}={value}" for key, value in options]
    text = ",".join(parts)
    return text or None


def parse_rate(text: str) -> float:
    """``100/s`` or ``600/m`` → events per second (positive, finite)."""
    match = _RATE.match(text.strip())
    rate = float(match.group(1)) / (60.0 if match.group(2) == "m" else 1.0) if match else 0.0
    if match is None or not math.isfinite(rate) or rate <= 0:
        raise UsageError(f"bad --emit rate {text!r}: give events per second or minute, e.g. rate=500/s",
                         hint="rate=N/s or rate=N/m with N > 0")
    return rate


@dataclass
class RateLimit:
    """A token bucket: ``rate`` events per second, bursts up to ``burst`` (default one second's worth).

    :param clock: monotonic seconds (a fake one in tests).
    """

    rate: float
    burst: float = 0.0
    clock: Callable[[], float] = time.monotonic
    _tokens: float = field(init=False)
    _at: float = field(init=False)

    def __post_init__(self) -> None:
        if self.burst <= 0:
            self.burst = max(1.0, self.rate)
        self._tokens = self.burst
        self._at = self.clock()

    def take(self, wanted: int) -> int:
        """How many of ``wanted`` events may pass now (the others are over the rate)."""
        now = self.clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        granted = min(wanted, int(self._tokens))
        self._tokens -= granted
        return granted


@dataclass
class Selection:
    """An emitter's event filter and rate limit (``types``, ``skip_types``, ``min_severity``, ``rate``).

    Used on the drain thread by :meth:`EmitterWorker.submit`; verdicts per
    (type, severity) are cached, so a batch costs one dict lookup per event.
    """

    types: tuple[str, ...] = ()
    skip_types: tuple[str, ...] = ()
    min_severity: str | None = None
    rate: RateLimit | None = None
    _verdicts: dict[tuple[object, object], bool] = field(default_factory=dict, init=False, repr=False)

    @property
    def filters(self) -> bool:
        """True when the selection leaves some events out by type or severity."""
        return bool(self.types or self.skip_types or self.min_severity)

    def wants(self, event: Event) -> bool:
        """Whether the event passes the type and severity filters."""
        key = (event.get("type"), event.get("severity"))
        verdict = self._verdicts.get(key)
        if verdict is None:
            verdict = self._judge(str(key[0]), key[1])
            if len(self._verdicts) >= _TYPES_KEPT:
                self._verdicts.clear()
            self._verdicts[key] = verdict
        return verdict

    def _judge(self, event_type: str, severity: object) -> bool:
        if self.types and not any(fnmatch.fnmatchcase(event_type, glob) for glob in self.types):
            return False
        if any(fnmatch.fnmatchcase(event_type, glob) for glob in self.skip_types):
            return False
        if self.min_severity is not None:
            rank = SEVERITIES.index(severity) if severity in SEVERITIES else len(SEVERITIES) - 1
            return rank >= SEVERITIES.index(self.min_severity)
        return True

    def select(self, events: list[Event]) -> tuple[list[Event], int, int]:
        """``(kept, filtered, rate_limited)``: the events to send, and how many were left out and why.

        Over the rate limit the newest events of the batch are the ones dropped.
        """
        kept = [event for event in events if self.wants(event)] if self.filters else events
        filtered = len(events) - len(kept)
        limited = 0
        if self.rate is not None and kept:
            granted = self.rate.take(len(kept))
            limited = len(kept) - granted
            if limited:
                kept = kept[:granted]
        return kept, filtered, limited


def take_selection(argument: str | None, *, clock: Callable[[], float] = time.monotonic
                   ) -> tuple[Selection | None, str | None]:
    """Take the shared keys out of an ``--emit`` argument; return the selection (``None`` without any) and the
    argument the emitter's own factory parses.

    :raises UsageError: a bad glob list, severity or rate, naming the option and the fix.
    """
    target, options = split_argument(argument)
    if target is not None and target.partition("=")[0] in SELECTION_KEYS:  # stdout:types=... (no target)
        _, first = split_argument(f",{target}")
        target, options = None, first + options
    if not any(key in SELECTION_KEYS for key, _ in options):
        return None, argument
    types: list[str] = []
    skip: list[str] = []
    severity: str | None = None
    rate: RateLimit | None = None
    rest = []
    for key, value in options:
        if key in ("types", "skip_types"):
            globs = [glob.strip() for glob in value.split("|") if glob.strip()]
            if not globs:
                raise UsageError(f"--emit {key}= needs at least one event type or glob",
                                 hint=f"e.g. {key}=kernel.tcp.*|kernel.process.exit")
            (types if key == "types" else skip).extend(globs)
        elif key == "min_severity":
            if value not in SEVERITIES:
                raise UsageError(f"bad --emit min_severity {value!r}", hint=f"one of {', '.join(SEVERITIES)}")
            severity = value
        elif key == "rate":
            rate = RateLimit(parse_rate(value), clock=clock)
        else:
            rest.append((key, value))
    selection = Selection(tuple(types), tuple(skip), severity, rate)
    return selection, join_argument(target, rest)
