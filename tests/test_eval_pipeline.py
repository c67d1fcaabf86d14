"""`humpback run` with an `eval:` section against the stub: the whole loop, M0-M2 answers,
comparisons, the tag ablation, and a report that opens with the outcome."""

from __future__ import annotations

import json
import math

import yaml
from click.testing import CliRunner

from humpback_plugin.cli import cli
from humpback_plugin.core.layout import stage_names
from humpback_plugin.run import demo
from humpback_plugin.run.report import build_report
from tests.stub_openai import StubOpenAI, chat_logprobs, reply
from tests.test_pipeline import make_config, stub_handler

MODELS = ("stub", "stub-m0", "stub-m1", "stub-m2", "stub-judge")
RANK = {"reference": 0, "stub-m0": 1, "stub-m1": 2, "stub-m2": 3}


def _rank(answer: str) -> int:
    return next((r for name, r in RANK.items() if answer.startswith(name)), 0)


def handler(req):
    text = req.prompt_text
    if req.body.get("prompt") == "Hello":
        return reply("Hi")
    if "## Answer A" in text:
        a = text.split("## Answer A\n\n", 1)[1].split("\n\n## Answer B", 1)[0]
        b = text.split("## Answer B\n\n", 1)[1].split("\n\n## The better answer", 1)[0]
        # A fair judge that likes later models, with a small pull towards position A.
        p = min(0.95, max(0.05, 0.55 + 0.2 * (_rank(a) - _rank(b))))
        top = {"A": math.log(p), "B": math.log(1 - p)}
        return reply("A" if p >= 0.5 else "B", logprobs=[chat_logprobs(top)])
    model = req.body.get("model")
    if model in RANK and "Score: <rating>" not in text:
        system = req.body["messages"][0]["content"] if len(req.body["messages"]) > 1 else ""
        return reply(f"{model} answer ({len(system)}): {req.body['messages'][-1]['content'][:30]}")
    return stub_handler(req)


def eval_config(tmp_path, base_url: str) -> str:
    path = make_config(tmp_path, base_url)
    config = yaml.safe_load(path.read_text())
    config["serving"]["models"].update(
        {"m0": "stub-m0", "m1": "stub-m1", "m2": "stub-m2", "judge": "stub-judge"}
    )
    config["eval"] = {
        "instructions": str(demo.eval_questions_path()),
        "limit": 6,
        "ablation": ["S_a", "S_a+S_w"],
        "generate": {"max_tokens": 64},
        "compare": {"bootstrap_samples": 200},
    }
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_run_evaluates_m0_m1_m2_and_the_report_opens_with_the_outcome(tmp_path):
    with StubOpenAI(handler, models=MODELS) as stub:
        config_path = eval_config(tmp_path, stub.base_url)
        run_dir = tmp_path / "run"
        result = CliRunner().invoke(cli, ["run", "-c", config_path, str(run_dir)])
        assert result.exit_code == 0, result.output
        judged = [r for r in stub.generation_requests if r.body.get("model") == "stub-judge"]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    wanted = stage_names(2, ["generate", "compare"])
    assert {s: manifest["stages"][s]["status"] for s in wanted} == dict.fromkeys(wanted, "done")
    stats = manifest["stages"]["eval_compare"]["stats"]
    assert sorted(stats) == sorted(
        [f"m{k}_vs_reference" for k in range(3)]
        + ["m1_vs_m0", "m2_vs_m0", "m2.S_a_vs_reference", "m2.S_a+S_w_vs_reference"]
    )
    # 6 instructions, 7 comparisons, 2 orders each.
    assert len(judged) == 6 * 7 * 2
    # The stub judge prefers later models: M2 > M1 > M0 > reference, position bias cancelled.
    rates = {name: s["win_rate"] for name, s in stats.items()}
    assert rates["m2_vs_reference"] > rates["m1_vs_reference"] > rates["m0_vs_reference"] > 50
    assert rates["m2_vs_m0"] > rates["m1_vs_m0"] > 50
    outputs = json.loads((run_dir / "eval/outputs/m2.S_a/model_outputs.json").read_text())
    assert len(outputs) == 6 and outputs[0]["generator"] == "m2+S_a"
    assert outputs[0]["output"].startswith("stub-m2 answer (39)")  # S_a is 39 characters

    summary = (run_dir / "report" / "summary.md").read_text()
    headings = [line for line in summary.splitlines() if line.startswith("## ")]
    assert headings[:3] == ["## What the loop produced", "## Did it work?", "## Run"]
    assert "| M2 | 6 |" in summary and "win rate vs reference [95% CI]" in summary
    assert "Tag ablation: M2" in summary and "| S_a+S_w |" in summary and "66.47" in summary
    assert "noise" in summary  # 6 examples: the report says the intervals are wide
    html = (run_dir / "report" / "report.html").read_text()
    assert 'id="outcome"' in html and "Did it work?" in html
    # A second run skips everything.
    again = CliRunner().invoke(cli, ["run", str(run_dir)])
    assert again.exit_code == 0 and again.output.count("(skipped)") == len(wanted)


def test_report_of_an_unevaluated_run_says_how_to_evaluate(tmp_path):
    from tests.run_dir_factory import make_run_dir

    run_dir = tmp_path / "run"
    make_run_dir(run_dir)
    result = build_report(run_dir, plots=False)
    text = result.markdown_path.read_text()
    assert "## What the loop produced" in text and "Not evaluated" in text
    assert "| documents read |" in text
