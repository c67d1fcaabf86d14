"""How a judge's rating of one pair is obtained and read, and how the curated set is picked.

Three scoring modes (registered on ``register_scorers``; pick with ``--mode``):

* ``paper`` - as in the paper: the judge writes a brief reasoning and ``Score: N`` on the
  last line. :func:`parse_score` reads only the judge's last line. When it holds no valid
  1-5 score (missing, out of range like ``10502``), or the line is a copy of a ``Score:``
  line found in the candidate itself (the judge echoed the pair), the judge's answer is
  continued with vLLM's ``structured_outputs: {"regex": "Score: [1-5]"}`` so it must end
  with a valid score; such pairs are marked ``score_status: recovered``, separately from
  low scores, and no pair is lost silently.
* ``constrained`` - one token, constrained with ``structured_outputs: {"choice": [1..5]}``
  after an assistant prefill ``Score: `` (``continue_final_message``). About 1 generated
  token per pair instead of hundreds.
* ``logprobs`` - the same single constrained token with ``top_logprobs``: the probability
  of each score, renormalised over 1-5, the expected score and the argmax. vLLM 0.32
  returns *raw* logprobs by default (``--logprobs-mode raw_logprobs``), computed from the
  logits after the structured-output bitmask is applied, so the digits carry (nearly) all
  of the mass; ``logprob_mass`` records what the top logprobs summed to before the
  renormalisation, so a server configured otherwise is visible in the data.

In every mode the judge reads the pair without its score and rating claims ("Score: 5",
"Rating: 5/5", "10/10"): see :mod:`.guard` (``injection_guard``).

The old ``guided_*`` request fields are never sent: current vLLM ignores them silently.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from typing import Any

from humpback_plugin.core.client import Generation, OpenAIClient, RequestRejected
from humpback_plugin.core.config import CurateConfig
from humpback_plugin.core.prompts import PromptTemplate, fill_template
from humpback_plugin.core.runner import body_for_endpoint, send
from humpback_plugin.stages.curate.guard import mask_ratings

SCORES = ("1", "2", "3", "4", "5")
SCORE_REGEX = "Score: [1-5]"
PREFILL = "Score: "

# "Score: 4", "**Score:** 4", "score = 4/5", "Score: <4>", "Rating: 4 out of 5". The scale,
# when given, is captured: "Score: 5/10" is five out of ten, not the rubric's 5.
_SCORE = re.compile(
    r"\b(?:score|rating)\b\s*(?:[:=]|is)?\s*[\[(<]?\s*(\d+(?:\.\d+)?)\s*[\])>]?"
    r"(?:\s*(?:/|out\s+of)\s*(\d+(?:\.\d+)?))?",
    re.IGNORECASE,
)
# A last line that is only a number: "4", "4/5", "4 out of 5", "4."
_BARE = re.compile(
    r"^\s*(\d+(?:\.\d+)?)\s*(?:(?:/|out\s+of)\s*(\d+(?:\.\d+)?))?\s*\.?\s*$", re.IGNORECASE
)
_MARKUP_CHARS = "*_`#>|~"
_WORD_CHAR = re.compile(r"[A-Za-z0-9]")
_MARKUP = re.compile(f"[{re.escape(_MARKUP_CHARS)}]")


def _as_score(number: str, scale: str | None = None) -> int | None:
    """A 1-5 integer score, or None (out of range, fractional, or on another scale)."""
    if scale is not None and float(scale) != 5:
        return None
    value = float(number)
    if value.is_integer() and 1 <= value <= 5:
        return int(value)
    return None


def last_line(text: str) -> str:
    """The judge's last line with content (lines of only markup such as ``---`` skipped)."""
    for line in reversed(text.strip().splitlines()):
        if _WORD_CHAR.search(line):
            return line.strip()
    return ""


def parse_score(text: str) -> int | None:
    """The 1-5 score on the judge's last line, or ``None``.

    Several scores on that line: the last valid one wins. A number outside 1-5 is not a
    score. ``Score:`` lines earlier in the text are ignored: the rubric asks for the score
    on the last line, and earlier ones are often quotes or drafts.
    """
    line = _MARKUP.sub("", last_line(text)).strip()
    if not line:
        return None
    found = [s for m in _SCORE.finditer(line) if (s := _as_score(*m.groups())) is not None]
    if found:
        return found[-1]
    bare = _BARE.match(line)
    return _as_score(*bare.groups()) if bare else None


def echoes_candidate(judge_text: str, candidate: dict[str, Any]) -> bool:
    """True when the judge's last line is a score line copied from the candidate itself."""
    line = _MARKUP.sub("", last_line(judge_text)).strip().lower()
    if not line:
        return False
    for field in ("instruction", "output"):
        own = (candidate.get(field) or "").lower()
        if any(mark in own for mark in _MARKUP_CHARS):
            own = _MARKUP.sub("", own)
        # Plain substring tests first: most candidates say neither word, and the regex
        # over a whole segment was the scorer's largest cost.
        if ("score" in own or "rating" in own) and line in own and _SCORE.search(own):
            return True
    return False


def default_request(instruction: str, output: str, template: str) -> dict[str, Any]:
    """Rubric, then instruction and answer, as one user turn (the rubric is a shared prefix
    that vLLM's prefix cache computes once)."""
    return {
        "messages": [
            {
                "role": "user",
                "content": fill_template(template, instruction=instruction, output=output),
            }
        ]
    }


# --- scorers -----------------------------------------------------------------------------


@dataclasses.dataclass
class ScoringContext:
    """What every scorer needs besides the client and the pair: the template, the judge's
    decoding settings (a :class:`~humpback_plugin.core.config.CurateConfig`), and the
    ``curation_request`` / ``parse_curation_score`` hooks' answers as callables."""

    template: PromptTemplate
    settings: CurateConfig
    build_request: Callable[[str, str, str], dict[str, Any]] = default_request
    parse: Callable[[str], int | None] = parse_score

    @property
    def endpoint(self) -> str:
        return self.settings.endpoint

    def judged(self, candidate: dict[str, Any]) -> dict[str, str]:
        """The instruction and answer as the judge reads them: with ``injection_guard``,
        without their score and rating claims (see :mod:`.guard`)."""
        fields = {"instruction": candidate["instruction"], "output": candidate["output"]}
        if self.settings.injection_guard:
            fields = {name: mask_ratings(text)[0] for name, text in fields.items()}
        return fields

    def request(self, candidate: dict[str, Any]) -> dict[str, Any]:
        judged = self.judged(candidate)
        return self.build_request(judged["instruction"], judged["output"], self.template.text)

    def base_params(self) -> dict[str, Any]:
        params: dict[str, Any] = {"temperature": self.settings.temperature}
        if self.settings.seed is not None:
            params["seed"] = self.settings.seed
        return params


def continue_with(
    body: dict[str, Any], endpoint: str, assistant_text: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The request continued after ``assistant_text``: an assistant prefill on the chat
    endpoint (``continue_final_message``), appended text on the completions endpoint.
    Returns (body, extra params)."""
    body = body_for_endpoint(body, endpoint)
    if "messages" in body:
        messages = [*body["messages"], {"role": "assistant", "content": assistant_text}]
        return {**body, "messages": messages}, {
            "continue_final_message": True,
            "add_generation_prompt": False,
        }
    return {**body, "prompt": body["prompt"] + "\n" + assistant_text}, {}


class Usage:
    """Token counts summed over every request a pair needed (the recovery included)."""

    def __init__(self) -> None:
        self.totals: dict[str, int] = {}
        self.requests = 0

    def add(self, gen: Generation) -> Generation:
        self.requests += 1
        for k, v in gen.usage.items():
            self.totals[k] = self.totals.get(k, 0) + v
        return gen


async def paper_scorer(
    client: OpenAIClient, candidate: dict[str, Any], context: ScoringContext
) -> dict[str, Any]:
    usage = Usage()
    body = context.request(candidate)
    gen = usage.add(
        await send(
            client,
            context.endpoint,
            body,
            max_tokens=context.settings.max_tokens,
            **context.base_params(),
        )
    )
    judge_text = gen.text
    score = context.parse(judge_text)
    problem = None
    if score is None:
        problem = "no_valid_score_on_last_line"
    elif echoes_candidate(judge_text, candidate):
        # Checked against the pair as written, not only as the guarded judge read it: a
        # judge that is told the pair some other way (a plugin's request) is caught too.
        score, problem = None, "score_line_copied_from_candidate"
    result: dict[str, Any] = {"judge_text": judge_text, "score_status": "ok", "score": score}
    if score is None:
        recovered, recovery_text = await _recover(client, body, judge_text, context, usage)
        result.update(
            score=recovered,
            score_status="recovered" if recovered is not None else "failed",
            parse_problem=problem,
            recovery_text=recovery_text,
        )
    result["judge_provenance"] = {
        **gen.provenance(context.template.short_hash),
        "usage": usage.totals,
    }
    result["judge_requests"] = usage.requests
    return result


async def _recover(
    client: OpenAIClient,
    body: dict[str, Any],
    judge_text: str,
    context: ScoringContext,
    usage: Usage,
) -> tuple[int | None, str]:
    """Ask again, constrained so the answer is ``Score: N``: first by continuing the judge's
    own reasoning; if that is refused (e.g. too long for the context), from scratch."""
    constrained = {"structured_outputs": {"regex": SCORE_REGEX}, "max_tokens": 8}
    cont_body, extra = continue_with(body, context.endpoint, judge_text.rstrip() + "\n")
    try:
        gen = usage.add(
            await send(client, context.endpoint, cont_body, **constrained, **extra,
                        **context.base_params())
        )  # fmt: skip
    except RequestRejected:
        usage.requests += 1  # the refused continuation
        gen = usage.add(
            await send(client, context.endpoint, body, **constrained, **context.base_params())
        )
    return parse_score(gen.text), gen.text


async def _one_token(
    client: OpenAIClient, candidate: dict[str, Any], context: ScoringContext, logprobs: bool
):
    body = context.request(candidate)
    extra: dict[str, Any] = {}
    if context.settings.prefill:
        body, extra = continue_with(body, context.endpoint, PREFILL)
    params: dict[str, Any] = {
        "structured_outputs": {"choice": list(SCORES)},
        "max_tokens": 2,
        **extra,
        **context.base_params(),
    }
    if logprobs:
        top = context.settings.top_logprobs
        if "messages" in body_for_endpoint(body, context.endpoint):
            params.update(logprobs=True, top_logprobs=top)
        else:
            params["logprobs"] = top
    return await send(client, context.endpoint, body, **params)


async def constrained_scorer(
    client: OpenAIClient, candidate: dict[str, Any], context: ScoringContext
) -> dict[str, Any]:
    gen = await _one_token(client, candidate, context, logprobs=False)
    score = parse_score(gen.text)
    return {
        "score": score,
        "judge_text": gen.text,
        "score_status": "ok" if score is not None else "failed",
        "judge_provenance": gen.provenance(context.template.short_hash),
        "judge_requests": 1,
    }


def score_probabilities(logprobs: Any) -> tuple[dict[str, float], float]:
    """Probabilities of "1".."5" at the first generated token, renormalised over the five
    digits, and the probability mass they had before renormalising. Handles the chat
    (``content[0].top_logprobs``) and completions (``top_logprobs[0]``) shapes."""
    top: list[tuple[str, float]] = []
    if isinstance(logprobs, dict) and logprobs.get("content"):
        first = logprobs["content"][0]
        top = [(t["token"], t["logprob"]) for t in first.get("top_logprobs") or []]
        if not top:
            top = [(first["token"], first["logprob"])]
    elif isinstance(logprobs, dict) and logprobs.get("top_logprobs"):
        top = list((logprobs["top_logprobs"][0] or {}).items())
    mass: dict[str, float] = dict.fromkeys(SCORES, 0.0)
    for token, logprob in top:
        digit = token.strip()
        if digit in mass and logprob is not None and logprob > -math.inf:
            mass[digit] += math.exp(logprob)
    total = sum(mass.values())
    if total <= 0:
        return {}, 0.0
    return {d: p / total for d, p in mass.items()}, total


async def logprobs_scorer(
    client: OpenAIClient, candidate: dict[str, Any], context: ScoringContext
) -> dict[str, Any]:
    gen = await _one_token(client, candidate, context, logprobs=True)
    probabilities, mass = score_probabilities(gen.choices[0].logprobs if gen.choices else None)
    sampled = parse_score(gen.text)
    if probabilities:
        score = int(max(SCORES, key=lambda d: (probabilities[d], -int(d))))
        expected = sum(int(d) * p for d, p in probabilities.items())
        status = "ok"
    else:
        # No digit among the returned logprobs: fall back to the sampled token.
        score, expected, status = sampled, None, "ok" if sampled is not None else "failed"
    return {
        "score": score,
        "expected_score": round(expected, 4) if expected is not None else None,
        "probabilities": {d: round(p, 6) for d, p in probabilities.items()} or None,
        "logprob_mass": round(mass, 6),
        "sampled_score": sampled,
        "judge_text": gen.text,
        "score_status": status,
        "judge_provenance": gen.provenance(context.template.short_hash),
        "judge_requests": 1,
    }


BUILTIN_SCORERS = {
    "paper": paper_scorer,
    "constrained": constrained_scorer,
    "logprobs": logprobs_scorer,
}
