"""find: deterministic ranking (kernel name > answers > keywords, ties by id), tokenisation."""

from __future__ import annotations

from dataclasses import replace

import pytest

from jalki_core.kb import KnowledgeBase, default_kb, find, understood_words
from jalki_core.kb.find import STOP_WORDS, content_words, stem, tokenize

KB = default_kb()  # the built-in KB plus every installed plugin's documents


def top(question: str, kb: KnowledgeBase = KB, n: int = 3) -> list[tuple[str, int]]:
    return [(match.entry.id, match.score) for match in find(question, kb)[:n]]


def test_plain_questions_find_the_right_probe_first() -> None:
    assert top("why are connections to my database failing") == [
        ("tcp_connect", 302), ("tcp_recvmsg", 200), ("tcp_sendmsg", 200)]
    assert top("Is there packet loss?", n=2) == [("tcp_retransmit_skb", 202), ("kfree_skb", 103)]
    assert top("Was my process OOM-killed?", n=1) == [("oom_mark_victim", 302)]
    assert top("who killed my process", n=1) == [("signal_generate", 303)]
    assert top("why is the disk slow", n=1) == [("block_rq_complete", 202)]
    # the question of issue 12: "port" alone also names tcp_state_change ("stopped listening on its port")
    assert top("why can't my app reach port 5432", n=2) == [("tcp_connect", 401), ("tcp_state_change", 100)]


def test_match_explains_itself_in_the_question_words() -> None:
    [match] = find("why are connections to my database failing", KB, limit=1)
    assert match.names == ()
    assert match.answer == "Why are connections to my database failing?"
    assert match.answer_words == ("connections", "database", "failing")
    assert match.keywords == ("connection", "database")
    assert match.as_dict()["matched"] == {"names": [], "answer": "Why are connections to my database failing?",
                                          "answer_words": ["connections", "database", "failing"],
                                          "keywords": ["connection", "database"]}


def test_kernel_name_beats_answers_and_keywords() -> None:
    assert top("tcp_retransmit_skb", n=2) == [("tcp_retransmit_skb", 10000), ("tcp_retransmit_spike", 10000)]
    ranked = top("tcp_close: why are connections to my database failing", n=2)
    assert ranked == [("tcp_close", 10101), ("tcp_connect", 302)]
    [match] = find("what does tcp:tcp_probe show", KB, limit=1)
    assert (match.entry.id, match.names) == ("tcp_probe", ("tcp:tcp_probe",))
    # the full and the event spelling of one tracepoint count once
    assert top("sock:inet_sock_set_state inet_sock_set_state") == [
        ("tcp_close", 10000), ("tcp_connect", 10000), ("tcp_state_change", 10000)]


def _two_entries(a: dict[str, object], b: dict[str, object]) -> KnowledgeBase:
    base = KB.entries["tcp_connect"]
    entries = {
        "b_entry": replace(base, id="b_entry", function=None, tracepoint="demo:b", **b),  # type: ignore[arg-type]
        "a_entry": replace(base, id="a_entry", function=None, tracepoint="demo:a", **a),  # type: ignore[arg-type]
    }
    return KnowledgeBase(entries=entries, vocabulary=KB.vocabulary)


def test_answers_beat_keywords() -> None:
    kb = _two_entries({"answers": ("Unrelated?",), "keywords": ("widget", "broken", "gadget", "sprocket")},
                      {"answers": ("Why is the widget broken?",), "keywords": ("zzz",)})
    assert top("why is the widget broken gadget sprocket", kb) == [("b_entry", 200), ("a_entry", 4)]


def test_ties_are_broken_by_entry_id() -> None:
    same = {"answers": ("Is the widget broken?",), "keywords": ("widget",)}
    kb = _two_entries(same, same)
    assert top("widget broken", kb) == [("a_entry", 201), ("b_entry", 201)]
    assert top("widget broken", kb) == top("widget broken", kb)


def test_case_and_punctuation_do_not_matter() -> None:
    assert top("Why are CONNECTIONS refused?!") == top("why are connections refused")
    assert top("connections failing") == top("connection fails")


@pytest.mark.parametrize(("text", "tokens"), [
    ("Why's tcp_connect() FAILING?!", ["why", "s", "tcp_connect", "failing"]),
    ("sock:inet_sock_set_state", ["sock", "inet_sock_set_state"]),
    ("__init__ i/o 137", ["init", "i", "o", "137"]),
])
def test_tokenize(text: str, tokens: list[str]) -> None:
    assert tokenize(text) == tokens


@pytest.mark.parametrize(("word", "stemmed"), [
    ("connections", "connection"), ("failing", "fail"), ("failed", "fail"), ("fails", "fail"),
    ("processes", "process"), ("process", "process"), ("refused", "refus"), ("refuse", "refus"),
    ("latencies", "latency"), ("status", "status"), ("killed", "kill"), ("disk", "disk"),
])
def test_stem(word: str, stemmed: str) -> None:
    assert stem(word) == stemmed


def test_stop_words_carry_no_weight() -> None:
    assert content_words("why are the of my") == []
    assert find("why is it the", KB) == []
    assert {"why", "the", "my"} <= STOP_WORDS and "who" not in STOP_WORDS


def test_no_match_says_which_words_are_understood() -> None:
    assert find("xyzzy plugh", KB) == []
    words = understood_words(KB)
    assert words == sorted(words)
    assert {"refused", "retransmit", "oom", "disk", "cpu", "fsync"} <= set(words)
    assert not set(words) & STOP_WORDS


def test_limit() -> None:
    assert len(find("connection", KB, limit=2)) == 2
    assert len(find("connection", KB)) > 2
