"""Reading a run directory for the report: one streaming pass per file, bounded memory.

Holds the streaming statistics (running mean/variance, fixed histogram bins, reservoir
samples), :class:`RunData` (what the renderers need) and :func:`collect`, which fills it.
A report on half a million candidates costs seconds and a few megabytes. Every file of
the run directory is optional: what is absent is listed in ``RunData.missing``.
"""

from __future__ import annotations

import bisect
import json
import math
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from humpback_plugin.core.errors import InputError
from humpback_plugin.core.jsonl_io import iter_jsonl
from humpback_plugin.core.layout import MANIFEST_NAME, RunLayout, is_curate_stage

SCORE_BUCKETS = ("1", "2", "3", "4", "5", "unscored")

# The paper runs two iterations: their curate folders are looked for even when absent.
PAPER_ITERATIONS = (1, 2)

# Log-spaced length bins (10 per decade) from 10 to 100,000 characters, plus [0, 10).
LENGTH_EDGES = [0.0] + [10 ** (1 + i / 10) for i in range(41)]

# Lines of malformed input quoted in the report; the rest are only counted.
SKIPPED_LINES_SHOWN = 20


class Progress(Protocol):
    """What :func:`collect` needs of a progress display (``rich.progress.Progress`` fits)."""

    def add_task(self, description: str, *, total: float | None) -> Any: ...

    def update(self, task_id: Any, **fields: Any) -> None: ...


# --- streaming statistics ----------------------------------------------------------------


@dataclass
class LengthStats:
    """Running mean/std (Welford) and a fixed log-bin histogram of text lengths."""

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0
    bins: list[int] = field(default_factory=lambda: [0] * len(LENGTH_EDGES))

    def add(self, length: int) -> None:
        self.count += 1
        delta = length - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (length - self.mean)
        # The last bin also holds everything over 100,000 characters.
        index = min(bisect.bisect_right(LENGTH_EDGES, length) - 1, len(self.bins) - 1)
        self.bins[index] += 1

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / (self.count - 1)) if self.count > 1 else 0.0

    def describe(self) -> str:
        return f"{self.mean:.0f} ± {self.std:.0f}" if self.count else "—"


@dataclass
class PairLengths:
    """Instruction and output lengths of a set of pairs."""

    instruction: LengthStats = field(default_factory=LengthStats)
    output: LengthStats = field(default_factory=LengthStats)

    def add(self, record: dict[str, Any], output_field: str = "output") -> None:
        instruction = record.get("instruction")
        if instruction is not None:
            self.instruction.add(len(str(instruction)))
        output = record.get(output_field)
        if output is not None:
            self.output.add(len(str(output)))


class Reservoir:
    """Keep a uniform random sample of ``size`` items from a stream of unknown length."""

    def __init__(self, size: int, rng: random.Random) -> None:
        self.size = size
        self.rng = rng
        self.seen = 0
        self.items: list[Any] = []

    def offer(self, item: Any) -> None:
        self.seen += 1
        if len(self.items) < self.size:
            self.items.append(item)
            return
        j = self.rng.randrange(self.seen)
        if j < self.size:
            self.items[j] = item


@dataclass
class Usage:
    """Token use summed from the ``usage`` of each record's provenance."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 0

    def add(self, provenance: Any) -> None:
        if not isinstance(provenance, dict):
            return
        usage = provenance.get("usage") or {}
        if not isinstance(usage, dict):
            return
        self.requests += 1
        self.prompt_tokens += as_int(usage.get("prompt_tokens"))
        self.completion_tokens += as_int(usage.get("completion_tokens"))


@dataclass
class IterationData:
    """What one ``curate_K`` folder holds, summarised."""

    iteration: int
    scored_records: int = 0
    curated_records: int = 0
    histogram: Counter = field(default_factory=Counter)
    status: Counter = field(default_factory=Counter)
    expected_scores: list[int] = field(default_factory=lambda: [0] * 17)  # 1.00..5.00 by 0.25
    lengths_by_bucket: dict[str, PairLengths] = field(default_factory=dict)
    score_at_least_4: PairLengths = field(default_factory=PairLengths)
    curated: PairLengths = field(default_factory=PairLengths)
    examples: dict[str, Reservoir] = field(default_factory=dict)
    usage: Usage = field(default_factory=Usage)
    has_scored: bool = False
    has_curated: bool = False


@dataclass
class RunData:
    """Everything the renderers need; built by :func:`collect`."""

    run_dir: Path
    manifest: dict[str, Any]
    manifest_problem: str | None = None
    lengths: dict[str, PairLengths] = field(default_factory=dict)
    record_counts: dict[str, int] = field(default_factory=dict)  # by path in the run dir
    rejected_reasons: dict[str, Counter] = field(default_factory=dict)  # from the side files
    augment_usage: Usage = field(default_factory=Usage)
    iterations: dict[int, IterationData] = field(default_factory=dict)
    audit: dict[str, Reservoir] = field(default_factory=dict)
    audit_iteration: int | None = None
    missing: list[str] = field(default_factory=list)
    skipped_lines: list[str] = field(default_factory=list)
    skipped_total: int = 0

    @property
    def layout(self) -> RunLayout:
        return RunLayout(self.run_dir)

    @property
    def run_id(self) -> str:
        return str(self.manifest.get("run_id") or self.run_dir.name)

    @property
    def stages(self) -> dict[str, dict[str, Any]]:
        stages = self.manifest.get("stages")
        return stages if isinstance(stages, dict) else {}

    def stage(self, name: str) -> dict[str, Any]:
        stage = self.stages.get(name)
        return stage if isinstance(stage, dict) else {}

    def stats(self, name: str) -> dict[str, Any]:
        stats = self.stage(name).get("stats")
        return stats if isinstance(stats, dict) else {}

    def records_in(self, path: Path) -> int | None:
        """Records read from ``path`` (a file of this run), None when it was absent."""
        return self.record_counts.get(self.layout.relative(path))


def as_int(value: Any) -> int:
    """``value`` as an int, 0 when it is not a number (manifests are hand-editable)."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def as_number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def score_bucket(score: Any) -> str:
    if isinstance(score, bool) or score is None:
        return "unscored"
    try:
        return str(int(score))
    except (TypeError, ValueError):
        return "unscored"


# --- reading the run directory -----------------------------------------------------------


def read_manifest(run_dir: Path) -> tuple[dict[str, Any], str | None]:
    """The manifest, or ``({}, why)`` when it is absent; malformed JSON raises InputError."""
    path = RunLayout(Path(run_dir)).manifest
    if not path.exists():
        return {}, f"{MANIFEST_NAME} is missing: stage status, models and timings are unknown"
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(path, f"byte {exc.start}", "not UTF-8") from exc
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as exc:
        where, message = exc.lineno, f"malformed JSON: {exc.msg} at column {exc.colno}"
        raise InputError(path, where, message) from exc
    if not isinstance(manifest, dict):
        raise InputError(path, None, "expected a JSON object")
    return manifest, None


def _iterations(data: RunData) -> list[int]:
    """Curate iterations named in the manifest or present as folders, and the paper's two."""
    names = {name for name in data.stages if is_curate_stage(name)}
    if data.run_dir.is_dir():
        names |= {p.name for p in data.run_dir.iterdir() if p.is_dir() and is_curate_stage(p.name)}
    return sorted({int(name.partition("_")[2]) for name in names} | set(PAPER_ITERATIONS))


def collect(
    run_dir: str | Path,
    *,
    examples_per_score: int = 3,
    audit_per_score: int = 20,
    audit_iteration: int | None = None,
    seed: int = 0,
    strict: bool = False,
    progress: Progress | None = None,
) -> RunData:
    """Read a run directory in one streaming pass per file.

    With ``strict`` a malformed line raises :class:`InputError`; otherwise it is skipped
    and listed in the report (a running stage may be mid-write).
    """
    run_dir = Path(run_dir)
    layout = RunLayout(run_dir)
    manifest, problem = read_manifest(run_dir)
    data = RunData(run_dir=run_dir, manifest=manifest, manifest_problem=problem)

    def on_error(path: str, where: Any, message: str) -> None:
        data.skipped_total += 1
        if len(data.skipped_lines) < SKIPPED_LINES_SHOWN:
            data.skipped_lines.append(f"{path}:{where}: {message}")

    def stream(path: Path, stage: str) -> Iterator[dict[str, Any]]:
        rel = layout.relative(path)
        if not path.exists():
            status = data.stage(stage).get("status")
            why = f" (stage {stage}: {status})" if status else ""
            data.missing.append(f"{rel}{why}")
            return
        task = progress.add_task(rel, total=None) if progress is not None else None
        count = 0
        for _, record in iter_jsonl(path, on_error=None if strict else on_error):
            count += 1
            if progress is not None and count % 1000 == 0:
                progress.update(task, completed=count)
            yield record
        if progress is not None:
            progress.update(task, completed=count, total=count)
        data.record_counts[rel] = count

    seed_lengths = data.lengths.setdefault("seed", PairLengths())
    for record in stream(layout.seed, "seed"):
        seed_lengths.add(record)

    segment_lengths = data.lengths.setdefault("segments", PairLengths())
    for record in stream(layout.segments, "segments"):
        segment_lengths.add(record, output_field="text")

    # Side files of rejected rows: the fallback for rejection counts when the manifest has
    # none. Each stage names the reason in its own field; optional, so never "missing".
    for stage, path, reason_field in (
        ("segments", layout.segments_rejected, "reason"),
        ("augment", layout.candidates_rejected, "rejected_reason"),
    ):
        if path.exists():
            reasons = data.rejected_reasons.setdefault(stage, Counter())
            for record in stream(path, stage):
                reasons[str(record.get(reason_field) or "unknown")] += 1

    augmented = data.lengths.setdefault("augmented", PairLengths())
    for record in stream(layout.candidates, "augment"):
        augmented.add(record)
        data.augment_usage.add(record.get("provenance"))

    iterations = _iterations(data)
    present = [k for k in iterations if layout.scored(k).exists()]
    if audit_iteration is None:
        audit_iteration = present[-1] if present else None
    data.audit_iteration = audit_iteration
    audit_rng = random.Random(f"audit:{seed}")
    if audit_iteration is not None:
        data.audit = {b: Reservoir(audit_per_score, audit_rng) for b in SCORE_BUCKETS}

    for k in iterations:
        it = IterationData(iteration=k)
        example_rng = random.Random(f"examples:{seed}:{k}")
        it.examples = {b: Reservoir(examples_per_score, example_rng) for b in SCORE_BUCKETS}
        stage = f"curate_{k}"
        it.has_scored = layout.scored(k).exists()
        for record in stream(layout.scored(k), stage):
            it.scored_records += 1
            bucket = score_bucket(record.get("score"))
            it.histogram[bucket] += 1
            it.status[str(record.get("score_status") or "unknown")] += 1
            expected = as_number(record.get("expected_score"))
            if expected is not None and 1 <= expected <= 5:
                it.expected_scores[round((expected - 1) * 4)] += 1
            it.lengths_by_bucket.setdefault(bucket, PairLengths()).add(record)
            if bucket in ("4", "5"):
                it.score_at_least_4.add(record)
            it.usage.add(record.get("judge_provenance"))
            it.examples.setdefault(bucket, Reservoir(examples_per_score, example_rng)).offer(record)
            if k == audit_iteration:
                data.audit.setdefault(bucket, Reservoir(audit_per_score, audit_rng)).offer(record)
        it.has_curated = layout.curated(k).exists()
        for record in stream(layout.curated(k), stage):
            it.curated_records += 1
            it.curated.add(record)
        data.iterations[k] = it
    return data
