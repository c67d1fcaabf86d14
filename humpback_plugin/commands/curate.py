"""``humpback curate``: the current model rates every candidate pair; keep the best."""

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
)
from humpback_plugin.core.config import ENDPOINTS, CurateConfig, default
from humpback_plugin.core.errors import UsageError
from humpback_plugin.core.sharding import parse_shard
from humpback_plugin.stages.curate.stage import curate


def selector_settings(
    selector: str | None,
    threshold: float | None,
    target_yield: float | None,
    quantile: float | None,
) -> dict[str, Any]:
    """The CurateConfig fields of the selection options; at most one of the built-in cuts."""
    given = [
        n for n, v in (("target_yield", target_yield), ("quantile", quantile)) if v is not None
    ]
    if len(given) > 1 or (given and threshold is not None):
        raise UsageError("use one of --threshold, --target-yield, --quantile")
    fields: dict[str, Any] = {"target_yield": target_yield, "quantile": quantile}
    if threshold is not None:
        fields["threshold"] = threshold
    fields["selector"] = selector or (given[0] if given else default(CurateConfig, "selector"))
    return fields


@command("curate")
@click.argument("candidates", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "-o",
    "--output",
    "scored_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="Every pair with its score (JSONL, input order).",
)
@click.option(
    "--selected",
    "selected_path",
    type=click.Path(dir_okay=False),
    help="The curated set: pairs the selection keeps (JSONL).",
)
@client_options
@click.option(
    "--mode",
    default=default(CurateConfig, "mode"),
    show_default=True,
    help="Any registered scorer (`humpback plugins --all`). Built-ins: paper: reasoning + "
    "'Score: N' (parsed, re-asked constrained when unparseable); constrained: one "
    "constrained token; logprobs: P(1..5) and the expected score.",
)
@click.option(
    "--threshold",
    type=float,
    help=f"Keep score >= K (A4: 4, A5: 5; default {default(CurateConfig, 'threshold'):g}). "
    "A fractional K such as 4.5 is compared with the expected score in logprobs mode.",
)
@click.option(
    "--target-yield", type=click.FloatRange(0, 1), help="Keep the best fraction, e.g. 0.1."
)
@click.option(
    "--quantile", type=click.FloatRange(0, 1), help="Keep scores at or above this quantile."
)
@click.option("--selector", help="A selector registered by a plugin (overrides the above).")
@click.option(
    "--iteration",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="1: M0 scores -> A(1); 2: M1 re-scores -> A(2). Recorded on each record.",
)
@click.option(
    "--endpoint",
    type=click.Choice(ENDPOINTS),
    default=default(CurateConfig, "endpoint"),
    show_default=True,
)
@click.option(
    "--template",
    default=default(CurateConfig, "template"),
    show_default=True,
    help="Prompt template: a registered name or a file; placeholders {instruction} and "
    "{output}. The default is the paper's Table 1 rubric, verbatim.",
)
@click.option(
    "--temperature",
    type=float,
    default=default(CurateConfig, "temperature"),
    show_default=True,
    help="Judge decoding (not reported in the paper; greedy is reproducible).",
)
@click.option(
    "--max-tokens",
    type=click.IntRange(1),
    default=default(CurateConfig, "max_tokens"),
    show_default=True,
    help="paper mode: room for the judge's reasoning.",
)
@click.option(
    "--no-prefill",
    is_flag=True,
    help="constrained/logprobs: do not start the answer with 'Score: ' (for chat templates "
    "that reject continue_final_message).",
)
@click.option("--seed", type=int)
@shard_option
@engine_options
@click.option("--retry-failed", is_flag=True, help="Retry pairs the server refused before.")
def curate_command(
    candidates: str,
    scored_path: str,
    selected_path: str | None,
    work_dir: str | None,
    no_preflight: bool,
    quiet: bool,
    threshold: float | None,
    target_yield: float | None,
    quantile: float | None,
    selector: str | None,
    iteration: int,
    no_prefill: bool,
    shard: str | None,
    engine: str,
    ray_address: str | None,
    ray_actors: int | None,
    retry_failed: bool,
    **kwargs: Any,
) -> None:
    """Rate every candidate pair 1-5 with the paper's rubric and keep the best.

    \b
    CANDIDATES is `humpback augment` output (instruction/output pairs). MODEL is the
    current model: M0 (seed only) for iteration 1, M1 for iteration 2.

    \b
    Examples:
      humpback curate candidates.jsonl -o scored.jsonl --selected a4.jsonl \\
          --base-url http://127.0.0.1:8000/v1 --model m0 --threshold 4
      humpback curate candidates.jsonl -o scored.jsonl --selected top10.jsonl \\
          --base-url ... --model m0 --mode logprobs --target-yield 0.1
    """
    client = pop_client_config(kwargs)
    settings = CurateConfig(
        **selector_settings(selector, threshold, target_yield, quantile),
        prefill=not no_prefill,
        **kwargs,
    )
    with opened_engine(engine, ray_address, ray_actors) as runner:
        summary = curate(
            candidates,
            scored_path,
            client_config=client,
            settings=settings,
            selected_path=selected_path,
            iteration=iteration,
            work_dir=work_dir,
            preflight=not no_preflight,
            retry_failed=retry_failed,
            show_progress=not quiet,
            shard=parse_shard(shard),
            engine=runner,
        )
    cache = summary["prefix_cache"]
    rows = [
        ("pairs", summary["candidates"]),
        ("done before (resumed)", summary["already_done"]),
        *((f"score {s}", c) for s, c in summary["score_histogram"].items()),
        *((f"status {s}", c) for s, c in sorted(summary["score_status"].items())),
        ("selected", summary["selected"]),
        ("yield", summary["yield"]),
        *((f"failed: {r}", c) for r, c in sorted(summary["failed_by_reason"].items())),
        ("completion tokens / pair", summary["completion_tokens_per_pair"]),
        ("prefix-cache hit rate", cache["hit_rate"] if cache else "n/a"),
        ("elapsed s", summary["elapsed_s"]),
        ("pairs / s", summary["pairs_per_s"]),
    ]
    if summary["mean_expected_score"] is not None:
        rows.insert(2, ("mean expected score", summary["mean_expected_score"]))
    mode = settings.mode
    print_summary(f"curate ({mode}, iteration {iteration}) -> {scored_path}", rows)
    click.echo(
        f"{summary['scored']} scored -> {scored_path}; {summary['selected']} selected"
        + (f" -> {selected_path}" if selected_path else ""),
        err=True,
    )
