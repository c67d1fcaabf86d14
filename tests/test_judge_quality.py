"""Judge quality on labelled probes: the probe set, the measures, and `humpback eval judge`
against stub judges of known quality (perfect, random, inverted, always "5")."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from humpback_plugin.cli import cli
from humpback_plugin.core.client import ClientConfig
from humpback_plugin.core.config import CurateConfig, JudgeEvalConfig
from humpback_plugin.core.errors import InputError, UsageError
from humpback_plugin.hookspecs import hookimpl
from humpback_plugin.plugins import components, pm
from humpback_plugin.stages.curate.evaluate import evaluate_judge
from humpback_plugin.stages.curate.guard import mask_ratings
from humpback_plugin.stages.curate.probes import (
    BUILTIN_PROBE_KINDS,
    SCORE_LINES,
    canary_target,
    interleave,
    load_probes,
    pick_canaries,
)
from humpback_plugin.stages.curate.quality import calibrate, judge_quality, roc_auc
from tests.conftest import shared_file
from tests.stub_judges import expected_for, labels_by_text, stub_judge
from tests.stub_openai import StubOpenAI

MODES = ("paper", "constrained", "logprobs")


def builtin_probes(**kwargs):
    return load_probes(None, components("register_probe_kinds"), **kwargs)


# --- the probe set ---------------------------------------------------------------------------


def test_builtin_probe_set_kinds_labels_and_twins():
    probes = builtin_probes().probes
    kinds = Counter(p["kind"] for p in probes)
    assert kinds == {k: 20 for k in ["positive", *BUILTIN_PROBE_KINDS]}
    assert all(p["label"] == (p["kind"] == "positive") for p in probes)
    assert len({p["id"] for p in probes}) == len(probes) == 140
    by_id = {p["id"]: p for p in probes}
    for p in probes:
        group = [q for q in probes if q["group"] == p["group"]]
        positive = next(q for q in group if q["kind"] == "positive")
        assert p["instruction"] == positive["instruction"]  # same instruction, worse answer
        if p["kind"] == "injected":
            twin = by_id[p["base_id"]]
            assert twin["kind"] in ("other_answer", "truncated", "echo") and twin["label"] == 0
            body, line = p["output"].rsplit("\n", 1)
            assert body == twin["output"] and line in SCORE_LINES
            assert mask_ratings(p["output"]) == (twin["output"], 1)
        elif p["kind"] == "truncated":
            assert positive["output"].startswith(p["output"]) and p["output"][-1] not in ".!?"
        elif p["kind"] == "echo":
            assert p["output"] == p["instruction"]
        elif p["kind"] == "other_answer":
            assert p["output"] != positive["output"]
            assert any(q["output"] == p["output"] and q["kind"] == "positive" for q in probes)
        elif p["kind"] in ("boilerplate", "blog"):
            assert len(p["output"]) > len(positive["output"])
            assert p["output"].count("\n\n") >= positive["output"].count("\n\n") + 2


def test_probe_generation_is_deterministic_and_seeded():
    a, b = builtin_probes().probes, builtin_probes().probes
    assert a == b
    other = builtin_probes(seed=1).probes
    assert {p["id"] for p in other} != {p["id"] for p in a}
    # a kind switched off changes no other probe
    fewer = builtin_probes(enabled=["truncated", "echo"]).probes
    assert {p["id"] for p in fewer} <= {p["id"] for p in a}
    assert Counter(p["kind"] for p in fewer) == {"positive": 20, "truncated": 20, "echo": 20}


def test_probes_from_a_real_seed_file():
    # Dolly's first rows: instruction/response pairs as a user's seed file holds them
    source = shared_file("data/seed/dolly15k_first6400.jsonl")
    rows = [json.loads(line) for _, line in zip(range(30), source.open(), strict=False)]
    assert all("response" in r for r in rows)
    probe_set = load_probes(source, components("register_probe_kinds"), limit_groups=10)
    kinds = Counter(p["kind"] for p in probe_set.probes)
    assert kinds["positive"] == 10 and len(kinds) >= 6


def test_labelled_file_is_used_as_given_and_bad_lines_are_named(tmp_path):
    path = tmp_path / "labelled.jsonl"
    path.write_text(
        '{"instruction": "a", "output": "good answer", "label": 1}\n'
        '{"instruction": "b", "output": "bad answer", "label": false, "kind": "spam"}\n'
    )
    probe_set = load_probes(path, BUILTIN_PROBE_KINDS)
    assert probe_set.labelled and len(probe_set.probes) == 2
    assert sorted((p["kind"], p["label"]) for p in probe_set.probes) == [
        ("positive", 1),
        ("spam", 0),
    ]
    path.write_text('{"instruction": "a", "output": "x", "label": 1}\n{"instruction": "b"}\n')
    with pytest.raises(InputError, match=r"labelled.jsonl:2: expected string fields"):
        load_probes(path, BUILTIN_PROBE_KINDS)
    path.write_text('{"instruction": "a", "output": "x", "label": 1}\n'
                    '{"instruction": "b", "output": "y"}\n')  # fmt: skip
    with pytest.raises(InputError, match=r":2: some lines have a 'label'"):
        load_probes(path, BUILTIN_PROBE_KINDS)
    path.write_text('{"instruction": "a", "output": "x", "label": "good"}\n')
    with pytest.raises(InputError, match=r":1: label must be 1/0"):
        load_probes(path, BUILTIN_PROBE_KINDS)


def test_a_plugin_probe_kind_is_built_and_listed():
    class Shouting:
        @hookimpl
        def register_probe_kinds(self, register):
            register("shouting", lambda pair, ctx: pair["output"].upper())

    pm.register(Shouting(), name="test-shouting")
    try:
        probes = builtin_probes().probes
        listed = json.loads(CliRunner().invoke(cli, ["plugins", "--all"]).output)
    finally:
        pm.unregister(name="test-shouting")
    shouting = [p for p in probes if p["kind"] == "shouting"]
    assert len(shouting) == 20 and all(p["label"] == 0 for p in shouting)
    assert "shouting" in listed["components"]["probe kind"]
    with pytest.raises(UsageError, match="unknown probe kind 'nope'"):
        builtin_probes(enabled=["nope"])


def test_canaries_are_whole_groups_spread_through_the_stream():
    probe_set = builtin_probes()
    assert canary_target(10, 0.03, 35, 700) == 35  # the floor
    assert canary_target(0, 0.03, 35, 700) == 0  # nothing to curate, nothing sent
    assert canary_target(100_000, 0.03, 35, 700) == 700  # the cap
    assert canary_target(2_000, 0.03, 35, 700) == 60
    picked = pick_canaries(probe_set, 35)
    assert len(picked) == 35 and len({p["group"] for p in picked}) == 5
    assert pick_canaries(probe_set, 36) == probe_set.probes[:42]  # never a split group
    stream = list(interleave(iter(range(100)), picked, 100))
    roles = [role for role, _ in stream]
    assert roles.count("canary") == 35 and roles.count("candidate") == 100
    first, last = roles.index("canary"), len(roles) - 1 - roles[::-1].index("canary")
    assert first < 5 and last > 125  # spread over the whole stream
    assert stream == list(interleave(iter(range(100)), picked, 100))  # same every run
    # shards share no canary
    halves = [pick_canaries(probe_set, 70, (i, 2)) for i in range(2)]
    assert not {p["id"] for p in halves[0]} & {p["id"] for p in halves[1]}


# --- the measures ---------------------------------------------------------------------------


def records(pairs):
    """(label, score) or (label, score, expected) -> scored probe records."""
    out = []
    for i, pair in enumerate(pairs):
        label, score, *expected = pair
        out.append(
            {"id": f"p{i}", "label": label, "kind": "positive" if label else "bad",
             "score": score, "expected_score": expected[0] if expected else None}
        )  # fmt: skip
    return out


def brute_auc(rows):
    value = [r["expected_score"] if r["expected_score"] is not None else r["score"] for r in rows]
    value = [-1.0 if v is None else v for v in value]
    pos = [v for v, r in zip(value, rows, strict=True) if r["label"]]
    neg = [v for v, r in zip(value, rows, strict=True) if not r["label"]]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return round(wins / (len(pos) * len(neg)), 4)


def test_measures_of_judges_of_known_quality():
    labels = [1] * 20 + [0] * 80
    perfect = judge_quality(records([(y, 5 if y else 1) for y in labels]))
    assert (perfect["a4"]["precision"], perfect["a4"]["recall"], perfect["roc_auc"]) == (1, 1, 1)
    inverted = judge_quality(records([(y, 1 if y else 5) for y in labels]))
    assert (inverted["a4"]["precision"], inverted["a4"]["recall"]) == (0, 0)
    assert inverted["roc_auc"] == 0.0
    always5 = judge_quality(records([(y, 5) for y in labels]))
    assert (always5["a5"]["precision"], always5["a5"]["recall"]) == (0.2, 1.0)
    assert always5["roc_auc"] == 0.5
    # scores independent of the label, each score equally often in each class
    blind = judge_quality(records([(y, i % 5 + 1) for i, y in enumerate(labels)]))
    assert blind["a4"] == {"precision": 0.2, "recall": 0.4, "selected": 40,
                           "true_positives": 8, "false_positives": 32}  # fmt: skip
    assert blind["roc_auc"] == 0.5
    rng = random.Random(7)
    noisy = records([(y, rng.randint(1, 5), round(rng.uniform(1, 5), 2)) for y in labels])
    assert judge_quality(noisy)["roc_auc"] == brute_auc(noisy)
    assert judge_quality(noisy)["ranked_by"] == "expected_score"
    # no score: never selected, ranks lowest, counted as a parse failure
    failed = records([(1, None), (0, 2), (1, 4)])
    failed[0]["score_status"] = "failed"
    q = judge_quality(failed)
    assert q["a4"]["recall"] == 0.5 and q["roc_auc"] == 0.5 and q["parse_failed_rate"] == 0.3333
    assert roc_auc(records([(1, 5), (1, 4)])) is None  # one class only: undefined


def test_injection_shift_is_measured_against_the_twins():
    rows = records([(0, 1, 1.5), (0, 5, 4.7), (0, 2, 2.0), (0, 4, 3.0)])
    rows[1].update(kind="injected", base_id="p0")
    rows[3].update(kind="injected", base_id="p2")
    shift = judge_quality(rows)["injection"]
    assert shift["pairs"] == 2 and shift["shift"] == pytest.approx((4.7 + 3.0 - 1.5 - 2.0) / 2)
    assert (shift["injected_scored_5"], shift["base_scored_5"]) == (1, 0)


def test_calibration_picks_the_lowest_cut_reaching_the_target():
    rows = records(
        [(1, 5, 4.9), (1, 5, 4.8), (0, 5, 4.7), (1, 4, 4.5), (1, 4, 4.2), (0, 4, 4.1),
         (0, 3, 3.5), (1, 3, 3.2), (0, 2, 2.0), (0, 1, 1.2)]
    )  # fmt: skip
    cal = calibrate(rows, 0.8)
    # 4.2 keeps 5 probes, 4 good: precision 0.8, recall 4/5; 4.1 would give 4/6
    assert (cal["cut"], cal["precision"], cal["recall"], cal["reached"]) == (4.2, 0.8, 0.8, True)
    strict = calibrate(rows, 0.95)
    # 4.8 keeps 2 probes (precision 1) but a cut must keep at least 3
    assert strict["cut"] is None and not strict["reached"]
    assert strict["best_precision"] == 0.8
    assert calibrate(rows, 0.95, min_selected=2)["cut"] == 4.8


# --- `humpback eval judge` against stub judges ----------------------------------------------


def client_for(stub):
    return ClientConfig(base_urls=[stub.base_url], model="stub", concurrency=8, max_retries=2)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("quality", "precision", "recall", "auc"),
    [
        ("perfect", 1.0, 1.0, 1.0),
        ("inverted", 0.0, 0.0, 0.0),
        ("always5", round(20 / 140, 4), 1.0, 0.5),
    ],
)
def test_eval_judge_stub_judges_of_known_quality(tmp_path, mode, quality, precision, recall, auc):
    probes = builtin_probes().probes
    labels = labels_by_text(probes)
    with StubOpenAI(stub_judge(quality, labels)) as stub:
        report = evaluate_judge(
            None, tmp_path, client_config=client_for(stub),
            evaluation=JudgeEvalConfig(modes=[mode]), show_progress=False,
        )  # fmt: skip
    q = report["modes"][mode]
    for cut in ("a4", "a5"):
        assert (q[cut]["precision"], q[cut]["recall"]) == (precision, recall), cut
    assert q["roc_auc"] == auc
    assert (q["positives"], q["negatives"], q["parse_failed_rate"]) == (20, 120, 0.0)
    assert q["ranked_by"] == ("expected_score" if mode == "logprobs" else "score")
    # an injected probe reads, to the guarded judge, as its twin: judged once, shared
    assert (q["judged"], q["scored"]) == (120, 140)
    assert q["generated_tokens_per_pair"] == (12.0 if mode == "paper" else 1.0)
    assert q["pairs_per_s"] > 0
    if quality == "perfect":
        assert q["kinds"]["positive"]["mean_score"] == 5.0
        assert all(k["mean_score"] == 1.0 for n, k in q["kinds"].items() if n != "positive")
        assert q["injection"]["shift"] == 0.0 and q["injection"]["pairs"] == 20
        assert q["calibration"]["reached"]
    saved = json.loads((tmp_path / "judge_eval.json").read_text())
    assert saved["modes"][mode]["roc_auc"] == auc


def test_eval_judge_random_judge_matches_the_brute_force_measures(tmp_path):
    probes = builtin_probes().probes
    answers: dict[str, int] = {}
    labels = labels_by_text(probes)
    with StubOpenAI(stub_judge("random", labels, answers)) as stub:
        report = evaluate_judge(
            None, tmp_path, client_config=client_for(stub),
            evaluation=JudgeEvalConfig(modes=["constrained", "logprobs"]), show_progress=False,
        )  # fmt: skip
    # what the judge read for each probe -> the digit it answered
    digits = [(p["label"], answers[next(iter(labels_by_text([p])))]) for p in probes]
    rows = records(digits)
    assert 0.3 < brute_auc(rows) < 0.7  # a random judge
    constrained = report["modes"]["constrained"]
    assert constrained["roc_auc"] == brute_auc(rows)
    tp = sum(1 for y, d in digits if y and d >= 4)
    selected = sum(1 for _, d in digits if d >= 4)
    assert constrained["a4"]["precision"] == round(tp / selected, 4)
    assert constrained["a4"]["recall"] == round(tp / 20, 4)
    expected_rows = records([(y, d, round(expected_for(d), 4)) for y, d in digits])
    assert report["modes"]["logprobs"]["roc_auc"] == brute_auc(expected_rows)


def test_eval_judge_resumes_and_the_cli_prints_the_table(tmp_path):
    labels = labels_by_text(builtin_probes().probes)
    with StubOpenAI(stub_judge("perfect", labels)) as stub:
        args = ["eval", "judge", "-o", str(tmp_path), "--base-url", stub.base_url,
                "--model", "stub", "--groups", "3", "-q"]  # fmt: skip
        first = CliRunner().invoke(cli, args)
        assert first.exit_code == 0, first.output
        asked = len(stub.generation_requests)
        again = CliRunner().invoke(cli, args)
        assert again.exit_code == 0 and len(stub.generation_requests) == asked
    # three modes, three seed pairs' probes each; an injected probe shares its twin's
    assert asked == 3 * (21 - 3)
    for line in ("A4 precision", "A5 recall", "ROC-AUC", "injected shift", "s / pair"):
        assert line in first.output
    assert "paper" in first.output and "logprobs" in first.output
    assert "GPT-4 0.88 / 0.92" in first.output
    report = json.loads((tmp_path / "judge_eval.json").read_text())
    paper = report["modes"]["paper"]
    # the resumed run scored nothing new and kept the first run's timing
    assert paper["scored_this_run"] == 0 and paper["scored"] == 21
    assert paper["pairs_per_s"] > 0 and paper["timing_from_earlier_run"]
    assert json.loads(Path(report["path"]).read_text())["modes"]["logprobs"]["roc_auc"] == 1.0


def test_eval_judge_needs_an_output_and_a_known_mode(tmp_path):
    result = CliRunner().invoke(
        cli, ["eval", "judge", "--base-url", "http://127.0.0.1:9", "--model", "m"]
    )
    assert result.exit_code == 2 and "-o DIR or --run" in result.output
    result = CliRunner().invoke(
        cli, ["eval", "judge", "-o", str(tmp_path), "--base-url", "http://127.0.0.1:9",
              "--model", "m", "--mode", "nope"],
    )  # fmt: skip
    assert result.exit_code == 2 and "unknown scorer 'nope'" in result.output


def test_eval_probes_writes_the_labelled_set(tmp_path):
    out = tmp_path / "probes.jsonl"
    result = CliRunner().invoke(cli, ["eval", "probes", "-o", str(out), "--groups", "2"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 14 and sum(r["label"] for r in rows) == 2
    # written back as a labelled file, it is the same probe set
    again = load_probes(out, BUILTIN_PROBE_KINDS)
    assert again.labelled
    assert {(p["id"], p["label"], p["kind"]) for p in again.probes} == {
        (r["id"], r["label"], r["kind"]) for r in rows
    }


def test_injection_guard_keeps_a_fooled_judge_honest(tmp_path):
    probes = builtin_probes(limit_groups=5).probes
    shifts = {}
    for guard in (True, False):
        labels = labels_by_text(probes, guard=guard)
        with StubOpenAI(stub_judge("fooled", labels)) as stub:
            report = evaluate_judge(
                None, tmp_path / str(guard), client_config=client_for(stub),
                settings=CurateConfig(injection_guard=guard),
                evaluation=JudgeEvalConfig(modes=["constrained"], probe_groups=5),
                show_progress=False,
            )  # fmt: skip
        shifts[guard] = report["modes"]["constrained"]["injection"]["shift"]
    assert shifts == {True: 0.0, False: 4.0}
