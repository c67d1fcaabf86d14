"""Checking an Axolotl config without a GPU: every key against Axolotl's schema (Axolotl
drops unknown keys silently), then Axolotl's own ``validate_config`` when it is installed.

The schema is read live when Axolotl imports, else from the snapshot
``axolotl_configs/schema_keys.json``. Axolotl, torch and transformers are imported lazily:
the core works without them.
"""

from __future__ import annotations

import copy
import difflib
import json
from pathlib import Path
from typing import Any

from humpback_plugin.axolotl.templates import SCHEMA_SNAPSHOT
from humpback_plugin.core.errors import ConfigError
from humpback_plugin.core.jsonl_io import atomic_writer


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
