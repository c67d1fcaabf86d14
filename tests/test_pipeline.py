"""`humpback run` end to end against a stub server: stages, manifest, resume, status."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from humpback_plugin import SYSTEM_AUGMENTED, SYSTEM_SEED
from humpback_plugin.axolotl.training import FINISHED_MARKERS
from humpback_plugin.cli import cli
from humpback_plugin.core.config import parse_config
from humpback_plugin.core.layout import stage_names
from humpback_plugin.run import demo
from humpback_plugin.run.pipeline import Pipeline
from tests.stub_openai import StubOpenAI, reply

ROOT = Path(__file__).resolve().parents[1]


def _digest(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


def stub_handler(req):
    """Deterministic 'temperature 0' answers: a function of the prompt alone."""
    text = req.prompt_text
    if "Score: <rating>" in text:
        if req.body.get("structured_outputs"):
            return reply("5")
        return reply(f"Reasoning.\nScore: {_digest(text) % 5 + 1}")
    topic = text.strip().splitlines()[-1][:40]
    return reply(f"Explain this part of the Python docs: {topic}?")


def make_config(tmp: Path, base_url: str, *, trained: bool = True) -> Path:
    inputs = tmp / "inputs"
    corpus = demo.write_corpus(inputs / "corpus", limit=12)
    assert corpus
    run_models = {"backward": "stub", "m0": "stub", "m1": "stub"}
    config = {
        "seed": {"inputs": [str(demo.seed_path())], "limit": None},
        "corpus": {"inputs": [str(inputs / "corpus")], "max_segments": 10},
        "augment": {"max_tokens": 32, "temperature": 0.0},
        "curate": {"mode": "paper", "threshold": 4},
        "training": {"base_model": "/models/base", "profile": "cpu", "execute": False},
        "serving": {"base_urls": [base_url], "models": run_models, "concurrency": 4},
    }
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    if trained:
        for role in ("backward", "m0", "m1", "m2"):
            out = tmp / "run" / role / "model"
            out.mkdir(parents=True)
            (out / FINISHED_MARKERS[0]).write_bytes(b"trained elsewhere")
    return path


def run_beside_a_plain_run(tmp: Path, base_url: str, name: str, **overrides: object) -> dict:
    """``humpback run`` of make_config's run as is (``tmp/run``) and with ``overrides`` in
    its config (``tmp/run-<name>``); the run directories by name ("plain", ``name``). One
    set of inputs (their paths are in the records), each run directory with the "trained"
    model markers make_config leaves in ``tmp/run``."""
    config_path = make_config(tmp, base_url)
    shutil.copytree(tmp / "run", tmp / f"run-{name}")
    runs = {"plain": tmp / "run", name: tmp / f"run-{name}"}
    for run_name, run_dir in runs.items():
        config = yaml.safe_load(config_path.read_text())
        if run_name == name:
            config.update(overrides)
        path = tmp / f"{run_name}.yaml"
        path.write_text(yaml.safe_dump(config))
        result = CliRunner().invoke(cli, ["run", "-c", str(path), str(run_dir)])
        assert result.exit_code == 0, result.output
    return runs


@pytest.fixture
def stub():
    with StubOpenAI(stub_handler, models=("stub",)) as server:
        yield server


def test_stage_order_follows_the_paper():
    assert stage_names(2) == [
        "seed", "segments", "backward_data", "train_backward", "augment", "m0_data",
        "train_m0", "curate_1", "m1_data", "train_m1", "curate_2", "m2_data", "train_m2",
    ]  # fmt: skip
    assert stage_names(2, ["generate", "compare", "lm_eval"])[-4:] == [
        "train_m2", "eval_generate", "eval_compare", "eval_lm_eval",
    ]  # fmt: skip


def test_whole_loop_writes_every_dataset_config_and_manifest(tmp_path, stub):
    config_path = make_config(tmp_path, stub.base_url)
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(cli, ["run", "-c", str(config_path), str(run_dir)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((run_dir / "manifest.json").read_text())
    stages = manifest["stages"]
    assert [s for s in stage_names(2) if stages[s]["status"] != "done"] == []
    for name in ("seed", "segments", "augment", "curate_1", "curate_2", "m2_data"):
        for out in stages[name]["outputs"]:
            assert len(out["sha256"]) == 64 and (run_dir / out["path"]).exists()
    assert stages["seed"]["outputs"][0]["records"] == 20
    candidates = [json.loads(x) for x in (run_dir / "augment/candidates.jsonl").open()]
    assert 0 < len(candidates) <= 10
    assert candidates[0]["provenance"]["server_url"] == stub.base_url
    assert stages["curate_1"]["model"] == "stub" and stages["curate_1"]["iteration"] == 1
    scored = [json.loads(x) for x in (run_dir / "curate_1/scored.jsonl").open()]
    assert len(scored) == len(candidates) and all(s["score"] in range(1, 6) for s in scored)
    curated = [json.loads(x) for x in (run_dir / "curate_1/curated.jsonl").open()]
    assert all(s["score"] >= 4 for s in curated)
    m1 = [json.loads(x) for x in (run_dir / "m1/data/m1.jsonl").open()]
    systems = [row["messages"][0]["content"] for row in m1]
    assert systems.count(SYSTEM_SEED) == 20 and systems.count(SYSTEM_AUGMENTED) == len(curated)
    for role in ("backward", "m0", "m1", "m2"):
        cfg = yaml.safe_load((run_dir / role / "axolotl.yaml").read_text())
        assert cfg["output_dir"].endswith(f"{role}/model")
    # A second run skips every stage and changes nothing.
    before = (run_dir / "manifest.json").read_text()
    result = CliRunner().invoke(cli, ["run", str(run_dir)])
    assert result.exit_code == 0 and result.output.count("(skipped)") == len(stage_names(2))
    after = json.loads((run_dir / "manifest.json").read_text())
    assert after["stages"] == json.loads(before)["stages"]


def test_until_from_and_status(tmp_path, stub):
    config_path = make_config(tmp_path, stub.base_url)
    run_dir = tmp_path / "run"
    runner = CliRunner()
    result = runner.invoke(cli, ["run", "-c", str(config_path), str(run_dir), "--until", "m0_data"])
    assert result.exit_code == 0, result.output
    status = json.loads(runner.invoke(cli, ["status", str(run_dir), "--json"]).output)
    by_stage = {row["stage"]: row["status"] for row in status}
    assert by_stage["m0_data"] == "done" and by_stage["curate_1"] == "pending"
    # A changed output makes the stage stale; --from re-runs from there.
    (run_dir / "m0/data/m0.jsonl").write_text("")
    status = json.loads(runner.invoke(cli, ["status", str(run_dir), "--json"]).output)
    assert {r["stage"]: r["status"] for r in status}["m0_data"].startswith("stale")
    result = runner.invoke(cli, ["run", str(run_dir), "--from", "m0_data", "--until", "m0_data"])
    assert result.exit_code == 0, result.output
    assert (run_dir / "m0/data/m0.jsonl").stat().st_size > 0
    bad = runner.invoke(cli, ["run", str(run_dir), "--until", "nope"])
    assert bad.exit_code != 0 and "unknown stage 'nope'" in bad.output


def test_training_step_prints_the_axolotl_command_and_pauses(tmp_path, stub):
    config_path = make_config(tmp_path, stub.base_url, trained=False)
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(cli, ["run", "-c", str(config_path), str(run_dir), "--no-wait"])
    assert result.exit_code == 3, result.output
    assert "axolotl train " in result.output and "backward/axolotl.yaml" in result.output
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["stages"]["train_backward"]["status"] == "waiting"
    assert manifest["stages"]["backward_data"]["status"] == "done"


def test_training_launcher_reaches_the_command_and_does_not_force_a_retrain(tmp_path, stub):
    config_path = make_config(tmp_path, stub.base_url, trained=False)
    run_dir = tmp_path / "run"
    CliRunner().invoke(cli, ["run", "-c", str(config_path), str(run_dir), "--no-wait"])
    config = yaml.safe_load(config_path.read_text())
    config["training"]["launcher"] = "python"
    config_path.write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(cli, ["run", "-c", str(config_path), str(run_dir), "--no-wait"])
    assert result.exit_code == 3, result.output
    assert "backward/axolotl.yaml --launcher python" in result.output
    # How training is launched does not change what it trains: earlier stages stay done.
    assert "backward_data: done (skipped)" in result.output
    assert demo.demo_config(tmp_path / "demo").training.launcher == "python"


def test_unknown_config_key_is_a_clear_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("training: {base_model: x}\ncurate: {mode: paper, treshold: 4}\n")
    result = CliRunner().invoke(cli, ["run", "-c", str(path), str(tmp_path / "run")])
    assert result.exit_code == 1 and "unknown key 'curate.treshold'" in result.output
    assert not (tmp_path / "run").exists()


def test_missing_role_model_names_the_setting(tmp_path, stub):
    config = yaml.safe_load(make_config(tmp_path, stub.base_url).read_text())
    del config["serving"]["models"]["backward"]
    pipeline = Pipeline(tmp_path / "run", parse_config(config))
    with pytest.raises(Exception, match="serving.models.backward is not set"):
        pipeline.run()


def test_sigkill_mid_run_then_rerun_gives_the_uninterrupted_result(tmp_path):
    def slow(req):
        resp = stub_handler(req)
        resp.delay = 0.15
        return resp

    with StubOpenAI(slow, models=("stub",)) as server:
        ref_dir = tmp_path / "ref"
        ref_dir.mkdir()
        config_path = make_config(ref_dir, server.base_url)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        cmd = [sys.executable, "-m", "humpback_plugin", "run", "-c", str(config_path)]
        subprocess.run([*cmd, str(ref_dir / "run")], check=True, env=env, capture_output=True)

        kill_dir = tmp_path / "killed"
        kill_dir.mkdir()
        config_path = make_config(kill_dir, server.base_url)
        run_dir = kill_dir / "run"
        proc = subprocess.Popen([*cmd, str(run_dir)], env=env, stderr=subprocess.DEVNULL)
        store = run_dir / "curate_1" / "scored.jsonl.parts" / "scored.jsonl"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if store.exists() and store.read_bytes().count(b"\n") >= 3:
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the run ended before the kill"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        subprocess.run([*cmd, str(run_dir)], check=True, env=env, capture_output=True)

    for rel in (
        "augment/candidates.jsonl",
        "curate_1/scored.jsonl",
        "curate_1/curated.jsonl",
        "curate_2/scored.jsonl",
        "m1/data/m1.jsonl",
        "m2/data/m2.jsonl",
    ):
        ref = [_strip_times(json.loads(x)) for x in (ref_dir / "run" / rel).open()]
        got = [_strip_times(json.loads(x)) for x in (run_dir / rel).open()]
        assert got == ref, rel
        ids = [r["id"] for r in got if "id" in r]
        assert len(ids) == len(set(ids)), f"doubled records in {rel}"


def _strip_times(record: dict) -> dict:
    """Drop what legitimately differs between two runs: timestamps, paths, attempts."""
    out = {}
    for key, value in record.items():
        if key in ("started_at", "finished_at", "attempts", "usage"):
            continue
        if isinstance(value, dict):
            value = _strip_times(value)
        out[key] = value
    return out


def test_file_info_hashes_folders_by_listing_and_counts_only_plain_jsonl(tmp_path):
    from humpback_plugin.core.manifest import file_info

    model = tmp_path / "model"
    (model / "sub").mkdir(parents=True)
    (model / "sub" / "weights.safetensors").write_bytes(b"w" * 10)
    before = file_info(model, tmp_path)
    assert before["path"] == "model" and before["hashed"] == "listing"
    (model / "sub" / "weights.safetensors").write_bytes(b"w" * 11)
    assert file_info(model, tmp_path)["sha256"] != before["sha256"]
    plain, packed = tmp_path / "a.jsonl", tmp_path / "a.jsonl.gz"
    plain.write_text('{"x": 1}\n{"x": 2}\n')
    packed.write_bytes(b"\x1f\x8b\n\n\n")
    assert file_info(plain, tmp_path)["records"] == 2
    assert "records" not in file_info(packed, tmp_path)
