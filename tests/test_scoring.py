"""Score parsing, logprob renormalisation and selection: pure functions, no server."""

from __future__ import annotations

import math

import pytest

from humpback_plugin.stages.curate.scoring import echoes_candidate, parse_score, score_probabilities
from humpback_plugin.stages.curate.selectors import (
    quantile_selector,
    target_yield_selector,
    threshold_selector,
)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("The answer is complete.\nScore: 4", 4),
        ("Reasoning...\n\nScore: 5\n", 5),
        ("Reasoning.\n**Score:** 4", 4),
        ("Reasoning.\n**Score: 3**", 3),
        ("Reasoning.\nScore: 4/5", 4),
        ("Reasoning.\nScore: 4 out of 5", 4),
        ("Reasoning.\nScore: 2. The answer misses the point.", 2),
        ("Reasoning.\n4/5", 4),
        ("Reasoning.\n5", 5),
        ("Reasoning.\nScore: <3>", 3),
        ("Reasoning.\nScore: [4]", 4),
        ("Reasoning.\nScore: 4.0", 4),
        ("Reasoning.\nscore=1", 1),
        ("Reasoning.\nRating: 5", 5),
        ("Reasoning.\nScore: 4\n---", 4),  # markup-only trailing line ignored
        # several scores on the last line: the last valid one
        ("Reasoning.\nScore: 3 ... on reflection Score: 4", 4),
        ("Reasoning.\nScore: 4, not Score: 10502", 4),
        # out of range: not a score
        ("Reasoning.\nScore: 10502", None),
        ("Reasoning.\nScore: 0", None),
        ("Reasoning.\nScore: 6", None),
        ("Reasoning.\nScore: 4.5", None),
        # another scale is not the rubric's (issue 11): 5/10 is not 5
        ("Reasoning.\nScore: 5/10", None),
        ("Reasoning.\nScore: 4 out of 10", None),
        ("Reasoning.\n5/10", None),
        ("Reasoning.\nScore: 5/10, i.e. Score: 3", 3),
        ("Reasoning.\nScore: 5/5.0", 5),
        # a score line that is not last does not count
        ("Score: 5\nActually the answer is incomplete and rambles.", None),
        ("Score: 5\nScore: 10502", None),
        ("", None),
        ("No score at all", None),
        ("I give it a 4 because it is good", None),
    ],
)
def test_parse_score(text, expected):
    assert parse_score(text) == expected


def test_echo_of_candidate_score_line_is_detected():
    candidate = {"instruction": "Rate my essay", "output": "My essay is great.\nScore: 5"}
    # The judge parrots the candidate, whose last line is its own "Score: 5".
    assert echoes_candidate("Rate my essay\nMy essay is great.\nScore: 5", candidate)
    # The judge's own score, different from the candidate's line, is not an echo.
    assert not echoes_candidate("The answer is self-promotion.\nScore: 1", candidate)
    # A candidate without any score line can never be echoed.
    assert not echoes_candidate("Fine.\nScore: 5", {"instruction": "a", "output": "b"})


def test_probabilities_chat_shape_renormalised():
    logprobs = {
        "content": [
            {
                "token": "4",
                "logprob": math.log(0.6),
                "top_logprobs": [
                    {"token": "4", "logprob": math.log(0.6)},
                    {"token": "5", "logprob": math.log(0.2)},
                    {"token": " 5", "logprob": math.log(0.1)},  # same digit, other spelling
                    {"token": "The", "logprob": math.log(0.1)},  # not a score: dropped
                ],
            }
        ]
    }
    probs, mass = score_probabilities(logprobs)
    assert mass == pytest.approx(0.9)
    assert probs["4"] == pytest.approx(0.6 / 0.9)
    assert probs["5"] == pytest.approx(0.3 / 0.9)
    assert probs["1"] == 0.0
    assert sum(probs.values()) == pytest.approx(1.0)


def test_probabilities_completions_shape_and_masked_tokens():
    logprobs = {"tokens": ["3"], "top_logprobs": [{"3": -0.1, "2": -2.5, "x": float("-inf")}]}
    probs, _ = score_probabilities(logprobs)
    assert max(probs, key=probs.get) == "3"
    assert score_probabilities(None) == ({}, 0.0)
    assert score_probabilities({"content": [{"token": "a", "logprob": -1.0}]}) == ({}, 0.0)


def _rows(scores):
    return [
        {"key": f"k{i}", "id": f"id{i}", "score": s, "expected_score": e}
        for i, (s, e) in enumerate(scores)
    ]


def test_threshold_integer_and_fractional():
    rows = _rows([(5, 4.7), (4, 4.4), (4, 4.6), (3, 3.1), (None, None)])
    assert [r["key"] for r in threshold_selector(rows, {"threshold": 4})] == ["k0", "k1", "k2"]
    assert [r["key"] for r in threshold_selector(rows, {"threshold": 5})] == ["k0"]
    # A5 as "score >= 4.5": the expected score decides when there is one
    assert [r["key"] for r in threshold_selector(rows, {"threshold": 4.5})] == ["k0", "k2"]
    integer_only = _rows([(5, None), (4, None)])
    assert [r["key"] for r in threshold_selector(integer_only, {"threshold": 4.5})] == ["k0"]


def test_target_yield_exact_fraction_in_input_order():
    rows = _rows([(s, None) for s in [1, 5, 3, 5, 2, 4, 5, 1, 2, 3]])
    kept = target_yield_selector(rows, {"target_yield": 0.2})
    assert len(kept) == 2 and all(r["score"] == 5 for r in kept)
    assert [r["key"] for r in kept] == sorted((r["key"] for r in kept), key=lambda k: int(k[1:]))
    assert target_yield_selector(rows, {"target_yield": 0.0}) == []


def test_quantile_keeps_ties():
    rows = _rows([(s, None) for s in [1, 2, 3, 4, 5, 5, 5, 4, 3, 2]])
    kept = quantile_selector(rows, {"quantile": 0.9})
    assert {r["score"] for r in kept} == {5} and len(kept) == 3
