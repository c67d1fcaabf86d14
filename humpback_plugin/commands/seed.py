"""``humpback seed``: human-written seed pairs."""

from __future__ import annotations

import json
from typing import Any

import click

from humpback_plugin.commands.common import command
from humpback_plugin.core.jsonl_io import write_json_atomic
from humpback_plugin.stages.seed.loaders import OASST_DEFAULTS
from humpback_plugin.stages.seed.stage import SeedSummary, load_seed


def print_seed_summary(summary: SeedSummary) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Seed pairs -> {summary.output}")
    for col in ("input", "format", "pairs", "dropped (reason: count)", "bad records"):
        table.add_column(col, justify="right" if col in ("pairs", "bad records") else "left")
    for path, info in summary.by_input.items():
        dropped = ", ".join(f"{k}: {v}" for k, v in info["dropped"].items()) or "-"
        table.add_row(path, info["format"], f"{info['pairs']:,}", dropped, str(info["bad_records"]))
    Console(stderr=True).print(table)


@command("seed")
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Seed JSONL.")
@click.option(
    "--format",
    "loader",
    default=None,
    help="oasst_messages, oasst_trees or pairs (default: detected from the first record).",
)
@click.option("--limit", type=int, default=None, help="At most this many pairs (paper: 3200).")
@click.option(
    "--lang",
    default=OASST_DEFAULTS["lang"],
    show_default=True,
    help="oasst language; '' for all.",
)
@click.option(
    "--rank",
    default=str(OASST_DEFAULTS["rank"]),
    show_default=True,
    help="oasst reply rank to take; 'best' takes the best-ranked reply that is left.",
)
@click.option("--keep-deleted", is_flag=True, help="oasst: keep messages marked deleted.")
@click.option("--keep-synthetic", is_flag=True, help="oasst: keep synthetic (machine) trees.")
@click.option("--keep-review-failed", is_flag=True, help="oasst: keep review_result=false.")
@click.option("--instruction-field", default=None, help="Field with the instruction.")
@click.option("--output-field", default=None, help="Field with the response.")
@click.option(
    "--input-field", default=None, help="Field folded into the instruction (Alpaca input)."
)
@click.option("--split", default="train", show_default=True, help="Split of an hf: dataset.")
@click.option(
    "--skip-bad-records", is_flag=True, help="Skip and count malformed lines instead of stopping."
)
@click.option("--summary", "summary_path", type=click.Path(dir_okay=False), help="Summary JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No summary table.")
def seed_command(
    inputs: tuple[str, ...],
    output: str,
    loader: str | None,
    limit: int | None,
    lang: str,
    rank: str,
    keep_deleted: bool,
    keep_synthetic: bool,
    keep_review_failed: bool,
    instruction_field: str | None,
    output_field: str | None,
    input_field: str | None,
    split: str,
    skip_bad_records: bool,
    summary_path: str | None,
    quiet: bool,
) -> None:
    """Collect human-written seed pairs (paper section 2).

    \b
    Open Assistant (oasst1), as in the paper: the first turn of each tree only (root
    prompt + an assistant reply to it), English only, the reply with human rank 0.
    Both formats are detected from the first record:
      flat message table   one message per line (message_id, parent_id, role, rank...)
      *.trees.jsonl        one nested conversation tree per line
    Default quality filters (turn off with the --keep-* flags): drop messages marked
    deleted, synthetic (machine-written) trees and messages that failed review
    (review_result false). A tree whose rank-0 reply is gone gives no pair.

    \b
    Generic pairs (JSONL, a JSON list, or hf:NAME[:SPLIT] with `datasets` installed):
      Dolly    instruction / response (+ context folded into the instruction)
      Alpaca   instruction / output (+ input folded into the instruction)
      LIMA     conversations: [question, answer, ...] (first turn)
      chat     messages: [{role: user}, {role: assistant}]
    or map fields with --instruction-field / --output-field / --input-field.

    \b
    Bad input stops with the file and line (malformed JSON, non-UTF-8, a missing field);
    --skip-bad-records skips and counts such lines instead. Exact duplicate pairs are
    dropped. The output is written completely or not at all.

    \b
    Example:
      humpback seed oasst1/2023-04-12_oasst_ready.trees.jsonl.gz -o seed.jsonl --limit 3200
    """
    if rank != "best" and not rank.lstrip("-").isdigit():
        raise click.BadParameter(f"{rank!r}: a number or 'best'", param_hint="--rank")
    options: dict[str, Any] = {
        "lang": lang,
        "rank": None if rank == "best" else int(rank),
        "drop_deleted": not keep_deleted,
        "drop_synthetic": not keep_synthetic,
        "drop_review_failed": not keep_review_failed,
        "instruction_field": instruction_field,
        "output_field": output_field,
        "input_field": input_field,
        "split": split,
    }
    summary = load_seed(
        list(inputs),
        output,
        loader=loader,
        options=options,
        limit=limit,
        skip_bad_records=skip_bad_records,
    )
    if summary_path:
        write_json_atomic(summary_path, summary.to_dict())
    if not quiet:
        print_seed_summary(summary)
    click.echo(json.dumps({"pairs": summary.pairs, "output": str(output)}))
