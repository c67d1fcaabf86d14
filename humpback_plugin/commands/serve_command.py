"""``humpback serve-command``: the `vllm serve` command of a run's trained model."""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from humpback_plugin.commands.common import command
from humpback_plugin.core.config import load_config
from humpback_plugin.core.errors import UsageError
from humpback_plugin.core.layout import RunLayout
from humpback_plugin.run.serve import role_serve_command


@command("serve-command")
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.argument("role")
def serve_command_command(run_dir: Path, role: str) -> None:
    """Print the `vllm serve` command that serves ROLE of RUN_DIR as it was trained.

    \b
    ROLE is backward, m0, m1, ... The command names the chat template Axolotl trained
    with (RUN_DIR/ROLE/chat_template.jinja, --chat-template: without it vLLM applies the
    base model's own template, to LoRA adapters too), serves a LoRA adapter beside its
    base model (--enable-lora --lora-modules NAME=PATH --max-lora-rank R) or a full
    fine-tune under its name, and uses the served name of serving.models.ROLE (else
    ROLE). `humpback run` writes the same command to RUN_DIR/ROLE/serve.sh.

    \b
    Example:
      humpback serve-command runs/r1 m0
      $(humpback serve-command runs/r1 backward) --port 8001
    """
    layout = RunLayout(run_dir)
    if not layout.config.exists():
        raise UsageError(f"{run_dir} is not a run directory (no config.yaml)")
    config = load_config(layout.config)
    roles = ["backward"] + [f"m{k}" for k in range(config.iterations + 1)]
    if role not in roles:
        raise UsageError(f"unknown role {role!r}; roles of this run: {', '.join(roles)}")
    click.echo(shlex.join(role_serve_command(layout, config, role)))
