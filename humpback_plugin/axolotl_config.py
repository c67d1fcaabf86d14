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

import copy
import difflib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import yaml

from humpback_plugin.jsonl_io import InputError, atomic_writer

# A link to the repo's axolotl_configs/, shipped as package data so a wheel has it too.
CONFIGS_DIR = Path(
    os.environ.get(
        "HUMPBACK_AXOLOTL_CONFIGS", Path(__file__).resolve().parent / "axolotl_templates"
    )
)
SCHEMA_SNAPSHOT = CONFIGS_DIR / "schema_keys.json"
AXOLOTL_VERSION = "0.19.0"

ROLES = ("backward", "forward")
VARIANTS = ("full", "lora", "qlora", "zero3", "fsdp2")
MULTI_GPU_VARIANTS = ("zero3", "fsdp2")
CHAT_TEMPLATE_FILES = {"llama2_inst": CONFIGS_DIR / "chat_templates" / "llama2_inst.jinja"}

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


class ConfigError(ValueError):
    """A config Axolotl would reject or silently misread, naming the file and the key."""


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
        raise ValueError("the dataset is empty: nothing to train on")
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


# --- templates and schema -------------------------------------------------------------------


def template_name(role: str, iteration: int) -> str:
    if role not in ROLES:
        raise ConfigError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
    if role == "backward":
        return "backward"
    return "m0" if iteration == 0 else "mk"


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise InputError(path, None, "no such file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else None
        raise InputError(path, where, f"malformed YAML: {getattr(exc, 'problem', exc)}") from exc
    if not isinstance(data, dict):
        raise InputError(path, None, "expected a YAML mapping of Axolotl keys")
    return data


def deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def live_schema_keys() -> dict[str, list[str]]:
    """Key names Axolotl's pydantic config models accept (needs Axolotl)."""
    from axolotl.utils.schemas.config import AxolotlConfigWCapabilities
    from axolotl.utils.schemas.datasets import SFTDataset, UserDefinedPrompterType
    from axolotl.utils.schemas.fsdp import FSDPConfig

    def names(model: Any) -> list[str]:
        found = set()
        for name, info in model.model_fields.items():
            found.add(name)
            for alias in (info.alias, info.validation_alias):
                if isinstance(alias, str):
                    found.add(alias)
                elif alias is not None and hasattr(alias, "choices"):
                    found.update(a for a in alias.choices if isinstance(a, str))
        return sorted(found)

    return {
        "top_level": names(AxolotlConfigWCapabilities),
        "datasets": names(SFTDataset),
        "datasets.type": names(UserDefinedPrompterType),
        "fsdp_config": names(FSDPConfig),
    }


def schema_keys() -> tuple[dict[str, list[str]], str]:
    """Live schema keys when Axolotl imports, else the snapshot; and which one it was."""
    try:
        import axolotl

        return live_schema_keys(), f"Axolotl {axolotl.__version__} schema"
    except ImportError:
        data = json.loads(SCHEMA_SNAPSHOT.read_text(encoding="utf-8"))
        return data["keys"], f"schema snapshot of Axolotl {data['axolotl_version']}"


def write_schema_snapshot(path: str | Path = SCHEMA_SNAPSHOT) -> None:
    import axolotl

    with atomic_writer(path) as fh:
        json.dump(
            {"axolotl_version": axolotl.__version__, "keys": live_schema_keys()}, fh, indent=1
        )
        fh.write("\n")


def check_keys(cfg: dict[str, Any], source: str | Path = "<config>") -> None:
    """Raise :class:`ConfigError` naming the file and key for any key Axolotl does not know.

    Axolotl drops unknown keys without a word, so a typo (``lerning_rate``) would train
    with the default instead.
    """
    keys, schema = schema_keys()
    problems = []

    def check(mapping: dict[str, Any], allowed: list[str], where: str) -> None:
        allowed_set = set(allowed)
        for key in mapping:
            if key not in allowed_set:
                close = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                problems.append(f"unknown Axolotl key {where}{key!r}{hint}")

    check(cfg, keys["top_level"], "")
    for i, ds in enumerate(cfg.get("datasets") or []):
        if isinstance(ds, dict):
            check(ds, keys["datasets"], f"datasets[{i}].")
            if isinstance(ds.get("type"), dict):
                check(ds["type"], keys["datasets.type"], f"datasets[{i}].type.")
    if isinstance(cfg.get("fsdp_config"), dict):
        check(cfg["fsdp_config"], keys["fsdp_config"], "fsdp_config.")
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems) + f" [checked against the {schema}]")


def validate_with_axolotl(
    cfg: dict[str, Any], source: str | Path = "<config>", *, gpus: int = 1, cpu: bool = False
) -> dict[str, Any]:
    """Run Axolotl's own ``validate_config`` (what ``axolotl preprocess/train`` runs).

    GPU capabilities are described rather than probed, so a config for 8 x H100 is
    checked on a laptop: bf16 and tf32 on a Hopper card, none of them for ``cpu``.
    """
    import torch
    from axolotl.utils.config import validate_config
    from axolotl.utils.dict import DictDefault

    capabilities = {
        "bf16": not cpu,
        "fp8": False,
        "tf32": not cpu,
        "n_gpu": gpus,
        "compute_capability": None if cpu else "sm_90",
    }
    env = {"torch_version": str(torch.__version__).split("+", maxsplit=1)[0]}
    try:
        return dict(
            validate_config(
                DictDefault(copy.deepcopy(cfg)), capabilities=capabilities, env_capabilities=env
            )
        )
    except Exception as exc:  # pydantic's ValidationError, Axolotl's ValueErrors
        raise ConfigError(f"{source}: Axolotl rejects the config: {exc}") from exc


def check_config(
    cfg: dict[str, Any],
    source: str | Path = "<config>",
    *,
    gpus: int = 1,
    cpu: bool = False,
    use_axolotl: bool | None = None,
) -> str:
    """Key check always; Axolotl's validation when installed (or required). Says what ran."""
    check_keys(cfg, source)
    if use_axolotl is None:
        try:
            import axolotl  # noqa: F401
        except ImportError:
            return "keys checked (Axolotl not installed: its validation skipped)"
        use_axolotl = True
    if use_axolotl:
        validate_with_axolotl(cfg, source, gpus=gpus, cpu=cpu)
        return "keys checked, Axolotl validation passed"
    return "keys checked"


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
    from humpback_plugin.export import read_card

    card = read_card(dataset)
    if card and isinstance(card.get("rows"), int):
        return card["rows"]
    if not dataset.exists():
        raise InputError(dataset, None, "no such dataset; give --examples to size the run")
    with open(dataset, "rb") as fh:
        return sum(1 for line in fh if line.strip())


def _dataset_entry(dataset: Path) -> dict[str, Any]:
    from humpback_plugin.export import get_exporter, read_card

    card = read_card(dataset) or {}
    exporter = get_exporter(card.get("format", "chat_template"))
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


# --- command line ---------------------------------------------------------------------------


class ConfigsGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return ["backward", "forward", "check", "steps"]


@click.group(name="configs", cls=ConfigsGroup)
def configs_command() -> None:
    """Axolotl configs for the backward model, M0 and M_k, checked against Axolotl.

    \b
    Examples:
      humpback configs backward --dataset run/datasets/backward.jsonl \\
          --base-model meta-llama/Llama-2-7b-hf -o run/configs
      humpback configs forward -i 0 --dataset run/datasets/m0.jsonl -o run/configs
      humpback configs forward -i 1 --dataset run/datasets/m1.jsonl \\
          --variant zero3 --gpus 8 --base-model meta-llama/Llama-2-70b-hf
      humpback configs check run/configs/m1.yaml
      humpback configs steps 45021

    Each render prints the exact `axolotl train CONFIG` command on stdout.
    """


def _render_options(func: Any) -> Any:
    options = [
        click.option(
            "--dataset",
            required=True,
            type=click.Path(dir_okay=False, path_type=Path),
            help="Dataset from `humpback export` (its .card.json gives format and size).",
        ),
        click.option("--base-model", help="Model to fine-tune (default: Llama-2-7b-hf)."),
        click.option(
            "-o",
            "--out",
            "out_dir",
            type=click.Path(file_okay=False, path_type=Path),
            default="configs",
            show_default=True,
            help="Folder for the rendered <name>.yaml.",
        ),
        click.option(
            "--output-dir",
            type=click.Path(path_type=Path),
            help="Where Axolotl saves the model (default: outputs/<name>).",
        ),
        click.option(
            "--variant",
            type=click.Choice(VARIANTS),
            default="full",
            show_default=True,
            help="full fine-tuning (paper), lora/qlora on one GPU, zero3/fsdp2 for 65-70B.",
        ),
        click.option("--gpus", type=int, default=1, show_default=True, help="GPUs in the run."),
        click.option("--micro-batch", type=int, help="Examples per GPU per forward pass."),
        click.option("--examples", type=int, help="Dataset size for the step table."),
        click.option("--max-steps", type=int, help="Override the step table."),
        click.option("--batch-size", type=int, help="Override examples per step (32 / 8)."),
        click.option("--learning-rate", type=float, help="Peak lr (paper: 1e-5)."),
        click.option(
            "--min-lr-ratio",
            type=float,
            default=PAPER_MIN_LR_RATIO,
            show_default=True,
            help="End lr as a fraction of the peak (0.9: 1e-5 -> 9e-6).",
        ),
        click.option("--warmup-steps", type=int, help="Warmup steps (default 0)."),
        click.option("--sequence-len", type=int, help="Token length (default 2048)."),
        click.option(
            "--chat-template",
            default="llama2_inst",
            show_default=True,
            help="llama2_inst ([INST] with <<SYS>>) or an Axolotl name: chatml, llama3, "
            "tokenizer_default, ...",
        ),
        click.option(
            "--cpu", is_flag=True, help="Test profile: tiny sequences, few steps, no bf16."
        ),
        click.option(
            "--set",
            "settings",
            multiple=True,
            metavar="KEY=VALUE",
            help="Extra Axolotl key (YAML value), e.g. --set num_epochs=1; checked like the rest.",
        ),
        click.option(
            "--validate/--no-validate",
            default=None,
            help="Run Axolotl's own validation (default: when Axolotl is installed).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _parse_settings(settings: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--set")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _render_and_write(role: str, iteration: int, options: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    out_dir: Path = options.pop("out_dir")
    validate = options.pop("validate")
    overrides = _parse_settings(options.pop("settings"))
    try:
        rendered = render_config(
            role,
            iteration,
            dataset=options["dataset"],
            base_model=options["base_model"],
            output_dir=options["output_dir"],
            variant=options["variant"],
            gpus=options["gpus"],
            micro_batch_size=options["micro_batch"],
            examples=options["examples"],
            max_steps=options["max_steps"],
            batch_size=options["batch_size"],
            learning_rate=options["learning_rate"],
            min_lr_ratio=options["min_lr_ratio"],
            warmup_steps=options["warmup_steps"],
            sequence_len=options["sequence_len"],
            chat_template=options["chat_template"],
            cpu=options["cpu"],
            overrides=overrides,
        )
        path = out_dir / f"{rendered.name}.yaml"
        checked = check_config(
            rendered.config, path, gpus=rendered.gpus, cpu=options["cpu"], use_axolotl=validate
        )
    except (ConfigError, InputError, KeyError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    write_config(rendered, path)

    cfg, plan = rendered.config, rendered.plan
    table = Table(title=f"humpback configs: {rendered.name}", show_header=False)
    table.add_row("config", str(path))
    table.add_row("base model", str(cfg["base_model"]))
    table.add_row("dataset", f"{cfg['datasets'][0]['path']} ({plan.examples:,} examples)")
    table.add_row(
        "batch",
        f"{plan.batch_size} = {cfg['micro_batch_size']} micro x "
        f"{cfg['gradient_accumulation_steps']} accum x {rendered.gpus} GPU(s)",
    )
    table.add_row("steps", f"{plan.steps} ({plan.epochs:.2f} epochs; {plan.rule})")
    table.add_row(
        "lr",
        f"{cfg['learning_rate']:g} -> {rendered.final_lr:.3g} linear, warmup {cfg['warmup_steps']}",
    )
    table.add_row("check", checked)
    for note in rendered.notes:
        table.add_row("note", note)
    Console(stderr=True).print(table)
    click.echo(rendered.train_command(path))


@configs_command.command(name="backward")
@_render_options
def configs_backward(**options: Any) -> None:
    """Render the backward model's config (output -> instruction, seed only)."""
    _render_and_write("backward", 0, options)


@configs_command.command(name="forward")
@click.option("-i", "--iteration", type=int, default=0, show_default=True, help="k of M_k.")
@_render_options
def configs_forward(iteration: int, **options: Any) -> None:
    """Render M_k's config: M0 = seed only, M_k = seed + curated A(k)."""
    _render_and_write("forward", iteration, options)


@configs_command.command(name="check")
@click.argument("configs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--gpus", type=int, default=1, show_default=True, help="GPUs the run will use.")
@click.option("--cpu", is_flag=True, help="Check for a CPU run (no bf16).")
def configs_check(configs: tuple[Path, ...], gpus: int, cpu: bool) -> None:
    """Check Axolotl configs: unknown keys, then Axolotl's own validation when installed."""
    failed = 0
    for path in configs:
        try:
            message = check_config(load_yaml(path), path, gpus=gpus, cpu=cpu)
        except (ConfigError, InputError) as exc:
            failed += 1
            click.echo(f"FAIL {exc}", err=True)
        else:
            click.echo(f"ok   {path}: {message}")
    if failed:
        raise click.ClickException(f"{failed} of {len(configs)} config(s) failed")


@configs_command.command(name="steps")
@click.argument("examples", type=int, nargs=-1)
def configs_steps(examples: tuple[int, ...]) -> None:
    """Show the paper's step table, or the plan for EXAMPLES dataset sizes."""
    from rich.console import Console
    from rich.table import Table

    sizes = examples or tuple(n for n, _, _ in PAPER_STEP_TABLE)
    table = Table(title="steps from the paper's data-scaling table")
    for column in ("examples", "batch", "steps", "epochs", "rule"):
        table.add_column(column)
    for n in sizes:
        try:
            p = paper_steps(n)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from exc
        table.add_row(f"{n:,}", str(p.batch_size), str(p.steps), f"{p.epochs:.2f}", p.rule)
    Console().print(table)
