"""The report's opening: what the loop produced and whether it worked.

:func:`outcome_sections` builds, as tables of the shared model (:mod:`.tables`):

* the funnel: documents -> segments -> candidates -> A(1) -> A(2), with counts;
* "did it work?": each model's win rate with its bootstrap interval against the reference
  and against M0, the tie rate and the judge's position bias, beside the mean answer
  lengths (judges favour long answers);
* multiple-choice accuracy per lm-eval task and model;
* the tag ablation (system text at inference) beside the paper's Table 8;
* answer lengths per outputs file;

and :func:`outcome_plots` draws the win rates with their intervals. The configuration and
the details of every stage follow in the report's other sections.
"""

from __future__ import annotations

import re
from typing import Any

from humpback_plugin.run.report.collect import RunData, as_int
from humpback_plugin.run.report.evaluation import REFERENCE, EvalData
from humpback_plugin.run.report.plots import _figure_png, plots_available
from humpback_plugin.run.report.tables import PlotRef, Section, Table

WINRATE_PLOT = PlotRef("winrates", "win rates with 95% intervals")
# The paper's Table 8 (LLaMA-7B, AlpacaEval win rate vs davinci-003, GPT-4 judge).
PAPER_ABLATION = {"none": "62.70", "S_a": "62.69", "S_a+S_w": "66.47"}
PAPER_NOTE = (
    "The paper (AlpacaEval v1, GPT-4 judge, vs text-davinci-003): Humpback 65B 83.71, "
    "33B 79.84; LIMA 65B 62.70; Guanaco 65B 71.80."
)
SMALL = 100  # fewer judged examples than this: say the interval is wide


def _model_order(name: str) -> tuple[int, str]:
    match = re.fullmatch(r"m(\d+)", name)
    return (int(match.group(1)), name) if match else (10**6, name)


def _rate(summary: dict[str, Any] | None) -> str:
    """``62.5 [48.1, 76.2]`` or a dash."""
    if not summary or summary.get("win_rate") is None:
        return "—"
    ci = summary.get("win_rate_ci")
    interval = f" [{ci[0]:.1f}, {ci[1]:.1f}]" if isinstance(ci, list) and len(ci) == 2 else ""
    return f"{summary['win_rate']:.1f}{interval}"


def _pct(value: Any) -> str:
    return f"{value:.1f}" if isinstance(value, int | float) else "—"


# --- the funnel ----------------------------------------------------------------------------


def funnel_rows(data: RunData) -> list[list[Any]]:
    """(step, count, share kept) from the manifest's statistics. A(k) is a share of all
    candidates: every iteration's judge rates the same candidate pool."""
    seg = data.stats("segments")
    kept = seg.get("kept", data.records_in(data.layout.segments))
    candidates = data.stats("augment").get("accepted")
    steps: list[tuple[str, Any, Any]] = [
        ("documents read", seg.get("documents"), None),
        ("segments found (text under a header)", seg.get("segments"), None),
        ("segments kept (the paper's filters)", kept, seg.get("segments")),
        ("candidate pairs (instruction filters passed)", candidates, kept),
    ]
    for k in sorted(data.iterations):
        stats = data.stats(f"curate_{k}")
        selected = stats.get("selected")
        if selected is None and data.iterations[k].has_curated:
            selected = data.iterations[k].curated_records
        judge = data.stage(f"curate_{k}").get("model") or f"M{k - 1}"
        threshold = stats.get("threshold")
        cut = f", score ≥ {threshold:g}" if isinstance(threshold, int | float) else ""
        steps.append((f"A({k}): selected by {judge}{cut}", selected, candidates))
    rows = []
    for label, count, of in steps:
        count = as_int(count) if count is not None else None
        share = f"{count / as_int(of):.1%}" if count is not None and of else "—"
        rows.append([label, count, share])
    return rows


# --- did it work? --------------------------------------------------------------------------


def _models(evaluation: EvalData) -> list[str]:
    names = {name for name, _ in evaluation.comparisons} | set(evaluation.answers)
    names |= set(evaluation.lm_eval)
    return sorted((n for n in names if "." not in n), key=_model_order)


def winrate_table(evaluation: EvalData) -> Table:
    models = _models(evaluation)
    baselines = sorted(
        {b for n, b in evaluation.comparisons if n in models},
        key=lambda b: (b != REFERENCE, _model_order(b)),
    )
    headers = ["model", "answers", "mean length"]
    for baseline in baselines:
        label = "reference" if baseline == REFERENCE else baseline.upper()
        headers += [f"win rate vs {label} [95% CI]", "ties %", "judged"]
    rows = []
    for model in models:
        answers = evaluation.answers.get(model)
        row: list[Any] = [model.upper(), answers.count if answers else None]
        row.append(answers.mean_chars if answers else None)
        for baseline in baselines:
            summary = evaluation.comparison(model, baseline)
            row += [_rate(summary), _pct((summary or {}).get("tie_rate"))]
            row.append((summary or {}).get("judged") if summary else None)
        rows.append(row)
    first = next((s for s in evaluation.comparisons.values()), {})
    facts = [
        ("judge", first.get("judge")),
        ("judging", f"{first.get('mode')}: each pair asked in both orders" if first else None),
        (
            "reference",
            next(
                (
                    s.get("baseline")
                    for (n, b), s in evaluation.comparisons.items()
                    if b == REFERENCE
                ),
                None,
            ),
        ),
        (
            "first position picked (position bias, before cancelling)",
            ", ".join(
                f"{n} vs {b}: {_pct(s.get('first_position_rate'))}%"
                for (n, b), s in sorted(evaluation.comparisons.items())
                if n in models
            ),
        ),
    ]
    return Table(
        "winrates",
        "Win rates",
        headers,
        rows,
        frozenset({1, 2}),
        intro="Win rate: the judge's mean probability that the model's answer is the better "
        "one, each pair asked with the model's answer first and then second (position bias "
        "cancels), ties counted half; the interval is a seeded bootstrap 95% interval. "
        "Mean length in characters: judges tend to favour longer answers. " + PAPER_NOTE,
        empty="No comparison yet: the eval_compare step has not run.",
        facts=[(k, v) for k, v in facts if v],
        plot=WINRATE_PLOT,
    )


def accuracy_table(evaluation: EvalData) -> Table:
    models = sorted(evaluation.lm_eval, key=_model_order)
    tasks = sorted({t for s in evaluation.lm_eval.values() for t in (s.get("tasks") or {})})
    rows = []
    for task in tasks:
        row: list[Any] = [task]
        items = None
        for model in models:
            scores = (evaluation.lm_eval[model].get("tasks") or {}).get(task) or {}
            acc, stderr = scores.get("acc"), scores.get("acc_stderr")
            row.append(
                "—" if acc is None else f"{acc:.3f}" + (f" ± {stderr:.3f}" if stderr else "")
            )
            items = items or scores.get("items")
        rows.append([*row, items])
    return Table(
        "accuracy",
        "Multiple-choice accuracy (lm-evaluation-harness)",
        ["task", *(m.upper() for m in models), "items"],
        rows,
        frozenset(range(1, len(models) + 2)),
        intro="Zero-shot accuracy (acc ± standard error) from lm-eval's local-completions "
        "model against the served models. The paper, Humpback 65B: SIQA 60.44, PIQA 78.9, "
        "ARC-E 88.67, ARC-C 72.96, OBQA 64.0, MMLU 59.0.",
        empty="No lm-eval results (the run config names no lm-eval task).",
    )


def ablation_table(evaluation: EvalData) -> Table:
    """The last model under each system text, against the reference."""
    conditions: dict[str, dict[str, Any] | None] = {}
    ablated = sorted({n.split(".", 1)[0] for n in evaluation.answers if "." in n}, key=_model_order)
    model = ablated[-1] if ablated else None
    rows = []
    if model is not None:
        conditions["none (main)"] = evaluation.comparison(model, REFERENCE)
        for name in sorted(evaluation.answers):
            if name.startswith(f"{model}."):
                conditions[name.split(".", 1)[1]] = evaluation.comparison(name, REFERENCE)
        for condition, summary in conditions.items():
            key = condition.split(" ", 1)[0]
            answers = evaluation.answers.get(model if key == "none" else f"{model}.{key}")
            rows.append(
                [
                    condition,
                    _rate(summary),
                    answers.mean_chars if answers else None,
                    PAPER_ABLATION.get(key, "—"),
                ]
            )
    return Table(
        "ablation",
        f"Tag ablation: {model.upper()}, system text at inference" if model else "Tag ablation",
        ["system text", "win rate vs reference [95% CI]", "mean length", "paper (7B, Table 8)"],
        rows,
        frozenset({2}),
        intro="Training tags each seed row with S_a ('Answer in the style of an AI "
        "Assistant.') and each augmented row with S_w ('Answer with knowledge from web "
        "search.'); at inference the paper found S_a+S_w best (66.47) and no tags in "
        "training worst (59.96). 'main' is the condition of the table above.",
        empty="No ablation run (eval.ablation is empty).",
    )


def lengths_table(evaluation: EvalData) -> Table:
    rows = [
        [a.name, a.generator, a.count, a.mean_chars]
        for a in sorted(evaluation.answers.values(), key=lambda a: _model_order(a.name))
    ]
    return Table(
        "answer-lengths",
        "Answers per outputs file",
        ["outputs", "generator", "answers", "mean length (characters)"],
        rows,
        frozenset({2, 3}),
        empty="No answers yet.",
    )


def noise_note(data: RunData, evaluation: EvalData) -> str:
    """Say plainly when the numbers cannot mean anything."""
    notes = []
    judged = [s.get("judged") or 0 for s in evaluation.comparisons.values()]
    if judged and max(judged) < SMALL:
        notes.append(
            f"Each comparison judged at most {max(judged)} instructions: the intervals are "
            "wide, and differences inside them are noise."
        )
    training = (data.manifest.get("config") or {}).get("training") or {}
    if training.get("profile") == "cpu":
        notes.append(
            "This run trained small models for a few CPU steps and (on the embedded server) "
            "judges with a 135M model: the numbers show the mechanics, not the method's "
            "quality. Run it on a GPU with a strong judge for real figures (see the README)."
        )
    return " ".join(notes)


def outcome_sections(data: RunData, evaluation: EvalData) -> list[Section]:
    """The report's first sections: the funnel, then whether it worked."""
    funnel = Table(
        "funnel",
        "",
        ["step", "count", "kept of the input"],
        funnel_rows(data),
        frozenset({1, 2}),
    )
    sections = [
        Section(
            "funnel",
            "What the loop produced",
            "Funnel",
            intro="From the corpus to the curated sets each model is trained on "
            "(M1 = base + seed + A(1), M2 = base + seed + A(2)).",
            tables=[funnel],
        )
    ]
    if evaluation.empty:
        sections.append(
            Section(
                "outcome",
                "Did it work?",
                "Outcome",
                empty="Not evaluated: add an `eval:` section with an evaluation set to the "
                "run config (see the README) and re-run; `humpback eval` does it by hand.",
            )
        )
        return sections
    note = noise_note(data, evaluation)
    tables = [winrate_table(evaluation), accuracy_table(evaluation)]
    tables += [ablation_table(evaluation), lengths_table(evaluation)]
    if evaluation.problems:
        tables.append(
            Table(
                "eval-problems",
                "Unreadable evaluation files",
                ["file: problem"],
                [[p] for p in evaluation.problems],
            )
        )
    sections.append(Section("outcome", "Did it work?", "Outcome", intro=note, tables=tables))
    return sections


# --- the plot ------------------------------------------------------------------------------


def outcome_plots(evaluation: EvalData) -> dict[str, str]:
    """The win rates with their intervals as a base64 PNG (none without matplotlib)."""
    if not plots_available() or not evaluation.comparisons:
        return {}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = _models(evaluation)
    baselines = sorted(
        {b for n, b in evaluation.comparisons if n in models},
        key=lambda b: (b != REFERENCE, _model_order(b)),
    )
    fig, ax = plt.subplots(figsize=(7, 3.4))
    width = 0.8 / max(1, len(baselines))
    for i, baseline in enumerate(baselines):
        xs, ys, low, high = [], [], [], []
        for j, model in enumerate(models):
            summary = evaluation.comparison(model, baseline)
            if not summary or summary.get("win_rate") is None:
                continue
            rate = summary["win_rate"]
            ci = summary.get("win_rate_ci") or [rate, rate]
            xs.append(j + (i - (len(baselines) - 1) / 2) * width)
            ys.append(rate)
            low.append(rate - ci[0])
            high.append(ci[1] - rate)
        label = "vs reference" if baseline == REFERENCE else f"vs {baseline.upper()}"
        ax.bar(xs, ys, width * 0.9, yerr=[low, high], capsize=4, label=label)
    ax.axhline(50, color="#7f8c8d", linewidth=0.8, linestyle="--")
    ax.set_xticks(range(len(models)), [m.upper() for m in models])
    ax.set_ylim(0, 100)
    ax.set_ylabel("win rate % (95% CI)")
    ax.set_title("Did it work? Win rates")
    ax.legend(fontsize=8)
    return {WINRATE_PLOT.name: _figure_png(fig)}
