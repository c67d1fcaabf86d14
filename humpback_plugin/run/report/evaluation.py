"""Reading a run's evaluation for the report: comparisons, answers, lm-eval accuracy.

Everything comes from the files the evaluation steps wrote under ``RUN_DIR/eval/``
(each comparison's ``summary.json``, each model's ``model_outputs.json``, each lm-eval
``summary.json``), so a report can be drawn for any run directory, half-evaluated ones too.
A file that cannot be read is listed in ``problems``, never fatal.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from humpback_plugin.core.layout import RunLayout

REFERENCE = "reference"


@dataclass
class Answers:
    """One outputs file: how many answers and how long."""

    name: str
    generator: str | None
    count: int
    mean_chars: float | None


@dataclass
class EvalData:
    comparisons: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    answers: dict[str, Answers] = field(default_factory=dict)
    lm_eval: dict[str, dict[str, Any]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.comparisons or self.answers or self.lm_eval)

    def comparison(self, name: str, baseline: str) -> dict[str, Any] | None:
        return self.comparisons.get((name, baseline))


def _load(path: Path, problems: list[str]) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        problems.append(f"{path}: {exc}")
        return None


def read_evaluation(run_dir: str | Path) -> EvalData:
    """What ``RUN_DIR/eval/`` holds; empty when the run was not evaluated."""
    layout = RunLayout(Path(run_dir))
    data = EvalData()
    root = layout.eval_dir
    if not root.is_dir():
        return data
    for summary_path in sorted((root / "compare").glob("*/summary.json")):
        summary = _load(summary_path, data.problems)
        if not isinstance(summary, dict):
            continue
        name, _, baseline = summary_path.parent.name.rpartition("_vs_")
        data.comparisons[(name or str(summary.get("model")), baseline)] = summary
    for outputs_path in sorted((root / "outputs").glob("*/model_outputs.json")):
        records = _load(outputs_path, data.problems)
        if not isinstance(records, list):
            continue
        lengths = [len(r.get("output") or "") for r in records if isinstance(r, dict)]
        generators = {r.get("generator") for r in records if isinstance(r, dict)}
        name = outputs_path.parent.name
        data.answers[name] = Answers(
            name=name,
            generator=next(iter(generators)) if len(generators) == 1 else None,
            count=len(lengths),
            mean_chars=round(sum(lengths) / len(lengths), 1) if lengths else None,
        )
    for summary_path in sorted((root / "lm_eval").glob("*/summary.json")):
        summary = _load(summary_path, data.problems)
        if isinstance(summary, dict):
            data.lm_eval[summary_path.parent.name] = summary
    return data
