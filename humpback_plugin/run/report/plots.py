"""The report's plots: matplotlib PNGs as base64, to embed as ``data:`` images.

matplotlib is optional (``pip install 'humpback-plugin[report]'``); without it
:func:`make_plots` returns nothing and the page has the tables only.
"""

from __future__ import annotations

import base64
import io
import math
from typing import Any

from humpback_plugin.run.report.collect import LENGTH_EDGES, SCORE_BUCKETS, LengthStats, RunData
from humpback_plugin.run.report.rows import score_histogram
from humpback_plugin.run.report.tables import LENGTHS_PLOT, score_plot

SCORE_COLORS = ["#c0392b", "#e67e22", "#f1c40f", "#27ae60", "#1e8449", "#7f8c8d"]


def plots_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _figure_png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=96, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def make_plots(data: RunData) -> dict[str, str]:
    """Base64 PNGs by plot name; empty when matplotlib is not installed."""
    if not plots_available():
        return {}
    import matplotlib

    matplotlib.use("Agg")  # no display needed, and none touched
    plots: dict[str, str] = {}
    for k in sorted(data.iterations):
        png = _scores_png(data, k)
        if png:
            plots[score_plot(k).name] = png
    png = _lengths_png(data)
    if png:
        plots[LENGTHS_PLOT.name] = png
    return plots


def _scores_png(data: RunData, k: int) -> str | None:
    """Score histogram of iteration ``k`` beside its expected scores (logprob mode)."""
    import matplotlib.pyplot as plt

    hist = score_histogram(data, k)
    if not any(hist.values()):
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    labels = [b for b in SCORE_BUCKETS if b != "unscored" or hist.get(b)]
    counts = [hist.get(b, 0) for b in labels]
    bars = axes[0].bar(labels, counts, color=SCORE_COLORS[: len(labels)])
    axes[0].bar_label(bars, labels=[f"{c:,}" for c in counts], fontsize=8)
    axes[0].set_title(f"Iteration {k}: score")
    axes[0].set_xlabel("score")
    axes[0].set_ylabel("candidates")
    it = data.iterations.get(k)
    expected = it.expected_scores if it else []
    if any(expected):
        centers = [1 + i / 4 for i in range(len(expected))]
        axes[1].bar(centers, expected, width=0.22, color="#2e86c1")
        axes[1].set_title(f"Iteration {k}: expected score (logprobs)")
        axes[1].set_xlabel("expected score")
    else:
        axes[1].text(0.5, 0.5, "no expected scores\n(paper scoring mode)", ha="center")
        axes[1].set_axis_off()
    return _figure_png(fig)


def _lengths_png(data: RunData) -> str | None:
    """Instruction and output length distributions of each set, on a log scale."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    groups = [("seed", data.lengths.get("seed")), ("augmented", data.lengths.get("augmented"))]
    groups.append(("segments", data.lengths.get("segments")))
    for k, it in sorted(data.iterations.items()):
        if it.score_at_least_4.output.count:
            groups.append((f"A4({k})", it.score_at_least_4))
        if it.lengths_by_bucket.get("5"):
            groups.append((f"A5({k})", it.lengths_by_bucket["5"]))
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    drawn = False
    for side, ax in zip(("instruction", "output"), axes, strict=True):
        low, high = math.inf, 0.0
        for label, lengths in groups:
            stats: LengthStats | None = getattr(lengths, side) if lengths else None
            if not stats or not stats.count:
                continue
            share = [c / stats.count for c in stats.bins]
            edges = [1.0] + LENGTH_EDGES[1:] + [LENGTH_EDGES[-1] * 10**0.1]
            ax.stairs(share, edges, label=f"{label} (n={stats.count:,})")
            used = [i for i, c in enumerate(stats.bins) if c]
            low = min(low, edges[used[0]])
            high = max(high, edges[used[-1] + 1])
            drawn = True
        ax.set_xscale("log")
        # Plain numbers at 1-2-5 steps; matplotlib's default minor labels collide on
        # ranges under a decade.
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        if low < high:
            ax.set_xlim(low / 1.5, high * 1.5)
        ax.set_title(f"{side} length")
        ax.set_xlabel("characters (log scale)")
        ax.set_ylabel("share of pairs")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    if not drawn:
        plt.close(fig)
        return None
    return _figure_png(fig)
