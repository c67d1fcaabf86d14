"""Self-augmentation: the backward model writes an instruction for every web segment.

The backward model M_yx is trained on (response -> instruction) pairs, so it models
p(instruction | response). Serving it is just a model name on a vLLM server (a LoRA adapter
name works too); this stage sends each segment to it and keeps what comes back as a
candidate pair (instruction = the generation, output = the segment).

Prompt. The paper does not publish the backward model's prompt. The default,
``prompts/backtranslation.txt``, is the one the same group used in the follow-up paper
(Back-and-Forth Translation, arXiv 2408.04614): "Below is a candidate answer to a question
or instruction from an user. Write the most likely question to which the text below would
be a great answer." followed by the segment. It is sent as one user turn of the chat
endpoint, so the server applies the model's own chat template, the same one the export
stage uses for the backward model's training rows (both go through the
``backtranslation_request`` hook). ``endpoint: completions`` sends the filled template as a
raw prompt instead, for base models trained without a chat template.

Sampling. The paper's only stated decoding is nucleus sampling with T=0.7, top_p=0.9, which
is the default here; BF used T=1.0. ``n`` asks for several instructions per segment in one
request (the OpenAI ``n`` parameter) and keeps each as its own candidate.

Before any judge, cheap filters (``instruction_filters``) drop truncated, empty, too long,
echoing, meta-commentary and refusal instructions; the rejects go to a side file with the
reason. Everything is resumable: generations are appended to a store in the work folder
(default ``<output>.parts/``) and a re-run skips what is there. Filters run when the final
file is written, so changing them needs no new generations.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from humpback_plugin.core import event_loop
from humpback_plugin.core.client import ClientConfig, OpenAIClient
from humpback_plugin.core.config import AugmentConfig
from humpback_plugin.core.engine import Engine
from humpback_plugin.core.hashing import content_hash
from humpback_plugin.core.jsonl_io import atomic_writer, iter_jsonl, write_json_atomic
from humpback_plugin.core.layout import side_path, work_dir_for
from humpback_plugin.core.records import Segment, read_records
from humpback_plugin.core.runner import count_lines, run_model_stage, send
from humpback_plugin.core.sharding import in_shard
from humpback_plugin.core.store import RecordStore, finalize
from humpback_plugin.plugins import build, load_template, pm
from humpback_plugin.stages.augment.instruction_filters import first_rejection


def iter_segments(
    path: str | os.PathLike, shard: tuple[int, int] | None = None
) -> Iterator[Segment]:
    """Segments of a JSONL file (only shard I of N when given); a bad line stops with the
    file and line named."""

    def prepare(obj: dict[str, Any]) -> dict[str, Any]:
        if "id" not in obj and isinstance(obj.get("text"), str):
            obj = {**obj, "id": Segment.make_id(obj["text"])}
        return {"source": str(path), **obj}

    for _obj, segment in read_records(path, Segment, "a segment", prepare):
        if in_shard(segment.id, shard):
            yield segment


def segment_ids(path: str | os.PathLike, shard: tuple[int, int] | None = None) -> Iterator[str]:
    """The ids :func:`iter_segments` gives, for a file it has already read: JSON only, no
    second validation (the final files are written in this order)."""
    for _lineno, obj in iter_jsonl(path):
        segment_id = obj["id"] if "id" in obj else Segment.make_id(obj["text"])
        if in_shard(segment_id, shard):
            yield segment_id


@dataclass(frozen=True)
class Backtranslate:
    """One segment -> its candidate records: what the backward model is asked and how its
    answer is kept. A plain picklable object, so the same work runs in this process or in
    Ray actors (``--engine ray``); the hooks are those of the process it runs in."""

    template_text: str
    template_hash: str
    endpoint: str
    params: dict[str, Any]

    async def __call__(
        self, client: OpenAIClient, segment: Segment, key: str
    ) -> list[dict[str, Any]]:
        body = pm.hook.backtranslation_request(segment=segment, template=self.template_text)
        gen = await send(client, self.endpoint, body, **self.params)
        provenance = gen.provenance(self.template_hash)
        records = []
        for index, choice in enumerate(gen.choices):
            instruction = pm.hook.postprocess_instruction(text=choice.text, segment=segment)
            # A Candidate as model_dump() would give it, built directly: every field comes
            # from a validated Segment or the client, and pydantic here cost a tenth of
            # the stage's CPU time at thousands of requests a second.
            candidate = {
                "id": content_hash("candidate", segment.id, instruction),
                "segment_id": segment.id,
                "instruction": instruction if instruction is not None else choice.text,
                "output": segment.text,
                "header": segment.header,
                "source": segment.source,
                "finish_reason": choice.finish_reason,
                "provenance": dict(provenance),
                "choice_index": index,
            }
            if candidate["instruction"] != choice.text:
                candidate["raw_instruction"] = choice.text
            records.append(candidate)
        return records


def augment(
    segments_path: str | os.PathLike, output_path: str | os.PathLike, **options: Any
) -> dict[str, Any]:
    """Generate candidate pairs for every segment; returns the run summary.

    Writes ``output_path`` (accepted candidates, input order), a side file of rejected
    candidates with their reason, and ``summary.json`` in the work folder. Raises
    :class:`~humpback_plugin.core.errors.StageInterrupted` when the server goes away (re-run
    to resume) and :class:`~humpback_plugin.core.errors.InputError` for a bad input line.

    ``options`` are those of :func:`augment_async`, which this runs in a fresh event loop.
    """
    return event_loop.run(augment_async(segments_path, output_path, **options))


async def augment_async(
    segments_path: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    client_config: ClientConfig,
    settings: AugmentConfig | None = None,
    work_dir: str | os.PathLike | None = None,
    rejected_path: str | os.PathLike | None = None,
    preflight: bool = True,
    retry_failed: bool = False,
    show_progress: bool = True,
    shard: tuple[int, int] | None = None,
    engine: Engine | None = None,
) -> dict[str, Any]:
    """``engine`` (see :mod:`humpback_plugin.core.engine`) runs the requests elsewhere, e.g.
    in Ray actors; this process still reads, resumes and writes."""
    settings = settings or AugmentConfig()
    prompt = load_template(settings.template, required=("output",))
    # Unknown filter names fail before any request.
    checks = build("register_instruction_filters", settings.filters, settings.filter_options)
    params = settings.sampling()
    endpoint = settings.endpoint
    work = work_dir_for(output_path, work_dir)
    rejected_path = Path(rejected_path) if rejected_path else side_path(output_path, "rejected")
    # Everything that changes the generations is in the key: a changed setting re-generates.
    run_id = content_hash("augment", prompt.sha256, client_config.model, endpoint, params)

    def key_of_id(segment_id: str) -> str:
        return content_hash(run_id, segment_id)

    def key_of(segment: Segment) -> str:
        return key_of_id(segment.id)

    def finish(store: RecordStore) -> dict[str, Any]:
        return _write_outputs(
            segments_path, shard, key_of_id, settings.n, store, checks, output_path, rejected_path
        )

    result = await run_model_stage(
        name="augment",
        client_config=client_config,
        inputs=iter_segments(segments_path, shard),
        key_of=key_of,
        input_id_of=lambda s: s.id,
        work=Backtranslate(prompt.text, prompt.short_hash, endpoint, params),
        finish=finish,
        work_dir=work,
        store_name="generations.jsonl",
        total=count_lines(segments_path),
        preflight=preflight,
        retry_failed=retry_failed,
        show_progress=show_progress,
        chat_endpoint=settings.endpoint == "chat",
        engine=engine,
    )
    stats, counts = result.stats, result.outputs
    summary = {
        "stage": "augment",
        "segments": stats.total_inputs,
        "already_done": stats.already_done,
        "segments_this_run": stats.processed,
        "generations": counts["generations"],
        "accepted": counts["accepted"],
        "rejected": counts["rejected"],
        "rejected_by_reason": dict(counts["reasons"]),
        **result.summary(client_config.model),
        "segments_per_s": result.per_second(stats.processed),
        "completion_tokens_per_s": result.per_second(result.client.completion_tokens),
        "endpoint": endpoint,
        "template": prompt.path,
        "template_sha256": prompt.sha256,
        "sampling": params,
        "output": str(output_path),
        "rejected_path": str(rejected_path),
    }
    write_json_atomic(work / "summary.json", summary)
    return summary


def _write_outputs(
    segments_path: str | os.PathLike,
    shard: tuple[int, int] | None,
    key_of_id: Callable[[str], str],
    n: int,
    store: RecordStore,
    checks: list,
    output_path: str | os.PathLike,
    rejected_path: Path,
) -> dict[str, Any]:
    """Filter the stored generations and write accepted / rejected files in input order."""
    counts: dict[str, Any] = {"generations": 0, "accepted": 0, "rejected": 0, "reasons": Counter()}
    seen: set[str] = set()

    def keys() -> Iterator[str]:
        for segment_id in segment_ids(segments_path, shard):
            key = key_of_id(segment_id)
            yield key
            yield from (f"{key}#{i}" for i in range(1, n))

    with atomic_writer(rejected_path) as rejected:

        def accepted() -> Iterator[dict[str, Any]]:
            for record in store.ordered(keys()):
                if record.pop("empty", False):
                    continue
                record.pop("key", None)
                counts["generations"] += 1
                reason = first_rejection(checks, record)
                if reason is None and record["id"] in seen:
                    reason = "duplicate"  # the same instruction twice for one segment
                if reason:
                    counts["rejected"] += 1
                    counts["reasons"][reason] += 1
                    record["rejected_reason"] = reason
                    rejected.write(json.dumps(record, ensure_ascii=False) + "\n")
                    continue
                seen.add(record["id"])
                counts["accepted"] += 1
                yield record

        finalize(accepted(), output_path)
    return counts
