"""Selectors: which scored pairs become the curated set A(k).

A selector gets light records (key, id, score, expected_score, score_status) and returns
the ones to keep; the curate stage then streams the full records of those keys.

What each built-in does, on the ranking value (the expected score in ``logprobs`` mode,
else the integer score):

* ``threshold`` (the default, k = 4: the paper's A4): an integer k keeps score >= k, where
  the score is the judge's own (``paper``), the constrained token (``constrained``) or the
  most probable digit, ties to the lower one (``logprobs``): in every mode what greedy
  decoding of the rubric answers. A fractional k (4.5, the paper's A5 definition) keeps
  expected score >= k in ``logprobs`` mode.
* ``calibrated`` (``--target-precision P``): the lowest cut whose precision on the run's
  canaries reaches P; the cut is reported. Needs canaries.
* ``target_yield`` / ``quantile``: a fixed share of the candidates, whatever their scores.
"""

from __future__ import annotations

import math
from typing import Any


def _rank_value(record: dict[str, Any]) -> float | None:
    value = record.get("expected_score")
    return value if value is not None else record.get("score")


def threshold_selector(scored: list[dict[str, Any]], options: dict[str, Any]) -> list[dict]:
    """score >= k. A fractional k (the paper's A5 is "score >= 4.5") is compared with the
    expected score when the logprobs mode gave one, else with the integer score."""
    k = float(options["threshold"])
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


def calibrated_selector(scored: list[dict[str, Any]], options: dict[str, Any]) -> list[dict]:
    """Ranking value >= ``cut``: the lowest cut whose precision on the run's canaries
    reached ``target_precision`` (chosen by the curate stage, see
    :func:`~humpback_plugin.stages.curate.quality.calibrate`). No cut reached it: nothing
    is selected, and the summary says how close the judge came."""
    cut = options.get("cut")
    if cut is None:
        return []
    return [r for r in scored if (v := _rank_value(r)) is not None and v >= cut]


BUILTIN_SELECTORS = {
    "threshold": threshold_selector,
    "target_yield": target_yield_selector,
    "quantile": quantile_selector,
    "calibrated": calibrated_selector,
}
