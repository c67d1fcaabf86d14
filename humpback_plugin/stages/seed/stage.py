"""Stage 1: human-written seed pairs (paper section 2) -> :class:`SeedPair` JSONL.

``humpback seed`` and the run's ``seed`` stage call :func:`load_seed`; the formats it reads
are the loaders registered on ``register_seed_loaders`` (built-ins in :mod:`.loaders`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from humpback_plugin.core.console import say
from humpback_plugin.core.errors import InputError, UnknownComponent
from humpback_plugin.core.hf import HF_PREFIX
from humpback_plugin.core.jsonl_io import atomic_writer
from humpback_plugin.plugins import components
from humpback_plugin.stages.seed.loaders import SeedStats


@dataclass
class SeedSummary:
    output: str = ""
    pairs: int = 0
    duplicates: int = 0
    by_input: dict[str, dict[str, Any]] = field(default_factory=dict)
    bad_records: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_seed(
    inputs: list[str],
    output: str | Path,
    *,
    loader: str | None = None,
    options: dict[str, Any] | None = None,
    limit: int | None = None,
    skip_bad_records: bool = False,
    warn: Callable[[str], None] | None = None,
) -> SeedSummary:
    """Load seed pairs from ``inputs`` into ``output`` (JSONL of :class:`SeedPair`).

    ``options`` go to the loaders: oasst filters (``lang``, ``rank``, ``drop_deleted``,
    ``drop_synthetic``, ``drop_review_failed``) and the field mapping for generic pairs
    (``instruction_field``, ``output_field``, ``input_field``, ``split``). A bad record
    raises :class:`InputError` naming file and line unless ``skip_bad_records``. No pairs
    at all is an error; nothing is written unless the run completes.
    """
    warn = warn or say
    loaders = components("register_seed_loaders")
    summary = SeedSummary(output=str(output))
    for path in inputs:
        if not path.startswith(HF_PREFIX) and not os.path.exists(path):
            raise InputError(path, None, "no such file")

    def on_error(source: str, where: Any, message: str) -> None:
        summary.bad_records += 1
        if len(summary.errors) < 50:
            summary.errors.append({"source": source, "where": where, "message": message})
        if summary.bad_records <= 5:
            warn(f"skipped bad record: {InputError(source, where, message)}")

    seen: set[str] = set()
    with atomic_writer(output) as out:
        for path in inputs:
            if loader:
                if loader not in loaders:
                    raise UnknownComponent(
                        f"unknown format {loader!r}; available: {', '.join(sorted(loaders))}"
                    )
                chosen_name = loader
            else:
                chosen_name = next(n for n, item in loaders.items() if item.matches(path))
            stats = SeedStats(loader=chosen_name)
            opts = {**(options or {}), "stats": stats}
            if skip_bad_records:
                opts["on_error"] = on_error
            before = summary.bad_records
            for pair in loaders[chosen_name].load(path, opts):
                if limit is not None and summary.pairs >= limit:
                    break
                if pair.id in seen:
                    summary.duplicates += 1
                    stats.dropped["duplicate"] += 1
                    continue
                seen.add(pair.id)
                out.write(pair.model_dump_json() + "\n")
                stats.pairs += 1
                summary.pairs += 1
            stats.bad_records = summary.bad_records - before
            summary.by_input[path] = {
                "format": stats.loader,
                "pairs": stats.pairs,
                "dropped": dict(stats.dropped),
                "bad_records": stats.bad_records,
            }
        if not summary.pairs:
            raise InputError(", ".join(inputs), None, "no seed pairs found (see the filters)")
    return summary
