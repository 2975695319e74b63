"""KB-21 … KB-23: ``find`` ranks deterministically, tokenises and stems lightly; ``jalki find`` prints it.

Ranking rules are checked on a small KB of made-up words (so no built-in entry
competes), through ``jalki_core.find`` and through ``jalki find`` with the
documents on ``JALKI_KB_PATH``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conformance_support import (
    VOCABULARY_FILE,
    Json,
    demo_entry,
    jalki,
    jalki_json,
    layer_document,
    listed_entries,
    table_rows,
    write_json,
)

import jalki_core
from jalki_core.kb import KnowledgeBase, default_kb, load_kb, understood_words


def probe(entry_id: str, answers: list[str], keywords: list[str], **extra: object) -> Json:
    return demo_entry(entry_id, f"{entry_id}_rule", tracepoint=f"demo:{entry_id}_event", answers=answers,
                      keywords=keywords, **extra)


RANKING = [
    probe("name_probe", ["Is anything else up?"], ["zzzunrelated"], function="frobnicate_widget"),
    probe("answer_probe", ["Why is the zorblax quuxle broken?"], ["zzzother"]),
    probe("keyword_probe", ["Unrelated question?"], ["zorblax", "quuxle", "broken", "zorblax quuxle", "quuxle fnord"]),
    probe("b_tie", ["Does the fnord glow?"], ["fnord"]),
    probe("a_tie", ["Does the fnord glow?"], ["fnord"]),
    probe("stem_probe", ["Nothing to see?"], ["glorp", "blarfy", "snorke", "klaxon"]),
]


@pytest.fixture(scope="module")
def demo_kb_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_json(tmp_path_factory.mktemp("kb") / "ranking.json", layer_document(*RANKING))


@pytest.fixture(scope="module")
def demo_kb(demo_kb_file: Path) -> KnowledgeBase:
    kb = load_kb([VOCABULARY_FILE, demo_kb_file])
    assert kb.problems == ()
    return kb


def ranked(question: str, kb: KnowledgeBase) -> list[tuple[str, int]]:
    return [(match.entry.id, match.score) for match in jalki_core.find(question, kb=kb)]


# KB-21 ----------------------------------------------------------------------------------------------------------

def test_kernel_name_beats_answers_which_beat_keywords(demo_kb: KnowledgeBase) -> None:
    # score = 10000 × names + 100 × answer words + keywords
    assert ranked("frobnicate_widget: why is the zorblax quuxle broken", demo_kb) == [
        ("name_probe", 10000), ("answer_probe", 300), ("keyword_probe", 4)]


def test_a_kernel_object_counts_once_and_a_differently_spelled_id_counts_too(demo_kb: KnowledgeBase) -> None:
    assert ranked("demo:name_probe_event name_probe_event", demo_kb) == [("name_probe", 10000)]
    assert ranked("name_probe frobnicate_widget", demo_kb) == [("name_probe", 20000)]
    assert ranked("FROBNICATE_WIDGET?", demo_kb) == [("name_probe", 10000)]


def test_ties_are_broken_by_entry_id_deterministically(demo_kb: KnowledgeBase) -> None:
    expected = [("a_tie", 201), ("b_tie", 201)]  # answer words fnord, glow + keyword fnord
    for _ in range(3):
        assert ranked("does the fnord glow", demo_kb) == expected


def test_match_says_why_in_the_question_words(demo_kb: KnowledgeBase) -> None:
    [first, second, third] = jalki_core.find("frobnicate_widget: Why is the Zorblax quuxle BROKEN?", kb=demo_kb)
    assert (first.names, first.answer_words, first.keywords) == (("frobnicate_widget",), (), ())
    assert (second.answer, second.answer_words) == ("Why is the zorblax quuxle broken?", ("zorblax", "quuxle",
                                                                                           "broken"))
    assert third.keywords == ("zorblax", "quuxle", "broken", "zorblax quuxle")  # "quuxle fnord" lacks fnord
    assert third.as_dict()["matched"] == {"names": [], "answer": None, "answer_words": [],
                                          "keywords": ["zorblax", "quuxle", "broken", "zorblax quuxle"]}


def test_limit(demo_kb: KnowledgeBase) -> None:
    assert [m.entry.id for m in jalki_core.find("does the fnord glow", kb=demo_kb, limit=2)] == ["a_tie", "b_tie"]
    assert len(jalki_core.find("connection", limit=2)) == 2
    assert len(jalki_core.find("connection")) > 2


@pytest.mark.parametrize(("question", "first"), [
    ("why are connections to my database failing", "tcp_connect"),
    ("Is there packet loss?", "tcp_retransmit_skb"),
    ("Was my process OOM-killed?", "oom_mark_victim"),
    ("who killed my process", "signal_generate"),
    ("why can't my app reach port 5432", "tcp_connect"),
])
def test_plain_questions_find_the_right_probe_first(question: str, first: str) -> None:
    matches = jalki_core.find(question)
    assert matches[0].entry.id == first
    assert matches[0].score >= 200 and matches[0].answer_words  # found through its answers, not by chance
    assert [m.score for m in matches] == sorted((m.score for m in matches), reverse=True)


# KB-22 ----------------------------------------------------------------------------------------------------------

def test_case_and_punctuation_do_not_matter(demo_kb: KnowledgeBase) -> None:
    assert ranked("WHY is the zorblax-quuxle broken?!", demo_kb) == ranked("why is the zorblax quuxle broken", demo_kb)
    assert ranked("Why are CONNECTIONS refused?!", default_kb()) == ranked("why are connections refused", default_kb())


@pytest.mark.parametrize(("question", "keyword"), [
    ("glorps", "glorp"), ("glorping", "glorp"), ("glorped", "glorp"),  # plural -s, -ing, -ed
    ("blarfies", "blarfy"),  # plural -ies
    ("klaxones", "klaxon"),  # plural -es (then final -e)
    ("snorked", "snorke"), ("snorke", "snorke"),  # final -e
])
def test_words_are_stemmed_lightly(demo_kb: KnowledgeBase, question: str, keyword: str) -> None:
    [match] = jalki_core.find(question, kb=demo_kb)
    assert (match.entry.id, match.keywords, match.score) == ("stem_probe", (keyword,), 1)


def test_stop_words_carry_no_weight(demo_kb: KnowledgeBase) -> None:
    assert jalki_core.find("why is it the of my") == []
    assert ranked("why is the glorp", demo_kb) == ranked("glorp", demo_kb) == [("stem_probe", 1)]


def test_no_match_returns_nothing_and_the_words_understood() -> None:
    assert jalki_core.find("xyzzy plugh") == []
    words = understood_words(default_kb())
    assert words == sorted(set(words))
    keyword_words = {word for item in listed_entries() for keyword in item["keywords"] for word in keyword.split()}
    assert set(words) <= keyword_words
    assert {"refused", "retransmit", "oom"} <= set(words)
    assert not {"why", "the", "my", "is"} & set(words)


# KB-23 ----------------------------------------------------------------------------------------------------------

def test_jalki_find_prints_a_ranked_table(demo_kb_file: Path) -> None:
    result = jalki("find", "frobnicate_widget:", "why", "is", "the", "zorblax", "quuxle", "broken",
                   env={"JALKI_KB_PATH": str(demo_kb_file)})
    assert result.returncode == 0
    rows = table_rows(result.stdout)
    assert [(row[0], row[1], row[5]) for row in rows] == [
        ("1", "name_probe", "10000"), ("2", "answer_probe", "300"), ("3", "keyword_probe", "4")]
    assert rows[0][2] == "demo" and "frobnicate_widget" in rows[0][3] and rows[0][4] == "-"
    assert rows[1][6] == "zorblax, quuxle, broken"


def test_jalki_find_marks_high_rate_entries() -> None:
    result = jalki("find", "why", "are", "connections", "to", "my", "database", "failing")
    rows = table_rows(result.stdout)
    high = {item["id"] for item in listed_entries() if item["event_rate"] == "high"}
    assert result.returncode == 0 and rows[0][1] == "tcp_connect" and rows[0][4] == "tcp/tcp_connect"
    for row in rows:
        assert row[1].endswith("(high rate: sample)") == (row[1].split()[0] in high)


def test_jalki_find_json_is_the_api_result() -> None:
    question = "why are connections to my database failing"
    result = jalki_json("find", question, "--limit", "3")
    api = jalki_core.find(question, limit=3)
    assert result == {"question": question, "matches": [match.as_dict() for match in api]}
    first = result["matches"][0]
    assert set(first) == {"entry", "layer", "score", "function", "tracepoint", "event_type", "event_rate",
                          "implemented_by", "summary", "matched"}
    assert (first["entry"], first["implemented_by"]) == ("tcp_connect", {"plugin": "tcp", "probe": "tcp_connect"})


def test_no_match_is_one_line_listing_understood_words_exit_2() -> None:
    result = jalki("find", "xyzzy", "plugh")
    assert (result.returncode, result.stdout) == (2, "")
    [line] = [line for line in result.stderr.splitlines() if not line.startswith("warning:")]
    assert line.startswith("error: no knowledge-base entry matches 'xyzzy plugh'")
    words = understood_words(default_kb())
    assert f"words understood: {', '.join(words[:5])}," in line


def test_no_match_json_lists_every_understood_word_exit_0() -> None:
    result = jalki("find", "xyzzy", "--json")
    assert result.returncode == 0
    assert json.loads(result.stdout) == {"question": "xyzzy", "matches": [],
                                         "understood_words": understood_words(default_kb())}


@pytest.mark.parametrize("limit", ["0", "-1"])
def test_a_bad_limit_is_one_line_exit_2(limit: str) -> None:
    result = jalki("find", "disk", "--limit", limit)
    assert (result.returncode, result.stdout) == (2, "")
    assert [line for line in result.stderr.splitlines() if not line.startswith("warning:")] == [
        f"error: --limit must be at least 1, not {limit}"]
