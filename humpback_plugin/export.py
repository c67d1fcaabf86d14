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

import hashlib
import heapq
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from humpback_plugin import SYSTEM_AUGMENTED, SYSTEM_SEED, __version__
from humpback_plugin.hookspecs import hookimpl
from humpback_plugin.jsonl_io import InputError, atomic_writer, iter_jsonl, write_json_atomic

PROMPTS_DIR = Path(__file__).resolve().parent.parent / "prompts"
DEFAULT_BACKTRANSLATION_TEMPLATE = PROMPTS_DIR / "backtranslation.txt"
CARD_SUFFIX = ".card.json"


# --- exporters: how one (system, user, assistant) triple becomes a row -------------------


class ChatTemplateExporter:
    """``messages`` rows for Axolotl's ``type: chat_template``; loss on the assistant turn."""

    name = "chat_template"

    def row(self, system: str | None, user: str, assistant: str) -> dict[str, Any]:
        messages = []
        if system:
            messages.append({"role": "system", "content": system})
        messages.append({"role": "user", "content": user})
        messages.append({"role": "assistant", "content": assistant})
        return {"messages": messages}

    def axolotl_dataset(self, path: str) -> dict[str, Any]:
        return {
            "path": path,
            "ds_type": "json",
            "type": "chat_template",
            "field_messages": "messages",
            "message_property_mappings": {"role": "role", "content": "content"},
            # Only the assistant turn (and its end-of-turn token) carries loss.
            "roles_to_train": ["assistant"],
            "train_on_eos": "turn",
        }


class InstructionExporter:
    """Rows for Axolotl's user-defined instruction format with a per-row ``system`` field.

    The default format is Llama-2's ``[INST]`` style that Humpback's AlpacaEval submission
    used, with the system text in a ``<<SYS>>`` block. The prompt part is masked
    (``train_on_inputs: false`` in the config), so only the output carries loss.
    """

    name = "instruction"

    def row(self, system: str | None, user: str, assistant: str) -> dict[str, Any]:
        return {"system": system or "", "instruction": user, "output": assistant}

    def axolotl_dataset(self, path: str) -> dict[str, Any]:
        return {
            "path": path,
            "ds_type": "json",
            "type": {
                "field_system": "system",
                "field_instruction": "instruction",
                "field_output": "output",
                "system_format": "<<SYS>>\n{system}\n<</SYS>>\n\n",
                "format": "[INST] {instruction} [/INST] ",
                "no_input_format": "[INST] {instruction} [/INST] ",
            },
        }


@hookimpl
def register_exporters(register: Any) -> None:
    register("chat_template", ChatTemplateExporter())
    register("instruction", InstructionExporter())


def get_exporter(name: str) -> Any:
    from humpback_plugin.plugins import pick

    return pick("register_exporters", name, "export format")


# --- the backward model's prompt ----------------------------------------------------------


def default_backtranslation_request(segment: Any, template: str) -> dict[str, Any]:
    """What the augmentation stage sends when no plugin builds the request: one user turn."""
    text = segment.text if hasattr(segment, "text") else str(segment)
    return {"messages": [{"role": "user", "content": template.format(output=text)}]}


def backtranslation_request(segment: Any, template: str) -> dict[str, Any]:
    """The hook's answer (augment.py's built-in or a plugin's), else the default above."""
    from humpback_plugin.plugins import pm

    answer = pm.hook.backtranslation_request(segment=segment, template=template)
    return answer if answer is not None else default_backtranslation_request(segment, template)


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
    raise ValueError(f"backtranslation_request returned neither messages nor prompt: {request!r}")


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


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


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
    import json

    card = card_path_for(dataset_path)
    if not card.exists():
        return None
    try:
        return json.loads(card.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(card, exc.lineno, f"malformed JSON: {exc.msg}") from exc


def _write_rows(path: Path, rows: Iterator[dict[str, Any]]) -> int:
    import json

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
    template_path: str | Path = DEFAULT_BACKTRANSLATION_TEMPLATE,
    format: str = "chat_template",
) -> ExportResult:
    """Write the backward model's data: user = prompt built from the seed output."""
    from humpback_plugin.records import Segment

    exporter = get_exporter(format)
    template = Path(template_path).read_text(encoding="utf-8")
    if "{output}" not in template:
        raise InputError(template_path, None, "backtranslation template has no {output}")
    out_path = Path(out_path)
    seen = 0

    def rows() -> Iterator[dict[str, Any]]:
        nonlocal seen
        for pair in read_seed(seed_path):
            seen += 1
            segment = Segment(id=Segment.make_id(pair.output), text=pair.output, source="seed")
            system, user = _request_to_turns(backtranslation_request(segment, template))
            yield exporter.row(system, user, pair.instruction)

    count = _write_rows(out_path, rows())
    card = {
        "role": "backward",
        "iteration": 0,
        "counts": {"seed": count},
        "sources": [_source(seed_path, "seed", seen)],
        "templates": {
            "backtranslation": {"path": str(template_path), "sha256": text_sha256(template)}
        },
    }
    return _finish("backward", out_path, count, card, exporter)


def export_forward(
    seed_path: str | Path,
    out_path: str | Path,
    *,
    curated_path: str | Path | None = None,
    iteration: int = 0,
    format: str = "chat_template",
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
        raise ValueError("seed_upsample must be at least 1")
    if curated_path is None and iteration != 0:
        raise ValueError(f"M{iteration} needs the curated set of iteration {iteration}")
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
    format: str = "chat_template",
    template_path: str | Path = DEFAULT_BACKTRANSLATION_TEMPLATE,
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
            export_backward(
                seed_path, out_dir / "backward.jsonl", template_path=template_path, format=format
            )
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


# --- command line -----------------------------------------------------------------------


@hookimpl
def register_commands(cli: Any) -> None:
    cli.add_command(export_command)
    from humpback_plugin.axolotl_config import configs_command

    cli.add_command(configs_command)


@click.command(name="export")
@click.argument("seed", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--curated",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Curated pairs A(k) (ScoredCandidate JSONL) from `humpback curate`.",
)
@click.option(
    "-i",
    "--iteration",
    type=int,
    help="k of the forward model M_k (default: 0, or 1 with --curated).",
)
@click.option(
    "-o",
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default="datasets",
    show_default=True,
    help="Folder for the datasets and their .card.json files.",
)
@click.option(
    "--format",
    "format_",
    default="chat_template",
    show_default=True,
    help="Row format: chat_template (messages with a system turn) or instruction.",
)
@click.option(
    "--backward/--no-backward",
    default=None,
    help="Write backward.jsonl (default: only without --curated).",
)
@click.option("--forward/--no-forward", default=True, help="Write the forward model's data.")
@click.option(
    "--template",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_BACKTRANSLATION_TEMPLATE,
    show_default="prompts/backtranslation.txt",
    help="Backtranslation prompt with {output}; use the file `humpback augment` uses.",
)
@click.option("--min-score", type=float, help="Keep curated pairs scoring at least this.")
@click.option("--max-augmented", type=int, help="At most this many augmented rows.")
@click.option(
    "--augmented-ratio", type=float, help="At most this many augmented rows per seed row."
)
@click.option(
    "--seed-upsample", type=int, default=1, show_default=True, help="Repeat the seed pairs N times."
)
def export_command(
    seed: Path,
    curated: Path | None,
    iteration: int | None,
    out_dir: Path,
    format_: str,
    backward: bool | None,
    forward: bool,
    template: Path,
    min_score: float | None,
    max_augmented: int | None,
    augmented_ratio: float | None,
    seed_upsample: int,
) -> None:
    """Write Axolotl training sets for the backward model, M0 or M_k.

    SEED is the seed pairs JSONL from `humpback seed` (instruction, output).

    \b
    Iteration 0 (no --curated) writes:
      backward.jsonl   output -> instruction, prompt as `humpback augment` sends it
      m0.jsonl         seed pairs, system "Answer in the style of an AI Assistant."
    Iteration k (--curated A_k.jsonl -i k) writes:
      m<k>.jsonl       seed pairs + curated pairs, these with system
                       "Answer with knowledge from web search."
    Each file gets a .card.json with counts, input hashes and thresholds.

    \b
    Examples:
      humpback export seed.jsonl -o run/datasets
      humpback export seed.jsonl --curated run/curated_1.jsonl -i 1 --min-score 4
      humpback configs forward -i 1 --dataset run/datasets/m1.jsonl --base-model ...
    """
    from rich.console import Console
    from rich.table import Table

    try:
        results = export_datasets(
            seed,
            out_dir,
            curated_path=curated,
            iteration=iteration,
            backward=backward,
            forward=forward,
            format=format_,
            template_path=template,
            min_score=min_score,
            max_augmented=max_augmented,
            augmented_ratio=augmented_ratio,
            seed_upsample=seed_upsample,
        )
    except (InputError, KeyError, ValueError) as exc:
        raise click.ClickException(str(exc).strip("'\"")) from exc

    table = Table(title="humpback export")
    for column in ("dataset", "rows", "seed", "augmented", "path"):
        table.add_column(column)
    for r in results:
        counts = r.card.get("counts", {})
        table.add_row(
            r.name,
            str(r.rows),
            str(counts.get("seed_rows", counts.get("seed", ""))),
            str(counts.get("augmented", "-")),
            str(r.path),
        )
    Console(stderr=True).print(table)
