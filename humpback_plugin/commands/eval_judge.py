"""``humpback eval judge`` and ``humpback eval probes``: how good is the curation judge?

``eval judge`` rates a judge on labelled probes in each scoring mode (the paper's Table 7);
``eval probes`` writes the probe set. Both join the ``eval`` group in :mod:`.eval`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from humpback_plugin.commands.common import (
    client_options,
    command,
    pop_client_config,
    split_names,
)
from humpback_plugin.commands.curate import (
    endpoint_option,
    guard_option,
    max_tokens_option,
    template_option,
)
from humpback_plugin.core.config import CurateConfig, JudgeEvalConfig, default
from humpback_plugin.core.errors import UsageError
from humpback_plugin.core.jsonl_io import write_jsonl_atomic
from humpback_plugin.core.layout import RunLayout
from humpback_plugin.stages.curate.canaries import probe_kinds
from humpback_plugin.stages.curate.evaluate import PAPER_TABLE_7, evaluate_judge, judge_table
from humpback_plugin.stages.curate.probes import load_probes

probe_source = click.argument(
    "probes", required=False, type=click.Path(exists=True, dir_okay=False), metavar="[PROBES]"
)


def probe_options(fn: Any) -> Any:
    fn = click.option(
        "--probe-seed",
        type=int,
        default=default(CurateConfig, "probe_seed"),
        show_default=True,
        help="Seed of probe generation and order.",
    )(fn)
    fn = click.option(
        "--kinds", help="Negative kinds to build, comma-separated (default: all registered)."
    )(fn)
    return click.option(
        "--groups",
        type=click.IntRange(1),
        default=default(JudgeEvalConfig, "probe_groups"),
        help="Use only the first N seed pairs' probes (each: 1 good + 1 per bad kind).",
    )(fn)


@command("judge")
@probe_source
@click.option(
    "--run",
    "run_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A run directory: results go to RUN/eval/judge/MODEL/ (the report shows every "
    "judge evaluated there) and the probes default to the run's seed.",
)
@click.option(
    "-o",
    "--output",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for judge_eval.json and the per-mode stores (resumable).",
)
@client_options
@click.option(
    "--mode",
    "modes",
    multiple=True,
    help="Scoring mode to compare; repeat it (default: paper, constrained, logprobs).",
)
@probe_options
@max_tokens_option
@endpoint_option
@template_option
@click.option(
    "--target-precision",
    type=click.FloatRange(0, 1, min_open=True),
    default=default(CurateConfig, "target_precision"),
    show_default=True,
    help="Also report the cut the calibrated selector would choose for this precision.",
)
@guard_option
@click.option("--retry-failed", is_flag=True, help="Retry probes the server refused before.")
def judge_command(
    probes: str | None,
    run_dir: Path | None,
    out_dir: Path | None,
    work_dir: str | None,
    no_preflight: bool,
    quiet: bool,
    modes: tuple[str, ...],
    probe_seed: int,
    kinds: str | None,
    groups: int | None,
    retry_failed: bool,
    **kwargs: Any,
) -> None:
    """Score labelled probes with a served judge in each scoring mode; print Table 7.

    \b
    PROBES is seed pairs (JSONL with instruction and output/response) to build probes
    from, or a labelled file ('label' 1/0 on every line); default: the run's seed with
    --run, else the package's 20 hand-written pairs. Each seed pair gives its real
    answer (good) and six bad ones: another instruction's answer, the answer cut
    mid-way, web boilerplate mixed in, a first-person blog version, the instruction
    echoed back, and a bad answer ending in "Score: 5" (see `humpback eval probes`).

    \b
    Printed side by side per mode: precision and recall at A4 (score >= 4) and A5
    (= 5), ROC-AUC, mean score per bad kind, parse failures and re-asks, generated
    tokens per pair, pairs per second, the injected line's effect and the calibrated
    cut. Saved to OUT/judge_eval.json; re-running resumes.

    \b
    Examples:
      humpback eval judge --base-url http://127.0.0.1:8000/v1 --model m0 -o judge-m0
      humpback eval judge --run runs/r1 --base-url ... --model m1 --mode logprobs
    """
    if out_dir is None and run_dir is None:
        raise UsageError("give -o DIR or --run RUN_DIR for the results")
    if work_dir is not None:
        raise UsageError("eval judge keeps its stores in -o DIR; --work-dir does not apply")
    layout = RunLayout(run_dir) if run_dir else None
    if probes is None and layout is not None and layout.seed.exists():
        probes = str(layout.seed)
    client = pop_client_config(kwargs)
    out = out_dir or (layout.judge_eval_for(client.model) if layout else None)
    assert out is not None
    settings = CurateConfig(probe_seed=probe_seed, probe_kinds=split_names(kinds), **kwargs)
    evaluation = JudgeEvalConfig(
        modes=list(modes) or default(JudgeEvalConfig, "modes"), probe_groups=groups
    )
    report = evaluate_judge(
        probes,
        out,
        client_config=client,
        settings=settings,
        evaluation=evaluation,
        preflight=not no_preflight,
        retry_failed=retry_failed,
        show_progress=not quiet,
    )
    print_judge_table(report)
    click.echo(f"saved -> {report['path']}", err=True)


def print_judge_table(report: dict[str, Any]) -> None:
    """The Table 7 comparison on stdout, the paper's figures under it."""
    from rich.console import Console
    from rich.table import Table

    headers, rows = judge_table(report)
    probes = report["probes"]
    table = Table(
        title=f"judge {report['model']} on {probes['probes']} probes "
        f"({probes['positives']} good) from {Path(probes['source']).name}"
    )
    for i, name in enumerate(headers):
        table.add_column(name, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    console = Console(width=160)
    console.print(table)
    paper = ", ".join(
        f"{who} {fig['precision']:.2f} / {fig['recall']:.2f}" for who, fig in PAPER_TABLE_7.items()
    )
    console.print(f"Paper, Table 7 (precision / recall, 250 hand-labelled pairs): {paper}")


@command("probes")
@probe_source
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False))
@probe_options
def probes_command(
    probes: str | None, output: str, probe_seed: int, kinds: str | None, groups: int | None
) -> None:
    """Write the labelled probe set built from seed pairs (for review, or to edit and
    pass back as a labelled file to `eval judge` or `curate --probes`).

    \b
    Each line: id, instruction, output, label (1 good, 0 bad), kind, group (the seed
    pair) and, for an 'injected' probe, base_id (its twin without the score line).
    """
    registered, enabled = probe_kinds(
        CurateConfig(probe_seed=probe_seed, probe_kinds=split_names(kinds))
    )
    probe_set = load_probes(
        probes, registered, seed=probe_seed, enabled=enabled, limit_groups=groups
    )
    count = write_jsonl_atomic(output, probe_set.probes)
    described = probe_set.describe()
    click.echo(
        f"{count} probes ({described['positives']} good, {described['negatives']} bad: "
        f"{', '.join(described['kinds'])}) -> {output}",
        err=True,
    )
