"""Seed loaders: oasst1 (flat messages and nested trees) and generic instruction/response data.

The paper's seed is 3,200 Open Assistant (oasst1) examples: the first turn of each
conversation tree only (the root prompt and an assistant reply to it), English only, the
reply ranked best by humans (rank 0). Generic data (Dolly, Alpaca, LIMA, chat messages)
goes through :class:`PairsLoader` with a field mapping.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from humpback_plugin.core.errors import InputError
from humpback_plugin.core.hf import HF_PREFIX, load_hf_dataset
from humpback_plugin.core.jsonl_io import iter_json_records, iter_jsonl
from humpback_plugin.core.records import SeedPair

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
