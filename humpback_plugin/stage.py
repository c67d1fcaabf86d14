"""Run one generation stage over a stream of inputs: bounded, resumable, with progress.

The runner owns the loop every model-calling stage needs, so each stage only says how to
turn one input into output records:

* inputs are streamed; at most ``window`` requests are in flight, so memory stays flat;
* each input has a key; keys already in the output store (or recorded as a permanent
  failure) are skipped, which is what makes a re-run resume;
* a request the server rejects (4xx) becomes a :class:`~humpback_plugin.records.Failure`
  with the server's message, and the run goes on;
* when no server answers within the client's retry budget, in-flight work is cancelled,
  what finished is already on disk, and :class:`StageInterrupted` says how to resume.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from humpback_plugin.client import RequestRejected, ServerUnavailable
from humpback_plugin.store import RecordStore

T = TypeVar("T")


class StageInterrupted(Exception):
    """The stage stopped early; everything finished so far is saved and a re-run resumes."""


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
    store: RecordStore,
    failures: RecordStore,
    window: int = 64,
    total: int | None = None,
    show_progress: bool = True,
) -> StageStats:
    """Process every input not yet done; ``work(item, key)`` returns the records to store.

    Each returned record gets ``key`` set (several records per input are allowed: the
    first carries the input key, the others ``key#i``) so the next run skips the input.
    """
    stats = StageStats(stage=name)
    started = time.monotonic()
    # Requests in flight and the input each one is for.
    pending: dict[asyncio.Task, tuple[Any, str]] = {}
    fatal: ServerUnavailable | None = None
    unexpected: BaseException | None = None

    with make_progress(disable=not show_progress) as progress:
        task_id = progress.add_task(name, total=total)

        def finish(task: asyncio.Task, item: Any, key: str) -> None:
            nonlocal unexpected
            try:
                record_result(task, item, key)
            except Exception as exc:
                # E.g. the disk is full: stop the stage; what is stored stays valid.
                unexpected = unexpected or exc

        def record_result(task: asyncio.Task, item: Any, key: str) -> None:
            nonlocal fatal, unexpected
            exc = task.exception()
            if exc is None:
                records = task.result()
                for i, rec in enumerate(records):
                    rec["key"] = key if i == 0 else f"{key}#{i}"
                    store.append(rec)
                if not records:
                    # Nothing to keep (e.g. filtered out): still mark the input as done.
                    store.append({"key": key, "input_id": input_id_of(item), "empty": True})
                stats.records_written += len(records)
                stats.processed += 1
            elif isinstance(exc, RequestRejected):
                failures.append(
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
            progress.advance(task_id)

        def settle(done: Iterable[asyncio.Task]) -> None:
            # Results are recorded here, in the stage's own coroutine, not in done-callbacks:
            # a callback could run after the final dataset is written, missing its record.
            for task in done:
                item, key = pending.pop(task)
                if not task.cancelled():
                    finish(task, item, key)

        async def wait_for_one() -> None:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            settle(done)

        try:
            for item in inputs:
                stats.total_inputs += 1
                key = key_of(item)
                if key in store or key in failures:
                    stats.already_done += 1
                    progress.advance(task_id)
                    continue
                if fatal is not None or unexpected is not None:
                    break
                while len(pending) >= window:
                    await wait_for_one()
                if fatal is not None or unexpected is not None:
                    break
                pending[asyncio.ensure_future(work(item, key))] = (item, key)
        except Exception as exc:
            # A bad input line: keep what already finished, then report it.
            unexpected = unexpected or exc
        while pending:
            if fatal is not None or unexpected is not None:
                # Queued requests would each wait out their own retry deadline: cancel now.
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                settle(list(pending))
                break
            await wait_for_one()
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
