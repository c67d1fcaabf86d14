"""``humpback report``: HTML + markdown from a synthetic run directory, then a real browser."""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import time
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from humpback_plugin.cli import cli
from humpback_plugin.core.layout import RunLayout
from humpback_plugin.run import report
from humpback_plugin.run.report import LengthStats, Reservoir, build_report
from humpback_plugin.run.report import plots as report_plots
from tests.run_dir_factory import SCRIPT, make_run_dir

ESCAPED_SCRIPT = "&lt;script&gt;alert(&quot;pwned&quot;)&lt;/script&gt;"


def run_report(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["report", *args, "-q"], catch_exceptions=False)
    return result.exit_code, result.output


@pytest.fixture
def full_run(tmp_path: Path) -> tuple[Path, dict]:
    run = tmp_path / "run"
    expected = make_run_dir(run)
    return run, expected


def test_full_run_html_and_markdown(full_run):
    run, expected = full_run
    # Enough examples per score that the segment with the <script> is certainly shown.
    code, output = run_report(str(run), "--examples", "500")
    assert code == 0, output
    out = run / "report"
    assert output.strip() == str(out / "report.html")
    page = (out / "report.html").read_text()
    summary = (out / "summary.md").read_text()

    # Escaping: web text and config values never become markup.
    assert "<script" not in page.lower()
    assert ESCAPED_SCRIPT in page
    assert "&lt;b&gt;not bold&lt;/b&gt;" in page
    assert "Content-Security-Policy" in page
    assert not re.search(r"""(src|href)=["']?https?://""", page), "no external loads"

    # Stage counts and yields, filter reasons, histograms, paper figures, tokens.
    for text in (page, summary):
        assert "test-run-001" in text
        assert "90.9%" in text  # segments: 120 kept of 132
        assert "nav_header" in text and "minhash" in text
        assert "148 ± 322" in text and "1072 ± 818" in text  # paper, seed
        assert "115 ± 175" in text and "1985 ± 649" in text  # paper, A5(2) / A4(2)
        assert f"{expected['augment_prompt_tokens']:,}" in text
    for k in (1, 2):
        for score, count in expected[f"histogram_{k}"].items():
            assert f"| {score} | {count} |" in summary
        assert f"| unscored | {expected[f'unscored_{k}']} |" in summary
    seed_mean = f"{expected['seed_instruction_mean']:.0f} ± "
    assert seed_mean in summary and seed_mean in page
    assert page.count("data:image/png;base64,") == 3  # two score plots + lengths
    assert "Incomplete" not in page

    audit = [json.loads(line) for line in (out / "audit_sample.jsonl").read_text().splitlines()]
    assert audit and all(row["human_label"] == "" and row["iteration"] == 2 for row in audit)


def test_rejections_fall_back_to_the_side_files(full_run):
    """Without ``rejected_by_reason`` in the manifest, each stage's side file of rejected
    rows is counted, by the field that stage writes (augment: ``rejected_reason``)."""
    run, _ = full_run
    layout = RunLayout(run)
    side = [json.loads(x) for x in layout.candidates_rejected.read_text().splitlines()]
    reasons = sorted(row["rejected_reason"] for row in side)
    assert reasons == ["echo", "refusal"] and not any("reason" in row for row in side)
    manifest = json.loads(layout.manifest.read_text())
    for stage in ("segments", "augment"):
        del manifest["stages"][stage]["stats"]["rejected_by_reason"]
    layout.manifest.write_text(json.dumps(manifest))

    assert run_report(str(run))[0] == 0
    page = (layout.report_dir / "report.html").read_text()
    summary = (layout.report_dir / "summary.md").read_text()
    filters = page.split('id="filters"')[1].split('id="scores"')[0]
    assert "<h3>augment</h3>" in filters and "<h3>segments</h3>" in filters
    for reason in reasons:
        assert f"<td>{reason}</td>" in filters
        assert f"| {reason} | 1 | 0.8% |" in summary  # of 120 segments in
    assert "| length | 7 |" in summary and "| nav_header | 3 |" in summary
    assert "unknown" not in filters, "every row's reason was read from its real field"


def test_audit_sample_is_stratified_and_seeded(full_run, tmp_path):
    run, expected = full_run
    ids = {}
    for seed in (1, 1, 2):
        out = tmp_path / f"out-{seed}-{len(ids)}"
        assert (
            run_report(str(run), "-o", str(out), "--audit-per-score", "5", "--seed", str(seed))[0]
            == 0
        )
        rows = [json.loads(x) for x in (out / "audit_sample.jsonl").read_text().splitlines()]
        per_score = {}
        for row in rows:
            per_score.setdefault(str(row["score"]), []).append(row["id"])
        assert all(len(v) == 5 for v in per_score.values()), per_score
        assert set(per_score) == {"1", "2", "3", "4", "5", "None"}
        ids.setdefault(seed, []).append([row["id"] for row in rows])
    assert ids[1][0] == ids[1][1], "same seed, same sample"
    assert ids[1][0] != ids[2][0], "another seed, another sample"


def test_audit_iteration_option(full_run, tmp_path):
    run, _ = full_run
    out = tmp_path / "out"
    assert run_report(str(run), "-o", str(out), "--audit-iteration", "1")[0] == 0
    rows = [json.loads(x) for x in (out / "audit_sample.jsonl").read_text().splitlines()]
    assert {row["iteration"] for row in rows} == {1}


def test_half_finished_run_says_what_is_missing(tmp_path):
    run = tmp_path / "run"
    make_run_dir(run, upto="train_m0")
    code, output = run_report(str(run))
    assert code == 0, output
    page = (run / "report/report.html").read_text()
    summary = (run / "report/summary.md").read_text()
    for text in (page, summary):
        assert "curate_1/scored.jsonl" in text
        assert "pending" in text
    assert "No scores yet" in page
    assert "A4(1)" not in page  # no empty rows for iterations that never ran
    assert not (run / "report/audit_sample.jsonl").exists()


def test_run_without_manifest_or_files(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_report(str(empty))[0] == 0
    page = (empty / "report/report.html").read_text()
    assert "manifest.json is missing" in page
    assert "seed/seed.jsonl" in page

    run = tmp_path / "run"
    make_run_dir(run, manifest=False)
    assert run_report(str(run))[0] == 0
    summary = (run / "report/summary.md").read_text()
    assert "manifest.json is missing" in summary
    assert "| 5 |" in summary  # scores still come from the files


def test_malformed_line_is_skipped_and_named_or_fatal_with_strict(full_run, tmp_path):
    run, _ = full_run
    scored = run / "curate_1/scored.jsonl"
    lines = scored.read_text().count("\n")
    with open(scored, "a") as fh:
        fh.write('{"id": "torn", "score": 4\n')  # a write cut short
    code, _ = run_report(str(run))
    assert code == 0
    page = (run / "report/report.html").read_text()
    assert f"curate_1/scored.jsonl:{lines + 1}: malformed JSON" in page

    out = tmp_path / "strict"
    result = CliRunner().invoke(cli, ["report", str(run), "-o", str(out), "--strict", "-q"])
    assert result.exit_code == 1
    assert f"scored.jsonl:{lines + 1}" in result.output
    assert not out.exists() or not any(out.iterdir()), "no half-written output"


def test_malformed_manifest_names_file_and_line(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text('{\n  "run_id": "x",\n  oops\n}\n')
    result = CliRunner().invoke(cli, ["report", str(run), "-q"])
    assert result.exit_code == 1
    assert "manifest.json:3: malformed JSON" in result.output


def test_tables_only_without_matplotlib(full_run, monkeypatch):
    run, _ = full_run
    monkeypatch.setattr(report_plots, "plots_available", lambda: False)
    assert run_report(str(run))[0] == 0
    page = (run / "report/report.html").read_text()
    assert "data:image/png" not in page
    assert "Plots need matplotlib" in page
    assert "<table>" in page


def test_no_plots_flag_and_failed_write_leaves_old_report(full_run, monkeypatch):
    run, _ = full_run
    assert run_report(str(run), "--no-plots")[0] == 0
    page_path = run / "report/report.html"
    before = page_path.read_text()
    assert "data:image/png" not in before

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(report, "render_markdown", broken)
    with pytest.raises(RuntimeError):
        build_report(run, plots=False)
    assert (run / "report/summary.md").exists()
    assert not list((run / "report").glob(".*.tmp")), "no temp files left behind"


def test_streaming_helpers_match_exact_statistics():
    values = [3, 10, 250, 1200, 1200, 4000, 0, 99999, 250000]
    stats = LengthStats()
    for v in values:
        stats.add(v)
    assert stats.count == len(values)
    assert stats.mean == pytest.approx(statistics.mean(values))
    assert stats.std == pytest.approx(statistics.stdev(values))
    assert sum(stats.bins) == len(values)

    import random

    reservoir = Reservoir(10, random.Random(0))
    for i in range(10_000):
        reservoir.offer(i)
    assert len(reservoir.items) == 10 and reservoir.seen == 10_000
    assert max(reservoir.items) > 1000, "later items get their chance"


def test_cli_has_report_command():
    assert cli.get_command(click.Context(cli), "report") is not None
    help_text = CliRunner().invoke(cli, ["report", "--help"]).output
    assert "audit_sample.jsonl" in help_text and "--audit-per-score" in help_text


def test_report_scales_with_bounded_samples(tmp_path):
    """A larger run: the page stays small because samples are bounded."""
    run = tmp_path / "run"
    make_run_dir(run, n_segments=3000, n_seed=200)
    started = time.perf_counter()
    assert run_report(str(run), "--examples", "2", "--audit-per-score", "3")[0] == 0
    elapsed = time.perf_counter() - started
    page = (run / "report/report.html").stat().st_size
    assert page < 400_000
    assert elapsed < 30


# --- a real browser ----------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium_args(profile: Path) -> list[str]:
    return [
        CHROMIUM or "chromium",
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
    ]


@pytest.mark.browser
def test_report_renders_in_headless_chromium(full_run, tmp_path):
    if CHROMIUM is None:
        if os.environ.get("HUMPBACK_REQUIRE_REAL"):
            pytest.fail("chromium is not installed (apt-get install -y chromium)")
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    run, _ = full_run
    assert run_report(str(run), "--examples", "500")[0] == 0
    url = (run / "report/report.html").resolve().as_uri()

    dom = subprocess.run(
        [*chromium_args(tmp_path / "profile-dom"), "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert dom.count("<img") == 3
    assert len(re.findall(r'<img alt="[^"]*" src="data:image/png;base64,', dom)) == 3
    assert dom.count("<table>") >= 10
    assert "<script" not in dom.lower(), "the escaped <script> stayed text"
    assert SCRIPT.replace("<", "&lt;").replace(">", "&gt;") in dom

    shot = tmp_path / "report.png"
    subprocess.run(
        [
            *chromium_args(tmp_path / "profile-shot"),
            f"--screenshot={shot}",
            "--window-size=1200,3000",
            url,
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert shot.exists() and shot.stat().st_size > 20_000
    try:
        from matplotlib import image
    except ImportError:
        return
    pixels = image.imread(shot)
    assert pixels.shape[:2] == (3000, 1200)
    assert pixels[..., :3].std() > 0.05, "the screenshot is not blank"
    # Dark text near the top: the heading rendered.
    assert (pixels[:200, :, :3].mean(axis=2) < 0.3).any()
    keep = os.environ.get("HUMPBACK_KEEP_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)
