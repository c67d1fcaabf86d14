"""The loop every model-calling stage runs: bounded, resumable, with progress and a summary.

Augment, curate and the evaluation stages only say how to turn one input into output
records (``work``) and how to write their final files from the store (``finish``); this
module owns everything else:

* inputs are streamed; at most ``window`` requests are in flight, so memory stays flat;
* each input has a key; keys already in the output store (or recorded as a permanent
  failure) are skipped, which is what makes a re-run resume;
* a request the server rejects (4xx) becomes a :class:`~humpback_plugin.records.Failure`
  with the server's message, and the run goes on;
* when no server answers within the client's retry budget, in-flight work is cancelled,
  what finished is already on disk, and :class:`StageInterrupted` says how to resume;
* :func:`run_model_stage` adds the client, the preflight check, the chat-template check,
  the work folder with its store and failures file, vLLM's prefix-cache counters and the
  common summary fields;
* every key is scoped by the model's identity (:func:`model_identity`: the served name,
  what the server reports of the weights, and the model revision), so a stage run against
  other weights behind the same name sends its requests again instead of reusing answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from humpback_plugin.core.client import (
    ClientConfig,
    ClientStats,
    Generation,
    OpenAIClient,
    RequestRejected,
)
from humpback_plugin.core.engine import Engine
from humpback_plugin.core.errors import ClientError, ServerUnavailable, StageInterrupted
from humpback_plugin.core.identity import model_identity, template_report
from humpback_plugin.core.store import RecordStore, ScopedStore

T = TypeVar("T")


@dataclass
class StageStats:
    stage: str
    total_inputs: int = 0
    already_done: int = 0
    processed: int = 0
    records_written: int = 0
    failed: int = 0
    failure_reasons: Counter = field(default_factory=Counter)
    elapsed_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "total_inputs": self.total_inputs,
            "already_done": self.already_done,
            "processed": self.processed,
            "records_written": self.records_written,
            "failed": self.failed,
            "failure_reasons": dict(self.failure_reasons),
            "elapsed_s": round(self.elapsed_s, 3),
        }


def make_progress(disable: bool = False) -> Progress:
    from rich.console import Console

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=disable,
        transient=False,
    )


async def run_stage(
    *,
    name: str,
    inputs: Iterable[T],
    key_of: Callable[[T], str],
    input_id_of: Callable[[T], str],
    work: Callable[[T, str], Awaitable[list[dict[str, Any]]]],
    store: RecordStore | ScopedStore,
    failures: RecordStore | ScopedStore,
    window: int = 64,
    total: int | None = None,
    show_progress: bool = True,
) -> StageStats:
    """Process every input not yet done; ``work(item, key)`` returns the records to store.

    Each returned record gets ``key`` set (several records per input are allowed: the
    first carries the input key, the others ``key#i``) so the next run skips the input.

    Finished requests are collected by a done-callback into a list and recorded here, in
    the stage's own coroutine, a batch at a time (one store write per batch): waiting with
    ``asyncio.wait`` instead costs a callback on every pending task per completion, which
    was most of the stage's own CPU time at a few thousand requests a second.
    """
    stats = StageStats(stage=name)
    started = time.monotonic()
    # Requests in flight and the input each one is for.
    pending: dict[asyncio.Future, tuple[Any, str]] = {}
    finished: list[asyncio.Future] = []
    wakeup: asyncio.Future | None = None
    fatal: ServerUnavailable | None = None
    unexpected: BaseException | None = None
    loop = asyncio.get_running_loop()

    def on_done(task: asyncio.Future) -> None:
        # Only collects: a record written here could land after the final dataset is
        # written (found by the disk-full test), so recording happens in ``settle``.
        finished.append(task)
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)

    with make_progress(disable=not show_progress) as progress:
        task_id = progress.add_task(name, total=total)
        ticker = _Ticker(progress, task_id)

        def settle() -> None:
            nonlocal fatal, unexpected
            batch, finished[:] = list(finished), []
            records_out: list[dict[str, Any]] = []
            failures_out: list[dict[str, Any]] = []
            for task in batch:
                item, key = pending.pop(task)
                if task.cancelled():
                    continue
                exc = task.exception()
                if exc is None:
                    try:
                        records = task.result()
                        for i, rec in enumerate(records):
                            rec["key"] = key if i == 0 else f"{key}#{i}"
                        # Nothing to keep (e.g. filtered out): still mark the input as done.
                        records_out.extend(
                            records or [{"key": key, "input_id": input_id_of(item), "empty": True}]
                        )
                    except Exception as bad:  # a malformed result is a bug: stop, keep the rest
                        unexpected = unexpected or bad
                        continue
                    stats.records_written += len(records)
                    stats.processed += 1
                elif isinstance(exc, RequestRejected):
                    failures_out.append(
                        {
                            "key": key,
                            "stage": name,
                            "input_id": input_id_of(item),
                            "reason": f"http_{exc.status_code}",
                            "status_code": exc.status_code,
                            "message": exc.message,
                            "server_url": exc.server_url,
                        }
                    )
                    stats.failed += 1
                    stats.failure_reasons[f"http_{exc.status_code}"] += 1
                elif isinstance(exc, ServerUnavailable):
                    fatal = fatal or exc
                else:
                    # A bug, not a server problem: stop, keep what is saved, show the error.
                    unexpected = unexpected or exc
                ticker.advance()
            try:
                store.append_many(records_out)
                failures.append_many(failures_out)
            except Exception as exc:
                # E.g. the disk is full: stop the stage; what is stored stays valid.
                unexpected = unexpected or exc

        async def wait_for_some() -> None:
            nonlocal wakeup
            if not finished:
                wakeup = loop.create_future()
                await wakeup
                wakeup = None
            settle()

        try:
            for item in inputs:
                stats.total_inputs += 1
                key = key_of(item)
                if key in store or key in failures:
                    stats.already_done += 1
                    ticker.advance()
                    continue
                if fatal is not None or unexpected is not None:
                    break
                while len(pending) >= window:
                    await wait_for_some()
                if fatal is not None or unexpected is not None:
                    break
                task = asyncio.ensure_future(work(item, key))
                task.add_done_callback(on_done)
                pending[task] = (item, key)
        except Exception as exc:
            # A bad input line: keep what already finished, then report it.
            unexpected = unexpected or exc
        while pending:
            if fatal is not None or unexpected is not None:
                # Queued requests would each wait out their own retry deadline: cancel now.
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                settle()
                break
            await wait_for_some()
        ticker.flush()
        stats.elapsed_s = time.monotonic() - started

    if unexpected is not None:
        raise unexpected
    if fatal is not None:
        raise StageInterrupted(
            f"{name}: stopped because no server answered ({fatal}). "
            f"{stats.processed} new records were saved ({stats.already_done} were done "
            "before); re-run the same command to resume."
        )
    return stats


class _Ticker:
    """Progress-bar advances, passed on at most every 50 ms: rich takes a lock and keeps
    speed samples per call, which adds up at thousands of records a second."""

    def __init__(self, progress: Progress, task_id: Any, every_s: float = 0.05) -> None:
        self.progress = progress
        self.task_id = task_id
        self.every_s = every_s
        self.count = 0
        self.last = time.monotonic()

    def advance(self) -> None:
        self.count += 1
        if self.count >= 256 or time.monotonic() - self.last >= self.every_s:
            self.flush()

    def flush(self) -> None:
        if self.count:
            self.progress.advance(self.task_id, self.count)
            self.count = 0
        self.last = time.monotonic()


# --- requests ------------------------------------------------------------------------------


def body_for_endpoint(body: dict[str, Any], endpoint: str) -> dict[str, Any]:
    """Adapt a hook's request to the endpoint: a lone user turn becomes a raw prompt and
    a raw prompt becomes a user turn, so one hook implementation serves both."""
    if endpoint == "chat" and "prompt" in body:
        rest = {k: v for k, v in body.items() if k != "prompt"}
        return {"messages": [{"role": "user", "content": body["prompt"]}], **rest}
    if endpoint == "completions" and "messages" in body:
        messages = body["messages"]
        if len(messages) != 1 or messages[0].get("role") != "user":
            raise ClientError(
                "the completions endpoint needs a single prompt; this request has "
                f"{len(messages)} chat turns (use --endpoint chat)"
            )
        rest = {k: v for k, v in body.items() if k != "messages"}
        return {"prompt": messages[0]["content"], **rest}
    return body


async def send(
    client: OpenAIClient, endpoint: str, body: dict[str, Any], **params: Any
) -> Generation:
    """One request to the chat or completions endpoint, the body adapted to it."""
    body = body_for_endpoint(body, endpoint)
    if "messages" in body:
        return await client.chat(**body, **params)
    return await client.completion(**body, **params)


# --- the model-calling stage ---------------------------------------------------------------


def count_lines(path: str | os.PathLike) -> int | None:
    """Records in a plain JSONL file (for the progress bar); None for gzip."""
    if str(path).endswith(".gz"):
        return None
    with open(path, "rb") as fh:
        return sum(1 for line in fh if line.strip())


def open_failures(work: Path, retry_failed: bool) -> RecordStore:
    path = work / "failures.jsonl"
    if retry_failed and path.exists():
        # Keep the old failures for the record; a fresh store lets their keys run again.
        path.rename(work / f"failures.{time.time_ns()}.jsonl")
    return RecordStore(path)


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


@dataclass
class ModelStageResult:
    """What a model-calling stage did: the loop's counts, the final files' counts (what
    ``finish`` returned) and the client's request statistics."""

    stats: StageStats
    outputs: dict[str, Any]
    client: ClientStats
    base_urls: list[str]
    work_dir: Path
    failure_reasons: Counter
    prefix_cache: dict[str, Any] | None
    preflight: dict[str, Any] | None
    elapsed_s: float
    model_identity: dict[str, Any] | None = None
    chat_template: dict[str, Any] | None = None

    def summary(self, model: str) -> dict[str, Any]:
        """The fields every model-calling stage reports."""
        c = self.client
        return {
            "failed": sum(self.failure_reasons.values()),
            "failed_by_reason": dict(self.failure_reasons),
            "requests": c.requests,
            "retries": c.retries,
            "prompt_tokens": c.prompt_tokens,
            "completion_tokens": c.completion_tokens,
            "prefix_cache": self.prefix_cache,
            "elapsed_s": round(self.elapsed_s, 3),
            "model": model,
            "base_urls": self.base_urls,
            "failures_path": str(self.work_dir / "failures.jsonl"),
            "work_dir": str(self.work_dir),
            "preflight": self.preflight,
            "model_identity": self.model_identity,
            "chat_template": self.chat_template,
        }

    def per_second(self, count: int | float) -> float:
        return round(count / self.elapsed_s, 3) if self.elapsed_s else 0.0


async def run_model_stage(
    *,
    name: str,
    client_config: ClientConfig,
    inputs: Iterable[T],
    key_of: Callable[[T], str],
    input_id_of: Callable[[T], str],
    work: Callable[[OpenAIClient, T, str], Awaitable[list[dict[str, Any]]]],
    finish: Callable[[ScopedStore], dict[str, Any]],
    work_dir: Path,
    store_name: str,
    total: int | None = None,
    preflight: bool = True,
    retry_failed: bool = False,
    show_progress: bool = True,
    client: OpenAIClient | None = None,
    chat_endpoint: bool = True,
    engine: Engine | None = None,
) -> ModelStageResult:
    """Send every input not yet in ``work_dir/<store_name>`` through ``work(client, item,
    key)``, then let ``finish(store)`` write the stage's final files.

    ``client`` lets a caller share one client between stages (it is then not closed here).
    ``chat_endpoint``: the stage sends chat requests, so the server's chat template must
    be the training one (checked when ``client_config.chat_template`` names it).
    ``engine`` with ``model_calls`` (Ray) runs ``work`` in its workers, each with its own
    client; ``work`` must then be picklable (a top-level function or an instance of a
    top-level class). This process still checks the servers first, reads the inputs,
    skips what is done and is the only writer of the store, so resuming is the same.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    the_client = client or client_config.make_client()
    remote = getattr(engine, "model_calls", None)
    window = max(8, 2 * client_config.concurrency * len(client_config.base_urls))
    preflight_report = None
    try:
        if preflight:
            preflight_report = await the_client.preflight()
            the_client.stats = ClientStats()  # count the stage's own requests only
        try:
            identity = await model_identity(the_client, client_config.model_revision)
        except ServerUnavailable as exc:
            raise StageInterrupted(
                f"{name}: no server answered ({exc}); re-run the same command to resume."
            ) from exc
        template = await template_report(the_client, client_config, chat_endpoint)
        before = await the_client.prefix_cache_counters()
        with (
            RecordStore(work_dir / store_name) as own_store,
            open_failures(work_dir, retry_failed) as own_failures,
        ):
            store = ScopedStore(own_store, identity["key"])
            failures = ScopedStore(own_failures, identity["key"])
            async with contextlib.AsyncExitStack() as stack:
                if remote is not None:
                    calls = await stack.enter_async_context(
                        remote(name, client_config, work, window=window)
                    )
                    item_work = calls.submit
                else:
                    calls = None

                    def item_work(item: T, key: str) -> Awaitable[list[dict[str, Any]]]:
                        return work(the_client, item, key)

                stats = await run_stage(
                    name=name,
                    inputs=inputs,
                    key_of=key_of,
                    input_id_of=input_id_of,
                    work=item_work,
                    store=store,
                    failures=failures,
                    window=window,
                    total=total,
                    show_progress=show_progress,
                )
            client_stats = calls.client_stats() if calls is not None else the_client.stats
            after = await the_client.prefix_cache_counters()
            outputs = finish(store)
            failure_reasons = Counter(f["reason"] for f in failures)
    finally:
        if client is None:
            await the_client.aclose()
    return ModelStageResult(
        stats=stats,
        outputs=outputs,
        client=client_stats,
        base_urls=the_client.base_urls,
        work_dir=work_dir,
        failure_reasons=failure_reasons,
        prefix_cache=_cache_delta(before, after),
        preflight=preflight_report,
        elapsed_s=time.monotonic() - started,
        model_identity=identity,
        chat_template=template,
    )
