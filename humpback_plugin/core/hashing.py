"""Hashes: of files (streamed), of text, and short stable ids of JSON-serialisable parts."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import orjson


def file_digest(path: str | os.PathLike) -> tuple[str, int]:
    """sha256 of a file's bytes and its number of newlines, in one pass of 1 MiB chunks."""
    digest = hashlib.sha256()
    lines = 0
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
            lines += block.count(b"\n")
    return digest.hexdigest(), lines


def file_sha256(path: str | os.PathLike) -> str:
    return file_digest(path)[0]


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def content_hash(*parts: Any, length: int = 16) -> str:
    """A short, stable hash of JSON-serialisable parts (key order does not matter)."""
    if all(type(part) is str for part in parts):
        # The common case (a run id and a record id), a few times per record: orjson writes
        # a list of strings byte for byte as the call below does (tests/test_store.py
        # checks), several times faster. Anything else, floats included, takes that path.
        try:
            return hashlib.sha256(orjson.dumps(parts)).hexdigest()[:length]
        except TypeError:  # e.g. a lone surrogate, which the standard library keeps
            pass
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:length]
