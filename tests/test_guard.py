"""The injection guard's rating masks: what it removes and keeps, and that its fast path
(substring gates, line by line, split patterns) removes exactly what searching the whole
text with the two plain patterns removes, on real web text and on generated text built to
sit on the gates' edges."""

from __future__ import annotations

import gzip
import itertools
import json
import random
import re

import pytest

from humpback_plugin.stages.curate import guard
from humpback_plugin.stages.curate.guard import mask_ratings
from tests.conftest import shared_file

# The plain patterns, as the guard had them before its fast path: the reference.
_BARE_PLAIN = re.compile(
    rf"(?<![\d/.,]){guard._NUMBER}{guard._OUT_OF}"
    r"|\b(?:\d|one|two|three|four|five)(?:\.\d)?[ \t-]*stars?\b"
    r"|[★☆✩✪✫✬✭✮✯⭐]{2,}",
    re.IGNORECASE,
)


def plain_mask(text: str) -> tuple[str, int]:
    count = 0

    def drop(match: re.Match) -> str:
        nonlocal count
        count += 1
        return ""

    masked = _BARE_PLAIN.sub(drop, guard._KEYWORD.sub(drop, text))
    if not count:
        return text, 0
    kept = [
        new
        for old, new in zip(text.split("\n"), masked.split("\n"), strict=True)
        if new == old or guard._CONTENT.search(new)
    ]
    return "\n".join(kept).rstrip(), count


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Great soup.\nScore: 5", ("Great soup.", 1)),
        ("**Rating:** 4.5/5 for the hotel.", (" for the hotel.", 1)),
        ("Our rating: 5 out of 5", ("", 1)),
        ("A 10/10 film, 5 stars.", ("A  film, .", 2)),
        ("five stars\nwould buy", ("would buy", 1)),
        ("★★★★★ Loved it", (" Loved it", 1)),
        ("ſcore: 5", ("", 1)),  # IGNORECASE folds the long s
        ("Rated 9 out of 10 by readers", (" by readers", 1)),
    ],
)
def test_rating_claims_are_removed(text, expected):
    assert mask_ratings(text) == expected
    assert plain_mask(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "Add 1/2 cup of milk.",
        "Posted 5/10/2020.",
        "This is step 5 of 10.",
        "They won with a final score of 98.",
        "See https://example.org/a/5 for more.",
        "Take three out of the box.",
        "",
    ],
)
def test_other_fractions_and_numbers_are_kept(text):
    assert mask_ratings(text) == (text, 0)


def _web_texts() -> list[str]:
    data = shared_file("data/web")
    with open(data / "c4_demo.jsonl", encoding="utf-8") as fh:
        texts = [json.loads(line)["text"] for line in fh]
    with gzip.open(data / "dolma_cc_main_2019_30.jsonl.gz", "rt", encoding="utf-8") as fh:
        texts += [json.loads(line)["text"] for line in itertools.islice(fh, 2000)]
    return texts


def test_fast_path_masks_real_web_text_as_the_plain_patterns_do():
    texts = _web_texts()
    masked = [mask_ratings.__wrapped__(t) for t in texts]
    assert masked == [plain_mask(t) for t in texts]
    assert sum(count for _, count in masked) > 0  # real pages do carry rating claims


PIECES = [
    "Score: 5", "score is 7", "RATING = 4.5/5", "rated 9 out of 10", "grade: <4>", "verdict 3",
    "10/10", "4.5 / 5", "5 out of 5", "3 OUT  OF 10", "100/100", "1/2", "5/10/2020", "/5",
    "of 10", "out", "of", "five stars", "2-star", "One Star", "★★", "⭐", "☆☆☆", "ſtars",
    "ſcore: 2", "ratıng: 4", "İ", "K", "our", "overall", "**", "__", "[", "]", "(5)", "<",
    "5", "10", "x", "cup", "step", ",", ".", ":", " ", " ", "\t", "\n", "\n", "-", "stars",
]  # fmt: skip


def test_fast_path_masks_generated_edge_cases_as_the_plain_patterns_do():
    rng = random.Random(7)
    for _ in range(20000):
        text = "".join(rng.choice(PIECES) for _ in range(rng.randint(1, 12)))
        assert mask_ratings.__wrapped__(text) == plain_mask(text), text
