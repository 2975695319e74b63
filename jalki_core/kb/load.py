"""Load KB documents from files, the user's path and plugins; never raise for a bad one.

Order and precedence: the built-in ``kb/`` directory, then ``JALKI_KB_PATH``
(files or directories separated by ``os.pathsep``), then plugin documents. When
two documents define the same entry id (or interpretation id) the first wins
and the second is reported, except that an implemented entry replaces the
placeholder entry (``implemented_by`` null) it ``implements`` or whose id it
has: one entry, the implementer's rules (``KnowledgeBase.implemented``).
Vocabulary documents (``value_sets``) are merged first, so any layer document
may use any value set.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jalki_core.kb.model import KbDocument, KbEntry, KbProblem, KnowledgeBase, ValueSet, Vocabulary
from jalki_core.kb.validate import check_entry, check_layer_header, check_vocabulary, is_vocabulary_document
from jalki_core.kb.witness import satisfiable

if TYPE_CHECKING:
    from jalki_core.plugins import JalkiPlugins

KB_PATH_ENV = "JALKI_KB_PATH"
"""Extra KB files or directories (``os.pathsep``-separated), loaded after the built-in ones."""


def builtin_kb_dir() -> Path | None:
    """The built-in ``kb/`` directory: the source checkout's, else the copy shipped as package data."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parents[1] / "kb", here / "data"):
        if (candidate / "vocabulary.json").is_file():
            return candidate
    return None


def user_kb_paths() -> list[Path]:
    """The paths named by ``JALKI_KB_PATH``."""
    return [Path(part) for part in os.environ.get(KB_PATH_ENV, "").split(os.pathsep) if part.strip()]


def _expand(paths: Iterable[str | os.PathLike[str]], problems: list[KbProblem]) -> list[Path]:
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files.extend(sorted(path.glob("*.json")))
        elif path.is_file():
            files.append(path)
        else:
            problems.append(KbProblem(str(path), None, "", "no such KB file or directory"))
    return files


def _read(path: Path) -> KbDocument:
    try:
        return KbDocument(str(path), text=path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        return KbDocument(str(path), error=f"cannot read: {exc}")


def _parse(document: KbDocument, problems: list[KbProblem]) -> Any:
    if document.error is not None:
        problems.append(KbProblem(document.origin, None, "", document.error))
        return None
    if document.text is None:
        return document.data
    try:
        return json.loads(document.text)
    except json.JSONDecodeError as exc:
        problems.append(KbProblem(document.origin, None, "", f"invalid JSON at line {exc.lineno} column "
                                                             f"{exc.colno}: {exc.msg}"))
    except RecursionError:
        problems.append(KbProblem(document.origin, None, "", "invalid JSON: nested too deeply"))
    return None


def _merge_vocabulary(base: Vocabulary | None, extra: Vocabulary, source: str,
                      problems: list[KbProblem]) -> Vocabulary:
    if base is None:
        return extra
    value_sets: dict[str, ValueSet] = dict(base.value_sets)
    for name, value_set in extra.value_sets.items():
        if name in value_sets and value_sets[name] != value_set:
            problems.append(KbProblem(source, None, f"value_sets.{name}", "already defined differently; ignored"))
        else:
            value_sets[name] = value_set
    envelope = dict(base.envelope_fields)
    for path, field_type in extra.envelope_fields.items():
        if envelope.get(path, field_type) != field_type:
            problems.append(KbProblem(source, None, f"envelope_fields.{path}", "already defined differently; ignored"))
        else:
            envelope[path] = field_type
    attach = base.attach_kinds + tuple(kind for kind in extra.attach_kinds if kind not in base.attach_kinds)
    reported = base.reported_names + tuple(name for name in extra.reported_names if name not in base.reported_names)
    return Vocabulary(value_sets, attach, envelope, reported)


def _cross_check(entries: dict[str, KbEntry], vocabulary: Vocabulary, problems: list[KbProblem],
                 implemented: dict[str, str]) -> None:
    """Drop dangling combine_with references and unreachable rules, reporting each.

    A reference to a replaced placeholder points to the entry that implements it.
    """
    for entry_id, entry in list(entries.items()):
        keep: list[str] = []
        for i, named in enumerate(entry.combine_with):
            other = implemented.get(named, named)
            if other in keep or (other == entry_id and named != entry_id):
                continue  # two names of one entry, or the placeholder this entry implements
            if other == entry_id or other not in entries:
                why = "an entry cannot combine with itself" if other == entry_id else f"no entry {other!r}"
                problems.append(KbProblem(entry.source, entry_id, f"combine_with[{i}]", why))
            else:
                keep.append(other)
        field_types = {spec.name: spec.type for spec in entry.fields}
        reachable = []
        for i, interpretation in enumerate(entry.interpretations):
            try:
                ok = satisfiable(interpretation.rule, field_types, vocabulary)
            except RecursionError:
                ok = False
            if ok:
                reachable.append(interpretation)
            else:
                problems.append(KbProblem(entry.source, entry_id, f"interpretations[{i}].condition",
                                          f"no event can satisfy {interpretation.id!r}: an unreachable rule"))
        entries[entry_id] = dataclasses.replace(entry, combine_with=tuple(keep), interpretations=tuple(reachable))


def load_kb(paths: Iterable[str | os.PathLike[str]] | None = None,
            extra_entries: Iterable[KbDocument] = ()) -> KnowledgeBase:
    """Load KB documents; every problem is returned in ``KnowledgeBase.problems``, none is raised.

    :param paths: KB files or directories (``*.json``); default: the built-in
        directory and ``JALKI_KB_PATH``.
    :param extra_entries: further documents (from plugins), loaded last.
    """
    problems: list[KbProblem] = []
    if paths is None:
        builtin = builtin_kb_dir()
        if builtin is None:
            problems.append(KbProblem("kb", None, "", "the built-in knowledge base was not found"))
        paths = [*([builtin] if builtin else []), *user_kb_paths()]
    documents = [_read(path) for path in _expand(paths, problems)] + list(extra_entries)
    parsed = [(document.origin, _parse(document, problems)) for document in documents]
    vocabulary: Vocabulary | None = None
    for source, data in parsed:
        if is_vocabulary_document(data):
            found, vocabulary_problems = check_vocabulary(data, source)
            problems.extend(vocabulary_problems)
            if found is not None:
                vocabulary = _merge_vocabulary(vocabulary, found, source, problems)
    if vocabulary is None:
        problems.append(KbProblem("kb", None, "", "no vocabulary document loaded (kb/vocabulary.json)"))
        vocabulary = Vocabulary()
    candidates: list[KbEntry] = []
    for source, data in parsed:
        if data is None or is_vocabulary_document(data):
            continue
        layer, raw_entries, header_problems = check_layer_header(data, source)
        problems.extend(header_problems)
        if layer is None:
            continue
        for index, raw in enumerate(raw_entries):
            try:
                entry, entry_problems = check_entry(raw, index, layer, source, vocabulary)
            except RecursionError:  # a condition nested beyond reason must not take the tool down
                entry, entry_problems = None, [KbProblem(source, f"#{index}", "", "nested too deeply")]
            problems.extend(entry_problems)
            if entry is not None:
                candidates.append(entry)
    implemented = _implemented_placeholders(candidates, problems)
    entries: dict[str, KbEntry] = {}
    rule_owner: dict[str, KbEntry] = {}
    for entry in candidates:
        if entry.placeholder and entry.id in implemented:
            continue  # replaced by the entry that implements it
        if entry.id in entries:
            problems.append(KbProblem(entry.source, entry.id, "id", f"entry id already defined in "
                                                                    f"{entries[entry.id].source}; ignored"))
            continue
        clash = next((rule.id for rule in entry.interpretations if rule.id in rule_owner), None)
        if clash is not None:
            problems.append(KbProblem(entry.source, entry.id, "interpretations", f"interpretation id {clash!r} is "
                                      f"already used by entry {rule_owner[clash].id!r}; entry ignored"))
            continue
        entries[entry.id] = entry
        rule_owner.update({rule.id: entry for rule in entry.interpretations})
    implemented = {placeholder: by for placeholder, by in implemented.items() if by in entries}
    _cross_check(entries, vocabulary, problems, implemented)
    return KnowledgeBase(entries=dict(sorted(entries.items())), vocabulary=vocabulary, problems=tuple(problems),
                         sources=tuple(source for source, _ in parsed), implemented=implemented)


def _implemented_placeholders(candidates: list[KbEntry], problems: list[KbProblem]) -> dict[str, str]:
    """Placeholder id → id of the implemented entry that replaces it; ``candidates`` record what they implement.

    An implemented entry replaces the placeholder it names in ``implements``,
    or the placeholder of its own id. The first implementer (in load order)
    wins; a later one, or an ``implements`` that names no placeholder, is
    reported and loads as an entry of its own.
    """
    placeholders = {entry.id for entry in candidates if entry.placeholder}
    implemented_ids = {entry.id: entry for entry in candidates if not entry.placeholder}
    implemented: dict[str, str] = {}
    for index, entry in enumerate(candidates):
        if entry.placeholder:
            continue
        target = entry.implements or (entry.id if entry.id in placeholders else None)
        if target is None:
            continue
        if target not in placeholders:
            other = implemented_ids.get(target)
            why = (f"entry {target!r} is not a placeholder: {other.source} implements it with "
                   f"{other.implemented_by.plugin}/{other.implemented_by.probe}"
                   if other is not None and other is not entry and other.implemented_by is not None
                   else f"no placeholder entry {target!r} (implemented_by null) is loaded")
            problems.append(KbProblem(entry.source, entry.id, "implements", f"{why}; nothing replaced"))
            candidates[index] = dataclasses.replace(entry, implements=None)
        elif target in implemented:
            problems.append(KbProblem(entry.source, entry.id, "implements", f"placeholder {target!r} is already "
                                      f"implemented by entry {implemented[target]!r}; nothing replaced"))
            candidates[index] = dataclasses.replace(entry, implements=None)
        else:
            implemented[target] = entry.id
            candidates[index] = dataclasses.replace(entry, implements=target)
    return implemented


@functools.lru_cache(maxsize=8)
def _cached_default(kb_path: str, plugin_env: tuple[str, str], with_plugins: bool) -> KnowledgeBase:
    if not with_plugins:
        return load_kb(None)
    from jalki_core.plugins import JalkiPlugins

    return _cached_with_documents(kb_path, _Documents(JalkiPlugins().kb_documents()))


class _Documents(tuple[KbDocument, ...]):
    """Plugin KB documents as a cache key: equal when their origins and contents are equal."""

    def __new__(cls, documents: Iterable[KbDocument]) -> _Documents:
        return super().__new__(cls, documents)

    def _key(self) -> tuple[tuple[str, str | None, str | None, str | None], ...]:
        return tuple((d.origin, d.text, d.error, None if d.data is None else json.dumps(d.data, sort_keys=True,
                                                                                         default=repr))
                     for d in self)

    def __hash__(self) -> int:
        return hash(self._key())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Documents) and self._key() == other._key()


@functools.lru_cache(maxsize=8)
def _cached_with_documents(kb_path: str, documents: _Documents) -> KnowledgeBase:
    return load_kb(None, documents)


def default_kb(*, plugins: bool | JalkiPlugins = True) -> KnowledgeBase:
    """The built-in KB, ``JALKI_KB_PATH`` and the plugins' documents.

    :param plugins: ``True``: load the installed plugins (as the CLI does) and
        use their documents; a :class:`~jalki_core.plugins.JalkiPlugins`: use
        the documents those already-loaded plugins registered, without loading
        any plugin again; ``False``: no plugin documents.

    Cached per value of the environment variables that select the documents
    (and, for loaded plugins, per content of their documents).
    """
    kb_path = os.environ.get(KB_PATH_ENV, "")
    if not isinstance(plugins, bool):
        return _cached_with_documents(kb_path, _Documents(plugins.kb_documents()))
    plugin_env = (os.environ.get("JALKI_PLUGINS", ""), os.environ.get("JALKI_DISABLE_PLUGINS", ""))
    return _cached_default(kb_path, plugin_env, plugins)
