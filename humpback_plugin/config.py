"""The run configuration: one YAML file that picks every component by name.

Unknown keys and wrong types are errors that name the file and the key: Axolotl silently
ignores unknown keys, and a typo in a half-million-document run should not cost a day.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from humpback_plugin.jsonl_io import InputError

# Axolotl keys the run sets itself (where the model and data are written and read).
RUN_OWNED_AXOLOTL_KEYS = frozenset({"output_dir", "dataset_prepared_path", "datasets"})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SeedConfig(_Strict):
    inputs: list[str] = Field(default_factory=list, description="seed files (oasst1, pairs)")
    limit: int | None = Field(3200, description="the paper uses 3,200 oasst1 first turns")
    options: dict[str, Any] = Field(default_factory=dict)


class CorpusConfig(_Strict):
    inputs: list[str] = Field(default_factory=list, description="files, folders or globs")
    text_field: str = "text"
    filters: list[str] | None = Field(None, description="segment filters by name; None = all")
    filter_options: dict[str, dict[str, Any]] = Field(default_factory=dict)
    max_segments: int | None = None


class AugmentConfig(_Strict):
    template: str = "backtranslation.txt"
    endpoint: Literal["chat", "completions"] = "chat"
    temperature: float = 0.7
    top_p: float = 0.9
    max_tokens: int = 128
    n: int = 1
    seed: int | None = None
    filters: list[str] | None = None


class CurateConfig(_Strict):
    mode: str = Field("paper", description="scorer: paper | constrained | logprobs | plugin")
    threshold: float = Field(4.0, description="keep score >= k (A4 = 4, A5 = 5)")
    final_threshold: float | None = Field(None, description="k for the last iteration")
    max_tokens: int = 256


class TrainingConfig(_Strict):
    base_model: str = Field(..., description="what Axolotl fine-tunes: a path or model name")
    adapter: Literal["full", "lora", "qlora"] = "full"
    profile: Literal["gpu", "cpu"] = "gpu"
    num_gpus: int = 1
    max_steps: int | None = Field(None, description="override the paper's step table")
    sequence_len: int | None = None
    overrides: dict[str, Any] = Field(default_factory=dict, description="extra Axolotl keys")
    execute: bool = Field(False, description="run `axolotl train` (else print it and wait)")
    axolotl_bin: str = "axolotl"

    @field_validator("overrides")
    @classmethod
    def _run_dir_owns_the_paths(cls, overrides: dict[str, Any]) -> dict[str, Any]:
        # The run writes the model and the prepared data under RUN_DIR/<role>/ and reads
        # them back from there: an override would send Axolotl's output outside the run.
        taken = sorted(RUN_OWNED_AXOLOTL_KEYS & overrides.keys())
        if taken:
            raise ValueError(
                f"{', '.join(taken)}: set by the run to a path inside the run directory "
                "(not overridable)"
            )
        return overrides


class ServingConfig(_Strict):
    base_urls: list[str] = Field(default_factory=list, description="empty = embedded server")
    api_key_env: str = "HUMPBACK_API_KEY"
    api_key_file: str | None = None
    concurrency: int = 32
    timeout_s: float = 300.0
    models: dict[str, str] = Field(
        default_factory=dict,
        description="served model name per role: backward, m0, m1 (judges of iterations 1, 2)",
    )
    embedded_port: int = 0


class RunConfig(_Strict):
    seed: SeedConfig = Field(default_factory=SeedConfig)
    corpus: CorpusConfig = Field(default_factory=CorpusConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    curate: CurateConfig = Field(default_factory=CurateConfig)
    training: TrainingConfig
    serving: ServingConfig = Field(default_factory=ServingConfig)
    iterations: int = Field(2, ge=1, le=5, description="the paper runs two")


def load_config(path: str | os.PathLike) -> RunConfig:
    """Load and validate a run config; errors name the file and the offending key."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise InputError(path, None, "no such file") from exc
    except UnicodeDecodeError as exc:
        raise InputError(path, f"byte {exc.start}", "not UTF-8") from exc
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = mark.line + 1 if mark is not None else None
        raise InputError(path, where, f"invalid YAML: {getattr(exc, 'problem', exc)}") from exc
    if not isinstance(data, dict):
        raise InputError(path, None, "expected a mapping at the top level")
    return parse_config(data, source=path)


def parse_config(data: dict[str, Any], source: str | os.PathLike = "<config>") -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"])
            if err["type"] == "extra_forbidden":
                problems.append(f"unknown key {key!r}")
            else:
                problems.append(f"{key}: {err['msg']}")
        raise InputError(source, None, "; ".join(problems)) from exc


def dump_config(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
