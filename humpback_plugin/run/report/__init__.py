"""The run report: one self-contained HTML page and a markdown summary of a run directory.

:func:`build_report` reads the run (:mod:`.collect`), builds every table once
(:mod:`.tables`; the judge's quality: :mod:`.judge`), draws the plots (:mod:`.plots`,
optional matplotlib) and renders the same tables to ``report.html`` (:mod:`.html`) and
``summary.md`` (:mod:`.markdown`), with a stratified sample for human audit in
``audit_sample.jsonl``. Works on a half-finished run and says what is missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from humpback_plugin.core.jsonl_io import atomic_writer, write_jsonl_atomic
from humpback_plugin.core.layout import RunLayout
from humpback_plugin.run.report.collect import (
    SCORE_BUCKETS,
    IterationData,
    LengthStats,
    PairLengths,
    Progress,
    Reservoir,
    RunData,
    Usage,
    collect,
    read_manifest,
)
from humpback_plugin.run.report.evaluation import EvalData, read_evaluation
from humpback_plugin.run.report.html import render_html
from humpback_plugin.run.report.judge import judge_plots, judge_section
from humpback_plugin.run.report.markdown import md_table, render_markdown
from humpback_plugin.run.report.outcome import outcome_plots, outcome_sections
from humpback_plugin.run.report.plots import make_plots, plots_available
from humpback_plugin.run.report.tables import (
    AUDIT_NAME,
    HTML_NAME,
    SUMMARY_NAME,
    Section,
    Table,
    sections,
)

__all__ = [
    "IterationData",
    "LengthStats",
    "PairLengths",
    "Progress",
    "ReportResult",
    "Reservoir",
    "RunData",
    "Section",
    "Table",
    "Usage",
    "EvalData",
    "audit_records",
    "build_report",
    "collect",
    "make_plots",
    "outcome_plots",
    "outcome_sections",
    "read_evaluation",
    "md_table",
    "plots_available",
    "read_manifest",
    "render_html",
    "render_markdown",
    "sections",
    "with_judge_section",
]


def audit_records(data: RunData) -> list[dict[str, Any]]:
    """The audit sample, ordered by score, with empty fields for the human's verdict."""
    rows = []
    for bucket in SCORE_BUCKETS:
        reservoir = data.audit.get(bucket)
        if not reservoir:
            continue
        for record in sorted(reservoir.items, key=lambda r: str(r.get("id"))):
            rows.append(
                {
                    "id": record.get("id"),
                    "iteration": data.audit_iteration,
                    "score": record.get("score"),
                    "expected_score": record.get("expected_score"),
                    "score_status": record.get("score_status"),
                    "instruction": record.get("instruction"),
                    "output": record.get("output"),
                    "header": record.get("header"),
                    "source": record.get("source"),
                    "segment_id": record.get("segment_id"),
                    "judge_text": record.get("judge_text"),
                    "human_label": "",
                    "human_notes": "",
                }
            )
    return rows


def with_judge_section(report_sections: list[Section], data: RunData) -> list[Section]:
    """The judge-quality section, placed right after the scores it explains."""
    keys = [s.key for s in report_sections]
    at = keys.index("scores") + 1 if "scores" in keys else len(report_sections)
    return [*report_sections[:at], judge_section(data), *report_sections[at:]]


@dataclass
class ReportResult:
    """What :func:`build_report` wrote, and the data it read."""

    html_path: Path
    markdown_path: Path
    audit_path: Path | None  # None when nothing was scored yet
    audit_count: int
    plots: int
    data: RunData


def build_report(
    run_dir: str | Path,
    output_dir: str | Path | None = None,
    *,
    examples_per_score: int = 3,
    audit_per_score: int = 20,
    audit_iteration: int | None = None,
    seed: int = 0,
    truncate_at: int = 600,
    plots: bool = True,
    strict: bool = False,
    progress: Progress | None = None,
) -> ReportResult:
    """Read ``run_dir`` and write report.html, summary.md and audit_sample.jsonl atomically.

    ``output_dir`` defaults to the run's ``report/`` folder. With ``strict`` a malformed
    line raises :class:`~humpback_plugin.core.errors.InputError` before anything is written.
    """
    run_dir = Path(run_dir)
    output_dir = Path(output_dir) if output_dir else RunLayout(run_dir).report_dir
    data = collect(
        run_dir,
        examples_per_score=examples_per_score,
        audit_per_score=audit_per_score,
        audit_iteration=audit_iteration,
        seed=seed,
        strict=strict,
        progress=progress,
    )
    evaluation = read_evaluation(run_dir)
    images = make_plots(data) if plots else {}
    if plots:
        images.update(outcome_plots(evaluation))
        images.update(judge_plots(data))
    # The outcome first (funnel, did it work?), then configuration and details, the
    # judge's quality beside the scores.
    report_sections = [
        *outcome_sections(data, evaluation),
        *with_judge_section(sections(data), data),
    ]
    # Both texts exist before either file is replaced: a failure leaves the old pair.
    page = render_html(data, report_sections, images, truncate_at=truncate_at)
    summary = render_markdown(data, report_sections)
    html_path = output_dir / HTML_NAME
    markdown_path = output_dir / SUMMARY_NAME
    with atomic_writer(html_path) as fh:
        fh.write(page)
    with atomic_writer(markdown_path) as fh:
        fh.write(summary)
    audit_path = None
    audit_count = 0
    if data.audit_iteration is not None:
        audit_path = output_dir / AUDIT_NAME
        audit_count = write_jsonl_atomic(audit_path, audit_records(data))
    return ReportResult(html_path, markdown_path, audit_path, audit_count, len(images), data)
