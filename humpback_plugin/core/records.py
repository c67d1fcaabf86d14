"""The record types that flow between stages, one JSON object per JSONL line.

Every record has a stable ``id`` (a content hash), so re-running a stage can skip
what is done and shards can be merged without doubles.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from humpback_plugin.core.errors import InputError
from humpback_plugin.core.hashing import content_hash
from humpback_plugin.core.jsonl_io import iter_jsonl

M = TypeVar("M", bound=BaseModel)


class Record(BaseModel):
    # Unknown fields survive a round trip: plugins may add their own.
    model_config = ConfigDict(extra="allow")


class Document(Record):
    """One unit a corpus reader yields: an HTML page, a WARC response, a JSONL row."""

    source: str = Field(description="file path (and member) the document came from")
    offset: int | str = Field(description="line number, byte offset or row index inside the source")
    url: str | None = None
    text: str | None = None
    html: str | None = None
    meta: dict[str, Any] = Field(default_factory=dict)


class Segment(Record):
    """A header plus the text that follows it: the 'output' side of a candidate pair."""

    id: str
    text: str
    header: str | None = None
    source: str
    url: str | None = None
    position: int = 0
    meta: dict[str, Any] = Field(default_factory=dict)
    # Work a filter did ahead in a worker process (a MinHash signature), by the filter's
    # own key: travels with the segment between processes, never written out.
    _prepared: dict[str, Any] = PrivateAttr(default_factory=dict)

    @staticmethod
    def make_id(text: str) -> str:
        return content_hash("segment", text)


class SeedPair(Record):
    """A human-written (instruction, output) pair."""

    id: str
    instruction: str
    output: str
    source: dict[str, Any] = Field(default_factory=dict)

    @staticmethod
    def make_id(instruction: str, output: str) -> str:
        return content_hash("seed", instruction, output)


class Provenance(Record):
    """Where a generated text came from: enough to reproduce the request."""

    server_url: str
    model: str
    template_hash: str
    params: dict[str, Any]
    started_at: float
    finished_at: float
    usage: dict[str, int] = Field(default_factory=dict)
    attempts: int = 1


class Candidate(Record):
    """A backtranslated pair: generated instruction, web segment as output."""

    id: str
    segment_id: str
    instruction: str
    output: str
    header: str | None = None
    source: str | None = None
    finish_reason: str | None = None
    provenance: Provenance | None = None


class ScoredCandidate(Candidate):
    """A candidate rated by a judge model (self-curation)."""

    score: int | None = None
    expected_score: float | None = None
    probabilities: dict[str, float] | None = None
    judge_text: str | None = None
    score_status: str = Field(
        default="ok", description="ok | recovered (re-asked with constraint) | failed"
    )
    scoring_mode: str = "paper"
    iteration: int = 1
    judge_provenance: Provenance | None = None


class Failure(Record):
    """A record a stage could not process, kept with the reason so nothing is lost silently."""

    key: str
    stage: str
    input_id: str
    reason: str
    status_code: int | None = None
    message: str = ""


def read_records(
    path: str | os.PathLike,
    model: type[M],
    what: str,
    prepare: Callable[[dict[str, Any]], dict[str, Any]] = lambda obj: obj,
) -> Iterator[tuple[dict[str, Any], M]]:
    """Each line of a JSONL file as (the object ``prepare`` made of it, the validated
    ``model``). A line that is not a valid ``what`` stops with the file, line and fields."""
    for lineno, obj in iter_jsonl(path):
        obj = prepare(obj)
        try:
            record = model.model_validate(obj)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'record'}: {e['msg']}"
                for e in exc.errors()
            )
            raise InputError(path, lineno, f"not {what} ({problems})") from None
        yield obj, record
