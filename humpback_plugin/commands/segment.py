"""``humpback segment``: a web corpus to clean, header-delimited segments."""

from __future__ import annotations

import sys
from typing import Any

import click

from humpback_plugin.commands.common import (
    command,
    opened_engine,
    ray_address_option,
    split_names,
)
from humpback_plugin.core.config import DEFAULT_SEGMENT_FILTERS, CorpusConfig, default
from humpback_plugin.core.engine import ENGINES
from humpback_plugin.core.jsonl_io import write_json_atomic
from humpback_plugin.stages.corpus.stage import SegmentSummary, segment_corpus


def print_summary(summary: SegmentSummary) -> None:
    """Tables of counts by input and by rejection reason, to stderr."""
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True)
    sources = Table(title="Segments by input")
    for col in ("input", "files", "documents", "segments", "kept"):
        if col == "input":
            sources.add_column(col, overflow="fold")
        else:
            sources.add_column(col, justify="right")
    for arg, c in summary.by_source.items():
        sources.add_row(arg, *(f"{c[k]:,}" for k in ("files", "documents", "segments", "kept")))
    console.print(sources)
    reasons = Table(title="Segments by outcome")
    reasons.add_column("filter:reason")
    reasons.add_column("segments", justify="right")
    reasons.add_column("share", justify="right")
    total = max(summary.segments, 1)
    for reason, n in summary.rejected.items():
        reasons.add_row(reason, f"{n:,}", f"{n / total:.1%}")
    reasons.add_row("[bold]kept", f"[bold]{summary.kept:,}", f"{summary.kept / total:.1%}")
    console.print(reasons)
    extra = [f"{summary.documents_without_segments:,} documents gave no segments"]
    if summary.bad_records:
        extra.append(f"{summary.bad_records:,} bad records skipped")
    for why, n in summary.skipped.items():
        extra.append(f"{n:,} records skipped ({why})")
    extra.append(f"extractor {summary.extractor}, {summary.workers} worker(s)")
    console.print("; ".join(extra) + f"; {summary.seconds:.1f}s")


def _parse_filter_options(values: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    import yaml

    options: dict[str, dict[str, Any]] = {}
    for value in values:
        key, sep, raw = value.partition("=")
        name, dot, option = key.partition(".")
        if not sep or not dot or not name or not option:
            raise click.BadParameter(
                f"{value!r}: expected FILTER.OPTION=VALUE, e.g. length.min_chars=400",
                param_hint="--filter-option",
            )
        options.setdefault(name, {})[option] = yaml.safe_load(raw) if raw else ""
    return options


@command("segment")
@click.argument("inputs", nargs=-1, required=True)
@click.option(
    "-o", "--output", required=True, type=click.Path(dir_okay=False), help="Segments JSONL."
)
@click.option(
    "--filters",
    default=None,
    help="Comma-separated filters in order (default: all built-ins: "
    + ",".join(DEFAULT_SEGMENT_FILTERS)
    + "). 'none' keeps everything.",
)
@click.option(
    "-O",
    "--filter-option",
    "filter_option",
    multiple=True,
    metavar="FILTER.OPTION=VALUE",
    help="Option of one filter, repeatable: -O length.min_chars=400 "
    "-O nav_header.extra_labels='[Deals of the day]' -O minhash.threshold=0.9",
)
@click.option(
    "--text-field",
    default=default(CorpusConfig, "text_field"),
    show_default=True,
    help="JSONL/parquet/HF field.",
)
@click.option("--text-per-line", is_flag=True, help="Text files: one document per line.")
@click.option("--reader", default=None, help="Force a reader instead of guessing from names.")
@click.option("--segmenter", default=None, help="Force a segmenter (html_headers, text_headers).")
@click.option(
    "--extractor",
    default=default(CorpusConfig, "extractor"),
    show_default=True,
    help="Main-content extractor for HTML: resiliparse (clean, fast), trafilatura (clean, "
    "slow), lxml (the whole page minus boilerplate tags), or a plugin's.",
)
@click.option(
    "--overlap",
    type=click.Choice(["outermost", "all"]),
    default=default(CorpusConfig, "overlap"),
    show_default=True,
    help="Nested sections: keep the outermost that passes the filters (no text in two "
    "segments), or every section (an h2 segment and each of its h3s).",
)
@click.option(
    "-w",
    "--workers",
    type=click.IntRange(min=1),
    default=default(CorpusConfig, "workers"),
    help="Processes (default: every core). The output is the same for any number.",
)
@click.option(
    "--engine",
    type=click.Choice(sorted(ENGINES)),
    default=default(CorpusConfig, "engine"),
    show_default=True,
    help="Where the per-document work runs: local (processes on this machine) or ray (Ray "
    "tasks over a Ray cluster's CPUs, --workers of them at most; pip install "
    "'humpback-plugin[ray]').",
)
@ray_address_option
@click.option(
    "--no-header-fallback",
    type=click.Choice(["skip", "paragraphs"]),
    default=default(CorpusConfig, "no_header_fallback"),
    show_default=True,
    help="HTML without headers: skip (the paper's definition) or group its paragraphs.",
)
@click.option(
    "--keep-rejected", type=click.Path(dir_okay=False), help="Write rejected segments + reason."
)
@click.option("--summary", "summary_path", type=click.Path(dir_okay=False), help="Summary JSON.")
@click.option("--strict", is_flag=True, help="Stop at the first bad record instead of skipping.")
@click.option("--limit", type=int, default=None, help="Stop after this many kept segments.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or tables.")
def segment_command(
    inputs: tuple[str, ...],
    output: str,
    filters: str | None,
    filter_option: tuple[str, ...],
    text_field: str,
    text_per_line: bool,
    reader: str | None,
    segmenter: str | None,
    extractor: str,
    overlap: str,
    workers: int | None,
    engine: str,
    ray_address: str | None,
    no_header_fallback: str,
    keep_rejected: str | None,
    summary_path: str | None,
    strict: bool,
    limit: int | None,
    quiet: bool,
) -> None:
    """Split a web corpus into clean, header-delimited segments (paper section 3).

    \b
    INPUT: files, folders (read recursively), globs ('crawl/*.warc.gz') or hf:NAME[:SPLIT]
      *.warc[.gz] *.wet[.gz]   WARC HTML responses / WET text; a record whose
                               Content-Length lies is cut at the next WARC/ line
      *.html[.gz] *.htm         one page per file
      *.jsonl[.gz] *.json       rows with the text in --text-field (C4, dolma)
      *.txt[.gz] *.md           one document per file, or per line with --text-per-line
      *.xml[.bz2|.gz]           MediaWiki XML dumps: articles, == sections == as headers
      *.parquet                 pyarrow; hf:NAME or a save_to_disk folder: `datasets`
    A file of any other type, or whose content is not its type's format, stops the run
    with an error naming it (never an empty output).

    \b
    HTML goes through a main-content extractor first (--extractor). A segment is a header
    plus the text after it, lower-level headers included (an h2 segment holds its h3
    children). --overlap outermost (default) keeps the outermost section that passes the
    filters and drops the sections inside it, so no text is in two segments; a section
    too long to keep gives way to its sub-sections, its lead (text before the first
    sub-header) and, past 3,000 characters, parts of about equal size under the same
    header. Plain text is split on markdown or title-line headers, else its paragraphs
    are grouped up to the length maximum.

    \b
    Filters (cheap first; each rejected segment is counted under its first reason):
      length                 600-3,000 characters (paper)
      header_empty_or_upper  empty or ALL-CAPS header of up to 4 words (acronyms such as
                             "GPU" pass; plain-text segments without a header pass unless
                             -O header_empty_or_upper.require_header=true)
      header_caps_ratio      more than half the header's letters are capitals past the
                             first of a word ("NEWS Sports WEATHER"; acronyms pass)
      nav_header             the header is a navigation label (advertisement, forum,
                             quick links, free newsletter, related articles, 0 comments,
                             "More from <author>" ...), not a title containing such a word
      repetitive             two sentences with 3-gram Jaccard similarity >= 0.8
      exact_dedup            same text (case and spacing ignored) seen before
      english                py3langid says English with probability >= 0.5
      minhash                near-duplicate (MinHash LSH, Jaccard >= 0.8) of a kept one

    \b
    Bad input: malformed records (broken WARC records, bad JSON lines, undecodable lines,
    a gzip that breaks off) are skipped, counted and listed in the summary with file and
    line or byte offset; everything else is still read. --strict stops at the first one
    with an error instead. A missing file stops before any work. The output (and
    --keep-rejected, --summary) is written completely or not at all.

    \b
    --workers N runs extraction, segmentation and the per-segment filters in N
    processes; deduplication stays in this process, in input order, so the output is
    the same records in the same order as with one worker. --engine ray runs that work
    with Ray Data on a Ray cluster (--ray-address; deduplication still here), with the
    same output.

    \b
    Example:
      humpback segment crawl/*.warc.gz c4.jsonl -o segments.jsonl --summary seg.json
      humpback segment enwiki-pages-articles1.xml.bz2 -o wiki.jsonl --workers 8
      humpback segment crawl/*.warc.gz -o segments.jsonl --engine ray --ray-address auto
    """
    settings = CorpusConfig(
        inputs=list(inputs),
        text_field=text_field,
        text_per_line=text_per_line,
        reader=reader,
        segmenter=segmenter,
        extractor=extractor,
        overlap=overlap,
        workers=workers,
        engine=engine,
        no_header_fallback=no_header_fallback,
        filters=split_names(filters),
        filter_options=_parse_filter_options(filter_option),
        max_segments=limit,
    )
    with opened_engine(engine, ray_address, workers=workers) as runner:
        summary = segment_corpus(
            list(inputs),
            output,
            settings,
            keep_rejected=keep_rejected,
            strict=strict,
            progress=not quiet and sys.stderr.isatty(),
            engine=runner,
        )
    if summary_path:
        write_json_atomic(summary_path, summary.to_dict())
    if not quiet:
        print_summary(summary)
    if not summary.kept:
        click.echo(f"Warning: no segments kept; {output} is empty", err=True)
