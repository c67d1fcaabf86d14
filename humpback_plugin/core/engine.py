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
name: ``ray`` is :class:`~humpback_plugin.core.ray_engine.RayEngine` (a Ray cluster, or a
local Ray instance; Ray Data for ``map_ordered``).

Model-calling stages: an engine may also offer ``model_calls(name, client_config, work,
window=...)``, an async context manager giving a
:class:`~humpback_plugin.core.remote.RemoteCalls` whose ``submit(item, key)`` does
``work(client, item, key)`` elsewhere (Ray actors, each with the project's client; with
``client_processes > 1``, ``local``'s forked client processes,
:mod:`humpback_plugin.core.client_processes`). Without it (``local``'s default) the
requests run in the stage's own event loop
(:func:`humpback_plugin.core.runner.run_model_stage`). In every engine the
calling process stays the only writer of the record store: workers return records, the
driver appends them, so a re-run resumes exactly as with the local engine and the final
files are written by the same code in the same input order.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from typing import Any, Protocol

from humpback_plugin.core.chunks import run_chunk
from humpback_plugin.core.client_processes import ClientProcesses
from humpback_plugin.core.errors import UnknownComponent, UsageError
from humpback_plugin.core.ray_engine import RayEngine


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


class LocalEngine:
    """``workers`` processes on this machine (default: every available core).

    At most ``max_in_flight`` chunks of ``chunk_size`` items are submitted and not yet
    yielded (default two per worker), so at most ``max_in_flight * chunk_size`` items and
    their results are held at once. Workers are forked where the OS allows it, so they see
    the plugins this process loaded (also ones registered at run time).
    """

    name = "local"

    def __init__(
        self,
        workers: int | None = None,
        max_in_flight: int | None = None,
        client_processes: int = 1,
    ) -> None:
        self.workers = max(1, workers or available_cores())
        self.max_in_flight = max(1, max_in_flight or 2 * self.workers)
        self._pool: Any = None
        self._clients: Any = None
        if client_processes > 1:
            # Forked now, while this process has no event loop or thread to copy.
            self._clients = ClientProcesses(client_processes)
            self.model_calls = self._clients.model_calls

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
                    pending.append(self._pool.apply_async(run_chunk, (fn, chunk)))
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
        if self._clients is not None:
            self._clients.close()
            self._clients = None

    def __enter__(self) -> LocalEngine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


ENGINES: dict[str, Callable[..., Engine]] = {"local": LocalEngine, "ray": RayEngine}


def engine_for(
    name: str,
    ray_address: str | None = None,
    ray_actors: int | None = None,
    workers: int | None = None,
    client_processes: int | None = None,
) -> Engine:
    """The engine of the commands' options (``--engine``, ``--ray-address``,
    ``--ray-actors``, ``--workers``, ``--client-processes``; ``engine``, ``ray_address``,
    ``ray_actors`` in the run config, ``corpus.workers`` for the corpus stage)."""
    if name == "ray":
        if client_processes and client_processes > 1:
            raise UsageError("--client-processes is for --engine local; use --ray-actors")
        return make_engine("ray", workers, address=ray_address, actors=ray_actors)
    if ray_address or ray_actors:
        raise UsageError("--ray-address and --ray-actors need --engine ray")
    if client_processes and client_processes > 1:
        return make_engine(name, workers, client_processes=client_processes)
    return make_engine(name, workers)


def make_engine(name: str = "local", workers: int | None = None, **options: Any) -> Engine:
    """An engine by name (``workers`` None: every available core; ``options``: the
    engine's own, e.g. RayEngine's ``address`` and ``actors``)."""
    if name not in ENGINES:
        raise UnknownComponent(f"unknown engine {name!r}; available: {', '.join(sorted(ENGINES))}")
    return ENGINES[name](workers=workers, **options)
