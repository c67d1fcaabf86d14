"""The report's judge-quality section: how well each iteration's judge curated.

Per iteration, from the curate stage's canaries (the labelled probes it mixed into its
stream, see ``stages/curate/canaries.py``): precision and recall at the run's own cut and
at A4/A5, ROC-AUC, the injected probes' shift and the calibrated cut; the mean score per
probe kind side by side across iterations (M0's and M1's judges on the same probes); a plot
of the score distributions of good probes, bad probes and the candidates; and, when
``humpback eval judge --run`` was run, its per-mode Table 7 comparison.

Figures come from the manifest's curate stats; a run without them (an older manifest)
falls back to the canaries files.
"""

from __future__ import annotations

import json
from typing import Any

from humpback_plugin.core.jsonl_io import iter_jsonl
from humpback_plugin.run.report.collect import SCORE_BUCKETS, RunData
from humpback_plugin.run.report.plots import _figure_png, plots_available
from humpback_plugin.run.report.tables import PlotRef, Section, Table
from humpback_plugin.stages.curate.evaluate import RESULT_NAME, judge_table
from humpback_plugin.stages.curate.quality import judge_quality

SECTION_KEY = "judge"
GOOD, BAD, CANDIDATES = "#1e8449", "#c0392b", "#7f8c8d"


def judge_plot(k: int) -> PlotRef:
    return PlotRef(f"judge_scores_{k}", f"scores of good probes, bad probes and candidates, {k}")


def iteration_quality(data: RunData, k: int) -> dict[str, Any] | None:
    """Iteration ``k``'s judge quality: the manifest's, else computed from its canaries."""
    quality = data.stats(f"curate_{k}").get("judge_quality")
    if isinstance(quality, dict) and quality.get("probes"):
        return quality
    path = data.layout.canaries(k)
    if not path.exists():
        return None
    records = [r for _, r in iter_jsonl(path, on_error=lambda *_: None) if "label" in r]
    return judge_quality(records) if records else None


def _fmt(value: Any) -> str:
    return "—" if value is None else f"{value:.2f}" if isinstance(value, float) else str(value)


def _pr(block: Any) -> str:
    if not isinstance(block, dict):
        return "—"
    return f"{_fmt(block.get('precision'))} / {_fmt(block.get('recall'))}"


def _qualities(data: RunData) -> dict[int, dict[str, Any]]:
    found = {k: iteration_quality(data, k) for k in sorted(data.iterations)}
    return {k: q for k, q in found.items() if q}


def _iterations_table(data: RunData, qualities: dict[int, dict[str, Any]]) -> Table:
    headers = ["iteration", "judge", "mode", "probes (good / bad)", "this cut: P / R"]
    headers += ["A4: P / R", "A5: P / R", "ROC-AUC", "injected shift", "parse failed"]
    headers += ["calibrated cut"]
    rows = []
    for k, q in qualities.items():
        stage, stats = data.stage(f"curate_{k}"), data.stats(f"curate_{k}")
        injection = q.get("injection") or {}
        calibration = stats.get("calibration") or {}
        cut = calibration.get("cut") if calibration else None
        if calibration and cut is None:
            cut_text = f"not reached (target {calibration.get('target_precision')})"
        else:
            cut_text = _fmt(cut) if calibration else "—"
        rows.append(
            [f"curate_{k}", stage.get("model") or "—", stats.get("mode") or "—",
             f"{q['positives']} / {q['negatives']}", _pr(q.get("selection")), _pr(q["a4"]),
             _pr(q["a5"]), _fmt(q.get("roc_auc")),
             f"{injection['shift']:+.2f}" if injection else "—",
             _fmt(q.get("parse_failed_rate")), cut_text]
        )  # fmt: skip
    return Table(
        "judge-iterations",
        "Per iteration",
        headers,
        rows,
        frozenset(range(3, 11)),
        intro="P / R: precision and recall on the canaries (good = a real seed answer). "
        "'this cut' is the run's own selection; A4 keeps score ≥ 4, A5 score 5. ROC-AUC: "
        "1 separates perfectly, 0.5 is chance. Injected shift: how far a 'Score: 5' line "
        "in a bad answer moved its score (0 is immune). The paper's Table 7: M0 .44 / .09, "
        "M1 .52 / .44, GPT-4 .88 / .92.",
    )


def _kinds_table(qualities: dict[int, dict[str, Any]]) -> Table:
    kinds: list[str] = []
    for q in qualities.values():
        kinds += [k for k in q["kinds"] if k not in kinds]
    rows = []
    for kind in kinds:
        row: list[Any] = [kind]
        for q in qualities.values():
            info = q["kinds"].get(kind)
            mean = None
            if info:
                mean = info.get("mean_expected_score") or info.get("mean_score")
            row.append(_fmt(mean))
        rows.append(row)
    headers = ["probe kind", *(f"mean score, curate_{k}" for k in qualities)]
    return Table(
        "judge-kinds",
        "Mean score per probe kind (the same probes in every iteration)",
        headers,
        rows,
        frozenset(range(1, len(headers))),
        intro="The expected score in logprobs mode, else the integer score. A good judge "
        "puts 'positive' near 5 and every other kind near 1 (blog: up to 3).",
    )


def _eval_tables(data: RunData) -> list[Table]:
    """One table per judge `humpback eval judge --run` evaluated (a folder per model)."""
    tables = []
    for path in sorted(data.layout.judge_eval.glob(f"*/{RESULT_NAME}")):
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(report, dict) or not report.get("modes"):
            continue
        headers, rows = judge_table(report)
        probes = report.get("probes") or {}
        tables.append(
            Table(
                f"judge-eval-{path.parent.name}",
                f"`humpback eval judge`: {report.get('model')} per scoring mode",
                headers,
                [list(r) for r in rows],
                frozenset(range(1, len(headers))),
                intro=f"{probes.get('probes')} probes ({probes.get('positives')} good) scored "
                f"in each mode on {report.get('created_at')}; from "
                f"`{data.layout.relative(path)}`.",
            )
        )
    return tables


def judge_section(data: RunData) -> Section:
    """The section, or one saying why it is empty."""
    qualities = _qualities(data)
    tables = []
    if qualities:
        tables = [_iterations_table(data, qualities), _kinds_table(qualities)]
    tables += _eval_tables(data)
    return Section(
        SECTION_KEY,
        "Judge quality",
        "Judge",
        intro="Every curation mixes labelled probes (canaries) into its stream: real seed "
        "answers and the same instructions with degraded answers. They never reach a "
        "dataset; they measure how well that iteration's judge told good from bad.",
        tables=tables,
        plots=[judge_plot(k) for k in qualities],
        empty="No canaries scored yet (or curation ran with --no-canaries).",
    )


# --- the plot ------------------------------------------------------------------------------


def _shares(histogram: dict[str, Any]) -> list[float]:
    counts = [float(histogram.get(b, 0) or 0) for b in SCORE_BUCKETS[:5]]
    total = sum(counts) + float(histogram.get("None", histogram.get("unscored", 0)) or 0)
    return [c / total if total else 0.0 for c in counts]


def judge_plots(data: RunData) -> dict[str, str]:
    """One PNG per iteration with canaries (none without matplotlib)."""
    if not plots_available():
        return {}
    import matplotlib

    matplotlib.use("Agg")
    images = {}
    for k, quality in _qualities(data).items():
        images[judge_plot(k).name] = _judge_png(data, k, quality)
    return images


def _judge_png(data: RunData, k: int, quality: dict[str, Any]) -> str:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    it = data.iterations.get(k)
    candidates = {b: it.histogram.get(b, 0) for b in SCORE_BUCKETS} if it else {}
    groups = [
        (f"good probes (n={quality['positives']})", quality["histograms"]["positive"], GOOD),
        (f"bad probes (n={quality['negatives']})", quality["histograms"]["negative"], BAD),
        (f"candidates (n={sum(candidates.values()):,})", candidates, CANDIDATES),
    ]
    width = 0.27
    for i, (label, histogram, color) in enumerate(groups):
        xs = [s + (i - 1) * width for s in range(1, 6)]
        axes[0].bar(xs, _shares(histogram), width=width, color=color, label=label)
    axes[0].set_title(f"Iteration {k}: score")
    axes[0].set_xlabel("score")
    axes[0].set_ylabel("share")
    axes[0].legend(fontsize=7)
    bins = quality.get("expected_bins")
    if bins and it and any(it.expected_scores):
        centers = [1 + i / 4 for i in range(len(it.expected_scores))]
        for label, counts, color in (
            ("good probes", bins["positive"], GOOD),
            ("bad probes", bins["negative"], BAD),
            ("candidates", it.expected_scores, CANDIDATES),
        ):
            total = sum(counts) or 1
            axes[1].plot(centers, [c / total for c in counts], color=color, label=label)
        axes[1].set_title(f"Iteration {k}: expected score (logprobs)")
        axes[1].set_xlabel("expected score")
        axes[1].legend(fontsize=7)
    else:
        axes[1].text(0.5, 0.5, "no expected scores\n(not logprobs mode)", ha="center")
        axes[1].set_axis_off()
    return _figure_png(fig)
