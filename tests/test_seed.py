"""Seed loaders and the `humpback seed` command."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from humpback_plugin.commands.seed import seed_command
from humpback_plugin.core.errors import InputError
from humpback_plugin.plugins import components
from humpback_plugin.stages.seed.stage import load_seed


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def msg(mid, parent, role, text, rank=None, **kw):
    base = {
        "message_id": mid,
        "parent_id": parent,
        "role": role,
        "text": text,
        "rank": rank,
        "lang": "en",
        "deleted": False,
        "synthetic": False,
        "review_result": True,
        "message_tree_id": "t1",
    }
    return {**base, **kw}


def pairs_of(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- the shared oasst1 files (exact counts) -------------------------------------------------


def test_oasst_messages_shared(shared_data, tmp_path):
    out = tmp_path / "seed.jsonl"
    summary = load_seed([str(shared_data / "seed" / "oasst1_en_validation_messages.jsonl")], out)
    assert summary.pairs == 186
    info = next(iter(summary.by_input.values()))
    assert info["format"] == "oasst_messages"
    # 188 trees: 2 have no rank-0 reply (one kept only its rank-2 reply, one only unranked).
    assert info["dropped"] == {"no_usable_rank0_reply": 2}
    rows = pairs_of(out)
    assert len(rows) == 186 and len({r["id"] for r in rows}) == 186
    first = rows[0]
    assert first["instruction"] == "What do you think about ChatGPT?"
    assert first["source"]["rank"] == 0 and first["source"]["line"] == 1
    assert {"file", "prompt_id", "reply_id", "message_tree_id"} <= set(first["source"])
    best = load_seed(
        [str(shared_data / "seed" / "oasst1_en_validation_messages.jsonl")],
        tmp_path / "b.jsonl",
        options={"rank": None},
    )
    assert best.pairs == 188


def test_oasst_trees_shared(shared_data, tmp_path):
    path = str(shared_data / "seed" / "oasst_en_100_trees.jsonl")
    summary = load_seed([path], tmp_path / "seed.jsonl")
    assert summary.pairs == 94
    info = summary.by_input[path]
    assert info["format"] == "oasst_trees"
    assert info["dropped"] == {"prompt_synthetic": 5, "no_usable_rank0_reply": 1}
    with_synthetic = load_seed([path], tmp_path / "s.jsonl", options={"drop_synthetic": False})
    assert with_synthetic.pairs == 99
    limited = load_seed([path], tmp_path / "l.jsonl", limit=10)
    assert limited.pairs == 10 and len(pairs_of(tmp_path / "l.jsonl")) == 10


def test_dolly_shared(shared_data, tmp_path):
    summary = load_seed(
        [str(shared_data / "seed" / "dolly15k_first6400.jsonl")], tmp_path / "d.jsonl"
    )
    assert summary.pairs == 6397 and summary.duplicates == 3
    assert pairs_of(tmp_path / "d.jsonl")[0]["source"]["row_id"] is not None


def test_seed_command_shared(shared_data, tmp_path):
    out = tmp_path / "seed.jsonl"
    result = CliRunner().invoke(
        seed_command,
        [
            str(shared_data / "seed" / "oasst_en_100_trees.jsonl"),
            str(shared_data / "seed" / "oasst1_en_validation_messages.jsonl"),
            "-o",
            str(out),
            "--limit",
            "3200",
            "--summary",
            str(tmp_path / "s.json"),
        ],
    )
    assert result.exit_code == 0, result.output
    # Six of the 100 trees are also in the validation split: kept once.
    assert json.loads(result.output.strip().splitlines()[-1])["pairs"] == 94 + 186 - 6
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["pairs"] == 274 and summary["duplicates"] == 6


# --- oasst selection rules on hand-made trees -----------------------------------------------


def test_oasst_first_turn_english_rank0(tmp_path):
    rows = [
        msg("r1", None, "prompter", "Question one?"),
        msg("a1", "r1", "assistant", "second best", rank=1),
        msg("a0", "r1", "assistant", "best answer", rank=0),
        msg("p2", "a0", "prompter", "follow-up?"),
        msg("a2", "p2", "assistant", "deeper answer", rank=0),  # not a first turn
        msg("r2", None, "prompter", "Frage?", lang="de"),
        msg("b0", "r2", "assistant", "Antwort", rank=0, lang="de"),
        msg("r3", None, "prompter", "Deleted reply?"),
        msg("c0", "r3", "assistant", "gone", rank=0, deleted=True),
        msg("c1", "r3", "assistant", "still here", rank=1),
        msg("r4", None, "prompter", "Failed review?", review_result=False),
        msg("d0", "r4", "assistant", "x", rank=0),
    ]
    out = tmp_path / "seed.jsonl"
    summary = load_seed([str(write_jsonl(tmp_path / "m.jsonl", rows))], out)
    assert [(p["instruction"], p["output"]) for p in pairs_of(out)] == [
        ("Question one?", "best answer")
    ]
    dropped = next(iter(summary.by_input.values()))["dropped"]
    assert dropped == {"prompt_not_en": 1, "prompt_review_failed": 1, "no_usable_rank0_reply": 1}
    # The best-ranked usable reply instead of strictly rank 0:
    load_seed([str(tmp_path / "m.jsonl")], out, options={"rank": None})
    assert ("Deleted reply?", "still here") in [
        (p["instruction"], p["output"]) for p in pairs_of(out)
    ]


def test_oasst_trees_format(tmp_path):
    tree = {
        "message_tree_id": "t",
        "tree_state": "ready_for_export",
        "prompt": {
            **msg("r", None, "prompter", "Q?"),
            "replies": [
                {**msg("a1", "r", "assistant", "meh", rank=1), "replies": []},
                {**msg("a0", "r", "assistant", "A!", rank=0), "replies": []},
            ],
        },
    }
    out = tmp_path / "seed.jsonl"
    load_seed([str(write_jsonl(tmp_path / "t.trees.jsonl", [tree]))], out)
    (pair,) = pairs_of(out)
    assert pair["instruction"] == "Q?" and pair["output"] == "A!"
    assert pair["source"]["message_tree_id"] == "t" and pair["source"]["format"] == "oasst_trees"


# --- generic pairs ---------------------------------------------------------------------------


def test_generic_shapes(tmp_path):
    rows = [
        {"instruction": "Summarise", "context": "Some text.", "response": "Short."},  # Dolly
        {"instruction": "Translate", "input": "bonjour", "output": "hello"},  # Alpaca
        {"conversations": ["What is 2+2?", "4", "and 3+3?", "6"]},  # LIMA
        {
            "messages": [
                {"role": "system", "content": "s"},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"},
            ]
        },
        {"instruction": "Empty answer", "output": "  "},
        {"instruction": "Extra fields are fine", "output": "ok", "category": "x", "n": 1},
    ]
    out = tmp_path / "seed.jsonl"
    summary = load_seed([str(write_jsonl(tmp_path / "p.jsonl", rows))], out)
    got = [(p["instruction"], p["output"]) for p in pairs_of(out)]
    assert got == [
        ("Summarise\n\nSome text.", "Short."),
        ("Translate\n\nbonjour", "hello"),
        ("What is 2+2?", "4"),
        ("Hi", "Hello!"),
        ("Extra fields are fine", "ok"),
    ]
    assert summary.by_input[str(tmp_path / "p.jsonl")]["dropped"] == {
        "empty_instruction_or_output": 1
    }


def test_field_mapping_and_json_list(tmp_path):
    path = tmp_path / "qa.json"
    path.write_text(json.dumps([{"q": "Why?", "a": "Because.", "ctx": "physics"}]))
    out = tmp_path / "seed.jsonl"
    result = CliRunner().invoke(
        seed_command,
        [
            str(path),
            "-o",
            str(out),
            "--instruction-field",
            "q",
            "--output-field",
            "a",
            "--input-field",
            "ctx",
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    (pair,) = pairs_of(out)
    assert pair["instruction"] == "Why?\n\nphysics" and pair["source"]["line"] == "record 0"
    result = CliRunner().invoke(
        seed_command,
        [
            str(path),
            "-o",
            str(tmp_path / "x.jsonl"),
            "--instruction-field",
            "q",
            "--output-field",
            "nope",
        ],
    )
    assert result.exit_code == 1 and "qa.json:record 0: missing field 'nope'" in result.output
    assert not (tmp_path / "x.jsonl").exists()


# --- bad input -------------------------------------------------------------------------------


def test_malformed_lines_strict_and_skipped(tmp_path):
    path = tmp_path / "bad.jsonl"
    good = json.dumps({"instruction": "a", "output": "b"})
    path.write_bytes(
        (good + "\n{broken\n").encode()
        + b'{"instruction": "\xff"}\n'
        + json.dumps({"instruction": "c", "output": "d"}).encode()
        + b"\n"
    )
    out = tmp_path / "seed.jsonl"
    with pytest.raises(InputError, match=r"bad\.jsonl:2: malformed JSON"):
        load_seed([str(path)], out)
    assert not out.exists() and not list(tmp_path.glob(".seed.jsonl*"))
    summary = load_seed([str(path)], out, skip_bad_records=True)
    assert summary.pairs == 2 and summary.bad_records == 2
    assert [e["where"] for e in summary.errors] == [2, 3]
    result = CliRunner().invoke(seed_command, [str(path), "-o", str(out), "--skip-bad-records"])
    assert result.exit_code == 0 and "bad.jsonl:3: not UTF-8" in result.output


def test_empty_missing_and_truncated(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    out = tmp_path / "seed.jsonl"
    with pytest.raises(InputError, match="no seed pairs found"):
        load_seed([str(empty)], out)
    with pytest.raises(InputError, match="missing.jsonl: no such file"):
        load_seed([str(tmp_path / "missing.jsonl")], out)
    import gzip

    blob = gzip.compress(
        (
            "".join(json.dumps({"instruction": f"i{i}", "output": "o"}) + "\n" for i in range(2000))
        ).encode()
    )
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(InputError, match=r"cut\.jsonl\.gz:after line \d+: unreadable"):
        load_seed([str(cut)], out)
    assert not out.exists()


def test_big_line_and_help(tmp_path):
    path = write_jsonl(
        tmp_path / "big.jsonl", [{"instruction": "Long?", "output": "x" * 10_000_000}]
    )
    summary = load_seed([str(path)], tmp_path / "seed.jsonl")
    assert summary.pairs == 1
    result = CliRunner().invoke(seed_command, ["--help"])
    assert "--skip-bad-records" in result.output and "rank 0" in result.output


def test_loaders_registered():
    assert {"oasst_messages", "oasst_trees", "pairs"} <= set(components("register_seed_loaders"))
