"""``humpback report``: an HTML report and a markdown summary of a run directory."""

from __future__ import annotations

from pathlib import Path

import click

from humpback_plugin.commands.common import command
from humpback_plugin.run.report import build_report


@command("report")
@click.argument(
    "run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), metavar="RUN_DIR"
)
@click.option(
    "-o",
    "--output",
    "output_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for report.html, summary.md, audit_sample.jsonl  [default: RUN_DIR/report]",
)
@click.option("--examples", default=3, show_default=True, help="Example pairs shown per score.")
@click.option(
    "--audit-per-score", default=20, show_default=True, help="Pairs per score in the audit sample."
)
@click.option(
    "--audit-iteration",
    type=int,
    help="Curate iteration to sample for the audit  [default: the latest with scores]",
)
@click.option("--seed", default=0, show_default=True, help="Random seed for the samples.")
@click.option(
    "--truncate", "truncate_at", default=600, show_default=True, help="Characters shown per text."
)
@click.option("--no-plots", is_flag=True, help="Tables only, even when matplotlib is installed.")
@click.option("--strict", is_flag=True, help="Fail on a malformed line instead of skipping it.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or summary table.")
def report_command(
    run_dir: Path,
    output_dir: Path | None,
    examples: int,
    audit_per_score: int,
    audit_iteration: int | None,
    seed: int,
    truncate_at: int,
    no_plots: bool,
    strict: bool,
    quiet: bool,
) -> None:
    """Write an HTML report and a markdown summary of a run directory.

    \b
    Reads RUN_DIR/manifest.json and the stage files (seed, segments, augment,
    curate_K) in one streaming pass, and writes to RUN_DIR/report/:
      report.html         self-contained page: stage counts and yield, rejections per
                          filter, score histograms, lengths beside the paper's Table 2,
                          throughput and tokens, example pairs per score
      summary.md          the tables as markdown
      audit_sample.jsonl  N pairs per score with an empty human_label to fill in
    Works on a half-finished run and says what is missing. Plots need matplotlib:
    pip install 'humpback-plugin[report]'.

    \b
    Example:
      humpback report runs/2024-06-01 --audit-per-score 50 --seed 7
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
    from rich.table import Table

    console = Console(stderr=True)
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=console,
        disable=quiet,
        transient=True,
    )
    with progress:
        result = build_report(
            run_dir,
            output_dir,
            examples_per_score=examples,
            audit_per_score=audit_per_score,
            audit_iteration=audit_iteration,
            seed=seed,
            truncate_at=truncate_at,
            plots=not no_plots,
            strict=strict,
            progress=progress,
        )
    if quiet:
        click.echo(result.html_path)
        return
    table = Table(title="humpback report", show_header=True)
    table.add_column("wrote")
    table.add_column("what")
    plots_note = (
        f"{result.plots} plot{'s' if result.plots != 1 else ''}"
        if result.plots
        else "no plots (install humpback-plugin[report])"
    )
    if no_plots:
        plots_note = "no plots (--no-plots)"
    table.add_row(str(result.html_path), plots_note)
    table.add_row(str(result.markdown_path), "markdown summary")
    if result.audit_path:
        table.add_row(str(result.audit_path), f"{result.audit_count} pairs to audit")
    data = result.data
    if data.missing:
        table.add_row("missing", ", ".join(data.missing))
    if data.skipped_total:
        table.add_row("skipped", f"{data.skipped_total} malformed lines")
    console.print(table)
    # stdout carries only the page's path, for `open $(humpback report RUN_DIR -q)`.
    click.echo(result.html_path)
