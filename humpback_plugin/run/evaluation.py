"""The evaluation steps of ``humpback run``: did M1 and M2 get better than M0?

``eval_generate``: every model (M0 ... MN by default) answers the evaluation set with the
main system condition, and the last model also under each condition of the tag ablation.
``eval_lm_eval``: lm-eval's multiple-choice accuracy of every model. ``eval_compare``: the
judge compares each model with the reference outputs and with M0 (both orders), and each
ablation condition with the reference. Each step calls the same library function as its
``humpback eval`` subcommand, with the run config's ``eval`` section.

The answers of one model (all its system conditions) and all the comparisons (one judge)
run concurrently, so the server batches them. On the embedded vLLM one server holds every
LoRA adapter and the base model (the judge), so nothing restarts between models; full
fine-tunes are served one at a time, so each step asks the model being served first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from humpback_plugin.core import event_loop
from humpback_plugin.core.client import ClientConfig
from humpback_plugin.core.config import RunConfig
from humpback_plugin.core.console import Say
from humpback_plugin.core.engine import Engine
from humpback_plugin.core.errors import UsageError
from humpback_plugin.core.layout import RunLayout
from humpback_plugin.core.manifest import Manifest
from humpback_plugin.stages.eval.compare import SUMMARY_NAME, VERDICTS_NAME, compare_async
from humpback_plugin.stages.eval.generate import default_generator, generate_async
from humpback_plugin.stages.eval.instructions import read_items
from humpback_plugin.stages.eval.lm_eval import run_lm_eval_many

REFERENCE = "reference"
# What a comparison's manifest stats keep (the full summary is in its summary.json).
COMPARE_STATS = (
    "model",
    "baseline",
    "judged",
    "failed",
    "win_rate",
    "win_rate_ci",
    "wins",
    "ties",
    "losses",
    "tie_rate",
    "first_position_rate",
    "mean_length_model",
    "mean_length_baseline",
)


class RunContext(Protocol):
    """What the steps need of the pipeline."""

    config: RunConfig
    paths: RunLayout
    manifest: Manifest
    log: Say

    def _client_config(self, role: str, chat: bool = True) -> ClientConfig: ...

    def serve_order(self, roles: list[str]) -> list[str]: ...

    def engine(self) -> Engine: ...


def models_to_evaluate(config: RunConfig) -> list[str]:
    return config.eval.models or [f"m{k}" for k in range(config.iterations + 1)]


def ablation_model(config: RunConfig) -> str:
    return config.eval.ablation_model or f"m{config.iterations}"


def generation_jobs(config: RunConfig) -> list[tuple[str, str, str]]:
    """(output name, model role, system condition) of every set of answers."""
    main = config.eval.generate.system
    jobs = [(model, model, main) for model in models_to_evaluate(config)]
    last = ablation_model(config)
    jobs += [(f"{last}.{cond}", last, cond) for cond in config.eval.ablation if cond != main]
    return jobs


def reference_path(config: RunConfig) -> str | None:
    """The reference outputs: ``eval.reference``, else the instruction set when it has
    outputs (AlpacaEval's davinci-003 file does), else None."""
    cfg = config.eval
    if cfg.reference:
        return cfg.reference
    items = read_items(cfg.instructions, limit=cfg.limit) if cfg.instructions else []
    return cfg.instructions if items and all(i.output is not None for i in items) else None


def comparison_jobs(config: RunConfig) -> list[tuple[str, str]]:
    """(outputs name, baseline) pairs: each model against each of ``eval.against`` (a
    model is not compared with itself), each ablation condition against the reference."""
    models = models_to_evaluate(config)
    names = [name for name, _, _ in generation_jobs(config)]
    jobs = []
    for model in models:
        for baseline in config.eval.against:
            if baseline != REFERENCE and baseline not in models:
                raise UsageError(
                    f"eval.against: {baseline!r} is neither `reference` nor an evaluated "
                    f"model ({', '.join(models)})"
                )
            if baseline != model:
                jobs.append((model, baseline))
    jobs += [(name, REFERENCE) for name in names if name not in models]
    return jobs


def step_inputs(config: RunConfig, paths: RunLayout, step: str) -> list[Path]:
    """The files an evaluation step reads; a change in any of them runs it again (the
    trained models are folders, fingerprinted by their listing)."""
    cfg = config.eval
    if step == "generate":
        roles = dict.fromkeys(role for _, role, _ in generation_jobs(config))
        instructions = [Path(cfg.instructions)] if cfg.instructions else []
        return instructions + [paths.trained(role) for role in roles]
    if step == "compare":
        reference = reference_path(config)
        outputs = [paths.eval_outputs(name) for name, _ in comparison_jobs(config)]
        return list(dict.fromkeys(outputs)) + ([Path(reference)] if reference else [])
    tasks = [Path(p) for p in cfg.lm_eval.tasks.values()]
    return tasks + [paths.trained(model) for model in models_to_evaluate(config)]


def step_settings(config: RunConfig, step: str) -> list[Any]:
    """The settings that decide an evaluation step's outputs (each step only its own)."""
    cfg = config.eval
    models = [config.serving.models.get(role) for role in models_to_evaluate(config)]
    if step == "generate":
        return [cfg.model_dump(mode="json", exclude={"compare", "lm_eval"}), models]
    if step == "compare":
        judge = config.serving.models.get(cfg.judge)
        return [cfg.model_dump(mode="json", exclude={"generate", "lm_eval"}), judge]
    return [cfg.lm_eval, models]


def _gather(jobs: list[Callable[[], Any]]) -> list[Any]:
    async def run_all() -> list[Any]:
        return await asyncio.gather(*(job() for job in jobs))

    return event_loop.run(run_all())


def step_generate(run: RunContext) -> None:
    cfg = run.config.eval
    if not cfg.instructions:
        raise UsageError("eval.instructions is not set: name the evaluation set")
    jobs = generation_jobs(run.config)
    roles = list(dict.fromkeys(role for _, role, _ in jobs))
    engine = run.engine()  # the run's (``engine: ray``: the requests from Ray actors)

    def job(name: str, role: str, client: ClientConfig, condition: str) -> Callable[[], Any]:
        settings = cfg.generate.model_copy(update={"system": condition})
        return lambda: generate_async(
            cfg.instructions,
            run.paths.eval_outputs(name),
            client_config=client,
            settings=settings,
            generator=default_generator(role, condition),
            limit=cfg.limit,
            show_progress=False,  # several jobs at once: one line each when done
            engine=engine,
        )

    run.log(f"  answering {cfg.instructions} with {', '.join(n for n, _, _ in jobs)}")
    # One model at a time (its conditions together): a batch then holds one adapter, the
    # path the CPU server is known to handle well; a GPU server is busy either way.
    # Each model's client is made just before its answers: serving a full fine-tune can
    # restart the embedded server, which moves the others' URLs.
    by_name: dict[str, dict[str, Any]] = {}
    for role in run.serve_order(roles):
        client = run._client_config(role)
        mine = [(name, cond) for name, r, cond in jobs if r == role]
        answers = _gather([job(name, role, client, cond) for name, cond in mine])
        by_name.update(zip([name for name, _ in mine], answers, strict=True))
    stats = {}
    for name, _, _ in jobs:
        summary = by_name[name]
        run.log(
            f"  {name}: {summary['answered']} answers, {summary['missing']} missing, "
            f"{summary['truncated']} cut at max_tokens, {summary['elapsed_s']:.0f}s"
        )
        stats[name] = {
            k: summary[k]
            for k in (
                "generator",
                "system",
                "answered",
                "missing",
                "truncated",
                "empty",
                "mean_output_chars",
                "completion_tokens",
                "elapsed_s",
                "model",
            )
        }
    run.manifest.finish(
        "eval_generate",
        inputs=step_inputs(run.config, run.paths, "generate"),
        outputs=[run.paths.eval_outputs(name) for name, _, _ in jobs],
        stats=stats,
        model=", ".join(sorted(roles)),
    )


def step_compare(run: RunContext) -> None:
    cfg = run.config.eval
    reference = reference_path(run.config)
    jobs = comparison_jobs(run.config)
    skipped = [f"{name} vs reference" for name, base in jobs if base == REFERENCE and not reference]
    if skipped:
        run.log(f"  no reference outputs (eval.reference): skipping {', '.join(skipped)}")
        jobs = [(name, base) for name, base in jobs if base != REFERENCE or reference]
    judge = run._client_config(cfg.judge)

    def baseline_file(baseline: str) -> str:
        return str(reference) if baseline == REFERENCE else str(run.paths.eval_outputs(baseline))

    def job(name: str, baseline: str) -> Callable[[], Any]:
        return lambda: compare_async(
            run.paths.eval_outputs(name),
            baseline_file(baseline),
            run.paths.eval_comparison(name, baseline),
            client_config=judge,
            settings=cfg.compare,
            baseline_name=baseline,
            limit=cfg.limit if baseline == REFERENCE else None,
            show_progress=False,
        )

    run.log(f"  judge {judge.model}: {len(jobs)} comparisons, each pair in both orders")
    summaries = _gather([job(*spec) for spec in jobs])
    stats = {}
    for (name, baseline), summary in zip(jobs, summaries, strict=True):
        ci = summary["win_rate_ci"]
        interval = f" [{ci[0]:.1f}, {ci[1]:.1f}]" if ci else ""
        run.log(f"  {name} vs {baseline}: win rate {summary['win_rate']}{interval}")
        stats[f"{name}_vs_{baseline}"] = {k: summary.get(k) for k in COMPARE_STATS}
    outputs: list[Path] = []
    for name, baseline in jobs:
        folder = run.paths.eval_comparison(name, baseline)
        outputs += [folder / VERDICTS_NAME, folder / SUMMARY_NAME]
    run.manifest.finish(
        "eval_compare",
        inputs=step_inputs(run.config, run.paths, "compare"),
        outputs=outputs,
        stats=stats,
        model=judge.model,
        server_urls=judge.base_urls,
    )


def lm_eval_tokenizer(config: RunConfig) -> str:
    """The tokenizer lm-eval reads: ``eval.lm_eval.tokenizer``, else the base model's."""
    return config.eval.lm_eval.tokenizer or config.training.base_model


def step_lm_eval(run: RunContext) -> None:
    settings = run.config.eval.lm_eval
    tokenizer = lm_eval_tokenizer(run.config)
    models = models_to_evaluate(run.config)
    tasks = ", ".join([*settings.tasks, *settings.task_names])
    order = run.serve_order(models)
    # On the user's own servers one lm-eval per model, all at once; on the embedded ones
    # (CPU cores shared with lm-eval) one after the other, each server started in turn.
    batches = [order] if run.config.serving.base_urls else [[model] for model in order]
    stats = {}
    for batch in batches:
        # completions: any chat template serves them, no restart for one
        clients = [run._client_config(model, chat=False) for model in batch]
        run.log(f"  lm-eval: {', '.join(batch)} on {tasks}")
        summaries = run_lm_eval_many(
            [(run.paths.eval_lm_eval(m), c) for m, c in zip(batch, clients, strict=True)],
            settings=settings,
            tokenizer=tokenizer,
        )
        for model, summary in zip(batch, summaries, strict=True):
            scores = ", ".join(f"{t} {s.get('acc')}" for t, s in summary["tasks"].items())
            run.log(f"  {model}: {scores} ({summary['elapsed_s']:.0f}s)")
            stats[model] = {"tasks": summary["tasks"], "elapsed_s": summary["elapsed_s"]}
    stats = {model: stats[model] for model in models}  # the run's order, not the asking order
    outputs = [run.paths.eval_lm_eval(model) / "summary.json" for model in models]
    run.manifest.finish(
        "eval_lm_eval",
        inputs=step_inputs(run.config, run.paths, "lm_eval"),
        outputs=outputs,
        stats=stats,
        model=", ".join(models),
    )
