"""``humpback configs``: Axolotl configs for the backward model, M0 and M_k."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from humpback_plugin.axolotl.configs import render_config, write_config
from humpback_plugin.axolotl.schedule import PAPER_MIN_LR_RATIO, PAPER_STEP_TABLE, paper_steps
from humpback_plugin.axolotl.templates import VARIANTS, load_yaml
from humpback_plugin.axolotl.validate import check_config
from humpback_plugin.commands.common import Group, parse_settings
from humpback_plugin.core.errors import ConfigError, InputError, UsageError


class ConfigsGroup(Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return ["backward", "forward", "check", "steps"]


@click.group("configs", cls=ConfigsGroup)
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


def _render_and_write(role: str, iteration: int, options: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    out_dir: Path = options.pop("out_dir")
    validate = options.pop("validate")
    overrides = parse_settings(options.pop("settings"), "--set", "KEY=VALUE")
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
        except UsageError as exc:
            raise click.ClickException(str(exc)) from exc
        table.add_row(f"{n:,}", str(p.batch_size), str(p.steps), f"{p.epochs:.2f}", p.rule)
    Console().print(table)
