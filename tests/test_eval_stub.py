"""`humpback eval generate` and `compare` against the stub server: requests, position swap,
garbage and refusing judges, resume after SIGKILL, a judge that is down, bad input."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from humpback_plugin import SYSTEM_AUGMENTED, SYSTEM_SEED
from humpback_plugin.cli import cli
from humpback_plugin.core.client import ClientConfig
from humpback_plugin.core.config import EvalCompareConfig, EvalGenerateConfig
from humpback_plugin.core.errors import ClientError
from humpback_plugin.stages.eval.compare import compare_outputs
from humpback_plugin.stages.eval.generate import generate_outputs
from tests.stub_openai import StubOpenAI, chat_logprobs, error, reply

ROOT = Path(__file__).resolve().parents[1]


def write_set(path: Path, n: int, with_output: str | None = None) -> Path:
    records = []
    for i in range(n):
        record = {"instruction": f"Question number {i}: what is {i} squared?", "dataset": "t"}
        if with_output is not None:
            record.update(output=f"{with_output} {i}", generator="reference")
        records.append(record)
    path.write_text(json.dumps(records, indent=1))
    return path


class Stub(StubOpenAI):
    """The stub with the preflight's test completion answered before ``handler`` sees it."""

    def __init__(self, handler=None, **kwargs):
        def answer(req):
            if req.body.get("prompt") == "Hello":
                return reply("Hi")
            return handler(req) if handler else reply("stub answer")

        super().__init__(answer, **kwargs)


def client(stub: StubOpenAI, model: str = "stub") -> ClientConfig:
    return ClientConfig(base_urls=[stub.base_url], model=model, concurrency=4, max_retries=2)


def answers(req) -> tuple[str, str]:
    """Answer A and answer B from a pairwise judge prompt."""
    text = req.prompt_text
    a = text.split("## Answer A\n\n", 1)[1].split("\n\n## Answer B", 1)[0]
    b = text.split("## Answer B\n\n", 1)[1].split("\n\n## The better answer", 1)[0]
    return a, b


def judge(p_first) -> callable:
    """A judge whose P(A) is ``p_first(answer_a, answer_b)``, read at one constrained token."""

    def handler(req):
        p = p_first(*answers(req))
        letter = "A" if p >= 0.5 else "B"
        if req.body.get("structured_outputs"):
            assert req.body["structured_outputs"] == {"choice": ["A", "B"]}
            assert req.body["max_tokens"] == 1 and req.body["top_logprobs"] == 20
            top = {"A": math.log(max(p, 1e-9)), "B": math.log(max(1 - p, 1e-9))}
            return reply(letter, logprobs=[chat_logprobs(top)])
        return reply(letter)

    return handler


# --- generate ------------------------------------------------------------------------------


def test_generate_sends_the_paper_decoding_and_writes_alpaca_eval_outputs(tmp_path):
    def handler(req):
        if "number 3" in req.prompt_text:
            return error(400, "This model's maximum context length is 2048 tokens")
        return reply(f"answer to {req.body['messages'][-1]['content'][:18]}")

    instructions = write_set(tmp_path / "set.json", 5)
    out = tmp_path / "m2.S_a" / "model_outputs.json"
    with Stub(handler) as stub:
        summary = generate_outputs(
            instructions, out, client_config=client(stub),
            settings=EvalGenerateConfig(system="S_a"), show_progress=False,
        )  # fmt: skip
        bodies = [r.body for r in stub.generation_requests]
    assert {(b["temperature"], b["top_p"], b["max_tokens"]) for b in bodies} == {(0.7, 0.9, 1024)}
    assert all(b["messages"][0] == {"role": "system", "content": SYSTEM_SEED} for b in bodies)
    rows = json.loads(out.read_text())
    assert [r["instruction"][:17] for r in rows] == [f"Question number {i}" for i in (0, 1, 2, 4)]
    assert set(rows[0]) == {"instruction", "output", "generator", "dataset"}
    assert rows[0]["generator"] == "stub+S_a" and rows[0]["output"].startswith("answer to Question")
    assert (summary["answered"], summary["missing"], summary["failed"]) == (4, 1, 1)
    failures = [json.loads(x) for x in Path(summary["failures_path"]).read_text().splitlines()]
    assert "maximum context length" in failures[0]["message"]


def test_generate_resumes_after_sigkill_without_asking_twice(tmp_path):
    def slow(req):
        return reply(f"answer to {req.body['messages'][-1]['content']}", delay=0.3)

    instructions = write_set(tmp_path / "set.json", 12)
    with Stub(slow) as stub:
        ref = tmp_path / "ref.json"
        generate_outputs(instructions, ref, client_config=client(stub), show_progress=False)
        out = tmp_path / "killed" / "model_outputs.json"
        cmd = [sys.executable, "-m", "humpback_plugin", "eval", "generate", str(instructions),
               "-o", str(out), "--base-url", stub.base_url, "--model", "stub",
               "--concurrency", "2", "-q"]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
        store = Path(f"{out}.parts") / "answers.jsonl"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if store.exists() and store.read_bytes().count(b"\n") >= 4:
                break
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert not out.exists(), "nothing final is written before the end"
        stored = store.read_bytes().count(b"\n")
        before = len(stub.generation_requests)
        subprocess.run(cmd, env=env, check=True, capture_output=True)
        asked_again = len(stub.generation_requests) - before
    assert asked_again == 12 - stored
    assert json.loads(out.read_text()) == json.loads(ref.read_text())


def test_bad_instruction_set_is_named_and_nothing_is_written(tmp_path):
    bad = tmp_path / "set.jsonl"
    bad.write_text('{"instruction": "fine"}\n{"prompt": "no instruction here"}\n')
    out = tmp_path / "out" / "model_outputs.json"
    result = CliRunner().invoke(
        cli,
        [
            "eval",
            "generate",
            str(bad),
            "-o",
            str(out),
            "--base-url",
            "http://127.0.0.1:9/v1",
            "--model",
            "m",
        ],
    )
    assert result.exit_code == 1
    assert f"{bad}:2: not a record of an instruction set" in result.output
    assert not out.parent.exists()


# --- compare -------------------------------------------------------------------------------


def _pair_files(tmp_path: Path, n: int = 6) -> tuple[Path, Path]:
    reference = write_set(tmp_path / "reference.json", n, with_output="reference answer")
    model = tmp_path / "model_outputs.json"
    rows = json.loads(reference.read_text())
    model.write_text(json.dumps([
        {"instruction": r["instruction"], "output": f"GOOD model answer {i}", "generator": "m2"}
        for i, r in enumerate(rows)
    ]))  # fmt: skip
    return model, reference


def test_position_bias_cancels_to_exactly_half(tmp_path):
    model, reference = _pair_files(tmp_path)
    with Stub(judge(lambda a, b: 0.8)) as stub:  # prefers whatever is shown first
        summary = compare_outputs(model, reference, tmp_path / "cmp", client_config=client(stub),
                                  show_progress=False)  # fmt: skip
        assert len(stub.generation_requests) == 12  # each pair in both orders
    assert summary["win_rate"] == pytest.approx(50.0) and summary["win_rate_ci"] == [50.0, 50.0]
    assert (summary["wins"], summary["ties"], summary["losses"]) == (0, 6, 0)
    assert summary["first_position_rate"] == 100.0 and summary["order_agreement"] == 0.0
    verdict = json.loads((tmp_path / "cmp" / "verdicts.jsonl").read_text().splitlines()[0])
    assert [o["model_first"] for o in verdict["orders"]] == [True, False]
    assert [o["p_model"] for o in verdict["orders"]] == [pytest.approx(0.8), pytest.approx(0.2)]
    assert verdict["output_model"].startswith("GOOD") and verdict["status"] == "ok"


def test_a_judge_that_prefers_the_model_gives_a_high_rate_and_lengths(tmp_path):
    model, reference = _pair_files(tmp_path, n=10)
    with Stub(judge(lambda a, b: 0.9 if "GOOD" in a else 0.1)) as stub:
        summary = compare_outputs(model, reference, tmp_path / "cmp", client_config=client(stub),
                                  show_progress=False)  # fmt: skip
    assert summary["win_rate"] == pytest.approx(90.0) and summary["wins"] == 10
    assert summary["mean_length_model"] == pytest.approx(len("GOOD model answer 0"), abs=1)
    assert summary["model"] == "m2" and summary["baseline"] == "reference"
    assert summary["judge_requests"] == 20 and summary["status"] == {"ok": 10}


def test_garbage_judge_is_recovered_by_a_free_answer_or_counted_as_failed(tmp_path):
    model, reference = _pair_files(tmp_path, n=4)

    def garbage(req):
        first, _ = answers(req)
        if req.body.get("structured_outputs"):
            return reply("qwerty")  # ignores the constraint, no logprobs
        # Free text: readable for pairs 0 and 1 only.
        if first.endswith((" 0", " 1")):
            return reply("I think Answer B is better.")
        return reply("Thank you for your question! ###")

    with Stub(garbage) as stub:
        summary = compare_outputs(model, reference, tmp_path / "cmp", client_config=client(stub),
                                  show_progress=False)  # fmt: skip
    verdicts = [json.loads(x) for x in (tmp_path / "cmp" / "verdicts.jsonl").open()]
    assert len(verdicts) == 4  # nothing dropped
    assert summary["status"] == {"recovered": 2, "failed": 2} and summary["failed"] == 2
    assert summary["judged"] == 2 and summary["win_rate"] == pytest.approx(50.0)
    failed = [v for v in verdicts if v["status"] == "failed"]
    assert failed[0]["preference"] is None and failed[0]["outcome"] == "failed"
    assert failed[0]["orders"][0]["judge_texts"] == ["qwerty", "Thank you for your question! ###"]


def test_a_judge_without_structured_outputs_falls_back_to_parsing(tmp_path):
    model, reference = _pair_files(tmp_path, n=3)

    def old_server(req):
        if req.body.get("structured_outputs"):
            return error(400, "structured_outputs is not supported")
        first, _ = answers(req)
        return reply("A" if "GOOD" in first else "B")

    with Stub(old_server) as stub:
        summary = compare_outputs(model, reference, tmp_path / "cmp", client_config=client(stub),
                                  show_progress=False)  # fmt: skip
    assert summary["status"] == {"recovered": 3} and summary["win_rate"] == 100.0
    verdict = json.loads((tmp_path / "cmp" / "verdicts.jsonl").read_text().splitlines()[0])
    assert "structured_outputs is not supported" in verdict["orders"][0]["notes"][0]


def test_parsed_mode_and_identical_answers(tmp_path):
    model, reference = _pair_files(tmp_path, n=3)
    rows = json.loads(model.read_text())
    rows[0]["output"] = json.loads(reference.read_text())[0]["output"]  # identical answers
    model.write_text(json.dumps(rows))
    with Stub(lambda req: reply("Answer B" if "GOOD" in answers(req)[1] else "A")) as stub:
        summary = compare_outputs(
            model, reference, tmp_path / "cmp", client_config=client(stub),
            settings=EvalCompareConfig(mode="parsed"), show_progress=False,
        )  # fmt: skip
        assert all("structured_outputs" not in r.body for r in stub.generation_requests)
        assert len(stub.generation_requests) == 4  # no request for the identical pair
    assert summary["status"] == {"identical": 1, "ok": 2}
    assert (summary["wins"], summary["ties"]) == (2, 1)


def test_compare_resumes_after_sigkill(tmp_path):
    model, reference = _pair_files(tmp_path, n=10)
    slow_judge = judge(lambda a, b: 0.7 if "GOOD" in a else 0.4)

    def slow(req):
        resp = slow_judge(req)
        resp.delay = 0.25
        return resp

    with Stub(slow) as stub:
        ref = compare_outputs(model, reference, tmp_path / "ref", client_config=client(stub),
                              show_progress=False)  # fmt: skip
        out = tmp_path / "killed"
        cmd = [sys.executable, "-m", "humpback_plugin", "eval", "compare", str(model),
               str(reference), "-o", str(out), "--base-url", stub.base_url, "--model", "stub",
               "--concurrency", "2", "-q"]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
        store = out / "verdicts.jsonl.parts" / "verdicts.jsonl"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if store.exists() and store.read_bytes().count(b"\n") >= 3:
                break
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert not (out / "summary.json").exists() and not (out / "verdicts.jsonl").exists()
        stored = store.read_bytes().count(b"\n")
        before = len(stub.generation_requests)
        subprocess.run(cmd, env=env, check=True, capture_output=True)
        asked_again = len(stub.generation_requests) - before
    assert asked_again == 2 * (10 - stored)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["win_rate"] == ref["win_rate"] and summary["win_rate_ci"] == ref["win_rate_ci"]


def test_a_judge_that_is_down_or_does_not_serve_the_model_is_named(tmp_path):
    model, reference = _pair_files(tmp_path, n=2)
    down = ClientConfig(base_urls=["http://127.0.0.1:9/v1"], model="judge", max_retries=0)
    with pytest.raises(ClientError, match=r"cannot reach http://127\.0\.0\.1:9/v1"):
        compare_outputs(model, reference, tmp_path / "cmp", client_config=down,
                        show_progress=False)  # fmt: skip
    assert not (tmp_path / "cmp" / "verdicts.jsonl").exists()
    assert not (tmp_path / "cmp" / "summary.json").exists()
    with Stub(models=("llama-70b",)) as stub:
        result = CliRunner().invoke(cli, [
            "eval", "compare", str(model), str(reference), "-o", str(tmp_path / "cmp2"),
            "--base-url", stub.base_url, "--model", "judge-typo"])  # fmt: skip
    assert result.exit_code == 1
    assert "model 'judge-typo' is not served" in result.output and "llama-70b" in result.output
    assert not (tmp_path / "cmp2" / "summary.json").exists()


def test_outputs_of_another_instruction_set_are_refused(tmp_path):
    model, _ = _pair_files(tmp_path, n=2)
    other = tmp_path / "other.json"
    other.write_text(json.dumps([{"instruction": "unrelated", "output": "x"}]))
    result = CliRunner().invoke(cli, ["eval", "compare", str(model), str(other), "-o",
                                      str(tmp_path / "cmp"), "--base-url", "http://127.0.0.1:9/v1",
                                      "--model", "judge"])  # fmt: skip
    assert result.exit_code == 1 and "none of its instructions is in" in result.output
    assert not (tmp_path / "cmp").exists()


def test_ablation_system_texts_reach_the_server(tmp_path):
    instructions = write_set(tmp_path / "set.json", 2)
    seen = {}
    with Stub(lambda req: reply("ok")) as stub:
        for condition in ("none", "S_w", "S_a+S_w"):
            generate_outputs(
                instructions, tmp_path / condition / "out.json", client_config=client(stub),
                settings=EvalGenerateConfig(system=condition), show_progress=False,
            )  # fmt: skip
            first = stub.generation_requests[-1].body["messages"][0]
            seen[condition] = first["content"] if first["role"] == "system" else None
    assert seen == {
        "none": None,
        "S_w": SYSTEM_AUGMENTED,
        "S_a+S_w": f"{SYSTEM_SEED} {SYSTEM_AUGMENTED}",
    }
