"""Canaries: labelled probes mixed into every curation, so each run measures its judge.

A few percent of the stream (``curate.canary_share``, at least ``canary_min``, at most
``canary_max``, in whole seed pairs' groups) are probes with a known label. The judge
scores them like any candidate, in the same requests' flow; the stage then keeps them out
of every dataset (the scored and selected files are written from the candidates' keys
only) and writes them, with their scores and labels, to ``<scored>.canaries.jsonl``. The
run's precision, recall and ROC-AUC on them go into the summary (and the run's manifest
and report), and the ``calibrated`` selector picks its cut on them.

Which probes, and where they sit in the stream, depends only on the probe source, the
probe seed and the number of candidates, so a re-run (after a SIGKILL, say) sends the same
stream, resumes the same canaries and reports the same figures; iterations 1 and 2 of a
run see the same canaries, so M0's and M1's judges are compared on the same probes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from humpback_plugin.core.config import CurateConfig
from humpback_plugin.core.errors import UsageError
from humpback_plugin.core.layout import side_path
from humpback_plugin.core.runner import count_lines
from humpback_plugin.core.store import RecordStore, finalize
from humpback_plugin.plugins import components, pick
from humpback_plugin.stages.curate.probes import (
    ProbeMaker,
    ProbeSet,
    canary_target,
    interleave,
    load_probes,
    pick_canaries,
)
from humpback_plugin.stages.curate.quality import calibrate, judge_quality, rank_value

# Fields a scored probe keeps (the store's key and the candidate-only fields go).
PROBE_FIELDS = ("label", "kind", "group", "base_id")


def probe_kinds(settings: CurateConfig) -> tuple[dict[str, ProbeMaker], list[str]]:
    """Every registered probe kind (a kind may derive from any) and the enabled names."""
    registered = components("register_probe_kinds")
    enabled = settings.probe_kinds if settings.probe_kinds is not None else list(registered)
    for name in enabled:
        pick("register_probe_kinds", name)  # an unknown name lists the registered ones
    return registered, list(enabled)


def canaries_path_for(scored_path: str | os.PathLike) -> Path:
    """Where a curation's scored probes go: ``<scored>.canaries.jsonl`` beside it."""
    return side_path(scored_path, "canaries")


@dataclass
class CanaryPlan:
    """The probes one curation mixes in, and the stream's size."""

    candidates: int
    canaries: list[dict[str, Any]] = field(default_factory=list)
    probe_set: ProbeSet | None = None
    # The canaries sent to the judge (as candidate pairs); the others share a judgement.
    sent: list[dict[str, Any]] = field(default_factory=list)

    def stream(self, candidates: Iterator[dict[str, Any]], seed: int) -> Iterator[Any]:
        return interleave(candidates, self.sent, self.candidates, seed)

    def describe(self, path: Path | None) -> dict[str, Any]:
        if self.probe_set is None:
            return {"count": 0}
        positives = sum(p["label"] for p in self.canaries)
        return {
            "count": len(self.canaries),
            "judged": len(self.sent),
            "positives": positives,
            "negatives": len(self.canaries) - positives,
            "share": round(len(self.canaries) / self.candidates, 4) if self.candidates else None,
            "path": str(path) if path else None,
            **{
                k: v
                for k, v in self.probe_set.describe().items()
                if k not in ("probes", "positives", "negatives")
            },
            "probes_available": len(self.probe_set.probes),
        }


def count_candidates(
    path: str | os.PathLike, shard: tuple[int, int] | None, iterate: Callable[[], Iterator]
) -> int:
    """Candidates in the stream: a line count for plain JSONL, else one pass."""
    if shard is None:
        lines = count_lines(path)
        if lines is not None:
            return lines
    return sum(1 for _ in iterate())


def plan_canaries(
    settings: CurateConfig,
    candidates: int,
    shard: tuple[int, int] | None,
    probes_path: str | os.PathLike | None,
) -> CanaryPlan:
    """The canaries of one curation (none when ``settings.canaries`` is off)."""
    plan = CanaryPlan(candidates=candidates)
    if settings.selector == "calibrated" and not settings.canaries:
        raise UsageError("the calibrated selector chooses its cut on canaries: enable them")
    if not settings.canaries:
        return plan
    registered, enabled = probe_kinds(settings)
    plan.probe_set = load_probes(
        probes_path or settings.probes, registered, seed=settings.probe_seed, enabled=enabled
    )
    wanted = canary_target(
        candidates, settings.canary_share, settings.canary_min, settings.canary_max
    )
    plan.canaries = pick_canaries(plan.probe_set, wanted, shard)
    return plan


def canary_record(probe: dict[str, Any]) -> dict[str, Any]:
    """A probe as the judge's input: a candidate pair whose segment is the probe itself."""
    return {**probe, "segment_id": probe["id"], "canary": True}


def scored_probes(store: RecordStore, keys: list[str]) -> list[dict[str, Any]]:
    """The scored canaries, in the plan's order, without the store's key."""
    return [{k: v for k, v in r.items() if k != "key"} for r in store.ordered(keys)]


def light(record: dict[str, Any]) -> dict[str, Any]:
    """What selectors and the metrics need of a scored probe."""
    keep = ("id", "label", "kind", "base_id", "score", "expected_score", "score_status")
    return {k: record.get(k) for k in keep}


def calibration(settings: CurateConfig, probes: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The calibrated selector's cut, chosen on the scored canaries (else None)."""
    if settings.selector != "calibrated":
        return None
    return calibrate(probes, settings.target_precision, settings.calibration_min_selected)


def selection_predicate(
    selector_name: str,
    select: Callable[[list[dict[str, Any]], dict[str, Any]], list[dict[str, Any]]],
    options: dict[str, Any],
    probes: list[dict[str, Any]],
    lowest_selected: float | None,
) -> Callable[[dict[str, Any]], bool]:
    """Which canaries the run's own selection would keep: the same cut for the threshold
    and calibrated selectors; for a share-based or plugin selector, every canary ranked at
    or above the lowest candidate it kept."""
    if selector_name in ("threshold", "calibrated"):
        kept = {r["id"] for r in select([dict(p) for p in probes], dict(options))}
        return lambda r: r["id"] in kept
    if lowest_selected is None:
        return lambda r: False
    return lambda r: (
        (v := rank_value(r, r.get("expected_score") is not None)) is not None
        and (v >= lowest_selected)
    )


def write_canaries(records: list[dict[str, Any]], path: Path) -> int:
    return finalize(records, path)


def quality_of(
    probes: list[dict[str, Any]], predicate: Callable[[dict[str, Any]], bool] | None
) -> dict[str, Any] | None:
    return judge_quality(probes, predicate) if probes else None
