"""``--engine ray``: stages on a Ray cluster, or a local Ray instance.

The CPU stages' per-item work (``map_ordered``) runs on **Ray Data**: the driver reads
the inputs (so that a bad line is reported with its file and line, and what is done is
skipped) and hands them to Ray Data in windows of blocks, which Ray tasks map across the
cluster's CPUs. The model-calling stages run the project's client in **Ray actors**
spread over the nodes, each over every vLLM URL (:mod:`humpback_plugin.core.remote`). In
both the driver is the only writer of the record store and of the final files, so a
re-run resumes as with the local engine and the datasets are the local engine's.

Ray is imported when an engine is made, never with this module, so the CLI starts
without it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from operator import itemgetter
from typing import Any, TypeVar

from humpback_plugin.core.chunks import chunks, run_chunk
from humpback_plugin.core.client import ClientConfig, ClientStats
from humpback_plugin.core.errors import UsageError
from humpback_plugin.core.remote import ModelWorker, RemoteCalls, Work, worker_configs

T = TypeVar("T")
R = TypeVar("R")
RAY_INSTALL_HINT = "pip install 'humpback-plugin[ray]'"
# A block of Ray Data is this many chunks: a Ray Data task costs several milliseconds,
# so a task per chunk would cost more than a document's work.
CHUNKS_PER_BLOCK = 2
# Blocks a window gives each worker: fewer leave CPUs idle at a window's end, more hold
# more items (bench_extraction.py --only engines: 2 x 4 was the best of those tried).
BLOCKS_PER_WORKER = 4
# Windows of at most this many blocks bound the items and results held at once.
MAX_BLOCKS_PER_WINDOW = 128
# Windows running at once: while the driver takes one's results, the next one runs.
WINDOWS_IN_FLIGHT = 2


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


class RayEngine:
    """Stages on a Ray cluster (``address``: ``auto``, ``ray://head:10001``, or None for
    ``$RAY_ADDRESS`` or else a local Ray instance started here and stopped by ``close``).

    * ``map_ordered``: Ray Data. The items go to the cluster in windows, each a dataset of
      blocks of ``CHUNKS_PER_BLOCK`` chunks, mapped by Ray tasks over the cluster's CPUs
      (``workers``: at most that many tasks at once, default all); two windows run at
      once, so the CPUs do not wait at a window's end, and results come in input order.
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
        blocks = max(2, min(BLOCKS_PER_WORKER * self.workers, MAX_BLOCKS_PER_WINDOW))
        run = partial(_run_window, self._data(), fn, concurrency=self._workers)
        pending: deque[Future] = deque()
        # A thread per window in flight: Ray Data runs a dataset to its end from one call.
        pool = ThreadPoolExecutor(WINDOWS_IN_FLIGHT, thread_name_prefix="humpback-ray-data")
        try:
            item_chunks = chunks(items, max(1, chunk_size))
            for window in chunks(item_chunks, CHUNKS_PER_BLOCK * blocks):
                pending.append(pool.submit(run, window))
                if len(pending) >= WINDOWS_IN_FLIGHT:
                    yield from _unpack_window(pending.popleft().result())
            while pending:
                yield from _unpack_window(pending.popleft().result())
        finally:
            # Also when the caller stops early: the window that runs ends (it is bounded),
            # those not started are dropped.
            pool.shutdown(wait=True, cancel_futures=True)

    def _data(self) -> Any:
        """``ray.data``, connected, its progress bars off (the stage shows its own)."""
        self._connect()
        try:
            import ray.data
        except ImportError as exc:  # Ray without its data extra (pyarrow, pandas)
            raise UsageError(f"--engine ray needs Ray Data ({exc}): {RAY_INSTALL_HINT}") from None

        # Ray Data says once, as a warning, that its bars are off.
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        ray.data.DataContext.get_current().enable_progress_bars = False
        return ray.data

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
            calls.close()
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


def _run_window(
    data: Any,
    fn: Callable[[Any], Any],
    window: list[list[Any]],
    *,
    concurrency: int | None,
) -> list[tuple[str, Any]]:
    """One window (a list of chunks) through Ray Data: the outcome of each chunk, in
    input order.

    A row is a whole chunk (a row per item cost Ray Data's conversion per item), held as
    a Python object, which Ray serializes as it does a task's arguments; a block is
    ``CHUNKS_PER_BLOCK`` rows, and a Ray Data task maps one block."""
    rows = [{"i": i, "chunk": chunk} for i, chunk in enumerate(window)]
    blocks = math.ceil(len(rows) / CHUNKS_PER_BLOCK)
    mapped = data.from_items(rows, override_num_blocks=blocks).map_batches(
        _run_batch,
        fn_kwargs={"fn": fn},
        batch_size=1,
        batch_format="numpy",
        concurrency=concurrency,
    )
    return [row["out"] for row in sorted(mapped.take_all(), key=itemgetter("i"))]


def _run_batch(batch: dict[str, Any], fn: Callable[[Any], Any]) -> dict[str, Any]:
    """In a Ray Data task: one chunk's results, or the exception ``fn`` raised, as one row
    (an exception travels as a value so that the driver raises it in input order)."""
    import numpy as np

    try:
        outcome: tuple[str, Any] = ("ok", run_chunk(fn, list(batch["chunk"][0])))
    except Exception as exc:  # noqa: BLE001 - re-raised by the driver
        # run_chunk has made one that cannot be rebuilt elsewhere a WorkerError already.
        outcome = ("error", exc)
    out = np.empty(1, dtype=object)  # one cell holding the tuple, not an array made of it
    out[0] = outcome
    return {"i": batch["i"], "out": out}


def _unpack_window(outcomes: list[tuple[str, Any]]) -> Iterator[Any]:
    for kind, value in outcomes:
        if kind == "error":
            raise value
        yield from value
