"""``--client-processes N``: a model-calling stage's requests from N processes of this machine.

One Python process sends at most about 2,000-3,000 requests a second through a stage
(``bench/bench_client.py``: aiohttp, JSON and the stage's own work share one core), which a
GPU node serving prefill-bound judge requests can exceed. With ``N > 1`` the local engine
forks N client processes when it is made (before the stage's event loop, progress bar or
aiohttp exist, so the fork copies no running loop or thread). Each runs a
:class:`~humpback_plugin.core.remote.ModelWorker` (the project's client and the stage's
``work``) in its own event loop, as a Ray actor does, and the stage's process stays the
driver: it reads the inputs, skips what is done, is the only writer of the store and
writes the final files, so a re-run resumes and the datasets are those of one process.

Messages go over two one-way pipes per process (requests in, results out); a process
sends its results from a thread of its own, so neither side can block the other's reads.
A process that dies ends its batches as "unavailable": the stage stops, resumable, as
when a server goes away. The processes end with the engine, or when this process dies
(they read the end of their pipe).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import multiprocessing
import queue
import signal
import threading
from collections.abc import AsyncIterator
from typing import Any

from humpback_plugin.core.client import ClientConfig, ClientStats
from humpback_plugin.core.remote import ModelWorker, RemoteCalls, Work, worker_configs


class ClientProcesses:
    """``count`` client processes, forked now; ``model_calls`` hands them a stage's work."""

    def __init__(self, count: int) -> None:
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        self.count = count
        self._ids = itertools.count()
        self._to: list[Any] = []
        self._from: list[Any] = []
        self._procs: list[Any] = []
        for i in range(count):
            requests_out, requests_in = context.Pipe(duplex=False)
            results_out, results_in = context.Pipe(duplex=False)
            # The child closes the driver's ends it inherits (its own pipes' and those of
            # the processes forked before it): else a pipe would stay open after the
            # driver died, and its process would never see the end of it.
            inherited = [*self._to, *self._from, requests_in, results_out]
            proc = context.Process(
                target=serve,
                args=(requests_out, results_in, inherited),
                name=f"humpback-client-{i}",
                daemon=True,
            )
            proc.start()
            requests_out.close()
            results_in.close()
            self._to.append(requests_in)
            self._from.append(results_out)
            self._procs.append(proc)

    @contextlib.asynccontextmanager
    async def model_calls(
        self, name: str, client_config: ClientConfig, work: Work, *, window: int
    ) -> AsyncIterator[RemoteCalls]:
        """A :class:`RemoteCalls` whose batches run in the client processes (the one with
        the fewest items out gets the next batch)."""
        loop = asyncio.get_running_loop()
        pending: dict[int, tuple[int, asyncio.Future]] = {}
        load = dict.fromkeys(range(self.count), 0)

        def lost(index: int) -> None:
            """Process ``index`` is gone: its batches end as a server that went away."""
            loop.remove_reader(self._from[index].fileno())
            for bid, (owner, fut) in list(pending.items()):
                if owner == index and not fut.done():
                    fut.set_result((None, "a client process died"))
                    pending.pop(bid, None)

        def readable(index: int) -> None:
            try:
                _kind, bid, outcomes, stats = self._from[index].recv()
            except (EOFError, OSError):
                lost(index)
                return
            entry = pending.pop(bid, None)
            if entry is not None and not entry[1].done():
                entry[1].set_result((outcomes, stats))

        configs = worker_configs(client_config, self.count)
        for i, cfg in enumerate(configs):
            self._to[i].send(("start", f"{name}-{i}", cfg, work))
            loop.add_reader(self._from[i].fileno(), readable, i)

        async def dispatch(batch: list[tuple[Any, str]]) -> tuple[list[tuple], Any]:
            index = min(load, key=load.__getitem__)
            bid = next(self._ids)
            fut = loop.create_future()
            pending[bid] = (index, fut)
            load[index] += len(batch)
            try:
                try:
                    self._to[index].send(("batch", bid, batch))
                except OSError:
                    lost(index)
                outcomes, stats = await fut
            finally:
                load[index] -= len(batch)
                pending.pop(bid, None)
            if outcomes is None:
                return [("unavailable", stats)] * len(batch), (f"lost-{index}", ClientStats())
            return outcomes, stats

        calls = RemoteCalls(
            dispatch, batch_size=max(1, window // (2 * self.count)), workers=self.count
        )
        try:
            yield calls
        finally:
            for i in range(self.count):
                loop.remove_reader(self._from[i].fileno())
                with contextlib.suppress(OSError):
                    self._to[i].send(("stop",))
            # Batches still out after a stop: their results are no longer wanted.
            for _owner, fut in list(pending.values()):
                if not fut.done():
                    fut.set_result((None, "the stage stopped"))
            pending.clear()
            await calls.drain()

    def close(self) -> None:
        for conn in self._to:
            with contextlib.suppress(OSError):
                conn.send(("exit",))
            conn.close()
        for proc in self._procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join()
        for conn in self._from:
            conn.close()
        self._procs.clear()


def serve(requests: Any, results: Any, inherited: list[Any]) -> None:
    """A client process: runs the batches it is sent until its pipe closes."""
    for conn in inherited:
        conn.close()
    # Ctrl-C reaches the whole process group: the driver handles it and closes the pipes.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    outbox: queue.SimpleQueue = queue.SimpleQueue()

    def send_results() -> None:
        while (message := outbox.get()) is not None:
            try:
                results.send(message)
            except OSError:  # the driver is gone
                return

    sender = threading.Thread(target=send_results, name="humpback-results", daemon=True)
    sender.start()
    try:
        asyncio.run(_serve(requests, outbox))
    finally:
        outbox.put(None)
        sender.join(timeout=5)


async def _serve(requests: Any, outbox: queue.SimpleQueue) -> None:
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue = asyncio.Queue()

    def readable() -> None:
        try:
            inbox.put_nowait(requests.recv())
        except (EOFError, OSError):
            loop.remove_reader(requests.fileno())
            inbox.put_nowait(None)

    loop.add_reader(requests.fileno(), readable)
    worker: ModelWorker | None = None
    tasks: set[asyncio.Task] = set()

    async def run(bid: int, batch: list[tuple[Any, str]], on: ModelWorker) -> None:
        outcomes, stats = await on.run(batch)
        outbox.put(("done", bid, outcomes, stats))

    async def stop() -> None:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        tasks.clear()
        if worker is not None and worker.client is not None:
            await worker.client.aclose()

    while (message := await inbox.get()) is not None and message[0] != "exit":
        kind = message[0]
        if kind == "start":
            await stop()
            worker = ModelWorker(*message[1:])
        elif kind == "batch" and worker is not None:
            task = asyncio.ensure_future(run(message[1], message[2], worker))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        elif kind == "stop":
            await stop()
            worker = None
    await stop()
