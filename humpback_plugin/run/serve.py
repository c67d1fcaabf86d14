"""How a run's trained models are served as they were trained: the chat template each
role was trained with, and the ``vllm serve`` command of each trained model.

The template comes from the trained model's folder (Axolotl saves the tokenizer with the
template it trained with) or, before that, from the role's rendered ``axolotl.yaml``
(``chat_template_jinja``). It is written to ``RUN_DIR/<role>/chat_template.jinja`` for
vLLM's ``--chat-template``; the template check compares the server against the folder or
config it came from, whose tokenizer also gives the special tokens.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

from humpback_plugin.core.chat_template import (
    TrainingTemplate,
    load_training_template,
    template_of_folder,
)
from humpback_plugin.core.config import RunConfig
from humpback_plugin.core.errors import InputError, UsageError
from humpback_plugin.core.jsonl_io import atomic_writer
from humpback_plugin.core.layout import RunLayout
from humpback_plugin.vllm.serving import serve_command


def template_source(layout: RunLayout, role: str) -> Path | None:
    """Where ``role``'s training template is read from: the trained model's folder when
    it holds one, else the rendered Axolotl config; None before either exists."""
    trained = layout.trained(role)
    if trained.is_dir() and template_of_folder(trained) is not None:
        return trained
    config = layout.axolotl_config(role)
    return config if config.exists() else None


def training_template(layout: RunLayout, role: str) -> TrainingTemplate | None:
    source = template_source(layout, role)
    if source is None:
        return None
    try:
        return load_training_template(source)
    except InputError:
        return None  # a named Axolotl template and no trained tokenizer yet: unknown


def write_chat_template(layout: RunLayout, role: str) -> Path | None:
    """``RUN_DIR/<role>/chat_template.jinja`` with ``role``'s training template (rewritten
    only when it changed); None when the template is not known yet."""
    template = training_template(layout, role)
    if template is None:
        return None
    path = layout.chat_template(role)
    if not path.exists() or path.read_text(encoding="utf-8") != template.text:
        with atomic_writer(path) as fh:
            fh.write(template.text)
    return path


def role_serve_command(layout: RunLayout, config: RunConfig, role: str) -> list[str]:
    """The ``vllm serve`` command that serves ``role`` as it was trained."""
    axolotl = layout.axolotl_config(role)
    if not axolotl.exists():
        raise UsageError(
            f"{layout.root} has no {role} model yet ({axolotl} is missing): "
            f"run it until {role}_data first"
        )
    rendered = yaml.safe_load(axolotl.read_text(encoding="utf-8")) or {}
    trained = layout.trained(role)
    lora = (trained / "adapter_config.json").exists() or bool(rendered.get("adapter"))
    return serve_command(
        trained=trained,
        served_name=config.serving.models.get(role) or role,
        base_model=str(rendered.get("base_model") or config.training.base_model),
        chat_template=write_chat_template(layout, role),
        lora=lora,
        lora_rank=rendered.get("lora_r"),
    )


def write_serve_script(layout: RunLayout, config: RunConfig, role: str) -> tuple[Path, str]:
    """``RUN_DIR/<role>/serve.sh`` (executable); returns its path and the command."""
    command = shlex.join(role_serve_command(layout, config, role))
    path = layout.serve_script(role)
    with atomic_writer(path) as fh:
        fh.write(
            "#!/bin/sh\n"
            f"# Serve {role} of {layout.root.resolve()} with vLLM, with the chat template it\n"
            "# was trained with (paths are this machine's; extra vLLM flags go after it).\n"
            f'exec {command} "$@"\n'
        )
    path.chmod(0o755)
    return path, command
