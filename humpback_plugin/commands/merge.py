"""``humpback merge``: join the outputs of ``--shard I/N`` runs."""

from __future__ import annotations

from pathlib import Path

import click

from humpback_plugin.commands.common import command
from humpback_plugin.run.merge import expected_ids, merge_shards, missing_ids


@command("merge")
@click.argument("parts", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--key", default="id", show_default=True, help="Field that identifies a record.")
@click.option(
    "--expect",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The unsharded input (e.g. segments.jsonl): report inputs no shard produced.",
)
@click.option(
    "--expect-key",
    default="id",
    show_default=True,
    help="Field of --expect records that output keys refer to.",
)
@click.option(
    "--by", default=None, help="Output field holding the --expect id (default: same as --key)."
)
def merge_command(
    parts: tuple[Path, ...],
    output: Path,
    key: str,
    expect: Path | None,
    expect_key: str,
    by: str | None,
) -> None:
    """Join the outputs of `--shard i/n` runs into one dataset, with no record lost or doubled.

    \b
    Example (4 machines, then one merge):
      humpback augment segments.jsonl -o cand.0.jsonl --shard 0/4 ...   # machine 0
      ...
      humpback merge cand.*.jsonl -o candidates.jsonl --expect segments.jsonl --by segment_id
    """
    expected = expected_ids(expect, expect_key) if expect is not None else None
    summary = merge_shards(list(parts), output, key=key)
    if expected is not None:
        missing = missing_ids(output, expected, by or key)
        if missing:
            click.echo(
                f"warning: {len(missing)} inputs have no output in any shard "
                f"(e.g. {missing[0]}); they may have been filtered or failed - see each "
                "shard's summary, or re-run that shard to resume it.",
                err=True,
            )
    click.echo(f"merged {summary['records']} records from {summary['parts']} parts -> {output}")
