"""Bad input through the commands: exit code 1, a message naming the file and the line (or
byte offset), and no output file (not even a temp file) left behind.

Only the gaps are here; the rest of the matrix is covered where the code lives:

* malformed / non-object / non-UTF-8 JSONL lines, line numbers: ``test_store.py``
  (``test_iter_jsonl_names_file_and_line``);
* corpus: WARC with a malformed record in the middle, truncated gzip, empty files, a
  10 MB line, non-UTF-8 text, HTML without headers: ``test_corpus.py``;
* seed: malformed and non-UTF-8 lines, empty / missing / truncated files, a 10 MB line, a
  mapped field missing: ``test_seed.py``;
* config: unknown keys, wrong types, invalid YAML, ``!!python`` tags: ``test_config.py``;
* judge answers with no score, several scores, an out-of-range score, a candidate holding
  ``Score: 5``: ``test_scoring.py`` (parser) and ``test_curate.py``
  (``test_paper_mode_parses_recovers_and_is_not_fooled``);
* an empty backward-model answer: ``test_augment.py``
  (``test_augment_n_candidates_and_rejections``);
  a segment or candidate line of the wrong shape, through the Python API:
  ``test_augment.py`` / ``test_curate.py``.
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from humpback_plugin.cli import cli
from humpback_plugin.commands.augment import augment_command
from humpback_plugin.commands.curate import curate_command
from tests.stub_openai import StubOpenAI, StubRequest, StubResponse, error, reply

SEGMENT = {"id": "s0", "text": "Feed a sourdough starter twice a day with flour and water. " * 12}
PAIR = {"id": "c0", "instruction": "How do I feed a starter?", "output": SEGMENT["text"]}


def backward(req: StubRequest) -> StubResponse:
    if len(req.prompt_text) > 100_000:  # what a server says about a prompt over its context
        return error(400, "This model's maximum context length is 2048 tokens.")
    return reply("How often should I feed a sourdough starter?")


def judge(req: StubRequest) -> StubResponse:
    return reply("Helpful and complete.\nScore: 4")


def invoke(command, src: Path, out: Path, stub: StubOpenAI, *extra: str):
    return CliRunner().invoke(
        command,
        [str(src), "-o", str(out), "--base-url", stub.base_url, "--model", "stub", "-q", *extra],
    )


def nothing_written(out: Path) -> bool:
    """No output and no temp file of an interrupted atomic write beside it."""
    return not out.exists() and not list(out.parent.glob(f".{out.name}.*"))


def jsonl(*rows: dict) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


# --- augment and curate inputs -------------------------------------------------------------

BAD_LINES = {
    "malformed_json": (b'{"id": "s1", "text": "cut', r":2: malformed JSON"),
    "not_utf8": (
        b'{"id": "s1", "text": "caf\xe9 au lait"}',
        r":2: not UTF-8 \(byte 25 of the line",
    ),
    "not_an_object": (b'["a", "list"]', r":2: expected a JSON object, got list"),
}


@pytest.mark.parametrize("case", sorted(BAD_LINES))
@pytest.mark.parametrize("command", ["augment", "curate"])
def test_bad_line_names_file_and_line(tmp_path, command, case):
    line, message = BAD_LINES[case]
    good = SEGMENT if command == "augment" else PAIR
    src = tmp_path / "input.jsonl"
    src.write_bytes(jsonl(good) + line + b"\n" + jsonl(good))
    out = tmp_path / "out.jsonl"
    cmd, handler = (augment_command, backward) if command == "augment" else (curate_command, judge)
    with StubOpenAI(handler) as stub:
        result = invoke(cmd, src, out, stub)
    assert result.exit_code == 1
    assert str(src) in result.output
    assert re.search(message, result.output), result.output
    assert "Traceback" not in result.output and nothing_written(out)


@pytest.mark.parametrize(
    "command,row,message",
    [
        ("augment", {"id": "s1", "header": "no text"}, "not a segment (text: Field required)"),
        ("curate", {"id": "c1", "instruction": "Where?"}, "not a candidate pair (output: Field"),
        ("curate", {"id": "c1", "instruction": 3, "output": "x"}, "(instruction: Input should"),
    ],
)
def test_missing_or_wrong_fields_through_the_cli(tmp_path, command, row, message):
    good = SEGMENT if command == "augment" else PAIR
    src = tmp_path / "input.jsonl"
    src.write_bytes(jsonl(good, row))
    out = tmp_path / "out.jsonl"
    cmd, handler = (augment_command, backward) if command == "augment" else (curate_command, judge)
    with StubOpenAI(handler) as stub:
        result = invoke(cmd, src, out, stub)
    assert result.exit_code == 1 and f"{src}:2: " in result.output, result.output
    assert message in result.output and nothing_written(out)


@pytest.mark.parametrize("command", ["augment", "curate"])
def test_truncated_gzip_input(tmp_path, command):
    good = SEGMENT if command == "augment" else PAIR
    rows = [{**good, "id": f"x{i}", "text" if command == "augment" else "output": f"{i} " * 300}
            for i in range(400)]  # fmt: skip
    blob = gzip.compress(jsonl(*rows))
    src = tmp_path / "input.jsonl.gz"
    src.write_bytes(blob[: len(blob) // 2])
    out = tmp_path / "out.jsonl"
    cmd, handler = (augment_command, backward) if command == "augment" else (curate_command, judge)
    with StubOpenAI(handler) as stub:
        result = invoke(cmd, src, out, stub)
    assert result.exit_code == 1
    assert f"{src}:after line" in result.output and "unreadable" in result.output
    assert nothing_written(out)


@pytest.mark.parametrize("command", ["augment", "curate"])
def test_empty_input_gives_an_empty_dataset_and_sends_nothing(tmp_path, command):
    src = tmp_path / "input.jsonl"
    src.write_bytes(b"")
    out = tmp_path / "out.jsonl"
    cmd, handler = (augment_command, backward) if command == "augment" else (curate_command, judge)
    with StubOpenAI(handler) as stub:
        result = invoke(cmd, src, out, stub)
        assert stub.generation_requests == []
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == b""
    assert ("0 candidates" if command == "augment" else "0 scored") in result.output


def test_ten_megabyte_segment_is_a_recorded_failure_and_the_run_goes_on(tmp_path):
    src = tmp_path / "input.jsonl"
    big = {"id": "big", "text": "word " * 2_000_000}  # one 10 MB line
    src.write_bytes(jsonl(SEGMENT, big, {**SEGMENT, "id": "s2", "text": "Other. " * 90}))
    out = tmp_path / "out.jsonl"
    with StubOpenAI(backward) as stub:
        result = invoke(augment_command, src, out, stub)
    assert result.exit_code == 0, result.output
    assert [r["segment_id"] for r in map(json.loads, out.read_text().splitlines())] == ["s0", "s2"]
    assert "failed: http_400" in result.output and "1 failed" in result.output
    (failure,) = map(
        json.loads, (tmp_path / "out.jsonl.parts/failures.jsonl").read_text().splitlines()
    )
    assert failure["input_id"] == "big" and "maximum context length" in failure["message"]


# --- what the models answer -----------------------------------------------------------------


@pytest.mark.parametrize(
    "answer,reason",
    [
        ("", "empty"),
        ("   \n ", "empty"),
        (SEGMENT["text"], "echo"),  # the backward model parrots the segment
        ("Question: " + SEGMENT["text"][:300], "echo"),
    ],
)
def test_backward_answer_empty_or_echoing_is_rejected_with_its_reason(tmp_path, answer, reason):
    src = tmp_path / "segments.jsonl"
    src.write_bytes(jsonl(SEGMENT))
    out = tmp_path / "c.jsonl"
    with StubOpenAI([reply(answer)]) as stub:
        result = invoke(augment_command, src, out, stub, "--no-preflight")
    assert result.exit_code == 0, result.output
    assert out.read_text() == ""
    (rejected,) = map(json.loads, (tmp_path / "c.rejected.jsonl").read_text().splitlines())
    assert rejected["rejected_reason"] == reason and rejected["segment_id"] == "s0"
    assert f"rejected: {reason}" in result.output


def test_judge_unparseable_even_after_recovery_is_kept_as_failed(tmp_path):
    """A server that ignores structured outputs: the pair stays, unscored and unselected."""
    src = tmp_path / "c.jsonl"
    src.write_bytes(jsonl(PAIR, {**PAIR, "id": "c1", "instruction": "Second?"}))

    def no_score(req: StubRequest) -> StubResponse:
        if "structured_outputs" in req.body:
            return reply("I would rather not say.")
        if "Second?" in req.prompt_text:
            return reply("Fine.\nScore: 5")
        return reply("It depends.\nScore: 7 out of 10")

    out, selected = tmp_path / "s.jsonl", tmp_path / "a4.jsonl"
    with StubOpenAI(no_score) as stub:
        result = invoke(curate_command, src, out, stub, "--selected", str(selected))
    assert result.exit_code == 0, result.output
    first, second = map(json.loads, out.read_text().splitlines())
    assert (first["score"], first["score_status"]) == (None, "failed")
    assert first["parse_problem"] == "no_valid_score_on_last_line"
    assert first["recovery_text"] == "I would rather not say."
    assert (second["score"], second["score_status"]) == (5, "ok")
    assert [json.loads(line)["id"] for line in selected.read_text().splitlines()] == ["c1"]
    assert "status failed" in result.output and "score None" in result.output


# --- seed and run config through the CLI -----------------------------------------------------


def test_seed_first_line_missing_a_field_stops_naming_file_and_line(tmp_path):
    src = tmp_path / "pairs.jsonl"
    src.write_bytes(jsonl({"instruction": "How?"}, {"instruction": "Why?", "output": "Because."}))
    out = tmp_path / "seed.jsonl"
    result = CliRunner().invoke(cli, ["seed", str(src), "-o", str(out), "-q"])
    assert result.exit_code == 1, result.output
    assert f"{src}:1: missing field 'output'" in result.output and "--output-field" in result.output
    assert nothing_written(out)


def test_seed_later_line_missing_a_field_stops_or_is_counted(tmp_path):
    """A row without the field stops naming file and line, as --help says;
    --skip-bad-records drops it and counts it instead."""
    src = tmp_path / "pairs.jsonl"
    src.write_bytes(jsonl({"instruction": "Why?", "output": "Because."}, {"instruction": "How?"}))
    out, summary = tmp_path / "seed.jsonl", tmp_path / "summary.json"
    result = CliRunner().invoke(cli, ["seed", str(src), "-o", str(out), "-q"])
    assert result.exit_code == 1 and f"{src}:2: missing field 'output'" in result.output
    assert nothing_written(out)
    args = ["seed", str(src), "-o", str(out), "--summary", str(summary), "--skip-bad-records"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert len(out.read_text().splitlines()) == 1
    assert "missing field" in summary.read_text()


@pytest.mark.parametrize(
    "extra,message",
    [
        ("curate:\n  treshold: 5\n", "unknown key 'curate.treshold'"),
        ("curate:\n  threshold: high\n", "curate.threshold: Input should be a valid number"),
        ("iterations: 9\n", "iterations: Input should be less than or equal to 5"),
    ],
)
def test_run_config_errors_name_file_and_key_and_create_nothing(tmp_path, extra, message):
    config = tmp_path / "run.yaml"
    config.write_text("training:\n  base_model: /models/base\n" + extra)
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(cli, ["run", "-c", str(config), str(run_dir)])
    assert result.exit_code == 1, result.output
    assert f"{config}: " in result.output and message in result.output
    assert not run_dir.exists()
