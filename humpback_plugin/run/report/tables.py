"""Every table of the report, built once from :class:`RunData` by :func:`sections`.

Holds the table model (:class:`Table`, :class:`Section`) and lays out the rows of
:mod:`~humpback_plugin.run.report.rows` as tables, with titles, intros and plots.

The HTML page and the markdown summary render the same :class:`Section` list, so a number
cannot differ between them. Cells hold plain values (ints are formatted by
:func:`fmt_cell`); intros and "empty" texts are plain text in which a name in backticks
is a file or field name. None of it is markup: the renderers escape everything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from humpback_plugin.run.report.collect import SCORE_BUCKETS, RunData
from humpback_plugin.run.report.rows import (
    STAGES,
    config_rows,
    filter_tables,
    length_rows,
    score_histogram,
    stage_rows,
    throughput_rows,
)

# The report's own files, in its output folder (RUN_DIR/report unless told otherwise).
HTML_NAME = "report.html"
SUMMARY_NAME = "summary.md"
AUDIT_NAME = "audit_sample.jsonl"


@dataclass(frozen=True)
class PlotRef:
    """A plot by its name in :func:`~humpback_plugin.run.report.plots.make_plots`' result."""

    name: str
    alt: str


@dataclass
class Table:
    """One table, as both renderers draw it."""

    key: str
    title: str  # a sub-heading; "" for none
    headers: list[str]
    rows: list[list[Any]]
    numeric: frozenset[int] = frozenset()  # columns aligned right
    intro: str = ""
    empty: str = ""  # said instead of a table without rows; "" drops the table
    status_column: int | None = None  # cells coloured by stage status in HTML
    facts: list[tuple[str, Any]] = field(default_factory=list)  # key/value lines after it
    plot: PlotRef | None = None  # drawn beside the table
    html_only: bool = False  # too long for the summary


@dataclass
class Section:
    """A heading of the report with its tables and plots."""

    key: str  # anchor of the HTML page
    title: str
    nav: str  # short name in the page's navigation
    intro: str = ""
    tables: list[Table] = field(default_factory=list)
    plots: list[PlotRef] = field(default_factory=list)  # drawn after the tables
    empty: str = ""  # said when there is no table
    html_only: bool = False


def score_plot(k: int) -> PlotRef:
    return PlotRef(f"scores_{k}", f"score histogram, iteration {k}")


LENGTHS_PLOT = PlotRef("lengths", "length distributions")


# --- cells and notices ---------------------------------------------------------------------


def fmt_cell(value: Any) -> str:
    """A cell's text: thousands separators for ints, a dash for nothing."""
    if value is None or value == "":
        return "—"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def notices(data: RunData) -> list[str]:
    """What makes the report incomplete: no manifest, unfinished stages, absent files."""
    notes = []
    if data.manifest_problem:
        notes.append(data.manifest_problem)
    unfinished = [
        f"{name}: {data.stage(name).get('status')}"
        for name in STAGES
        if data.stage(name) and data.stage(name).get("status") != "done"
    ]
    if unfinished:
        notes.append("Stages not done: " + "; ".join(unfinished))
    if data.missing:
        notes.append("Files not written yet: " + ", ".join(data.missing))
    if data.skipped_total:
        notes.append(
            f"{data.skipped_total:,} malformed lines skipped (listed at the end of {HTML_NAME})."
        )
    return notes


# --- the sections --------------------------------------------------------------------------


def sections(data: RunData) -> list[Section]:
    """The report's sections in page order, each table built here and only here."""
    return [
        _run_section(data),
        _stages_section(data),
        _filters_section(data),
        _scores_section(data),
        _lengths_section(data),
        _throughput_section(data),
        # Example pairs are long web text: the HTML renderer draws them, the summary skips.
        Section("examples", "Examples per score", "Examples", html_only=True),
        _audit_section(data),
    ]


def _run_section(data: RunData) -> Section:
    config = Table(
        "config",
        "Configuration",
        ["key", "value"],
        [list(row) for row in config_rows(data.manifest.get("config"))],
        empty="No configuration recorded.",
        html_only=True,
    )
    models = [
        [name, stage.get("model"), ", ".join(map(str, stage.get("server_urls") or []))]
        for name, stage in ((n, data.stage(n)) for n in data.stages)
        if stage.get("model") or stage.get("server_urls")
    ]
    per_stage = Table(
        "models", "Models per stage", ["stage", "model", "servers"], models, empty="None recorded."
    )
    return Section("run", "Run", "Run", tables=[config, per_stage])


def _stages_section(data: RunData) -> Section:
    headers = ["stage", "status", "iteration", "model"]
    headers += ["input records", "output records", "yield", "time"]
    rows = [
        [r["stage"], r["status"], r["iteration"], r["model"]]
        + [r["inputs"], r["outputs"], r["yield"], r["elapsed"]]
        for r in stage_rows(data)
    ]
    stages = Table("stages", "", headers, rows, frozenset({4, 5, 6, 7}), status_column=1)
    files = Table(
        "files",
        "Records found in files",
        ["file", "records"],
        [[path, count] for path, count in data.record_counts.items()],
        frozenset({1}),
    )
    return Section("stages", "Stages: counts and yield", "Stages", tables=[stages, files])


def _filters_section(data: RunData) -> Section:
    tables = [
        Table(
            f"rejected-{stage}",
            stage,
            ["reason", "rejected", "share of inputs"],
            [list(row) for row in rows],
            frozenset({1, 2}),
        )
        for stage, rows in filter_tables(data).items()
    ]
    return Section(
        "filters",
        "Filters: rejections per reason",
        "Filters",
        tables=tables,
        empty="No rejection counts recorded yet.",
    )


def _scores_section(data: RunData) -> Section:
    tables = []
    for k in sorted(data.iterations):
        hist = score_histogram(data, k)
        if not any(hist.values()):
            continue
        total = sum(hist.values())
        rows = [
            [b, hist[b], f"{hist[b] / total:.1%}"]
            for b in SCORE_BUCKETS
            if hist[b] or b != "unscored"
        ]
        it = data.iterations[k]
        stats = data.stats(f"curate_{k}")
        facts = [
            ("mode", stats.get("mode")),
            ("threshold", stats.get("threshold")),
            ("selected", stats.get("selected", it.curated_records if it.has_curated else None)),
            ("score status", ", ".join(f"{s}: {n:,}" for s, n in sorted(it.status.items()))),
        ]
        tables.append(
            Table(
                f"scores-{k}",
                f"Iteration {k} (curate_{k})",
                ["score", "candidates", "share"],
                rows,
                frozenset({1, 2}),
                facts=[(name, value) for name, value in facts if value not in (None, "")],
                plot=score_plot(k),
            )
        )
    scored = data.layout.scored(1).name
    empty = f"No scores yet: the curate stages have not written `{scored}`."
    return Section("scores", "Scores per iteration", "Scores", tables=tables, empty=empty)


def _lengths_section(data: RunData) -> Section:
    headers = ["set", "pairs", "instruction (ours)", "instruction (paper)"]
    headers += ["output (ours)", "output (paper)", "note"]
    rows = [
        [r["label"], r["n"], r["instruction"], r["paper_instruction"]]
        + [r["output"], r["paper_output"], r["note"]]
        for r in length_rows(data)
    ]
    return Section(
        "lengths",
        "Instruction and output lengths (characters)",
        "Lengths",
        intro="Mean ± standard deviation in characters; the paper's figures are from its "
        "Table 2 (A4(2), A5(2): pairs scored ≥ 4 and = 5 at iteration 2).",
        tables=[Table("lengths", "", headers, rows, frozenset({1}))],
        plots=[LENGTHS_PLOT],
    )


def _throughput_section(data: RunData) -> Section:
    headers = ["stage", "model", "servers", "requests", "time", "requests/s"]
    headers += ["prompt tokens", "completion tokens", "completion tokens/s", "failed"]
    headers += ["tokens from"]
    keys = ["stage", "model", "servers", "requests", "elapsed", "requests_per_s"]
    keys += ["prompt_tokens", "completion_tokens", "completion_tokens_per_s", "failed"]
    keys += ["tokens_from"]
    rows = [[r[key] for key in keys] for r in throughput_rows(data)]
    table = Table(
        "throughput",
        "",
        headers,
        rows,
        frozenset(range(2, 10)),
        empty="No model-calling stage has run yet.",
    )
    return Section("throughput", "Throughput and token usage", "Throughput", tables=[table])


def _audit_section(data: RunData) -> Section:
    section = Section("audit", "Sample for human audit", "Audit sample")
    if data.audit_iteration is None:
        section.empty = "No scored candidates to sample yet."
        return section
    sampled = sum(len(r.items) for r in data.audit.values())
    section.intro = (
        f"A stratified random sample of iteration {data.audit_iteration}: up to the same "
        f"number of pairs per score, {sampled:,} in all, written to `{AUDIT_NAME}` with an "
        "empty `human_label` to fill in."
    )
    rows = [[b, r.seen, len(r.items)] for b, r in data.audit.items() if r.seen]
    section.tables = [
        Table("audit", "", ["score", "candidates", "sampled"], rows, frozenset({1, 2}))
    ]
    return section
