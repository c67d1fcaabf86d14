"""One judge verdict: which of two answers, shown as A and B, is better.

Two modes (``compare.mode``):

* ``logprobs`` (default, AlpacaEval's weighted style): one token constrained to ``A`` or
  ``B`` with vLLM's ``structured_outputs: {"choice": ["A", "B"]}``, and the probabilities of
  both read from ``top_logprobs`` at that token (renormalised over the two; vLLM returns
  the logprobs after the constraint's mask, so they carry nearly all the mass). When no
  probability comes back, the sampled letter is used (``parsed``); when the server refuses
  the constraint or answers something else, a short free answer is asked and parsed
  (``recovered``).
* ``parsed``: a short free answer parsed for the letter (``ok``); when it holds none, the
  judge is asked again under the ``A``/``B`` constraint (``recovered``).

A verdict nothing could be read from is ``failed``, kept with the judge's text and counted:
never silently dropped, never guessed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from humpback_plugin.core.client import Generation, OpenAIClient, RequestRejected
from humpback_plugin.core.config import EvalCompareConfig
from humpback_plugin.core.prompts import PromptTemplate
from humpback_plugin.core.runner import body_for_endpoint, send

CHOICES = ("A", "B")
OK, PARSED, RECOVERED, FAILED = "ok", "parsed", "recovered", "failed"

_MARKUP = re.compile(r"[*_`#>|~\"']")
# "A", "(B)", "[A].", "Answer B", "Better answer: A", "Output (b)", "B is better".
_ONLY = re.compile(r"^\s*[\(\[]?\s*([AB])\s*[\)\]]?\s*[.!:]?\s*$")
_NAMED = re.compile(
    r"\b(?:better answer|best answer|answer|output|response|winner|choice|option|prefer(?:red)?)"
    r"\s*(?:is|was|would be|:|=|-)?\s*[\(\[]?\s*([ABab])\b(?![\w'])",
    re.IGNORECASE,
)
_STANDALONE = re.compile(r"(?<![\w'])([AB])(?![\w'])(?!\s+[a-z])")


def parse_choice(text: str) -> str | None:
    """The letter a free answer picks, or None when it picks none or both.

    A reply of just the letter wins; then a letter named as the answer ("Answer B is
    better", "Better answer: A", the last such mention counts); then a letter standing
    alone, when only one of the two does ("A" as an article, "A good answer...", is not
    a pick).
    """
    cleaned = _MARKUP.sub("", text or "").strip()
    if not cleaned:
        return None
    only = _ONLY.match(cleaned)
    if only:
        return only.group(1)
    named = _NAMED.findall(cleaned)
    if named:
        return named[-1].upper()
    standalone = set(_STANDALONE.findall(cleaned))
    return standalone.pop() if len(standalone) == 1 else None


def choice_probabilities(logprobs: Any) -> tuple[dict[str, float], float]:
    """P(A), P(B) at the first generated token, renormalised over the two, and the mass
    they had before. Handles the chat (``content[0].top_logprobs``) and completions
    (``top_logprobs[0]``) shapes; ({}, 0.0) when neither letter is there."""
    top: list[tuple[str, float]] = []
    if isinstance(logprobs, dict) and logprobs.get("content"):
        first = logprobs["content"][0]
        top = [(t["token"], t["logprob"]) for t in first.get("top_logprobs") or []]
        if not top:
            top = [(first["token"], first["logprob"])]
    elif isinstance(logprobs, dict) and logprobs.get("top_logprobs"):
        top = list((logprobs["top_logprobs"][0] or {}).items())
    mass = dict.fromkeys(CHOICES, 0.0)
    for token, logprob in top:
        letter = str(token).strip()
        if letter in mass and logprob is not None and logprob > -math.inf:
            mass[letter] += math.exp(logprob)
    total = sum(mass.values())
    if total <= 0:
        return {}, 0.0
    return {letter: p / total for letter, p in mass.items()}, total


@dataclass
class JudgeContext:
    """The judge's prompt and settings."""

    template: PromptTemplate
    settings: EvalCompareConfig

    def body(self, instruction: str, first: str, second: str) -> dict[str, Any]:
        content = self.template.fill(instruction=instruction, output_a=first, output_b=second)
        return body_for_endpoint(
            {"messages": [{"role": "user", "content": content}]}, self.settings.endpoint
        )

    def constrained_params(self, logprobs: bool) -> dict[str, Any]:
        params: dict[str, Any] = {
            "structured_outputs": {"choice": list(CHOICES)},
            "max_tokens": 1,
            "temperature": self.settings.temperature,
        }
        if logprobs:
            if self.settings.endpoint == "chat":
                params.update(logprobs=True, top_logprobs=self.settings.top_logprobs)
            else:
                params["logprobs"] = self.settings.top_logprobs
        return params

    def free_params(self) -> dict[str, Any]:
        return {"max_tokens": self.settings.max_tokens, "temperature": self.settings.temperature}


class _Trace:
    """What one order's requests did: texts, token use, refusals."""

    def __init__(self) -> None:
        self.requests = 0
        self.usage: dict[str, int] = {}
        self.texts: list[str] = []
        self.notes: list[str] = []

    def add(self, gen: Generation) -> Generation:
        self.requests += 1
        self.texts.append(gen.text)
        for k, v in gen.usage.items():
            self.usage[k] = self.usage.get(k, 0) + v
        return gen

    def refused(self, exc: RequestRejected) -> None:
        self.requests += 1
        self.notes.append(f"HTTP {exc.status_code}: {exc.message[:300]}")


async def _ask(
    client: OpenAIClient, body: dict[str, Any], params: dict[str, Any], trace: _Trace
) -> Generation | None:
    """One request; a refusal (e.g. a server without structured outputs) is noted."""
    endpoint = "chat" if "messages" in body else "completions"
    try:
        return trace.add(await send(client, endpoint, body, **params))
    except RequestRejected as exc:
        trace.refused(exc)
        return None


async def judge_order(
    client: OpenAIClient, context: JudgeContext, instruction: str, first: str, second: str
) -> dict[str, Any]:
    """The judge's verdict on (A = ``first``, B = ``second``): ``p_first`` is P(A better)
    (1.0 or 0.0 when only a letter could be read, None when nothing could), with the
    status, the judge's texts and the token use."""
    body = context.body(instruction, first, second)
    trace = _Trace()
    p_first: float | None = None
    probabilities: dict[str, float] | None = None
    status = FAILED
    if context.settings.mode == "logprobs":
        gen = await _ask(client, body, context.constrained_params(logprobs=True), trace)
        if gen is not None:
            probs, _mass = choice_probabilities(gen.choices[0].logprobs if gen.choices else None)
            if probs:
                p_first, probabilities, status = probs["A"], probs, OK
            elif (letter := parse_choice(gen.text)) is not None:
                p_first, status = float(letter == "A"), PARSED
        if p_first is None:
            gen = await _ask(client, body, context.free_params(), trace)
            if gen is not None and (letter := parse_choice(gen.text)) is not None:
                p_first, status = float(letter == "A"), RECOVERED
    else:
        gen = await _ask(client, body, context.free_params(), trace)
        if gen is not None and (letter := parse_choice(gen.text)) is not None:
            p_first, status = float(letter == "A"), OK
        else:
            gen = await _ask(client, body, context.constrained_params(logprobs=False), trace)
            if gen is not None and (letter := parse_choice(gen.text)) is not None:
                p_first, status = float(letter == "A"), RECOVERED
    return {
        "p_first": p_first,
        "probabilities": {k: round(v, 6) for k, v in probabilities.items()}
        if probabilities
        else None,
        "status": status,
        "judge_texts": trace.texts,
        "notes": trace.notes,
        "requests": trace.requests,
        "usage": trace.usage,
    }
