"""Real Axolotl 0.19 on a CPU: preprocess every exported dataset, train a few steps.

Marked ``axolotl``. Axolotl lives in its own virtual environment
(``scripts/setup_axolotl_env.sh``); the tests drive its CLI and its Python in subprocesses,
so the core suite never imports it. The model is a random tiny Llama whose tokenizer is
trained here on the test data (``humpback_plugin.axolotl.tiny_model``): no model hub.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from humpback_plugin import SYSTEM_AUGMENTED, SYSTEM_SEED
from humpback_plugin.axolotl.configs import render_config, write_config
from humpback_plugin.stages.export.stage import export_datasets
from tests.conftest import shared_file

REPO = Path(__file__).resolve().parents[1]


def axolotl_bin() -> Path:
    """``$HUMPBACK_AXOLOTL_BIN``, else ``axolotl`` on PATH, else the repo's .venv-axolotl.

    Skips when none exists, unless ``$HUMPBACK_REQUIRE_REAL`` is set: then it fails.
    """
    candidates = [os.environ.get("HUMPBACK_AXOLOTL_BIN"), shutil.which("axolotl")]
    candidates.append(str(REPO / ".venv-axolotl" / "bin" / "axolotl"))
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    reason = (
        "real Axolotl not found: set HUMPBACK_AXOLOTL_BIN or put `axolotl` on PATH "
        "(scripts/setup_axolotl_env.sh builds .venv-axolotl)"
    )
    if os.environ.get("HUMPBACK_REQUIRE_REAL"):
        pytest.fail(reason)
    pytest.skip(reason)


def axolotl_python(bin_path: Path) -> Path:
    return bin_path.parent / "python"


def axolotl_env(bin_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        AXOLOTL_DO_NOT_TRACK="1",  # else `axolotl train` hangs at exit
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        WANDB_MODE="disabled",
        OMP_NUM_THREADS="2",  # accelerate sets 1: half speed on two cores
        TOKENIZERS_PARALLELISM="false",
        PATH=f"{bin_path.parent}{os.pathsep}{env.get('PATH', '')}",  # accelerate launcher
    )
    env.pop("PYTHONPATH", None)
    return env


def run(
    args: list[str | Path], bin_path: Path, timeout: int = 600, **env_extra: str
) -> subprocess.CompletedProcess[str]:
    env = axolotl_env(bin_path)
    env.update(env_extra)
    return subprocess.run(
        [str(a) for a in args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
    )


def check(proc: subprocess.CompletedProcess[str], what: str) -> str:
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-4000:]
        pytest.fail(f"{what} exited {proc.returncode}:\n{tail}")
    return proc.stdout + proc.stderr


DOLLY = "data/seed/dolly15k_first6400.jsonl"
TIMINGS: dict[str, float] = {}

# Prints, for each tokenized row, the decoded text and the decoded trained tokens.
INSPECT = """
import json, sys
from datasets import load_from_disk
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained(sys.argv[2])
for shard in sorted(p for p in __import__("pathlib").Path(sys.argv[1]).iterdir() if p.is_dir()):
    for row in load_from_disk(str(shard)):
        ids, labels = row["input_ids"], row["labels"]
        trained = [i for i, l in zip(ids, labels) if l != -100]
        first = next(k for k, l in enumerate(labels) if l != -100)
        last = max(k for k, l in enumerate(labels) if l != -100)
        print(json.dumps({
            "text": tok.decode(ids),
            "trained": tok.decode(trained),
            "contiguous": last - first + 1 == len(trained),
        }))
"""


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Datasets from real seed pairs, a tiny model trained on their text, CPU configs."""
    dolly = shared_file(DOLLY)
    bin_path = axolotl_bin()
    root = tmp_path_factory.mktemp("axolotl")
    rows = []
    with open(dolly, encoding="utf-8") as fh:
        for line in fh:
            r = json.loads(line)
            if len(r["instruction"]) + len(r["response"]) < 400:  # fit 256 tokens
                rows.append(r)
            if len(rows) == 60:
                break
    seed = root / "seed.jsonl"
    with open(seed, "w", encoding="utf-8") as fh:
        for i, r in enumerate(rows[:40]):
            fh.write(
                json.dumps(
                    {"id": f"s{i}", "instruction": r["instruction"], "output": r["response"]}
                )
                + "\n"
            )
    # Curated pairs as `humpback curate` writes them (ScoredCandidate), scores 3..5.
    curated = root / "curated_1.jsonl"
    with open(curated, "w", encoding="utf-8") as fh:
        for i, r in enumerate(rows[40:]):
            fh.write(
                json.dumps(
                    {
                        "id": f"c{i}",
                        "segment_id": f"g{i}",
                        "instruction": r["instruction"],
                        "output": r["response"],
                        "score": 3 + i % 3,
                        "iteration": 1,
                    }
                )
                + "\n"
            )
    ds = root / "datasets"
    export_datasets(seed, ds)
    export_datasets(seed, ds, curated_path=curated, iteration=1, min_score=4)

    started = time.monotonic()
    model = root / "tiny-llama"
    check(
        run(
            [
                axolotl_python(bin_path),
                "-m",
                "humpback_plugin.axolotl.tiny_model",
                model,
                "--text",
                ds / "m1.jsonl",
                ds / "backward.jsonl",
            ],
            bin_path,
        ),
        "tiny_model",
    )
    TIMINGS["tiny model"] = time.monotonic() - started

    configs = {}
    for role, iteration, name in (
        ("backward", 0, "backward"),
        ("forward", 0, "m0"),
        ("forward", 1, "m1"),
    ):
        r = render_config(
            role,
            iteration,
            dataset=ds / f"{name}.jsonl",
            base_model=str(model),
            output_dir=root / "out" / name,
            cpu=True,
        )
        configs[name] = write_config(r, root / "configs" / f"{name}.yaml")
    expected = {}
    for name in configs:
        expected[name] = [
            json.loads(line)["messages"]
            for line in (ds / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
        ]
    return {
        "bin": bin_path,
        "root": root,
        "model": model,
        "configs": configs,
        "expected": expected,
        "preprocessed": set(),
    }


def preprocess(ws: dict, name: str) -> list[dict]:
    bin_path = ws["bin"]
    started = time.monotonic()
    check(run([bin_path, "preprocess", ws["configs"][name]], bin_path), f"preprocess {name}")
    TIMINGS[f"preprocess {name}"] = time.monotonic() - started
    ws["preprocessed"].add(name)
    prepared = ws["root"] / "out" / f"{name}_prepared"
    proc = run([axolotl_python(bin_path), "-c", INSPECT, prepared, ws["model"]], bin_path)
    check(proc, "inspect")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


@pytest.mark.axolotl
@pytest.mark.slow
@pytest.mark.parametrize("name", ["backward", "m0", "m1"])
def test_preprocess_trains_on_the_assistant_turn_only(workspace: dict, name: str) -> None:
    rows = preprocess(workspace, name)
    expected = workspace["expected"][name]
    assert len(rows) >= len(expected) * 0.9  # Axolotl drops rows over sequence_len
    answers = {m[-1]["content"].strip() + "</s>" for m in expected}
    for row in rows:
        assert row["contiguous"]
        # the trained tokens are exactly the assistant turn and its end-of-turn token
        assert row["trained"].strip() in answers
        assert row["text"].endswith(row["trained"])
    texts = [row["text"] for row in rows]
    if name == "backward":
        assert all("Write the most likely question" in t for t in texts)
        # No system tag: the backward prompt ends with the Back-and-Forth paper's line
        # "Answer in the style of an AI Assistant." as its own text, not as a system turn.
        assert not any("<<SYS>>" in t for t in texts)
        assert all(t.count(SYSTEM_SEED) == 1 for t in texts)
    else:
        assert all("<<SYS>>" in t for t in texts)
        seed_rows = sum(SYSTEM_SEED in t for t in texts)
        web_rows = sum(SYSTEM_AUGMENTED in t for t in texts)
        assert seed_rows + web_rows == len(texts)
        assert seed_rows >= 36
        assert (web_rows > 0) == (name == "m1")
        # the system text is never trained on
        assert not any(SYSTEM_SEED in row["trained"] for row in rows)


LR_PATTERN = re.compile(r"'learning_rate': '?([0-9.e+-]+)'?")


@pytest.mark.axolotl
@pytest.mark.slow
@pytest.mark.parametrize("name", ["backward", "m0", "m1"])
def test_train_follows_the_linear_schedule(workspace: dict, name: str) -> None:
    if name not in workspace["preprocessed"]:
        preprocess(workspace, name)
    bin_path = workspace["bin"]
    started = time.monotonic()
    out = check(
        run([bin_path, "train", workspace["configs"][name]], bin_path, timeout=900), f"train {name}"
    )
    TIMINGS[f"train {name}"] = time.monotonic() - started
    rates = [float(x) for x in LR_PATTERN.findall(out)]
    # 4 steps, no warmup: 1e-5 at the first step, 9e-6 at the last, linear between
    assert rates == pytest.approx([1e-5, 1e-5 - 1e-6 / 3, 1e-5 - 2e-6 / 3, 9e-6], rel=1e-3)
    model_dir = workspace["root"] / "out" / name
    assert (model_dir / "model.safetensors").exists()
    assert (model_dir / "config.json").exists()
    saved = (model_dir / "tokenizer_config.json").read_text() + "".join(
        p.read_text() for p in model_dir.glob("*.jinja")
    )
    assert "[INST]" in saved  # the chat template a vLLM server will apply


@pytest.mark.axolotl
def test_axolotl_cli_reaches_humpback_through_its_entry_point(tmp_path: Path) -> None:
    """``axolotl humpback ...`` via the ``axolotl.cli_commands`` entry point group."""
    bin_path = axolotl_bin()
    dist = tmp_path / "humpback_entry_point_test-0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: humpback-entry-point-test\nVersion: 0\n"
    )
    (dist / "entry_points.txt").write_text(
        "[axolotl.cli_commands]\nhumpback = humpback_plugin.axolotl.entry:humpback\n"
    )
    proc = run(
        [bin_path, "humpback", "configs", "steps", "3200"], bin_path, PYTHONPATH=str(tmp_path)
    )
    out = check(proc, "axolotl humpback")
    assert "500" in out and "paper table row 3,200" in out
    out = check(run([bin_path, "--help"], bin_path, PYTHONPATH=str(tmp_path)), "axolotl --help")
    assert "humpback" in out


def teardown_module() -> None:
    if TIMINGS:
        print("\nreal Axolotl timings: " + ", ".join(f"{k} {v:.0f}s" for k, v in TIMINGS.items()))
