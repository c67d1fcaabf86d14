"""Stage 1: human-written seed pairs (paper section 2).

The paper's seed is 3,200 Open Assistant (oasst1) examples: the first turn of each
conversation tree only (the root prompt and an assistant reply to it), English only, the
reply ranked best by humans (rank 0). ``humpback seed`` reads oasst1 in both official
formats (the flat message table and the nested ``*.trees.jsonl``) and generic
instruction/response data (Dolly, Alpaca, LIMA, chat messages), and writes
:class:`SeedPair` JSONL. The pipeline calls :func:`load_seed`.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import click

from humpback_plugin.corpus_readers import HF_PREFIX, load_hf_dataset
from humpback_plugin.hookspecs import hookimpl
from humpback_plugin.jsonl_io import InputError, atomic_writer, iter_json_records, iter_jsonl
from humpback_plugin.records import SeedPair

# Default quality filters on oasst1 messages. Each can be turned off (see OASST_OPTIONS).
OASST_DEFAULTS: dict[str, Any] = {
    "lang": "en",  # paper: English only (prompt and reply)
    "rank": 0,  # paper: the reply ranked best by human raters
    "drop_deleted": True,  # messages deleted by moderators
    "drop_synthetic": True,  # machine-written trees (oasst "synthetic": true)
    "drop_review_failed": True,  # review_result false: failed the community review
}


def _peek(path: str) -> dict[str, Any] | None:
    """The first JSON object of a JSONL file (None when it is not one)."""
    if path.startswith(HF_PREFIX) or Path(path).is_dir():
        return None
    name = path.lower().removesuffix(".gz")
    if not name.endswith((".jsonl", ".ndjson", ".json")):
        return None
    if name.endswith(".json"):
        return None
    try:
        for _line, obj in iter_jsonl(path, on_error=lambda *a: None):
            return obj
    except InputError:
        return None
    return None


@dataclass
class SeedStats:
    """Counts for one input: pairs written and dropped messages/rows by reason."""

    loader: str = ""
    pairs: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    bad_records: int = 0


def _drop_reason(message: dict[str, Any], options: dict[str, Any], role: str) -> str | None:
    lang = options.get("lang", OASST_DEFAULTS["lang"])
    if message.get("role") != role:
        return f"{role}_role"
    if lang and message.get("lang") != lang:
        return "not_" + str(lang)
    if options.get("drop_deleted", True) and message.get("deleted"):
        return "deleted"
    if options.get("drop_synthetic", True) and message.get("synthetic"):
        return "synthetic"
    if options.get("drop_review_failed", True) and message.get("review_result") is False:
        return "review_failed"
    if not str(message.get("text") or "").strip():
        return "empty_text"
    return None


def _oasst_pair(prompt: dict[str, Any], reply: dict[str, Any], source: dict[str, Any]) -> SeedPair:
    instruction, output = prompt["text"].strip(), reply["text"].strip()
    provenance = {
        **source,
        "message_tree_id": source.get("message_tree_id") or prompt.get("message_tree_id"),
        "prompt_id": prompt.get("message_id"),
        "reply_id": reply.get("message_id"),
        "rank": reply.get("rank"),
    }
    return SeedPair(
        id=SeedPair.make_id(instruction, output),
        instruction=instruction,
        output=output,
        source={k: v for k, v in provenance.items() if v is not None},
    )


def _pick_reply(
    replies: list[dict[str, Any]], options: dict[str, Any], stats: SeedStats
) -> dict[str, Any] | None:
    """The reply with the wanted rank among those that pass the filters."""
    wanted_rank = options.get("rank", OASST_DEFAULTS["rank"])
    usable = []
    for reply in replies:
        reason = _drop_reason(reply, options, "assistant")
        if reason is None:
            usable.append(reply)
    if wanted_rank is None:
        ranked = [r for r in usable if r.get("rank") is not None]
        return min(ranked, key=lambda r: r["rank"]) if ranked else (usable[:1] or [None])[0]
    for reply in usable:
        if reply.get("rank") == wanted_rank:
            return reply
    return None


class OasstMessagesLoader:
    """The flat oasst1 message table (``2023-04-12_oasst_ready.messages.jsonl``, the HF
    ``OpenAssistant/oasst1`` rows): one message per line with message_id, parent_id,
    role, rank, lang... Keeps the root prompts and the replies that could be picked while
    streaming, then pairs each root with its rank-0 reply."""

    name = "oasst_messages"

    def matches(self, path: str) -> bool:
        first = _peek(path)
        return bool(first) and {"message_id", "parent_id", "role"} <= set(first)

    def load(self, path: str, options: dict[str, Any]) -> Iterator[SeedPair]:
        stats: SeedStats = options.get("stats") or SeedStats()
        roots: dict[str, tuple[Any, dict[str, Any]]] = {}
        replies: dict[str, list[dict[str, Any]]] = {}
        for line, msg in iter_jsonl(path, on_error=options.get("on_error")):
            if msg.get("parent_id") is None:
                reason = _drop_reason(msg, options, "prompter")
                if reason:
                    stats.dropped[f"prompt_{reason}"] += 1
                else:
                    roots[msg["message_id"]] = (line, msg)
            elif msg.get("role") == "assistant":
                # Keep only what a first-turn pick needs; depth is known once roots are.
                kept = {
                    k: msg.get(k)
                    for k in (
                        "message_id",
                        "text",
                        "role",
                        "lang",
                        "rank",
                        "deleted",
                        "synthetic",
                        "review_result",
                    )
                }
                replies.setdefault(msg["parent_id"], []).append(kept)
        for root_id, (line, prompt) in roots.items():
            reply = _pick_reply(replies.get(root_id, []), options, stats)
            if reply is None:
                stats.dropped["no_usable_rank0_reply"] += 1
                continue
            yield _oasst_pair(prompt, reply, {"file": path, "line": line, "format": self.name})


class OasstTreesLoader:
    """Nested oasst ``*.trees.jsonl``: one conversation tree per line, the root prompt
    under ``prompt`` and its answers under ``replies``."""

    name = "oasst_trees"

    def matches(self, path: str) -> bool:
        first = _peek(path)
        return bool(first) and "prompt" in first and "message_tree_id" in first

    def load(self, path: str, options: dict[str, Any]) -> Iterator[SeedPair]:
        stats: SeedStats = options.get("stats") or SeedStats()
        for line, tree in iter_jsonl(path, on_error=options.get("on_error")):
            prompt = tree.get("prompt")
            if not isinstance(prompt, dict):
                _report(options, path, line, "tree without a 'prompt' object")
                continue
            reason = _drop_reason(prompt, options, "prompter")
            if reason:
                stats.dropped[f"prompt_{reason}"] += 1
                continue
            reply = _pick_reply(prompt.get("replies") or [], options, stats)
            if reply is None:
                stats.dropped["no_usable_rank0_reply"] += 1
                continue
            source = {
                "file": path,
                "line": line,
                "format": self.name,
                "message_tree_id": tree.get("message_tree_id"),
            }
            yield _oasst_pair(prompt, reply, source)


def _report(options: dict[str, Any], path: str, where: Any, message: str) -> None:
    on_error = options.get("on_error")
    if on_error is None:
        raise InputError(path, where, message)
    on_error(path, where, message)


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, dict):  # {"from": "human", "value": "..."} and similar
        for key in ("value", "content", "text"):
            if isinstance(value.get(key), str):
                return value[key].strip()
    return ""


def pair_from_row(row: dict[str, Any], options: dict[str, Any]) -> tuple[str, str] | str:
    """(instruction, output) from one row, or the reason there is none.

    Explicit ``instruction_field``/``output_field`` win; otherwise the shape decides:
    LIMA ``conversations: [q, a, ...]``, chat ``messages``, Dolly
    ``instruction/response`` (+ ``context``), Alpaca ``instruction/output`` (+ ``input``).
    ``input_field`` (Alpaca ``input``, Dolly ``context``) is folded into the instruction
    after a blank line.
    """
    inst_field = options.get("instruction_field")
    out_field = options.get("output_field")
    if not inst_field and not out_field:
        turns = row.get("conversations")
        if isinstance(turns, list):
            if len(turns) < 2:
                return "conversation_has_no_answer"
            return _text(turns[0]), _text(turns[1])
        messages = row.get("messages")
        if isinstance(messages, list):
            user = next(
                (m for m in messages if isinstance(m, dict) and m.get("role") == "user"), None
            )
            bot = next(
                (m for m in messages if isinstance(m, dict) and m.get("role") == "assistant"), None
            )
            if user is None or bot is None:
                return "messages_without_user_and_assistant"
            return _text(user), _text(bot)
    inst_field = inst_field or next(
        (f for f in ("instruction", "prompt", "question", "query") if f in row), "instruction"
    )
    out_field = out_field or next(
        (f for f in ("response", "output", "answer", "completion") if f in row), "output"
    )
    input_field = options.get("input_field") or next(
        (f for f in ("input", "context") if f in row), None
    )
    if inst_field not in row or out_field not in row:
        fields = ", ".join(sorted(row)[:12])
        return f"missing field {inst_field if inst_field not in row else out_field!r} ({fields})"
    instruction, output = _text(row[inst_field]), _text(row[out_field])
    extra = _text(row.get(input_field)) if input_field else ""
    if extra:
        instruction = f"{instruction}\n\n{extra}"
    return instruction, output


class PairsLoader:
    """Generic instruction/response rows: JSONL, a JSON list, or ``hf:NAME[:SPLIT]``."""

    name = "pairs"

    def matches(self, path: str) -> bool:
        return True

    def load(self, path: str, options: dict[str, Any]) -> Iterator[SeedPair]:
        stats: SeedStats = options.get("stats") or SeedStats()
        if path.startswith(HF_PREFIX) or Path(path).is_dir():
            dataset = load_hf_dataset(path, options.get("split") or "train")
            rows: Any = ((f"row {i}", row) for i, row in enumerate(dataset))
        else:
            rows = iter_json_records(path, on_error=options.get("on_error"))
        for where, row in rows:
            found = pair_from_row(row, options)
            if isinstance(found, str):
                if found.startswith("missing field"):
                    # Strict: stop naming file and line; --skip-bad-records counts it.
                    _report(
                        options,
                        path,
                        where,
                        found + "; map it with --instruction-field/--output-field",
                    )
                stats.dropped[found.split(" (")[0]] += 1
                continue
            instruction, output = found
            if not instruction or not output:
                stats.dropped["empty_instruction_or_output"] += 1
                continue
            source: dict[str, Any] = {"file": path, "line": where, "format": self.name}
            if row.get("id") is not None:
                source["row_id"] = row["id"]
            yield SeedPair(
                id=SeedPair.make_id(instruction, output),
                instruction=instruction,
                output=output,
                source=source,
            )


BUILTIN_LOADERS: dict[str, Any] = {
    "oasst_trees": OasstTreesLoader(),
    "oasst_messages": OasstMessagesLoader(),
    "pairs": PairsLoader(),
}


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
    from humpback_plugin.plugins import components

    warn = warn or (lambda message: click.echo(message, err=True))
    loaders = components("register_seed_loaders") or BUILTIN_LOADERS
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
                    raise click.UsageError(
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


def print_seed_summary(summary: SeedSummary) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Seed pairs -> {summary.output}")
    for col in ("input", "format", "pairs", "dropped (reason: count)", "bad records"):
        table.add_column(col, justify="right" if col in ("pairs", "bad records") else "left")
    for path, info in summary.by_input.items():
        dropped = ", ".join(f"{k}: {v}" for k, v in info["dropped"].items()) or "-"
        table.add_row(path, info["format"], f"{info['pairs']:,}", dropped, str(info["bad_records"]))
    Console(stderr=True).print(table)


@click.command(name="seed")
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Seed JSONL.")
@click.option(
    "--format",
    "loader",
    default=None,
    help="oasst_messages, oasst_trees or pairs (default: detected from the first record).",
)
@click.option("--limit", type=int, default=None, help="At most this many pairs (paper: 3200).")
@click.option("--lang", default="en", show_default=True, help="oasst language; '' for all.")
@click.option(
    "--rank",
    default="0",
    show_default=True,
    help="oasst reply rank to take; 'best' takes the best-ranked reply that is left.",
)
@click.option("--keep-deleted", is_flag=True, help="oasst: keep messages marked deleted.")
@click.option("--keep-synthetic", is_flag=True, help="oasst: keep synthetic (machine) trees.")
@click.option("--keep-review-failed", is_flag=True, help="oasst: keep review_result=false.")
@click.option("--instruction-field", default=None, help="Field with the instruction.")
@click.option("--output-field", default=None, help="Field with the response.")
@click.option(
    "--input-field", default=None, help="Field folded into the instruction (Alpaca input)."
)
@click.option("--split", default="train", show_default=True, help="Split of an hf: dataset.")
@click.option(
    "--skip-bad-records", is_flag=True, help="Skip and count malformed lines instead of stopping."
)
@click.option("--summary", "summary_path", type=click.Path(dir_okay=False), help="Summary JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No summary table.")
def seed_command(
    inputs: tuple[str, ...],
    output: str,
    loader: str | None,
    limit: int | None,
    lang: str,
    rank: str,
    keep_deleted: bool,
    keep_synthetic: bool,
    keep_review_failed: bool,
    instruction_field: str | None,
    output_field: str | None,
    input_field: str | None,
    split: str,
    skip_bad_records: bool,
    summary_path: str | None,
    quiet: bool,
) -> None:
    """Collect human-written seed pairs (paper section 2).

    \b
    Open Assistant (oasst1), as in the paper: the first turn of each tree only (root
    prompt + an assistant reply to it), English only, the reply with human rank 0.
    Both formats are detected from the first record:
      flat message table   one message per line (message_id, parent_id, role, rank...)
      *.trees.jsonl        one nested conversation tree per line
    Default quality filters (turn off with the --keep-* flags): drop messages marked
    deleted, synthetic (machine-written) trees and messages that failed review
    (review_result false). A tree whose rank-0 reply is gone gives no pair.

    \b
    Generic pairs (JSONL, a JSON list, or hf:NAME[:SPLIT] with `datasets` installed):
      Dolly    instruction / response (+ context folded into the instruction)
      Alpaca   instruction / output (+ input folded into the instruction)
      LIMA     conversations: [question, answer, ...] (first turn)
      chat     messages: [{role: user}, {role: assistant}]
    or map fields with --instruction-field / --output-field / --input-field.

    \b
    Bad input stops with the file and line (malformed JSON, non-UTF-8, a missing field);
    --skip-bad-records skips and counts such lines instead. Exact duplicate pairs are
    dropped. The output is written completely or not at all.

    \b
    Example:
      humpback seed oasst1/2023-04-12_oasst_ready.trees.jsonl.gz -o seed.jsonl --limit 3200
    """
    if rank != "best" and not rank.lstrip("-").isdigit():
        raise click.BadParameter(f"{rank!r}: a number or 'best'", param_hint="--rank")
    options: dict[str, Any] = {
        "lang": lang,
        "rank": None if rank == "best" else int(rank),
        "drop_deleted": not keep_deleted,
        "drop_synthetic": not keep_synthetic,
        "drop_review_failed": not keep_review_failed,
        "instruction_field": instruction_field,
        "output_field": output_field,
        "input_field": input_field,
        "split": split,
    }
    try:
        summary = load_seed(
            list(inputs),
            output,
            loader=loader,
            options=options,
            limit=limit,
            skip_bad_records=skip_bad_records,
        )
    except InputError as exc:
        raise click.ClickException(str(exc)) from exc
    if summary_path:
        from humpback_plugin.jsonl_io import write_json_atomic

        write_json_atomic(summary_path, summary.to_dict())
    if not quiet:
        print_seed_summary(summary)
    click.echo(json.dumps({"pairs": summary.pairs, "output": str(output)}))


@hookimpl
def register_seed_loaders(register: Any) -> None:
    for name, loader in BUILTIN_LOADERS.items():
        register(name, loader)


@hookimpl
def register_commands(cli: Any) -> None:
    cli.add_command(seed_command)
