"""The Axolotl config templates shipped with the package (``axolotl_configs/``, reached
through the link ``humpback_plugin/axolotl_templates``): per-role bases, variant overlays,
chat templates, DeepSpeed files and the schema snapshot."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml

from humpback_plugin.core.errors import ConfigError, InputError

# A link to the repo's axolotl_configs/, shipped as package data so a wheel has it too.
CONFIGS_DIR = Path(
    os.environ.get(
        "HUMPBACK_AXOLOTL_CONFIGS", Path(__file__).resolve().parent.parent / "axolotl_templates"
    )
)
SCHEMA_SNAPSHOT = CONFIGS_DIR / "schema_keys.json"
AXOLOTL_VERSION = "0.19.0"

ROLES = ("backward", "forward")
VARIANTS = ("full", "lora", "qlora", "zero3", "fsdp2")
MULTI_GPU_VARIANTS = ("zero3", "fsdp2")
CHAT_TEMPLATE_FILES = {"llama2_inst": CONFIGS_DIR / "chat_templates" / "llama2_inst.jinja"}


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
