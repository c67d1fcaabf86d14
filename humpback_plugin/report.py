"""``humpback report RUN_DIR``: one self-contained HTML page and a markdown summary of a run.

Everything is read in a single streaming pass per file with bounded memory (running
mean/variance, fixed histogram bins, reservoir samples), so a report on half a million
candidates costs seconds and a few megabytes. Every field of the run directory is optional:
a half-finished run renders and the page says what is missing.

All text from the run is web data: it is HTML-escaped everywhere, and the page carries a
Content-Security-Policy that forbids scripts and external loads, so a missed escape still
cannot run anything. Plots are matplotlib PNGs embedded as base64 (``pip install
'humpback-plugin[report]'``); without matplotlib the page has the tables only.
"""

from __future__ import annotations

import base64
import bisect
import html
import io
import json
import math
import random
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click

from humpback_plugin.hookspecs import hookimpl
from humpback_plugin.jsonl_io import InputError, atomic_writer, iter_jsonl, write_jsonl_atomic
from humpback_plugin.pipeline import stage_names

STAGES = tuple(stage_names(2))  # the paper runs two iterations

# Paper, Table 2: (instruction mean, std, output mean, std) in characters.
PAPER_LENGTHS: dict[str, tuple[float, float, float, float]] = {
    "seed": (148, 322, 1072, 818),
    "A5(2)": (115, 175, 1663, 616),
    "A4(2)": (206, 298, 1985, 649),
    "augmented": (352, 134, 1722, 653),
}

SCORE_BUCKETS = ("1", "2", "3", "4", "5", "unscored")

# Log-spaced length bins (10 per decade) from 10 to 100,000 characters, plus [0, 10).
LENGTH_EDGES = [0.0] + [10 ** (1 + i / 10) for i in range(41)]


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
        self.prompt_tokens += _as_int(usage.get("prompt_tokens"))
        self.completion_tokens += _as_int(usage.get("completion_tokens"))


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
    record_counts: dict[str, int] = field(default_factory=dict)
    rejected_reasons: dict[str, Counter] = field(default_factory=dict)
    augment_usage: Usage = field(default_factory=Usage)
    iterations: dict[int, IterationData] = field(default_factory=dict)
    audit: dict[str, Reservoir] = field(default_factory=dict)
    audit_iteration: int | None = None
    missing: list[str] = field(default_factory=list)
    skipped_lines: list[str] = field(default_factory=list)
    skipped_total: int = 0

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


def _as_int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _number(value: Any) -> float | None:
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
    path = run_dir / "manifest.json"
    if not path.exists():
        return {}, "manifest.json is missing: stage status, models and timings are unknown"
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


def collect(
    run_dir: str | Path,
    *,
    examples_per_score: int = 3,
    audit_per_score: int = 20,
    audit_iteration: int | None = None,
    seed: int = 0,
    strict: bool = False,
    progress: Any = None,
) -> RunData:
    """Read a run directory in one streaming pass per file.

    With ``strict`` a malformed line raises :class:`InputError`; otherwise it is skipped
    and listed in the report (a running stage may be mid-write).
    """
    run_dir = Path(run_dir)
    manifest, problem = read_manifest(run_dir)
    data = RunData(run_dir=run_dir, manifest=manifest, manifest_problem=problem)

    def on_error(path: str, where: Any, message: str) -> None:
        data.skipped_total += 1
        if len(data.skipped_lines) < 20:
            data.skipped_lines.append(f"{path}:{where}: {message}")

    def stream(rel: str, stage: str):
        path = run_dir / rel
        if not path.exists():
            status = data.stage(stage).get("status")
            why = f" (stage {stage}: {status})" if status else ""
            data.missing.append(f"{rel}{why}")
            return
        task = progress.add_task(rel, total=None) if progress is not None else None
        count = 0
        for _, record in iter_jsonl(path, on_error=None if strict else on_error):
            count += 1
            if task is not None and count % 1000 == 0:
                progress.update(task, completed=count)
            yield record
        if task is not None:
            progress.update(task, completed=count, total=count)
        data.record_counts[rel] = count

    seed_lengths = data.lengths.setdefault("seed", PairLengths())
    for record in stream("seed/seed.jsonl", "seed"):
        seed_lengths.add(record)

    segment_lengths = data.lengths.setdefault("segments", PairLengths())
    for record in stream("segments/segments.jsonl", "segments"):
        segment_lengths.add(record, output_field="text")

    for stage, rel in (
        ("segments", "segments/rejected.jsonl"),
        ("augment", "augment/rejected.jsonl"),
    ):
        if (run_dir / rel).exists():
            reasons = data.rejected_reasons.setdefault(stage, Counter())
            for record in stream(rel, stage):
                reasons[str(record.get("reason") or "unknown")] += 1

    augmented = data.lengths.setdefault("augmented", PairLengths())
    for record in stream("augment/candidates.jsonl", "augment"):
        augmented.add(record)
        data.augment_usage.add(record.get("provenance"))

    iterations = sorted(
        {_as_int(name.split("_", 1)[1]) for name in data.stages if _is_curate(name)}
        | {_as_int(p.name.split("_", 1)[1]) for p in run_dir.glob("curate_*") if _is_curate(p.name)}
        | {1, 2}
    )
    present = [k for k in iterations if (run_dir / f"curate_{k}" / "scored.jsonl").exists()]
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
        it.has_scored = (run_dir / stage / "scored.jsonl").exists()
        for record in stream(f"{stage}/scored.jsonl", stage):
            it.scored_records += 1
            bucket = score_bucket(record.get("score"))
            it.histogram[bucket] += 1
            it.status[str(record.get("score_status") or "unknown")] += 1
            expected = _number(record.get("expected_score"))
            if expected is not None and 1 <= expected <= 5:
                it.expected_scores[round((expected - 1) * 4)] += 1
            it.lengths_by_bucket.setdefault(bucket, PairLengths()).add(record)
            if bucket in ("4", "5"):
                it.score_at_least_4.add(record)
            it.usage.add(record.get("judge_provenance"))
            it.examples.setdefault(bucket, Reservoir(examples_per_score, example_rng)).offer(record)
            if k == audit_iteration:
                data.audit.setdefault(bucket, Reservoir(audit_per_score, audit_rng)).offer(record)
        it.has_curated = (run_dir / stage / "curated.jsonl").exists()
        for record in stream(f"{stage}/curated.jsonl", stage):
            it.curated_records += 1
            it.curated.add(record)
        data.iterations[k] = it
    return data


def _is_curate(name: str) -> bool:
    prefix, _, number = name.partition("_")
    return prefix == "curate" and number.isdigit()


# --- derived tables ----------------------------------------------------------------------


def _records(entries: Any) -> int | None:
    if not isinstance(entries, list):
        return None
    counts = [e.get("records") for e in entries if isinstance(e, dict)]
    counts = [c for c in counts if isinstance(c, int)]
    return sum(counts) if counts else None


def stage_rows(data: RunData) -> list[dict[str, Any]]:
    """One row per pipeline stage: status, model, counts, yield, time."""
    rows = []
    names = list(STAGES) + [n for n in data.stages if n not in STAGES]
    for name in names:
        stage = data.stage(name)
        stats = data.stats(name)
        inputs = _records(stage.get("inputs"))
        if inputs is None:
            inputs = _int_or_none(stats.get("inputs", stats.get("segments_in")))
        # The selected set is a stage's yield (curate: curated, not scored); otherwise the
        # first output is the stage's product (segments, not the rejected side file).
        outputs = _int_or_none(stats.get("selected"))
        if outputs is None:
            outputs = _records(stage.get("outputs", [])[:1])
        if outputs is None:
            outputs = _int_or_none(stats.get("kept"))
        yield_ = f"{outputs / inputs:.1%}" if inputs and outputs is not None else "—"
        elapsed = _number(stage.get("elapsed_s"))
        if elapsed is None:
            elapsed = _number(stats.get("elapsed_s"))
        rows.append(
            {
                "stage": name,
                "status": stage.get("status") or "not in manifest",
                "iteration": stage.get("iteration"),
                "model": stage.get("model") or "",
                "inputs": inputs,
                "outputs": outputs,
                "yield": yield_,
                "elapsed": _duration(elapsed),
            }
        )
    return rows


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 90:
        return f"{seconds:.1f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def filter_tables(data: RunData) -> dict[str, list[tuple[str, int, str]]]:
    """Rejections per reason per stage: (reason, count, share of the stage's inputs)."""
    tables = {}
    for name in STAGES:
        stats = data.stats(name)
        reasons = stats.get("rejected_by_reason")
        if isinstance(reasons, dict) and reasons:
            counts = {str(k): _as_int(v) for k, v in reasons.items()}
        elif data.rejected_reasons.get(name):
            counts = dict(data.rejected_reasons[name])
        else:
            continue
        inputs = _int_or_none(stats.get("inputs", stats.get("segments_in")))
        if inputs is None:
            inputs = _records(data.stage(name).get("inputs"))
        rows = [
            (reason, count, f"{count / inputs:.1%}" if inputs else "—")
            for reason, count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        ]
        tables[name] = rows
    return tables


def length_rows(data: RunData) -> list[dict[str, Any]]:
    """Our mean ± std (characters) beside the paper's Table 2 where it has a figure."""
    rows = []

    def add(label: str, lengths: PairLengths | None, paper: str | None, note: str = "") -> None:
        ref = PAPER_LENGTHS.get(paper) if paper else None
        rows.append(
            {
                "label": label,
                "n": lengths.output.count if lengths else 0,
                "instruction": lengths.instruction.describe() if lengths else "—",
                "output": lengths.output.describe() if lengths else "—",
                "paper_instruction": f"{ref[0]:.0f} ± {ref[1]:.0f}" if ref else "—",
                "paper_output": f"{ref[2]:.0f} ± {ref[3]:.0f}" if ref else "—",
                "note": note,
            }
        )

    add("seed", data.lengths.get("seed"), "seed")
    add("segments (text)", data.lengths.get("segments"), None, "output side only")
    add("augmented, all candidates", data.lengths.get("augmented"), "augmented")
    for k, it in sorted(data.iterations.items()):
        if not it.has_scored and not it.has_curated:
            continue
        paper5 = "A5(2)" if k == 2 else None
        paper4 = "A4(2)" if k == 2 else None
        add(f"A5({k}): score = 5", it.lengths_by_bucket.get("5"), paper5)
        add(f"A4({k}): score ≥ 4", it.score_at_least_4, paper4)
        if it.has_curated:
            threshold = data.stats(f"curate_{k}").get("threshold")
            note = f"threshold {threshold}" if threshold is not None else ""
            add(f"curated({k}): selected", it.curated, None, note)
    return rows


def throughput_rows(data: RunData) -> list[dict[str, Any]]:
    """Time, request rate and token use of the model-calling stages."""
    rows = []
    candidates: list[tuple[str, Usage, int | None]] = [
        ("augment", data.augment_usage, data.record_counts.get("augment/candidates.jsonl"))
    ]
    for k, it in sorted(data.iterations.items()):
        candidates.append((f"curate_{k}", it.usage, it.scored_records if it.has_scored else None))
    for name, usage, records in candidates:
        stage, stats = data.stage(name), data.stats(name)
        if not stage and not stats and records is None:
            continue
        elapsed = _number(stats.get("elapsed_s"))
        if elapsed is None:
            elapsed = _number(stage.get("elapsed_s"))
        prompt = _int_or_none(stats.get("prompt_tokens"))
        completion = _int_or_none(stats.get("completion_tokens"))
        source = "manifest"
        if prompt is None and completion is None and usage.requests:
            prompt, completion, source = usage.prompt_tokens, usage.completion_tokens, "records"
        requests = _int_or_none(stats.get("scored", stats.get("inputs")))
        if requests is None:
            requests = records
        rate = _number(stats.get("requests_per_s"))
        if rate is None and requests and elapsed:
            rate = requests / elapsed
        rows.append(
            {
                "stage": name,
                "model": stage.get("model") or "",
                "servers": len(stage.get("server_urls") or []) or "—",
                "requests": requests,
                "elapsed": _duration(elapsed),
                "requests_per_s": f"{rate:.2f}" if rate else "—",
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "completion_tokens_per_s": (
                    f"{completion / elapsed:.0f}" if completion and elapsed else "—"
                ),
                "failed": _int_or_none(stats.get("failed")),
                "tokens_from": source if prompt is not None or completion is not None else "—",
            }
        )
    return rows


def score_histogram(data: RunData, k: int) -> dict[str, int]:
    """Counts per score from the records, else from the manifest's stats."""
    it = data.iterations.get(k)
    if it and it.has_scored:
        return {b: it.histogram.get(b, 0) for b in SCORE_BUCKETS}
    stats_hist = data.stats(f"curate_{k}").get("score_histogram")
    if isinstance(stats_hist, dict) and stats_hist:
        return {b: _as_int(stats_hist.get(b, 0)) for b in SCORE_BUCKETS}
    return {}


def config_rows(config: Any, prefix: str = "", limit: int = 60) -> list[tuple[str, str]]:
    """The config flattened to dotted keys, long values shortened."""
    rows: list[tuple[str, str]] = []
    if not isinstance(config, dict):
        return rows
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            rows.extend(config_rows(value, f"{name}.", limit))
        else:
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            rows.append((name, truncate(text, 160)))
        if len(rows) >= limit:
            rows = rows[:limit]
            rows.append(("…", "more keys in manifest.json"))
            break
    return rows


def truncate(text: Any, limit: int) -> str:
    text = "" if text is None else str(text)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… [{len(text) - limit:,} more characters]"


# --- plots -------------------------------------------------------------------------------


def plots_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _figure_png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=96, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def make_plots(data: RunData) -> dict[str, str]:
    """Base64 PNGs by name; empty when matplotlib is not installed."""
    if not plots_available():
        return {}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    plots: dict[str, str] = {}
    for k in sorted(data.iterations):
        hist = score_histogram(data, k)
        if not any(hist.values()):
            continue
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
        labels = [b for b in SCORE_BUCKETS if b != "unscored" or hist.get(b)]
        counts = [hist.get(b, 0) for b in labels]
        colors = ["#c0392b", "#e67e22", "#f1c40f", "#27ae60", "#1e8449", "#7f8c8d"]
        bars = axes[0].bar(labels, counts, color=colors[: len(labels)])
        axes[0].bar_label(bars, labels=[f"{c:,}" for c in counts], fontsize=8)
        axes[0].set_title(f"Iteration {k}: score")
        axes[0].set_xlabel("score")
        axes[0].set_ylabel("candidates")
        expected = data.iterations[k].expected_scores
        if any(expected):
            centers = [1 + i / 4 for i in range(len(expected))]
            axes[1].bar(centers, expected, width=0.22, color="#2e86c1")
            axes[1].set_title(f"Iteration {k}: expected score (logprobs)")
            axes[1].set_xlabel("expected score")
        else:
            axes[1].text(0.5, 0.5, "no expected scores\n(paper scoring mode)", ha="center")
            axes[1].set_axis_off()
        plots[f"scores_{k}"] = _figure_png(fig)

    groups = [("seed", data.lengths.get("seed")), ("augmented", data.lengths.get("augmented"))]
    groups.append(("segments", data.lengths.get("segments")))
    for k, it in sorted(data.iterations.items()):
        if it.score_at_least_4.output.count:
            groups.append((f"A4({k})", it.score_at_least_4))
        if it.lengths_by_bucket.get("5"):
            groups.append((f"A5({k})", it.lengths_by_bucket["5"]))
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    drawn = False
    for side, ax in zip(("instruction", "output"), axes, strict=True):
        low, high = math.inf, 0.0
        for label, lengths in groups:
            stats: LengthStats | None = getattr(lengths, side) if lengths else None
            if not stats or not stats.count:
                continue
            share = [c / stats.count for c in stats.bins]
            edges = [1.0] + LENGTH_EDGES[1:] + [LENGTH_EDGES[-1] * 10**0.1]
            ax.stairs(share, edges, label=f"{label} (n={stats.count:,})")
            used = [i for i, c in enumerate(stats.bins) if c]
            low = min(low, edges[used[0]])
            high = max(high, edges[used[-1] + 1])
            drawn = True
        ax.set_xscale("log")
        # Plain numbers at 1-2-5 steps; matplotlib's default minor labels collide on
        # ranges under a decade.
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        if low < high:
            ax.set_xlim(low / 1.5, high * 1.5)
        ax.set_title(f"{side} length")
        ax.set_xlabel("characters (log scale)")
        ax.set_ylabel("share of pairs")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    if drawn:
        plots["lengths"] = _figure_png(fig)
    else:
        plt.close(fig)
    return plots


# --- HTML --------------------------------------------------------------------------------

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


def _fmt(value: Any) -> str:
    if value is None or value == "":
        return "—"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def html_table(headers: list[str], rows: list[list[Any]], numeric: set[int] = frozenset()) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            cls = ' class="n"' if i in numeric else ""
            cells.append(f"<td{cls}>{esc(_fmt(cell))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def kv_table(rows: list[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th>{esc(k)}</th><td>{esc(_fmt(v))}</td></tr>" for k, v in rows)
    return f"<table><tbody>{body}</tbody></table>"


def _png_src(b64: str) -> str:
    return f"data:image/png;base64,{b64}"


def render_html(data: RunData, plots: dict[str, str], *, truncate_at: int = 600) -> str:
    manifest = data.manifest
    run_id = manifest.get("run_id") or data.run_dir.name
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts: list[str] = []
    add = parts.append
    add(
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Humpback report: {esc(run_id)}</title><style>{CSS}</style></head><body><main>"
    )
    add(f"<h1>Humpback run report: {esc(run_id)}</h1>")
    add(
        f'<p class="meta">Run directory <code>{esc(data.run_dir)}</code> · created '
        f"{esc(manifest.get('created_at') or 'unknown')} · report generated {esc(generated)}</p>"
    )
    add(
        '<nav><a href="#run">Run</a><a href="#stages">Stages</a><a href="#filters">Filters</a>'
        '<a href="#scores">Scores</a><a href="#lengths">Lengths</a>'
        '<a href="#throughput">Throughput</a><a href="#examples">Examples</a>'
        '<a href="#audit">Audit sample</a></nav>'
    )
    add(_notices_html(data, plots))

    add('<h2 id="run">Run</h2>')
    config = config_rows(manifest.get("config"))
    if config:
        add("<h3>Configuration</h3>" + html_table(["key", "value"], [list(r) for r in config]))
    else:
        add("<p>No configuration recorded.</p>")
    models = [
        [
            name,
            data.stage(name).get("model"),
            ", ".join(map(str, data.stage(name).get("server_urls") or [])),
        ]
        for name in data.stages
        if data.stage(name).get("model") or data.stage(name).get("server_urls")
    ]
    add("<h3>Models per stage</h3>")
    add(html_table(["stage", "model", "servers"], models) if models else "<p>None recorded.</p>")

    add('<h2 id="stages">Stages: counts and yield</h2>')
    rows = stage_rows(data)
    body = []
    for r in rows:
        status = esc(r["status"])
        body.append(
            f'<tr><td>{esc(r["stage"])}</td><td class="status-{status}">{status}</td>'
            f"<td>{esc(_fmt(r['iteration']))}</td><td>{esc(_fmt(r['model']))}</td>"
            f'<td class="n">{esc(_fmt(r["inputs"]))}</td>'
            f'<td class="n">{esc(_fmt(r["outputs"]))}</td>'
            f'<td class="n">{esc(r["yield"])}</td><td class="n">{esc(r["elapsed"])}</td></tr>'
        )
    add(
        "<table><thead><tr><th>stage</th><th>status</th><th>iteration</th><th>model</th>"
        "<th>input records</th><th>output records</th><th>yield</th><th>time</th></tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table>"
    )
    if data.record_counts:
        add("<h3>Records found in files</h3>")
        add(
            html_table(
                ["file", "records"], [[k, v] for k, v in data.record_counts.items()], numeric={1}
            )
        )

    add('<h2 id="filters">Filters: rejections per reason</h2>')
    tables = filter_tables(data)
    if not tables:
        add("<p>No rejection counts recorded yet.</p>")
    for stage, table_rows in tables.items():
        add(f"<h3>{esc(stage)}</h3>")
        add(html_table(["reason", "rejected", "share of inputs"], table_rows, numeric={1, 2}))

    add('<h2 id="scores">Scores per iteration</h2>')
    any_scores = False
    for k in sorted(data.iterations):
        hist = score_histogram(data, k)
        if not any(hist.values()):
            continue
        any_scores = True
        total = sum(hist.values())
        add(f'<h3>Iteration {k} (curate_{k})</h3><div class="row"><div>')
        add(
            html_table(
                ["score", "candidates", "share"],
                [
                    [b, hist[b], f"{hist[b] / total:.1%}"]
                    for b in SCORE_BUCKETS
                    if hist[b] or b != "unscored"
                ],
                numeric={1, 2},
            )
        )
        it = data.iterations[k]
        stats = data.stats(f"curate_{k}")
        facts = [
            ("mode", stats.get("mode")),
            ("threshold", stats.get("threshold")),
            ("selected", stats.get("selected", it.curated_records if it.has_curated else None)),
            ("score status", ", ".join(f"{s}: {n:,}" for s, n in sorted(it.status.items()))),
        ]
        add(kv_table([(a, b) for a, b in facts if b not in (None, "")]))
        add("</div>")
        if f"scores_{k}" in plots:
            add(
                f'<img alt="score histogram, iteration {k}" src="{_png_src(plots[f"scores_{k}"])}">'
            )
        add("</div>")
    if not any_scores:
        add("<p>No scores yet: the curate stages have not written <code>scored.jsonl</code>.</p>")

    add('<h2 id="lengths">Instruction and output lengths (characters)</h2>')
    add(
        "<p>Mean ± standard deviation in characters; the paper's figures are from its Table 2 "
        "(A4(2), A5(2): pairs scored ≥ 4 and = 5 at iteration 2).</p>"
    )
    add(
        html_table(
            [
                "set",
                "pairs",
                "instruction (ours)",
                "instruction (paper)",
                "output (ours)",
                "output (paper)",
                "note",
            ],
            [
                [
                    r["label"],
                    r["n"],
                    r["instruction"],
                    r["paper_instruction"],
                    r["output"],
                    r["paper_output"],
                    r["note"],
                ]
                for r in length_rows(data)
            ],
            numeric={1},
        )
    )
    if "lengths" in plots:
        add(f'<img alt="length distributions" src="{_png_src(plots["lengths"])}">')

    add('<h2 id="throughput">Throughput and token usage</h2>')
    tput = throughput_rows(data)
    if tput:
        add(
            html_table(
                [
                    "stage",
                    "model",
                    "servers",
                    "requests",
                    "time",
                    "requests/s",
                    "prompt tokens",
                    "completion tokens",
                    "completion tokens/s",
                    "failed",
                    "tokens from",
                ],
                [list(r.values()) for r in tput],
                numeric={2, 3, 4, 5, 6, 7, 8, 9},
            )
        )
    else:
        add("<p>No model-calling stage has run yet.</p>")

    add('<h2 id="examples">Examples per score</h2>')
    add(
        "<p>A random few pairs per score bucket (reservoir sample), truncated to "
        f"{truncate_at:,} characters. Text is web data, shown escaped.</p>"
    )
    shown = False
    for k, it in sorted(data.iterations.items()):
        if not it.has_scored:
            continue
        # The latest iteration opens by default; earlier ones fold away (no JS needed).
        is_latest = k == max(i for i, d in data.iterations.items() if d.has_scored)
        add(f"<details{' open' if is_latest else ''}><summary>Iteration {k}</summary>")
        for bucket in SCORE_BUCKETS:
            reservoir = it.examples.get(bucket)
            if not reservoir or not reservoir.items:
                continue
            shown = True
            add(f"<h4>Score {esc(bucket)} ({reservoir.seen:,} candidates)</h4>")
            for record in reservoir.items:
                add(_example_html(record, truncate_at))
        add("</details>")
    if not shown:
        add("<p>No scored candidates yet.</p>")

    add('<h2 id="audit">Sample for human audit</h2>')
    if data.audit_iteration is None:
        add("<p>No scored candidates to sample yet.</p>")
    else:
        counts = [[b, r.seen, len(r.items)] for b, r in data.audit.items() if r.seen]
        add(
            f"<p>A stratified random sample of iteration {data.audit_iteration}: up to the same "
            "number of pairs per score, written to <code>audit_sample.jsonl</code> with an empty "
            "<code>human_label</code> to fill in.</p>"
        )
        add(html_table(["score", "candidates", "sampled"], counts, numeric={1, 2}))

    if data.skipped_total:
        add("<h2>Skipped lines</h2>")
        add(f"<p>{data.skipped_total:,} malformed lines were skipped (first ones listed):</p>")
        add(
            "<ul>"
            + "".join(f"<li><code>{esc(s)}</code></li>" for s in data.skipped_lines)
            + "</ul>"
        )
    add("</main></body></html>\n")
    return "".join(parts)


def _notices_html(data: RunData, plots: dict[str, str]) -> str:
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
    if not plots_available():
        notes.append(
            "Plots need matplotlib: pip install 'humpback-plugin[report]'. Tables only below."
        )
    if data.skipped_total:
        notes.append(f"{data.skipped_total:,} malformed lines skipped (listed at the end).")
    if not notes:
        return ""
    items = "".join(f"<li>{esc(n)}</li>" for n in notes)
    return f'<div class="notice"><strong>Incomplete or partial</strong><ul>{items}</ul></div>'


def _example_html(record: dict[str, Any], limit: int) -> str:
    meta = [
        f"score {record.get('score')}",
        f"expected {record['expected_score']:.2f}"
        if _number(record.get("expected_score")) is not None
        else None,
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


# --- markdown ----------------------------------------------------------------------------


def md_cell(value: Any) -> str:
    text = _fmt(value).replace("\\", "\\\\").replace("|", "\\|")
    return " ".join(text.split())


def md_table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(md_cell(h) for h in headers) + " |"]
    lines.append("|" + "|".join("---" for _ in headers) + "|")
    lines.extend("| " + " | ".join(md_cell(c) for c in row) + " |" for row in rows)
    return "\n".join(lines)


def render_markdown(data: RunData) -> str:
    manifest = data.manifest
    run_id = manifest.get("run_id") or data.run_dir.name
    out = [f"# Humpback run report: {md_cell(run_id)}", ""]
    out.append(f"Run directory `{data.run_dir}`, created {md_cell(manifest.get('created_at'))}.")
    out.append(
        "Full report with plots and examples: `report.html`; audit sample: `audit_sample.jsonl`."
    )
    out.append("")
    notes = []
    if data.manifest_problem:
        notes.append(data.manifest_problem)
    notes += [
        f"stage {name} is {data.stage(name).get('status')}"
        for name in STAGES
        if data.stage(name) and data.stage(name).get("status") != "done"
    ]
    notes += [f"missing {m}" for m in data.missing]
    if data.skipped_total:
        notes.append(f"{data.skipped_total} malformed lines skipped")
    if notes:
        out += ["**Incomplete:**", ""] + [f"- {md_cell(n)}" for n in notes] + [""]

    out += ["## Stages", ""]
    out.append(
        md_table(
            ["stage", "status", "model", "inputs", "outputs", "yield", "time"],
            [
                [
                    r["stage"],
                    r["status"],
                    r["model"],
                    r["inputs"],
                    r["outputs"],
                    r["yield"],
                    r["elapsed"],
                ]
                for r in stage_rows(data)
            ],
        )
    )
    for stage, rows in filter_tables(data).items():
        out += ["", f"## Rejections: {stage}", "", md_table(["reason", "rejected", "share"], rows)]
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
        out += [
            "",
            f"## Scores, iteration {k}",
            "",
            md_table(["score", "candidates", "share"], rows),
        ]
    out += ["", "## Lengths (characters, mean ± std) beside the paper's Table 2", ""]
    out.append(
        md_table(
            ["set", "pairs", "instruction", "paper", "output", "paper", "note"],
            [
                [
                    r["label"],
                    r["n"],
                    r["instruction"],
                    r["paper_instruction"],
                    r["output"],
                    r["paper_output"],
                    r["note"],
                ]
                for r in length_rows(data)
            ],
        )
    )
    tput = throughput_rows(data)
    if tput:
        out += ["", "## Throughput and tokens", ""]
        out.append(
            md_table(
                [
                    "stage",
                    "model",
                    "requests",
                    "time",
                    "req/s",
                    "prompt tok",
                    "completion tok",
                    "compl tok/s",
                ],
                [
                    [
                        r["stage"],
                        r["model"],
                        r["requests"],
                        r["elapsed"],
                        r["requests_per_s"],
                        r["prompt_tokens"],
                        r["completion_tokens"],
                        r["completion_tokens_per_s"],
                    ]
                    for r in tput
                ],
            )
        )
    if data.audit_iteration is not None:
        sampled = sum(len(r.items) for r in data.audit.values())
        out += ["", f"Audit sample: {sampled} pairs from iteration {data.audit_iteration}."]
    return "\n".join(out) + "\n"


# --- writing -----------------------------------------------------------------------------


def audit_records(data: RunData) -> list[dict[str, Any]]:
    """The audit sample, ordered by score, with empty fields for the human's verdict."""
    rows = []
    for bucket in SCORE_BUCKETS:
        reservoir = data.audit.get(bucket)
        if not reservoir:
            continue
        for record in sorted(reservoir.items, key=lambda r: str(r.get("id"))):
            rows.append(
                {
                    "id": record.get("id"),
                    "iteration": data.audit_iteration,
                    "score": record.get("score"),
                    "expected_score": record.get("expected_score"),
                    "score_status": record.get("score_status"),
                    "instruction": record.get("instruction"),
                    "output": record.get("output"),
                    "header": record.get("header"),
                    "source": record.get("source"),
                    "segment_id": record.get("segment_id"),
                    "judge_text": record.get("judge_text"),
                    "human_label": "",
                    "human_notes": "",
                }
            )
    return rows


@dataclass
class ReportResult:
    html_path: Path
    markdown_path: Path
    audit_path: Path | None
    audit_count: int
    plots: int
    data: RunData


def build_report(
    run_dir: str | Path,
    output_dir: str | Path | None = None,
    *,
    examples_per_score: int = 3,
    audit_per_score: int = 20,
    audit_iteration: int | None = None,
    seed: int = 0,
    truncate_at: int = 600,
    plots: bool = True,
    strict: bool = False,
    progress: Any = None,
) -> ReportResult:
    """Read ``run_dir`` and write report.html, summary.md and audit_sample.jsonl atomically."""
    run_dir = Path(run_dir)
    output_dir = Path(output_dir) if output_dir else run_dir / "report"
    data = collect(
        run_dir,
        examples_per_score=examples_per_score,
        audit_per_score=audit_per_score,
        audit_iteration=audit_iteration,
        seed=seed,
        strict=strict,
        progress=progress,
    )
    images = make_plots(data) if plots else {}
    page = render_html(data, images, truncate_at=truncate_at)
    html_path = output_dir / "report.html"
    markdown_path = output_dir / "summary.md"
    with atomic_writer(html_path) as fh:
        fh.write(page)
    with atomic_writer(markdown_path) as fh:
        fh.write(render_markdown(data))
    audit_path = None
    audit_count = 0
    if data.audit_iteration is not None:
        audit_path = output_dir / "audit_sample.jsonl"
        audit_count = write_jsonl_atomic(audit_path, audit_records(data))
    return ReportResult(html_path, markdown_path, audit_path, audit_count, len(images), data)


@click.command(name="report")
@click.argument(
    "run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), metavar="RUN_DIR"
)
@click.option(
    "-o",
    "--output",
    "output_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for report.html, summary.md, audit_sample.jsonl  [default: RUN_DIR/report]",
)
@click.option("--examples", default=3, show_default=True, help="Example pairs shown per score.")
@click.option(
    "--audit-per-score", default=20, show_default=True, help="Pairs per score in the audit sample."
)
@click.option(
    "--audit-iteration",
    type=int,
    help="Curate iteration to sample for the audit  [default: the latest with scores]",
)
@click.option("--seed", default=0, show_default=True, help="Random seed for the samples.")
@click.option(
    "--truncate", "truncate_at", default=600, show_default=True, help="Characters shown per text."
)
@click.option("--no-plots", is_flag=True, help="Tables only, even when matplotlib is installed.")
@click.option("--strict", is_flag=True, help="Fail on a malformed line instead of skipping it.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or summary table.")
def report_command(
    run_dir: Path,
    output_dir: Path | None,
    examples: int,
    audit_per_score: int,
    audit_iteration: int | None,
    seed: int,
    truncate_at: int,
    no_plots: bool,
    strict: bool,
    quiet: bool,
) -> None:
    """Write an HTML report and a markdown summary of a run directory.

    \b
    Reads RUN_DIR/manifest.json and the stage files (seed, segments, augment,
    curate_K) in one streaming pass, and writes to RUN_DIR/report/:
      report.html         self-contained page: stage counts and yield, rejections per
                          filter, score histograms, lengths beside the paper's Table 2,
                          throughput and tokens, example pairs per score
      summary.md          the tables as markdown
      audit_sample.jsonl  N pairs per score with an empty human_label to fill in
    Works on a half-finished run and says what is missing. Plots need matplotlib:
    pip install 'humpback-plugin[report]'.

    \b
    Example:
      humpback report runs/2024-06-01 --audit-per-score 50 --seed 7
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
    from rich.table import Table

    console = Console(stderr=True)
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=console,
        disable=quiet,
        transient=True,
    )
    try:
        with progress:
            result = build_report(
                run_dir,
                output_dir,
                examples_per_score=examples,
                audit_per_score=audit_per_score,
                audit_iteration=audit_iteration,
                seed=seed,
                truncate_at=truncate_at,
                plots=not no_plots,
                strict=strict,
                progress=progress,
            )
    except InputError as exc:
        raise click.ClickException(str(exc)) from exc
    if quiet:
        click.echo(result.html_path)
        return
    table = Table(title="humpback report", show_header=True)
    table.add_column("wrote")
    table.add_column("what")
    plots_note = (
        f"{result.plots} plot{'s' if result.plots != 1 else ''}"
        if result.plots
        else "no plots (install humpback-plugin[report])"
    )
    if no_plots:
        plots_note = "no plots (--no-plots)"
    table.add_row(str(result.html_path), plots_note)
    table.add_row(str(result.markdown_path), "markdown summary")
    if result.audit_path:
        table.add_row(str(result.audit_path), f"{result.audit_count} pairs to audit")
    data = result.data
    if data.missing:
        table.add_row("missing", ", ".join(data.missing))
    if data.skipped_total:
        table.add_row("skipped", f"{data.skipped_total} malformed lines")
    console.print(table)
    # stdout carries only the page's path, for `open $(humpback report RUN_DIR -q)`.
    click.echo(result.html_path)


@hookimpl
def register_commands(cli: Any) -> None:
    cli.add_command(report_command)
