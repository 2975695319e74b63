"""Knowledge-base commands: ``jalki find``, ``jalki list``, ``jalki explain``.

These are plain typer command functions; :mod:`jalki_core.cli` registers them
on the main app. They raise :class:`jalki_core.errors.JalkiError` subclasses
and leave the red line and the exit code to the main CLI. rich, orjson and the
KB itself are imported only when a command runs.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from jalki_core.errors import UsageError

if TYPE_CHECKING:
    from jalki_core.kb import KnowledgeBase
    from jalki_core.kb.explain import Verdict

MAX_WORDS_SHOWN = 30
"""Understood words listed in the one-line error when a question matches nothing."""

MAX_EXAMPLES_SHOWN = 3
"""Example questions (one per layer) in that error."""


def _load_kb() -> KnowledgeBase:
    """The default KB; its problems become yellow warning lines on stderr (they never stop the command)."""
    from rich.console import Console
    from rich.markup import escape

    from jalki_core.kb import default_kb

    kb = default_kb()
    if kb.problems:
        console = Console(stderr=True, highlight=False)
        for problem in kb.problems:
            console.print(f"[yellow]warning:[/] {escape(problem.one_line())}", soft_wrap=True)
    return kb


def no_match_error(question: str, kb: KnowledgeBase) -> UsageError:
    """The one-line error for a question no entry matches: example questions and the words understood."""
    from jalki_core.kb import understood_words

    words = understood_words(kb)
    shown = ", ".join(words[:MAX_WORDS_SHOWN])
    more = f" and {len(words) - MAX_WORDS_SHOWN} more (see --json)" if len(words) > MAX_WORDS_SHOWN else ""
    examples = [entries[0].answers[0] for layer in kb.layers() if (entries := kb.in_layer(layer))
                and entries[0].answers][:MAX_EXAMPLES_SHOWN]
    example_text = f"try e.g. {' / '.join(repr(example) for example in examples)}; " if examples else ""
    return UsageError(f"no knowledge-base entry matches {question!r}",
                      hint=f"{example_text}words understood: {shown}{more}")


def _print_json(value: Any) -> None:
    import orjson

    sys.stdout.buffer.write(orjson.dumps(value, option=orjson.OPT_INDENT_2) + b"\n")
    sys.stdout.flush()


def _implemented(entry: Any) -> str:
    impl = entry.implemented_by
    return "-" if impl is None else f"{impl.plugin}/{impl.probe}"


def _kernel(entry: Any) -> str:
    return " + ".join(name for name in (entry.function, entry.tracepoint) if name)


def find_command(
    question: Annotated[list[str], typer.Argument(help="The question, in plain words (quoted or not).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    limit: Annotated[int, typer.Option(help="Show at most this many entries.")] = 10,
) -> None:
    """Find the knowledge-base probes that answer a question, best first."""
    from jalki_core.kb import find, understood_words

    if limit < 1:
        raise UsageError(f"--limit must be at least 1, not {limit}")
    text = " ".join(question)
    kb = _load_kb()
    matches = find(text, kb, limit=limit)
    if as_json:
        result: dict[str, Any] = {"question": text, "matches": [match.as_dict() for match in matches]}
        if not matches:
            result["understood_words"] = understood_words(kb)
        _print_json(result)
        return
    if not matches:
        raise no_match_error(text, kb)
    from rich.console import Console
    from rich.markup import escape

    from jalki_core.cli.tables import Column, print_table

    rows = []
    for rank, match in enumerate(matches, 1):
        matched = [*match.names, *match.answer_words, *(k for k in match.keywords if k not in match.answer_words)]
        rate = " [yellow](high rate: sample)[/]" if match.entry.event_rate == "high" else ""
        rows.append([str(rank), escape(match.entry.id) + rate, escape(match.entry.layer),
                     escape(_kernel(match.entry)), escape(_implemented(match.entry)), str(match.score),
                     escape(", ".join(dict.fromkeys(matched)))])
    columns = [Column("#", justify="right"), Column("entry"), Column("layer", drop=3), Column("kernel", drop=5),
               Column("implemented by"), Column("score", justify="right", drop=4),
               Column("matched", min_width=12)]
    print_table(Console(highlight=False), f"jalki find: {escape(text)}", columns, rows,
                more="see jalki explain ENTRY or --json")


def list_command(
    layer: Annotated[str | None, typer.Option(help="Only the entries of this layer.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List the knowledge-base probe entries, by layer."""
    kb = _load_kb()
    if layer is not None and layer not in kb.layers():
        raise UsageError(f"unknown layer {layer!r}; layers: {', '.join(kb.layers())}")
    entries = kb.in_layer(layer) if layer is not None else sorted(kb, key=lambda e: (e.layer, e.id))
    if as_json:
        _print_json([entry.as_dict() for entry in entries])
        return
    from rich.console import Console
    from rich.markup import escape

    from jalki_core.cli.tables import Column, print_table

    rows = []
    for entry in entries:
        rows.append([escape(entry.id), escape(_implemented(entry)), escape(entry.layer),
                     f"[yellow]{entry.event_rate}[/]" if entry.event_rate == "high" else entry.event_rate,
                     str(len(entry.interpretations)), escape(entry.event_type), escape(_kernel(entry)),
                     escape(entry.summary)])
    # At 80 columns the columns that identify an entry stay; the rest is in
    # 'jalki explain' and --json, and named under the table.
    columns = [Column("entry"), Column("implemented by"), Column("layer", drop=2), Column("rate", drop=3),
               Column("rules", justify="right", drop=1), Column("event type", drop=4), Column("kernel", drop=5),
               Column("summary", drop=6, min_width=30)]
    print_table(Console(highlight=False), "jalki knowledge base" + (f" ({escape(layer)})" if layer else ""),
                columns, rows, more="see jalki explain ENTRY or --json")


def _verdict_text(verdict: Verdict) -> str:
    if verdict.needs_events is None:
        return "[green]holds[/]" if verdict.holds else "does not hold"
    grouping = f" per {', '.join(verdict.group_by)}" if verdict.group_by else ""
    counts = "this event counts" if verdict.counts_toward else "this event does not count"
    return f"needs >= {verdict.needs_events} matching events within {verdict.window_seconds:g} s{grouping} ({counts})"


def explain_command(
    entry: Annotated[str, typer.Argument(help="Entry id (see 'jalki list').")],
    assignments: Annotated[list[str] | None, typer.Argument(help="field=value pairs, e.g. error.code=ECONNREFUSED.")]
    = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Show which interpretations of an entry hold for the given field values."""
    from jalki_core.kb import explain

    kb = _load_kb()
    explanation = explain(entry, assignments or [], kb)
    if as_json:
        _print_json(explanation.as_dict())
        return
    from rich.console import Console
    from rich.markup import escape

    from jalki_core.cli.tables import Column, print_table

    given = " ".join(assignments or []) or "(no field values)"
    rows = []
    for verdict in explanation.verdicts:
        rule = verdict.interpretation
        note = f" [dim](not given: {escape(', '.join(verdict.missing_fields))})[/]" if verdict.missing_fields else ""
        rows.append([escape(rule.id), rule.severity, _verdict_text(verdict) + note, escape(rule.conclusion)])
    columns = [Column("interpretation"), Column("severity"), Column("verdict", min_width=20),
               Column("conclusion", min_width=30)]
    print_table(Console(highlight=False),
                f"jalki explain {escape(explanation.entry.id)} ({escape(explanation.entry.event_type)}): "
                f"{escape(given)}", columns, rows)
