"""Instruction sets and outputs files: AlpacaEval's JSON list, or JSONL, one object each.

An instruction set needs ``instruction`` (a non-empty string) in every record; ``dataset``
(AlpacaEval's source, e.g. ``oasst``), ``output`` and ``generator`` are kept when present,
so AlpacaEval's reference file (davinci-003's outputs) is both an instruction set and a
reference. An outputs file (``model_outputs.json``) needs ``instruction`` and ``output``.

Records are matched by their instruction text, as AlpacaEval does; an instruction that
occurs twice is matched occurrence by occurrence. A bad record stops with the file and the
line where it starts (for a JSON list too), before any request is sent.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from humpback_plugin.core.errors import InputError
from humpback_plugin.core.hashing import content_hash
from humpback_plugin.core.jsonl_io import iter_json_records, iter_jsonl

_BLANK = re.compile(r"\s*")


@dataclass(frozen=True)
class EvalItem:
    """One instruction of a set (or one answer of an outputs file)."""

    id: str  # stable: the instruction and its occurrence number
    instruction: str
    dataset: str | None = None
    output: str | None = None
    generator: str | None = None
    line: int | str | None = None  # where the record starts in its file


def _json_array_records(path: Path) -> Iterator[tuple[int | str, Any]]:
    """The elements of a top-level JSON list with the line each starts on; other JSON
    shapes (e.g. ``{"data": [...]}``) by record number."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(path, f"byte {exc.start}", "not UTF-8") from exc
    except FileNotFoundError as exc:
        raise InputError(path, None, "no such file") from exc
    except IsADirectoryError as exc:
        raise InputError(path, None, "is a folder, expected a file") from exc
    decoder = json.JSONDecoder()
    pos = _BLANK.match(text).end()
    if not text.startswith("[", pos):
        yield from iter_json_records(path)
        return
    pos = _BLANK.match(text, pos + 1).end()
    if text.startswith("]", pos):
        return
    while True:
        line = text.count("\n", 0, pos) + 1
        try:
            obj, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise InputError(path, exc.lineno, f"malformed JSON: {exc.msg}") from exc
        yield line, obj
        pos = _BLANK.match(text, pos).end()
        if text.startswith("]", pos):
            return
        if not text.startswith(",", pos):
            where = text.count("\n", 0, pos) + 1
            raise InputError(path, where, "malformed JSON: expected ',' or ']'")
        pos = _BLANK.match(text, pos + 1).end()


def iter_records(path: str | os.PathLike) -> Iterator[tuple[int | str, Any]]:
    """(line, record) of a ``.json`` list or a JSONL file (``.gz`` too)."""
    path = Path(path)
    name = path.name.removesuffix(".gz")
    if name.endswith(".json") and not path.name.endswith(".gz"):
        yield from _json_array_records(path)
    elif name.endswith(".json"):
        yield from iter_json_records(path)
    else:
        yield from iter_jsonl(path)


def read_items(
    path: str | os.PathLike,
    *,
    limit: int | None = None,
    need_output: bool = False,
    what: str = "instruction set",
) -> list[EvalItem]:
    """Every record of an instruction set or outputs file, validated, in file order.

    Raises :class:`InputError` naming the file and line of the first bad record (no
    ``instruction``, an ``output`` that is not a string where one is needed) and for a file
    with no records at all.
    """
    path = Path(path)
    items: list[EvalItem] = []
    seen: Counter = Counter()
    for line, record in iter_records(path):
        if limit is not None and len(items) >= limit:
            break
        if not isinstance(record, dict):
            raise InputError(path, line, f"expected a JSON object, got {type(record).__name__}")
        instruction = record.get("instruction")
        if not isinstance(instruction, str) or not instruction.strip():
            got = (
                "missing"
                if instruction is None
                else f"{type(instruction).__name__} {instruction!r:.40}"
            )
            problem = f"`instruction` must be a non-empty string ({got})"
            raise InputError(path, line, f"not a record of an {what}: {problem}")
        output = record.get("output")
        if output is not None and not isinstance(output, str):
            raise InputError(path, line, f"`output` must be a string, got {type(output).__name__}")
        if need_output and output is None:
            raise InputError(path, line, f"not a record of an {what}: no `output`")
        occurrence = seen[instruction]
        seen[instruction] += 1
        dataset = record.get("dataset")
        generator = record.get("generator")
        items.append(
            EvalItem(
                id=content_hash("eval-item", instruction, occurrence),
                instruction=instruction,
                dataset=str(dataset) if dataset is not None else None,
                output=output,
                generator=str(generator) if generator is not None else None,
                line=line,
            )
        )
    if not items:
        raise InputError(path, None, f"no records: an {what} needs at least one `instruction`")
    return items


def generator_of(items: list[EvalItem], fallback: str) -> str:
    """The ``generator`` named in an outputs file (the most common one), else ``fallback``."""
    names = Counter(item.generator for item in items if item.generator)
    return names.most_common(1)[0][0] if names else fallback
