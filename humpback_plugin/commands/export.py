"""``humpback export``: Axolotl training sets for the backward model, M0 and M_k."""

from __future__ import annotations

from pathlib import Path

import click

from humpback_plugin.commands.common import command
from humpback_plugin.core.config import AugmentConfig, ExportConfig, default
from humpback_plugin.stages.export.stage import export_datasets


@command("export")
@click.argument("seed", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--curated",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Curated pairs A(k) (ScoredCandidate JSONL) from `humpback curate`.",
)
@click.option(
    "-i",
    "--iteration",
    type=int,
    help="k of the forward model M_k (default: 0, or 1 with --curated).",
)
@click.option(
    "-o",
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default="datasets",
    show_default=True,
    help="Folder for the datasets and their .card.json files.",
)
@click.option(
    "--format",
    "format_",
    default=default(ExportConfig, "format"),
    show_default=True,
    help="Row format: chat_template (messages with a system turn), instruction, or one a "
    "plugin registers.",
)
@click.option(
    "--backward/--no-backward",
    default=None,
    help="Write backward.jsonl (default: only without --curated).",
)
@click.option("--forward/--no-forward", default=True, help="Write the forward model's data.")
@click.option(
    "--template",
    default=default(AugmentConfig, "template"),
    show_default=True,
    help="Backtranslation prompt (a registered name or a file) with {output}; use the one "
    "`humpback augment` uses.",
)
@click.option("--min-score", type=float, help="Keep curated pairs scoring at least this.")
@click.option("--max-augmented", type=int, help="At most this many augmented rows.")
@click.option(
    "--augmented-ratio", type=float, help="At most this many augmented rows per seed row."
)
@click.option(
    "--seed-upsample", type=int, default=1, show_default=True, help="Repeat the seed pairs N times."
)
def export_command(
    seed: Path,
    curated: Path | None,
    iteration: int | None,
    out_dir: Path,
    format_: str,
    backward: bool | None,
    forward: bool,
    template: str,
    min_score: float | None,
    max_augmented: int | None,
    augmented_ratio: float | None,
    seed_upsample: int,
) -> None:
    """Write Axolotl training sets for the backward model, M0 or M_k.

    SEED is the seed pairs JSONL from `humpback seed` (instruction, output).

    \b
    Iteration 0 (no --curated) writes:
      backward.jsonl   output -> instruction, prompt as `humpback augment` sends it
      m0.jsonl         seed pairs, system "Answer in the style of an AI Assistant."
    Iteration k (--curated A_k.jsonl -i k) writes:
      m<k>.jsonl       seed pairs + curated pairs, these with system
                       "Answer with knowledge from web search."
    Each file gets a .card.json with counts, input hashes and thresholds.

    \b
    Examples:
      humpback export seed.jsonl -o run/datasets
      humpback export seed.jsonl --curated run/curated_1.jsonl -i 1 --min-score 4
      humpback configs forward -i 1 --dataset run/datasets/m1.jsonl --base-model ...
    """
    from rich.console import Console
    from rich.table import Table

    results = export_datasets(
        seed,
        out_dir,
        curated_path=curated,
        iteration=iteration,
        backward=backward,
        forward=forward,
        format=format_,
        template=template,
        min_score=min_score,
        max_augmented=max_augmented,
        augmented_ratio=augmented_ratio,
        seed_upsample=seed_upsample,
    )

    table = Table(title="humpback export")
    for column in ("dataset", "rows", "seed", "augmented", "path"):
        table.add_column(column)
    for r in results:
        counts = r.card.get("counts", {})
        table.add_row(
            r.name,
            str(r.rows),
            str(counts.get("seed_rows", counts.get("seed", ""))),
            str(counts.get("augmented", "-")),
            str(r.path),
        )
    Console(stderr=True).print(table)
