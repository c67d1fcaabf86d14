"""Append-only JSONL record stores: how a stage resumes after any interruption.

A stage appends one finished record per line, each carrying a ``key`` (a content hash of
the input record, prompt template, model and sampling parameters). On start, the keys
already present are skipped. A SIGKILL can leave at most one partial line at the end;
opening the store cuts it off, so nothing is read twice or half.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from humpback_plugin.core import fastjson
from humpback_plugin.core.jsonl_io import write_jsonl_atomic

# Stands in for the mapping of an empty file (mmap refuses length 0).
_NO_MAP = contextlib.nullcontext(b"")


class RecordStore:
    """Finished records of one stage, keyed by ``record["key"]``.

    Only the key -> byte offset index is kept in memory (tens of bytes a record), so a
    store of half a million generations stays small.
    """

    def __init__(self, path: str | os.PathLike, key_field: str = "key") -> None:
        self.path = Path(path)
        self.key_field = key_field
        self._offsets: dict[str, int] = {}
        self._fh: Any = None
        self.recovered_bytes = 0
        self._scan()

    def _scan(self) -> None:
        if not self.path.exists():
            return
        good_end = 0
        with open(self.path, "rb") as fh:
            while True:
                start = fh.tell()
                line = fh.readline()
                if not line:
                    break
                if not line.endswith(b"\n"):
                    break  # partial last line: the writer was killed mid-write
                try:
                    key = fastjson.loads(line)[self.key_field]
                except (ValueError, KeyError, TypeError):
                    break  # a torn write; everything after it is suspect
                # A key written twice (two racing resumes) keeps its first copy.
                self._offsets.setdefault(key, start)
                good_end = fh.tell()
        size = self.path.stat().st_size
        if size > good_end:
            self.recovered_bytes = size - good_end
            with open(self.path, "r+b") as fh:
                fh.truncate(good_end)

    def __contains__(self, key: str) -> bool:
        return key in self._offsets

    def __len__(self) -> int:
        return len(self._offsets)

    def keys(self) -> set[str]:
        return set(self._offsets)

    def append(self, record: dict[str, Any]) -> None:
        """Write one record as one line in a single write call; flushed before returning."""
        self.append_many([record])

    def append_many(self, records: list[dict[str, Any]]) -> None:
        """Write records (one line each) in a single write call; flushed before returning.

        Keys already stored, or repeated within ``records``, are skipped (first copy wins).
        A failed write (disk full) is cut back to where it began, so the file stays
        line-aligned and holds none of these records.
        """
        if not records:
            return
        lines: list[bytes] = []
        keys: list[str] = []
        fresh: set[str] = set()
        for record in records:
            key = record[self.key_field]
            if key in self._offsets or key in fresh:
                continue
            fresh.add(key)
            keys.append(key)
            lines.append(fastjson.dumps_line(record))
        if not lines:
            return
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "ab", buffering=0)  # noqa: SIM115 - closed in close()
        offset = self._fh.tell()
        data = b"".join(lines)
        try:
            # An unbuffered write may be short (e.g. a nearly full disk): finish the lines.
            view = memoryview(data)
            while view:
                view = view[self._fh.write(view) :]
        except OSError as exc:
            # Cut the partial lines so later appends stay line-aligned; name the file.
            with contextlib.suppress(OSError):
                self._fh.truncate(offset)
                self._fh.seek(offset)
            if exc.errno is None:
                raise
            raise type(exc)(exc.errno, exc.strerror, str(self.path)) from exc
        for key, line in zip(keys, lines, strict=True):
            self._offsets[key] = offset
            offset += len(line)

    def get(self, key: str) -> dict[str, Any] | None:
        offset = self._offsets.get(key)
        if offset is None:
            return None
        with open(self.path, "rb") as fh:
            fh.seek(offset)
            return fastjson.loads(fh.readline())

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Records in the order they were written, each key once."""
        if not self.path.exists():
            return
        wanted = set(self._offsets.values())
        with open(self.path, "rb") as fh:
            while True:
                start = fh.tell()
                line = fh.readline()
                if not line:
                    break
                if start in wanted:
                    yield fastjson.loads(line)

    def ordered(self, keys: Iterable[str]) -> Iterator[dict[str, Any]]:
        """Records in the order of ``keys`` (the input order), skipping keys not present."""
        if not self.path.exists():
            return
        with open(self.path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            # Mapped, a record is a slice up to its newline: a seek and a buffered readline
            # for each of half a million records refilled an 8 KiB buffer every time.
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if size else _NO_MAP as mm:
                for key in keys:
                    offset = self._offsets.get(key)
                    if offset is None:
                        continue
                    end = mm.find(b"\n", offset) if offset < size else -1
                    if end < 0:  # appended after the mapping was made
                        fh.seek(offset)
                        yield fastjson.loads(fh.readline())
                    else:
                        yield fastjson.loads(mm[offset : end + 1])

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> RecordStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ScopedStore:
    """The records of one scope in a shared store: keys are written as ``<scope>:<key>``
    and handed back without the prefix. The model-stage runner scopes every store by the
    model's identity, so other weights behind the same served name never reuse results."""

    def __init__(self, store: RecordStore, scope: str) -> None:
        self.store = store
        self.prefix = f"{scope}:"
        self.path = store.path

    def _own(self, record: dict[str, Any] | None) -> dict[str, Any] | None:
        key = None if record is None else record.get(self.store.key_field)
        if not isinstance(key, str) or not key.startswith(self.prefix):
            return None
        return {**record, self.store.key_field: key[len(self.prefix) :]}  # type: ignore[dict-item]

    def __contains__(self, key: str) -> bool:
        return self.prefix + key in self.store

    def __len__(self) -> int:
        return len(self.keys())

    def keys(self) -> set[str]:
        n, every = len(self.prefix), self.store.keys()
        return {k[n:] for k in every if k.startswith(self.prefix)}

    def append(self, record: dict[str, Any]) -> None:
        self.append_many([record])

    def append_many(self, records: list[dict[str, Any]]) -> None:
        field = self.store.key_field
        self.store.append_many([{**r, field: self.prefix + r[field]} for r in records])

    def get(self, key: str) -> dict[str, Any] | None:
        return self._own(self.store.get(self.prefix + key))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return (own for record in self.store if (own := self._own(record)) is not None)

    def ordered(self, keys: Iterable[str]) -> Iterator[dict[str, Any]]:
        records = self.store.ordered(self.prefix + key for key in keys)
        return (own for record in records if (own := self._own(record)) is not None)


def finalize(records: Iterable[dict[str, Any]], path: str | os.PathLike) -> int:
    """Write a final dataset atomically (temp file + rename); returns the record count."""
    return write_jsonl_atomic(path, records)
