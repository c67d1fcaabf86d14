"""Where everything lives in a run directory, and the order of the run's stages.

The pipeline writes these paths, the report reads them and the tests build run
directories with them: one definition, so they cannot drift apart.

    RUN_DIR/
      config.yaml, manifest.json
      seed/seed.jsonl
      segments/segments.jsonl, segments/rejected.jsonl
      augment/candidates.jsonl, augment/candidates.rejected.jsonl, augment/candidates.jsonl.parts/
      backward/ m0/ m1/ ...      data/<role>.jsonl (+ .card.json), axolotl.yaml, model/, train.log,
                                 model.trained-from.json, chat_template.jinja, serve.sh
      curate_K/scored.jsonl, curate_K/curated.jsonl, curate_K/scored.jsonl.parts/
      curate_K/scored.canaries.jsonl   the probes mixed in as canaries, scored (never a dataset)
      eval/judge/MODEL/judge_eval.json `humpback eval judge --run`
      report/report.html, report/summary.md, report/audit_sample.jsonl
      eval/outputs/<name>/model_outputs.json   (name: m2, or m2.S_a for a tag-ablation run)
      eval/compare/<name>_vs_<baseline>/verdicts.jsonl, summary.json
      eval/lm_eval/<model>/summary.json, results/, tasks/, lm_eval.log
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

MANIFEST_NAME = "manifest.json"
CONFIG_NAME = "config.yaml"


def side_path(output: str | os.PathLike, label: str) -> Path:
    """``candidates.jsonl`` -> ``candidates.<label>.jsonl`` next to it."""
    out = Path(output)
    stem = out.name.removesuffix(".gz").removesuffix(".jsonl")
    return out.with_name(f"{stem}.{label}.jsonl")


def work_dir_for(output: str | os.PathLike, work_dir: str | os.PathLike | None = None) -> Path:
    """The resumable store of a model-calling stage: ``<output>.parts/`` unless given."""
    return Path(work_dir) if work_dir else Path(f"{output}.parts")


def stage_names(iterations: int, eval_steps: Sequence[str] = ()) -> list[str]:
    """The run's stages in order, for ``iterations`` rounds of self-curation, then the
    evaluation steps asked for (``generate``, ``compare``, ``lm_eval``) as ``eval_<step>``."""
    names = [
        "seed",
        "segments",
        "backward_data",
        "train_backward",
        "augment",
        "m0_data",
        "train_m0",
    ]
    for k in range(1, iterations + 1):
        # The last model (M2 in the paper: Humpback) is trained too.
        names += [f"curate_{k}", f"m{k}_data", f"train_m{k}"]
    return names + [f"eval_{step}" for step in eval_steps]


def is_curate_stage(name: str) -> bool:
    prefix, _, number = name.partition("_")
    return prefix == "curate" and number.isdigit()


@dataclass(frozen=True)
class RunLayout:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / CONFIG_NAME

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST_NAME

    @property
    def inputs(self) -> Path:
        """Copies of demo inputs (a real run reads its inputs where they are)."""
        return self.root / "inputs"

    @property
    def seed(self) -> Path:
        return self.root / "seed" / "seed.jsonl"

    @property
    def segments(self) -> Path:
        return self.root / "segments" / "segments.jsonl"

    @property
    def segments_rejected(self) -> Path:
        return self.root / "segments" / "rejected.jsonl"

    @property
    def candidates(self) -> Path:
        return self.root / "augment" / "candidates.jsonl"

    @property
    def candidates_rejected(self) -> Path:
        return side_path(self.candidates, "rejected")

    def model_dir(self, role: str) -> Path:
        return self.root / role

    def dataset(self, role: str) -> Path:
        return self.root / role / "data" / f"{role}.jsonl"

    def axolotl_config(self, role: str) -> Path:
        return self.root / role / "axolotl.yaml"

    def trained(self, role: str) -> Path:
        return self.root / role / "model"

    def train_log(self, role: str) -> Path:
        return self.root / role / "train.log"

    def chat_template(self, role: str) -> Path:
        """The chat template ``role`` was trained with, as the file vLLM is given."""
        return self.root / role / "chat_template.jinja"

    def serve_script(self, role: str) -> Path:
        """The ``vllm serve`` command of the trained ``role`` for your own deployment."""
        return self.root / role / "serve.sh"

    def scored(self, k: int) -> Path:
        return self.root / f"curate_{k}" / "scored.jsonl"

    def curated(self, k: int) -> Path:
        return self.root / f"curate_{k}" / "curated.jsonl"

    def canaries(self, k: int) -> Path:
        """The labelled probes curate_K mixed into its stream, with their scores."""
        return side_path(self.scored(k), "canaries")

    @property
    def judge_eval(self) -> Path:
        """`humpback eval judge --run RUN_DIR` writes under here, a folder per judge model
        (the report reads them all)."""
        return self.root / "eval" / "judge"

    def judge_eval_for(self, model: str) -> Path:
        return self.judge_eval / (re.sub(r"[^A-Za-z0-9_.-]+", "_", model).strip("._") or "model")

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    # --- evaluation --------------------------------------------------------------------

    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"

    def eval_outputs(self, name: str) -> Path:
        """AlpacaEval ``model_outputs.json`` of one model (``m2``) or condition (``m2.S_a``)."""
        return self.eval_dir / "outputs" / name / "model_outputs.json"

    def eval_comparison(self, name: str, baseline: str) -> Path:
        """The folder of one pairwise comparison: ``verdicts.jsonl`` and ``summary.json``."""
        return self.eval_dir / "compare" / f"{name}_vs_{baseline}"

    def eval_lm_eval(self, model: str) -> Path:
        return self.eval_dir / "lm_eval" / model

    @property
    def server_state(self) -> Path:
        """State of the embedded vLLM that serves this run's trained models."""
        return self.root / ".server"

    def relative(self, path: Path) -> str:
        """``path`` relative to the run directory (as the manifest records it)."""
        return str(path.relative_to(self.root))
