"""The export stage: backward, M0 and M_k datasets with their cards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from humpback_plugin import SYSTEM_AUGMENTED, SYSTEM_SEED
from humpback_plugin.cli import cli
from humpback_plugin.core.errors import InputError
from humpback_plugin.core.hashing import file_sha256
from humpback_plugin.core.prompts import load_prompt
from humpback_plugin.hookspecs import hookimpl
from humpback_plugin.plugins import pm
from humpback_plugin.stages.export.stage import (
    DEFAULT_BACKTRANSLATION_TEMPLATE,
    export_backward,
    export_datasets,
    export_forward,
    read_card,
)
from tests.conftest import shared_file


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def seed(tmp_path: Path) -> Path:
    rows = [
        {"id": f"s{i}", "instruction": f"Question {i}?", "output": f"Answer number {i}."}
        for i in range(5)
    ]
    return write_jsonl(tmp_path / "seed.jsonl", rows)


@pytest.fixture
def curated(tmp_path: Path) -> Path:
    scores = [5, 3, 4, 5, None, 4]
    rows = [
        {
            "id": f"c{i}",
            "segment_id": f"g{i}",
            "instruction": f"Web question {i}?",
            "output": f"Web answer {i}.",
            "score": score,
        }
        for i, score in enumerate(scores)
    ]
    return write_jsonl(tmp_path / "curated.jsonl", rows)


def test_backward_reverses_pairs_with_the_augment_prompt(seed: Path, tmp_path: Path) -> None:
    result = export_backward(seed, tmp_path / "out" / "backward.jsonl")
    rows = read_jsonl(result.path)
    template = load_prompt(DEFAULT_BACKTRANSLATION_TEMPLATE)
    assert len(rows) == 5
    assert rows[0]["messages"] == [
        {"role": "user", "content": template.fill(output="Answer number 0.").strip()},
        {"role": "assistant", "content": "Question 0?"},
    ]
    card = read_card(result.path)
    assert card["role"] == "backward" and card["rows"] == 5
    assert card["sources"][0]["sha256"] == file_sha256(seed)
    assert card["templates"]["backtranslation"]["sha256"]
    assert card["axolotl_dataset"]["roles_to_train"] == ["assistant"]


def test_backward_uses_the_backtranslation_request_hook(seed: Path, tmp_path: Path) -> None:
    class Plugin:
        @hookimpl
        def backtranslation_request(self, segment, template):
            return {
                "messages": [
                    {"role": "system", "content": "Be a backward model."},
                    {"role": "user", "content": f"<<{segment.text}>>"},
                ]
            }

    pm.register(Plugin(), name="test-backtranslation")
    try:
        result = export_backward(seed, tmp_path / "backward.jsonl")
    finally:
        pm.unregister(name="test-backtranslation")
    first = read_jsonl(result.path)[0]["messages"]
    assert first == [
        {"role": "system", "content": "Be a backward model."},
        {"role": "user", "content": "<<Answer number 0.>>"},
        {"role": "assistant", "content": "Question 0?"},
    ]


def test_m0_tags_seed_with_the_assistant_system_text(seed: Path, tmp_path: Path) -> None:
    result = export_forward(seed, tmp_path / "m0.jsonl")
    rows = read_jsonl(result.path)
    assert len(rows) == 5
    assert rows[2]["messages"] == [
        {"role": "system", "content": SYSTEM_SEED},
        {"role": "user", "content": "Question 2?"},
        {"role": "assistant", "content": "Answer number 2."},
    ]
    assert result.card["model"] == "M0"
    assert result.card["counts"]["augmented"] == 0


def test_mk_mixes_seed_and_curated_with_their_tags(
    seed: Path, curated: Path, tmp_path: Path
) -> None:
    result = export_forward(seed, tmp_path / "m1.jsonl", curated_path=curated, iteration=1)
    rows = read_jsonl(result.path)
    systems = [r["messages"][0]["content"] for r in rows]
    assert systems.count(SYSTEM_SEED) == 5
    assert systems.count(SYSTEM_AUGMENTED) == 6
    web = [r for r in rows if r["messages"][0]["content"] == SYSTEM_AUGMENTED]
    assert web[0]["messages"][1:] == [
        {"role": "user", "content": "Web question 0?"},
        {"role": "assistant", "content": "Web answer 0."},
    ]
    card = read_card(result.path)
    assert card["iteration"] == 1
    assert [s["role"] for s in card["sources"]] == ["seed", "curated"]
    assert card["templates"]["augmented_system"]["text"] == SYSTEM_AUGMENTED


def test_min_score_caps_ratio_and_upsampling(seed: Path, curated: Path, tmp_path: Path) -> None:
    result = export_forward(
        seed, tmp_path / "m1.jsonl", curated_path=curated, iteration=1, min_score=4
    )
    assert result.card["counts"]["augmented"] == 4  # scores 5, 4, 5, 4; None dropped

    result = export_forward(
        seed, tmp_path / "m1.jsonl", curated_path=curated, iteration=1, max_augmented=2
    )
    web = [r["messages"][1]["content"] for r in read_jsonl(result.path)[5:]]
    assert web == ["Web question 0?", "Web question 3?"]  # the two score-5 pairs, file order

    result = export_forward(
        seed,
        tmp_path / "m1.jsonl",
        curated_path=curated,
        iteration=1,
        seed_upsample=2,
        augmented_ratio=0.3,
    )
    assert result.card["counts"]["seed_rows"] == 10
    assert result.card["counts"]["augmented"] == 3  # 0.3 x 10 seed rows
    assert result.rows == 13


def test_bad_input_names_file_and_line_and_writes_nothing(tmp_path: Path) -> None:
    seed = tmp_path / "seed.jsonl"
    seed.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "", "output": "c"}\n')
    out = tmp_path / "out" / "m0.jsonl"
    with pytest.raises(InputError) as err:
        export_forward(seed, out)
    assert f"{seed}:2" in str(err.value) and "instruction" in str(err.value)
    assert not out.exists()
    assert not list(out.parent.glob("*"))  # no temp file left behind either

    seed.write_text('{"instruction": "a", "output": "b"}\n{not json\n')
    with pytest.raises(InputError, match=r"seed.jsonl:2: malformed JSON"):
        export_backward(seed, out)


def test_curated_score_must_be_a_number(seed: Path, tmp_path: Path) -> None:
    bad = write_jsonl(tmp_path / "c.jsonl", [{"instruction": "q", "output": "a", "score": "five"}])
    with pytest.raises(InputError, match=r"c.jsonl:1: field 'score' must be a number"):
        export_forward(seed, tmp_path / "m1.jsonl", curated_path=bad, iteration=1, min_score=4)


def test_instruction_format(seed: Path, tmp_path: Path) -> None:
    result = export_forward(seed, tmp_path / "m0.jsonl", format="instruction")
    assert read_jsonl(result.path)[0] == {
        "system": SYSTEM_SEED,
        "instruction": "Question 0?",
        "output": "Answer number 0.",
    }
    assert result.card["axolotl_dataset"]["type"]["field_system"] == "system"


def test_export_datasets_layout(seed: Path, curated: Path, tmp_path: Path) -> None:
    first = export_datasets(seed, tmp_path)
    assert [r.name for r in first] == ["backward", "m0"]
    later = export_datasets(seed, tmp_path, curated_path=curated, iteration=2)
    assert [r.name for r in later] == ["m2"]
    assert sorted(p.name for p in tmp_path.glob("*.json*") if p.parent == tmp_path) == [
        "backward.card.json",
        "backward.jsonl",
        "curated.jsonl",
        "m0.card.json",
        "m0.jsonl",
        "m2.card.json",
        "m2.jsonl",
        "seed.jsonl",
    ]


def test_export_command(seed: Path, curated: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "ds"
    result = runner.invoke(cli, ["export", str(seed), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "backward.jsonl").exists() and (out / "m0.card.json").exists()
    result = runner.invoke(
        cli,
        [
            "export",
            str(seed),
            "--curated",
            str(curated),
            "-i",
            "1",
            "--min-score",
            "5",
            "-o",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert read_card(out / "m1.jsonl")["counts"]["augmented"] == 2

    result = runner.invoke(cli, ["export", str(tmp_path / "missing.jsonl"), "-o", str(out)])
    assert result.exit_code == 1
    assert "missing.jsonl: no such file" in result.output

    result = runner.invoke(cli, ["export", str(seed), "--format", "alpaca", "-o", str(out)])
    assert result.exit_code == 2 and "unknown export format 'alpaca'" in result.output


def test_export_help_teaches() -> None:
    result = CliRunner().invoke(cli, ["export", "--help"])
    assert result.exit_code == 0
    assert "backward.jsonl" in result.output and "--max-augmented" in result.output


def test_real_seed_pairs(tmp_path: Path) -> None:
    rows = []
    with open(shared_file("data/seed/dolly15k_first6400.jsonl"), encoding="utf-8") as fh:
        for i, line in zip(range(300), fh, strict=False):
            r = json.loads(line)
            rows.append({"id": str(i), "instruction": r["instruction"], "output": r["response"]})
    seed = write_jsonl(tmp_path / "seed.jsonl", rows)
    results = export_datasets(seed, tmp_path / "ds")
    backward = read_jsonl(results[0].path)
    assert len(backward) == 300
    assert all(
        r["messages"][-1]["content"] == rows[i]["instruction"] for i, r in enumerate(backward)
    )
    assert all(rows[i]["output"] in r["messages"][0]["content"] for i, r in enumerate(backward))
