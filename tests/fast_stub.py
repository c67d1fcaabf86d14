"""A zero-latency OpenAI-compatible server (aiohttp) in its own process, for benchmarks and
for tests that need many requests a second (``tests/stub_openai.py`` is a thread-per-request
``http.server``: fine for fault injection, a few hundred requests a second at most).

Answers are a function of the request body, as greedy decoding is of the prompt, so two runs
over the same inputs get the same answers:

* a judge request (it holds the rubric's ``Score: <rating>``) gets a short reasoning and
  ``Score: N`` with N from a hash of the body;
* any other request gets an instruction that names the segment (``Segment N`` in the text);
* ``/v1/models`` lists ``--model``; ``/metrics`` has vLLM's prefix-cache counters.

    python -m tests.fast_stub --port 0            # prints "PORT <n>" once it listens

or, from Python, ``with FastStub() as stub: stub.base_url``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RUBRIC_MARK = b"Score: <rating>"
_SEGMENT = re.compile(r"Segment (\d+)")
ROOT = Path(__file__).resolve().parents[1]


def answer(path: str, raw: bytes) -> dict[str, Any]:
    """The completion for one request body (deterministic)."""
    body = json.loads(raw)
    digest = int(hashlib.sha256(raw).hexdigest()[:8], 16)
    if RUBRIC_MARK in raw:
        text = f"The answer addresses the request.\nScore: {digest % 5 + 1}"
    else:
        prompt = body.get("prompt")
        if prompt is None:
            prompt = body["messages"][-1]["content"]
        found = _SEGMENT.search(prompt if isinstance(prompt, str) else prompt[0])
        label = found.group(1) if found else "x"
        text = f"What does part {label} of the guide explain about item {digest % 997}?"
    n = int(body.get("n") or 1)
    chat = path.endswith("/chat/completions")
    choices = [
        {"index": i, "finish_reason": "stop", "logprobs": None}
        | ({"message": {"role": "assistant", "content": text}} if chat else {"text": text})
        for i in range(n)
    ]
    return {
        "id": "cmpl-fast",
        "object": "chat.completion" if chat else "text_completion",
        "model": body.get("model", "stub"),
        "choices": choices,
        "usage": {"prompt_tokens": len(raw) // 4, "completion_tokens": 12, "total_tokens": 0},
    }


def serve(port: int, model: str) -> None:
    import asyncio

    from aiohttp import web

    served = {"n": 0}

    async def completions(request: web.Request) -> web.Response:
        served["n"] += 1
        data = answer(request.path, await request.read())
        return web.Response(body=json.dumps(data).encode(), content_type="application/json")

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": model, "object": "model"}]})

    async def metrics(request: web.Request) -> web.Response:
        queries = served["n"] * 100
        return web.Response(
            text=f'vllm:prefix_cache_queries_total{{engine="0"}} {queries}.0\n'
            f'vllm:prefix_cache_hits_total{{engine="0"}} {queries * 9 // 10}.0\n'
        )

    async def main() -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/completions", completions)
        app.router.add_post("/v1/chat/completions", completions)
        app.router.add_get("/v1/models", models)
        app.router.add_get("/metrics", metrics)
        runner = web.AppRunner(app, access_log=None, handle_signals=True)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port, backlog=1024)
        await site.start()
        bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        print(f"PORT {bound}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


class FastStub:
    """The server above in a child process, on a free port of 127.0.0.1."""

    def __init__(self, model: str = "stub") -> None:
        self.model = model
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None

    def start(self) -> FastStub:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.fast_stub", "--port", "0", "--model", self.model],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 60
        line = self.proc.stdout.readline()
        if not line.startswith("PORT ") or time.monotonic() > deadline:
            self.stop()
            raise RuntimeError(f"the fast stub did not start: {line!r}")
        self.port = int(line.split()[1])
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> FastStub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--model", default="stub")
    args = parser.parse_args()
    serve(args.port, args.model)
