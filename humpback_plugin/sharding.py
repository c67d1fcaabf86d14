"""Split a stage across machines (`--shard i/n`) and join the pieces (`humpback merge`).

A record belongs to shard ``i`` of ``n`` when a hash of its id modulo ``n`` is ``i``: every
machine decides alone, no coordination, and every record lands in exactly one shard.
The merge refuses to write a dataset with a record missing or doubled.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import click

from humpback_plugin.hookspecs import hookimpl
from humpback_plugin.jsonl_io import InputError, iter_jsonl, write_jsonl_atomic


def parse_shard(spec: str | None) -> tuple[int, int] | None:
    """``"2/8"`` -> (2, 8); None stays None."""
    if not spec:
        return None
    try:
        i_text, n_text = spec.split("/")
        i, n = int(i_text), int(n_text)
    except ValueError:
        raise click.BadParameter(f"expected I/N such as 0/4, got {spec!r}") from None
    if n < 1 or not 0 <= i < n:
        raise click.BadParameter(f"shard {spec!r}: need 0 <= I < N")
    return i, n


# The option every record-parallel command shares.
shard_option = click.option(
    "--shard",
    metavar="I/N",
    help="Process only shard I of N (by record id), e.g. 0/4 on the first of four machines; "
    "join the outputs with `humpback merge`.",
)


def in_shard(record_id: str, shard: tuple[int, int] | None) -> bool:
    if shard is None:
        return True
    i, n = shard
    return int(hashlib.sha256(record_id.encode()).hexdigest()[:12], 16) % n == i


def shard_filter(
    records: Iterable[dict[str, Any]], shard: tuple[int, int] | None, id_field: str = "id"
) -> Iterator[dict[str, Any]]:
    for record in records:
        if in_shard(str(record[id_field]), shard):
            yield record


def merge_shards(
    parts: list[Path],
    output: Path,
    *,
    key: str = "id",
) -> dict[str, Any]:
    """Concatenate shard outputs; refuse (and write nothing) when a record is doubled."""
    seen: dict[str, str] = {}

    def records() -> Iterator[dict[str, Any]]:
        for part in parts:
            for line, record in iter_jsonl(part):
                if key not in record:
                    raise InputError(part, line, f"record has no {key!r} field")
                rid = str(record[key])
                if rid in seen:
                    # Raising inside the writer aborts it: no merged file is left behind.
                    raise click.ClickException(
                        f"record {rid} is in several shards ({seen[rid]} and {part}:{line}); "
                        "were the shards run with different N?"
                    )
                seen[rid] = f"{part}:{line}"
                yield record

    count = write_jsonl_atomic(output, records())
    return {"parts": len(parts), "records": count}


@hookimpl
def register_commands(cli: Any) -> None:
    cli.add_command(merge_command)


@click.command(name="merge")
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
    expected = None
    if expect is not None:
        expected = []
        for line, record in iter_jsonl(expect):
            if expect_key not in record:
                raise click.ClickException(f"{expect}:{line}: record has no {expect_key!r} field")
            expected.append(str(record[expect_key]))
    field = by or key
    summary = merge_shards(list(parts), output, key=key)
    if expected is not None:
        produced = {str(r.get(field)) for _, r in iter_jsonl(output)}
        missing = [i for i in expected if i not in produced]
        summary["missing"] = len(missing)
        if missing:
            click.echo(
                f"warning: {len(missing)} inputs have no output in any shard "
                f"(e.g. {missing[0]}); they may have been filtered or failed - see each "
                "shard's summary, or re-run that shard to resume it.",
                err=True,
            )
    click.echo(f"merged {summary['records']} records from {summary['parts']} parts -> {output}")
