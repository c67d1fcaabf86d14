"""How clean kept segments are, against hand-written main text: the "in-gold share".

For each kept segment, take its lines longer than :data:`MIN_LINE_CHARS` characters; a line
is *in gold* when its normalized first :data:`PREFIX_CHARS` characters (lower case, every
run of non-word characters one space) occur in the normalized ``articleBody`` of the page
the segment came from. The in-gold share is the characters of in-gold lines over the
characters of all such lines, summed over every kept segment. Short lines (bylines, list
bullets, headers) are left out: they match anywhere and say little.

The benchmark (``bench/bench_extraction.py``) and the tests use this one implementation,
on the 120 pages of the shared article-extraction benchmark and their ground truth (a
JSON object ``{page_key: {"articleBody": ..., "url": ...}}``, the key being the page's
file name without ``.html.gz``). :func:`held_out` fixes, once and before any tuning, the
pages no one tunes on: a quarter of them, chosen by a hash of the key.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

MIN_LINE_CHARS = 30
PREFIX_CHARS = 80
_NON_WORD = re.compile(r"\W+")


def normalize(text: str) -> str:
    """Lower case, every run of non-word characters one space, stripped."""
    return _NON_WORD.sub(" ", text.lower()).strip()


def page_key(source: str) -> str:
    """The ground-truth key of a page file: its name without ``.html[.gz]``."""
    name = os.path.basename(source)
    for suffix in (".gz", ".html", ".htm"):
        name = name.removesuffix(suffix)
    return name


def held_out(key: str) -> bool:
    """Whether a page belongs to the held-out quarter (never used for tuning).

    Fixed before any extractor was tuned: the first byte of the key's SHA-256 is a
    multiple of 4 (28 of the 120 shared pages).
    """
    return hashlib.sha256(key.encode("utf-8")).digest()[0] % 4 == 0


def load_ground_truth(path: str | os.PathLike) -> dict[str, str]:
    """``{page_key: normalized articleBody}`` from the ground-truth JSON."""
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    return {key: normalize(row.get("articleBody") or "") for key, row in data.items()}


def line_scores(text: str, gold: str) -> tuple[int, int]:
    """(characters in gold, characters judged) over the lines of one segment's text."""
    in_gold = judged = 0
    for line in text.splitlines():
        line = line.strip()
        if len(line) <= MIN_LINE_CHARS:
            continue
        judged += len(line)
        prefix = normalize(line)[:PREFIX_CHARS].strip()
        if prefix and prefix in gold:
            in_gold += len(line)
    return in_gold, judged


@dataclass
class Quality:
    """In-gold share and counts over a set of kept segments."""

    segments: int = 0
    pages: set[str] = field(default_factory=set)
    in_gold_chars: int = 0
    judged_chars: int = 0

    @property
    def in_gold_share(self) -> float:
        return self.in_gold_chars / self.judged_chars if self.judged_chars else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "in_gold_share": round(self.in_gold_share, 4),
            "kept_segments": self.segments,
            "pages_with_segments": len(self.pages),
        }


def evaluate(
    segments: Iterable[dict[str, Any]], gold: dict[str, str], only: set[str] | None = None
) -> Quality:
    """The in-gold share of kept segment rows (``text`` and ``source`` fields); ``only``
    restricts it to those page keys. A segment of a page without ground truth is an error:
    the measure would silently shrink."""
    quality = Quality()
    for row in segments:
        key = page_key(row["source"])
        if only is not None and key not in only:
            continue
        if key not in gold:
            raise KeyError(f"no ground truth for page {key!r} ({row['source']})")
        in_gold, judged = line_scores(row["text"], gold[key])
        quality.segments += 1
        quality.pages.add(key)
        quality.in_gold_chars += in_gold
        quality.judged_chars += judged
    return quality
