"""The paper's segment cleaning heuristics, one plugin each.

Each factory takes its options as keyword arguments and returns ``check(segment)``:
``None`` keeps the segment, a short string is the rejection reason. Sources: paper-facts
section 3 (length 600-3,000 characters; repetitive sentences by n-gram Jaccard
similarity; empty or all-uppercase headers; capitalised share of the header; navigation
headers; deduplication). Their default order is ``DEFAULT_SEGMENT_FILTERS`` in
:mod:`humpback_plugin.core.config`: cheap checks first, exact dedup before the language
check (a hash is cheaper than language ID), MinHash last so only segments that passed
everything else enter its index (the one structure that grows with the corpus).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable
from itertools import combinations
from typing import Any

from humpback_plugin.core.config import SEGMENT_MAX_CHARS, SEGMENT_MIN_CHARS
from humpback_plugin.core.records import Segment
from humpback_plugin.stages.corpus.nav_labels import (
    NAV_LABELS,
    NAV_PATTERNS,
    NAV_WORDS,
    SECTION_LABELS,
    normalise_header,
)

Check = Callable[[Segment], "str | None"]


def length(min_chars: int = SEGMENT_MIN_CHARS, max_chars: int = SEGMENT_MAX_CHARS) -> Check:
    """Keep segments whose text is ``min_chars``-``max_chars`` characters (paper: 600-3,000)."""

    def check(segment: Segment) -> str | None:
        n = len(segment.text)
        if n < min_chars:
            return "too_short"
        if n > max_chars:
            return "too_long"
        return None

    return check


def header_empty_or_upper(
    require_header: bool = False, min_letters: int = 6, max_words: int | None = 4
) -> Check:
    """Drop segments whose header is empty or all upper case ("SHARE THIS", "TRENDING").

    An all-uppercase header of fewer than ``min_letters`` letters is an acronym, not
    shouting, and is kept ("GPU", "TL;DR", "FAQ"); so is one of more than ``max_words``
    words, a title set in capitals ("HOW TO USE A WATER BATH CANNER": on the labelled
    headers of the shared pages every all-uppercase header of five or more words was a
    content title). ``max_words=None`` rejects every all-uppercase header, as the paper's
    rule reads. Plain-text segments without any header
    (``header`` is None: paragraph groups of WET, JSONL or text) are kept unless
    ``require_header`` is true.
    """

    def check(segment: Segment) -> str | None:
        header = segment.header
        if header is None:
            return "no_header" if require_header else None
        if not header.strip() or not any(c.isalnum() for c in header):
            return "header_empty"
        if (
            header.isupper()
            and sum(c.isalpha() for c in header) >= min_letters
            and (max_words is None or len(header.split()) <= max_words)
        ):
            return "header_upper"
        return None

    return check


def header_caps_ratio(max_ratio: float = 0.5, min_letters: int = 6) -> Check:
    """Drop shouty headers: more than ``max_ratio`` of the header's letters are capitals
    that do not start a word ("NEWS Sports WEATHER": 9 of 17). Word-initial capitals and
    words of up to three letters are not counted, so Title Case and acronyms among
    ordinary words pass ("NASA and the ESA": 3 of 13); headers with fewer than
    ``min_letters`` letters are not judged ("FAQ")."""

    def check(segment: Segment) -> str | None:
        if (segment.header or "").isupper():
            return None  # all capitals: header_empty_or_upper's call
        letters = caps = 0
        for word in _WORDS.findall(segment.header or ""):
            alpha = [c for c in word if c.isalpha()]
            letters += len(alpha)
            if len(alpha) > 3:  # "VW", "ID", "ESA": acronyms, not shouting
                caps += sum(c.isupper() for c in alpha[1:])
        if letters < min_letters:
            return None
        return "header_caps" if caps / letters > max_ratio else None

    return check


def nav_header(
    labels: Iterable[str] | None = None,
    extra_labels: Iterable[str] = (),
    patterns: Iterable[str] | None = None,
    extra_patterns: Iterable[str] = (),
    max_words: int = 20,
    max_vocabulary_words: int = 4,
) -> Check:
    """Drop navigation and advert headers: a header that *is* a navigation label
    (built-in :data:`~.nav_labels.NAV_LABELS`, e.g. "Related Articles", "0 Comments",
    "Advertisement"; ``extra_labels`` adds to it) or has a label's shape (built-in
    :data:`~.nav_labels.NAV_PATTERNS`, e.g. "More from <author>", "Follow <site> online";
    ``extra_patterns`` adds regular expressions), compared after
    :func:`~.nav_labels.normalise_header`. Words inside a title never count: "How Comments
    Work in Python" and "How to Sign Up for Medicare" are kept. Headers of more than
    ``max_words`` words are titles."""
    wanted = set(
        NAV_LABELS | SECTION_LABELS if labels is None else (normalise_header(x) for x in labels)
    )
    wanted |= {normalise_header(x) for x in extra_labels}
    shapes = list(NAV_PATTERNS) if patterns is None else [re.compile(p) for p in patterns]
    shapes += [re.compile(p) for p in extra_patterns]

    def check(segment: Segment) -> str | None:
        header = normalise_header(segment.header or "")
        if not header or len(header.split()) > max_words:
            return None
        if header in wanted or any(shape.search(header) for shape in shapes):
            return "nav_header"
        words = header.split()
        if labels is None and len(words) <= max_vocabulary_words and set(words) <= NAV_WORDS:
            return "nav_header"
        return None

    return check


_SENTENCES = re.compile(r"(?<=[.!?])\s+|\n+")
_WORDS = re.compile(r"\w+")


def repetitive(
    ngram: int = 3, threshold: float = 0.8, min_words: int = 4, max_pairs: int = 0
) -> Check:
    """Drop segments with repeated sentences: word ``ngram``-gram Jaccard similarity of
    each pair of sentences (with at least ``min_words`` words); more than ``max_pairs``
    pairs at or above ``threshold`` rejects the segment."""

    def grams(sentence: str) -> frozenset[tuple[str, ...]] | None:
        words = _WORDS.findall(sentence.lower())
        if len(words) < min_words:
            return None
        if len(words) < ngram:
            return frozenset([tuple(words)])
        return frozenset(tuple(words[i : i + ngram]) for i in range(len(words) - ngram + 1))

    def check(segment: Segment) -> str | None:
        sets = [g for s in _SENTENCES.split(segment.text) if (g := grams(s))]
        similar = 0
        for a, b in combinations(sets[:300], 2):
            if len(a & b) >= threshold * len(a | b):
                similar += 1
                if similar > max_pairs:
                    return "repetitive"
        return None

    return check


def _normalised(text: str) -> bytes:
    return " ".join(text.lower().split()).encode("utf-8")


def exact_dedup(normalize: bool = True) -> Check:
    """Drop a segment whose text (lower-cased, whitespace collapsed) was seen before.
    Keeps a 12-byte digest per kept text in memory."""
    seen: set[bytes] = set()

    def check(segment: Segment) -> str | None:
        data = _normalised(segment.text) if normalize else segment.text.encode("utf-8")
        digest = hashlib.blake2b(data, digest_size=12).digest()
        if digest in seen:
            return "duplicate"
        seen.add(digest)
        return None

    return check


def minhash(threshold: float = 0.8, num_perm: int = 128, shingle: int = 5) -> Check:
    """Drop near-duplicates: MinHash of word ``shingle``-grams in a datasketch LSH index;
    a segment whose estimated Jaccard similarity to a kept one is >= ``threshold`` goes.

    The signature depends on the segment alone, so ``check.prepare`` computes it in the
    worker processes; the index lookup, which depends on every segment kept before, runs
    in the main process."""
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    # Building the permutations is most of MinHash()'s cost: do it once per run.
    template = MinHash(num_perm=num_perm, scheme="affine32")
    permutations = template.permutations
    key = f"minhash/{num_perm}/{shingle}"
    counter = 0

    def signature(segment: Segment) -> Any:
        words = _WORDS.findall(segment.text.lower())
        n = min(shingle, max(len(words), 1))
        shingles = {" ".join(words[i : i + n]) for i in range(max(len(words) - n + 1, 1))}
        mh = MinHash(num_perm=num_perm, permutations=permutations, scheme="affine32")
        mh.update_batch([s.encode("utf-8") for s in shingles])
        return mh.hashvalues

    def prepare(segment: Segment) -> None:
        segment._prepared[key] = signature(segment)

    def check(segment: Segment) -> str | None:
        nonlocal counter
        values = segment._prepared.get(key)
        if values is None:
            values = signature(segment)
        mh = MinHash(permutations=permutations, hashvalues=values, scheme="affine32")
        if lsh.query(mh):
            return "near_duplicate"
        counter += 1
        lsh.insert(str(counter), mh)
        return None

    check.prepare = prepare  # type: ignore[attr-defined]
    return check


_IDENTIFIER: Any = None


def _identifier() -> Any:
    global _IDENTIFIER
    if _IDENTIFIER is None:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        _IDENTIFIER = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    return _IDENTIFIER


def english(
    languages: Iterable[str] | str = ("en",), min_prob: float = 0.5, max_chars: int = 1000
) -> Check:
    """Keep segments in ``languages`` (default English, as the paper's ClueWeb subset):
    py3langid on the header and the first ``max_chars`` characters, with a normalised
    probability of at least ``min_prob``. The model ships inside the PyPI package."""
    wanted = {languages} if isinstance(languages, str) else set(languages)
    identifier = _identifier()

    def check(segment: Segment) -> str | None:
        sample = f"{segment.header or ''}\n{segment.text[:max_chars]}"
        lang, prob = identifier.classify(sample)
        if lang not in wanted or prob < min_prob:
            return "not_english" if wanted == {"en"} else "wrong_language"
        return None

    return check


# These decide on the segment alone, so they run in the worker processes; the dedup
# filters keep an index of what was kept and run in the main process, in input order.
for _factory in (length, header_empty_or_upper, header_caps_ratio, nav_header, repetitive, english):
    _factory.stateless = True  # type: ignore[attr-defined]

BUILTIN_FILTERS: dict[str, Callable[..., Check]] = {
    "length": length,
    "header_empty_or_upper": header_empty_or_upper,
    "header_caps_ratio": header_caps_ratio,
    "nav_header": nav_header,
    "repetitive": repetitive,
    "exact_dedup": exact_dedup,
    "english": english,
    "minhash": minhash,
}
