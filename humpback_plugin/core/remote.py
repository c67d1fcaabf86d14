"""Model calls that run in another process (a Ray actor), a batch at a time.

The stage's event loop submits ``(item, key)`` pairs to a :class:`RemoteCalls`, which
sends them in batches through ``dispatch`` (an engine's, e.g. Ray actor calls) to
:class:`ModelWorker` objects, each with the project's client; every item comes back as an
outcome tuple, never as an exception, so errors with custom arguments cross processes
intact. The driver stays the only writer of the record store.
"""

from __future__ import annotations

import asyncio
import math
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from humpback_plugin.core.chunks import chunks
from humpback_plugin.core.client import (
    ClientConfig,
    ClientStats,
    OpenAIClient,
    RequestRejected,
)
from humpback_plugin.core.errors import ServerUnavailable, StageInterrupted

Work = Callable[[OpenAIClient, Any, str], Awaitable[list[dict[str, Any]]]]


@dataclass
class RemoteCalls:
    """Model calls that run elsewhere, a batch at a time: ``submit(item, key)`` returns the
    records ``work`` made, or raises what it raised (:class:`RequestRejected`,
    :class:`ServerUnavailable`), as if it had run here."""

    dispatch: Callable[[list[tuple[Any, str]]], Awaitable[tuple[list[tuple], Any]]]
    batch_size: int
    workers: int
    stats_by_worker: dict[Any, ClientStats] = field(default_factory=dict)
    _buffer: list[tuple[Any, str, asyncio.Future]] = field(default_factory=list)
    _scheduled: bool = False
    _in_flight: set[asyncio.Task] = field(default_factory=set)
    _closed: bool = False

    async def submit(self, item: Any, key: str) -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._buffer.append((item, key, future))
        if len(self._buffer) >= self.batch_size:
            self._flush()
        elif not self._scheduled:
            # Once the stage's loop yields: everything submitted until then goes together.
            self._scheduled = True
            loop.call_soon(self._flush)
        return _unpack(await future)

    def _flush(self) -> None:
        self._scheduled = False
        buffered, self._buffer = self._buffer, []
        for batch in chunks(buffered, self.batch_size):
            task = asyncio.ensure_future(self._run(batch))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)

    async def _run(self, batch: list[tuple[Any, str, asyncio.Future]]) -> None:
        live = [(item, key, fut) for item, key, fut in batch if not fut.cancelled()]
        if not live:
            return
        try:
            outcomes, (worker, stats) = await self.dispatch([(item, key) for item, key, _ in live])
            self.stats_by_worker[worker] = stats
        except Exception as exc:  # e.g. the worker cannot import this package: show why
            outcomes = [("error", f"{type(exc).__name__}: {exc}", "")] * len(live)
        for (_item, _key, fut), outcome in zip(live, outcomes, strict=True):
            if self._closed:
                fut.cancel()
            elif not fut.done():
                fut.set_result(outcome)

    def client_stats(self) -> ClientStats:
        total = ClientStats()
        for stats in self.stats_by_worker.values():
            total.requests += stats.requests
            total.retries += stats.retries
            total.rejected += stats.rejected
            total.prompt_tokens += stats.prompt_tokens
            total.completion_tokens += stats.completion_tokens
            for url, count in stats.per_url.items():
                total.per_url[url] = total.per_url.get(url, 0) + count
        return total

    def close(self) -> None:
        """The stage is stopping (Ctrl-C, a server gone): items still waiting are cancelled,
        not answered, since the tasks waiting on them are being cancelled and an answer (a
        "worker gone" error, say) would be an exception nobody reads."""
        self._closed = True
        for _item, _key, fut in self._buffer:
            fut.cancel()
        self._buffer = []

    async def drain(self) -> None:
        """Wait for batches still out (results of cancelled items are dropped)."""
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)


class RemoteError(StageInterrupted):
    """A worker raised something other than a server error: a bug, with its traceback."""


def _unpack(outcome: tuple) -> list[dict[str, Any]]:
    kind = outcome[0]
    if kind == "ok":
        return outcome[1]
    if kind == "rejected":
        raise RequestRejected(outcome[1], outcome[2], outcome[3])
    if kind == "unavailable":
        raise ServerUnavailable(outcome[1])
    raise RemoteError(f"a worker failed: {outcome[1]}\n{outcome[2]}")


class ModelWorker:
    """A client and the stage's ``work`` in a worker process (a Ray actor): runs batches of
    (item, key) concurrently and returns one outcome per item, never raising for a
    per-item problem (exceptions with custom arguments do not cross processes intact)."""

    def __init__(self, name: str, client_config: ClientConfig, work: Work) -> None:
        self.name = name
        self.client_config = client_config
        self.work = work
        self.client: OpenAIClient | None = None

    async def run(self, batch: list[tuple[Any, str]]) -> tuple[list[tuple], tuple[str, Any]]:
        if self.client is None:
            self.client = OpenAIClient(self.client_config)
        outcomes = await asyncio.gather(*(self._one(item, key) for item, key in batch))
        # Cumulative, so batches that overlap are never counted twice.
        return list(outcomes), (self.name, self.client.stats)

    async def _one(self, item: Any, key: str) -> tuple:
        assert self.client is not None
        try:
            return ("ok", await self.work(self.client, item, key))
        except RequestRejected as exc:
            return ("rejected", exc.status_code, exc.message, exc.server_url)
        except ServerUnavailable as exc:
            return ("unavailable", str(exc))
        except Exception as exc:
            return ("error", f"{type(exc).__name__}: {exc}", traceback.format_exc())


def worker_configs(config: ClientConfig, workers: int) -> list[ClientConfig]:
    """Each worker gets every URL (so each routes around a dead one), the list rotated so
    ties start on different servers, and its share of the per-URL concurrency."""
    urls = list(config.base_urls)
    share = max(1, math.ceil(config.concurrency / workers))
    return [
        config.model_copy(
            update={
                "base_urls": urls[i % len(urls) :] + urls[: i % len(urls)],
                "concurrency": share,
            }
        )
        for i in range(workers)
    ]
