"""The README's main command, for real: `humpback run --demo`, killed midway and re-run.

Real Axolotl trains the backward model, M0, M1 and M2 (full fine-tuning on CPU), the
embedded vLLM serves each with its training chat template, augmentation and both
curations run against it, then M0, M1 and M2 answer the shipped questions, the embedded
base model judges them, and real lm-eval measures them on the shipped multiple-choice
task. Several minutes on 2 cores.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from humpback_plugin.core.config import load_config
from humpback_plugin.core.layout import stage_names

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.vllm, pytest.mark.axolotl, pytest.mark.slow]


def _axolotl_on_path() -> dict[str, str]:
    env = dict(os.environ)
    extra = [str(Path(sys.executable).parent), str(ROOT / ".venv-axolotl" / "bin")]
    # lm-eval from .venv-eval (built by scripts/setup.sh), after everything else.
    env["PATH"] = os.pathsep.join([*extra, env.get("PATH", ""), str(ROOT / ".venv-eval" / "bin")])
    env.setdefault("OMP_NUM_THREADS", "2")
    if not any(Path(d, "axolotl").exists() for d in env["PATH"].split(os.pathsep)):
        if os.environ.get("HUMPBACK_REQUIRE_REAL"):
            pytest.fail("axolotl not found on PATH or in .venv-axolotl")
        pytest.skip("axolotl not installed (make setup builds .venv-axolotl)")
    return env


def _stage_status(run_dir: Path, stage: str) -> str | None:
    try:
        manifest = json.loads((run_dir / "manifest.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return manifest["stages"].get(stage, {}).get("status")


def test_demo_killed_midway_then_rerun_completes(tmp_path):
    from tests.vllm_fixture import require_vllm_install

    require_vllm_install()
    env = _axolotl_on_path()
    run_dir = tmp_path / "demo"
    cmd = [sys.executable, "-m", "humpback_plugin", "run", "--demo", str(run_dir)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline and proc.poll() is None:
        if _stage_status(run_dir, "augment") == "running":
            break
        time.sleep(0.5)
    assert proc.poll() is None, "the demo ended before augmentation"
    time.sleep(5)  # let some requests finish into the store
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "train_backward: done (skipped)" in done.stderr  # not trained twice
    manifest = json.loads((run_dir / "manifest.json").read_text())
    wanted = stage_names(2, ["generate", "compare", "lm_eval"])
    assert {s: manifest["stages"][s]["status"] for s in wanted} == dict.fromkeys(wanted, "done")
    for stage in wanted:
        for out in manifest["stages"][stage]["outputs"]:
            assert (run_dir / out["path"]).exists(), out
    for role in ("backward", "m0", "m1", "m2"):
        assert (run_dir / role / "model" / "model.safetensors").exists()
        served = (run_dir / role / "serve.sh").read_text()
        assert f"--chat-template {run_dir.resolve() / role / 'chat_template.jinja'}" in served
    assert manifest["stages"]["augment"]["stats"]["generations"] > 0
    scored = (run_dir / "curate_1" / "scored.jsonl").read_text().splitlines()
    assert scored and all(json.loads(x)["score"] in range(1, 6) for x in scored)
    assert (run_dir / "m1" / "axolotl.yaml").exists() and (run_dir / "m1/data/m1.jsonl").exists()
    assert (run_dir / "report" / "report.html").stat().st_size > 10_000
    # M0, M1, M2 (and M2 with S_a) answered; the embedded base model judged every pair in
    # both orders; lm-eval measured each model on the shipped multiple-choice questions.
    for name in ("m0", "m1", "m2", "m2.S_a"):
        answers = json.loads((run_dir / "eval/outputs" / name / "model_outputs.json").read_text())
        assert answers and all(a["output"].strip() for a in answers), name
    compared = manifest["stages"]["eval_compare"]["stats"]
    wanted_comparisons = {"m0_vs_reference", "m2_vs_reference", "m2_vs_m0", "m2.S_a_vs_reference"}
    assert wanted_comparisons <= set(compared)
    for name, summary in compared.items():
        assert summary["judged"] + summary["failed"] > 0 and summary["win_rate_ci"], name
    accuracy = manifest["stages"]["eval_lm_eval"]["stats"]
    assert {m: set(s["tasks"]) for m, s in accuracy.items()} == dict.fromkeys(
        ("m0", "m1", "m2"), {"python_basics"}
    )
    summary = (run_dir / "report" / "summary.md").read_text()
    assert "## Did it work?" in summary and "numbers show the mechanics" in summary
    # M0's judge was measured on canaries built from the demo seed
    assert manifest["stages"]["curate_1"]["stats"]["judge_quality"]["probes"] == 14
    assert "Judge quality" in (run_dir / "report" / "report.html").read_text()
    assert load_config(run_dir / "config.yaml").training.adapter == "full"
    # The evaluation found M0 and M1 still up from curation (three servers kept).
    assert done.stderr.count("kept up for it (no start)") >= 2, done.stderr[-3000:]
    # The trainings after the first server start ran with the idle servers paused.
    assert "idle vLLM server(s) paused meanwhile" in done.stderr
    # No server left behind by the killed run or the finished one (each serves a model
    # from the run folder).
    left = subprocess.run(["pgrep", "-af", str(run_dir.resolve())], capture_output=True, text=True)
    assert left.stdout.strip() == "", left.stdout
