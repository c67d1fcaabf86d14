"""Stage 2: a web corpus to clean, header-delimited segments (paper section 3).

``humpback segment INPUT... -o segments.jsonl`` reads WARC/WET, HTML, JSONL/JSON, text,
parquet or Hugging Face datasets, splits each document into segments (a header plus the
text that follows it), runs the cleaning filters and writes :class:`Segment` JSONL. The
pipeline calls :func:`segment_corpus`. Memory stays flat with corpus size apart from
the dedup indexes: documents stream one at a time and segments go straight to the
(atomically renamed) output file.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import click

from humpback_plugin.corpus_readers import BUILTIN_READERS, expand_inputs, reader_for
from humpback_plugin.hookspecs import hookimpl
from humpback_plugin.jsonl_io import InputError, atomic_writer
from humpback_plugin.records import Document, Segment
from humpback_plugin.segmenters import BUILTIN_SEGMENTERS

MAX_ERRORS_KEPT = 50


@dataclass
class SegmentSummary:
    """What a segmentation run did; ``to_dict()`` is what ``--summary`` writes."""

    output: str = ""
    filters: list[str] = field(default_factory=list)
    files: int = 0
    documents: int = 0
    documents_without_segments: int = 0
    segments: int = 0
    kept: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    by_source: dict[str, dict[str, int]] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    bad_records: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    without_headers: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _parse_filters(filters: list[str] | str | None, available: dict[str, Any]) -> list[str]:
    from humpback_plugin.segment_filters import DEFAULT_FILTERS

    if filters is None:
        names = [n for n in DEFAULT_FILTERS if n in available]
        # Third-party filters run after the built-ins unless named explicitly.
        names += [n for n in available if n not in DEFAULT_FILTERS]
        return names
    if isinstance(filters, str):
        filters = [f.strip() for f in filters.split(",")]
    names = [f for f in filters if f and f != "none"]
    unknown = [n for n in names if n not in available]
    if unknown:
        raise click.UsageError(
            f"unknown filter {unknown[0]!r}; available: {', '.join(sorted(available))}"
        )
    return names


def build_filters(
    names: list[str], filter_options: dict[str, dict[str, Any]], available: dict[str, Any]
) -> list[tuple[str, Callable[[Segment], str | None]]]:
    """Fresh filter instances (dedup filters keep state per run)."""
    built = []
    for name in names:
        options = dict(filter_options.get(name) or {})
        try:
            built.append((name, available[name](**options)))
        except (TypeError, ValueError) as exc:
            raise click.UsageError(f"bad options for filter {name!r}: {exc}") from exc
    return built


def segment_corpus(
    inputs: list[str],
    output: str | Path,
    *,
    filters: list[str] | str | None = None,
    filter_options: dict[str, dict[str, Any]] | None = None,
    keep_rejected: str | Path | None = None,
    text_field: str = "text",
    text_per_line: bool = False,
    reader: str | None = None,
    segmenter: str | None = None,
    segmenter_options: dict[str, Any] | None = None,
    strict: bool = False,
    limit: int | None = None,
    progress: bool = True,
    warn: Callable[[str], None] | None = None,
) -> SegmentSummary:
    """Segment and clean ``inputs`` into ``output`` (JSONL of :class:`Segment`).

    ``filters`` is a list (or comma-separated string) of filter names, ``None`` for all
    built-ins in the default order; ``filter_options`` maps a filter name to its keyword
    options, e.g. ``{"length": {"min_chars": 400}}``. Bad records are skipped and counted
    (``strict=True`` raises :class:`InputError` at the first one instead). ``limit`` stops
    after that many kept segments. Nothing is written unless the run completes.
    """
    from humpback_plugin.plugins import components

    warn = warn or (lambda message: click.echo(message, err=True))
    filter_options = filter_options or {}
    readers = components("register_corpus_readers") or BUILTIN_READERS
    segmenters = components("register_segmenters") or BUILTIN_SEGMENTERS
    available_filters = components("register_segment_filters")
    names = _parse_filters(filters, available_filters)
    checks = build_filters(names, filter_options, available_filters)
    if segmenter and segmenter not in segmenters:
        raise click.UsageError(
            f"unknown segmenter {segmenter!r}; available: {', '.join(sorted(segmenters))}"
        )
    seg_options = dict(segmenter_options or {})
    seg_options.setdefault("max_chars", (filter_options.get("length") or {}).get("max_chars", 3000))

    groups = expand_inputs(inputs, readers)
    total_files = sum(len(files) for _arg, files in groups)
    summary = SegmentSummary(output=str(output), filters=names)
    rejected: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    started = time.monotonic()

    def on_error(source: str, offset: Any, message: str) -> None:
        if strict:
            raise InputError(source, offset, message)
        summary.bad_records += 1
        if len(summary.errors) < MAX_ERRORS_KEPT:
            summary.errors.append({"source": source, "offset": offset, "message": message})
        if summary.bad_records <= 5:
            warn(f"skipped bad record: {InputError(source, offset, message)}")

    def on_skip(source: str, why: str) -> None:
        skipped[why] += 1

    read_options = {
        "text_field": text_field,
        "text_per_line": text_per_line,
        "on_error": on_error,
        "on_skip": on_skip,
    }

    progress_bar = _progress(progress)
    rejected_cm = atomic_writer(keep_rejected) if keep_rejected else _NullWriter()
    with atomic_writer(output) as out, rejected_cm as rejected_out, progress_bar as bar:
        task = bar.add_task("segmenting", total=total_files, docs=0, kept=0)
        done = False
        for arg, files in groups:
            counts = summary.by_source.setdefault(
                arg, {"files": 0, "documents": 0, "segments": 0, "kept": 0}
            )
            for path in files:
                counts["files"] += 1
                summary.files += 1
                try:
                    file_reader = reader_for(path, readers, reader)
                    for doc in file_reader.read(path, read_options):
                        summary.documents += 1
                        counts["documents"] += 1
                        produced = 0
                        for segment in _segments(doc, segmenters, segmenter, seg_options):
                            produced += 1
                            counts["segments"] += 1
                            summary.segments += 1
                            verdict = _first_rejection(segment, checks)
                            if verdict is None:
                                out.write(segment.model_dump_json(exclude_none=True) + "\n")
                                counts["kept"] += 1
                                summary.kept += 1
                                if limit is not None and summary.kept >= limit:
                                    done = True
                                    break
                            else:
                                rejected[verdict[1]] += 1
                                if keep_rejected:
                                    row = segment.model_dump(exclude_none=True)
                                    row["rejected_by"], row["reason"] = verdict
                                    rejected_out.write(json.dumps(row, ensure_ascii=False) + "\n")
                        if not produced:
                            summary.documents_without_segments += 1
                            if doc.html is not None and len(summary.without_headers) < 20:
                                summary.without_headers.append(f"{doc.source}:{doc.offset}")
                        if summary.documents % 50 == 0:
                            bar.update(task, docs=summary.documents, kept=summary.kept)
                        if done:
                            break
                except InputError as exc:
                    # A file that breaks off (truncated gzip) keeps what was read before.
                    if strict:
                        raise
                    on_error(exc.path, exc.where, exc.message)
                bar.update(task, advance=1, docs=summary.documents, kept=summary.kept)
                if done:
                    break
            if done:
                break
    summary.rejected = dict(rejected.most_common())
    summary.skipped = dict(skipped)
    summary.seconds = round(time.monotonic() - started, 3)
    if summary.without_headers:
        warn(
            f"{len(summary.without_headers)} HTML document(s) without headers gave no segments "
            f"(e.g. {summary.without_headers[0]}); --no-header-fallback paragraphs keeps them"
        )
    return summary


class _NullWriter:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def _progress(enabled: bool) -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("files  {task.fields[docs]} docs  {task.fields[kept]} segments kept"),
        console=Console(stderr=True),
        disable=not enabled,
        transient=False,
    )


def _segments(
    doc: Document, segmenters: dict[str, Any], forced: str | None, options: dict[str, Any]
) -> Any:
    name = forced or ("html_headers" if doc.html is not None else "text_headers")
    return segmenters[name](doc, options)


def _first_rejection(
    segment: Segment, checks: list[tuple[str, Callable[[Segment], str | None]]]
) -> tuple[str, str] | None:
    """(filter name, reason key) of the first filter that rejects, or None to keep."""
    for name, check in checks:
        reason = check(segment)
        if reason:
            return name, reason if reason == name else f"{name}:{reason}"
    return None


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


@click.command(name="segment")
@click.argument("inputs", nargs=-1, required=True)
@click.option(
    "-o", "--output", required=True, type=click.Path(dir_okay=False), help="Segments JSONL."
)
@click.option(
    "--filters",
    default=None,
    help="Comma-separated filters in order (default: all built-ins: "
    "length,header_empty_or_upper,header_caps_ratio,nav_header,repetitive,exact_dedup,"
    "english,minhash). 'none' keeps everything.",
)
@click.option(
    "-O",
    "--filter-option",
    "filter_option",
    multiple=True,
    metavar="FILTER.OPTION=VALUE",
    help="Option of one filter, repeatable: -O length.min_chars=400 "
    "-O nav_header.extra_phrases='[deals]' -O minhash.threshold=0.9",
)
@click.option("--text-field", default="text", show_default=True, help="JSONL/parquet/HF field.")
@click.option("--text-per-line", is_flag=True, help="Text files: one document per line.")
@click.option("--reader", default=None, help="Force a reader instead of guessing from names.")
@click.option("--segmenter", default=None, help="Force a segmenter (html_headers, text_headers).")
@click.option(
    "--no-header-fallback",
    type=click.Choice(["skip", "paragraphs"]),
    default="skip",
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
      *.warc[.gz] *.wet[.gz]   WARC HTML responses / WET text (warcio)
      *.html[.gz] *.htm         one page per file
      *.jsonl[.gz] *.json       rows with the text in --text-field (C4, dolma)
      *.txt[.gz] *.md           one document per file, or per line with --text-per-line
      *.parquet                 pyarrow; hf:NAME or a save_to_disk folder: `datasets`

    \b
    A segment is a header plus the text after it, lower-level headers included (an h2
    segment holds its h3 children). Plain text is split on markdown or title-line
    headers, else its paragraphs are grouped up to the length maximum.

    \b
    Filters (cheap first; each rejected segment is counted under its first reason):
      length                 600-3,000 characters (paper)
      header_empty_or_upper  empty or ALL-CAPS header (plain-text segments without a
                             header pass unless -O header_empty_or_upper.require_header=true)
      header_caps_ratio      more than half the header's letters are capitals
      nav_header             navigation/advert headers (advertisement, forum, quick link,
                             free newsletter, related articles, comments, share ...)
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
    Example:
      humpback segment crawl/*.warc.gz c4.jsonl -o segments.jsonl --summary seg.json
    """
    try:
        summary = segment_corpus(
            list(inputs),
            output,
            filters=filters,
            filter_options=_parse_filter_options(filter_option),
            keep_rejected=keep_rejected,
            text_field=text_field,
            text_per_line=text_per_line,
            reader=reader,
            segmenter=segmenter,
            segmenter_options={"no_header_fallback": no_header_fallback},
            strict=strict,
            limit=limit,
            progress=not quiet and sys.stderr.isatty(),
        )
    except InputError as exc:
        raise click.ClickException(str(exc)) from exc
    if summary_path:
        from humpback_plugin.jsonl_io import write_json_atomic

        write_json_atomic(summary_path, summary.to_dict())
    if not quiet:
        print_summary(summary)
    if not summary.kept:
        click.echo(f"Warning: no segments kept; {output} is empty", err=True)


# --- plugin hooks --------------------------------------------------------------------------


@hookimpl
def register_corpus_readers(register: Any) -> None:
    for name, reader in BUILTIN_READERS.items():
        register(name, reader)


@hookimpl
def register_segmenters(register: Any) -> None:
    for name, segmenter in BUILTIN_SEGMENTERS.items():
        register(name, segmenter)


@hookimpl
def register_commands(cli: Any) -> None:
    cli.add_command(segment_command)
