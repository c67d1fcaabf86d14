"""The arithmetic of a pairwise comparison: both orders combined, win and tie rates, a
bootstrap interval.

A verdict in one order is the judge's probability that the *model's* answer is the better
one: P(A) when the model's answer was shown first, P(B) when it was shown second. The two
orders are averaged, so a judge that always prefers the first position (P(A) = 0.8 in
both orders) gives 0.5: the position bias cancels. The win rate is the mean of these
per-example preferences (AlpacaEval's weighted win rate, in percent; a tie counts half).

Hard outcomes come from the picks of the two orders: a *win* when every judged order picks
the model, a *loss* when every one picks the other answer, a *tie* when they disagree (the
judge followed the position, not the answer) or the two answers are identical.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Sequence
from typing import Any

WIN, TIE, LOSS, FAILED = "win", "tie", "loss", "failed"


def model_probability(p_first: float, model_first: bool) -> float:
    """P(the model's answer is better) from P(the first answer is better) in one order."""
    return p_first if model_first else 1.0 - p_first


def combine_orders(p_model_by_order: Sequence[float | None]) -> tuple[float | None, str]:
    """The example's preference for the model and its outcome, from the orders judged.

    ``None`` marks an order the judge gave no usable answer to; when all are ``None`` the
    example is ``failed`` (counted, never silently dropped).
    """
    judged = [p for p in p_model_by_order if p is not None]
    if not judged:
        return None, FAILED
    preference = sum(judged) / len(judged)
    picks = {_pick(p) for p in judged}
    if picks == {WIN}:
        return preference, WIN
    if picks == {LOSS}:
        return preference, LOSS
    return preference, TIE


def _pick(p_model: float) -> str:
    if p_model > 0.5:
        return WIN
    if p_model < 0.5:
        return LOSS
    return TIE


def bootstrap_interval(
    values: Sequence[float], *, samples: int = 1000, seed: int = 0, confidence: float = 0.95
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean of ``values`` (seeded, so reproducible).

    None for fewer than two values: one example says nothing about the spread.
    """
    n = len(values)
    if n < 2:
        return None
    rng = random.Random(f"bootstrap:{seed}")
    means = sorted(sum(rng.choices(values, k=n)) / n for _ in range(samples))
    tail = (1.0 - confidence) / 2.0
    low = means[max(0, math.floor(tail * samples))]
    high = means[min(samples - 1, math.ceil((1.0 - tail) * samples) - 1)]
    return low, high


def summarize(
    verdicts: Sequence[dict[str, Any]],
    *,
    samples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Win rate (percent) with its interval, hard outcomes, position statistics, lengths.

    ``verdicts`` carry ``preference`` (P(model better), None when failed), ``outcome``,
    ``orders`` (each with ``p_model`` and ``model_first``) and the two answers' lengths.
    """
    outcomes = Counter(v["outcome"] for v in verdicts)
    judged = [v for v in verdicts if v["outcome"] != FAILED]
    preferences = [float(v["preference"]) for v in judged]
    interval = bootstrap_interval(preferences, samples=samples, seed=seed, confidence=confidence)
    first_picks = orders_judged = consistent = both_orders = 0
    for v in judged:
        picks = []
        for order in v.get("orders") or []:
            p = order.get("p_model")
            if p is None:
                continue
            orders_judged += 1
            p_first = p if order["model_first"] else 1.0 - p
            first_picks += p_first > 0.5
            picks.append(_pick(p))
        if len(picks) == 2:
            both_orders += 1
            consistent += picks[0] == picks[1]
    n = len(judged)

    def pct(x: float) -> float:
        return round(100.0 * x, 2)

    return {
        "examples": len(verdicts),
        "judged": n,
        "failed": outcomes[FAILED],
        "win_rate": pct(sum(preferences) / n) if n else None,
        "win_rate_ci": [pct(interval[0]), pct(interval[1])] if interval else None,
        "confidence": confidence,
        "bootstrap_samples": samples,
        "bootstrap_seed": seed,
        "wins": outcomes[WIN],
        "ties": outcomes[TIE],
        "losses": outcomes[LOSS],
        "tie_rate": pct(outcomes[TIE] / n) if n else None,
        "discrete_win_rate": pct((outcomes[WIN] + 0.5 * outcomes[TIE]) / n) if n else None,
        # Position bias, visible: how often the first answer won, and how often the two
        # orders agreed on the same answer.
        "first_position_rate": pct(first_picks / orders_judged) if orders_judged else None,
        "order_agreement": pct(consistent / both_orders) if both_orders else None,
        "mean_length_model": _mean(v["length_model"] for v in judged),
        "mean_length_baseline": _mean(v["length_baseline"] for v in judged),
    }


def _mean(values: Any) -> float | None:
    values = list(values)
    return round(sum(values) / len(values), 1) if values else None
