"""Export stage: Axolotl-ready training sets for every model of the Humpback loop.

Three kinds of dataset (paper section 5):

* ``backward``: seed pairs reversed. The seed *response* becomes the user turn, built with
  the same ``backtranslation_request`` hook the augmentation stage sends at inference,
  and the seed *instruction* is what the assistant must write. Training and serving then
  see the same prompt.
* ``m0``: the forward model of iteration 0, seed pairs only, tagged with ``SYSTEM_SEED``.
* ``m<k>``: seed pairs plus the curated set A(k) of iteration k, the augmented pairs
  tagged with ``SYSTEM_AUGMENTED``.

Each dataset is written atomically with a ``.card.json`` beside it that records counts,
input files with their hashes, the iteration, thresholds and template hashes, so a
config (``humpback configs``) and a reader later can tell what a file holds.
"""

from __future__ import annotations

import heapq
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from humpback_plugin import SYSTEM_AUGMENTED, SYSTEM_SEED, __version__
from humpback_plugin.core.config import AugmentConfig, ExportConfig, default
from humpback_plugin.core.errors import HumpbackError, InputError, UsageError
from humpback_plugin.core.hashing import file_sha256, text_sha256
from humpback_plugin.core.jsonl_io import atomic_writer, iter_jsonl, write_json_atomic
from humpback_plugin.core.records import Segment
from humpback_plugin.plugins import load_template, pick, pm

CARD_SUFFIX = ".card.json"
# The backward model is trained on the prompt augmentation sends: the same template.
DEFAULT_BACKTRANSLATION_TEMPLATE = default(AugmentConfig, "template")
DEFAULT_FORMAT = default(ExportConfig, "format")


def get_exporter(name: str) -> Any:
    return pick("register_exporters", name)


# --- the backward model's prompt ----------------------------------------------------------


def _request_to_turns(request: dict[str, Any]) -> tuple[str | None, str]:
    """Split a chat or completions request body into (system, user) for an exporter row."""
    if "messages" in request:
        system = None
        user_parts = []
        for message in request["messages"]:
            if message.get("role") == "system":
                system = message.get("content")
            elif message.get("role") == "user":
                user_parts.append(message.get("content") or "")
        return system, "\n\n".join(user_parts)
    if "prompt" in request:
        return None, str(request["prompt"])
    raise HumpbackError(
        f"backtranslation_request returned neither messages nor prompt: {request!r}"
    )


# --- reading inputs ---------------------------------------------------------------------


@dataclass
class Pair:
    instruction: str
    output: str
    score: float | None = None
    id: str | None = None


def _text_field(path: Path, lineno: int, obj: dict[str, Any], name: str) -> str:
    value = obj.get(name)
    if not isinstance(value, str) or not value.strip():
        got = "missing" if value is None else f"{type(value).__name__} {value!r:.40}"
        raise InputError(path, lineno, f"field {name!r} must be a non-empty string ({got})")
    return value


def read_seed(path: str | Path) -> Iterator[Pair]:
    """Seed pairs (records.SeedPair JSONL: ``instruction``, ``output``)."""
    path = Path(path)
    for lineno, obj in iter_jsonl(path):
        yield Pair(
            instruction=_text_field(path, lineno, obj, "instruction"),
            output=_text_field(path, lineno, obj, "output"),
            id=obj.get("id"),
        )


def _score_of(path: Path, lineno: int, obj: dict[str, Any]) -> float | None:
    # The judge's 1-5 score; the expected score (logprobs mode) when there is no score.
    for name in ("score", "expected_score"):
        value = obj.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InputError(path, lineno, f"field {name!r} must be a number, got {value!r:.40}")
        return float(value)
    return None


def read_curated(path: str | Path, min_score: float | None = None) -> Iterator[Pair]:
    """Curated pairs (records.ScoredCandidate JSONL); ``min_score`` drops lower or unscored."""
    path = Path(path)
    for lineno, obj in iter_jsonl(path):
        pair = Pair(
            instruction=_text_field(path, lineno, obj, "instruction"),
            output=_text_field(path, lineno, obj, "output"),
            score=_score_of(path, lineno, obj),
            id=obj.get("id"),
        )
        if min_score is not None and (pair.score is None or pair.score < min_score):
            continue
        yield pair


# --- writing ----------------------------------------------------------------------------


@dataclass
class ExportResult:
    """One dataset written: where, how many rows, and its card."""

    name: str
    path: Path
    card_path: Path
    rows: int
    card: dict[str, Any] = field(default_factory=dict)


def card_path_for(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name.removesuffix(".jsonl") + CARD_SUFFIX)


def read_card(dataset_path: str | Path) -> dict[str, Any] | None:
    """The card written next to a dataset, or ``None`` when there is none."""
    card = card_path_for(dataset_path)
    if not card.exists():
        return None
    try:
        return json.loads(card.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(card, exc.lineno, f"malformed JSON: {exc.msg}") from exc


def _write_rows(path: Path, rows: Iterator[dict[str, Any]]) -> int:
    count = 0
    with atomic_writer(path) as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False))
            fh.write("\n")
            count += 1
    return count


def _source(path: str | Path, role: str, records: int) -> dict[str, Any]:
    return {"path": str(path), "role": role, "sha256": file_sha256(path), "records": records}


def _finish(
    name: str, out_path: Path, rows: int, card: dict[str, Any], exporter: Any
) -> ExportResult:
    card = {
        "dataset": name,
        "path": str(out_path),
        "rows": rows,
        "format": exporter.name,
        "axolotl_dataset": exporter.axolotl_dataset(str(out_path)),
        "humpback_version": __version__,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **card,
    }
    card_path = card_path_for(out_path)
    write_json_atomic(card_path, card)
    return ExportResult(name=name, path=out_path, card_path=card_path, rows=rows, card=card)


def export_backward(
    seed_path: str | Path,
    out_path: str | Path,
    *,
    template: str = DEFAULT_BACKTRANSLATION_TEMPLATE,
    format: str = DEFAULT_FORMAT,
) -> ExportResult:
    """Write the backward model's data: user = the ``backtranslation_request`` hook's prompt
    for the seed output (with ``template``, a name or a path, as augmentation sends it)."""
    exporter = get_exporter(format)
    prompt = load_template(template, required=("output",))
    out_path = Path(out_path)
    seen = 0

    def rows() -> Iterator[dict[str, Any]]:
        nonlocal seen
        for pair in read_seed(seed_path):
            seen += 1
            segment = Segment(id=Segment.make_id(pair.output), text=pair.output, source="seed")
            request = pm.hook.backtranslation_request(segment=segment, template=prompt.text)
            system, user = _request_to_turns(request)
            yield exporter.row(system, user, pair.instruction)

    count = _write_rows(out_path, rows())
    card = {
        "role": "backward",
        "iteration": 0,
        "counts": {"seed": count},
        "sources": [_source(seed_path, "seed", seen)],
        "templates": {"backtranslation": {"path": prompt.path, "sha256": prompt.sha256}},
    }
    return _finish("backward", out_path, count, card, exporter)


def export_forward(
    seed_path: str | Path,
    out_path: str | Path,
    *,
    curated_path: str | Path | None = None,
    iteration: int = 0,
    format: str = DEFAULT_FORMAT,
    min_score: float | None = None,
    max_augmented: int | None = None,
    augmented_ratio: float | None = None,
    seed_upsample: int = 1,
    seed_system: str | None = SYSTEM_SEED,
    augmented_system: str | None = SYSTEM_AUGMENTED,
) -> ExportResult:
    """Write the forward model M_k's data: seed pairs, plus curated A(k) when given.

    ``seed_upsample`` repeats every seed pair that many times. ``min_score`` keeps curated
    pairs whose (expected) score is at least that. The augmented part is then capped at
    ``max_augmented`` rows and at ``augmented_ratio`` augmented rows per (upsampled) seed
    row, keeping the highest-scored pairs first (file order breaks ties).
    """
    if seed_upsample < 1:
        raise UsageError("seed_upsample must be at least 1")
    if curated_path is None and iteration != 0:
        raise UsageError(f"M{iteration} needs the curated set of iteration {iteration}")
    exporter = get_exporter(format)
    out_path = Path(out_path)
    seed_records = sum(1 for _ in read_seed(seed_path))
    seed_rows = seed_records * seed_upsample

    keep: set[int] | None = None
    curated_records = eligible = 0
    if curated_path is not None:
        caps = []
        if max_augmented is not None:
            caps.append(max_augmented)
        if augmented_ratio is not None:
            caps.append(int(augmented_ratio * seed_rows))
        scores = [
            (p.score if p.score is not None else float("-inf"), -i)
            for i, p in enumerate(read_curated(curated_path, min_score))
        ]
        eligible = len(scores)
        if caps and min(caps) < eligible:
            # Two passes keep memory small: indexes of the best pairs now, rows later.
            keep = {-neg for _, neg in heapq.nlargest(min(caps), scores)}
        curated_records = sum(1 for _ in iter_jsonl(curated_path))

    augmented_written = 0

    def rows() -> Iterator[dict[str, Any]]:
        nonlocal augmented_written
        for _ in range(seed_upsample):
            for pair in read_seed(seed_path):
                yield exporter.row(seed_system, pair.instruction, pair.output)
        if curated_path is None:
            return
        for i, pair in enumerate(read_curated(curated_path, min_score)):
            if keep is not None and i not in keep:
                continue
            augmented_written += 1
            yield exporter.row(augmented_system, pair.instruction, pair.output)

    count = _write_rows(out_path, rows())
    sources = [_source(seed_path, "seed", seed_records)]
    if curated_path is not None:
        sources.append(_source(curated_path, "curated", curated_records))
    card = {
        "role": "forward",
        "iteration": iteration,
        "model": f"M{iteration}",
        "counts": {
            "seed": seed_records,
            "seed_rows": seed_rows,
            "augmented_eligible": eligible,
            "augmented": augmented_written,
        },
        "sources": sources,
        "thresholds": {
            "min_score": min_score,
            "max_augmented": max_augmented,
            "augmented_ratio": augmented_ratio,
            "seed_upsample": seed_upsample,
        },
        "templates": {
            "seed_system": {"text": seed_system, "sha256": text_sha256(seed_system or "")},
            "augmented_system": {
                "text": augmented_system,
                "sha256": text_sha256(augmented_system or ""),
            },
        },
    }
    return _finish(f"m{iteration}", out_path, count, card, exporter)


def export_datasets(
    seed_path: str | Path,
    out_dir: str | Path,
    *,
    curated_path: str | Path | None = None,
    iteration: int | None = None,
    backward: bool | None = None,
    forward: bool = True,
    format: str = DEFAULT_FORMAT,
    template: str = DEFAULT_BACKTRANSLATION_TEMPLATE,
    **forward_options: Any,
) -> list[ExportResult]:
    """Write the datasets one step of the loop needs into ``out_dir``.

    Without ``curated_path``: ``backward.jsonl`` and ``m0.jsonl`` (iteration 0). With it:
    ``m<k>.jsonl`` for ``iteration`` k (default 1), and ``backward.jsonl`` only when asked.
    """
    out_dir = Path(out_dir)
    if iteration is None:
        iteration = 0 if curated_path is None else 1
    if backward is None:
        backward = curated_path is None
    results = []
    if backward:
        results.append(
            export_backward(seed_path, out_dir / "backward.jsonl", template=template, format=format)
        )
    if forward:
        results.append(
            export_forward(
                seed_path,
                out_dir / f"m{iteration}.jsonl",
                curated_path=curated_path,
                iteration=iteration,
                format=format,
                **forward_options,
            )
        )
    return results
