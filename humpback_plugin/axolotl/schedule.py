"""The paper's training length and learning-rate schedule (section 5), as Axolotl runs them.

Steps come from the paper's data-scaling table (interpolated between rows); the lr decays
*linearly* from 1e-5 to 9e-6 through transformers' ``warmup_stable_decay`` scheduler with
``min_lr_ratio: 0.9`` (a ratio of the peak: a public reproduction misused 9e-6 as a
multiplier and decayed to 9e-11).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from humpback_plugin.core.errors import ConfigError, UsageError

# Paper section 5, LLaMA-7B data-scaling runs: examples -> (examples per step, steps).
PAPER_STEP_TABLE: tuple[tuple[int, int, int], ...] = (
    (100, 8, 30),
    (800, 8, 300),
    (1600, 8, 600),
    (3200, 32, 500),
    (6400, 32, 600),
    (12800, 32, 600),
    (25600, 32, 1200),
    (51200, 32, 1600),
)
SMALL_DATASET = 3000  # below this the paper uses 8 examples per step
PAPER_LR = 1e-5
PAPER_MIN_LR_RATIO = 0.9  # 9e-6 / 1e-5: a ratio of the peak, never the end lr itself


# --- the step table ---------------------------------------------------------------------


@dataclass
class StepPlan:
    """How long to train on ``examples`` rows, and why."""

    examples: int
    batch_size: int
    steps: int
    epochs: float
    rule: str


def paper_batch_size(examples: int) -> int:
    return 8 if examples < SMALL_DATASET else 32


def paper_steps(examples: int) -> StepPlan:
    """Steps for a dataset of ``examples`` rows from the paper's table.

    Rows of the table are used as they are. Between rows, the number of *epochs*
    (steps x batch / examples) is interpolated linearly in log2(examples), and steps
    follow from the batch for that size, so the switch from 8 to 32 examples per step at
    3,000 does not jump. Outside the table the nearest row's epochs are kept: 2.4 epochs
    below 100 examples, 1 epoch above 51,200 (e.g. 3,200 seed + 195,043 A4 -> 6,196 steps).
    """
    if examples < 1:
        raise UsageError("the dataset is empty: nothing to train on")
    batch = paper_batch_size(examples)
    table = [(n, b, s, s * b / n) for n, b, s in PAPER_STEP_TABLE]
    for n, b, s, e in table:
        if n == examples:
            return StepPlan(examples, b, s, e, f"paper table row {n:,}")
    if examples < table[0][0]:
        epochs, rule = table[0][3], f"below the table: {table[0][3]:.2g} epochs as at 100"
    elif examples > table[-1][0]:
        epochs, rule = table[-1][3], f"past the table: {table[-1][3]:.2g} epoch as at 51,200"
    else:
        for (n0, _, _, e0), (n1, _, _, e1) in zip(table, table[1:], strict=False):
            if n0 < examples < n1:
                t = (math.log2(examples) - math.log2(n0)) / (math.log2(n1) - math.log2(n0))
                epochs = e0 + t * (e1 - e0)
                rule = f"interpolated between rows {n0:,} and {n1:,} ({epochs:.2f} epochs)"
                break
    steps = max(1, math.ceil(epochs * examples / batch))
    return StepPlan(examples, batch, steps, steps * batch / examples, rule)


def split_batch(
    batch_size: int, gpus: int, micro_batch_size: int | None, default_micro: int
) -> tuple[int, int]:
    """(micro_batch_size, gradient_accumulation_steps) with micro x accum x gpus = batch."""
    if gpus < 1:
        raise ConfigError("--gpus must be at least 1")
    if batch_size % gpus:
        raise ConfigError(f"{gpus} GPUs cannot share a batch of {batch_size} examples evenly")
    per_gpu = batch_size // gpus
    if micro_batch_size is not None:
        if per_gpu % micro_batch_size:
            raise ConfigError(
                f"micro batch {micro_batch_size} x {gpus} GPU(s) does not divide the batch of "
                f"{batch_size}; pick a micro batch that divides {per_gpu}"
            )
        return micro_batch_size, per_gpu // micro_batch_size
    micro = max(m for m in range(1, min(default_micro, per_gpu) + 1) if per_gpu % m == 0)
    return micro, per_gpu // micro


# --- the learning-rate schedule -----------------------------------------------------------


def wsd_lr(step: int, cfg: dict[str, Any]) -> float:
    """The lr of optimizer step ``step`` (0-based), as transformers' warmup_stable_decay gives it.

    A plain re-statement of ``transformers.optimization._get_wsd_scheduler_lambda`` for
    the linear case, used for summaries; tests compare it with the real scheduler.
    """
    lr = float(cfg["learning_rate"])
    kw = cfg.get("lr_scheduler_kwargs") or {}
    ratio = float(kw.get("min_lr_ratio", 0.0))
    warmup = int(cfg.get("warmup_steps") or 0)
    decay = int(kw["num_decay_steps"])
    stable = int(kw.get("num_stable_steps", int(cfg["max_steps"]) - warmup - decay))
    if step < warmup:
        return lr * (step / max(1, warmup) * (1 - ratio) + ratio)
    if step < warmup + stable:
        return lr
    if step < warmup + stable + decay:
        progress = (step - warmup - stable) / max(1, decay)
        return lr * ((1 - progress) * (1 - ratio) + ratio)
    return lr * ratio


def scheduled_learning_rates(cfg: dict[str, Any]) -> list[float]:
    """The lr each optimizer step uses, from the real transformers scheduler (needs torch)."""
    import torch
    from transformers import get_scheduler

    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=float(cfg["learning_rate"]))
    steps = int(cfg["max_steps"])
    scheduler = get_scheduler(
        cfg.get("lr_scheduler", "cosine"),
        optimizer,
        num_warmup_steps=int(cfg.get("warmup_steps") or 0),
        num_training_steps=steps,
        scheduler_specific_kwargs=dict(cfg.get("lr_scheduler_kwargs") or {}),
    )
    rates = [scheduler.get_last_lr()[0]]
    for _ in range(steps - 1):
        optimizer.step()
        scheduler.step()
        rates.append(scheduler.get_last_lr()[0])
    return rates
