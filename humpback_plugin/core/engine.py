"""Engines: where a stage's pure per-item work runs (this process, local cores, a cluster).

The contract is one method. ``engine.map_ordered(fn, items, chunk_size=K)`` calls
``fn(item)`` for every item of the (possibly endless, lazily consumed) iterable and yields
the results **in input order**, with a **bounded** number of items in flight, so memory
does not grow with the input. ``fn`` must be picklable: a top-level function, or a
``functools.partial`` of one with picklable arguments. It must not rely on state of the
calling process other than what it builds itself (a worker may cache what it builds,
keyed by its arguments). An exception raised by ``fn`` is raised by ``map_ordered``. An
engine is a context manager (``close()`` on exit stops its workers, also when the caller
stops iterating early).

Engines are picked by name from :data:`ENGINES` (``corpus.engine``, ``--engine``):
``local`` is :class:`LocalEngine` (``multiprocessing``, one worker per core by default;
one worker runs in the calling process, with no pool). Another engine (a cluster) is a
class with the same constructor arguments and methods, added to :data:`ENGINES` under its
name: ``ray`` is :class:`RayEngine` (a Ray cluster, or a local Ray instance).

Model-calling stages: an engine may also offer ``model_calls(name, client_config, work,
window=...)``, an async context manager giving a :class:`RemoteCalls` whose
``submit(item, key)`` does ``work(client, item, key)`` elsewhere (Ray actors, each with
the project's client). Engines without it (``local``) run the requests in the stage's own
event loop (:func:`humpback_plugin.core.runner.run_model_stage`). In every engine the
calling process stays the only writer of the record store: workers return records, the
driver appends them, so a re-run resumes exactly as with the local engine and the final
files are written by the same code in the same input order.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import math
import multiprocessing
import os
import traceback
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Protocol, TypeVar

from humpback_plugin.core.client import (
    ClientConfig,
    ClientStats,
    OpenAIClient,
    RequestRejected,
)
from humpback_plugin.core.errors import (
    HumpbackError,
    ServerUnavailable,
    StageInterrupted,
    UnknownComponent,
    UsageError,
)

T = TypeVar("T")
R = TypeVar("R")
RAY_INSTALL_HINT = "pip install 'humpback-plugin[ray]'"
Work = Callable[[OpenAIClient, Any, str], Awaitable[list[dict[str, Any]]]]


def available_cores() -> int:
    """The cores this process may run on (the CPU affinity where the OS tells it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return max(1, os.cpu_count() or 1)


class Engine(Protocol):
    """What a stage needs from an engine (see the module docstring)."""

    name: str
    workers: int

    def map_ordered(
        self, fn: Callable[[Any], Any], items: Iterable[Any], *, chunk_size: int = 1
    ) -> Iterator[Any]: ...

    def close(self) -> None: ...

    def __enter__(self) -> Engine: ...

    def __exit__(self, *exc: object) -> None: ...


class WorkerError(HumpbackError):
    """An error in a worker that could not travel back as itself."""


def _run_chunk(fn: Callable[[Any], Any], chunk: list[Any]) -> list[Any]:
    try:
        return [fn(item) for item in chunk]
    except Exception as exc:
        # An exception that cannot be rebuilt in the calling process (a class whose
        # __init__ wants other arguments) would leave the pool waiting forever.
        try:
            copy.deepcopy(exc)
        except Exception:  # noqa: BLE001 - any failure means it cannot travel
            raise WorkerError(f"{type(exc).__name__}: {exc}") from None
        raise


class LocalEngine:
    """``workers`` processes on this machine (default: every available core).

    At most ``max_in_flight`` chunks of ``chunk_size`` items are submitted and not yet
    yielded (default two per worker), so at most ``max_in_flight * chunk_size`` items and
    their results are held at once. Workers are forked where the OS allows it, so they see
    the plugins this process loaded (also ones registered at run time).
    """

    name = "local"

    def __init__(self, workers: int | None = None, max_in_flight: int | None = None) -> None:
        self.workers = max(1, workers or available_cores())
        self.max_in_flight = max(1, max_in_flight or 2 * self.workers)
        self._pool: Any = None

    def start(self) -> LocalEngine:
        """Start the worker processes now (before the caller starts threads of its own,
        such as a progress bar: forking a threaded process is unsafe)."""
        if self.workers > 1 and self._pool is None:
            methods = multiprocessing.get_all_start_methods()
            context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
            self._pool = context.Pool(self.workers)
        return self

    def map_ordered(
        self, fn: Callable[[Any], Any], items: Iterable[Any], *, chunk_size: int = 1
    ) -> Iterator[Any]:
        chunk_size = max(1, chunk_size)
        if self.workers == 1:
            for item in items:
                yield fn(item)
            return
        self.start()
        source = iter(items)
        pending: deque[Any] = deque()
        try:
            while True:
                while len(pending) < self.max_in_flight:
                    chunk = list(islice(source, chunk_size))
                    if not chunk:
                        break
                    pending.append(self._pool.apply_async(_run_chunk, (fn, chunk)))
                if not pending:
                    return
                yield from pending.popleft().get()
        except BaseException:
            # An error in fn, or the caller stopped early: drop the work still queued.
            self.close()
            raise

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def __enter__(self) -> LocalEngine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


# --- Ray ------------------------------------------------------------------------------------


def import_ray() -> Any:
    """The ``ray`` module, or a :class:`UsageError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise UsageError(
            f"--engine ray needs Ray, which is not installed here: {RAY_INSTALL_HINT} "
            "(on every node of the cluster, with this package)"
        ) from None
    return ray


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
            if not fut.done():
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


class RayEngine:
    """Stages on a Ray cluster (``address``: ``auto``, ``ray://head:10001``, or None for
    ``$RAY_ADDRESS`` or else a local Ray instance started here and stopped by ``close``).

    * ``map_ordered``: chunks of items as Ray tasks across the cluster's CPUs (``workers``:
      at most that many CPUs' worth, default all), results in input order, at most
      ``2 x workers`` chunks in flight.
    * model calls: ``actors`` Ray actors (default: one per server URL), each with the
      project's client over every URL and its share of the per-URL concurrency, spread
      over the nodes; the driver sends them batches and stores what comes back.
    """

    name = "ray"

    def __init__(
        self,
        workers: int | None = None,
        address: str | None = None,
        actors: int | None = None,
    ) -> None:
        self.ray = import_ray()
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.actors = actors
        self._workers = workers
        self._connected_here = False

    @property
    def workers(self) -> int:
        """Parallel workers for ``map_ordered``: as asked, else the cluster's CPUs."""
        return self._workers or self.cpus()

    def _connect(self) -> Any:
        ray = self.ray
        if not ray.is_initialized():
            # The plugin selection travels to the workers (on a local instance they inherit
            # it anyway). The API key does not go into the runtime environment, which Ray
            # records in its logs: it travels inside the client config to the actors.
            env_vars = {
                name: os.environ[name] for name in ("HUMPBACK_LOAD_PLUGINS",) if name in os.environ
            }
            ray.init(
                address=self.address,
                include_dashboard=False,
                logging_level=logging.WARNING,
                log_to_driver=False,
                runtime_env={"env_vars": env_vars} if env_vars else None,
            )
            self._connected_here = True
        return ray

    def cpus(self) -> int:
        return max(1, int(self._connect().cluster_resources().get("CPU", 1)))

    def map_ordered(
        self, fn: Callable[[T], R], items: Iterable[T], *, chunk_size: int = 64
    ) -> Iterator[R]:
        ray = self._connect()
        task = ray.remote(_run_chunk)
        limit = 2 * self.workers
        fn_ref = ray.put(fn)
        pending: deque[Any] = deque()
        for chunk in chunks(items, chunk_size):
            pending.append(task.remote(fn_ref, chunk))
            if len(pending) >= limit:
                yield from ray.get(pending.popleft())
        while pending:
            yield from ray.get(pending.popleft())

    @contextlib.asynccontextmanager
    async def model_calls(
        self, name: str, client_config: ClientConfig, work: Work, *, window: int
    ) -> AsyncIterator[RemoteCalls]:
        ray = self._connect()
        count = self.actors or len(client_config.base_urls)
        # Clients wait on the network: an actor needs a fraction of a CPU, and a small
        # cluster must still be able to place all of them.
        cpus = min(1.0, self.cpus() / count)
        actor_class = ray.remote(ModelWorker).options(
            num_cpus=cpus, scheduling_strategy="SPREAD", max_concurrency=1000
        )
        actors = [
            actor_class.remote(f"{name}-{i}", cfg, work)
            for i, cfg in enumerate(worker_configs(client_config, count))
        ]
        load = dict.fromkeys(range(count), 0)

        async def dispatch(batch: list[tuple[Any, str]]) -> tuple[list[tuple], Any]:
            index = min(load, key=load.__getitem__)  # the actor with the fewest items out
            load[index] += len(batch)
            try:
                return await actors[index].run.remote(batch)
            except ray.exceptions.RayActorError as exc:
                # The actor (or its node) is gone: stop like an unreachable server, resumable.
                lost = ("unavailable", f"a Ray actor died ({type(exc).__name__})")
                return [lost] * len(batch), (f"lost-{index}", ClientStats())
            finally:
                load[index] -= len(batch)

        calls = RemoteCalls(dispatch, batch_size=max(1, window // (2 * count)), workers=count)
        try:
            yield calls
        finally:
            # Actors first: a batch still out after a stop would otherwise be waited for
            # (up to its retry deadline); its results are no longer wanted.
            for actor in actors:
                ray.kill(actor)
            await calls.drain()

    def close(self) -> None:
        """Stop the local instance started here, or disconnect from the cluster."""
        if self._connected_here and self.ray.is_initialized():
            self.ray.shutdown()
        self._connected_here = False

    def __enter__(self) -> RayEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


ENGINES: dict[str, Callable[..., Engine]] = {"local": LocalEngine, "ray": RayEngine}


def engine_for(
    name: str,
    ray_address: str | None = None,
    ray_actors: int | None = None,
    workers: int | None = None,
) -> Engine:
    """The engine of the commands' options (``--engine``, ``--ray-address``,
    ``--ray-actors``, ``--workers``; ``engine``, ``ray_address``, ``ray_actors`` in the run
    config, ``corpus.workers`` for the corpus stage)."""
    if name == "ray":
        return make_engine("ray", workers, address=ray_address, actors=ray_actors)
    if ray_address or ray_actors:
        raise UsageError("--ray-address and --ray-actors need --engine ray")
    return make_engine(name, workers)


def make_engine(name: str = "local", workers: int | None = None, **options: Any) -> Engine:
    """An engine by name (``workers`` None: every available core; ``options``: the
    engine's own, e.g. RayEngine's ``address`` and ``actors``)."""
    if name not in ENGINES:
        raise UnknownComponent(f"unknown engine {name!r}; available: {', '.join(sorted(ENGINES))}")
    return ENGINES[name](workers=workers, **options)
