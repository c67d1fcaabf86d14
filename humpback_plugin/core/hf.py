"""Hugging Face datasets as an input (optional: ``pip install datasets``), for corpora and seeds."""

from __future__ import annotations

from typing import Any

from humpback_plugin.core.errors import InputError

HF_PREFIX = "hf:"


def load_hf_dataset(path: str, split: str) -> Any:
    """Open a hub dataset (streaming) or a local ``save_to_disk`` folder, one split."""
    try:
        import datasets
    except ImportError as exc:
        raise InputError(
            path, None, "Hugging Face datasets need the `datasets` library: pip install datasets"
        ) from exc
    if path.startswith(HF_PREFIX):
        name, _, named_split = path[len(HF_PREFIX) :].partition(":")
        return datasets.load_dataset(name, split=named_split or split, streaming=True)
    loaded = datasets.load_from_disk(path)
    if isinstance(loaded, datasets.DatasetDict):
        return loaded[split]
    return loaded
