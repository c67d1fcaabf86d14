"""The report's markdown summary: the same sections and tables as the HTML page.

Only renders what :func:`~humpback_plugin.run.report.tables.sections` built; sections and
tables flagged ``html_only`` (example pairs, the long configuration) are left to the page.
"""

from __future__ import annotations

from typing import Any

from humpback_plugin.run.report.collect import RunData
from humpback_plugin.run.report.tables import (
    AUDIT_NAME,
    HTML_NAME,
    Section,
    Table,
    fmt_cell,
    notices,
)


def md_cell(value: Any) -> str:
    """A cell on one line, with the characters that would end it escaped."""
    text = fmt_cell(value).replace("\\", "\\\\").replace("|", "\\|")
    return " ".join(text.split())


def md_table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(md_cell(h) for h in headers) + " |"]
    lines.append("|" + "|".join("---" for _ in headers) + "|")
    lines.extend("| " + " | ".join(md_cell(c) for c in row) + " |" for row in rows)
    return "\n".join(lines)


def _table_md(table: Table) -> list[str]:
    if table.html_only or (not table.rows and not table.empty):
        return []
    out = [f"### {md_cell(table.title)}", ""] if table.title else []
    if table.intro:
        out += [table.intro, ""]
    if not table.rows:
        return [*out, table.empty, ""]
    out += [md_table(table.headers, table.rows), ""]
    if table.facts:
        out += [f"- {md_cell(name)}: {md_cell(value)}" for name, value in table.facts] + [""]
    return out


def _section_md(section: Section) -> list[str]:
    out = [f"## {md_cell(section.title)}", ""]
    if section.intro:
        out += [section.intro, ""]
    for table in section.tables:
        out += _table_md(table)
    if not section.tables and section.empty:
        out += [section.empty, ""]
    return out


def render_markdown(data: RunData, sections: list[Section]) -> str:
    """The summary: header, notices, then every section the summary shows."""
    created = md_cell(data.manifest.get("created_at"))
    out = [f"# Humpback run report: {md_cell(data.run_id)}", ""]
    out.append(f"Run directory `{data.run_dir}`, created {created}.")
    out += [f"Full report with plots and examples: `{HTML_NAME}`; audit sample: `{AUDIT_NAME}`."]
    out.append("")
    notes = notices(data)
    if notes:
        out += ["**Incomplete:**", ""] + [f"- {md_cell(n)}" for n in notes] + [""]
    for section in sections:
        if not section.html_only:
            out += _section_md(section)
    return "\n".join(out).rstrip("\n") + "\n"
