"""Stub judges of known quality, for the probe and canary tests.

A judge request holds the rubric, then the instruction and the answer. The stub finds the
probe the request is about (by the text the judge reads: with the injection guard on, a
probe's rating claims are already removed) and answers by its label:

* ``perfect``: 5 for a good probe, 1 for a bad one;
* ``inverted``: 1 for a good probe, 5 for a bad one;
* ``always5``: 5 for everything;
* ``random``: a digit drawn from a hash of the text (the same every run);
* ``fooled``: 5 when the text it reads carries a "Score:"/"Rating:"/"10/10" claim, else
  the perfect judge's answer (a judge the candidate's text steers).

Each mode's answer shape is served: ``paper`` (reasoning + "Score: N"), ``constrained``
(one digit) and ``logprobs`` (one digit with a peaked distribution over 1-5). Pairs that
are not probes (the candidates of a curation) get a score from a hash of their text.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable
from typing import Any

from humpback_plugin.stages.curate.guard import mask_ratings
from tests.stub_openai import StubRequest, StubResponse, chat_logprobs, reply

RUBRIC_END = 'write "Score: <rating>" in the last line.\n\n'
CLAIM = re.compile(r"(score|rating)\s*:|\b10/10\b", re.IGNORECASE)
# The probability a logprobs answer puts on its digit; the rest is spread evenly.
PEAK = 0.9


def digest(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


def judged_pair(req: StubRequest) -> str:
    """The instruction and answer as the judge reads them (after the rubric)."""
    content = req.body["messages"][0]["content"] if req.is_chat else req.body["prompt"]
    return content.split(RUBRIC_END, 1)[1].removesuffix("\n")  # the template's last newline


def labels_by_text(probes: list[dict[str, Any]], guard: bool = True) -> dict[str, int]:
    """What the judge reads for each probe -> the probe's label."""
    out = {}
    for p in probes:
        output = mask_ratings(p["output"])[0] if guard else p["output"]
        instruction = mask_ratings(p["instruction"])[0] if guard else p["instruction"]
        out[f"{instruction}\n{output}"] = p["label"]
    return out


def digit_for(quality: str, label: int | None, text: str) -> int:
    if label is None:  # a candidate, not a probe
        return digest(text) % 5 + 1
    if quality == "perfect":
        return 5 if label else 1
    if quality == "inverted":
        return 1 if label else 5
    if quality == "always5":
        return 5
    if quality == "random":
        return digest("random:" + text) % 5 + 1
    if quality == "fooled":
        return 5 if CLAIM.search(text) else (5 if label else 1)
    raise ValueError(quality)


def logprobs_for(digit: int) -> dict[str, float]:
    rest = (1 - PEAK) / 4
    return {str(d): math.log(PEAK if d == digit else rest) for d in range(1, 6)}


def expected_for(digit: int) -> float:
    rest = (1 - PEAK) / 4
    return sum(d * (PEAK if d == digit else rest) for d in range(1, 6))


def stub_judge(
    quality: str, labels: dict[str, int], answers: dict[str, int] | None = None
) -> Callable[[StubRequest], StubResponse]:
    """A handler answering every mode as a judge of ``quality``; records each text's
    digit in ``answers`` when given."""

    def handler(req: StubRequest) -> StubResponse:
        if req.body.get("prompt") == "Hello":
            return reply("hi")
        text = judged_pair(req)
        digit = digit_for(quality, labels.get(text), text)
        if answers is not None:
            answers[text] = digit
        usage = {"prompt_tokens": 400, "completion_tokens": 1}
        if req.body.get("logprobs"):
            return reply(str(digit), logprobs=[chat_logprobs(logprobs_for(digit))], usage=usage)
        if req.body.get("structured_outputs"):
            return reply(str(digit), usage=usage)
        usage = {"prompt_tokens": 400, "completion_tokens": 12}
        return reply(f"The answer is judged by the rubric.\nScore: {digit}", usage=usage)

    return handler
