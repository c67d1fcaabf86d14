"""How well a judge separates good pairs from bad ones, measured on labelled probes.

Every function takes scored probe records: ``label`` (1 good, 0 bad), ``kind``, ``score``
(1-5 or ``None`` when the judge gave none), optionally ``expected_score`` (logprobs mode),
``score_status`` and ``base_id`` (the un-injected twin of an ``injected`` probe).

* **Precision and recall at A4 and A5**, the paper's Table 7 measures: a probe is
  *selected* at A4 when its integer score is >= 4 (>= 5 for A5), as the default threshold
  selector does; a probe without a score is never selected. Precision is ``None`` when
  nothing is selected.
* **ROC-AUC** over the ranking value (the expected score when every scored probe has one,
  else the integer score; no score ranks lowest): the chance that a random good probe
  ranks above a random bad one, ties counting half (Mann-Whitney). 1.0 is a perfect judge,
  0.5 one that cannot tell, 0.0 an inverted one.
* **Per kind**: count, mean score, mean expected score and the score histogram.
* **Injection shift**: mean ranking value of the ``injected`` probes minus that of their
  twins (the same bad answers without the score line): how far a "Score: 5" in the text
  moves the judge.
* :func:`calibrate` picks the lowest cut on the ranking value whose precision on the
  probes reaches a target: the ``calibrated`` selector's threshold.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

SCORE_KEYS = ("1", "2", "3", "4", "5", "None")
# Bins of the expected score, 1.00 to 5.00 by 0.25 (as the report draws candidates).
EXPECTED_BINS = 17


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def uses_expected(records: list[dict[str, Any]]) -> bool:
    """Rank on the expected score when every scored probe has one (logprobs mode)."""
    scored = [r for r in records if r.get("score") is not None]
    return bool(scored) and all(r.get("expected_score") is not None for r in scored)


def rank_value(record: dict[str, Any], expected: bool) -> float | None:
    value = record.get("expected_score") if expected else None
    return value if value is not None else record.get("score")


def precision_recall(
    records: list[dict[str, Any]], selected: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """Precision and recall of the probes ``selected`` picks, with the counts."""
    tp = sum(1 for r in records if r["label"] and selected(r))
    fp = sum(1 for r in records if not r["label"] and selected(r))
    positives = sum(1 for r in records if r["label"])
    return {
        "precision": _round(tp / (tp + fp)) if tp + fp else None,
        "recall": _round(tp / positives) if positives else None,
        "selected": tp + fp,
        "true_positives": tp,
        "false_positives": fp,
    }


def at_score(k: int) -> Callable[[dict[str, Any]], bool]:
    """Selected when the integer score is >= k."""
    return lambda r: r.get("score") is not None and r["score"] >= k


def roc_auc(records: list[dict[str, Any]], expected: bool | None = None) -> float | None:
    """Mann-Whitney AUC of the ranking value (ties count half, no score ranks lowest)."""
    expected = uses_expected(records) if expected is None else expected
    lowest = float("-inf")
    pos = [rank_value(r, expected) for r in records if r["label"]]
    neg = [rank_value(r, expected) for r in records if not r["label"]]
    if not pos or not neg:
        return None
    pos_v = [lowest if v is None else float(v) for v in pos]
    neg_v = sorted(lowest if v is None else float(v) for v in neg)
    # For each positive: negatives below it count 1, equal ones 1/2 (two bisections).
    wins = 0.0
    for v in pos_v:
        below = bisect.bisect_left(neg_v, v)
        equal = bisect.bisect_right(neg_v, v) - below
        wins += below + equal / 2
    return _round(wins / (len(pos_v) * len(neg_v)))


def histogram(records: Iterable[dict[str, Any]]) -> dict[str, int]:
    counts = Counter(str(r.get("score")) for r in records)
    return {k: counts[k] for k in SCORE_KEYS if counts[k]}


def expected_bins(records: Iterable[dict[str, Any]]) -> list[int]:
    bins = [0] * EXPECTED_BINS
    for r in records:
        value = r.get("expected_score")
        if value is not None and 1 <= value <= 5:
            bins[round((value - 1) * 4)] += 1
    return bins


def by_kind(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Count, mean score, mean expected score and histogram of each kind."""
    kinds: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        kinds.setdefault(str(r.get("kind")), []).append(r)
    out = {}
    for kind, rows in sorted(kinds.items(), key=lambda kv: (kv[0] != "positive", kv[0])):
        scores = [r["score"] for r in rows if r.get("score") is not None]
        expected = [r["expected_score"] for r in rows if r.get("expected_score") is not None]
        out[kind] = {
            "label": rows[0]["label"],
            "count": len(rows),
            "mean_score": _round(_mean(scores), 3),
            "mean_expected_score": _round(_mean(expected), 3),
            "histogram": histogram(rows),
        }
    return out


def injection_shift(records: list[dict[str, Any]], expected: bool) -> dict[str, Any] | None:
    """Mean ranking value of ``injected`` probes minus that of their twins (both scored)."""
    by_id = {r["id"]: r for r in records}
    pairs = [
        (r, by_id[r["base_id"]])
        for r in records
        if r.get("kind") == "injected" and r.get("base_id") in by_id
    ]
    values = [
        (a, b)
        for r, twin in pairs
        if (a := rank_value(r, expected)) is not None
        and (b := rank_value(twin, expected)) is not None
    ]
    if not values:
        return None
    injected_mean = _mean([float(a) for a, _ in values])
    base_mean = _mean([float(b) for _, b in values])
    assert injected_mean is not None and base_mean is not None
    return {
        "pairs": len(values),
        "value": "expected_score" if expected else "score",
        "injected_mean": _round(injected_mean, 3),
        "base_mean": _round(base_mean, 3),
        "shift": _round(injected_mean - base_mean, 3),
        "injected_scored_5": sum(1 for r, _ in pairs if r.get("score") == 5),
        "base_scored_5": sum(1 for _, t in pairs if t.get("score") == 5),
    }


def status_rates(records: list[dict[str, Any]]) -> dict[str, Any]:
    status = Counter(str(r.get("score_status") or "ok") for r in records)
    n = len(records)
    return {
        "status": dict(sorted(status.items())),
        "parse_failed_rate": _round(status["failed"] / n) if n else None,
        "recovered_rate": _round(status["recovered"] / n) if n else None,
    }


def judge_quality(
    records: list[dict[str, Any]],
    selected: Callable[[dict[str, Any]], bool] | None = None,
) -> dict[str, Any]:
    """Every measure of a judge on these scored probes; ``selected`` adds the precision
    and recall of the run's own selection."""
    expected = uses_expected(records)
    positives = sum(1 for r in records if r["label"])
    quality: dict[str, Any] = {
        "probes": len(records),
        "positives": positives,
        "negatives": len(records) - positives,
        "a4": precision_recall(records, at_score(4)),
        "a5": precision_recall(records, at_score(5)),
        "roc_auc": roc_auc(records, expected),
        "ranked_by": "expected_score" if expected else "score",
        **status_rates(records),
        "kinds": by_kind(records),
        "injection": injection_shift(records, expected),
        "histograms": {
            "positive": histogram(r for r in records if r["label"]),
            "negative": histogram(r for r in records if not r["label"]),
        },
    }
    if expected:
        quality["expected_bins"] = {
            "positive": expected_bins(r for r in records if r["label"]),
            "negative": expected_bins(r for r in records if not r["label"]),
        }
    if selected is not None:
        quality["selection"] = precision_recall(records, selected)
    return quality


def calibrate(
    records: list[dict[str, Any]], target_precision: float, min_selected: int = 3
) -> dict[str, Any]:
    """The lowest cut on the ranking value whose probe precision reaches the target.

    The lowest such cut keeps the most good pairs (recall) at the precision asked for. A
    cut must select at least ``min_selected`` probes, so one lucky probe at the top is not
    "precision 1.0". When no cut reaches the target, ``cut`` is ``None`` (select nothing)
    and ``best_precision`` says how close the judge came.
    """
    expected = uses_expected(records)
    values = sorted(
        {v for r in records if (v := rank_value(r, expected)) is not None}, reverse=True
    )
    positives = sum(1 for r in records if r["label"])
    chosen: dict[str, Any] | None = None
    best: tuple[float, float] | None = None  # (precision, cut)
    for cut in values:
        picked = [r for r in records if (v := rank_value(r, expected)) is not None and v >= cut]
        if len(picked) < min_selected:
            continue
        tp = sum(1 for r in picked if r["label"])
        precision = tp / len(picked)
        if best is None or precision > best[0]:
            best = (precision, cut)
        if precision >= target_precision:
            chosen = {
                "cut": cut,
                "precision": _round(precision),
                "recall": _round(tp / positives) if positives else None,
                "selected_probes": len(picked),
            }
    result: dict[str, Any] = {
        "target_precision": target_precision,
        "ranked_by": "expected_score" if expected else "score",
        "probes": len(records),
        "min_selected": min_selected,
        "reached": chosen is not None,
        "cut": None,
        "best_precision": _round(best[0]) if best else None,
        "best_precision_cut": best[1] if best else None,
    }
    if chosen is not None:
        result.update(chosen)
    return result
