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

The old ``guided_*`` request fields are never sent: current vLLM ignores them silently.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

from humpback_plugin.client import OpenAIClient, RequestRejected
from humpback_plugin.prompts import PromptTemplate

SCORES = ("1", "2", "3", "4", "5")
SCORE_REGEX = "Score: [1-5]"
PREFILL = "Score: "

# "Score: 4", "**Score:** 4", "score = 4/5", "Score: <4>", "Rating: 4 out of 5".
_SCORE = re.compile(
    r"\b(?:score|rating)\b\s*(?:[:=]|is)?\s*[\[(<]?\s*(\d+(?:\.\d+)?)\s*[\])>]?"
    r"(?:\s*(?:/|out\s+of)\s*5(?:\.0)?)?",
    re.IGNORECASE,
)
# A last line that is only a number: "4", "4/5", "4 out of 5", "4."
_BARE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:(?:/|out\s+of)\s*5)?\s*\.?\s*$", re.IGNORECASE)
_MARKUP = re.compile(r"[*_`#>|~]")


def _as_score(number: str) -> int | None:
    value = float(number)
    if value.is_integer() and 1 <= value <= 5:
        return int(value)
    return None


def last_line(text: str) -> str:
    """The judge's last line with content (lines of only markup such as ``---`` skipped)."""
    for line in reversed(text.strip().splitlines()):
        if re.search(r"[A-Za-z0-9]", line):
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
    found = [s for m in _SCORE.finditer(line) if (s := _as_score(m.group(1))) is not None]
    if found:
        return found[-1]
    bare = _BARE.match(line)
    return _as_score(bare.group(1)) if bare else None


def echoes_candidate(judge_text: str, candidate: dict[str, Any]) -> bool:
    """True when the judge's last line is a score line copied from the candidate itself."""
    line = _MARKUP.sub("", last_line(judge_text)).strip().lower()
    if not line:
        return False
    for field in ("instruction", "output"):
        own = _MARKUP.sub("", candidate.get(field) or "").lower()
        if _SCORE.search(own) and line in own:
            return True
    return False


# --- scorers -----------------------------------------------------------------------------


@dataclasses.dataclass
class ScoringContext:
    """What every scorer needs besides the client and the pair."""

    template: PromptTemplate
    endpoint: str = "chat"
    temperature: float = 0.0
    max_tokens: int = 512  # paper mode: room for the "brief reasoning"
    top_logprobs: int = 20  # vLLM's default --max-logprobs
    prefill: bool = True
    seed: int | None = None

    def request(self, candidate: dict[str, Any]) -> dict[str, Any]:
        from humpback_plugin.plugins import pm

        return pm.hook.curation_request(
            instruction=candidate["instruction"],
            output=candidate["output"],
            template=self.template.text,
        )

    def base_params(self) -> dict[str, Any]:
        params: dict[str, Any] = {"temperature": self.temperature}
        if self.seed is not None:
            params["seed"] = self.seed
        return params


def continue_with(
    body: dict[str, Any], endpoint: str, assistant_text: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The request continued after ``assistant_text``: an assistant prefill on the chat
    endpoint (``continue_final_message``), appended text on the completions endpoint.
    Returns (body, extra params)."""
    from humpback_plugin.augment import body_for_endpoint

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

    def add(self, gen: Any) -> Any:
        self.requests += 1
        for k, v in gen.usage.items():
            self.totals[k] = self.totals.get(k, 0) + v
        return gen


async def _send(client: OpenAIClient, endpoint: str, body: dict[str, Any], **params: Any):
    from humpback_plugin.augment import send

    return await send(client, endpoint, body, **params)


async def paper_scorer(
    client: OpenAIClient, candidate: dict[str, Any], context: ScoringContext
) -> dict[str, Any]:
    from humpback_plugin.plugins import pm

    usage = Usage()
    body = context.request(candidate)
    gen = usage.add(
        await _send(
            client,
            context.endpoint,
            body,
            max_tokens=context.max_tokens,
            **context.base_params(),
        )
    )
    judge_text = gen.text
    score = pm.hook.parse_curation_score(text=judge_text)
    problem = None
    if score is None:
        problem = "no_valid_score_on_last_line"
    elif echoes_candidate(judge_text, candidate):
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
            await _send(client, context.endpoint, cont_body, **constrained, **extra,
                        **context.base_params())
        )  # fmt: skip
    except RequestRejected:
        usage.requests += 1  # the refused continuation
        gen = usage.add(
            await _send(client, context.endpoint, body, **constrained, **context.base_params())
        )
    return parse_score(gen.text), gen.text


async def _one_token(
    client: OpenAIClient, candidate: dict[str, Any], context: ScoringContext, logprobs: bool
):
    body = context.request(candidate)
    extra: dict[str, Any] = {}
    if context.prefill:
        body, extra = continue_with(body, context.endpoint, PREFILL)
    params: dict[str, Any] = {
        "structured_outputs": {"choice": list(SCORES)},
        "max_tokens": 2,
        **extra,
        **context.base_params(),
    }
    if logprobs:
        from humpback_plugin.augment import body_for_endpoint

        if "messages" in body_for_endpoint(body, context.endpoint):
            params.update(logprobs=True, top_logprobs=context.top_logprobs)
        else:
            params["logprobs"] = context.top_logprobs
    return await _send(client, context.endpoint, body, **params)


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


# --- selectors ---------------------------------------------------------------------------
# A selector gets light records (key, id, score, expected_score, score_status) and returns
# the ones to keep; the curate stage then streams the full records of those keys.


def _rank_value(record: dict[str, Any]) -> float | None:
    value = record.get("expected_score")
    return value if value is not None else record.get("score")


def threshold_selector(scored: list[dict[str, Any]], options: dict[str, Any]) -> list[dict]:
    """score >= k. A fractional k (the paper's A5 is "score >= 4.5") is compared with the
    expected score when the logprobs mode gave one, else with the integer score."""
    k = float(options.get("threshold", 4))
    if k.is_integer():
        return [r for r in scored if r.get("score") is not None and r["score"] >= k]
    return [r for r in scored if (v := _rank_value(r)) is not None and v >= k]


def target_yield_selector(scored: list[dict[str, Any]], options: dict[str, Any]) -> list[dict]:
    """The best ``target_yield`` fraction (e.g. 0.1), ranked by expected score, then score;
    ties at the cut are broken by the record id (stable across runs)."""
    fraction = float(options["target_yield"])
    ranked = [r for r in scored if _rank_value(r) is not None]
    ranked.sort(key=lambda r: (-_rank_value(r), -(r.get("score") or 0), r.get("id", "")))
    keep = {id(r) for r in ranked[: round(fraction * len(scored))]}
    return [r for r in scored if id(r) in keep]


def quantile_selector(scored: list[dict[str, Any]], options: dict[str, Any]) -> list[dict]:
    """Keep records at or above the ``quantile`` (e.g. 0.9) of the ranking values; ties at
    the cut are all kept, so the yield can exceed 1 - q."""
    q = float(options["quantile"])
    values = sorted(v for r in scored if (v := _rank_value(r)) is not None)
    if not values:
        return []
    cut = values[min(len(values) - 1, math.floor(q * len(values)))]
    return [r for r in scored if (v := _rank_value(r)) is not None and v >= cut]


BUILTIN_SELECTORS = {
    "threshold": threshold_selector,
    "target_yield": target_yield_selector,
    "quantile": quantile_selector,
}
