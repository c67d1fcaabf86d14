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
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from humpback_plugin.core.config import DEFAULT_SEGMENT_FILTERS, SEGMENT_MAX_CHARS, CorpusConfig
from humpback_plugin.core.console import say
from humpback_plugin.core.errors import InputError, UnknownComponent
from humpback_plugin.core.jsonl_io import atomic_writer
from humpback_plugin.core.records import Document, Segment
from humpback_plugin.plugins import build, components
from humpback_plugin.stages.corpus.readers import expand_inputs, reader_for

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


def _parse_filters(filters: list[str] | None, available: dict[str, Any]) -> list[str]:
    if filters is None:
        names = [n for n in DEFAULT_SEGMENT_FILTERS if n in available]
        # Third-party filters run after the built-ins unless named explicitly.
        names += [n for n in available if n not in DEFAULT_SEGMENT_FILTERS]
        return names
    names = [f for f in filters if f and f != "none"]
    unknown = [n for n in names if n not in available]
    if unknown:
        raise UnknownComponent(
            f"unknown segment filter {unknown[0]!r}; available: {', '.join(sorted(available))}"
        )
    return names


def segment_corpus(
    inputs: list[str],
    output: str | Path,
    settings: CorpusConfig | None = None,
    *,
    keep_rejected: str | Path | None = None,
    strict: bool = False,
    progress: bool = True,
    warn: Callable[[str], None] | None = None,
) -> SegmentSummary:
    """Segment and clean ``inputs`` into ``output`` (JSONL of :class:`Segment`).

    ``settings`` picks the reader, segmenter and filters by name (``filters=None``: every
    built-in in the default order, then plugins' filters) with their options, e.g.
    ``filter_options={"length": {"min_chars": 400}}``; its ``inputs`` field is what the run
    passes as ``inputs``. Bad records are skipped and counted (``strict=True`` raises
    :class:`InputError` at the first one instead). ``max_segments`` stops after that many
    kept segments. Nothing is written unless the run completes.
    """
    settings = settings or CorpusConfig()
    warn = warn or say
    filter_options = settings.filter_options
    readers = components("register_corpus_readers")
    segmenters = components("register_segmenters")
    available_filters = components("register_segment_filters")
    names = _parse_filters(settings.filters, available_filters)
    checks = build("register_segment_filters", names, filter_options)
    segmenter = settings.segmenter
    if segmenter and segmenter not in segmenters:
        raise UnknownComponent(
            f"unknown segmenter {segmenter!r}; available: {', '.join(sorted(segmenters))}"
        )
    if settings.reader and settings.reader not in readers:
        raise UnknownComponent(
            f"unknown corpus reader {settings.reader!r}; available: {', '.join(sorted(readers))}"
        )
    seg_options = {
        "no_header_fallback": settings.no_header_fallback,
        # Segments are cut to the length filter's maximum.
        "max_chars": (filter_options.get("length") or {}).get("max_chars", SEGMENT_MAX_CHARS),
    }
    limit = settings.max_segments
    reader = settings.reader

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
        "text_field": settings.text_field,
        "text_per_line": settings.text_per_line,
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
