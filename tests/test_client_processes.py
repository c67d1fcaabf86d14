"""``--client-processes N``: a model stage's requests from N forked processes of this machine,
the stage's process still reading, storing and writing (``core/client_processes.py``).

Against the fast stub (answers are a function of the request, as greedy decoding is of the
prompt): the datasets are those of one process, the requests really leave from other
processes, a client process that dies stops the stage resumably, and the processes end
with the engine. The SIGKILL-and-resume test (``test_faults.py``) and a real vLLM run
(``test_augment_curate_real.py``) cover the rest.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from humpback_plugin.core.client import ClientConfig
from humpback_plugin.core.config import AugmentConfig, CurateConfig
from humpback_plugin.core.engine import LocalEngine, engine_for
from humpback_plugin.core.errors import StageInterrupted, UsageError
from humpback_plugin.stages.augment.stage import augment, augment_async
from humpback_plugin.stages.curate.stage import curate
from tests.fast_stub import FastStub
from tests.stub_openai import StubOpenAI
from tests.test_faults import (
    ROOT,
    _env,
    assert_no_process_writes,
    cli_args,
    comparable,
    run_cli,
    slow,
    store_lines,
    write_segments,
)
from tests.test_pipeline import run_beside_a_plain_run, stub_handler


def _config(url: str, concurrency: int = 16) -> ClientConfig:
    return ClientConfig(base_urls=[url], model="stub", concurrency=concurrency)


def test_datasets_equal_one_process_and_requests_leave_from_the_client_processes(tmp_path):
    segments = write_segments(tmp_path / "segments.jsonl", 300)
    with FastStub() as stub:
        config = _config(stub.base_url)
        one = augment(segments, tmp_path / "one.jsonl", client_config=config,
                      settings=AugmentConfig(), show_progress=False)  # fmt: skip
        engine = LocalEngine(workers=1, client_processes=2)
        pids = [proc.pid for proc in engine._clients._procs]
        assert len(set(pids)) == 2 and os.getpid() not in pids
        try:
            two = augment(segments, tmp_path / "two.jsonl", client_config=config,
                          settings=AugmentConfig(), show_progress=False, engine=engine)  # fmt: skip
            # Curate through the same processes (a second stage, as in a pipeline run).
            scored = {}
            for name, eng in (("one", None), ("two", engine)):
                curate(tmp_path / "one.jsonl", tmp_path / f"scored-{name}.jsonl",
                       client_config=config, settings=CurateConfig(), show_progress=False,
                       engine=eng)  # fmt: skip
                scored[name] = comparable(tmp_path / f"scored-{name}.jsonl")
        finally:
            engine.close()
        assert not any(Path(f"/proc/{pid}").exists() for pid in pids), "processes left"
    assert comparable(tmp_path / "two.jsonl") == comparable(tmp_path / "one.jsonl")
    assert two["accepted"] == one["accepted"] == 300
    # The client's counts come from the client processes, summed.
    assert two["requests"] == one["requests"] == 300
    assert scored["two"] == scored["one"] and len(scored["one"]) == 300


def test_a_client_process_that_dies_stops_the_stage_resumably(tmp_path):
    segments = write_segments(tmp_path / "segments.jsonl", 60)
    out = tmp_path / "out.jsonl"
    with StubOpenAI(slow(0.1)) as stub:
        # Two requests in flight (one per process): 60 take about 3 s; the kill is at 1 s.
        config = _config(stub.base_url, concurrency=2)
        engine = LocalEngine(workers=1, client_processes=2)
        victim = engine._clients._procs[0].pid
        timer = threading.Timer(1.0, os.kill, (victim, signal.SIGKILL))
        timer.start()
        try:
            with pytest.raises(StageInterrupted, match="client process died"):
                augment(segments, out, client_config=config, settings=AugmentConfig(),
                        show_progress=False, engine=engine)  # fmt: skip
        finally:
            timer.cancel()
            engine.close()
        assert not out.exists()
        done = Path(f"{out}.parts/generations.jsonl").read_bytes().count(b"\n")
        assert 0 < done < 60, "the stop must land mid-stage"
        before = len(stub.generation_requests)
        summary = augment(segments, out, client_config=config, settings=AugmentConfig(),
                          show_progress=False)  # fmt: skip
        assert summary["already_done"] == done
        assert len(stub.generation_requests) - before == 60 - done
    assert len(comparable(out)) == 60


def test_client_processes_are_for_the_local_engine():
    with pytest.raises(UsageError, match="--ray-actors"):
        engine_for("ray", client_processes=2)
    engine = engine_for("local", client_processes=1)
    assert not hasattr(engine, "model_calls"), "one process: requests from the stage's loop"
    engine.close()


def test_two_stages_at_once_share_the_client_processes(tmp_path):
    """The evaluation answers for several models at once through one engine: each stage
    gets its own worker in every process, and its own results."""
    a = write_segments(tmp_path / "a.jsonl", 120)
    b = tmp_path / "b.jsonl"
    b.write_text("".join(reversed(a.read_text().splitlines(keepends=True))))
    with FastStub() as stub:
        config = _config(stub.base_url)
        for src in (a, b):
            augment(src, tmp_path / f"ref-{src.stem}.jsonl", client_config=config,
                    settings=AugmentConfig(), show_progress=False)  # fmt: skip
        engine = LocalEngine(workers=1, client_processes=2)

        async def both() -> list[dict]:
            return await asyncio.gather(*(
                augment_async(src, tmp_path / f"out-{src.stem}.jsonl", client_config=config,
                              settings=AugmentConfig(), show_progress=False, engine=engine)
                for src in (a, b)
            ))  # fmt: skip

        try:
            summaries = asyncio.run(both())
            # The processes serve the next stage too, in another event loop.
            again = augment(a, tmp_path / "again.jsonl", client_config=config,
                            settings=AugmentConfig(), show_progress=False,
                            engine=engine)  # fmt: skip
        finally:
            engine.close()
    for src in (a, b):
        assert comparable(tmp_path / f"out-{src.stem}.jsonl") == comparable(
            tmp_path / f"ref-{src.stem}.jsonl"
        )
    assert [s["accepted"] for s in summaries] == [120, 120] and again["accepted"] == 120
    assert comparable(tmp_path / "again.jsonl") == comparable(tmp_path / "ref-a.jsonl")


def test_humpback_run_with_client_processes_in_the_config_equals_a_plain_run(tmp_path):
    """``client_processes: 2`` in the run config: augment and both curation stages send
    from two client processes, and every dataset of the run equals the plain run's."""
    with StubOpenAI(stub_handler, models=("stub",)) as stub:
        runs = run_beside_a_plain_run(tmp_path, stub.base_url, "processes", client_processes=2)
    manifest = json.loads((runs["processes"] / "manifest.json").read_text())
    assert manifest["config"]["client_processes"] == 2
    for dataset in ("augment/candidates.jsonl", "curate_1/scored.jsonl",
                    "curate_2/scored.jsonl", "m2/data/m2.jsonl"):  # fmt: skip
        plain, processes = (comparable(runs[n] / dataset) for n in ("plain", "processes"))
        assert processes == plain and plain, dataset


def _sigint_as_in_a_terminal() -> None:
    # A suite run as a background job (`make test &`) inherits SIGINT ignored, and so would
    # the command under test; at a terminal Ctrl-C is acted on.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("engine", ["processes", "ray"])
def test_ctrl_c_ends_the_client_processes_quietly_and_the_run_resumes(tmp_path, request, engine):
    """SIGINT to the terminal's process group (Ctrl-C): the client processes ignore it,
    the driver stops as one process does ("Aborted!", no asyncio noise) and ends them.
    The same for Ray actors (the driver joins the suite's Ray instance)."""
    segments = write_segments(tmp_path / "segments.jsonl", 40)
    out = tmp_path / "out.jsonl"
    engine_args = ["--client-processes", "2"]
    if engine == "ray":
        address = request.getfixturevalue("ray_address")
        engine_args = ["--engine", "ray", "--ray-address", address, "--ray-actors", "2"]
    with StubOpenAI(slow(0.2)) as stub:
        args = cli_args("augment", segments, out, stub, *engine_args)
        proc = subprocess.Popen(args, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, start_new_session=True,
                                preexec_fn=_sigint_as_in_a_terminal)  # fmt: skip
        store = Path(f"{out}.parts/generations.jsonl")
        deadline = time.monotonic() + 60
        while store_lines(store) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode != 0 and "Aborted!" in stderr
        assert "Traceback" not in stderr and "never retrieved" not in stderr, stderr[-2000:]
        assert_no_process_writes(out)
        done = store_lines(store)
        assert 0 < done < 40 and not out.exists()
        rerun = run_cli(args)
    assert "done before (resumed)" in rerun.stderr
    assert len(comparable(out)) == 40
