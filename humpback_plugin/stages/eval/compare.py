"""Pairwise preference between two outputs files, judged by any OpenAI-compatible model.

The model's outputs and a baseline's (a reference such as text-davinci-003's, or M0's) are
matched by instruction, as AlpacaEval does. Each pair is judged twice, the model's answer
shown first and then second, so the judge's preference for a position cancels
(:mod:`.stats`); each order's verdict is read from the probabilities of one constrained
token, with parsed fallbacks (:mod:`.judging`). Identical answers are a tie without a
request.

Writes, in the output folder: ``verdicts.jsonl`` (one line per instruction, both orders'
verdicts with the judge's text, in the baseline's order) and ``summary.json`` (win rate
with a seeded bootstrap interval, tie rate, position statistics, mean lengths, the judge
and its token use). Resumable like every model-calling stage (``verdicts.jsonl.parts/``).
Instructions the model has no output for, or the baseline has none for, are counted in
the summary, never silently dropped.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from humpback_plugin.core import event_loop
from humpback_plugin.core.client import ClientConfig, OpenAIClient
from humpback_plugin.core.config import EvalCompareConfig
from humpback_plugin.core.errors import InputError
from humpback_plugin.core.hashing import content_hash
from humpback_plugin.core.jsonl_io import write_json_atomic, write_jsonl_atomic
from humpback_plugin.core.runner import run_model_stage
from humpback_plugin.core.store import RecordStore
from humpback_plugin.plugins import load_template
from humpback_plugin.stages.eval import stats as winrate
from humpback_plugin.stages.eval.instructions import EvalItem, generator_of, read_items
from humpback_plugin.stages.eval.judging import FAILED, JudgeContext, judge_order

VERDICTS_NAME = "verdicts.jsonl"
SUMMARY_NAME = "summary.json"
# How bad an order's status is, to give an example the worst of its orders'.
_STATUS_RANK = {"ok": 0, "parsed": 1, "recovered": 2, FAILED: 3}


@dataclass(frozen=True)
class Pair:
    id: str
    instruction: str
    dataset: str | None
    model_output: str
    baseline_output: str


@dataclass
class Pairing:
    pairs: list[Pair]
    missing_model: list[str]  # baseline instructions the model has no output for
    unmatched_model: list[str]  # model instructions the baseline lacks

    def counts(self) -> dict[str, Any]:
        return {
            "pairs": len(self.pairs),
            "missing_model_outputs": len(self.missing_model),
            "unmatched_model_outputs": len(self.unmatched_model),
            "missing_examples": self.missing_model[:5],
        }


def pair_outputs(model: list[EvalItem], baseline: list[EvalItem]) -> Pairing:
    """Match the two files by instruction (occurrence by occurrence), baseline order."""
    by_id = {item.id: item for item in model}
    pairs, missing = [], []
    for ref in baseline:
        own = by_id.pop(ref.id, None)
        if own is None:
            missing.append(ref.instruction[:120])
            continue
        pairs.append(
            Pair(
                id=ref.id,
                instruction=ref.instruction,
                dataset=ref.dataset or own.dataset,
                model_output=own.output or "",
                baseline_output=ref.output or "",
            )
        )
    return Pairing(pairs, missing, [item.instruction[:120] for item in by_id.values()])


def judge_context(settings: EvalCompareConfig) -> JudgeContext:
    template = load_template(settings.template, required=("instruction", "output_a", "output_b"))
    return JudgeContext(template=template, settings=settings)


async def judge_pair(client: OpenAIClient, context: JudgeContext, pair: Pair) -> dict[str, Any]:
    """Both orders' verdicts on one pair, combined (no request for identical answers)."""
    base = {
        "id": pair.id,
        "instruction": pair.instruction,
        "dataset": pair.dataset,
        "output_model": pair.model_output,
        "output_baseline": pair.baseline_output,
        "length_model": len(pair.model_output),
        "length_baseline": len(pair.baseline_output),
    }
    if pair.model_output.strip() == pair.baseline_output.strip():
        return {
            **base,
            "orders": [],
            "preference": 0.5,
            "outcome": winrate.TIE,
            "status": "identical",
            "judge_requests": 0,
            "usage": {},
        }
    model_first, model_second = await asyncio.gather(
        judge_order(client, context, pair.instruction, pair.model_output, pair.baseline_output),
        judge_order(client, context, pair.instruction, pair.baseline_output, pair.model_output),
    )
    orders = []
    for verdict, first in ((model_first, True), (model_second, False)):
        p_first = verdict["p_first"]
        p_model = None if p_first is None else winrate.model_probability(p_first, first)
        orders.append({"model_first": first, "p_model": p_model, **verdict})
    preference, outcome = winrate.combine_orders([o["p_model"] for o in orders])
    statuses = [o["status"] for o in orders]
    if outcome == winrate.FAILED:
        status = FAILED
    elif FAILED in statuses:
        status = "one_order"  # the other order failed: position bias not cancelled here
    else:
        status = max(statuses, key=_STATUS_RANK.__getitem__)
    usage: Counter = Counter()
    for order in orders:
        usage.update(order["usage"])
    return {
        **base,
        "orders": orders,
        "preference": preference,
        "outcome": outcome,
        "status": status,
        "judge_requests": sum(o["requests"] for o in orders),
        "usage": dict(usage),
    }


def compare_outputs(
    model_path: str | os.PathLike,
    baseline_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    **options: Any,
) -> dict[str, Any]:
    """Judge every pair; returns the summary. Options: :func:`compare_async`."""
    return event_loop.run(compare_async(model_path, baseline_path, output_dir, **options))


async def compare_async(
    model_path: str | os.PathLike,
    baseline_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    client_config: ClientConfig,
    settings: EvalCompareConfig | None = None,
    model_name: str | None = None,
    baseline_name: str | None = None,
    limit: int | None = None,
    work_dir: str | os.PathLike | None = None,
    preflight: bool = True,
    retry_failed: bool = False,
    show_progress: bool = True,
    client: OpenAIClient | None = None,
) -> dict[str, Any]:
    """``client_config`` is the judge's. ``model_name``/``baseline_name`` default to the
    files' ``generator``. Writes ``verdicts.jsonl`` and ``summary.json`` in ``output_dir``."""
    settings = settings or EvalCompareConfig()
    output_dir = Path(output_dir)
    model_items = read_items(model_path, need_output=True, what="outputs file")
    baseline_items = read_items(baseline_path, limit=limit, need_output=True, what="outputs file")
    model_name = model_name or generator_of(model_items, Path(model_path).parent.name)
    baseline_name = baseline_name or generator_of(baseline_items, Path(baseline_path).stem)
    pairing = pair_outputs(model_items, baseline_items)
    if not pairing.pairs:
        raise InputError(
            model_path, None, f"none of its instructions is in {baseline_path} (matched by text)"
        )
    context = judge_context(settings)
    verdicts_path = output_dir / VERDICTS_NAME
    work = Path(work_dir) if work_dir else Path(f"{verdicts_path}.parts")
    judging = settings.model_dump(include={"mode", "endpoint", "temperature", "max_tokens"})
    run_id = content_hash("eval-compare", context.template.sha256, client_config.model, judging)

    def key_of(pair: Pair) -> str:
        # The answers are part of the key: new outputs are judged again.
        return content_hash(run_id, pair.id, pair.model_output, pair.baseline_output)

    async def judge(client: OpenAIClient, pair: Pair, key: str) -> list[dict[str, Any]]:
        verdict = await judge_pair(client, context, pair)
        return [{**verdict, "model": model_name, "baseline": baseline_name}]

    def finish(store: RecordStore) -> dict[str, Any]:
        verdicts = [v for p in pairing.pairs if (v := store.get(key_of(p))) is not None]
        for verdict in verdicts:
            verdict.pop("key", None)
        write_jsonl_atomic(verdicts_path, verdicts)
        return _statistics(verdicts, settings)

    result = await run_model_stage(
        name=f"eval compare ({model_name} vs {baseline_name})",
        client_config=client_config,
        inputs=pairing.pairs,
        key_of=key_of,
        input_id_of=lambda pair: pair.id,
        work=judge,
        finish=finish,
        work_dir=work,
        store_name="verdicts.jsonl",
        total=len(pairing.pairs),
        preflight=preflight,
        retry_failed=retry_failed,
        show_progress=show_progress,
        client=client,
    )
    summary = {
        "stage": "eval_compare",
        "model": model_name,
        "baseline": baseline_name,
        "judge": client_config.model,
        "mode": settings.mode,
        **result.outputs,
        **pairing.counts(),
        "already_done": result.stats.already_done,
        "judged_this_run": result.stats.processed,
        **{
            f"judge_{k}": v
            for k, v in result.summary(client_config.model).items()
            if k not in ("model", "work_dir", "failures_path")
        },
        "template": context.template.path,
        "template_sha256": context.template.sha256,
        "model_outputs": str(model_path),
        "baseline_outputs": str(baseline_path),
        "verdicts": str(verdicts_path),
        "work_dir": str(work),
    }
    write_json_atomic(output_dir / SUMMARY_NAME, summary)
    return summary


def _statistics(verdicts: list[dict[str, Any]], settings: EvalCompareConfig) -> dict[str, Any]:
    """The win-rate summary over all verdicts, and per AlpacaEval source (``dataset``)."""
    options = {
        "samples": settings.bootstrap_samples,
        "seed": settings.bootstrap_seed,
        "confidence": settings.confidence,
    }
    overall = winrate.summarize(verdicts, **options)
    by_dataset: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for verdict in verdicts:
        if verdict.get("dataset"):
            by_dataset[verdict["dataset"]].append(verdict)
    per_source = {}
    if len(by_dataset) > 1:
        for name, group in sorted(by_dataset.items()):
            stats = winrate.summarize(group, **options)
            per_source[name] = {k: stats[k] for k in ("judged", "win_rate", "win_rate_ci")}
    statuses = Counter(v["status"] for v in verdicts)
    return {**overall, "status": dict(statuses), "by_dataset": per_source}
