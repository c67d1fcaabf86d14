"""Axolotl configs for the backward model, M0 and M_k: render, check, explain.

The templates in ``axolotl_configs/`` carry the paper's hyperparameters (section 5):
full fine-tuning, lr 1e-5 decaying *linearly* to 9e-6 (Axolotl's ``warmup_stable_decay``
with ``decay_type: linear``, ``min_lr_ratio: 0.9`` and every step in the decay phase),
weight decay 0.1, dropout 0.1, 32 examples per step (8 under 3,000 examples) and steps
from the paper's data-scaling table. Overlays in ``axolotl_configs/variants/`` give LoRA,
QLoRA, DeepSpeed ZeRO-3, FSDP2 and a CPU test profile.

Rendering fills what depends on the run: base model, dataset (the ``datasets:`` entry
comes from the dataset's card, so it matches the export format), output folder, steps for
the dataset's size, and the batch arithmetic micro_batch x grad_accum x GPUs = batch.

Checking never needs a GPU: every key is checked against Axolotl's config schema (live
when Axolotl is importable, else the snapshot ``axolotl_configs/schema_keys.json``) and,
when Axolotl is installed, the whole config goes through Axolotl's own ``validate_config``.
Axolotl, torch and transformers are imported lazily: the core works without them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from humpback_plugin.axolotl.schedule import (
    PAPER_MIN_LR_RATIO,
    StepPlan,
    paper_steps,
    split_batch,
    wsd_lr,
)
from humpback_plugin.axolotl.templates import (
    CHAT_TEMPLATE_FILES,
    CONFIGS_DIR,
    MULTI_GPU_VARIANTS,
    VARIANTS,
    deep_merge,
    load_yaml,
    template_name,
)
from humpback_plugin.core.errors import ConfigError, InputError
from humpback_plugin.core.jsonl_io import atomic_writer
from humpback_plugin.stages.export.stage import DEFAULT_FORMAT, get_exporter, read_card

# --- rendering ------------------------------------------------------------------------------


@dataclass
class RenderedConfig:
    """A config ready to write, with the arithmetic behind it."""

    name: str
    role: str
    iteration: int
    variant: str
    config: dict[str, Any]
    plan: StepPlan
    gpus: int
    notes: list[str] = field(default_factory=list)

    @property
    def final_lr(self) -> float:
        """The lr of the last optimizer step."""
        return wsd_lr(int(self.config["max_steps"]) - 1, self.config)

    def train_command(self, path: str | Path) -> str:
        command = f"axolotl train {path}"
        if self.gpus > 1:
            command += f" -- --num_processes {self.gpus}"
        return command


def _count_rows(dataset: Path) -> int:
    card = read_card(dataset)
    if card and isinstance(card.get("rows"), int):
        return card["rows"]
    if not dataset.exists():
        raise InputError(dataset, None, "no such dataset; give --examples to size the run")
    with open(dataset, "rb") as fh:
        return sum(1 for line in fh if line.strip())


def _dataset_entry(dataset: Path) -> dict[str, Any]:
    card = read_card(dataset) or {}
    exporter = get_exporter(card.get("format", DEFAULT_FORMAT))
    return exporter.axolotl_dataset(str(dataset))


def render_config(
    role: str,
    iteration: int = 0,
    *,
    dataset: str | Path,
    base_model: str | None = None,
    output_dir: str | Path | None = None,
    variant: str = "full",
    gpus: int = 1,
    micro_batch_size: int | None = None,
    examples: int | None = None,
    max_steps: int | None = None,
    batch_size: int | None = None,
    learning_rate: float | None = None,
    min_lr_ratio: float = PAPER_MIN_LR_RATIO,
    warmup_steps: int | None = None,
    sequence_len: int | None = None,
    chat_template: str = "llama2_inst",
    cpu: bool = False,
    overrides: dict[str, Any] | None = None,
) -> RenderedConfig:
    """Fill the role's template for one run. ``role``: backward or forward (M_iteration)."""
    if variant not in VARIANTS:
        raise ConfigError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    if cpu and variant in MULTI_GPU_VARIANTS:
        raise ConfigError(f"the {variant} variant needs GPUs; --cpu goes with full or lora")
    if iteration < 0 or (role == "backward" and iteration != 0):
        raise ConfigError("the backward model is trained once, on the seed (iteration 0)")
    name = "backward" if role == "backward" else f"m{iteration}"
    cfg = load_yaml(CONFIGS_DIR / f"{template_name(role, iteration)}.yaml")
    if variant != "full":
        cfg = deep_merge(cfg, load_yaml(CONFIGS_DIR / "variants" / f"{variant}.yaml"))
    if cpu:
        cfg = deep_merge(cfg, load_yaml(CONFIGS_DIR / "variants" / "cpu.yaml"))
    notes = []

    dataset = Path(dataset).resolve()
    rows = examples if examples is not None else _count_rows(dataset)
    plan = paper_steps(rows)
    if batch_size is not None:
        plan = StepPlan(rows, batch_size, plan.steps, plan.steps * batch_size / rows, plan.rule)
    if max_steps is None and cpu:
        max_steps = int(cfg["max_steps"])
        notes.append(f"test profile: {max_steps} steps instead of {plan.steps}")
    if max_steps is not None:
        plan = StepPlan(
            rows,
            plan.batch_size,
            max_steps,
            max_steps * plan.batch_size / rows,
            f"fixed at {max_steps} steps",
        )
    micro, accum = split_batch(
        plan.batch_size, gpus, micro_batch_size, int(cfg.get("micro_batch_size") or 1)
    )
    warmup = int(cfg.get("warmup_steps") or 0) if warmup_steps is None else warmup_steps
    if warmup >= plan.steps:
        raise ConfigError(f"warmup of {warmup} steps leaves nothing of a {plan.steps}-step run")

    cfg["datasets"] = [_dataset_entry(dataset)]
    if base_model:
        cfg["base_model"] = base_model
    out = Path(output_dir or Path("outputs") / name).resolve()
    cfg["output_dir"] = str(out)
    cfg["dataset_prepared_path"] = str(out.parent / f"{out.name}_prepared")
    cfg["micro_batch_size"] = micro
    cfg["gradient_accumulation_steps"] = accum
    cfg["max_steps"] = plan.steps
    cfg["warmup_steps"] = warmup
    if learning_rate is not None:
        cfg["learning_rate"] = learning_rate
    # Every step after warmup is in the linear decay, no stable phase; the last step
    # (index steps - 1) is the first at min_lr_ratio, so the run ends exactly at 9e-6.
    cfg["lr_scheduler"] = "warmup_stable_decay"
    cfg["lr_scheduler_kwargs"] = {
        "num_stable_steps": 0,
        "num_decay_steps": max(1, plan.steps - warmup - 1),
        "decay_type": "linear",
        "min_lr_ratio": min_lr_ratio,
    }
    if sequence_len is not None:
        cfg["sequence_len"] = sequence_len
    if chat_template in CHAT_TEMPLATE_FILES:
        cfg["chat_template"] = "jinja"
        cfg["chat_template_jinja"] = CHAT_TEMPLATE_FILES[chat_template].read_text(encoding="utf-8")
    else:
        cfg["chat_template"] = chat_template
        cfg.pop("chat_template_jinja", None)
    if isinstance(cfg.get("deepspeed"), str) and not Path(cfg["deepspeed"]).is_absolute():
        cfg["deepspeed"] = str(CONFIGS_DIR / cfg["deepspeed"])
    if overrides:
        cfg = deep_merge(cfg, overrides)
    if variant in MULTI_GPU_VARIANTS and gpus == 1:
        notes.append(f"{variant} is meant for several GPUs: pass --gpus")
    return RenderedConfig(name, role, iteration, variant, cfg, plan, gpus, notes)


class _LiteralDumper(yaml.SafeDumper):
    """Multi-line strings (the chat template) as readable ``|`` blocks."""


def _str_representer(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_LiteralDumper.add_representer(str, _str_representer)


def to_yaml(rendered: RenderedConfig, header: bool = True) -> str:
    body = yaml.dump(rendered.config, Dumper=_LiteralDumper, sort_keys=False, allow_unicode=True)
    if not header:
        return body
    plan = rendered.plan
    cfg = rendered.config
    lines = [
        f"# Humpback {rendered.name} ({rendered.role}, iteration {rendered.iteration}, "
        f"{rendered.variant}) rendered by `humpback configs`.",
        f"# {plan.examples:,} examples, {plan.batch_size} per step = {cfg['micro_batch_size']} "
        f"micro x {cfg['gradient_accumulation_steps']} accumulation x {rendered.gpus} GPU(s); "
        f"{plan.steps} steps ({plan.epochs:.2f} epochs; {plan.rule}).",
        f"# lr {cfg['learning_rate']:g} -> {rendered.final_lr:.3g} linearly, "
        f"warmup {cfg['warmup_steps']} steps.",
    ]
    return "\n".join(lines) + "\n" + body


def write_config(rendered: RenderedConfig, path: str | Path) -> Path:
    path = Path(path)
    with atomic_writer(path) as fh:
        fh.write(to_yaml(rendered))
    return path
