"""``humpback eval judge``: a served model's quality as a judge, per scoring mode.

Every probe of a probe set (see :mod:`.probes`) is scored once per mode, each mode through
:func:`~humpback_plugin.core.runner.run_model_stage` with its own resumable store under
``OUT/<mode>/``, so a stopped evaluation continues where it was. The result is the paper's
Table 7 side by side across modes (precision and recall at A4 and A5, ROC-AUC), plus what
decides which mode to use: the score distribution per negative kind, the share of answers
that needed a constrained re-ask (``recovered``) or gave no score (``failed``), generated
tokens per pair and pairs per second, the injected probes' shift and the cut the
calibrated selector would choose. Written to ``OUT/judge_eval.json``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

from humpback_plugin.core import event_loop
from humpback_plugin.core.client import ClientConfig, OpenAIClient
from humpback_plugin.core.config import CurateConfig, JudgeEvalConfig
from humpback_plugin.core.hashing import content_hash
from humpback_plugin.core.jsonl_io import write_json_atomic
from humpback_plugin.core.runner import run_model_stage
from humpback_plugin.core.store import RecordStore, finalize
from humpback_plugin.plugins import pick
from humpback_plugin.stages.curate.canaries import canary_record, light, probe_kinds
from humpback_plugin.stages.curate.judging import (
    decoding_of,
    expand_shared,
    judge_pair,
    judged_once,
    scoring_context,
)
from humpback_plugin.stages.curate.probes import ProbeSet, load_probes
from humpback_plugin.stages.curate.quality import calibrate, judge_quality

RESULT_NAME = "judge_eval.json"

# The paper's Table 7 (v1): 250 hand-labelled pairs, 20% good; precision / recall.
PAPER_TABLE_7 = {
    "M0 (LLaMA 65B, seed only)": {"precision": 0.44, "recall": 0.09},
    "M1 (LLaMA 65B, seed + A(1))": {"precision": 0.52, "recall": 0.44},
    "GPT-4": {"precision": 0.88, "recall": 0.92},
}


def evaluate_judge(
    probes_path: str | os.PathLike | None, out_dir: str | os.PathLike, **options: Any
) -> dict[str, Any]:
    """Score the probes in every mode and write ``OUT/judge_eval.json``; returns it.

    ``options`` are those of :func:`evaluate_judge_async`, run in a fresh event loop.
    """
    return event_loop.run(evaluate_judge_async(probes_path, out_dir, **options))


def _tokens_per_pair(records: list[dict[str, Any]]) -> float | None:
    """Generated tokens per judged probe, from the records (so a resumed run counts them
    all); a probe that shares another's judgement generated nothing and is left out."""
    tokens = [
        (r.get("judge_provenance") or {}).get("usage", {}).get("completion_tokens")
        for r in records
        if not r.get("judged_as")
    ]
    counted = [t for t in tokens if isinstance(t, int)]
    return round(sum(counted) / len(counted), 2) if counted else None


async def _one_mode(
    probe_set: ProbeSet,
    out: Path,
    mode: str,
    settings: CurateConfig,
    client_config: ClientConfig,
    client: OpenAIClient,
    *,
    retry_failed: bool,
    show_progress: bool,
) -> dict[str, Any]:
    mode_settings = settings.model_copy(update={"mode": mode})
    scorer = pick("register_scorers", mode)
    context = scoring_context(mode_settings)
    run_id = content_hash(
        "judge-eval", context.template.sha256, client_config.model, mode_settings.endpoint,
        mode, decoding_of(mode_settings),
    )  # fmt: skip
    pairs = [canary_record(p) for p in probe_set.probes]
    # Probes the judge reads identically (an injected one and its twin, guarded): once.
    sent, alias = judged_once(pairs, context)
    keys = {p["id"]: content_hash(run_id, p["id"]) for p in sent}

    async def score(client: OpenAIClient, probe: dict[str, Any], key: str) -> list[dict]:
        return [await judge_pair(scorer, client, probe, context)]

    def finish(store: RecordStore) -> dict[str, Any]:
        judged = [
            {k: v for k, v in r.items() if k != "key"}
            for r in store.ordered(keys[p["id"]] for p in sent)
        ]
        rows = expand_shared(judged, pairs, alias, context)
        finalize(rows, out / mode / "probes.scored.jsonl")
        return {"records": rows}

    result = await run_model_stage(
        name=f"eval judge ({mode})",
        client_config=client_config,
        inputs=sent,
        key_of=lambda p: keys[p["id"]],
        input_id_of=lambda p: p["id"],
        work=score,
        finish=finish,
        work_dir=out / mode,
        store_name="scored.jsonl",
        total=len(sent),
        preflight=False,
        retry_failed=retry_failed,
        show_progress=show_progress,
        client=client,
    )
    records = result.outputs["records"]
    lights = [light(r) for r in records]
    new = result.stats.processed
    return {
        "mode": mode,
        "scored": len(records),
        "judged": len(sent),
        "failed_requests": sum(result.failure_reasons.values()),
        **judge_quality(lights),
        "calibration": calibrate(
            lights, settings.target_precision, settings.calibration_min_selected
        ),
        "generated_tokens_per_pair": _tokens_per_pair(records),
        "scored_this_run": new,
        "elapsed_s": round(result.elapsed_s, 3),
        "pairs_per_s": result.per_second(new) if new else None,
        "seconds_per_pair": round(result.elapsed_s / new, 4) if new else None,
        "prefix_cache": result.prefix_cache,
        "records_path": str(out / mode / "probes.scored.jsonl"),
    }


async def evaluate_judge_async(
    probes_path: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    *,
    client_config: ClientConfig,
    settings: CurateConfig | None = None,
    evaluation: JudgeEvalConfig | None = None,
    preflight: bool = True,
    retry_failed: bool = False,
    show_progress: bool = True,
) -> dict[str, Any]:
    """``probes_path``: seed pairs or a labelled file (``None``: the built-in probe seed).
    ``settings`` holds the judge's decoding, template, guard, probe kinds and seed and
    the calibration target; ``evaluation`` the modes and how many seed pairs to use."""
    settings = settings or CurateConfig()
    evaluation = evaluation or JudgeEvalConfig()
    for mode in evaluation.modes:
        pick("register_scorers", mode)  # an unknown mode fails before any request
    registered, enabled = probe_kinds(settings)
    probe_set = load_probes(
        probes_path if probes_path is not None else settings.probes,
        registered,
        seed=settings.probe_seed,
        enabled=enabled,
        limit_groups=evaluation.probe_groups,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    previous = _previous(out / RESULT_NAME)
    client = client_config.make_client()
    try:
        preflight_report = await client.preflight() if preflight else None
        modes = {}
        for mode in evaluation.modes:
            modes[mode] = await _one_mode(
                probe_set, out, mode, settings, client_config, client,
                retry_failed=retry_failed, show_progress=show_progress,
            )  # fmt: skip
            _keep_timing(modes[mode], previous.get(mode))
    finally:
        await client.aclose()
    report = {
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "model": client_config.model,
        "base_urls": client.base_urls,
        "preflight": preflight_report,
        "probes": probe_set.describe(),
        "template": settings.template,
        "endpoint": settings.endpoint,
        "injection_guard": settings.injection_guard,
        "target_precision": settings.target_precision,
        "modes": modes,
        "paper_table_7": PAPER_TABLE_7,
        "path": str(out / RESULT_NAME),
    }
    write_json_atomic(out / RESULT_NAME, report)
    return report


def _previous(path: Path) -> dict[str, Any]:
    """The modes of an earlier run of the same evaluation (for a resumed run's timing)."""
    try:
        modes = json.loads(path.read_text(encoding="utf-8")).get("modes")
    except (OSError, ValueError):
        return {}
    return modes if isinstance(modes, dict) else {}


def _keep_timing(mode: dict[str, Any], before: Any) -> None:
    """A resumed mode that scored nothing new keeps the timing measured when it did."""
    if mode["scored_this_run"] or not isinstance(before, dict):
        return
    if before.get("scored") == mode["scored"] and before.get("pairs_per_s"):
        for key in ("pairs_per_s", "seconds_per_pair", "elapsed_s"):
            mode[key] = before.get(key)
        mode["timing_from_earlier_run"] = True


# --- the table, as `humpback eval judge` prints it and the report shows it -----------------


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _hist(histogram: dict[str, int]) -> str:
    return " ".join(f"{k}:{v}" for k, v in histogram.items() if k != "None") + (
        f" none:{histogram['None']}" if histogram.get("None") else ""
    )


def judge_table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the Table 7 comparison: one column per mode."""
    modes = report.get("modes") or {}
    names = list(modes)
    rows: list[list[str]] = []

    def row(label: str, get: Any, digits: int = 2) -> None:
        rows.append([label, *(_fmt(get(modes[m]), digits) for m in names)])

    row("probes (good / bad)", lambda q: f"{q['positives']} / {q['negatives']}")
    row("A4 precision", lambda q: q["a4"]["precision"])
    row("A4 recall", lambda q: q["a4"]["recall"])
    row("A5 precision", lambda q: q["a5"]["precision"])
    row("A5 recall", lambda q: q["a5"]["recall"])
    row("ROC-AUC", lambda q: q["roc_auc"])
    row("ranked by", lambda q: q["ranked_by"])
    row("parse failed", lambda q: q["parse_failed_rate"], 3)
    row("recovered (re-asked)", lambda q: q["recovered_rate"], 3)
    row("generated tokens / pair", lambda q: q["generated_tokens_per_pair"], 1)
    row("pairs / s", lambda q: q["pairs_per_s"])
    row("s / pair", lambda q: q["seconds_per_pair"], 3)
    kinds = sorted(
        {k for q in modes.values() for k in q["kinds"]}, key=lambda k: (k != "positive", k)
    )
    for kind in kinds:
        row(
            f"{kind}: mean (scores)",
            lambda q, k=kind: (
                f"{_fmt(q['kinds'][k]['mean_expected_score'] or q['kinds'][k]['mean_score'])}"
                f" ({_hist(q['kinds'][k]['histogram'])})"
                if k in q["kinds"]
                else None
            ),
        )
    row(
        "injected shift (vs twins)",
        lambda q: f"{q['injection']['shift']:+.2f}" if q.get("injection") else None,
    )
    target = report.get("target_precision")
    row(
        f"calibrated cut (precision >= {target})",
        lambda q: (
            f"{q['calibration']['cut']:g} (recall {_fmt(q['calibration']['recall'])})"
            if q["calibration"]["cut"] is not None
            else f"not reached (best {_fmt(q['calibration']['best_precision'])})"
        ),
    )
    return ["measure", *names], rows
