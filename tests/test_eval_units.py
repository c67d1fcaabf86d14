"""Evaluation arithmetic and input checks, no server: position swap, bootstrap interval,
verdict parsing, instruction sets, lm-eval task files, missing tools, config."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from humpback_plugin.core.client import ClientConfig
from humpback_plugin.core.config import (
    SYSTEM_CONDITIONS,
    EvalConfig,
    LmEvalConfig,
    parse_config,
)
from humpback_plugin.core.errors import InputError, ToolMissing
from humpback_plugin.core.layout import stage_names
from humpback_plugin.stages.eval import lm_eval, stats
from humpback_plugin.stages.eval.generate import request_body
from humpback_plugin.stages.eval.instructions import read_items
from humpback_plugin.stages.eval.judging import choice_probabilities, parse_choice
from humpback_plugin.stages.eval.lm_tasks import check_task_file, task_config, write_tasks

# --- the position swap ---------------------------------------------------------------------


def test_a_judge_that_always_prefers_the_first_position_gives_exactly_half():
    # P(A) = 0.8 whatever A is: shown first, the model "wins" 0.8; shown second, 0.2.
    p_model = [stats.model_probability(0.8, True), stats.model_probability(0.8, False)]
    assert p_model == [0.8, pytest.approx(0.2)]
    preference, outcome = stats.combine_orders(p_model)
    assert preference == pytest.approx(0.5) and outcome == stats.TIE


def test_a_consistent_judge_gives_a_win_or_a_loss():
    # The model's answer is better: P(A) = 0.9 when it is A, P(A) = 0.1 when it is B.
    p_model = [stats.model_probability(0.9, True), stats.model_probability(0.1, False)]
    assert stats.combine_orders(p_model) == (pytest.approx(0.9), stats.WIN)
    p_model = [stats.model_probability(0.3, True), stats.model_probability(0.6, False)]
    assert stats.combine_orders(p_model) == (pytest.approx(0.35), stats.LOSS)


def test_one_failed_order_keeps_the_other_and_two_failed_orders_fail():
    assert stats.combine_orders([None, 0.7]) == (0.7, stats.WIN)
    assert stats.combine_orders([None, None]) == (None, stats.FAILED)


def test_summary_counts_ties_half_and_reports_position_bias():
    def verdict(p_first_a: float, p_first_b: float) -> dict:
        orders = [
            {"model_first": True, "p_model": stats.model_probability(p_first_a, True)},
            {"model_first": False, "p_model": stats.model_probability(p_first_b, False)},
        ]
        preference, outcome = stats.combine_orders([o["p_model"] for o in orders])
        return {"preference": preference, "outcome": outcome, "orders": orders,
                "length_model": 100, "length_baseline": 50}  # fmt: skip

    verdicts = [verdict(0.9, 0.1), verdict(0.8, 0.8), verdict(0.2, 0.9)]
    verdicts.append({"preference": None, "outcome": stats.FAILED, "orders": [],
                     "length_model": 10, "length_baseline": 10})  # fmt: skip
    summary = stats.summarize(verdicts, samples=200)
    assert (summary["wins"], summary["ties"], summary["losses"]) == (1, 1, 1)
    assert summary["judged"] == 3 and summary["failed"] == 1
    assert summary["win_rate"] == pytest.approx(100 * (0.9 + 0.5 + 0.15) / 3, abs=0.01)
    assert summary["discrete_win_rate"] == 50.0 and summary["tie_rate"] == pytest.approx(33.33)
    # P(A) > 0.5 in 4 of the 6 judged orders; the orders agreed in 2 of 3 pairs.
    assert summary["first_position_rate"] == pytest.approx(66.67)
    assert summary["order_agreement"] == pytest.approx(66.67)
    assert summary["mean_length_model"] == 100.0 and summary["mean_length_baseline"] == 50.0


# --- the bootstrap interval ----------------------------------------------------------------


def test_bootstrap_interval_matches_the_normal_approximation_and_is_seeded():
    values = [0.0, 1.0] * 200  # mean 0.5, standard error sqrt(0.25 / 400) = 0.025
    low, high = stats.bootstrap_interval(values, samples=2000, seed=3)
    assert low == pytest.approx(0.5 - 1.96 * 0.025, abs=0.01)
    assert high == pytest.approx(0.5 + 1.96 * 0.025, abs=0.01)
    assert stats.bootstrap_interval(values, samples=2000, seed=3) == (low, high)
    assert stats.bootstrap_interval(values, samples=2000, seed=4) != (low, high)


def test_bootstrap_interval_narrows_with_more_examples_and_degenerates_sensibly():
    small = stats.bootstrap_interval([0.0, 1.0] * 10, samples=1000)
    large = stats.bootstrap_interval([0.0, 1.0] * 1000, samples=1000)
    assert (small[1] - small[0]) > 5 * (large[1] - large[0])
    assert stats.bootstrap_interval([0.7] * 30) == (pytest.approx(0.7), pytest.approx(0.7))
    assert stats.bootstrap_interval([1.0]) is None and stats.bootstrap_interval([]) is None


# --- reading the judge ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("A", "A"),
        (" B\n", "B"),
        ("(B).", "B"),
        ("**A**", "A"),
        ("Answer B is better.", "B"),
        ("The better answer: A", "A"),
        ("I prefer output (b) because it is complete.", "B"),
        ("A good answer would mention the scope. Answer B does.", "B"),
        ("A good answer would mention the scope.", None),
        ("Both A and B are fine.", None),
        ("asdkjh 42 ???", None),
        ("", None),
    ],
)
def test_parse_choice(text, expected):
    assert parse_choice(text) == expected


def test_choice_probabilities_from_chat_and_completions_shapes():
    chat = {"content": [{"token": "A", "logprob": math.log(0.6), "top_logprobs": [
        {"token": "A", "logprob": math.log(0.6)}, {"token": "B", "logprob": math.log(0.2)},
        {"token": "The", "logprob": math.log(0.2)}]}]}  # fmt: skip
    probs, mass = choice_probabilities(chat)
    assert probs == {"A": pytest.approx(0.75), "B": pytest.approx(0.25)}
    assert mass == pytest.approx(0.8)
    completions = {"top_logprobs": [{" B": math.log(0.9), "A": math.log(0.1)}]}
    assert choice_probabilities(completions)[0]["B"] == pytest.approx(0.9)
    assert choice_probabilities({"content": [{"token": "x", "logprob": 0.0}]}) == ({}, 0.0)
    assert choice_probabilities(None) == ({}, 0.0)


# --- instruction sets ----------------------------------------------------------------------


def test_request_body_carries_the_tag_ablation_system_text():
    assert request_body("Q?", None, "chat") == {"messages": [{"role": "user", "content": "Q?"}]}
    body = request_body("Q?", SYSTEM_CONDITIONS["S_a"], "chat")
    assert body["messages"][0] == {"role": "system", "content": SYSTEM_CONDITIONS["S_a"]}
    both = SYSTEM_CONDITIONS["S_a+S_w"]
    assert both == f"{SYSTEM_CONDITIONS['S_a']} {SYSTEM_CONDITIONS['S_w']}"
    assert request_body("Q?", both, "completions") == {"prompt": f"{both}\n\nQ?"}


def test_alpaca_eval_file_reads_as_instruction_set_and_reference(shared_data):
    items = read_items(shared_data / "eval/alpaca_eval_805_davinci003_reference.json")
    assert len(items) == 805 and len({i.id for i in items}) == 805
    assert items[0].generator == "text_davinci_003" and items[0].dataset == "helpful_base"
    assert all(i.output is not None for i in items) and items[1].line == 8


def test_a_missing_instruction_names_the_file_and_line(tmp_path):
    path = tmp_path / "set.json"
    path.write_text('[\n  {"instruction": "ok"},\n\n  {"input": "no instruction"}\n]\n')
    with pytest.raises(InputError, match=r"set\.json:4: .*`instruction` must be a non-empty"):
        read_items(path)
    jsonl = tmp_path / "set.jsonl"
    jsonl.write_text('{"instruction": "a"}\n{"instruction": 3}\n')
    with pytest.raises(InputError, match=r"set\.jsonl:2: .*\(int 3\)"):
        read_items(jsonl)
    outputs = tmp_path / "outputs.json"
    outputs.write_text('[{"instruction": "a", "output": null}]')
    with pytest.raises(InputError, match=r"outputs\.json:1: .*no `output`"):
        read_items(outputs, need_output=True, what="outputs file")
    broken = tmp_path / "broken.json"
    broken.write_text('[{"instruction": "a"},\n {"instruction": "b"')
    with pytest.raises(InputError, match=r"broken\.json:2: malformed JSON"):
        read_items(broken)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(InputError, match="no records"):
        read_items(tmp_path / "empty.jsonl")


def test_repeated_instructions_are_matched_occurrence_by_occurrence(tmp_path):
    path = tmp_path / "set.jsonl"
    path.write_text("".join(json.dumps({"instruction": "same"}) + "\n" for _ in range(3)))
    items = read_items(path)
    assert len({i.id for i in items}) == 3


# --- lm-eval tasks and the missing tool ----------------------------------------------------


def test_shared_commonsense_files_become_task_yamls(shared_data, tmp_path):
    folder = shared_data / "eval/commonsense"
    tasks = {p.stem: str(p) for p in sorted(folder.glob("*.jsonl"))}
    written = write_tasks(tasks, tmp_path)
    assert written["winogrande"]["shape"] == "context_options"
    assert written["arc_easy"] == {"file": tasks["arc_easy"], "shape": "query", "items": 2376}
    config = yaml.safe_load((tmp_path / "arc_easy.yaml").read_text())
    assert config["dataset_path"] == "json" and config["output_type"] == "multiple_choice"
    assert config["dataset_kwargs"]["data_files"]["test"] == str(Path(tasks["arc_easy"]).resolve())


def test_a_bad_task_item_names_its_line(tmp_path):
    path = tmp_path / "mc.jsonl"
    path.write_text(
        json.dumps({"query": "Q", "choices": ["a", "b"], "gold": 1}) + "\n"
        + json.dumps({"query": "Q", "choices": ["a", "b"], "gold": 2}) + "\n"
    )  # fmt: skip
    with pytest.raises(InputError, match=r"mc\.jsonl:2: `gold` must be an index"):
        check_task_file(path)
    assert task_config("t", path, "query")["doc_to_choice"] == "{{choices}}"


def test_lm_eval_missing_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.delenv(lm_eval.BIN_ENV, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(lm_eval.sys, "executable", str(tmp_path / "python"))
    monkeypatch.setattr(lm_eval.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ToolMissing, match=r"pip install 'humpback-plugin\[lm-eval\]'"):
        lm_eval.find_lm_eval()
    monkeypatch.setenv(lm_eval.BIN_ENV, str(tmp_path / "nope"))
    with pytest.raises(ToolMissing, match="HUMPBACK_LM_EVAL_BIN"):
        lm_eval.find_lm_eval()


# --- config ----------------------------------------------------------------------------------


def test_eval_is_off_unless_it_names_an_evaluation_set():
    config = parse_config({"training": {"base_model": "x"}})
    assert config.eval.stages() == [] and stage_names(2, config.eval.stages())[-1] == "train_m2"
    config = parse_config(
        {
            "training": {"base_model": "x"},
            "eval": {"instructions": "set.json", "lm_eval": {"tasks": {"arc_easy": "arc.jsonl"}}},
        }  # fmt: skip
    )
    assert config.eval.stages() == ["generate", "lm_eval", "compare"]
    assert config.eval.generate.temperature == 0.7 and config.eval.generate.top_p == 0.9
    assert EvalConfig().against == ["reference", "m0"]


def test_eval_config_typos_and_unknown_conditions_are_named(tmp_path):
    with pytest.raises(InputError, match="unknown key 'eval.generate.temprature'"):
        parse_config({"training": {"base_model": "x"}, "eval": {"generate": {"temprature": 1}}})
    with pytest.raises(InputError, match="eval.ablation.0"):
        parse_config({"training": {"base_model": "x"}, "eval": {"ablation": ["S_x"]}})


def test_lm_eval_runs_for_several_models_at_once(monkeypatch, tmp_path):
    """run_lm_eval_many starts every lm-eval before waiting for any (a fake lm_eval that
    sleeps, writes lm-eval's results file, and records when it ran)."""
    fake = tmp_path / "lm_eval"
    fake.write_text(
        "#!/usr/bin/env python3\n"
        "import json, pathlib, sys, time\n"
        "args = sys.argv[1:]\n"
        "out = pathlib.Path(args[args.index('--output_path') + 1])\n"
        "start = time.time(); time.sleep(1.0)\n"
        "out.mkdir(parents=True, exist_ok=True)\n"
        "(out / 'results_1.json').write_text(json.dumps({'results': {'t': {'acc,none': 0.5}},"
        " 'ran': [start, time.time()]}))\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv(lm_eval.BIN_ENV, str(fake))
    tokenizer = tmp_path / "tok"
    tokenizer.mkdir()
    (tokenizer / "tokenizer_config.json").write_text("{}")
    tasks = tmp_path / "t.jsonl"
    tasks.write_text(json.dumps({"query": "q?", "choices": ["a", "b"], "gold": 0}) + "\n")
    settings = LmEvalConfig(tasks={"t": str(tasks)})
    jobs = [
        (tmp_path / m, ClientConfig(base_urls=["http://127.0.0.1:9/v1"], model=m))
        for m in ("m0", "m1", "m2")
    ]
    summaries = lm_eval.run_lm_eval_many(
        jobs, settings=settings, tokenizer=str(tokenizer), preflight=False
    )
    assert [s["model"] for s in summaries] == ["m0", "m1", "m2"]
    assert all(s["tasks"]["t"]["acc"] == 0.5 for s in summaries)
    ran = [json.loads(Path(s["results_file"]).read_text())["ran"] for s in summaries]
    assert max(start for start, _ in ran) < min(end for _, end in ran)  # they overlapped
    assert all((tmp_path / m / lm_eval.SUMMARY_NAME).is_file() for m in ("m0", "m1", "m2"))
