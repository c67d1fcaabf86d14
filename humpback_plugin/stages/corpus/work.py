"""The corpus stage's per-document work, pure so that any engine can run it on any core.

:func:`process_item` takes one document and returns its segments with their verdicts:
extract the main content, segment, run the *stateless* filters (those whose factory has
``stateless = True``: length, the header filters, repetitive, english) and resolve the
overlap of nested sections. The *stateful* filters (exact and MinHash deduplication) see
every segment of the corpus, so they run in the main process, in input order, on what
this returns (:func:`final_verdict`). That keeps the output of N workers identical to one
worker's: same records, same order, same dedup decisions.

Verdicts keep the configured filter order. A segment's verdict here is the first
stateless filter that rejects it, with that filter's index in the order; the main process
then runs only the stateful filters placed before that index, so each segment is counted
under the same first reason, and enters the same dedup indexes, as if all filters ran one
after the other.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from humpback_plugin.core.errors import InputError
from humpback_plugin.core.records import Document, Segment
from humpback_plugin.plugins import build, components
from humpback_plugin.stages.corpus.readers import UnrecognisedFormat

# (index of the filter in the configured order, or -1 for a decision no filter may
# change; filter name; reason key as counted in the summary)
Verdict = tuple[int, str, str]
OVERLAP = (-1, "overlap", "overlap:inside_parent")


@dataclass(frozen=True)
class WorkPlan:
    """Everything a worker needs to process a document: names and options only, so it
    pickles to any process; the worker builds the components once and caches them."""

    extractor: str
    segmenter: str | None
    segment_options: dict[str, Any]
    stateless_filters: tuple[tuple[int, str], ...]
    filter_options: dict[str, dict[str, Any]]
    overlap: str
    # (index, name): the stateful ones run in the main process; workers only prepare.
    stateful_filters: tuple[tuple[int, str], ...] = ()
    # For per-file readers, which run in the workers.
    read_options: dict[str, Any] = field(default_factory=dict)
    strict: bool = False

    def key(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, default=str)


@dataclass
class WorkItem:
    """One document of input argument ``arg``; or the file ``path`` to read here with the
    per-file reader named ``reader``; or (neither) the end of file ``path``."""

    arg: int
    path: str
    doc: Document | None = None
    reader: str | None = None


@dataclass
class DocResult:
    arg: int
    path: str
    end_of_file: bool = False
    doc_label: str = ""
    has_html: bool = False
    segments: list[tuple[Segment, Verdict | None]] = field(default_factory=list)


@dataclass
class FileResult:
    """A file read in the worker: its documents' results and the problems met reading it
    (``(source, offset, message)`` errors and ``(source, why)`` skips), in order."""

    arg: int
    path: str
    docs: list[DocResult] = field(default_factory=list)
    errors: list[tuple[str, Any, str]] = field(default_factory=list)
    skips: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class _Built:
    extract: Any
    segmenters: dict[str, Any]
    checks: list[tuple[int, str, Any]]
    # (index, prepare) of the stateful filters that can do part of their work here
    prepares: list[tuple[int, Any]]
    readers: dict[str, Any]


_BUILT: dict[str, _Built] = {}


def _built(plan: WorkPlan) -> _Built:
    key = plan.key()
    if key not in _BUILT:
        _BUILT.clear()  # one plan per run: do not keep the last run's filters around
        stateless = build(
            "register_segment_filters",
            [name for _index, name in plan.stateless_filters],
            plan.filter_options,
        )
        stateful = build(
            "register_segment_filters",
            [name for _index, name in plan.stateful_filters],
            plan.filter_options,
        )
        stateless_at = [index for index, _name in plan.stateless_filters]
        stateful_at = [index for index, _name in plan.stateful_filters]
        _BUILT[key] = _Built(
            extract=components("register_extractors")[plan.extractor],
            readers=components("register_corpus_readers"),
            segmenters=components("register_segmenters"),
            checks=[
                (index, name, check)
                for index, (name, check) in zip(stateless_at, stateless, strict=True)
            ],
            prepares=[
                (index, check.prepare)
                for index, (_name, check) in zip(stateful_at, stateful, strict=True)
                if callable(getattr(check, "prepare", None))
            ],
        )
    return _BUILT[key]


def _first_rejection(segment: Segment, checks: list[tuple[int, str, Any]]) -> Verdict | None:
    for index, name, check in checks:
        reason = check(segment)
        if reason:
            return index, name, reason if reason == name else f"{name}:{reason}"
    return None


def _inside_kept(segment: Segment, parents: dict[int, int | None], kept: set[int]) -> bool:
    parent = segment.meta.get("parent")
    while parent is not None:
        if parent in kept:
            return True
        parent = parents.get(parent)
    return False


def process_item(item: WorkItem, plan: WorkPlan) -> DocResult | FileResult:
    """Segments of one document with their verdicts (None: passed the stateless filters),
    or of every document of a file read here."""
    if item.reader is not None:
        return _read_here(item, plan)
    if item.doc is None:
        return DocResult(arg=item.arg, path=item.path, end_of_file=True)
    return _process_document(item.arg, item.path, item.doc, plan)


def _read_here(item: WorkItem, plan: WorkPlan) -> FileResult:
    result = FileResult(arg=item.arg, path=item.path)

    def on_error(source: str, offset: Any, message: str) -> None:
        if plan.strict:
            raise InputError(source, offset, message)
        result.errors.append((source, offset, message))

    options = {
        **plan.read_options,
        "on_error": on_error,
        "on_skip": lambda source, why: result.skips.append((source, why)),
    }
    try:
        for doc in _built(plan).readers[item.reader].read(item.path, options):
            result.docs.append(_process_document(item.arg, item.path, doc, plan))
    except UnrecognisedFormat:
        raise
    except InputError as exc:
        # A file that breaks off (truncated gzip) keeps what was read before.
        if plan.strict:
            raise
        result.errors.append((exc.path, exc.where, exc.message))
    return result


def _process_document(arg: int, path: str, doc: Document, plan: WorkPlan) -> DocResult:
    built = _built(plan)
    name = plan.segmenter or ("html_headers" if doc.html is not None else "text_headers")
    options = {**plan.segment_options, "extract": built.extract}
    label = f"{doc.source}:{doc.offset}"
    result = DocResult(arg=arg, path=path, doc_label=label, has_html=doc.html is not None)
    parents: dict[int, int | None] = {}
    kept: set[int] = set()
    for segment in built.segmenters[name](doc, options):
        verdict = _first_rejection(segment, built.checks)
        if plan.overlap == "outermost":
            parents[segment.position] = segment.meta.get("parent")
            if verdict is None and _inside_kept(segment, parents, kept):
                verdict = OVERLAP
            if verdict is None:
                kept.add(segment.position)
        for index, prepare in built.prepares:
            # The stateful filters the main process will run on this segment.
            if verdict is None or 0 <= index < verdict[0]:
                prepare(segment)
        result.segments.append((segment, verdict))
    return result


def final_verdict(
    segment: Segment, verdict: Verdict | None, stateful: list[tuple[int, str, Any]]
) -> Verdict | None:
    """The verdict after the stateful filters placed before the worker's verdict."""
    if verdict is not None and verdict[0] < 0:
        return verdict
    for index, name, check in stateful:
        if verdict is not None and index >= verdict[0]:
            break
        reason = check(segment)
        if reason:
            return index, name, reason if reason == name else f"{name}:{reason}"
    return verdict
