"""Reading and writing JSONL safely.

Readers name the file and line of every problem; writers never leave a half-written
dataset behind (temp file in the same folder, fsync, rename).
"""

from __future__ import annotations

import gzip
import io
import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from humpback_plugin.core import fastjson

# Re-exported: most writers import them from here.
from humpback_plugin.core.atomic import atomic_writer as atomic_writer
from humpback_plugin.core.atomic import write_json_atomic as write_json_atomic
from humpback_plugin.core.errors import InputError

OnError = Callable[[str, "int | str | None", str], None]


def open_text(path: str | os.PathLike) -> IO[str]:
    """Open a possibly gzipped text file as UTF-8; undecodable bytes raise with the offset."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, None, "no such file")
    if path.is_dir():
        raise InputError(path, None, "is a folder, expected a file")
    raw: IO[bytes] = open(path, "rb")  # noqa: SIM115 - closed by the wrapper
    if path.suffix == ".gz":
        raw = gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[assignment]
    return io.TextIOWrapper(raw, encoding="utf-8", errors="strict", newline="")


def iter_jsonl(
    path: str | os.PathLike,
    *,
    on_error: OnError | None = None,
    max_line_bytes: int = 64 * 1024 * 1024,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for each JSON object line of a (gzipped) JSONL file.

    Bad lines (malformed JSON, non-objects, undecodable bytes) raise :class:`InputError`
    naming the file and line, unless ``on_error`` is given: then they are reported to it
    and skipped, and the rest of the file is still read. An empty file yields nothing.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, None, "no such file")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:  # type: ignore[operator]
            lineno = 0
            for raw in fh:
                lineno += 1
                problem = None
                obj: Any = None
                if len(raw) > max_line_bytes:
                    problem = f"line is {len(raw)} bytes, over the {max_line_bytes}-byte limit"
                else:
                    try:
                        text = raw.decode("utf-8")
                    except UnicodeDecodeError as exc:
                        bad = raw[exc.start : exc.start + 1]
                        problem = f"not UTF-8 (byte {exc.start} of the line: {bad!r})"
                    else:
                        if not text.strip():
                            continue
                        try:
                            obj = fastjson.loads(text)
                        except json.JSONDecodeError as exc:
                            problem = f"malformed JSON: {exc.msg} at column {exc.colno}"
                        else:
                            if not isinstance(obj, dict):
                                problem = f"expected a JSON object, got {type(obj).__name__}"
                if problem is None:
                    yield lineno, obj
                elif on_error is None:
                    raise InputError(path, lineno, problem)
                else:
                    on_error(str(path), lineno, problem)
    except (EOFError, gzip.BadGzipFile, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise InputError(path, None, "no such file") from exc
        where = locals().get("lineno")
        after = f"after line {where}" if where else None
        raise InputError(path, after, f"unreadable: {exc}") from exc


def iter_json_records(
    path: str | os.PathLike, *, on_error: OnError | None = None
) -> Iterator[tuple[int | str, dict[str, Any]]]:
    """Records of a ``.json`` file holding a list of objects, or of a JSONL file."""
    path = Path(path)
    name = path.name.removesuffix(".gz")
    if name.endswith(".json"):
        with open_text(path) as fh:
            try:
                data = json.load(fh)
            except json.JSONDecodeError as exc:
                raise InputError(path, exc.lineno, f"malformed JSON: {exc.msg}") from exc
            except UnicodeDecodeError as exc:
                raise InputError(path, f"byte {exc.start}", "not UTF-8") from exc
        if isinstance(data, dict):
            # {"data": [...]} and similar single-key wrappers
            lists = [v for v in data.values() if isinstance(v, list)]
            data = lists[0] if len(lists) == 1 else [data]
        if not isinstance(data, list):
            raise InputError(path, None, "expected a JSON list of objects")
        for i, obj in enumerate(data):
            if isinstance(obj, dict):
                yield f"record {i}", obj
            elif on_error is None:
                raise InputError(path, f"record {i}", "expected a JSON object")
            else:
                on_error(str(path), f"record {i}", "expected a JSON object")
        return
    yield from iter_jsonl(path, on_error=on_error)


def write_jsonl_atomic(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> int:
    """Write records as compact JSONL atomically; returns how many were written."""
    count = 0
    dumps_line = fastjson.dumps_line
    with atomic_writer(path, "wb") as fh:
        write = fh.write
        for record in records:
            write(dumps_line(record))
            count += 1
    return count
