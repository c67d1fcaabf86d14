"""Self-curation: the current model rates every candidate pair 1-5; keep score >= k.

The judge prompt is the paper's Table 1 rubric, verbatim (``prompts/curation.txt``), with
the instruction and the candidate answer placed after it, unlabelled, as in the paper.
The rubric comes first and is byte-identical in every request, so vLLM's prefix cache
(on by default) computes it once and reuses it for every pair; the summary shows the
server's prefix-cache hit rate for the run when ``/metrics`` is reachable.

Scoring modes (``mode``, see :mod:`.scoring`): ``paper`` (reasoning + "Score: N", parsed
from the last line, re-asked under a regex constraint when unparseable), ``constrained``
(one constrained token) and ``logprobs`` (probabilities of 1-5 and the expected score), or
any scorer a plugin registers. Selection (``selector``: threshold, target yield, quantile
or a plugin's, see :mod:`.selectors`) writes the curated set; the full scored set is
written too, so a different cut needs no new scoring.

Iterations: M0 scores all candidates -> A_k(1) (``iteration=1``); M1 = base + seed +
A_k(1) re-scores them -> A_k(2) (``iteration=2``); the iteration is recorded on every
record and is part of the resume key.

Canaries (:mod:`.canaries`): labelled probes are mixed into the stream; the scored and
selected files are written from the candidates' keys only, the probes go to
``<scored>.canaries.jsonl``, and the judge's precision, recall and ROC-AUC on them are in
the summary (``judge_quality``). The ``calibrated`` selector takes its cut from them.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from humpback_plugin.core import event_loop
from humpback_plugin.core.client import ClientConfig, OpenAIClient
from humpback_plugin.core.config import CurateConfig
from humpback_plugin.core.engine import Engine
from humpback_plugin.core.hashing import content_hash
from humpback_plugin.core.jsonl_io import iter_jsonl, write_json_atomic
from humpback_plugin.core.layout import work_dir_for
from humpback_plugin.core.records import Candidate, read_records
from humpback_plugin.core.runner import run_model_stage
from humpback_plugin.core.sharding import in_shard
from humpback_plugin.core.store import RecordStore, finalize
from humpback_plugin.plugins import pick
from humpback_plugin.stages.curate.canaries import (
    calibration,
    canaries_path_for,
    canary_record,
    count_candidates,
    light,
    plan_canaries,
    quality_of,
    scored_probes,
    selection_predicate,
    write_canaries,
)
from humpback_plugin.stages.curate.judging import (
    Scorer,
    decoding_of,
    expand_shared,
    judge_pair,
    judged_once,
    scoring_context,
)
from humpback_plugin.stages.curate.quality import expected_bins
from humpback_plugin.stages.curate.scoring import ScoringContext


def iter_candidates(
    path: str | os.PathLike, shard: tuple[int, int] | None = None
) -> Iterator[dict[str, Any]]:
    """Candidate pairs of a JSONL file as dicts (only shard I of N when given); a bad line
    stops with the file and line named."""

    def prepare(obj: dict[str, Any]) -> dict[str, Any]:
        if "id" not in obj and isinstance(obj.get("instruction"), str):
            obj = {
                **obj,
                "id": content_hash("candidate", obj.get("instruction"), obj.get("output")),
            }
        if "id" in obj:
            obj = {"segment_id": obj["id"], **obj}
        return obj

    for obj, _candidate in read_records(path, Candidate, "a candidate pair", prepare):
        if in_shard(obj["id"], shard):
            yield obj


def candidate_ids(path: str | os.PathLike, shard: tuple[int, int] | None = None) -> Iterator[str]:
    """The ids :func:`iter_candidates` gives, for a file it has already read: JSON only, no
    second validation (the final files are written in this order)."""
    for _lineno, obj in iter_jsonl(path):
        if "id" in obj:
            candidate_id = obj["id"]
        else:
            candidate_id = content_hash("candidate", obj.get("instruction"), obj.get("output"))
        if in_shard(candidate_id, shard):
            yield candidate_id


@dataclass(frozen=True)
class Score:
    """One (role, pair) of the stream -> its scored record. A plain picklable object, so
    the same work runs in this process or in Ray actors (``--engine ray``)."""

    scorer: Scorer
    context: ScoringContext
    iteration: int

    async def __call__(
        self, client: OpenAIClient, item: tuple[str, dict[str, Any]], key: str
    ) -> list[dict[str, Any]]:
        return [await judge_pair(self.scorer, client, item[1], self.context, self.iteration)]


def curate(
    candidates_path: str | os.PathLike, scored_path: str | os.PathLike, **options: Any
) -> dict[str, Any]:
    """Score every candidate pair and select the curated set; returns the run summary.

    Writes ``scored_path`` (every pair with its score, input order) and, when given,
    ``selected_path`` (the pairs the selector keeps). Re-running resumes.

    ``options`` are those of :func:`curate_async`, which this runs in a fresh event loop.
    """
    return event_loop.run(curate_async(candidates_path, scored_path, **options))


async def curate_async(
    candidates_path: str | os.PathLike,
    scored_path: str | os.PathLike,
    *,
    client_config: ClientConfig,
    settings: CurateConfig | None = None,
    selected_path: str | os.PathLike | None = None,
    iteration: int = 1,
    threshold: float | None = None,
    work_dir: str | os.PathLike | None = None,
    preflight: bool = True,
    retry_failed: bool = False,
    show_progress: bool = True,
    client: OpenAIClient | None = None,
    shard: tuple[int, int] | None = None,
    probes_path: str | os.PathLike | None = None,
    canaries_path: str | os.PathLike | None = None,
    engine: Engine | None = None,
) -> dict[str, Any]:
    """``threshold`` overrides ``settings.threshold`` (the run's last iteration uses
    ``final_threshold``). ``probes_path`` (seed pairs or a labelled file) overrides
    ``settings.probes`` as the canaries' source; their scores go to ``canaries_path``
    (default ``<scored>.canaries.jsonl``), never to the scored or selected files.
    ``engine`` (see :mod:`humpback_plugin.core.engine`) runs the judge's requests
    elsewhere, e.g. in Ray actors; this process still reads, resumes and writes."""
    settings = settings or CurateConfig()
    mode = settings.mode
    scorer = pick("register_scorers", mode)
    select = pick("register_selectors", settings.selector)
    selector_options = settings.selector_options(threshold)
    context = scoring_context(settings)
    prompt = context.template
    work = work_dir_for(scored_path, work_dir)
    canaries_out = Path(canaries_path) if canaries_path else canaries_path_for(scored_path)
    total = count_candidates(
        candidates_path, shard, lambda: iter_candidates(candidates_path, shard)
    )
    plan = plan_canaries(settings, total, shard, probes_path)
    # Canaries the judge reads identically (an injected probe and its twin, guarded) are
    # judged once; the other carries that judgement.
    sent, alias = judged_once([canary_record(p) for p in plan.canaries], context)
    plan.sent = sent
    run_id = content_hash(
        "curate", prompt.sha256, client_config.model, settings.endpoint, mode,
        decoding_of(settings), iteration,
    )  # fmt: skip

    def key_of_id(candidate_id: str) -> str:
        return content_hash(run_id, candidate_id)

    def key_of(item: tuple[str, dict[str, Any]]) -> str:
        role, record = item
        return (
            key_of_id(record["id"])
            if role == "candidate"
            else content_hash(run_id, "canary", record["id"])
        )

    quality: dict[str, Any] = {}

    def finish(store: RecordStore) -> dict[str, Any]:
        probes = expand_shared(
            scored_probes(store, [key_of(("canary", p)) for p in plan.sent]),
            [canary_record(p) for p in plan.canaries],
            alias,
            context,
        )
        lights = [light(p) for p in probes]
        quality["calibration"] = calibration(settings, lights)
        options = dict(selector_options)
        if quality["calibration"] is not None:
            options["cut"] = quality["calibration"]["cut"]
        quality["options"] = options

        def run_selector(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return select(rows, {**options, "canaries": lights})

        counts = _write_outputs(
            candidates_path, shard, key_of_id, store, scored_path, selected_path,
            run_selector,
        )  # fmt: skip
        if plan.canaries:
            counts["canaries_written"] = write_canaries(probes, canaries_out)
            predicate = selection_predicate(
                settings.selector,
                select,
                {**options, "canaries": lights},
                lights,
                counts["lowest_selected"],
            )
            quality["judge"] = quality_of(lights, predicate)
        return counts

    result = await run_model_stage(
        name=f"curate ({mode})",
        client_config=client_config,
        inputs=plan.stream(iter_candidates(candidates_path, shard), settings.probe_seed),
        key_of=key_of,
        input_id_of=lambda item: item[1]["id"],
        work=Score(scorer, context, iteration),
        finish=finish,
        work_dir=work,
        store_name="scored.jsonl",
        total=total + len(plan.sent),
        preflight=preflight,
        retry_failed=retry_failed,
        show_progress=show_progress,
        client=client,
        chat_endpoint=settings.endpoint == "chat",
        engine=engine,
    )
    stats, counts = result.stats, result.outputs
    scored_this_run = stats.processed
    summary = {
        "stage": "curate",
        "mode": mode,
        "iteration": iteration,
        "candidates": stats.total_inputs - len(plan.sent),
        "already_done": stats.already_done,
        "scored_this_run": scored_this_run,
        "scored": counts["scored"],
        "with_score": counts["with_score"],
        "score_histogram": counts["histogram"],
        "score_status": counts["status"],
        "mean_expected_score": counts["mean_expected"],
        "expected_bins": counts["expected_bins"],
        "masked_ratings": counts["masked_ratings"],
        "selector": settings.selector,
        "selector_options": {k: v for k, v in quality["options"].items() if k != "canaries"},
        "threshold": selector_options["threshold"],
        "selected": counts["selected"],
        "yield": round(counts["selected"] / counts["scored"], 4) if counts["scored"] else 0.0,
        "canaries": plan.describe(canaries_out if plan.canaries else None),
        "judge_quality": quality.get("judge"),
        "calibration": quality["calibration"],
        **result.summary(client_config.model),
        "completion_tokens_per_pair": round(result.client.completion_tokens / scored_this_run, 2)
        if scored_this_run
        else None,
        "pairs_per_s": result.per_second(scored_this_run),
        "endpoint": settings.endpoint,
        "injection_guard": settings.injection_guard,
        "template": prompt.path,
        "template_sha256": prompt.sha256,
        "scored_path": str(scored_path),
        "selected_path": str(selected_path) if selected_path else None,
    }
    write_json_atomic(work / "summary.json", summary)
    return summary


def _write_outputs(
    candidates_path: str | os.PathLike,
    shard: tuple[int, int] | None,
    key_of_id: Callable[[str], str],
    store: RecordStore,
    scored_path: str | os.PathLike,
    selected_path: str | os.PathLike | None,
    select: Callable[[list[dict[str, Any]]], list[dict[str, Any]]],
) -> dict[str, Any]:
    def keys() -> Iterator[str]:
        return (key_of_id(i) for i in candidate_ids(candidates_path, shard))

    histogram: Counter = Counter()
    status: Counter = Counter()
    expected: list[float] = []
    light: list[dict[str, Any]] = []
    masked: Counter = Counter()

    def scored() -> Iterator[dict[str, Any]]:
        for record in store.ordered(keys()):
            if record.pop("empty", False):
                continue
            histogram[str(record.get("score"))] += 1
            status[record.get("score_status")] += 1
            if record.get("expected_score") is not None:
                expected.append(record["expected_score"])
            masked["pairs"] += 1 if record.get("masked_ratings") else 0
            light.append(
                {
                    "key": record["key"],
                    "id": record["id"],
                    "score": record.get("score"),
                    "expected_score": record.get("expected_score"),
                    "score_status": record.get("score_status"),
                }
            )
            yield {k: v for k, v in record.items() if k != "key"}

    n_scored = finalize(scored(), scored_path)
    picked = select(light)
    chosen = {r["key"] for r in picked}
    ranks = [v for r in picked if (v := _rank(r)) is not None]
    n_selected = 0
    if selected_path is not None:
        # In input order, as ``light`` is: only the chosen records are read back.
        wanted = (r["key"] for r in light if r["key"] in chosen)
        n_selected = finalize(
            ({k: v for k, v in r.items() if k != "key"} for r in store.ordered(wanted)),
            selected_path,
        )
    else:
        n_selected = len(chosen)
    return {
        "scored": n_scored,
        "with_score": n_scored - histogram.get("None", 0),
        "histogram": {k: histogram[k] for k in ("1", "2", "3", "4", "5", "None") if histogram[k]},
        "status": dict(status),
        "mean_expected": round(sum(expected) / len(expected), 4) if expected else None,
        "expected_bins": expected_bins({"expected_score": v} for v in expected),
        "masked_ratings": masked["pairs"],
        "selected": n_selected,
        "lowest_selected": min(ranks) if ranks else None,
    }


def _rank(record: dict[str, Any]) -> float | None:
    value = record.get("expected_score")
    return value if value is not None else record.get("score")
