"""The derived rows of the report's tables, computed from :class:`RunData`.

Each helper turns what :func:`~humpback_plugin.run.report.collect.collect` read (and the
manifest) into plain rows: stages with counts and yield, rejections per reason, lengths
beside the paper's Table 2, throughput and tokens, score histograms, the flattened config.
:mod:`~humpback_plugin.run.report.tables` lays them out as tables.
"""

from __future__ import annotations

import json
from typing import Any

from humpback_plugin.core.layout import MANIFEST_NAME, stage_names
from humpback_plugin.run.report.collect import (
    SCORE_BUCKETS,
    PairLengths,
    RunData,
    Usage,
    as_int,
    as_number,
)

STAGES = tuple(stage_names(2))  # the paper runs two iterations

# Paper, Table 2: (instruction mean, std, output mean, std) in characters.
PAPER_LENGTHS: dict[str, tuple[float, float, float, float]] = {
    "seed": (148, 322, 1072, 818),
    "A5(2)": (115, 175, 1663, 616),
    "A4(2)": (206, 298, 1985, 649),
    "augmented": (352, 134, 1722, 653),
}


# --- formatting ----------------------------------------------------------------------------


def truncate(text: Any, limit: int) -> str:
    text = "" if text is None else str(text)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… [{len(text) - limit:,} more characters]"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 90:
        return f"{seconds:.1f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _records(entries: Any) -> int | None:
    """Records summed over a manifest ``inputs``/``outputs`` list, None when unknown."""
    if not isinstance(entries, list):
        return None
    counts = [e.get("records") for e in entries if isinstance(e, dict)]
    counts = [c for c in counts if isinstance(c, int)]
    return sum(counts) if counts else None


def _stage_inputs(data: RunData, name: str) -> int | None:
    stats = data.stats(name)
    return _int_or_none(stats.get("inputs", stats.get("segments_in")))


# --- derived rows --------------------------------------------------------------------------


def stage_rows(data: RunData) -> list[dict[str, Any]]:
    """One row per pipeline stage: status, model, counts, yield, time."""
    rows = []
    names = list(STAGES) + [n for n in data.stages if n not in STAGES]
    for name in names:
        stage = data.stage(name)
        stats = data.stats(name)
        inputs = _records(stage.get("inputs"))
        if inputs is None:
            inputs = _stage_inputs(data, name)
        # The selected set is a stage's yield (curate: curated, not scored); otherwise the
        # first output is the stage's product (segments, not the rejected side file).
        outputs = _int_or_none(stats.get("selected"))
        if outputs is None:
            listed = stage.get("outputs")
            outputs = _records(listed[:1] if isinstance(listed, list) else None)
        if outputs is None:
            outputs = _int_or_none(stats.get("kept"))
        elapsed = as_number(stage.get("elapsed_s"))
        if elapsed is None:
            elapsed = as_number(stats.get("elapsed_s"))
        rows.append(
            {
                "stage": name,
                "status": stage.get("status") or "not in manifest",
                "iteration": stage.get("iteration"),
                "model": stage.get("model") or "",
                "inputs": inputs,
                "outputs": outputs,
                "yield": f"{outputs / inputs:.1%}" if inputs and outputs is not None else "—",
                "elapsed": duration(elapsed),
            }
        )
    return rows


def filter_tables(data: RunData) -> dict[str, list[tuple[str, int, str]]]:
    """Rejections per reason per stage: (reason, count, share of the stage's inputs).

    The manifest's ``rejected_by_reason`` counts come first; without them, the reasons
    counted in the stage's side file of rejected rows.
    """
    tables = {}
    for name in STAGES:
        reasons = data.stats(name).get("rejected_by_reason")
        if isinstance(reasons, dict) and reasons:
            counts = {str(k): as_int(v) for k, v in reasons.items()}
        elif data.rejected_reasons.get(name):
            counts = dict(data.rejected_reasons[name])
        else:
            continue
        inputs = _stage_inputs(data, name)
        if inputs is None:
            inputs = _records(data.stage(name).get("inputs"))
        tables[name] = [
            (reason, count, f"{count / inputs:.1%}" if inputs else "—")
            for reason, count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        ]
    return tables


def length_rows(data: RunData) -> list[dict[str, Any]]:
    """Our mean ± std (characters) beside the paper's Table 2 where it has a figure."""
    rows = []

    def add(label: str, lengths: PairLengths | None, paper: str | None, note: str = "") -> None:
        ref = PAPER_LENGTHS.get(paper) if paper else None
        rows.append(
            {
                "label": label,
                "n": lengths.output.count if lengths else 0,
                "instruction": lengths.instruction.describe() if lengths else "—",
                "output": lengths.output.describe() if lengths else "—",
                "paper_instruction": f"{ref[0]:.0f} ± {ref[1]:.0f}" if ref else "—",
                "paper_output": f"{ref[2]:.0f} ± {ref[3]:.0f}" if ref else "—",
                "note": note,
            }
        )

    add("seed", data.lengths.get("seed"), "seed")
    add("segments (text)", data.lengths.get("segments"), None, "output side only")
    add("augmented, all candidates", data.lengths.get("augmented"), "augmented")
    for k, it in sorted(data.iterations.items()):
        if not it.has_scored and not it.has_curated:
            continue  # no empty rows for iterations that never ran
        paper5 = "A5(2)" if k == 2 else None
        paper4 = "A4(2)" if k == 2 else None
        add(f"A5({k}): score = 5", it.lengths_by_bucket.get("5"), paper5)
        add(f"A4({k}): score ≥ 4", it.score_at_least_4, paper4)
        if it.has_curated:
            threshold = data.stats(f"curate_{k}").get("threshold")
            note = f"threshold {threshold}" if threshold is not None else ""
            add(f"curated({k}): selected", it.curated, None, note)
    return rows


def throughput_rows(data: RunData) -> list[dict[str, Any]]:
    """Time, request rate and token use of the model-calling stages."""
    rows = []
    callers: list[tuple[str, Usage, int | None]] = [
        ("augment", data.augment_usage, data.records_in(data.layout.candidates))
    ]
    for k, it in sorted(data.iterations.items()):
        callers.append((f"curate_{k}", it.usage, it.scored_records if it.has_scored else None))
    for name, usage, records in callers:
        stage, stats = data.stage(name), data.stats(name)
        if not stage and not stats and records is None:
            continue
        elapsed = as_number(stats.get("elapsed_s"))
        if elapsed is None:
            elapsed = as_number(stage.get("elapsed_s"))
        prompt = _int_or_none(stats.get("prompt_tokens"))
        completion = _int_or_none(stats.get("completion_tokens"))
        source = "manifest"
        if prompt is None and completion is None and usage.requests:
            prompt, completion, source = usage.prompt_tokens, usage.completion_tokens, "records"
        requests = _int_or_none(stats.get("scored", stats.get("inputs")))
        if requests is None:
            requests = records
        rate = as_number(stats.get("requests_per_s"))
        if rate is None and requests and elapsed:
            rate = requests / elapsed
        rows.append(
            {
                "stage": name,
                "model": stage.get("model") or "",
                "servers": len(stage.get("server_urls") or []) or "—",
                "requests": requests,
                "elapsed": duration(elapsed),
                "requests_per_s": f"{rate:.2f}" if rate else "—",
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "completion_tokens_per_s": (
                    f"{completion / elapsed:.0f}" if completion and elapsed else "—"
                ),
                "failed": _int_or_none(stats.get("failed")),
                "tokens_from": source if prompt is not None or completion is not None else "—",
            }
        )
    return rows


def score_histogram(data: RunData, k: int) -> dict[str, int]:
    """Counts per score from the records, else from the manifest's stats."""
    it = data.iterations.get(k)
    if it and it.has_scored:
        return {b: it.histogram.get(b, 0) for b in SCORE_BUCKETS}
    stats_hist = data.stats(f"curate_{k}").get("score_histogram")
    if isinstance(stats_hist, dict) and stats_hist:
        return {b: as_int(stats_hist.get(b, 0)) for b in SCORE_BUCKETS}
    return {}


def config_rows(config: Any, prefix: str = "", limit: int = 60) -> list[tuple[str, str]]:
    """The config flattened to dotted keys, long values shortened."""
    rows: list[tuple[str, str]] = []
    if not isinstance(config, dict):
        return rows
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            rows.extend(config_rows(value, f"{name}.", limit))
        else:
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            rows.append((name, truncate(text, 160)))
        if len(rows) >= limit:
            rows = rows[:limit]
            rows.append(("…", f"more keys in {MANIFEST_NAME}"))
            break
    return rows
