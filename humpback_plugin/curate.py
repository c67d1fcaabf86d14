"""Self-curation: the current model rates every candidate pair 1-5; keep score >= k.

The judge prompt is the paper's Table 1 rubric, verbatim (``prompts/curation.txt``), with
the instruction and the candidate answer placed after it, unlabelled, as in the paper.
The rubric comes first and is byte-identical in every request, so vLLM's prefix cache
(on by default) computes it once and reuses it for every pair; the summary shows the
server's prefix-cache hit rate for the run when ``/metrics`` is reachable.

Scoring modes (``--mode``, see :mod:`humpback_plugin.scoring`): ``paper`` (reasoning +
"Score: N", parsed from the last line, re-asked under a regex constraint when unparseable),
``constrained`` (one constrained token) and ``logprobs`` (probabilities of 1-5 and the
expected score). Selection (``--threshold``, ``--target-yield``, ``--quantile`` or a
plugin's ``--selector``) writes the curated set; the full scored set is written too, so a
different cut needs no new scoring.

Iterations: M0 scores all candidates -> A_k(1) (``--iteration 1``); M1 = base + seed +
A_k(1) re-scores them -> A_k(2) (``--iteration 2``); the iteration is recorded on every
record and is part of the resume key.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import click
import httpx
from pydantic import ValidationError

from humpback_plugin.augment import (
    ENDPOINTS,
    ClientConfig,
    _message,
    client_config_from_options,
    client_options,
    count_lines,
    open_failures,
    print_summary,
    work_dir_for,
)
from humpback_plugin.client import ClientError, ClientStats, OpenAIClient
from humpback_plugin.hookspecs import hookimpl
from humpback_plugin.jsonl_io import InputError, iter_jsonl, write_json_atomic
from humpback_plugin.prompts import fill_template, load_prompt
from humpback_plugin.records import Candidate, ScoredCandidate, content_hash
from humpback_plugin.scoring import (
    BUILTIN_SCORERS,
    BUILTIN_SELECTORS,
    ScoringContext,
    parse_score,
)
from humpback_plugin.sharding import in_shard, parse_shard, shard_option
from humpback_plugin.stage import StageInterrupted, run_stage
from humpback_plugin.store import RecordStore, finalize

MODES = tuple(BUILTIN_SCORERS)


# --- hooks -------------------------------------------------------------------------------


@hookimpl(trylast=True)
def curation_request(instruction: str, output: str, template: str) -> dict | None:
    """Default: rubric, then instruction and answer, as one user turn (rubric = shared prefix)."""
    return {
        "messages": [
            {
                "role": "user",
                "content": fill_template(template, instruction=instruction, output=output),
            }
        ]
    }


@hookimpl(trylast=True)
def parse_curation_score(text: str) -> int | None:
    return parse_score(text)


@hookimpl
def register_scorers(register: Any) -> None:
    for name, scorer in BUILTIN_SCORERS.items():
        register(name, scorer)


@hookimpl
def register_selectors(register: Any) -> None:
    for name, selector in BUILTIN_SELECTORS.items():
        register(name, selector)


@hookimpl
def register_commands(cli: Any) -> None:
    cli.add_command(curate_command)


# --- prefix-cache counters -----------------------------------------------------------------


def prefix_cache_counters(base_url: str, api_key: str | None = None) -> dict[str, float] | None:
    """vLLM's prefix-cache query/hit token counters from ``/metrics`` (None if unavailable)."""
    root = base_url.rstrip("/").removesuffix("/v1")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        resp = httpx.get(f"{root}/metrics", timeout=5.0, headers=headers)
        resp.raise_for_status()
    except httpx.HTTPError:
        return None
    counters = {"queries": 0.0, "hits": 0.0}
    found = False
    for line in resp.text.splitlines():
        if line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        for field in counters:
            if name == f"vllm:prefix_cache_{field}_total":
                counters[field] += float(line.rsplit(" ", 1)[1])
                found = True
    return counters if found else None


def _cache_delta(
    before: dict[str, dict[str, float] | None], after: dict[str, dict[str, float] | None]
) -> dict[str, Any] | None:
    queries = hits = 0.0
    seen = False
    for url, b in before.items():
        a = after.get(url)
        if a and b:
            seen = True
            queries += a["queries"] - b["queries"]
            hits += a["hits"] - b["hits"]
    if not seen:
        return None
    return {
        "queried_tokens": int(queries),
        "hit_tokens": int(hits),
        "hit_rate": round(hits / queries, 4) if queries else None,
    }


# --- the stage ---------------------------------------------------------------------------


def iter_candidates(
    path: str | os.PathLike, shard: tuple[int, int] | None = None
) -> Iterator[dict[str, Any]]:
    """Candidate pairs of a JSONL file as dicts (only shard I of N when given); a bad line
    stops with the file and line named."""
    for lineno, obj in iter_jsonl(path):
        if "id" not in obj and isinstance(obj.get("instruction"), str):
            obj = {
                **obj,
                "id": content_hash("candidate", obj.get("instruction"), obj.get("output")),
            }
        if "id" in obj:
            obj.setdefault("segment_id", obj["id"])
        try:
            Candidate.model_validate(obj)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'record'}: {e['msg']}"
                for e in exc.errors()
            )
            raise InputError(path, lineno, f"not a candidate pair ({problems})") from None
        if in_shard(obj["id"], shard):
            yield obj


def selection_options(
    threshold: float | None, target_yield: float | None, quantile: float | None
) -> tuple[str, dict[str, Any]]:
    given = [
        (n, v) for n, v in (("target_yield", target_yield), ("quantile", quantile)) if v is not None
    ]
    if len(given) > 1 or (given and threshold is not None):
        raise ValueError("use one of --threshold, --target-yield, --quantile")
    if given:
        return given[0][0], {given[0][0]: given[0][1]}
    return "threshold", {"threshold": 4 if threshold is None else threshold}


def curate(
    candidates_path: str | os.PathLike, scored_path: str | os.PathLike, **options: Any
) -> dict[str, Any]:
    """Score every candidate pair and select the curated set; returns the run summary.

    Writes ``scored_path`` (every pair with its score, input order) and, when given,
    ``selected_path`` (the pairs the selector keeps). Re-running resumes.

    ``options`` are those of :func:`curate_async`, which this runs in a fresh event loop.
    """
    return asyncio.run(curate_async(candidates_path, scored_path, **options))


async def curate_async(
    candidates_path: str | os.PathLike,
    scored_path: str | os.PathLike,
    *,
    client_config: ClientConfig,
    selected_path: str | os.PathLike | None = None,
    mode: str = "paper",
    selector: str = "threshold",
    selector_options: dict[str, Any] | None = None,
    iteration: int = 1,
    endpoint: str = "chat",
    template: str | os.PathLike = "curation",
    temperature: float = 0.0,
    max_tokens: int = 512,
    prefill: bool = True,
    seed: int | None = None,
    work_dir: str | os.PathLike | None = None,
    preflight: bool = True,
    retry_failed: bool = False,
    show_progress: bool = True,
    client: OpenAIClient | None = None,
    shard: tuple[int, int] | None = None,
) -> dict[str, Any]:
    from humpback_plugin.plugins import pick

    if endpoint not in ENDPOINTS:
        raise ValueError(f"endpoint must be one of {ENDPOINTS}, got {endpoint!r}")
    scorer = pick("register_scorers", mode, "scoring mode")
    select = pick("register_selectors", selector, "selector")
    prompt = load_prompt(template, required=("instruction", "output"))
    context = ScoringContext(
        template=prompt,
        endpoint=endpoint,
        temperature=temperature,
        max_tokens=max_tokens,
        prefill=prefill,
        seed=seed,
    )
    work = work_dir_for(scored_path, work_dir)
    settings = {
        "temperature": temperature,
        "max_tokens": max_tokens if mode == "paper" else None,
        "prefill": prefill if mode != "paper" else None,
        "seed": seed,
    }
    run_id = content_hash(
        "curate", prompt.sha256, client_config.model, endpoint, mode, settings, iteration
    )

    def key_of(candidate: dict[str, Any]) -> str:
        return content_hash(run_id, candidate["id"])

    async def score(candidate: dict[str, Any], key: str) -> list[dict[str, Any]]:
        result = await scorer(the_client, candidate, context)
        record = ScoredCandidate(
            **{**candidate, **result, "scoring_mode": mode, "iteration": iteration}
        ).model_dump()
        return [record]

    total = count_lines(candidates_path)
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    the_client = client or client_config.make_client()
    preflight_report = None
    try:
        if preflight:
            preflight_report = await the_client.preflight()
            the_client.stats = ClientStats()  # count the stage's own requests only
        before = {u: prefix_cache_counters(u, client_config.api_key) for u in the_client.base_urls}
        with (
            RecordStore(work / "scored.jsonl") as store,
            open_failures(work, retry_failed) as failures,
        ):
            stats = await run_stage(
                name=f"curate ({mode})",
                inputs=iter_candidates(candidates_path, shard),
                key_of=key_of,
                input_id_of=lambda c: c["id"],
                work=score,
                store=store,
                failures=failures,
                window=max(8, 2 * client_config.concurrency * len(client_config.base_urls)),
                total=total,
                show_progress=show_progress,
            )
            after = {
                u: prefix_cache_counters(u, client_config.api_key) for u in the_client.base_urls
            }
            counts = _write_outputs(
                candidates_path,
                shard,
                key_of,
                store,
                scored_path,
                selected_path,
                lambda rows: select(rows, dict(selector_options or {})),
            )
            failure_reasons = Counter(f["reason"] for f in failures)
    finally:
        if client is None:
            await the_client.aclose()
    elapsed = time.monotonic() - started
    cstats = the_client.stats
    scored_this_run = stats.processed
    summary = {
        "stage": "curate",
        "mode": mode,
        "iteration": iteration,
        "candidates": stats.total_inputs,
        "already_done": stats.already_done,
        "scored_this_run": scored_this_run,
        "scored": counts["scored"],
        "with_score": counts["with_score"],
        "score_histogram": counts["histogram"],
        "score_status": counts["status"],
        "mean_expected_score": counts["mean_expected"],
        "selector": selector,
        "selector_options": selector_options or {},
        "selected": counts["selected"],
        "yield": round(counts["selected"] / counts["scored"], 4) if counts["scored"] else 0.0,
        "failed": sum(failure_reasons.values()),
        "failed_by_reason": dict(failure_reasons),
        "requests": cstats.requests,
        "retries": cstats.retries,
        "prompt_tokens": cstats.prompt_tokens,
        "completion_tokens": cstats.completion_tokens,
        "completion_tokens_per_pair": round(cstats.completion_tokens / scored_this_run, 2)
        if scored_this_run
        else None,
        "prefix_cache": _cache_delta(before, after),
        "elapsed_s": round(elapsed, 3),
        "pairs_per_s": round(scored_this_run / elapsed, 3) if elapsed else 0.0,
        "model": client_config.model,
        "base_urls": the_client.base_urls,
        "endpoint": endpoint,
        "template": prompt.path,
        "template_sha256": prompt.sha256,
        "scored_path": str(scored_path),
        "selected_path": str(selected_path) if selected_path else None,
        "failures_path": str(work / "failures.jsonl"),
        "work_dir": str(work),
        "preflight": preflight_report,
    }
    write_json_atomic(work / "summary.json", summary)
    return summary


def _write_outputs(
    candidates_path: str | os.PathLike,
    shard: tuple[int, int] | None,
    key_of: Callable[[dict[str, Any]], str],
    store: RecordStore,
    scored_path: str | os.PathLike,
    selected_path: str | os.PathLike | None,
    select: Callable[[list[dict[str, Any]]], list[dict[str, Any]]],
) -> dict[str, Any]:
    def keys() -> Iterator[str]:
        return (key_of(c) for c in iter_candidates(candidates_path, shard))

    histogram: Counter = Counter()
    status: Counter = Counter()
    expected: list[float] = []
    light: list[dict[str, Any]] = []

    def scored() -> Iterator[dict[str, Any]]:
        for record in store.ordered(keys()):
            if record.pop("empty", False):
                continue
            histogram[str(record.get("score"))] += 1
            status[record.get("score_status")] += 1
            if record.get("expected_score") is not None:
                expected.append(record["expected_score"])
            light.append(
                {
                    "key": record["key"],
                    "id": record["id"],
                    "score": record.get("score"),
                    "expected_score": record.get("expected_score"),
                    "score_status": record.get("score_status"),
                }
            )
            yield {k: v for k, v in record.items() if k != "key"}

    n_scored = finalize(scored(), scored_path)
    chosen = {r["key"] for r in select(light)}
    n_selected = 0
    if selected_path is not None:
        n_selected = finalize(
            (
                {k: v for k, v in r.items() if k != "key"}
                for r in store.ordered(keys())
                if r["key"] in chosen
            ),
            selected_path,
        )
    else:
        n_selected = len(chosen)
    return {
        "scored": n_scored,
        "with_score": n_scored - histogram.get("None", 0),
        "histogram": {k: histogram[k] for k in ("1", "2", "3", "4", "5", "None") if histogram[k]},
        "status": dict(status),
        "mean_expected": round(sum(expected) / len(expected), 4) if expected else None,
        "selected": n_selected,
    }


# --- command line ------------------------------------------------------------------------


@click.command(name="curate")
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
    type=click.Choice(MODES),
    default="paper",
    show_default=True,
    help="paper: reasoning + 'Score: N' (parsed, re-asked constrained when unparseable); "
    "constrained: one constrained token; logprobs: P(1..5) and the expected score.",
)
@click.option(
    "--threshold",
    type=float,
    help="Keep score >= K (A4: 4, A5: 5; default 4). A fractional K such as 4.5 is "
    "compared with the expected score in logprobs mode.",
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
@click.option("--endpoint", type=click.Choice(ENDPOINTS), default="chat", show_default=True)
@click.option(
    "--template",
    default="curation",
    show_default=True,
    help="Prompt name or file; placeholders {instruction} and {output}. The default is "
    "the paper's Table 1 rubric, verbatim.",
)
@click.option(
    "--temperature",
    type=float,
    default=0.0,
    show_default=True,
    help="Judge decoding (not reported in the paper; greedy is reproducible).",
)
@click.option(
    "--max-tokens",
    type=click.IntRange(1),
    default=512,
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
@click.option("--retry-failed", is_flag=True, help="Retry pairs the server refused before.")
def curate_command(
    candidates: str,
    scored_path: str,
    selected_path: str | None,
    base_urls: tuple[str, ...],
    model: str,
    api_key_file: str | None,
    concurrency: int,
    timeout: float,
    retry_deadline: float,
    work_dir: str | None,
    no_preflight: bool,
    quiet: bool,
    mode: str,
    threshold: float | None,
    target_yield: float | None,
    quantile: float | None,
    selector: str | None,
    iteration: int,
    endpoint: str,
    template: str,
    temperature: float,
    max_tokens: int,
    no_prefill: bool,
    seed: int | None,
    shard: str | None,
    retry_failed: bool,
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
    try:
        name, options = selection_options(threshold, target_yield, quantile)
        if selector:
            name = selector
        config = client_config_from_options(
            base_urls, model, api_key_file, concurrency, timeout, retry_deadline
        )
        summary = curate(
            candidates,
            scored_path,
            client_config=config,
            selected_path=selected_path,
            mode=mode,
            selector=name,
            selector_options=options,
            iteration=iteration,
            endpoint=endpoint,
            template=template,
            temperature=temperature,
            max_tokens=max_tokens,
            prefill=not no_prefill,
            seed=seed,
            work_dir=work_dir,
            preflight=not no_preflight,
            retry_failed=retry_failed,
            show_progress=not quiet,
            shard=parse_shard(shard),
        )
    except (InputError, ClientError, StageInterrupted, KeyError, ValueError, OSError) as exc:
        raise click.ClickException(_message(exc)) from exc
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
    print_summary(f"curate ({mode}, iteration {iteration}) -> {scored_path}", rows)
    click.echo(
        f"{summary['scored']} scored -> {scored_path}; {summary['selected']} selected"
        + (f" -> {selected_path}" if selected_path else ""),
        err=True,
    )
