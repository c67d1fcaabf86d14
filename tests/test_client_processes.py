"""``--client-processes N``: a model stage's requests from N forked processes of this machine,
the stage's process still reading, storing and writing (``core/client_processes.py``).

Against the fast stub (answers are a function of the request, as greedy decoding is of the
prompt): the datasets are those of one process, the requests really leave from other
processes, a client process that dies stops the stage resumably, and the processes end
with the engine. The SIGKILL-and-resume test (``test_faults.py``) and a real vLLM run
(``test_augment_curate_real.py``) cover the rest.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest

from humpback_plugin.core.client import ClientConfig
from humpback_plugin.core.config import AugmentConfig, CurateConfig
from humpback_plugin.core.engine import LocalEngine, engine_for
from humpback_plugin.core.errors import StageInterrupted, UsageError
from humpback_plugin.stages.augment.stage import augment
from humpback_plugin.stages.curate.stage import curate
from tests.fast_stub import FastStub
from tests.stub_openai import StubOpenAI
from tests.test_faults import comparable, slow, write_segments


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
