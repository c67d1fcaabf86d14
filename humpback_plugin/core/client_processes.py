"""``--client-processes N``: a model-calling stage's requests from N processes of this machine.

One Python process sends at most about 2,500-4,000 requests a second through a stage
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
import copy
import itertools
import multiprocessing
import queue
import signal
import threading
import traceback
from collections.abc import AsyncIterator, Callable
from typing import Any

from humpback_plugin.core import event_loop
from humpback_plugin.core.client import ClientConfig, ClientStats
from humpback_plugin.core.errors import UsageError
from humpback_plugin.core.remote import ModelWorker, RemoteCalls, Work, worker_configs


class ClientProcesses:
    """``count`` client processes, forked now; ``model_calls`` hands them a stage's work
    (several stages at once too, as the evaluation's answers of several models)."""

    def __init__(self, count: int) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:  # a fork would copy the running loop into every client process
            raise UsageError("client processes are started before the event loop, not in it")
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        self.count = count
        self._ids = itertools.count()
        self._to: list[Any] = []
        self._from: list[Any] = []
        self._procs: list[Any] = []
        # Batches out, by id: (stage session, process index, future of its results).
        self._pending: dict[int, tuple[int, int, asyncio.Future]] = {}
        self._dead: set[int] = set()
        self._sessions = 0
        self._loop: asyncio.AbstractEventLoop | None = None
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

    def _readable(self, index: int) -> None:
        try:
            _kind, bid, outcomes, stats = self._from[index].recv()
        except (EOFError, OSError):
            self._lost(index)
            return
        entry = self._pending.pop(bid, None)
        if entry is not None and not entry[2].done():
            entry[2].set_result((outcomes, stats))

    def _lost(self, index: int) -> None:
        """Process ``index`` is gone: its batches end as a server that went away."""
        self._dead.add(index)
        if self._loop is not None:
            self._loop.remove_reader(self._from[index].fileno())
        self._abandon(lambda _sid, owner: owner == index, "a client process died")

    def _abandon(self, match: Callable[[int, int], bool], why: str) -> None:
        """End the batches out that ``match(session, process index)`` picks, unanswered."""
        for bid, (sid, owner, fut) in list(self._pending.items()):
            if match(sid, owner):
                self._pending.pop(bid, None)
                if not fut.done():
                    fut.set_result((None, why))

    def _send(self, index: int, message: tuple) -> None:
        try:
            self._to[index].send(message)
        except OSError:
            self._lost(index)

    @contextlib.asynccontextmanager
    async def model_calls(
        self, name: str, client_config: ClientConfig, work: Work, *, window: int
    ) -> AsyncIterator[RemoteCalls]:
        """A :class:`RemoteCalls` whose batches run in the client processes (the live one
        with the fewest of this stage's items out gets the next batch)."""
        loop = asyncio.get_running_loop()
        if self._sessions == 0:
            self._loop = loop
            for i in range(self.count):
                if i not in self._dead:
                    loop.add_reader(self._from[i].fileno(), self._readable, i)
        elif loop is not self._loop:
            raise RuntimeError("client processes serve one event loop at a time")
        self._sessions += 1
        sid = next(self._ids)
        for i, cfg in enumerate(worker_configs(client_config, self.count)):
            if i not in self._dead:
                self._send(i, ("start", sid, f"{name}-{i}", cfg, work))
        load = dict.fromkeys(range(self.count), 0)

        async def dispatch(batch: list[tuple[Any, str]]) -> tuple[list[tuple], Any]:
            live = [i for i in load if i not in self._dead]
            if not live:
                return [("unavailable", "every client process died")] * len(batch), (
                    "lost",
                    ClientStats(),
                )
            index = min(live, key=load.__getitem__)
            bid = next(self._ids)
            fut = loop.create_future()
            self._pending[bid] = (sid, index, fut)
            load[index] += len(batch)
            try:
                self._send(index, ("batch", sid, bid, batch))
                outcomes, stats = await fut
            finally:
                load[index] -= len(batch)
                self._pending.pop(bid, None)
            if outcomes is None:
                return [("unavailable", stats)] * len(batch), (f"lost-{index}", ClientStats())
            return outcomes, stats

        calls = RemoteCalls(
            dispatch, batch_size=max(1, window // (2 * self.count)), workers=self.count
        )
        try:
            yield calls
        finally:
            calls.close()
            for i in range(self.count):
                if i not in self._dead:
                    self._send(i, ("stop", sid))
            # This stage's batches still out after a stop (Ctrl-C, a server gone): their
            # results are not wanted (closed calls cancel the items waiting on them).
            self._abandon(lambda owner_sid, _owner: owner_sid == sid, "the stage stopped")
            self._sessions -= 1
            if self._sessions == 0:
                for i in range(self.count):
                    if i not in self._dead:
                        loop.remove_reader(self._from[i].fileno())
                self._loop = None
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
            except Exception as exc:  # a record that cannot cross: say so, never go quiet
                _kind, bid, outcomes, stats = message
                why = f"a client process could not send its results: {type(exc).__name__}: {exc}"
                results.send(("done", bid, [("error", why, "")] * len(outcomes), stats))

    sender = threading.Thread(target=send_results, name="humpback-results", daemon=True)
    sender.start()
    try:
        event_loop.run(_serve(requests, outbox))
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
    # The stages this process serves, by session: their worker and batches running.
    workers: dict[int, ModelWorker] = {}
    tasks: dict[int, set[asyncio.Task]] = {}

    async def run(bid: int, batch: list[tuple[Any, str]], on: ModelWorker) -> None:
        try:
            outcomes, stats = await on.run(batch)
        except Exception as exc:  # ModelWorker answers per item; this is a bug: report it
            failed = ("error", f"{type(exc).__name__}: {exc}", traceback.format_exc())
            outcomes, stats = [failed] * len(batch), (on.name, ClientStats())
        # A copy: the client keeps counting while the sender thread pickles this.
        outbox.put(("done", bid, outcomes, copy.deepcopy(stats)))

    async def stop(sid: int) -> None:
        running = tasks.pop(sid, set())
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        worker = workers.pop(sid, None)
        if worker is not None and worker.client is not None:
            await worker.client.aclose()

    while (message := await inbox.get()) is not None and message[0] != "exit":
        kind, sid = message[0], message[1]
        if kind == "start":
            workers[sid] = ModelWorker(*message[2:])
            tasks[sid] = set()
        elif kind == "batch" and sid in workers:
            task = asyncio.ensure_future(run(message[2], message[3], workers[sid]))
            tasks[sid].add(task)
            task.add_done_callback(tasks[sid].discard)
        elif kind == "stop":
            await stop(sid)
    for sid in list(workers):
        await stop(sid)
