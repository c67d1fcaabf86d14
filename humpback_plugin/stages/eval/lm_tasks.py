"""lm-evaluation-harness task YAMLs over local JSONL files: no hub.

Two item shapes, the ones llm-foundry's local evaluation data uses:

* ``{query, choices, gold}``: a question and its answer options (ARC, OpenBookQA, PIQA,
  SIQA, MMLU-style sets); the harness scores each choice as the continuation of the query;
* ``{context_options, continuation, gold}``: Winogrande's partial scoring; the harness
  scores the shared continuation after each context.

Every item is checked before lm-eval starts, so a bad line is named (file and line) here,
not as a traceback from inside the harness. Queries that start with ``Question:`` get
``\\nAnswer:`` after them, as lm-eval's own ARC and PIQA tasks write it; other queries
(OpenBookQA's sentence stems, SIQA's prompts that end in ``Answer:``) are used as they are.
Metrics: ``acc`` and ``acc_norm`` (zero-shot, as the paper reports).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from humpback_plugin.core.errors import InputError, UsageError
from humpback_plugin.core.jsonl_io import atomic_writer, iter_jsonl

QUERY, CONTEXT_OPTIONS = "query", "context_options"
TASK_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")

_QUERY_TEXT = (
    "{% set q = query.rstrip() %}{{ q }}"
    "{% if q.startswith('Question:') and not q.endswith('Answer:') %}\nAnswer:{% endif %}"
)


def _check_gold(path: Path, line: int, gold: Any, options: int) -> None:
    if isinstance(gold, bool) or not isinstance(gold, int) or not 0 <= gold < options:
        raise InputError(
            path, line, f"`gold` must be an index into the {options} options, got {gold!r}"
        )


def _strings(value: Any) -> bool:
    return isinstance(value, list) and len(value) >= 2 and all(isinstance(v, str) for v in value)


def check_task_file(path: str | os.PathLike) -> tuple[str, int]:
    """The item shape of a task file and its number of items; a bad item names its line."""
    path = Path(path)
    shape: str | None = None
    count = 0
    for line, item in iter_jsonl(path):
        this = CONTEXT_OPTIONS if "context_options" in item else QUERY
        if shape is None:
            shape = this
        elif this != shape:
            raise InputError(path, line, f"mixes item shapes: {this} after {shape} items")
        if this == QUERY:
            if not isinstance(item.get("query"), str):
                raise InputError(path, line, "not a multiple-choice item: `query` must be a string")
            if not _strings(item.get("choices")):
                raise InputError(path, line, "`choices` must be a list of at least two strings")
            _check_gold(path, line, item.get("gold"), len(item["choices"]))
        else:
            if not _strings(item.get("context_options")):
                raise InputError(path, line, "`context_options` must list at least two strings")
            if not isinstance(item.get("continuation"), str):
                raise InputError(path, line, "`continuation` must be a string")
            _check_gold(path, line, item.get("gold"), len(item["context_options"]))
        count += 1
    if shape is None:
        raise InputError(path, None, "no items: a task file needs at least one")
    return shape, count


def task_config(name: str, data_file: str | os.PathLike, shape: str) -> dict[str, Any]:
    """The lm-eval task YAML (as a dict) for one local JSONL file."""
    config: dict[str, Any] = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(Path(data_file).resolve())}},
        "test_split": "test",
        "output_type": "multiple_choice",
    }
    if shape == QUERY:
        config.update(
            doc_to_text=_QUERY_TEXT, doc_to_choice="{{choices}}", doc_to_target="{{gold}}"
        )
    else:
        # An int from doc_to_text tells lm-eval the contexts are the options.
        config.update(
            doc_to_text="{{gold}}",
            doc_to_choice="{{context_options}}",
            doc_to_target="{{continuation}}",
        )
    config["metric_list"] = [
        {"metric": metric, "aggregation": "mean", "higher_is_better": True}
        for metric in ("acc", "acc_norm")
    ]
    config["metadata"] = {"version": 1.0, "source": "humpback-plugin"}
    return config


def write_tasks(tasks: dict[str, str], out_dir: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """One YAML per task into ``out_dir``; returns each task's file, shape and item count."""
    out_dir = Path(out_dir)
    written: dict[str, dict[str, Any]] = {}
    for name, data_file in tasks.items():
        if not TASK_NAME.match(name):
            raise UsageError(
                f"task name {name!r}: use letters, digits, '_', '.' or '-', starting with a letter"
            )
        shape, items = check_task_file(data_file)
        with atomic_writer(out_dir / f"{name}.yaml") as fh:
            yaml.safe_dump(task_config(name, data_file, shape), fh, sort_keys=False)
        written[name] = {"file": str(data_file), "shape": shape, "items": items}
    return written
