"""``jalki ask``: from a plain-language question to a ranked, evidenced answer.

The steps (``specs/ask.md``):

1. **find** the KB entries that match the question (:func:`jalki_core.kb.find`);
   the *relevant* ones are the best :data:`RELEVANT_MATCHES` whose score is at
   least half the best score;
2. **select** the relevant entries an installed plugin implements, plus the
   implemented ``combine_with`` companions of every relevant entry;
3. **attach** their probes in this process (:class:`TraceSession`) and
   **collect** events for the requested seconds;
4. **evaluate** every KB rule over the collected events
   (:func:`jalki_core.kb.evaluate`) and rank the findings;
5. **answer**: one sentence, the findings with their evidence, the probes and
   rungs used, drops, and what could not be observed and why.

:func:`ask` never raises for a condition of the machine: without privileges,
BTF or an implementing plugin it answers from the knowledge base alone
(``mode == "kb_only"``) and says why; a question that matches nothing gives
``mode == "no_match"`` with the words the KB understands. Only invalid
arguments (a negative duration…) raise :class:`jalki_core.errors.UsageError`.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from jalki_core.ask.result import AskResult, PossibleCause, ProbeUse, Unobserved
from jalki_core.errors import EnvironmentProblem, JalkiError, PrivilegeError, UsageError
from jalki_core.kb.model import SEVERITY_RANK

if TYPE_CHECKING:
    from jalki_core.daemon.protocol import EventFilter
    from jalki_core.enrich import EnrichStage
    from jalki_core.kb import Finding, KbEntry, KnowledgeBase, Match
    from jalki_core.plugins import JalkiPlugins
    from jalki_core.registry import RegisteredProbe
    from jalki_core.session import SessionSummary

log = logging.getLogger("jalki.ask")

DEFAULT_SECONDS = 10.0
"""How long ``ask`` collects events unless told otherwise."""

RELEVANT_MATCHES = 6
"""At most this many matched entries are relevant to a question."""

MAX_EVENTS_KEPT = 200_000
"""Events kept in memory for evaluation; more are counted in ``events_not_kept``."""

POSSIBLE_CAUSE_ENTRIES = 3
"""In a KB-only answer, list the possible causes of this many relevant entries."""

_SENTENCE_END = re.compile(r"(?<=[a-z0-9)])\.(?=\s+[A-Z(])")

ProgressCallback = Callable[[float, int], None]
"""``progress(elapsed_seconds, events_so_far)``, called a few times a second while collecting."""


def _kernel_name(entry: KbEntry) -> str:
    return " + ".join(name for name in (entry.function, entry.tracepoint) if name) or entry.id


def _relevant(matches: list[Match]) -> list[Match]:
    if not matches:
        return []
    floor = matches[0].score / 2
    return [match for match in matches if match.score >= floor][:RELEVANT_MATCHES]


def _installed_probe(entry: KbEntry, plugins: JalkiPlugins) -> RegisteredProbe | None:
    impl = entry.implemented_by
    if impl is None:
        return None
    registered = plugins.probes.get(impl.probe)
    if registered is None or registered.owner.plugin != impl.plugin:
        return None
    return registered


def _why_not_installed(entry: KbEntry) -> Unobserved:
    impl = entry.implemented_by
    if impl is None:
        return Unobserved(entry.id, _kernel_name(entry), "not_implemented",
                          "no jalki plugin implements this probe yet")
    return Unobserved(entry.id, _kernel_name(entry), "plugin_not_installed",
                      f"plugin {impl.plugin!r} (probe {impl.probe}) is not loaded: pip install jalki-{impl.plugin} "
                      f"(or check JALKI_PLUGINS / JALKI_DISABLE_PLUGINS)")


def _select(relevant: list[Match], kb: KnowledgeBase, plugins: JalkiPlugins
            ) -> tuple[list[KbEntry], dict[str, RegisteredProbe], list[Unobserved]]:
    """The entries to observe (relevant ones first, then companions), their probes, and the rest."""
    selected: list[KbEntry] = []
    probes: dict[str, RegisteredProbe] = {}
    unobserved: list[Unobserved] = []

    def take(entry: KbEntry) -> bool:
        registered = _installed_probe(entry, plugins)
        if registered is None:
            return False
        if entry not in selected:
            selected.append(entry)
            probes.setdefault(registered.probe.name, registered)
        return True

    for match in relevant:
        if not take(match.entry):
            unobserved.append(_why_not_installed(match.entry))
    for match in relevant:
        for companion_id in match.entry.combine_with:
            companion = kb.get(companion_id)
            if companion is not None:
                take(companion)
    return selected, probes, unobserved


def _possible_causes(relevant: list[Match]) -> tuple[PossibleCause, ...]:
    causes = [
        PossibleCause(match.entry.id, rule.id, rule.severity, rule.conclusion, rule.action, rule.errno,
                      rule.tcp_state)
        for match in relevant[:POSSIBLE_CAUSE_ENTRIES] for rule in match.entry.interpretations
    ]
    # Most severe first; the entries' own order (best match first) breaks ties.
    order = {id(cause): index for index, cause in enumerate(causes)}
    return tuple(sorted(causes, key=lambda cause: (-SEVERITY_RANK[cause.severity], order[id(cause)])))


def first_sentence(text: str) -> str:
    """The first sentence of a KB conclusion (the rest explains it)."""
    match = _SENTENCE_END.search(text)
    return text[: match.start() + 1] if match else text


def _evidence_phrase(finding: Finding) -> str:
    """``13 process_exit events: SIGSEGV (exit 139, core dumped) from crashy (13 processes)``."""
    count = f"{finding.events} {finding.entry_id} event{'s' if finding.events != 1 else ''}"
    return f"{count}: {finding.detail}" if finding.detail else count


def _observed_answer(findings: list[Finding], probes: list[ProbeUse], events: int, seconds: float,
                     scope: str | None = None) -> str:
    """The answer's sentence; with ``scope`` (``pod web-1, namespace shop``) it says that only those events
    were looked at."""
    attached = [probe.probe for probe in probes if probe.attach]
    only = "" if scope is None else f" (only events of {scope})"
    if findings:
        top = findings[0]
        return f"{top.severity.upper()}{only}: {first_sentence(top.conclusion)} ({_evidence_phrase(top)})"
    if events == 0:
        return (f"No problem seen, but nothing happened to judge: {', '.join(attached)} saw no events"
                f"{' of ' + scope if scope else ''} in {seconds:g} s. Ask again while the problem is happening, "
                "or with more --seconds.")
    return (f"No problem found{only}: {events} events from {', '.join(attached)} in {seconds:g} s "
            f"matched no knowledge-base rule.")


def _kb_only_answer(reason: str, relevant: list[Match]) -> str:
    entries = ", ".join(match.entry.id for match in relevant[:POSSIBLE_CAUSE_ENTRIES])
    return (f"Answered from the knowledge base only ({reason}). The probes that answer this: {entries}; "
            f"nothing was observed, so the possible causes are listed most serious first, none confirmed.")


def _probe_uses(summary: SessionSummary, probes: Mapping[str, RegisteredProbe],
                selected: list[KbEntry]) -> list[ProbeUse]:
    uses = []
    for stats in summary.probes:
        registered = probes[stats.name]
        entries = tuple(entry.id for entry in selected
                        if entry.implemented_by is not None and entry.implemented_by.probe == stats.name)
        uses.append(ProbeUse(
            probe=stats.name, plugin=registered.owner.plugin, entries=entries, attach=stats.rung,
            events=stats.events, drops={cause: count for cause, count in stats.drops_by_cause.items() if count},
            failed_rungs=tuple(failure.one_line() for failure in stats.failed_rungs), error=stats.error,
        ))
    return uses


class EventCollector:
    """Keeps decoded events (up to a limit) from the session's drain loop.

    :param scope: only events it matches are kept and counted (``ask --pod …``); the others are counted in
        :attr:`left_out`.
    """

    def __init__(self, limit: int, scope: EventFilter | None = None) -> None:
        self.limit = limit
        self.scope = scope
        self.events: list[dict[str, Any]] = []
        self.by_type: Counter[str] = Counter()
        self.not_kept = 0
        self.left_out = 0
        """Events outside :attr:`scope` (not evaluated, not in :attr:`by_type`)."""

    def __call__(self, batch: list[dict[str, Any]]) -> None:
        if self.scope is not None:
            scope = self.scope
            kept = [event for event in batch if scope.matches(event)]
            self.left_out += len(batch) - len(kept)
            batch = kept
        for event in batch:
            self.by_type[str(event.get("type"))] += 1
        room = self.limit - len(self.events)
        self.events.extend(batch[:room] if room > 0 else ())
        self.not_kept += max(0, len(batch) - max(room, 0))


def _check_arguments(seconds: float, pid: int | None, port: int | None) -> None:
    if not seconds > 0:
        raise UsageError(f"seconds must be positive, not {seconds}")
    if pid is not None and pid <= 0:
        raise UsageError(f"pid must be a positive process id, not {pid}")
    if port is not None and not 0 < port < 65536:
        raise UsageError(f"port must be between 1 and 65535, not {port}")


Collect = Callable[
    [list["RegisteredProbe"], float, "int | None", "int | None", "ProgressCallback | None", "threading.Event | None"],
    "tuple[EventCollector, SessionSummary]",
]
"""How events are collected: attach ``probes``, keep their events for ``seconds``, return them and per-probe stats.

The default attaches in this process; the daemon passes one that uses its running session."""


def collect_in_process(probes: list[RegisteredProbe], seconds: float, pid: int | None, port: int | None,
                       progress: ProgressCallback | None, cancel: threading.Event | None,
                       enrich: EnrichStage | None = None, scope: EventFilter | None = None,
                       ) -> tuple[EventCollector, SessionSummary]:
    """Attach ``probes`` in this process for ``seconds`` (the default :data:`Collect`), enriching events
    with ``enrich`` (``--enrich``) before they are kept; only those ``scope`` matches are kept."""
    from jalki_core.loader import ProbeOptions
    from jalki_core.session import TraceSession

    collector = EventCollector(MAX_EVENTS_KEPT, scope)
    session = TraceSession([registered.probe for registered in probes], (),
                           options=ProbeOptions(filter_pid=pid or 0, filter_port=port or 0), on_events=collector,
                           enrich=enrich)
    try:
        session.start()
        started = time.monotonic()
        while session.attached:
            elapsed = time.monotonic() - started
            if progress is not None:
                progress(min(elapsed, seconds), sum(collector.by_type.values()))
            if elapsed >= seconds or (cancel is not None and cancel.is_set()):
                break
            session.run(min(0.2, seconds - elapsed))
    finally:
        summary = session.stop()
    if progress is not None:
        progress(seconds, sum(collector.by_type.values()))
    return collector, summary


def ask(
    question: str,
    *,
    seconds: float = DEFAULT_SECONDS,
    pid: int | None = None,
    port: int | None = None,
    kb: KnowledgeBase | None = None,
    plugins: JalkiPlugins | None = None,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    collect: Collect | None = None,
    enrich: EnrichStage | None = None,
    scope: EventFilter | None = None,
) -> AskResult:
    """Answer ``question`` from the kernel: attach the probes that answer it, collect, evaluate.

    :param seconds: how long to collect events.
    :param pid: only events of this process id (kernel-side filter).
    :param port: only events with this source or destination port (kernel-side filter).
    :param kb: the knowledge base; default: built-in + ``JALKI_KB_PATH`` + plugins.
    :param plugins: the loaded plugins; default: every installed plugin.
    :param progress: called a few times a second while collecting.
    :param cancel: set it to stop collecting early; the answer covers what was collected.
    :param collect: how to collect (default: attach in this process); the daemon passes its own.
    :param enrich: enrichers for the events collected in this process (``jalki ask --enrich k8s``); started
        and closed by the collection. Not with ``collect``.
    :param scope: only events of these Kubernetes names (an :class:`~jalki_core.daemon.protocol.EventFilter`
        of ``pod``, ``namespace``, ``container``, ``workload``) are evaluated; the answer and a note say so,
        with how many events were left out. Events without a ``k8s`` object never match. A ``collect`` passed
        in applies it itself (its collector's ``scope``).
    :raises UsageError: only for invalid arguments.
    """
    _check_arguments(seconds, pid, port)
    from jalki_core.kb import default_kb, evaluate, find, understood_words
    from jalki_core.plugins import JalkiPlugins

    started = time.monotonic()
    plugins = plugins if plugins is not None else JalkiPlugins()  # loaded once: the KB reuses their documents
    kb = kb if kb is not None else default_kb(plugins=plugins)
    matches = find(question, kb)
    if not matches:
        words = tuple(understood_words(kb))
        return AskResult(question, "no_match", "No knowledge-base entry matches the question; ask with the words "
                         "listed in understood_words (for example: connection refused, packet loss, killed).",
                         seconds, time.monotonic() - started, understood_words=words)
    relevant = _relevant(matches)
    selected, probes, unobserved = _select(relevant, kb, plugins)
    notes: list[str] = [f"plugin {broken.identity.plugin} is broken: {broken.reason}" for broken in plugins.broken]

    def kb_only(reason: str, code: str | None, uses: Iterable[ProbeUse] = ()) -> AskResult:
        causes = _possible_causes(relevant)
        lost = [Unobserved(entry.id, _kernel_name(entry), code, reason) for entry in selected] if code else []
        return AskResult(question, "kb_only", _kb_only_answer(reason, relevant), seconds,
                         time.monotonic() - started, matches=tuple(matches), probes=tuple(uses),
                         unobserved=(*unobserved, *lost), possible_causes=causes, notes=tuple(notes))

    if not probes:
        return kb_only("no installed plugin implements the probes that answer this", None)
    from jalki_core.privileges import require_bpf_privileges, require_btf

    try:
        require_bpf_privileges()
        require_btf()
    except PrivilegeError as exc:
        return kb_only(f"no privileges: {exc.one_line()}", "no_privileges")
    except EnvironmentProblem as exc:
        return kb_only(f"no BTF: {exc.one_line()}", "no_btf")
    try:
        collect_with: Collect = collect_in_process  # the plain function when neither is set (tests replace it)
        if collect is not None:
            collect_with = collect
        elif enrich is not None or scope is not None:
            collect_with = functools.partial(collect_in_process, enrich=enrich, scope=scope)
        collector, summary = collect_with(list(probes.values()), seconds, pid, port, progress, cancel)
    except (JalkiError, OSError) as exc:
        log.warning("collection failed: %s", exc)
        return kb_only(f"collecting events failed: {exc}", "collection_failed")
    uses = _probe_uses(summary, probes, selected)
    for use in uses:
        if use.attach is None:
            for entry_id in use.entries:
                unobserved.append(Unobserved(entry_id, use.probe, "not_attachable",
                                             f"probe {use.probe} could not attach here: {use.error}"))
    if not any(use.attach for use in uses):
        return kb_only("no probe could be attached on this kernel", None, uses)
    findings = evaluate(collector.events, kb)
    for use in uses:
        if use.dropped:
            causes = ", ".join(f"{cause}={count}" for cause, count in sorted(use.drops.items()))
            notes.append(f"probe {use.probe} lost {use.dropped} records ({causes}): counts are lower bounds")
    for name, info in ((summary.enrich or {}).get("enrichers") or {}).items():
        if info.get("problem") or info.get("errors"):
            problem = info.get("problem") or info.get("last_error")
            notes.append(f"enricher {name}: {info.get('state', 'error')}: {problem}; events without its fields "
                          "are counted in its status")
    if scope is not None:
        notes.append(f"only events of {scope.describe_k8s()} were evaluated; {collector.left_out} other events "
                     "were left out (events without Kubernetes names, from --enrich k8s, never match)")
    if collector.not_kept:
        notes.append(f"{collector.not_kept} events beyond the first {MAX_EVENTS_KEPT} were counted but not evaluated")
    observed_seconds = min(summary.duration_s, seconds)
    return AskResult(
        question=question, mode="observed",
        answer=_observed_answer(findings, uses, sum(collector.by_type.values()), round(observed_seconds, 1),
                                None if scope is None else scope.describe_k8s()),
        seconds=seconds, duration_s=time.monotonic() - started, findings=tuple(findings), matches=tuple(matches),
        selected=tuple(entry.id for entry in selected), probes=tuple(uses), unobserved=tuple(unobserved),
        events_by_type=dict(collector.by_type), events_not_kept=collector.not_kept, notes=tuple(notes),
    )


async def ask_async(question: str, **options: Any) -> AskResult:
    """:func:`ask` without blocking the event loop (it runs in a worker thread).

    Cancelling the awaiting task stops the collection early.
    """
    import asyncio

    cancel = threading.Event()
    try:
        return await asyncio.to_thread(ask, question, cancel=cancel, **options)
    except asyncio.CancelledError:
        cancel.set()
        raise
