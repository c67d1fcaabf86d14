"""The report as one self-contained HTML page.

Draws the sections of :mod:`~humpback_plugin.run.report.tables` with their plots, plus
what only the page shows: example pairs per score and the skipped lines. All text from
the run is web data: it is HTML-escaped everywhere, and the page carries a
Content-Security-Policy that forbids scripts and external loads, so a missed escape still
cannot run anything. Plots are embedded as ``data:`` PNGs.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from humpback_plugin.run.report import plots as report_plots
from humpback_plugin.run.report.collect import SCORE_BUCKETS, RunData, as_number
from humpback_plugin.run.report.rows import truncate
from humpback_plugin.run.report.tables import PlotRef, Section, Table, fmt_cell, notices

CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1c2833;
margin:0;background:#f4f6f7}
main{max-width:1100px;margin:0 auto;padding:24px 28px 60px;background:#fff}
h1{font-size:26px;margin:0 0 4px}h2{font-size:20px;margin:34px 0 10px;
border-bottom:2px solid #d5dbdb;padding-bottom:4px}h3{font-size:16px;margin:20px 0 8px}
.meta{color:#5d6d7e;margin:0 0 14px}
table{border-collapse:collapse;margin:8px 0 14px;font-size:13.5px}
th,td{border:1px solid #d5dbdb;padding:4px 9px;text-align:left;vertical-align:top}
th{background:#eaf2f8}tr:nth-child(even) td{background:#fbfcfc}
td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
details{margin:10px 0}summary{font-weight:600;font-size:16px;cursor:pointer;margin:8px 0}
.example .meta{margin:0 0 4px;font-size:12.5px}
.notice{background:#fef9e7;border-left:4px solid #f1c40f;padding:8px 14px;margin:12px 0}
.notice ul{margin:4px 0;padding-left:20px}
.status-done{color:#1e8449;font-weight:600}.status-failed{color:#c0392b;font-weight:600}
.status-running{color:#2e86c1;font-weight:600}
img{max-width:100%;border:1px solid #eaeded;margin:6px 0}
.example{border:1px solid #d5dbdb;border-radius:4px;margin:8px 0;padding:8px 12px}
.example pre{white-space:pre-wrap;word-break:break-word;margin:4px 0 0;font-size:12.5px;
background:#f8f9f9;padding:6px 8px;max-height:260px;overflow:auto}
.label{font-size:12px;color:#5d6d7e;text-transform:uppercase;letter-spacing:.04em}
nav a{margin-right:12px}.row{display:flex;gap:18px;align-items:flex-start;flex-wrap:wrap}
.row img{flex:1;min-width:480px;max-width:760px}code{background:#f2f3f4;padding:0 3px}
"""

# No scripts, no external loads: only inline styles and data: images.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def text_html(text: str) -> str:
    """A table module text: escaped, with names in backticks set as code."""
    pieces = esc(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(pieces))


def table_html(table: Table) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in table.headers)
    body = []
    for row in table.rows:
        cells = []
        for i, cell in enumerate(row):
            classes = []
            if i in table.numeric:
                classes.append("n")
            if i == table.status_column:
                # A class name from run text: keep only characters a class name can hold.
                classes.append("status-" + re.sub(r"[^a-z0-9_-]", "", str(cell).lower()))
            attr = f' class="{" ".join(classes)}"' if classes else ""
            cells.append(f"<td{attr}>{esc(fmt_cell(cell))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def kv_table(rows: list[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th>{esc(k)}</th><td>{esc(fmt_cell(v))}</td></tr>" for k, v in rows)
    return f"<table><tbody>{body}</tbody></table>"


def _img(plot: PlotRef, images: dict[str, str]) -> str:
    if plot.name not in images:
        return ""
    return f'<img alt="{esc(plot.alt)}" src="data:image/png;base64,{images[plot.name]}">'


def _table_block(table: Table, images: dict[str, str]) -> str:
    if not table.rows and not table.empty:
        return ""
    parts = [f"<h3>{esc(table.title)}</h3>"] if table.title else []
    if table.intro:
        parts.append(f"<p>{text_html(table.intro)}</p>")
    if not table.rows:
        parts.append(f"<p>{text_html(table.empty)}</p>")
        return "".join(parts)
    block = table_html(table) + (kv_table(table.facts) if table.facts else "")
    image = _img(table.plot, images) if table.plot else ""
    # The plot sits beside its table and facts where the page is wide enough.
    parts.append(f'<div class="row"><div>{block}</div>{image}</div>' if image else block)
    return "".join(parts)


def _section_html(section: Section, data: RunData, images: dict[str, str], truncate_at: int) -> str:
    parts = [f'<h2 id="{esc(section.key)}">{esc(section.title)}</h2>']
    if section.intro:
        parts.append(f"<p>{text_html(section.intro)}</p>")
    extra = PAGE_ONLY_BODIES.get(section.key)
    if extra is not None:
        parts.append(extra(data, truncate_at))
    parts.extend(_table_block(table, images) for table in section.tables)
    if not section.tables and section.empty:
        parts.append(f"<p>{text_html(section.empty)}</p>")
    parts.extend(_img(plot, images) for plot in section.plots)
    return "".join(parts)


def render_html(
    data: RunData, sections: list[Section], images: dict[str, str], *, truncate_at: int = 600
) -> str:
    """The whole page: header, notices, navigation, every section, skipped lines."""
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    created = data.manifest.get("created_at") or "unknown"
    nav = "".join(f'<a href="#{esc(s.key)}">{esc(s.nav)}</a>' for s in sections)
    parts = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Humpback report: {esc(data.run_id)}</title><style>{CSS}</style></head>"
        "<body><main>",
        f"<h1>Humpback run report: {esc(data.run_id)}</h1>",
        f'<p class="meta">Run directory <code>{esc(data.run_dir)}</code> · created '
        f"{esc(created)} · report generated {esc(generated)}</p>",
        f"<nav>{nav}</nav>",
        _notices_html(data),
    ]
    parts.extend(_section_html(s, data, images, truncate_at) for s in sections)
    parts.append(_skipped_html(data))
    parts.append("</main></body></html>\n")
    return "".join(parts)


def _notices_html(data: RunData) -> str:
    notes = notices(data)
    if not report_plots.plots_available():
        notes.append(
            "Plots need matplotlib: pip install 'humpback-plugin[report]'. Tables only below."
        )
    if not notes:
        return ""
    items = "".join(f"<li>{esc(n)}</li>" for n in notes)
    return f'<div class="notice"><strong>Incomplete or partial</strong><ul>{items}</ul></div>'


def _skipped_html(data: RunData) -> str:
    if not data.skipped_total:
        return ""
    items = "".join(f"<li><code>{esc(s)}</code></li>" for s in data.skipped_lines)
    return (
        '<h2 id="skipped">Skipped lines</h2>'
        f"<p>{data.skipped_total:,} malformed lines were skipped (first ones listed):</p>"
        f"<ul>{items}</ul>"
    )


# --- example pairs -------------------------------------------------------------------------


def _examples_html(data: RunData, truncate_at: int) -> str:
    parts = [
        "<p>A random few pairs per score bucket (reservoir sample), truncated to "
        f"{truncate_at:,} characters. Text is web data, shown escaped.</p>"
    ]
    scored = [k for k, it in sorted(data.iterations.items()) if it.has_scored]
    shown = False
    for k in scored:
        it = data.iterations[k]
        # The latest iteration opens by default; earlier ones fold away (no JS needed).
        is_open = " open" if k == scored[-1] else ""
        parts.append(f"<details{is_open}><summary>Iteration {k}</summary>")
        for bucket in SCORE_BUCKETS:
            reservoir = it.examples.get(bucket)
            if not reservoir or not reservoir.items:
                continue
            shown = True
            parts.append(f"<h4>Score {esc(bucket)} ({reservoir.seen:,} candidates)</h4>")
            parts.extend(_example_html(record, truncate_at) for record in reservoir.items)
        parts.append("</details>")
    if not shown:
        parts.append("<p>No scored candidates yet.</p>")
    return "".join(parts)


def _example_html(record: dict[str, Any], limit: int) -> str:
    expected = as_number(record.get("expected_score"))
    meta = [
        f"score {record.get('score')}",
        f"expected {expected:.2f}" if expected is not None else None,
        record.get("score_status"),
        f"id {record.get('id')}",
        record.get("source"),
    ]
    meta_text = " · ".join(str(m) for m in meta if m)
    header = record.get("header")
    header_html = (
        f'<div class="label">header</div><pre>{esc(truncate(header, 200))}</pre>' if header else ""
    )
    judge = record.get("judge_text")
    judge_html = (
        f'<div class="label">judge</div><pre>{esc(truncate(judge, limit // 2))}</pre>'
        if judge
        else ""
    )
    return (
        f'<div class="example"><div class="meta">{esc(meta_text)}</div>'
        f'<div class="label">instruction</div>'
        f"<pre>{esc(truncate(record.get('instruction'), limit))}</pre>"
        f"{header_html}"
        f'<div class="label">output</div><pre>{esc(truncate(record.get("output"), limit))}</pre>'
        f"{judge_html}</div>"
    )


# Sections whose body only the page has, by key: drawn after the section's intro.
PAGE_ONLY_BODIES: dict[str, Callable[[RunData, int], str]] = {"examples": _examples_html}
