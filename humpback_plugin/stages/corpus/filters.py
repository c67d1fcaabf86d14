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

Check = Callable[[Segment], "str | None"]


# Contained (as whole words) in a short header: the paper's four examples first, then
# the usual page furniture.
NAV_PHRASES = (
    "advertisement", "advertisements", "advertising", "forum", "forums", "quick link",
    "quick links", "free newsletter", "newsletter", "newsletters", "related articles",
    "related posts", "related stories", "related content", "related links",
    "you may also like", "you might also like", "recommended for you", "read more",
    "more stories", "most popular", "most read", "most viewed", "popular posts",
    "latest news", "latest posts", "recent posts", "recent comments", "comments",
    "leave a comment", "leave a reply", "post a comment", "join the conversation",
    "share this", "follow us", "connect with us", "subscribe", "sign up", "log in",
    "sign in", "create an account", "cookie", "cookies", "privacy policy", "terms of use",
    "terms and conditions", "terms of service", "main menu", "site navigation",
    "breadcrumb", "copyright", "all rights reserved", "sponsored", "partner content",
    "about us", "contact us", "site map", "sitemap", "useful links", "external links",
    "about the author", "author bio", "previous story", "next story", "previous article",
    "next article", "previous post", "next post", "latest galleries", "latest videos",
    "popular videos", "news cloud", "trending now",
)  # fmt: skip

# Whole-header matches only: common words that also start real titles.
NAV_HEADERS = (
    "share", "search", "menu", "navigation", "footer", "related", "recommended", "trending",
    "contact", "register", "login", "signup", "tags", "categories", "archives", "more",
    "follow", "popular", "latest", "advertise", "sponsors", "partners", "social media",
    "skip to content", "more from", "you may like",
)  # fmt: skip


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


def header_empty_or_upper(require_header: bool = False) -> Check:
    """Drop segments whose header is empty or all upper case ("SHARE THIS", "TRENDING").

    Plain-text segments without any header (``header`` is None: paragraph groups of WET,
    JSONL or text) are kept unless ``require_header`` is true.
    """

    def check(segment: Segment) -> str | None:
        header = segment.header
        if header is None:
            return "no_header" if require_header else None
        if not header.strip() or not any(c.isalnum() for c in header):
            return "header_empty"
        if header.isupper():
            return "header_upper"
        return None

    return check


def header_caps_ratio(max_ratio: float = 0.5, min_letters: int = 6) -> Check:
    """Drop headers where more than ``max_ratio`` of the letters are capitals (shouty
    menus like "NEWS Sports WEATHER"). Title Case headers stay well under 0.5; headers
    with fewer than ``min_letters`` letters are not judged ("FAQ", "Q&A")."""

    def check(segment: Segment) -> str | None:
        letters = [c for c in segment.header or "" if c.isalpha()]
        if len(letters) < min_letters:
            return None
        caps = sum(c.isupper() for c in letters)
        return "header_caps" if caps / len(letters) > max_ratio else None

    return check


def nav_header(
    phrases: Iterable[str] | None = None,
    extra_phrases: Iterable[str] = (),
    headers: Iterable[str] | None = None,
    max_words: int = 8,
) -> Check:
    """Drop navigation/advert headers: a header of at most ``max_words`` words containing
    one of ``phrases`` as whole words (built-in :data:`NAV_PHRASES`; ``extra_phrases``
    adds to it), or a header that is exactly one of ``headers`` (built-in
    :data:`NAV_HEADERS`: words such as "share" or "search" that also begin real titles).
    Case-insensitive. Longer headers are titles that merely mention a word like "forum"."""
    words = [p.lower() for p in (NAV_PHRASES if phrases is None else phrases)]
    words += [p.lower() for p in extra_phrases]
    exact = {h.lower() for h in (NAV_HEADERS if headers is None else headers)}
    pattern = None
    if words:
        alternatives = "|".join(re.escape(w) for w in sorted(set(words), key=len, reverse=True))
        pattern = re.compile(rf"\b(?:{alternatives})\b")

    def check(segment: Segment) -> str | None:
        header = (segment.header or "").lower()
        if not header or len(header.split()) > max_words:
            return None
        if " ".join(_WORDS.findall(header)) in exact:
            return "nav_header"
        return "nav_header" if pattern and pattern.search(header) else None

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
