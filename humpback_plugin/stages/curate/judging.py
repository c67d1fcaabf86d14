"""One judge call, as curation and ``humpback eval judge`` both make it.

The template and settings with the ``curation_request`` / ``parse_curation_score`` hooks'
answers (:func:`scoring_context`), what decides a judgement (:func:`decoding_of`, part of
every resume key) and the scored record of one pair (:func:`judge_pair`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from humpback_plugin.core.client import OpenAIClient
from humpback_plugin.core.config import CurateConfig
from humpback_plugin.core.records import ScoredCandidate
from humpback_plugin.plugins import load_template, pm
from humpback_plugin.stages.curate.guard import mask_ratings
from humpback_plugin.stages.curate.scoring import ScoringContext

Scorer = Callable[[OpenAIClient, dict[str, Any], ScoringContext], Awaitable[dict[str, Any]]]


def scoring_context(settings: CurateConfig) -> ScoringContext:
    """The judge's template and settings, with the request and parse hooks' answers."""
    return ScoringContext(
        template=load_template(settings.template, required=("instruction", "output")),
        settings=settings,
        build_request=lambda instruction, output, template: pm.hook.curation_request(
            instruction=instruction, output=output, template=template
        ),
        parse=lambda text: pm.hook.parse_curation_score(text=text),
    )


def decoding_of(settings: CurateConfig) -> dict[str, Any]:
    """The settings that change what the judge answers (besides model, template, mode)."""
    mode = settings.mode
    return {
        "temperature": settings.temperature,
        "max_tokens": settings.max_tokens if mode == "paper" else None,
        "prefill": settings.prefill if mode != "paper" else None,
        "seed": settings.seed,
        "injection_guard": settings.injection_guard,
    }


async def judge_pair(
    scorer: Scorer,
    client: OpenAIClient,
    pair: dict[str, Any],
    context: ScoringContext,
    iteration: int = 1,
) -> dict[str, Any]:
    """The scored record of one pair: its fields, the scorer's, the mode and iteration,
    and ``masked_ratings`` when the guard hid rating claims from the judge."""
    result = await scorer(client, pair, context)
    record = ScoredCandidate(
        **{**pair, **result, "scoring_mode": context.settings.mode, "iteration": iteration}
    ).model_dump()
    if context.settings.injection_guard:
        masked = sum(mask_ratings(pair[field])[1] for field in ("instruction", "output"))
        if masked:
            record["masked_ratings"] = masked
    return record
