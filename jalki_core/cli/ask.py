"""``jalki ask``: the command-line face of :func:`jalki_core.ask.engine.ask`.

The answer goes to stdout (a rich report, or with ``--json`` the object of
``specs/ask.schema.json``); progress and warnings go to stderr. Ctrl-C or
SIGTERM while collecting stops early and still answers from what was seen.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from jalki_core.ask.engine import DEFAULT_SECONDS, first_sentence
from jalki_core.cli.options import (
    ContainerFilterOption,
    NamespaceFilterOption,
    PodFilterOption,
    WorkloadFilterOption,
)
from jalki_core.errors import UsageError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from rich.console import Console

    from jalki_core.daemon.protocol import EventFilter, K8sFields
    from jalki_core.enrich import EnrichStage

MAX_CAUSES_SHOWN = 8
"""Possible causes listed in a KB-only answer (all of them with --json)."""

_SEVERITY_STYLE = {"critical": "bold red", "error": "red", "warning": "yellow", "info": "cyan"}


class _Progress:
    """A rich progress bar on a terminal; one plain line otherwise."""

    def __init__(self, seconds: float, console: Console) -> None:
        self.seconds = seconds
        self.console = console
        self._bar: Any = None
        self._task: Any = None

    def __call__(self, elapsed: float, events: int) -> None:
        if self._bar is None:
            self._start()
        if self._task is not None:
            self._bar.update(self._task, completed=elapsed, events=events)

    def _start(self) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        if not self.console.is_terminal:
            self.console.print(f"observing the kernel for {self.seconds:g} s …")
            self._bar = False
            return
        self._bar = Progress(TextColumn("observing"), BarColumn(), TextColumn("{task.fields[events]} events"),
                             TimeRemainingColumn(), console=self.console, transient=True)
        self._bar.start()
        self._task = self._bar.add_task("observing", total=self.seconds, events=0)

    def close(self) -> None:
        if self._task is not None:
            self._bar.stop()


def _command_words(command: Mapping[str, Any]) -> str:
    """``crashy ×13 (pids 812, 815, …, 13 in all)``: short-lived processes of one program on one line."""
    from rich.markup import escape

    from jalki_core.kb.summarize import CommandGroup

    group = CommandGroup(command["command"], command["events"], command["processes"], tuple(command["pids"]))
    return escape(group.phrase())


def _pod_words(pod: Mapping[str, Any]) -> str:
    """``checkout-7f9c/payments (Deployment checkout) ×12``."""
    owner = f" ({pod['workload_kind']} {pod['workload']})" if pod["workload_kind"] else ""
    return f"{pod['pod']}/{pod['namespace']}{owner} ×{pod['events']}"


def _field_words(summary: Mapping[str, Any]) -> str:
    """``signal SIGSEGV ×13``; a spread of numbers as its range (``latency_ns 31000–52000``)."""
    from rich.markup import escape

    name, values = summary["field"].rsplit(".", 1)[-1], summary["values"]
    if summary["min"] is not None and (len(values) > 3 or summary["other"]):
        return f"{name} {summary['min']}–{summary['max']}"
    words = ", ".join(f"{escape(str(v['value']).lower() if isinstance(v['value'], bool) else str(v['value']))} "
                      f"×{v['events']}" for v in values[:3])
    return f"{name} {words}" + (", …" if len(values) > 3 or summary["other"] else "")


def _evidence_lines(finding: Mapping[str, Any]) -> list[str]:
    from rich.markup import escape

    lines = []
    for group in finding["evidence"][:3]:
        parts = [f"{group['events']} event{'s' if group['events'] != 1 else ''}"]
        if group["group"]:
            parts[0] += " with " + ", ".join(f"{name.rsplit('.', 1)[-1]}={escape(str(value))}"
                                             for name, value in group["group"].items())
        if group["peak_in_window"]:
            parts.append(f"peak {group['peak_in_window']} within the window")
        if group["destinations"]:
            parts.append("to " + ", ".join(f"{d['address']} ×{d['events']}" for d in group["destinations"][:3]))
        parts.extend(_field_words(summary) for summary in group.get("fields", ()))
        pods = group.get("pods")
        if pods:
            parts.append("in " + ", ".join(escape(_pod_words(pod)) for pod in pods[:3])
                         + (f" and {len(pods) - 3} more pods" if len(pods) > 3 else ""))
        commands = group.get("commands")
        if commands:
            parts.append("from " + ", ".join(_command_words(c) for c in commands[:3])
                         + (f" and {len(commands) - 3} more" if len(commands) > 3 else ""))
        elif group["processes"]:
            parts.append("from " + ", ".join(f"{escape(p['command'] or '?')} (pid {p['pid']}) ×{p['events']}"
                                             for p in group["processes"][:3]))
        if group["unattributed"]:
            parts.append(f"{group['unattributed']} with no single known process")
        lines.append("; ".join(parts))
    if len(finding["evidence"]) > 3:
        lines.append(f"… and {len(finding['evidence']) - 3} more groups (see --json)")
    return lines


def print_answer(answer: Mapping[str, Any], console: Console) -> None:
    """Render an answer object (``specs/ask.schema.json``), whether it came from this process or the daemon."""
    from rich.markup import escape

    mode_note = {"observed": "observed", "kb_only": "[yellow]knowledge base only[/]", "no_match": "no match"}
    via = " via the daemon" if answer.get("via") == "daemon" else ""
    console.print(f"[bold]jalki ask[/]: {escape(answer['question'])}  [dim]({mode_note[answer['mode']]}{via})[/]")
    findings = answer["findings"]
    top_style = _SEVERITY_STYLE.get(findings[0]["severity"], "") if findings else "green"
    console.print(f"[{top_style}]{escape(answer['answer'])}[/]")
    if findings:
        console.print("\n[bold]Findings[/], most important first:")
    for rank, finding in enumerate(findings, 1):
        style = _SEVERITY_STYLE.get(finding["severity"], "")
        kernel = " ".join(value for value in (finding["errno"], finding["tcp_state"]) if value)
        console.print(f"{rank}. [{style}]{finding['severity'].upper()}[/] {finding['interpretation']} "
                      f"[dim]({finding['entry']}{', ' + kernel if kernel else ''})[/]")
        if finding.get("detail"):
            console.print(f"   [bold]seen:[/] {escape(finding['detail'])}")
        console.print(f"   {escape(finding['conclusion'])}")
        for line in _evidence_lines(finding):
            console.print(f"   [bold]evidence:[/] {line}")
        console.print(f"   [bold]do:[/] {escape(finding['action'])}")
    causes = answer["possible_causes"]
    if causes:
        console.print("\n[bold]What these probes' events would mean[/] (nothing was observed):")
        for cause in causes[:MAX_CAUSES_SHOWN]:
            style = _SEVERITY_STYLE.get(cause["severity"], "")
            console.print(f"- [{style}]{cause['severity'].upper()}[/] {cause['interpretation']} "
                          f"[dim]({cause['entry']})[/]: {escape(first_sentence(cause['conclusion']))}")
        if len(causes) > MAX_CAUSES_SHOWN:
            console.print(f"… and {len(causes) - MAX_CAUSES_SHOWN} more (see --json)")
    if answer["probes"]:
        console.print("\n[bold]Probes[/]:")
    for probe in answer["probes"]:
        dropped = sum(probe["drops"].values())
        drops = f", [red]{dropped} dropped[/]" if dropped else ", 0 dropped"
        where = (f"on {probe['attach']}" if probe["attach"]
                 else f"[red]not attached[/]: {escape(probe['error'] or '')}")
        console.print(f"- {probe['probe']} {where}: {probe['events']} events{drops}")
    if answer["unobserved"]:
        console.print("\n[bold]Could not observe[/]:")
    by_reason: dict[str, list[str]] = {}
    for item in answer["unobserved"]:
        by_reason.setdefault(item["reason"], []).append(item["entry"])
    for reason, entries in by_reason.items():
        console.print(f"- {', '.join(entries)}: {escape(reason)}")
    for note in answer["notes"]:
        console.print(f"[yellow]note:[/] {escape(note)}")


def _ask_daemon(socket_path: Path | None, question: str, seconds: float, pid: int | None, port: int | None,
                console: Console, k8s: K8sFields) -> dict[str, Any] | None:
    """The daemon's answer, or ``None`` when no daemon answers (then ask runs in this process)."""
    from jalki_core.errors import DaemonUnavailable
    from jalki_core.sdk import Client

    try:
        client = Client(socket_path, timeout=5)
    except DaemonUnavailable:
        if socket_path is not None:
            raise
        return None
    with client:
        console.print(f"asking the jalki daemon at {client.path}; observing the kernel for {seconds:g} s …")
        return client.ask(question, seconds=seconds, pid=pid, port=port, **k8s).raw


def ask_command(
    question: Annotated[list[str], typer.Argument(help="The question, in plain words (quoted or not).")],
    seconds: Annotated[float, typer.Option(help="How long to observe the kernel.")] = DEFAULT_SECONDS,
    pid: Annotated[int | None, typer.Option(help="Only events of this process id.")] = None,
    port: Annotated[int | None, typer.Option(help="Only events with this source or destination port.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the answer as JSON (specs/ask.schema.json).")]
    = False,
    socket: Annotated[Path | None, typer.Option("--socket", readable=False,
                                                help="Ask through the daemon at this socket "
                                                "(default: the daemon at $JALKI_SOCKET or /run/jalki/jalki.sock "
                                                "when one runs).")] = None,
    in_process: Annotated[bool, typer.Option("--in-process", help="Attach the probes in this process even "
                                             "when a daemon runs.")] = False,
    enrich: Annotated[list[str] | None, typer.Option(help="Add fields to the events observed in this process: "
                                                     "k8s (pod, namespace, workload); implies --in-process (a "
                                                     "daemon enriches with its own --enrich).")] = None,
    node_name: Annotated[str | None, typer.Option(help="With --enrich k8s: this node's name (default: "
                                                  "$NODE_NAME, else the host name).")] = None,
    pod: PodFilterOption = None,
    namespace: NamespaceFilterOption = None,
    container: ContainerFilterOption = None,
    workload: WorkloadFilterOption = None,
) -> None:
    """Ask the kernel a question: attach the probes that answer it, observe, and explain what they saw."""
    from rich.console import Console


    text = " ".join(question).strip()
    if not text:
        raise UsageError("the question is empty", hint='e.g. jalki ask "why are connections to my database failing"')
    from jalki_core.cli.options import check_k8s_filters, check_pid, check_port, check_seconds

    check_seconds(seconds)
    check_pid(pid)
    check_port(port)
    k8s = check_k8s_filters(pod, namespace, container, workload)
    wanted = [f"--{name}" for name, value in k8s.items() if value is not None]
    stderr = Console(stderr=True, highlight=False)
    enrich_stage = None
    if enrich or node_name is not None:
        if socket is not None:
            raise UsageError("--enrich asks in this process, not through the daemon at --socket (a daemon "
                             "enriches with its own --enrich)", hint="leave out --socket or --enrich")
        from jalki_core.cli.common import build_enrich, load_plugins

        enrich_stage = build_enrich(load_plugins(), enrich, node_name, None)
    if wanted and in_process and enrich_stage is None:
        raise UsageError(f"{'/'.join(wanted)} filter by Kubernetes names, which events observed in this process "
                         "carry only with --enrich k8s", hint="add --enrich k8s, or ask a daemon that runs with it")
    answer = None if in_process or enrich_stage is not None else _ask_daemon(socket, text, seconds, pid, port,
                                                                             stderr, k8s)
    if answer is None:
        if wanted and enrich_stage is None:
            raise UsageError(f"no jalki daemon answers, and {'/'.join(wanted)} in this process need --enrich k8s "
                             "(events carry Kubernetes names only then)", hint="add --enrich k8s")
        scope = None
        if wanted:
            from jalki_core.daemon.protocol import EventFilter

            scope = EventFilter(**k8s)
        answer = _ask_here(text, seconds, pid, port, stderr, enrich_stage, scope)
    if as_json:
        import orjson

        sys.stdout.buffer.write(orjson.dumps(answer, option=orjson.OPT_INDENT_2) + b"\n")
        sys.stdout.flush()
        return
    if answer["mode"] == "no_match":
        from jalki_core.cli.kb import no_match_error
        from jalki_core.kb import default_kb

        raise no_match_error(text, default_kb())
    print_answer(answer, Console(highlight=False))


def _ask_here(text: str, seconds: float, pid: int | None, port: int | None, stderr: Console,
              enrich: EnrichStage | None = None, scope: EventFilter | None = None) -> dict[str, Any]:
    from jalki_core.ask.engine import ask

    progress = _Progress(seconds, stderr)
    cancel = threading.Event()

    def _on_signal(_signum: int, _frame: object) -> None:
        cancel.set()

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        result = ask(text, seconds=seconds, pid=pid, port=port, progress=progress, cancel=cancel, enrich=enrich,
                     scope=scope)
    finally:
        progress.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return result.as_dict()
