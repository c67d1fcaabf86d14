"""The baseline of bench_client.py: a bare aiohttp client, nothing else, as one process.

It sends the request bodies the pipeline sends (the same prompt templates, filled the same
way, the same sampling fields), at a fixed concurrency over one aiohttp session, and writes
the pairs it gets back as JSONL at the end. No store, no retries, no validation, no hooks,
no progress bar: what any OpenAI-compatible client has to do at the least. It imports only
the standard library and aiohttp, so its start-up is as short as a Python process allows.
It runs on the event loop the pipeline runs on (uvloop where installed, unless
``HUMPBACK_EVENT_LOOP=asyncio``), so the comparison is of the same HTTP stack and loop.

    python bench/bare_client.py augment segments.jsonl out.jsonl --base-url URL --model M
    python bench/bare_client.py curate candidates.jsonl out.jsonl --base-url URL --model M
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

import aiohttp

try:
    import uvloop
except ImportError:
    uvloop = None

PROMPTS = Path(__file__).resolve().parents[1] / "prompts"


def fill(template: str, **values: str) -> str:
    # The pipeline's fill_template: each placeholder replaced once, values never re-filled.
    out, cursor = [], 0
    for pos, key in sorted((template.find("{" + k + "}"), k) for k in values):
        out += [template[cursor:pos], values[key]]
        cursor = pos + len(key) + 2
    return "".join([*out, template[cursor:]])


def bodies(kind: str, rows: list[dict], model: str) -> list[dict]:
    if kind == "augment":
        template = (PROMPTS / "backtranslation.txt").read_text(encoding="utf-8")
        params = {"temperature": 0.7, "top_p": 0.9, "max_tokens": 256}
        contents = [fill(template, output=r["text"]) for r in rows]
    else:
        template = (PROMPTS / "curation.txt").read_text(encoding="utf-8")
        params = {"max_tokens": 512, "temperature": 0.0}
        contents = [fill(template, instruction=r["instruction"], output=r["output"]) for r in rows]
    return [
        {"model": model, "messages": [{"role": "user", "content": c}], **params} for c in contents
    ]


async def send_all(url: str, payloads: list[dict], concurrency: int) -> list[str]:
    answers: list[str] = [""] * len(payloads)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        queue = iter(enumerate(payloads))

        async def worker() -> None:
            for i, body in queue:
                async with session.post(f"{url}/chat/completions", json=body) as resp:
                    resp.raise_for_status()
                    data = await resp.json()
                answers[i] = data["choices"][0]["message"]["content"]

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=["augment", "curate"])
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    with open(args.input, encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    started = time.perf_counter()
    use_uvloop = uvloop and os.environ.get("HUMPBACK_EVENT_LOOP", "").strip().lower() != "asyncio"
    run = uvloop.run if use_uvloop else asyncio.run
    answers = run(send_all(args.base_url.rstrip("/"), bodies(args.kind, rows, args.model),
                           args.concurrency))  # fmt: skip
    with open(args.output, "w", encoding="utf-8") as out:
        for row, answer in zip(rows, answers, strict=True):
            if args.kind == "augment":
                pair = {"instruction": answer, "output": row["text"]}
            else:
                pair = {**row, "judge_text": answer}
            out.write(json.dumps(pair, ensure_ascii=False) + "\n")
    elapsed = time.perf_counter() - started
    print(json.dumps({"requests": len(rows), "seconds": round(elapsed, 3)}), file=sys.stderr)


if __name__ == "__main__":
    main()
