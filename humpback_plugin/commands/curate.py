"""``humpback curate``: the current model rates every candidate pair; keep the best."""

from __future__ import annotations

from typing import Any

import click

from humpback_plugin.commands.common import (
    client_options,
    command,
    engine_options,
    opened_engine,
    options,
    pop_client_config,
    print_summary,
    shard_option,
    split_names,
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
    target_precision: float | None = None,
) -> dict[str, Any]:
    """The CurateConfig fields of the selection options; at most one of the built-in cuts."""
    cuts = (("target_yield", target_yield), ("quantile", quantile))
    given = [n for n, v in cuts if v is not None]
    if target_precision is not None:
        given.append("calibrated")
    if len(given) > 1 or (given and threshold is not None):
        raise UsageError("use one of --threshold, --target-yield, --quantile, --target-precision")
    fields: dict[str, Any] = {"target_yield": target_yield, "quantile": quantile}
    if threshold is not None:
        fields["threshold"] = threshold
    if target_precision is not None:
        fields["target_precision"] = target_precision
    fields["selector"] = selector or (given[0] if given else default(CurateConfig, "selector"))
    return fields


# The judge's options, shared with `humpback eval judge`.
max_tokens_option = click.option(
    "--max-tokens",
    type=click.IntRange(1),
    default=default(CurateConfig, "max_tokens"),
    show_default=True,
    help="paper mode: room for the judge's reasoning.",
)
guard_option = click.option(
    "--injection-guard/--no-injection-guard",
    default=default(CurateConfig, "injection_guard"),
    show_default=True,
    help="Remove score and rating claims ('Score: 5', 'Rating: 5/5', '10/10') from the text "
    "the judge reads, so a web page cannot rate itself; the records keep their text.",
)
endpoint_option = click.option(
    "--endpoint",
    type=click.Choice(ENDPOINTS),
    default=default(CurateConfig, "endpoint"),
    show_default=True,
)
template_option = click.option(
    "--template",
    default=default(CurateConfig, "template"),
    show_default=True,
    help="Prompt template: a registered name or a file; placeholders {instruction} and "
    "{output}. The default is the paper's Table 1 rubric, verbatim.",
)


canary_options = options(
    click.option(
        "--canaries/--no-canaries",
        default=default(CurateConfig, "canaries"),
        show_default=True,
        help="Mix labelled probes into the stream to measure this run's judge (precision, "
        "recall, ROC-AUC in the summary); they never reach the scored or selected files.",
    ),
    click.option(
        "--canary-share",
        type=click.FloatRange(0, 1),
        default=default(CurateConfig, "canary_share"),
        show_default=True,
        help="Probes per candidate (then at least --canary-min, at most --canary-max; "
        "rounded up to whole seed pairs' groups).",
    ),
    click.option(
        "--canary-min",
        type=click.IntRange(0),
        default=default(CurateConfig, "canary_min"),
        show_default=True,
    ),
    click.option(
        "--canary-max",
        type=click.IntRange(0),
        default=default(CurateConfig, "canary_max"),
        show_default=True,
    ),
    click.option(
        "--probes",
        type=click.Path(exists=True, dir_okay=False),
        help="Seed pairs (JSONL instruction/output) to build probes from, or a labelled file "
        "(with 'label' 1/0 on every line). Default: the package's 20 hand-written pairs.",
    ),
    click.option(
        "--probe-seed",
        type=int,
        default=default(CurateConfig, "probe_seed"),
        show_default=True,
        help="Seed of probe generation and canary order.",
    ),
    click.option(
        "--probe-kinds",
        help="Negative kinds to build, comma-separated (default: every registered kind; "
        "`humpback plugins --all` lists them).",
    ),
    click.option(
        "--canaries-output",
        type=click.Path(dir_okay=False),
        help="Scored probes (default: <output stem>.canaries.jsonl).",
    ),
)


def judge_rows(summary: dict[str, Any]) -> list[tuple[str, Any]]:
    """The summary's judge-quality lines (canaries, precision/recall, AUC, calibration)."""
    quality = summary.get("judge_quality")
    canaries = summary.get("canaries") or {}
    if not quality:
        return [("canaries", canaries.get("count", 0))]

    def pr(name: str, block: dict[str, Any] | None) -> tuple[str, Any]:
        block = block or {}
        kept = f"{block.get('selected', 0)} probes kept"
        value = f"{_num(block.get('precision'))} / {_num(block.get('recall'))} ({kept})"
        return (f"judge {name}: precision / recall", value)

    rows = [
        ("canaries (good / bad)", f"{canaries['positives']} / {canaries['negatives']}"),
        pr("at this selection", quality.get("selection")),
        pr("A4", quality["a4"]),
        pr("A5", quality["a5"]),
        ("judge ROC-AUC", _num(quality["roc_auc"])),
    ]
    injection = quality.get("injection")
    if injection:
        rows.append(("injected 'Score: 5' shift", f"{injection['shift']:+.2f}"))
    calibration = summary.get("calibration")
    if calibration:
        cut = calibration["cut"]
        rows.append(
            (
                f"calibrated cut (precision >= {calibration['target_precision']})",
                f"{cut:g}"
                if cut is not None
                else "not reached: nothing selected "
                f"(best precision {_num(calibration['best_precision'])})",
            )
        )
    return rows


def _num(value: Any) -> str:
    return "n/a" if value is None else f"{value:.2f}"


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
@click.option(
    "--target-precision",
    type=click.FloatRange(0, 1, min_open=True),
    help="Calibrated selection: keep pairs above the lowest cut whose precision on this "
    "run's canaries reaches P (e.g. 0.8); the cut is reported. Nothing is selected when "
    "no cut reaches P. Best in logprobs mode (a fine-grained expected score).",
)
@click.option("--selector", help="A selector registered by a plugin (overrides the above).")
@click.option(
    "--iteration",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="1: M0 scores -> A(1); 2: M1 re-scores -> A(2). Recorded on each record.",
)
@endpoint_option
@template_option
@click.option(
    "--temperature",
    type=float,
    default=default(CurateConfig, "temperature"),
    show_default=True,
    help="Judge decoding (not reported in the paper; greedy is reproducible).",
)
@max_tokens_option
@click.option(
    "--no-prefill",
    is_flag=True,
    help="constrained/logprobs: do not start the answer with 'Score: ' (for chat templates "
    "that reject continue_final_message).",
)
@click.option("--seed", type=int)
@guard_option
@canary_options
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
    target_precision: float | None,
    selector: str | None,
    iteration: int,
    no_prefill: bool,
    probe_kinds: str | None,
    canaries_output: str | None,
    shard: str | None,
    engine: str,
    ray_address: str | None,
    ray_actors: int | None,
    client_processes: int,
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
      humpback curate candidates.jsonl -o scored.jsonl --selected a.jsonl \\
          --base-url ... --model m0 --mode logprobs --target-precision 0.8 --probes seed.jsonl

    \b
    Every run mixes a few labelled probes (canaries) into the stream and reports how
    well the judge separated them; `humpback eval judge` compares scoring modes.
    """
    client = pop_client_config(kwargs)
    settings = CurateConfig(
        **selector_settings(selector, threshold, target_yield, quantile, target_precision),
        prefill=not no_prefill,
        probe_kinds=split_names(probe_kinds),
        **kwargs,
    )
    with opened_engine(
        engine, ray_address, ray_actors, client_processes=client_processes
    ) as runner:
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
            canaries_path=canaries_output,
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
        *judge_rows(summary),
        ("pairs with ratings hidden from the judge", summary["masked_ratings"]),
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
