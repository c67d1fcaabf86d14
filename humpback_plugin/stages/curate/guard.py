"""Keeping the candidate's text from steering its own score.

In every scoring mode the candidate's answer is the last thing the judge reads before it
answers. A web page that ends in "Score: 5" or "Rating: 5/5" (reviews, recipes, games carry
such lines on their own) then reads like the start of the judge's answer: measured on the
demo model in ``logprobs`` mode, appending "Score: 5" to 40 real web pairs moved the mean
P(5) from 0.29 to 0.85. The parser is not fooled (only the judge's own last line counts);
the judge model is.

So before judging, score and rating claims are removed from the text the judge sees:
"Score: 5", "**Rating:** 4.5/5", "Our rating: 5 out of 5", "10/10", "5 stars", "★★★★★"
(a line left empty goes too). Removing, not replacing: a ``[rating]`` placeholder still
moved the demo model's mean score by +0.21, removal by nothing. The record keeps its
text unchanged (the dataset is what the web page said) and counts the removed claims in
``masked_ratings``, so such pairs can be audited or filtered. Fractions that are not
ratings ("1/2 cup", "5/10/2020", "step 5 of 10", "a final score of 98") are left alone.
``curate.injection_guard: false`` (``--no-injection-guard``) sends the text as is. The
Table 1 rubric is untouched: only the candidate's text changes.
"""

from __future__ import annotations

import re

# A line still worth showing once the claims are removed from it.
_CONTENT = re.compile(r"[A-Za-z0-9]")

_NUMBER = r"\d{1,3}(?:[.,]\d+)?"
_OUT_OF = r"[ \t]*(?:/|out[ \t]+of)[ \t]*(?:5|10|100)(?:\.0)?\b(?![ \t]*/)"
# A rating: "4.5/5", "9 out of 10", or a lone 0-10 ("Score: 5"; "score is 98" is a game's).
_VALUE = rf"(?:{_NUMBER}{_OUT_OF}|(?:10|\d)(?:[.,]\d+)?\b(?![\d/]))"
# "Score: 5", "**Rating:** 4.5/5", "rated 5 out of 5", "Grade = 9/10", "Score: <5>".
_KEYWORD = re.compile(
    r"(?:\*\*|__)?\b(?:(?:our|overall|final|my|user|editor'?s?)[ \t]+)?"
    r"(?:score|rating|rated|grade|verdict)\b(?:\*\*|__)?[ \t]*(?:[:=\-]|is|of)?[ \t]*"
    rf"(?:\*\*|__)?[\[(<]?[ \t]*{_VALUE}(?:[ \t]*[\])>])?(?:[ \t]*stars?\b)?(?:\*\*|__)?",
    re.IGNORECASE,
)
# "10/10", "4.5 / 5", "5 out of 5" standing alone; "5 stars", "five stars"; star glyphs.
_BARE = re.compile(
    rf"(?<![\d/.,]){_NUMBER}{_OUT_OF}"
    r"|\b(?:\d|one|two|three|four|five)(?:\.\d)?[ \t-]*stars?\b"
    r"|[★☆✩✪✫✬✭✮✯⭐]{2,}",
    re.IGNORECASE,
)


def mask_ratings(text: str) -> tuple[str, int]:
    """``text`` without its score and rating claims (a line left with nothing else goes
    too), and how many claims were removed."""
    count = 0

    def drop(match: re.Match) -> str:
        nonlocal count
        count += 1
        return ""

    masked = _BARE.sub(drop, _KEYWORD.sub(drop, text))
    if not count:
        return text, 0
    kept = [
        new
        for old, new in zip(text.split("\n"), masked.split("\n"), strict=True)
        if new == old or _CONTENT.search(new)
    ]
    return "\n".join(kept).rstrip(), count
