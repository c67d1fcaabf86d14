"""``--engine ray``: a real local Ray instance (``ray.init(num_cpus=2)``, the session fixture
``ray_address`` in conftest.py), the project's client in Ray actors, this process the only
writer of the store. The SIGKILL-and-resume case for Ray is in test_faults.py, beside the
local engine's.

Each case compares the Ray engine's final datasets with the local engine's for the same
inputs: the stub's answers are a function of the prompt (what greedy decoding is on a real
server), so the records must be equal but for the wall-clock times of their requests.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from humpback_plugin.cli import cli
from humpback_plugin.commands.augment import augment_command
from humpback_plugin.commands.segment import segment_command
from humpback_plugin.core.chunks import WorkerError, chunks
from humpback_plugin.core.client import ClientConfig, RequestRejected
from humpback_plugin.core.config import CurateConfig, RunConfig, parse_config
from humpback_plugin.core.engine import make_engine
from humpback_plugin.core.errors import (
    InputError,
    ServerUnavailable,
    StageInterrupted,
    UsageError,
)
from humpback_plugin.core.ray_engine import RayEngine
from humpback_plugin.core.remote import RemoteError, worker_configs
from humpback_plugin.stages.augment.stage import augment
from humpback_plugin.stages.curate.stage import curate
from humpback_plugin.stages.eval.generate import generate_outputs
from tests.stub_openai import StubOpenAI, StubRequest, StubResponse, error
from tests.test_faults import (
    RUN_FIELDS,
    comparable,
    deterministic_answer,
    read_jsonl,
    write_segments,
)
from tests.test_pipeline import run_beside_a_plain_run, stub_handler
from tests.test_workers import fail_oddly, raise_input_error


@pytest.fixture
def engine(ray_address):
    return make_engine("ray", address=ray_address, actors=2)


def no_times(path: Path) -> list[dict]:
    """Records without the times of their requests and without which of the two servers
    answered: routing, like timing, is a fact of the run, not of the data."""
    rows = comparable(path, drop=(*RUN_FIELDS[:2], "server_url"))
    return rows


def square(x: int) -> int:
    return x * x


def test_map_ordered_keeps_input_order_across_workers(engine):
    # Uneven work per chunk: later chunks finish first, results still come in input order.
    slow_square = functools.partial(_sleepy_square, 0.002)
    assert list(engine.map_ordered(slow_square, range(300), chunk_size=7)) == [
        x * x for x in range(300)
    ]
    assert list(engine.map_ordered(square, [], chunk_size=4)) == []
    with make_engine("local", workers=2) as local:
        assert list(local.map_ordered(square, range(5), chunk_size=2)) == [0, 1, 4, 9, 16]


def _sleepy_square(delay: float, x: int) -> int:
    time.sleep(delay * (x % 5 == 0) * (300 - x) / 100)
    return x * x


def _fail_at(bad: int, x: int) -> int:
    if x == bad:
        raise ValueError(f"bad item {x}")
    return x


def _pid(_x: int) -> int:
    return os.getpid()


def test_map_ordered_on_ray_data_raises_in_order_stops_early_and_runs_elsewhere(engine):
    seen = []
    fail_at_150 = functools.partial(_fail_at, 150)
    with pytest.raises(ValueError, match="bad item 150"):
        for result in engine.map_ordered(fail_at_150, range(900), chunk_size=5):
            seen.append(result)
    # Everything before the failing chunk (150-154) came back first, in order.
    assert seen == list(range(150))
    # An endless input: windows are read lazily, and stopping early ends the work.
    results = engine.map_ordered(square, itertools.count(), chunk_size=4)
    assert list(itertools.islice(results, 100)) == [x * x for x in range(100)]
    results.close()
    pids = set(engine.map_ordered(_pid, range(200), chunk_size=4))
    assert pids and os.getpid() not in pids
    # Errors come back as themselves, or as a WorkerError when they cannot be rebuilt.
    with pytest.raises(InputError, match=r"^a\.warc:byte 7: broken$"):
        list(engine.map_ordered(raise_input_error, range(2)))
    with pytest.raises(WorkerError, match="OddError: 3: cannot be rebuilt"):
        list(engine.map_ordered(fail_oddly, range(8)))


def test_chunks_and_worker_configs_share_the_concurrency():
    assert list(chunks(range(5), 2)) == [[0, 1], [2, 3], [4]]
    config = ClientConfig(base_urls=["http://a/v1", "http://b/v1"], model="m", concurrency=32)
    configs = worker_configs(config, 4)
    assert [c.base_urls[0] for c in configs] == ["http://a/v1", "http://b/v1"] * 2
    assert {c.concurrency for c in configs} == {8}
    assert all(sorted(c.base_urls) == ["http://a/v1", "http://b/v1"] for c in configs)


def test_augment_and_curate_on_ray_equal_the_local_engine(tmp_path, engine):
    segments = write_segments(tmp_path / "segments.jsonl", 30)
    outputs = {}
    with StubOpenAI(deterministic_answer) as one, StubOpenAI(deterministic_answer) as two:
        urls = [one.base_url, two.base_url]
        for name, runner in (("local", None), ("ray", engine)):
            cfg = ClientConfig(base_urls=urls, model="stub", concurrency=4)
            out = tmp_path / name
            aug = augment(segments, out / "c.jsonl", client_config=cfg, show_progress=False,
                          engine=runner)  # fmt: skip
            cur = curate(out / "c.jsonl", out / "s.jsonl", client_config=cfg,
                         selected_path=out / "a4.jsonl", show_progress=False,
                         engine=runner)  # fmt: skip
            outputs[name] = (aug, cur)
        sent_to = {len(one.generation_requests), len(two.generation_requests)}
    # The canaries (labelled probes mixed into every curation) too.
    for file in ("c.jsonl", "s.jsonl", "a4.jsonl", "s.canaries.jsonl"):
        assert no_times(tmp_path / "ray" / file) == no_times(tmp_path / "local" / file), file
    (aug_local, cur_local), (aug_ray, cur_ray) = outputs["local"], outputs["ray"]
    assert aug_ray["accepted"] == aug_local["accepted"] == 30
    assert cur_ray["selected"] == cur_local["selected"] > 0
    judged = cur_ray["canaries"]["judged"]
    assert judged > 0 and judged == cur_local["canaries"]["judged"]
    assert cur_ray["judge_quality"] == cur_local["judge_quality"]
    # The actors' client statistics reach the summary; both servers got work.
    assert aug_ray["requests"] == 30 and cur_ray["requests"] == 30 + judged
    assert min(sent_to) > 0


def test_rejections_are_failures_and_a_dead_server_stops_resumably(tmp_path, engine):
    segments = write_segments(tmp_path / "segments.jsonl", 12)

    def refuse_some(req: StubRequest) -> StubResponse:
        if "Segment 3." in req.prompt_text or "Segment 7." in req.prompt_text:
            return error(400, "This model's maximum context length is 2048 tokens")
        return deterministic_answer(req)

    out = tmp_path / "c.jsonl"
    with StubOpenAI(refuse_some) as stub:
        cfg = ClientConfig(base_urls=[stub.base_url], model="stub", concurrency=4)
        summary = augment(segments, out, client_config=cfg, show_progress=False, engine=engine)
    assert summary["failed_by_reason"] == {"http_400": 2} and summary["accepted"] == 10
    failures = read_jsonl(Path(summary["failures_path"]))
    assert {f["input_id"] for f in failures} == {"seg0003", "seg0007"}
    assert "maximum context length" in failures[0]["message"]

    # The server goes away for good: the stage stops within the deadline, resumably.
    out2 = tmp_path / "gone.jsonl"
    with StubOpenAI(deterministic_answer) as stub:
        url = stub.base_url
    cfg = ClientConfig(base_urls=[url], model="stub", concurrency=2, retry_deadline_s=1.0)
    with pytest.raises(StageInterrupted, match="re-run the same command to resume"):
        augment(segments, out2, client_config=cfg, preflight=False, show_progress=False,
                engine=engine)  # fmt: skip
    assert not out2.exists()


def test_engine_ray_in_the_run_config_and_without_ray_installed(monkeypatch):
    config = parse_config(
        {"training": {"base_model": "m"}, "engine": "ray", "ray_address": "auto", "ray_actors": 4}
    )
    assert (config.engine, config.ray_address, config.ray_actors) == ("ray", "auto", 4)
    assert RunConfig.model_fields["engine"].default == "local"
    with pytest.raises(UsageError, match="unknown engine 'dask'; available: local, ray"):
        make_engine("dask")
    # No Ray: the error says how to install it, before any request.
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(UsageError, match=r"pip install 'humpback-plugin\[ray\]'"):
        make_engine("ray")
    result = CliRunner().invoke(
        augment_command,
        ["/dev/null", "-o", "/tmp/x.jsonl", "--base-url", "http://127.0.0.1:9/v1", "--model",
         "m", "--engine", "ray"],
    )  # fmt: skip
    assert result.exit_code == 2 and "humpback-plugin[ray]" in result.output
    result = CliRunner().invoke(
        augment_command,
        ["/dev/null", "-o", "/tmp/x.jsonl", "--base-url", "http://127.0.0.1:9/v1", "--model",
         "m", "--ray-actors", "2"],
    )  # fmt: skip
    assert result.exit_code == 2 and "need --engine ray" in result.output


def test_curate_settings_travel_to_the_actors(tmp_path, engine):
    """A non-default scorer and its settings reach the workers (the work is pickled)."""
    segments = write_segments(tmp_path / "segments.jsonl", 6)

    def one_token(req: StubRequest) -> StubResponse:
        if req.body.get("structured_outputs"):
            assert req.body["max_tokens"] == 2 and req.body["messages"][-1]["content"]
            return StubResponse(texts=["4"])
        return deterministic_answer(req)

    with StubOpenAI(one_token) as stub:
        cfg = ClientConfig(base_urls=[stub.base_url], model="stub", concurrency=2)
        augment(segments, tmp_path / "c.jsonl", client_config=cfg, show_progress=False)
        summary = curate(tmp_path / "c.jsonl", tmp_path / "s.jsonl", client_config=cfg,
                         settings=CurateConfig(mode="constrained"), show_progress=False,
                         engine=engine)  # fmt: skip
    assert summary["score_histogram"] == {"4": 6}
    assert {r["scoring_mode"] for r in read_jsonl(tmp_path / "s.jsonl")} == {"constrained"}


def test_closing_an_engine_that_joined_a_cluster_leaves_it_running(ray_address):
    """Closing an engine that joined a running cluster leaves the cluster running."""
    import ray

    engine = RayEngine(address=ray_address)
    assert engine.cpus() == 2
    engine.close()
    assert ray.is_initialized()


async def _echo_or_fail(client, item: str, key: str) -> list[dict]:
    """A stage's work for the test below: fails in three different ways on three items."""
    if item == "bug":
        raise ValueError("a bug in a plugin")
    if item == "refused":
        raise RequestRejected(400, "prompt too long", "http://x/v1/completions")
    if item == "gone":
        raise ServerUnavailable("no answer after 3 attempts")
    return [{"item": item, "key_seen": key}]


def test_model_calls_bring_back_records_and_each_kind_of_error(engine):
    config = ClientConfig(base_urls=["http://127.0.0.1:9/v1"], model="m", concurrency=4)

    async def go():
        async with engine.model_calls("t", config, _echo_or_fail, window=8) as calls:
            items = ["a", "bug", "b", "refused", "gone", "c"]
            results = await asyncio.gather(
                *(calls.submit(item, f"k-{item}") for item in items), return_exceptions=True
            )
        return dict(zip(items, results, strict=True)), calls.workers

    results, workers = asyncio.run(go())
    assert workers == 2
    assert results["a"] == [{"item": "a", "key_seen": "k-a"}]
    assert results["c"] == [{"item": "c", "key_seen": "k-c"}]
    assert isinstance(results["bug"], RemoteError) and "a bug in a plugin" in str(results["bug"])
    assert "Traceback" in str(results["bug"])
    refused = results["refused"]
    assert isinstance(refused, RequestRejected) and refused.status_code == 400
    assert refused.message == "prompt too long"
    assert isinstance(results["gone"], ServerUnavailable)


def test_humpback_run_with_engine_ray_in_the_config_equals_a_local_run(tmp_path, ray_address):
    """``engine: ray`` in the run config: augment and both curation stages run from Ray
    actors, and every dataset of the run equals the local engine's."""
    with StubOpenAI(stub_handler, models=("stub",)) as stub:
        runs = run_beside_a_plain_run(tmp_path, stub.base_url, "ray", engine="ray",
                                      ray_address=ray_address, ray_actors=2)  # fmt: skip
    manifest = json.loads((runs["ray"] / "manifest.json").read_text())
    assert manifest["config"]["engine"] == "ray"
    # The segments stage ran on Ray Data too (``engine: ray`` is the run's engine).
    segments = manifest["stages"]["segments"]["stats"]
    assert segments["workers"] == 2 and segments["kept"] > 0
    for dataset in ("segments/segments.jsonl", "segments/rejected.jsonl",
                    "augment/candidates.jsonl", "curate_1/scored.jsonl", "curate_2/scored.jsonl",
                    "m2/data/m2.jsonl"):  # fmt: skip
        local, ray_rows = (no_times(runs[e] / dataset) for e in ("plain", "ray"))
        assert ray_rows == local and local, dataset


def test_segment_on_ray_equals_one_local_worker(shared_data, tmp_path, ray_address):
    """``humpback segment --engine ray``: the per-document work on Ray Data, the dedup
    filters in this process; records, order, rejections and counts as one local worker's."""
    web = shared_data / "web"
    pages = tmp_path / "pages"
    pages.mkdir()
    for page in sorted((web / "html").glob("*.html.gz"))[:12]:
        # Every page twice: duplicates met in different tasks still dedup in input order.
        (pages / page.name).write_bytes(page.read_bytes())
        (pages / f"copy-{page.name}").write_bytes(page.read_bytes())
    inputs = [str(pages), str(web / "c4_demo.jsonl")]
    results = {}
    for name, options in (("local", ["-w", "1"]),
                          ("ray", ["--engine", "ray", "--ray-address", ray_address])):  # fmt: skip
        out, rejected, summary = (tmp_path / f"{name}{ext}" for ext in
                                  (".jsonl", ".rejected.jsonl", ".summary.json"))  # fmt: skip
        result = CliRunner().invoke(
            segment_command,
            [*inputs, "-o", str(out), "--keep-rejected", str(rejected), "--summary", str(summary),
             "-q", *options],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        counts = json.loads(summary.read_text())
        workers = counts.pop("workers")
        for run_fact in ("seconds", "output"):
            counts.pop(run_fact)
        results[name] = (out.read_text(), rejected.read_text(), counts, workers)
    local, ray_run = results["local"], results["ray"]
    assert ray_run[:3] == local[:3]
    assert (local[3], ray_run[3]) == (1, 2)  # the Ray instance's CPUs
    assert local[2]["kept"] > 50 and local[2]["rejected"]["exact_dedup:duplicate"] >= 12
    help_text = CliRunner().invoke(segment_command, ["--help"]).output
    assert "--ray-address" in help_text and "ray" in help_text


def test_eval_generate_on_ray_equals_the_local_engine(tmp_path, engine):
    """The evaluation's answers from Ray actors: the same file, every instruction asked once."""
    instructions = tmp_path / "set.json"
    instructions.write_text(
        json.dumps([{"instruction": f"Question {i}: what is {i} squared?"} for i in range(12)])
    )
    outputs = {}
    with StubOpenAI(deterministic_answer) as stub:
        cfg = ClientConfig(base_urls=[stub.base_url], model="stub", concurrency=4)
        for name, runner in (("local", None), ("ray", engine)):
            out = tmp_path / name / "model_outputs.json"
            summary = generate_outputs(instructions, out, client_config=cfg, show_progress=False,
                                       engine=runner)  # fmt: skip
            outputs[name] = (json.loads(out.read_text()), summary)
        asked = [r.prompt_text for r in stub.generation_requests]
    (local_rows, local_summary), (ray_rows, ray_summary) = outputs["local"], outputs["ray"]
    assert ray_rows == local_rows and len(local_rows) == 12
    assert ray_summary["answered"] == local_summary["answered"] == 12
    assert ray_summary["requests"] == local_summary["requests"] == 12
    assert len(asked) == 24 and len(set(asked)) == 12


def test_run_eval_generate_with_engine_ray_equals_a_local_run(tmp_path, ray_address):
    """``engine: ray`` for the evaluation's answers in ``humpback run``: the last model's
    system conditions are answered together, each from its own Ray actors (more actors than
    the instance has CPUs: they wait their turn), and every answers file equals a local
    run's."""
    from tests.test_eval_pipeline import MODELS, eval_config, handler

    with StubOpenAI(handler, models=MODELS) as stub:
        config_path = eval_config(tmp_path, stub.base_url)
        shutil.copytree(tmp_path / "run", tmp_path / "run-ray")
        runs = {"local": tmp_path / "run", "ray": tmp_path / "run-ray"}
        for engine_name, run_dir in runs.items():
            args = ["run", "-c", config_path, str(run_dir), "--until", "eval_generate"]
            if engine_name == "ray":
                args += ["--engine", "ray", "--ray-address", ray_address]
            result = CliRunner().invoke(cli, args)
            assert result.exit_code == 0, result.output
    names = ["m0", "m1", "m2", "m2.S_a", "m2.S_a+S_w"]
    for name in names:
        path = f"eval/outputs/{name}/model_outputs.json"
        local, ray_rows = (json.loads((runs[e] / path).read_text()) for e in ("local", "ray"))
        assert ray_rows == local and len(local) == 6, name
    manifest = json.loads((runs["ray"] / "manifest.json").read_text())
    assert manifest["config"]["engine"] == "ray"
    assert sorted(manifest["stages"]["eval_generate"]["stats"]) == sorted(names)
