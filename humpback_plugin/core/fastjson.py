"""JSON on the hot path: orjson (several times faster than the standard library) with the
standard library as the fallback for what orjson refuses (integers over 64 bits, non-string
keys). At thousands of requests a second, request bodies, answers, store lines and final
files were a tenth of a stage's CPU time with the standard library alone.

Output is compact UTF-8 (``{"a":1,"b":"é"}``), the form the final files always had; floats
are written in their shortest form (``0.00001`` rather than ``1e-05``, the same number) and
NaN or an infinity as ``null`` (no built-in record holds one).
"""

from __future__ import annotations

import json
from typing import Any

import orjson

_COMPACT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def dumps(obj: Any) -> bytes:
    """``obj`` as compact UTF-8 JSON bytes."""
    try:
        return orjson.dumps(obj)
    except TypeError:
        return _COMPACT.encode(obj).encode("utf-8")


def dumps_line(obj: Any) -> bytes:
    """``obj`` as one JSONL line (compact, newline-terminated)."""
    try:
        return orjson.dumps(obj, option=orjson.OPT_APPEND_NEWLINE)
    except TypeError:
        return (_COMPACT.encode(obj) + "\n").encode("utf-8")


def loads(data: bytes | str) -> Any:
    """Parse JSON; ``json.JSONDecodeError`` (with the standard library's message) when
    malformed. ``NaN`` and ``Infinity``, which orjson refuses, are read as Python reads them."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)
