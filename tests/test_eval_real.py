"""`humpback eval` against a real vLLM (the session fixture ``vllm_server``), real
lm-evaluation-harness and real alpaca_eval, on a few items.

Small on purpose: SmolLM2-135M on CPU writes and judges poorly; these tests show that the
real server accepts the requests as sent (the paper's decoding, the constrained A/B token
with logprobs, lm-eval's echo + logprobs over token ids) and that every pair comes back
with a verdict or a counted failure. The arithmetic is pinned by the stub tests.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from humpback_plugin.core.client import ClientConfig
from humpback_plugin.core.config import EvalCompareConfig, EvalGenerateConfig, LmEvalConfig
from humpback_plugin.core.errors import ToolMissing
from humpback_plugin.stages.eval import alpaca_eval, lm_eval
from humpback_plugin.stages.eval.compare import compare_outputs
from humpback_plugin.stages.eval.generate import generate_outputs
from humpback_plugin.vllm.install import Paths as ServerPaths

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]
EVAL_BIN = ROOT / ".venv-eval" / "bin"  # built by scripts/setup.sh


def _tool(monkeypatch: pytest.MonkeyPatch, env: str, name: str) -> None:
    """Point the tool's variable at .venv-eval (Axolotl's venv has an lm_eval without the
    API extra); else the one on PATH; else skip or fail."""
    if os.environ.get(env):
        return
    if (EVAL_BIN / name).exists():
        monkeypatch.setenv(env, str(EVAL_BIN / name))
        return
    if any(Path(d, name).exists() for d in os.environ["PATH"].split(":")):
        return
    if os.environ.get("HUMPBACK_REQUIRE_REAL"):
        pytest.fail(f"{name} not found (scripts/setup.sh builds .venv-eval)", pytrace=False)
    pytest.skip(f"{name} not installed")


@pytest.fixture
def judge(vllm_server) -> ClientConfig:
    return ClientConfig(base_urls=[vllm_server.base_url], model=vllm_server.model, concurrency=8)


@pytest.fixture
def answers(judge, tmp_path, shared_data) -> Path:
    """Three real answers to AlpacaEval instructions, with the paper's decoding."""
    out = tmp_path / "smollm" / "model_outputs.json"
    summary = generate_outputs(
        shared_data / "eval/alpaca_eval_805_davinci003_reference.json",
        out,
        client_config=judge,
        settings=EvalGenerateConfig(max_tokens=48, system="S_a"),
        limit=3,
        show_progress=False,
    )
    assert summary["answered"] == 3 and summary["failed"] == 0
    assert summary["sampling"] == {"temperature": 0.7, "top_p": 0.9, "max_tokens": 48}
    return out


def test_generate_then_compare_with_the_real_judge(judge, answers, tmp_path, shared_data):
    rows = json.loads(answers.read_text())
    assert [r["dataset"] for r in rows] == ["helpful_base"] * 3
    assert all(r["output"].strip() and r["generator"] == f"{judge.model}+S_a" for r in rows)
    reference = shared_data / "eval/alpaca_eval_805_davinci003_reference.json"
    summary = compare_outputs(
        answers, reference, tmp_path / "cmp", client_config=judge, limit=3, show_progress=False
    )
    verdicts = [json.loads(x) for x in (tmp_path / "cmp" / "verdicts.jsonl").open()]
    assert (
        len(verdicts) == 3 and summary["pairs"] == 3 and summary["baseline"] == "text_davinci_003"
    )
    # The real server returns the constrained token's logprobs: both orders read as
    # probabilities, which add up to one.
    for verdict in verdicts:
        assert verdict["status"] == "ok", verdict
        for order in verdict["orders"]:
            assert order["judge_texts"][0] in ("A", "B")
            assert sum(order["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
        assert 0.0 <= verdict["preference"] <= 1.0
    assert summary["judged"] == 3 and 0.0 <= summary["win_rate"] <= 100.0
    assert summary["judge_prefix_cache"] is not None  # read from the real /metrics


def test_parsed_mode_on_the_real_judge_loses_no_pair(judge, answers, tmp_path, shared_data):
    reference = shared_data / "eval/alpaca_eval_805_davinci003_reference.json"
    summary = compare_outputs(
        answers,
        reference,
        tmp_path / "cmp",
        client_config=judge,
        settings=EvalCompareConfig(mode="parsed", max_tokens=8),
        limit=3,
        show_progress=False,
    )
    # A 135M judge often writes no letter; each such order is re-asked under the A|B
    # constraint (recovered). Every pair ends with a verdict or a counted failure.
    assert summary["pairs"] == 3
    assert sum(summary["status"].values()) == 3
    assert set(summary["status"]) <= {"ok", "recovered", "one_order", "failed"}
    assert summary["judged"] + summary["failed"] == 3


def test_lm_eval_on_local_task_files(judge, tmp_path, shared_data, monkeypatch):
    _tool(monkeypatch, lm_eval.BIN_ENV, "lm_eval")
    folder = shared_data / "eval/commonsense"
    settings = LmEvalConfig(
        tasks={
            "arc_easy": str(folder / "arc_easy.jsonl"),
            "winogrande": str(folder / "winogrande.jsonl"),
        },
        limit=4,
        num_concurrent=4,
    )
    summary = lm_eval.run_lm_eval(
        tmp_path / "lm",
        client_config=judge,
        settings=settings,
        tokenizer=str(ServerPaths.of(None, None).model_dir),
    )
    assert set(summary["tasks"]) == {"arc_easy", "winogrande"}
    for scores in summary["tasks"].values():
        assert scores["items"] == 4 and 0.0 <= scores["acc"] <= 1.0
    assert summary["lm_eval_version"] == "0.4.13"
    samples = list((tmp_path / "lm" / "results").glob("**/samples_arc_easy_*.jsonl"))
    first = json.loads(samples[0].read_text().splitlines()[0])
    context = first["arguments"]["gen_args_0"]["arg_0"]
    assert context.startswith("Question: ") and context.endswith("\nAnswer:")
    assert list((tmp_path / "lm" / "cache").glob("requests*.db")), "the request cache"


def test_lm_eval_refuses_a_model_the_server_does_not_serve(
    judge, tmp_path, shared_data, monkeypatch
):
    _tool(monkeypatch, lm_eval.BIN_ENV, "lm_eval")
    wrong = judge.model_copy(update={"model": "m7-typo", "max_retries": 0})
    settings = LmEvalConfig(tasks={"obqa": str(shared_data / "eval/commonsense/openbook_qa.jsonl")})
    with pytest.raises(Exception, match="model 'm7-typo' is not served"):
        lm_eval.run_lm_eval(tmp_path / "lm", client_config=wrong, settings=settings,
                            tokenizer=str(ServerPaths.of(None, None).model_dir))  # fmt: skip
    assert not (tmp_path / "lm" / "summary.json").exists()


def test_alpaca_eval_judges_the_same_files_with_the_local_judge(
    judge, answers, tmp_path, monkeypatch
):
    _tool(monkeypatch, alpaca_eval.BIN_ENV, "alpaca_eval")
    reference = tmp_path / "reference.json"
    rows = json.loads(answers.read_text())
    reference.write_text(json.dumps(
        [{"instruction": r["instruction"], "output": "I do not know.", "generator": "idk"}
         for r in rows]
    ))  # fmt: skip
    try:
        result = alpaca_eval.run_alpaca_eval(
            answers, reference, tmp_path / "cmp", judge_url=judge.base_urls[0],
            judge_model=judge.model, api_key=None,
        )  # fmt: skip
    except ToolMissing:
        pytest.fail("alpaca_eval was found but reported missing")
    (row,) = result["rows"]
    # The constrained m/M token: alpaca_eval drops no pair.
    assert int(row["n_total"]) == 3 and 0.0 <= float(row["win_rate"]) <= 100.0
    assert "OPENAI_CLIENT_CONFIG_PATH=" in result["command"]
