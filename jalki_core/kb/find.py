"""Rank KB entries for a plain-language question, deterministically.

Scoring (documented in ``specs/kb.md``), as one integer so that each tier
dominates the next::

    score = 10000 × names + 100 × answer_words + keywords

- ``names``: kernel objects the question names exactly — the entry's function,
  its tracepoint (``sock:inet_sock_set_state`` or just ``inet_sock_set_state``;
  one object either way), or the entry id when it is spelled differently from
  both (at most 9 count);
- ``answer_words``: content words the question shares with the entry's
  best-matching ``answers`` question (at most 99 count);
- ``keywords``: the entry's keywords whose words all occur in the question
  (at most 99 count).

Ties are broken by entry id. Words are lowercase runs of ``[a-z0-9_]`` (so
punctuation and case do not matter), without stop words, reduced by a light
suffix stemmer (``connections`` → ``connection``, ``failing`` → ``fail``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jalki_core.kb.model import KbEntry, KnowledgeBase

_TOKEN_RE = re.compile(r"[a-z0-9_]+")

STOP_WORDS: frozenset[str] = frozenset({
    "a", "an", "and", "are", "as", "at", "be", "been", "but", "by", "can", "could", "do", "does", "did", "for",
    "from", "had", "has", "have", "how", "i", "if", "in", "into", "is", "it", "its", "me", "my", "of", "on", "or",
    "our", "so", "some", "than", "that", "the", "their", "them", "then", "there", "these", "they", "this", "those",
    "to", "up", "us", "was", "we", "were", "what", "when", "where", "which", "while", "why", "will", "with",
    "would", "you", "your"
})


def tokenize(text: str) -> list[str]:
    """Lowercase word tokens; punctuation separates words, ``_`` joins them."""
    return [token.strip("_") for token in _TOKEN_RE.findall(text.lower()) if token.strip("_")]


def stem(word: str) -> str:
    """A light, predictable suffix stemmer (plural, -ing, -ed, final -e)."""
    if word.endswith("sses"):
        word = word[:-2]
    elif word.endswith("ies") and len(word) > 4:
        word = word[:-3] + "y"
    elif word.endswith("s") and not word.endswith(("ss", "us", "is")) and len(word) > 3:
        word = word[:-1]
    for suffix in ("ing", "ed"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)]
            break
    if word.endswith("e") and len(word) > 4:
        word = word[:-1]
    return word


def content_words(text: str) -> list[str]:
    """Stemmed tokens of ``text`` that are not stop words, first occurrence order."""
    seen: dict[str, None] = {}
    for token in tokenize(text):
        if token not in STOP_WORDS:
            seen.setdefault(stem(token))
    return list(seen)


@dataclass(frozen=True)
class Match:
    """One ranked entry and why it matched.

    :param names: kernel names (or the entry id) the question mentions.
    :param answer: the entry's ``answers`` question that shares the most words with the question.
    :param answer_words: those shared words, spelled as in the question.
    :param keywords: the entry's keywords found in the question.
    """

    entry: KbEntry
    score: int
    names: tuple[str, ...]
    answer: str | None
    answer_words: tuple[str, ...]
    keywords: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        entry = self.entry
        return {
            "entry": entry.id,
            "layer": entry.layer,
            "score": self.score,
            "function": entry.function,
            "tracepoint": entry.tracepoint,
            "event_type": entry.event_type,
            "event_rate": entry.event_rate,
            "implemented_by": (None if entry.implemented_by is None else
                               {"plugin": entry.implemented_by.plugin, "probe": entry.implemented_by.probe}),
            "summary": entry.summary,
            "matched": {"names": list(self.names), "answer": self.answer, "answer_words": list(self.answer_words),
                        "keywords": list(self.keywords)},
        }


def _score(entry: KbEntry, raw_tokens: set[str], words: dict[str, str]) -> Match:
    tracepoint_event = entry.tracepoint.partition(":")[2] if entry.tracepoint else None
    # One count per kernel object: a tracepoint matches by its full or its event name, and an
    # entry id spelled like its function or tracepoint is that same object.
    hits: dict[str | None, str] = {}
    for name in (entry.tracepoint, tracepoint_event, entry.function, entry.id):
        if name and name.lower() in raw_tokens:
            kernel_object = (entry.tracepoint if name in (entry.tracepoint, tracepoint_event)
                             else entry.function if name == entry.function else None)
            hits.setdefault(kernel_object, name)
    names = list(hits.values())
    best_answer: str | None = None
    best_words: tuple[str, ...] = ()
    for answer in entry.answers:
        shared = tuple(words[word] for word in content_words(answer) if word in words)
        if len(shared) > len(best_words):
            best_answer, best_words = answer, shared
    keywords = tuple(keyword for keyword in entry.keywords
                     if all(stem(part) in words for part in keyword.split()))
    score = min(len(names), 9) * 10000 + min(len(best_words), 99) * 100 + min(len(keywords), 99)
    return Match(entry, score, tuple(names), best_answer, best_words, keywords)


def find(question: str, kb: KnowledgeBase | None = None, *, limit: int | None = None) -> list[Match]:
    """KB entries for ``question``, best first; empty when no word matches.

    :param kb: the knowledge base; default: :func:`jalki_core.kb.default_kb`.
    :param limit: return at most this many matches.
    """
    if kb is None:
        from jalki_core.kb.load import default_kb

        kb = default_kb()
    tokens = tokenize(question)
    # Kernel names are matched whole, including "category:event" tracepoint spellings.
    raw_tokens = set(tokens) | {match.lower() for match in re.findall(r"[A-Za-z0-9_]+:[A-Za-z0-9_]+", question)}
    # stem -> the question's own spelling, so matches are reported in the user's words
    words: dict[str, str] = {}
    for token in tokens:
        if token not in STOP_WORDS:
            words.setdefault(stem(token), token)
    matches = [match for match in (_score(entry, raw_tokens, words) for entry in kb) if match.score > 0]
    matches.sort(key=lambda match: (-match.score, match.entry.id))
    return matches[:limit] if limit is not None else matches


def understood_words(kb: KnowledgeBase) -> list[str]:
    """Every keyword word the KB understands, sorted (shown when a question matches nothing)."""
    return sorted({word for entry in kb for keyword in entry.keywords for word in keyword.split()
                   if word not in STOP_WORDS})
