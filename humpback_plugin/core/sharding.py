"""Split a record-parallel stage across machines: ``--shard I/N`` keeps the records whose id
hashes to I modulo N. Every machine decides alone, no coordination, and every record lands
in exactly one shard (``humpback merge`` joins the pieces)."""

from __future__ import annotations

import hashlib

from humpback_plugin.core.errors import UsageError


def parse_shard(spec: str | None) -> tuple[int, int] | None:
    """``"2/8"`` -> (2, 8); None stays None."""
    if not spec:
        return None
    try:
        i_text, n_text = spec.split("/")
        i, n = int(i_text), int(n_text)
    except ValueError:
        raise UsageError(f"--shard: expected I/N such as 0/4, got {spec!r}") from None
    if n < 1 or not 0 <= i < n:
        raise UsageError(f"--shard {spec!r}: need 0 <= I < N")
    return i, n


def in_shard(record_id: str, shard: tuple[int, int] | None) -> bool:
    if shard is None:
        return True
    i, n = shard
    return int(hashlib.sha256(record_id.encode()).hexdigest()[:12], 16) % n == i
