"""Join the outputs of ``--shard I/N`` runs into one dataset, refusing doubles and
reporting inputs no shard produced."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from humpback_plugin.core.errors import HumpbackError, InputError
from humpback_plugin.core.jsonl_io import iter_jsonl, write_jsonl_atomic


def merge_shards(
    parts: list[Path],
    output: Path,
    *,
    key: str = "id",
) -> dict[str, Any]:
    """Concatenate shard outputs; refuse (and write nothing) when a record is doubled."""
    seen: dict[str, str] = {}

    def records() -> Iterator[dict[str, Any]]:
        for part in parts:
            for line, record in iter_jsonl(part):
                if key not in record:
                    raise InputError(part, line, f"record has no {key!r} field")
                rid = str(record[key])
                if rid in seen:
                    # Raising inside the writer aborts it: no merged file is left behind.
                    raise HumpbackError(
                        f"record {rid} is in several shards ({seen[rid]} and {part}:{line}); "
                        "were the shards run with different N?"
                    )
                seen[rid] = f"{part}:{line}"
                yield record

    count = write_jsonl_atomic(output, records())
    return {"parts": len(parts), "records": count}


def expected_ids(expect: Path, expect_key: str = "id") -> list[str]:
    """The ids (field ``expect_key``) of the unsharded input's records."""
    ids = []
    for line, record in iter_jsonl(expect):
        if expect_key not in record:
            raise InputError(expect, line, f"record has no {expect_key!r} field")
        ids.append(str(record[expect_key]))
    return ids


def missing_ids(output: Path, expected: list[str], by: str = "id") -> list[str]:
    """Expected ids that no merged record names in its field ``by``."""
    produced = {str(r.get(by)) for _, r in iter_jsonl(output)}
    return [i for i in expected if i not in produced]
