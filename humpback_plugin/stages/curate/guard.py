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

import functools
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
# "10/10", "4.5 / 5", "5 out of 5" standing alone (written digit first, its look-behind
# after it, so that the regex engine scans for digits: 8x faster on web text).
_OUT_OF_CLAIM = rf"\d(?<![\d/.,]\d)\d{{0,2}}(?:[.,]\d+)?{_OUT_OF}"
# "5 stars", "five stars".
_STARS = r"\b(?:\d|one|two|three|four|five)(?:\.\d)?[ \t-]*stars?\b"
# Star glyphs.
_GLYPHS = r"[★☆✩✪✫✬✭✮✯⭐]{2,}"
_BARE = re.compile(f"{_OUT_OF_CLAIM}|{_STARS}|{_GLYPHS}", re.IGNORECASE)
_BARE_PARTS = {
    "out_of": re.compile(_OUT_OF_CLAIM, re.IGNORECASE),
    "stars": re.compile(_STARS, re.IGNORECASE),
}
# A star glyph, or one of the four non-ASCII letters IGNORECASE folds to ASCII ones: the
# cheap tests below do not apply, every pattern is searched.
_ALWAYS = re.compile("[\u0130\u0131\u017f\u212a★☆✩✪✫✬✭✮✯⭐]")


def _patterns(text: str) -> tuple[re.Pattern | None, re.Pattern | None]:
    """The patterns that may match in ``text``, by cheap substring tests of what each
    cannot match without (C speed, on the lowercased text): _KEYWORD needs a keyword; an
    "out of" claim a 5 or 10 with "/" or "out" and "of"; stars "star". Where only one part
    of _BARE may match, that part alone is searched (same matches, no alternation)."""
    # Every character _ALWAYS looks for is non-ASCII: most web text skips the search.
    if not text.isascii() and _ALWAYS.search(text):
        return _KEYWORD, _BARE
    low = text.lower()
    may_keyword = (
        "score" in low or "rating" in low or "rated" in low or "grade" in low or "verdict" in low
    )
    keyword = _KEYWORD if may_keyword else None
    may = {
        "out_of": ("5" in low or "10" in low) and ("/" in low or ("out" in low and "of" in low)),
        "stars": "star" in low,
    }
    parts = [_BARE_PARTS[name] for name, ok in may.items() if ok]
    return keyword, (parts[0] if len(parts) == 1 else _BARE if parts else None)


@functools.lru_cache(maxsize=4096)  # each pair's text is masked for its request and record
def mask_ratings(text: str) -> tuple[str, int]:
    """``text`` without its score and rating claims (a line left with nothing else goes
    too), and how many claims were removed.

    Neither pattern crosses a newline, so only the lines that may hold a claim are
    searched: most pages have none, and in the rest most lines are skipped."""
    if _patterns(text) == (None, None):
        return text, 0
    count = 0

    def drop(match: re.Match) -> str:
        nonlocal count
        count += 1
        return ""

    kept = []
    for old in text.split("\n"):
        new = old
        keyword, _ = _patterns(new)
        if keyword:
            new = keyword.sub(drop, new)
        _, bare = _patterns(new)  # what the keyword claims left
        if bare:
            new = bare.sub(drop, new)
        if new == old or _CONTENT.search(new):
            kept.append(new)
    if not count:
        return text, 0
    return "\n".join(kept).rstrip(), count
