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
from humpback_plugin.core.records import Candidate, Provenance, Record
from humpback_plugin.plugins import load_template, pm
from humpback_plugin.stages.curate import hooks
from humpback_plugin.stages.curate.guard import mask_ratings
from humpback_plugin.stages.curate.scoring import (
    BUILTIN_SCORERS,
    ScoringContext,
    default_request,
    parse_score,
)

Scorer = Callable[[OpenAIClient, dict[str, Any], ScoringContext], Awaitable[dict[str, Any]]]


def hook_curation_request(instruction: str, output: str, template: str) -> dict[str, Any]:
    """The ``curation_request`` hook's answer (top level: picklable for Ray actors)."""
    return pm.hook.curation_request(instruction=instruction, output=output, template=template)


def hook_parse_score(text: str) -> int | None:
    """The ``parse_curation_score`` hook's answer (top level: picklable for Ray actors)."""
    return pm.hook.parse_curation_score(text=text)


def scoring_context(settings: CurateConfig) -> ScoringContext:
    """The judge's template and settings, with the request and parse hooks' answers.

    Where no plugin implements a hook, its built-in answer is called directly: a hook call
    costs microseconds, twice a pair, thousands of pairs a second."""
    return ScoringContext(
        template=load_template(settings.template, required=("instruction", "output")),
        settings=settings,
        build_request=_direct_or_hook(
            pm.hook.curation_request,
            hooks.curation_request,
            default_request,
            hook_curation_request,
        ),
        parse=_direct_or_hook(
            pm.hook.parse_curation_score,
            hooks.parse_curation_score,
            parse_score,
            hook_parse_score,
        ),
    )


def _direct_or_hook(hook: Any, builtin_impl: Any, direct: Any, via_hook: Any) -> Any:
    """``direct`` while ``builtin_impl`` is the hook's only implementation, else ``via_hook``."""
    only_builtin = [impl.function for impl in hook.get_hookimpls()] == [builtin_impl]
    return direct if only_builtin else via_hook


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


_CANDIDATE_FIELDS = tuple(Candidate.model_fields)


class _ScoreFields(Record):
    """What a scorer adds to a pair, validated (a plugin's scorer may return anything); the
    pair itself was validated when it was read."""

    score: int | None = None
    expected_score: float | None = None
    probabilities: dict[str, float] | None = None
    judge_text: str | None = None
    score_status: str = "ok"
    judge_provenance: Provenance | None = None


# What _ScoreFields' check gives for the built-in scorers' results, which are already of
# its types: its fields (declared order, defaults filled in), then the others as given.
_SCORE_DEFAULTS = {name: field.default for name, field in _ScoreFields.model_fields.items()}
# Checked with pydantic only when a plugin's scorer made them: at thousands of pairs a
# second the check of the built-ins' results was a twentieth of curation's CPU.
_BUILTIN = frozenset(BUILTIN_SCORERS.values())


def _score_fields(scorer: Scorer, result: dict[str, Any]) -> dict[str, Any]:
    if scorer not in _BUILTIN:
        return _ScoreFields.model_validate(result).model_dump()
    # Their provenance is Generation.provenance(): Provenance's fields in its order.
    return {**_SCORE_DEFAULTS, **result}


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
    checked = _score_fields(scorer, result)
    # The fields of a ScoredCandidate built without a pydantic round trip of the whole pair
    # (a tenth of curation's CPU at thousands of requests a second): the pair's (declared
    # ones first, defaults filled in), then the score's.
    record = {name: pair.get(name) for name in _CANDIDATE_FIELDS}
    record.update(pair)
    record.update(checked)
    record["scoring_mode"] = context.settings.mode
    record["iteration"] = iteration
    return _with_masked_count(record, pair, context)


def _with_masked_count(
    record: dict[str, Any], pair: dict[str, Any], context: ScoringContext
) -> dict[str, Any]:
    """``record`` with ``masked_ratings``: the rating claims the guard hid from the judge."""
    if context.settings.injection_guard:
        masked = sum(mask_ratings(pair[field])[1] for field in ("instruction", "output"))
        if masked:
            record["masked_ratings"] = masked
    return record


# --- pairs the judge reads identically are judged once --------------------------------------


def judged_once(
    pairs: list[dict[str, Any]], context: ScoringContext
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The pairs to send (the first of each distinct text as the judge reads it) and, for
    every other pair, the id of the pair whose judgement it shares.

    With the guard on, an ``injected`` probe reads exactly as its twin: asking twice
    would only measure the server's numerical noise (on vLLM-CPU a near-flat judge's
    argmax can flip between two identical requests in different batches), not the
    injection."""
    first: dict[tuple[str, str], str] = {}
    send: list[dict[str, Any]] = []
    alias: dict[str, str] = {}
    for pair in pairs:
        judged = context.judged(pair)
        text = (judged["instruction"], judged["output"])
        if text in first:
            alias[pair["id"]] = first[text]
        else:
            first[text] = pair["id"]
            send.append(pair)
    return send, alias


def shared_judgement(
    judged: dict[str, Any], pair: dict[str, Any], context: ScoringContext
) -> dict[str, Any]:
    """``pair``'s record carrying the judgement of ``judged`` (same text to the judge)."""
    own = {k: v for k, v in judged.items() if k not in ("base_id", "masked_ratings")}
    record = {**own, **pair, "judged_as": judged["id"]}
    return _with_masked_count(record, pair, context)


def expand_shared(
    records: list[dict[str, Any]],
    pairs: list[dict[str, Any]],
    alias: dict[str, str],
    context: ScoringContext,
) -> list[dict[str, Any]]:
    """Every pair's record in ``pairs`` order: judged ones as stored, the others carrying
    the judgement they share (skipped when that one has none, e.g. a refused request)."""
    by_id = {r["id"]: r for r in records}
    out = []
    for pair in pairs:
        if pair["id"] in by_id:
            out.append(by_id[pair["id"]])
        elif alias.get(pair["id"]) in by_id:
            out.append(shared_judgement(by_id[alias[pair["id"]]], pair, context))
    return out
