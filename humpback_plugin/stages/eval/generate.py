"""Each model's answers to an instruction set, as AlpacaEval's ``model_outputs.json``.

Decoding defaults to the paper's evaluation setting, nucleus sampling with T=0.7 and
top_p=0.9 (section 4; the answer length is not reported: ``max_tokens``). The system text
is one of the conditions of the paper's tag ablation (Table 8): ``none`` (as Humpback's
AlpacaEval submission: no system block), ``S_a`` ("Answer in the style of an AI
Assistant.", the seed data's tag), ``S_w`` ("Answer with knowledge from web search.", the
augmented data's tag) or ``S_a+S_w``. On the chat endpoint it is the system turn, as the
training rows carry it; on the completions endpoint it precedes the instruction.

Resumable like every model-calling stage: answers go to a store in ``<output>.parts/``
and a re-run asks only what is missing. The final file is written atomically, in the
instruction set's order, with ``instruction``, ``output``, ``generator`` and AlpacaEval's
``dataset``; an instruction the server refused is left out, named in ``failures.jsonl``
and counted in the summary, never silently.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from humpback_plugin.core import event_loop
from humpback_plugin.core.client import ClientConfig, OpenAIClient
from humpback_plugin.core.config import SYSTEM_CONDITIONS, EvalGenerateConfig
from humpback_plugin.core.engine import Engine
from humpback_plugin.core.hashing import content_hash
from humpback_plugin.core.jsonl_io import write_json_atomic
from humpback_plugin.core.layout import work_dir_for
from humpback_plugin.core.runner import run_model_stage
from humpback_plugin.core.store import RecordStore
from humpback_plugin.stages.eval.instructions import EvalItem, read_items


def request_body(instruction: str, system: str | None, endpoint: str) -> dict[str, Any]:
    """The request for one instruction under a system text (None: no system block)."""
    if endpoint == "completions":
        return {"prompt": f"{system}\n\n{instruction}" if system else instruction}
    messages = [{"role": "system", "content": system}] if system else []
    return {"messages": [*messages, {"role": "user", "content": instruction}]}


@dataclass(frozen=True)
class Answer:
    """One instruction -> its answer record. A plain picklable object, so the same work
    runs in this process or in Ray actors (``--engine ray``)."""

    system_text: str | None
    endpoint: str
    params: dict[str, Any]

    async def __call__(
        self, client: OpenAIClient, item: EvalItem, key: str
    ) -> list[dict[str, Any]]:
        body = request_body(item.instruction, self.system_text, self.endpoint)
        if "messages" in body:
            gen = await client.chat(**body, **self.params)
        else:
            gen = await client.completion(**body, **self.params)
        choice = gen.choices[0] if gen.choices else None
        return [
            {
                "id": item.id,
                "instruction": item.instruction,
                "output": choice.text if choice else "",
                "finish_reason": choice.finish_reason if choice else None,
                "usage": gen.usage,
                "server_url": gen.server_url,
            }
        ]


def default_generator(model: str, system: str) -> str:
    """``m2`` for the main condition, ``m2+S_a`` for a tag-ablation condition."""
    return model if system == "none" else f"{model}+{system}"


def generate_outputs(
    instructions_path: str | os.PathLike, output_path: str | os.PathLike, **options: Any
) -> dict[str, Any]:
    """Answer every instruction; returns the summary. Options: :func:`generate_async`."""
    return event_loop.run(generate_async(instructions_path, output_path, **options))


async def generate_async(
    instructions_path: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    client_config: ClientConfig,
    settings: EvalGenerateConfig | None = None,
    generator: str | None = None,
    limit: int | None = None,
    work_dir: str | os.PathLike | None = None,
    preflight: bool = True,
    retry_failed: bool = False,
    show_progress: bool = True,
    client: OpenAIClient | None = None,
    engine: Engine | None = None,
) -> dict[str, Any]:
    """Writes ``output_path`` (AlpacaEval's JSON list) and ``summary.json`` in the work
    folder. ``generator`` names the model in the file (default: the served model name,
    with the system condition when it is not ``none``). ``engine`` (see
    :mod:`humpback_plugin.core.engine`) sends the requests from elsewhere, e.g. Ray
    actors; this process still reads, resumes and writes."""
    settings = settings or EvalGenerateConfig()
    items = read_items(instructions_path, limit=limit)
    system_text = SYSTEM_CONDITIONS[settings.system]
    params = settings.sampling()
    generator = generator or default_generator(client_config.model, settings.system)
    work = work_dir_for(output_path, work_dir)
    # Everything that changes the answers is in the key: a changed setting asks again.
    run_id = content_hash(
        "eval-generate", client_config.model, settings.endpoint, system_text, params
    )

    def key_of(item: EvalItem) -> str:
        return content_hash(run_id, item.id)

    def finish(store: RecordStore) -> dict[str, Any]:
        return _write_outputs(items, key_of, store, output_path, generator)

    result = await run_model_stage(
        name=f"eval generate ({generator})",
        client_config=client_config,
        inputs=items,
        key_of=key_of,
        input_id_of=lambda item: item.id,
        work=Answer(system_text, settings.endpoint, params),
        finish=finish,
        work_dir=work,
        store_name="answers.jsonl",
        total=len(items),
        preflight=preflight,
        retry_failed=retry_failed,
        show_progress=show_progress,
        client=client,
        engine=engine,
    )
    stats, counts = result.stats, result.outputs
    summary = {
        "stage": "eval_generate",
        "generator": generator,
        "instructions": len(items),
        "already_done": stats.already_done,
        "answered_this_run": stats.processed,
        **counts,
        **result.summary(client_config.model),
        "answers_per_s": result.per_second(stats.processed),
        "completion_tokens_per_s": result.per_second(result.client.completion_tokens),
        "endpoint": settings.endpoint,
        "system": settings.system,
        "system_text": system_text,
        "sampling": params,
        "instructions_path": str(instructions_path),
        "output": str(output_path),
    }
    write_json_atomic(work / "summary.json", summary)
    return summary


def _write_outputs(
    items: list[EvalItem],
    key_of: Any,
    store: RecordStore,
    output_path: str | os.PathLike,
    generator: str,
) -> dict[str, Any]:
    """AlpacaEval's outputs file in the instruction set's order, and its counts."""
    counts = {"answered": 0, "missing": 0, "truncated": 0, "empty": 0}
    chars = 0

    def rows() -> Iterator[dict[str, Any]]:
        nonlocal chars
        for item in items:
            record = store.get(key_of(item))
            if record is None or record.get("empty"):
                counts["missing"] += 1
                continue
            counts["answered"] += 1
            counts["truncated"] += record.get("finish_reason") == "length"
            counts["empty"] += not record["output"].strip()
            chars += len(record["output"])
            row = {"instruction": item.instruction, "output": record["output"]}
            row["generator"] = generator
            if item.dataset is not None:
                row["dataset"] = item.dataset
            yield row

    write_json_atomic(output_path, list(rows()))
    counts["mean_output_chars"] = (
        round(chars / counts["answered"], 1) if counts["answered"] else None
    )
    return counts
