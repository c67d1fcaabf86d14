"""Cheap filters on generated instructions, run before any judge sees them.

Each built-in is registered on the ``register_instruction_filters`` hook as a factory:
``factory(**options)`` returns ``check(candidate: dict) -> str | None`` where ``None``
keeps the candidate and a string is the rejection reason. ``candidate`` holds at least
``instruction``, ``output`` (the segment text) and ``finish_reason``.

Built-ins (all on by default, in this order, the first reason wins; the order is
``DEFAULT_INSTRUCTION_FILTERS`` in :mod:`humpback_plugin.core.config`):

* ``truncated`` - the backward model hit ``max_tokens`` (``finish_reason == "length"``);
  half an instruction is worse than none.
* ``empty`` - nothing, or no letters, after post-processing.
* ``too_long`` - longer than ``max_chars`` (default 1,500; the paper's augmented
  instructions average 352 +- 134 characters) or longer than the answer itself.
* ``echo`` - the "instruction" copies the segment: most of its word 4-grams occur in the
  segment, or a long stretch of it is contained verbatim.
* ``meta_text`` - talks about the text instead of asking something ("The text above
  describes...", "This passage is an answer to..."). Prefixes such as "Question:" or
  "Here is a question:" are not rejected: ``postprocess_instruction`` strips them first.
* ``refusal`` - the backward model declined ("I'm sorry, but I cannot...").
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

Check = Callable[[dict[str, Any]], "str | None"]

_WORD = re.compile(r"\w+", re.UNICODE)


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def truncated_filter() -> Check:
    def check(candidate: dict[str, Any]) -> str | None:
        return "truncated" if candidate.get("finish_reason") == "length" else None

    return check


def empty_filter(min_chars: int = 3) -> Check:
    def check(candidate: dict[str, Any]) -> str | None:
        text = (candidate.get("instruction") or "").strip()
        if len(text) < min_chars or not re.search(r"[^\W\d_]", text):
            return "empty"
        return None

    return check


def too_long_filter(max_chars: int = 1500, max_ratio: float = 1.0) -> Check:
    def check(candidate: dict[str, Any]) -> str | None:
        text = candidate.get("instruction") or ""
        output = candidate.get("output") or ""
        if len(text) > max_chars or (output and len(text) > max_ratio * len(output)):
            return "too_long"
        return None

    return check


def echo_filter(min_words: int = 8, max_overlap: float = 0.6, n: int = 4) -> Check:
    """Reject instructions whose word n-grams mostly occur in the segment.

    Short instructions (fewer than ``min_words`` words) are allowed to repeat the segment:
    a header turned into a question ("How do I repot an orchid?") is the normal case.
    """

    def check(candidate: dict[str, Any]) -> str | None:
        inst = _words(candidate.get("instruction") or "")
        if len(inst) < min_words:
            return None
        output = (candidate.get("output") or "").lower()
        grams = [inst[i : i + n] for i in range(len(inst) - n + 1)]
        # Cheap bound first: an n-gram can occur in the segment only if each of its words
        # is a substring of it. Most instructions fail this bound, and then the segment
        # (ten times longer) is never tokenised.
        present = {w for w in set(inst) if w in output}
        if sum(all(w in present for w in g) for g in grams) / len(grams) < max_overlap:
            return None
        # Exact: the segment's words joined by single spaces; an n-gram occurs exactly when
        # " w1 ... wn " is a substring (words hold no spaces).
        seg_text = f" {' '.join(_WORD.findall(output))} "
        shared = sum(f" {' '.join(g)} " in seg_text for g in grams)
        return "echo" if shared / len(grams) >= max_overlap else None

    return check


# Talk *about* a text, which a real user instruction never does: the answer is not shown
# to the user, so "the text above" points at nothing.
_META_PATTERNS = [
    r"\b(the|this|given|above|following|provided) (text|passage|excerpt|article|paragraph|"
    r"segment|snippet|document)\b.{0,40}\b(is|was|would be|seems|appears|describes|"
    r"discusses|explains|answers|provides|talks|mentions)\b",
    # "the answer" alone is ordinary ("My teacher said the answer is 42"): only "this
    # answer", "the given response" ... point at a text the user never sees.
    r"\b(this|given|above|following|provided) (answer|response)\b.{0,40}\b(is|was|would be|"
    r"seems|appears|describes|discusses|explains|answers|provides|talks|mentions)\b",
    r"\b(text|passage|answer|response) (above|below)\b",
    # "The most likely question is ..."; not "What is the best question to ask ...?".
    r"^(the |a )?(most likely|best|likely|possible) (question|instruction|prompt)"
    r"( for (this|the) (text|answer|passage))? (is|would be|could be|might be)\b",
    r"\b(would be|is) a (great|good) answer\b",
    r"^(the )?(user|person|author) (should have|might have|may have|would have|probably) "
    r"(asked|written|said)\b",
    r"^(this|the) (question|instruction) (is|would be|could be)\b",
    r"^(possible|likely|candidate) (questions?|instructions?)\b",
]
_META = re.compile("|".join(f"(?:{p})" for p in _META_PATTERNS), re.IGNORECASE)


def meta_text_filter() -> Check:
    def check(candidate: dict[str, Any]) -> str | None:
        return "meta_text" if _META.search(candidate.get("instruction") or "") else None

    return check


_REFUSAL = re.compile(
    r"^\W*(i'?m sorry|i am sorry|sorry,|i apologi[sz]e|i cannot|i can'?t|i can not|"
    r"i'?m (not able|unable)|i am (not able|unable)|"
    # "As an AI, I ..." is a refusal; "As an AI researcher, which GPU ..." is a question.
    r"as an ai( language model| assistant| model)?\s*(,|i\b|i'm\b)|"
    r"unfortunately,? i)",
    re.IGNORECASE,
)


def refusal_filter() -> Check:
    def check(candidate: dict[str, Any]) -> str | None:
        return "refusal" if _REFUSAL.search(candidate.get("instruction") or "") else None

    return check


BUILTIN_FILTERS: dict[str, Callable[..., Check]] = {
    "truncated": truncated_filter,
    "empty": empty_filter,
    "too_long": too_long_filter,
    "echo": echo_filter,
    "meta_text": meta_text_filter,
    "refusal": refusal_filter,
}


def first_rejection(checks: list[tuple[str, Check]], candidate: dict[str, Any]) -> str | None:
    for _name, check in checks:
        reason = check(candidate)
        if reason:
            return reason
    return None
