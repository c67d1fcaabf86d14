"""Stage 2: a web corpus to clean, header-delimited segments (paper section 3).

``humpback segment INPUT... -o segments.jsonl`` reads WARC/WET, HTML, JSONL/JSON, text,
parquet or Hugging Face datasets, splits each document into segments (a header plus the
text that follows it), runs the cleaning filters and writes :class:`Segment` JSONL. The
pipeline calls :func:`segment_corpus`. Documents are read here, one file after the
other, and processed by the workers of an engine (:mod:`humpback_plugin.core.engine`;
the per-document work is :mod:`.work`); the stateful filters (deduplication) run here on
the results, in input order. Memory stays flat with corpus size apart from the dedup
indexes: a bounded number of documents is in flight and segments go straight to the
(atomically renamed) output file.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from humpback_plugin.core.config import DEFAULT_SEGMENT_FILTERS, SEGMENT_MAX_CHARS, CorpusConfig
from humpback_plugin.core.console import say
from humpback_plugin.core.engine import Engine, make_engine
from humpback_plugin.core.errors import InputError, UnknownComponent
from humpback_plugin.core.jsonl_io import atomic_writer
from humpback_plugin.plugins import build, components
from humpback_plugin.stages.corpus.readers import UnrecognisedFormat, expand_inputs, reader_for
from humpback_plugin.stages.corpus.work import (
    DocResult,
    FileResult,
    WorkItem,
    WorkPlan,
    final_verdict,
    process_item,
)

MAX_ERRORS_KEPT = 50
# Documents per task sent to a worker; the engine keeps two tasks per worker in flight.
DOCS_PER_TASK = 16


@dataclass
class SegmentSummary:
    """What a segmentation run did; ``to_dict()`` is what ``--summary`` writes."""

    output: str = ""
    filters: list[str] = field(default_factory=list)
    extractor: str = ""
    workers: int = 1
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
    engine: Engine | None = None,
) -> SegmentSummary:
    """Segment and clean ``inputs`` into ``output`` (JSONL of :class:`Segment`).

    ``settings`` picks the reader, extractor, segmenter and filters by name
    (``filters=None``: every built-in in the default order, then plugins' filters) with
    their options, e.g. ``filter_options={"length": {"min_chars": 400}}``; its ``inputs``
    field is what the run passes as ``inputs``. Documents are processed by
    ``settings.workers`` processes of ``settings.engine`` (:mod:`.work`), or by ``engine``
    when given (opened and closed by the caller, e.g. a run's Ray engine shared by its
    stages); the output is the same for any number and any engine. Bad records are
    skipped and counted (``strict=True`` raises :class:`InputError` at the first one
    instead); a file no reader recognises stops the run before any work.
    ``max_segments`` stops after that many kept segments. Nothing is written unless the
    run completes.
    """
    settings = settings or CorpusConfig()
    warn = warn or say
    filter_options = settings.filter_options
    readers = components("register_corpus_readers")
    available_filters = components("register_segment_filters")
    names = _parse_filters(settings.filters, available_filters)
    _check_names(settings, readers)
    # Built here once: bad options fail before any work, and forked workers inherit what
    # the filters load (the language model).
    built = build("register_segment_filters", names, filter_options)
    stateful = [
        (index, name, check)
        for index, (name, check) in enumerate(built)
        if not getattr(available_filters[name], "stateless", False)
    ]
    stateful_names = {name for _i, name, _c in stateful}
    length_options = filter_options.get("length") or {}
    plan = WorkPlan(
        extractor=settings.extractor,
        segmenter=settings.segmenter,
        segment_options={
            "no_header_fallback": settings.no_header_fallback,
            # Segments are cut to the length filter's maximum.
            "max_chars": length_options.get("max_chars", SEGMENT_MAX_CHARS),
            "split_long": settings.overlap == "outermost",
        },
        stateless_filters=tuple(
            (index, name) for index, name in enumerate(names) if name not in stateful_names
        ),
        stateful_filters=tuple((index, name) for index, name, _check in stateful),
        filter_options=filter_options,
        overlap=settings.overlap,
        read_options={"text_field": settings.text_field, "text_per_line": settings.text_per_line},
        strict=strict,
    )
    limit = settings.max_segments
    groups = expand_inputs(inputs, readers)
    # Every file's reader is known before any work: an unknown format stops here.
    files = [
        (arg_index, path, reader_for(path, readers, settings.reader))
        for arg_index, (_arg, paths) in enumerate(groups)
        for path in paths
    ]
    owned = engine is None
    if engine is None:
        engine = make_engine(settings.engine, settings.workers)
    summary = SegmentSummary(
        output=str(output), filters=names, extractor=settings.extractor, workers=engine.workers
    )
    for arg, _paths in groups:
        summary.by_source.setdefault(arg, {"files": 0, "documents": 0, "segments": 0, "kept": 0})
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

    reader_names = {id(reader): name for name, reader in readers.items()}

    def items() -> Iterator[WorkItem]:
        """Documents in input order (read here, one file after the other); a per-file
        reader's files go to the workers as paths."""
        for arg_index, path, file_reader in files:
            if getattr(file_reader, "per_file", False):
                yield WorkItem(arg=arg_index, path=path, reader=reader_names[id(file_reader)])
                continue
            try:
                for doc in file_reader.read(path, read_options):
                    yield WorkItem(arg=arg_index, path=path, doc=doc)
            except UnrecognisedFormat:
                raise
            except InputError as exc:
                # A file that breaks off (truncated gzip) keeps what was read before.
                if strict:
                    raise
                on_error(exc.path, exc.where, exc.message)
            yield WorkItem(arg=arg_index, path=path)

    work = partial(process_item, plan=plan)
    rejected_cm = atomic_writer(keep_rejected) if keep_rejected else _NullWriter()
    # The engine starts its workers before the progress bar starts its thread.
    if not owned and hasattr(engine, "start"):
        engine.start()
    with (
        engine if owned else contextlib.nullcontext(),
        atomic_writer(output) as out,
        rejected_cm as rejected_out,
        _progress(progress) as bar,
    ):
        task = bar.add_task("segmenting", total=len(files), docs=0, kept=0)

        def take(result: DocResult) -> bool:
            """Count and write one document's segments; True once the limit is reached."""
            counts = summary.by_source[groups[result.arg][0]]
            summary.documents += 1
            counts["documents"] += 1
            for segment, worker_verdict in result.segments:
                counts["segments"] += 1
                summary.segments += 1
                verdict = final_verdict(segment, worker_verdict, stateful)
                if verdict is None:
                    out.write(segment.model_dump_json(exclude_none=True) + "\n")
                    counts["kept"] += 1
                    summary.kept += 1
                    if limit is not None and summary.kept >= limit:
                        return True
                else:
                    rejected[verdict[2]] += 1
                    if keep_rejected:
                        row = segment.model_dump(exclude_none=True)
                        row["rejected_by"], row["reason"] = verdict[1], verdict[2]
                        rejected_out.write(json.dumps(row, ensure_ascii=False) + "\n")
            if not result.segments:
                summary.documents_without_segments += 1
                if result.has_html and len(summary.without_headers) < 20:
                    summary.without_headers.append(result.doc_label)
            if summary.documents % 50 == 0:
                bar.update(task, docs=summary.documents, kept=summary.kept)
            return False

        for result in engine.map_ordered(work, items(), chunk_size=DOCS_PER_TASK):
            if isinstance(result, FileResult):
                # A file a worker read: its problems first, as they were met.
                for source, offset, message in result.errors:
                    on_error(source, offset, message)
                for source, why in result.skips:
                    on_skip(source, why)
                if any(take(doc_result) for doc_result in result.docs):
                    break
            elif not result.end_of_file:
                if take(result):
                    break
                continue
            counts = summary.by_source[groups[result.arg][0]]
            counts["files"] += 1
            summary.files += 1
            bar.update(task, advance=1, docs=summary.documents, kept=summary.kept)
    summary.rejected = dict(rejected.most_common())
    summary.skipped = dict(skipped)
    summary.seconds = round(time.monotonic() - started, 3)
    if summary.without_headers:
        warn(
            f"{len(summary.without_headers)} HTML document(s) without headers gave no segments "
            f"(e.g. {summary.without_headers[0]}); --no-header-fallback paragraphs keeps them"
        )
    return summary


def _check_names(settings: CorpusConfig, readers: dict[str, Any]) -> None:
    """Unknown component names fail before any work, listing what is available."""
    for hook, kind, name in (
        ("register_segmenters", "segmenter", settings.segmenter),
        ("register_extractors", "extractor", settings.extractor),
    ):
        available = components(hook)
        if name and name not in available:
            raise UnknownComponent(
                f"unknown {kind} {name!r}; available: {', '.join(sorted(available))}"
            )
    if settings.reader and settings.reader not in readers:
        raise UnknownComponent(
            f"unknown corpus reader {settings.reader!r}; available: {', '.join(sorted(readers))}"
        )


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
