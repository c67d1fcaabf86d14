"""Canaries: probes mixed into every curation measure its judge and never reach a dataset."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from humpback_plugin.cli import cli
from humpback_plugin.core.client import ClientConfig
from humpback_plugin.core.config import CurateConfig
from humpback_plugin.core.errors import UsageError
from humpback_plugin.plugins import components
from humpback_plugin.run.report import build_report
from humpback_plugin.stages.curate.probes import load_probes
from humpback_plugin.stages.curate.stage import curate
from tests.stub_judges import digest, expected_for, judged_pair, labels_by_text, stub_judge
from tests.stub_openai import StubOpenAI
from tests.test_faults import (
    comparable,
    kill_when,
    run_cli,
    slow,
    store_lines,
)
from tests.test_pipeline import make_config
from tests.test_pipeline import stub_handler as pipeline_judge

PROBE_ID = re.compile(rb"probe-[0-9a-f]{16}")


def builtin_probes():
    return load_probes(None, components("register_probe_kinds")).probes


def write_candidates(path: Path, n: int) -> Path:
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            text = f"Part {i} of the guide. " + " ".join(f"w{(i * 7 + j) % 89}" for j in range(60))
            row = {"id": f"c{i:03d}", "instruction": f"What does part {i} say?", "output": text}
            fh.write(json.dumps(row) + "\n")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def client_for(stub: StubOpenAI) -> ClientConfig:
    return ClientConfig(base_urls=[stub.base_url], model="stub", concurrency=4, max_retries=2)


def candidate_digit(row: dict) -> int:
    """The digit the stub judges give a candidate (a function of what the judge reads)."""
    text = f"{row['instruction']}\n{row['output']}"
    return digest(text) % 5 + 1


def test_canaries_measure_the_judge_and_stay_out_of_the_outputs(tmp_path):
    cands = write_candidates(tmp_path / "candidates.jsonl", 60)
    labels = labels_by_text(builtin_probes())
    scored, selected = tmp_path / "scored.jsonl", tmp_path / "a4.jsonl"
    with StubOpenAI(stub_judge("perfect", labels)) as stub:
        summary = curate(
            cands, scored, client_config=client_for(stub), selected_path=selected,
            settings=CurateConfig(mode="logprobs", threshold=4), show_progress=False,
        )  # fmt: skip
        judged = [judged_pair(r) for r in stub.generation_requests]
    # 60 candidates: 3% is 2, the floor is 35 probes = 5 seed pairs' groups of 7
    assert summary["canaries"]["count"] == 35 and summary["canaries"]["positives"] == 5
    # the probes went to the judge; an injected one reads (guarded) as its twin: once
    assert summary["canaries"]["judged"] == 30 and len(judged) == 60 + 30
    assert sum(1 for t in judged if t in labels) == 30
    assert [r["id"] for r in read_jsonl(scored)] == [f"c{i:03d}" for i in range(60)]
    kept = read_jsonl(selected)
    assert kept and all(r["id"].startswith("c") and "label" not in r for r in kept)
    assert [r["id"] for r in kept] == [
        r["id"] for r in read_jsonl(cands) if candidate_digit(r) >= 4
    ]
    canaries = read_jsonl(Path(summary["canaries"]["path"]))
    assert len(canaries) == 35 and all(r["canary"] and r["iteration"] == 1 for r in canaries)
    for r in canaries:
        assert ("judged_as" in r) == (r["kind"] == "injected")
        if r["kind"] == "injected":  # its twin's judgement, its own text and rating count
            assert r["judged_as"] == r["base_id"] and r["masked_ratings"] == 1
            assert "Score" in r["output"] or "10/10" in r["output"] or "Rating" in r["output"]
    assert {r["kind"] for r in canaries} == {
        "positive", "other_answer", "truncated", "boilerplate", "blog", "echo", "injected",
    }  # fmt: skip
    assert summary["candidates"] == 60 and summary["scored"] == 60
    q = summary["judge_quality"]
    assert (q["a4"]["precision"], q["a4"]["recall"], q["roc_auc"]) == (1.0, 1.0, 1.0)
    assert q["selection"] == q["a4"]  # threshold 4 is A4
    assert q["injection"]["shift"] == 0.0
    assert summary["masked_ratings"] == 0


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory) -> Path:
    """`humpback run` against a stub, `humpback eval judge --run` on it, then the report."""
    tmp = tmp_path_factory.mktemp("whole-run")
    run = tmp / "run"
    with StubOpenAI(pipeline_judge) as stub:
        config = make_config(tmp, stub.base_url)
        result = CliRunner().invoke(cli, ["run", "-c", str(config), str(run)])
        assert result.exit_code == 0, result.output
        result = CliRunner().invoke(
            cli, ["eval", "judge", "--run", str(run), "--base-url", stub.base_url,
                  "--model", "stub", "--groups", "2", "--max-tokens", "32", "-q"],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
    build_report(run)
    return run


def test_probes_never_reach_a_dataset_in_a_whole_run(whole_run):
    run = whole_run
    probes = load_probes(run / "seed" / "seed.jsonl", components("register_probe_kinds")).probes
    # Bad answers that exist nowhere else (the others are pieces of seed answers, which
    # the seed and datasets hold by right), raw and as JSON strings.
    unique = [p["output"] for p in probes if p["kind"] in ("boilerplate", "blog", "injected")]
    needles = [n.encode() for t in unique for n in (t, json.dumps(t)[1:-1])]
    manifest = json.loads((run / "manifest.json").read_text())
    checked = []
    for path in sorted(p for p in run.rglob("*") if p.is_file()):
        rel = path.relative_to(run)
        if (
            path.name.endswith(".canaries.jsonl")  # the curations' scored probes
            or any(part.endswith(".parts") for part in rel.parts)  # resumable stores
            # `eval judge`'s own stores and scored probes: eval/judge/MODEL/MODE/...
            or (rel.parts[:2] == ("eval", "judge") and len(rel.parts) > 4)
        ):
            continue
        data = path.read_bytes()
        assert not PROBE_ID.search(data), f"{rel} holds a probe id"
        assert not [n for n in needles if n in data], f"{rel} holds a probe's answer"
        checked.append(str(rel))
    for name in ("m1/data/m1.jsonl", "m2/data/m2.jsonl", "curate_1/scored.jsonl",
                 "curate_2/curated.jsonl", "report/report.html", "report/summary.md",
                 "report/audit_sample.jsonl", "eval/judge/stub/judge_eval.json"):  # fmt: skip
        assert name in checked
    # both iterations' judges were measured on the same probes
    ids = [{r["id"] for r in read_jsonl(run / f"curate_{k}/scored.canaries.jsonl")} for k in (1, 2)]
    assert ids[0] == ids[1] and len(ids[0]) == 35
    for k in (1, 2):
        stats = manifest["stages"][f"curate_{k}"]["stats"]
        assert stats["judge_quality"]["probes"] == 35
        assert stats["scored"] == len(read_jsonl(run / "augment/candidates.jsonl"))
        outputs = {o["path"] for o in manifest["stages"][f"curate_{k}"]["outputs"]}
        assert f"curate_{k}/scored.canaries.jsonl" in outputs


def test_the_report_shows_each_iterations_judge(whole_run):
    page = (whole_run / "report/report.html").read_text()
    summary = (whole_run / "report/summary.md").read_text()
    manifest = json.loads((whole_run / "manifest.json").read_text())
    for text in (page, summary):
        assert "Judge quality" in text and "Mean score per probe kind" in text
        assert "humpback eval judge" in text and "A4 precision" in text
        for k in (1, 2):
            q = manifest["stages"][f"curate_{k}"]["stats"]["judge_quality"]
            auc = f"{q['roc_auc']:.2f}"
            assert f"| curate_{k} | stub | paper | 5 / 30 |" in summary
            assert auc in text
    # the score plots of both iterations, the lengths, and one judge plot per iteration
    assert page.count("data:image/png;base64,") == 5
    assert page.index('id="scores"') < page.index('id="judge"') < page.index('id="lengths"')


def test_calibrated_selection_reports_its_cut(tmp_path):
    cands = write_candidates(tmp_path / "candidates.jsonl", 40)
    labels = labels_by_text(builtin_probes())
    runner = CliRunner()
    outputs = {}
    for quality in ("perfect", "inverted"):
        with StubOpenAI(stub_judge(quality, labels)) as stub:
            result = runner.invoke(
                cli,
                ["curate", str(cands), "-o", str(tmp_path / f"{quality}.jsonl"),
                 "--selected", str(tmp_path / f"{quality}.sel.jsonl"),
                 "--base-url", stub.base_url, "--model", "stub", "--mode", "logprobs",
                 "--target-precision", "0.8", "-q"],
            )  # fmt: skip
        assert result.exit_code == 0, result.output
        outputs[quality] = result.output
    summary = json.loads((tmp_path / "perfect.jsonl.parts/summary.json").read_text())
    cal = summary["calibration"]
    # good probes all got expected score 4.75, bad ones 1.25: the cut is 4.75
    assert cal["reached"] and cal["cut"] == pytest.approx(expected_for(5), abs=1e-4)
    assert (cal["precision"], cal["recall"]) == (1.0, 1.0)
    assert summary["selector"] == "calibrated" and summary["selector_options"]["cut"] == cal["cut"]
    kept = read_jsonl(tmp_path / "perfect.sel.jsonl")
    assert [r["id"] for r in kept] == [
        r["id"] for r in read_jsonl(cands) if candidate_digit(r) == 5
    ]
    assert "calibrated cut (precision >= 0.8)" in outputs["perfect"]
    # an inverted judge cannot reach the target: nothing is selected, and it says so
    inverted = json.loads((tmp_path / "inverted.jsonl.parts/summary.json").read_text())
    assert not inverted["calibration"]["reached"] and inverted["selected"] == 0
    assert read_jsonl(tmp_path / "inverted.sel.jsonl") == []
    assert "not reached: nothing selected" in outputs["inverted"]


def test_calibration_needs_canaries_and_selections_are_exclusive(tmp_path):
    cands = write_candidates(tmp_path / "c.jsonl", 3)
    with pytest.raises(UsageError, match="calibrated selector chooses its cut on canaries"):
        curate(
            cands, tmp_path / "s.jsonl", client_config=ClientConfig(
                base_urls=["http://127.0.0.1:9"], model="m"),
            settings=CurateConfig(selector="calibrated", canaries=False),
        )  # fmt: skip
    result = CliRunner().invoke(
        cli,
        ["curate", str(cands), "-o", str(tmp_path / "s.jsonl"), "--base-url",
         "http://127.0.0.1:9", "--model", "m", "--threshold", "4", "--target-precision", "0.8"],
    )  # fmt: skip
    assert result.exit_code == 2 and "--target-precision" in result.output


def test_a_user_probe_file_and_the_cli_summary(tmp_path):
    cands = write_candidates(tmp_path / "c.jsonl", 10)
    labelled = tmp_path / "labelled.jsonl"
    labelled.write_text(
        "".join(
            json.dumps({"instruction": f"q{i}", "output": f"answer {i}", "label": i % 2}) + "\n"
            for i in range(8)
        )
    )
    labels = {f"q{i}\nanswer {i}": i % 2 for i in range(8)}
    with StubOpenAI(stub_judge("perfect", labels)) as stub:
        result = CliRunner().invoke(
            cli,
            ["curate", str(cands), "-o", str(tmp_path / "s.jsonl"), "--base-url", stub.base_url,
             "--model", "stub", "--mode", "constrained", "--probes", str(labelled), "-q"],
        )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "canaries (good / bad)" in result.output and "4 / 4" in result.output
    assert "judge ROC-AUC" in result.output
    summary = json.loads((tmp_path / "s.jsonl.parts/summary.json").read_text())
    assert summary["canaries"]["labelled_file"] and summary["judge_quality"]["roc_auc"] == 1.0
    assert len(read_jsonl(tmp_path / "s.jsonl")) == 10


def test_sigkill_mid_curation_keeps_the_probe_results_consistent(tmp_path):
    cands = write_candidates(tmp_path / "candidates.jsonl", 40)
    with StubOpenAI(slow(0.03)) as stub:

        def cmd(out: Path) -> list[str]:
            return [
                sys.executable, "-m", "humpback_plugin", "curate", str(cands), "-o", str(out),
                "--base-url", stub.base_url, "--model", "stub", "--concurrency", "2", "-q",
                "--mode", "constrained",
            ]  # fmt: skip

        reference = tmp_path / "reference" / "scored.jsonl"
        run_cli(cmd(reference))
        out = tmp_path / "killed" / "scored.jsonl"
        store = Path(f"{out}.parts") / "scored.jsonl"
        judged = json.loads(Path(f"{reference}.parts/summary.json").read_text())["canaries"]
        inputs = 40 + judged["judged"]  # candidates and the canaries sent to the judge
        assert kill_when(cmd(out), lambda: store_lines(store) >= 20)
        saved = store_lines(store)
        assert 0 < saved < inputs, "the kill must land mid-stage"
        killed_store = [json.loads(line) for line in store.read_text().splitlines()]
        assert any(r.get("canary") for r in killed_store), "some probes were scored before"
        assert not out.exists() and not out.with_name("scored.canaries.jsonl").exists()
        before = len(stub.generation_requests)
        run_cli(cmd(out))
        assert len(stub.generation_requests) - before == inputs - saved
    canaries = out.with_name("scored.canaries.jsonl")
    assert comparable(canaries) == comparable(reference.with_name("scored.canaries.jsonl"))
    assert comparable(out) == comparable(reference)
    summaries = [json.loads(Path(f"{p}.parts/summary.json").read_text()) for p in (reference, out)]
    assert summaries[0]["judge_quality"] == summaries[1]["judge_quality"]
    assert summaries[1]["canaries"]["count"] == 35
    keys = [json.loads(line)["key"] for line in store.read_text().splitlines()]
    assert len(keys) == len(set(keys)) == inputs
