"""Self-augmentation against the stub OpenAI server: requests, filters, resume, faults."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from humpback_plugin.commands.augment import augment_command
from humpback_plugin.core.client import ClientConfig
from humpback_plugin.core.config import DEFAULT_INSTRUCTION_FILTERS, AugmentConfig
from humpback_plugin.core.errors import InputError, StageInterrupted, UnknownComponent
from humpback_plugin.core.prompts import PACKAGE_DIR, load_prompt
from humpback_plugin.core.records import Segment
from humpback_plugin.hookspecs import hookimpl
from humpback_plugin.plugins import build, pm
from humpback_plugin.stages.augment.instruction_filters import first_rejection
from humpback_plugin.stages.augment.instructions import clean_instruction
from humpback_plugin.stages.augment.stage import augment
from tests.conftest import shared_file
from tests.stub_openai import StubOpenAI, StubResponse, error, reply

SEGMENTS = [
    {
        "id": f"seg{i}",
        "text": text,
        "header": header,
        "source": "test.html",
    }
    for i, (header, text) in enumerate(
        [
            ("Repotting orchids", "Water the orchid the day before. " * 25),
            ("Sourdough starter", "Feed the starter twice a day with flour and water. " * 20),
            ("Bike chains", "Clean the chain with degreaser, then oil each link. " * 20),
        ]
    )
]


def write_segments(path: Path, segments=SEGMENTS) -> Path:
    path.write_text("".join(json.dumps(s) + "\n" for s in segments))
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def config(stub: StubOpenAI, **kw) -> ClientConfig:
    kw.setdefault("concurrency", 4)
    kw.setdefault("max_retries", 3)
    return ClientConfig(base_urls=[stub.base_url], model="stub", **kw)


def build_filters(names=DEFAULT_INSTRUCTION_FILTERS, options=None):
    return build("register_instruction_filters", names, options or {})


def by_header(req) -> StubResponse:
    text = req.prompt_text
    if "orchid" in text:
        return reply("Question: How do I repot an orchid?")
    if "starter" in text:
        return reply('"How often should I feed a sourdough starter?"')
    return reply("How do I clean a bike chain?")


# --- prompts -------------------------------------------------------------------------------


def test_backtranslation_template_loads_with_hash():
    prompt = load_prompt("backtranslation", required=("output",))
    assert "{output}" in prompt.text and len(prompt.sha256) == 64
    assert "X {instruction} {output}\n" in prompt.fill(output="X {instruction} {output}")


def test_backtranslation_prompt_is_the_follow_up_papers():
    """BF's backward prompt (paper-facts section 2), its closing line included; the
    [INST] ... [/INST] wrapper is the chat template's, so the user turn is the text inside."""
    facts = shared_file("docs/paper-facts.md").read_text()
    section = facts.split("## 2.", 1)[1].split("## 3.", 1)[0]
    quoted = " ".join(re.search(r"BF \(same group\) used: `(.*?)`", section, re.S).group(1).split())
    inside = quoted.removeprefix("[INST] ").removesuffix(" [/INST]").replace("\\n", "\n")
    request = pm.hook.backtranslation_request(
        segment=Segment(id="s", text="<response>", source="t"),
        template=load_prompt("backtranslation", required=("output",)).text,
    )
    assert request == {"messages": [{"role": "user", "content": inside}]}
    assert inside.endswith("<response>\n\nAnswer in the style of an AI Assistant.")


def test_package_reaches_the_repo_prompts():
    repo_prompts = Path(__file__).resolve().parents[1] / "prompts"
    assert PACKAGE_DIR.resolve() == repo_prompts.resolve()
    assert {p.name for p in PACKAGE_DIR.glob("*.txt")} >= {"curation.txt", "backtranslation.txt"}


def test_prompt_errors(tmp_path):
    with pytest.raises(UnknownComponent, match="nope.*known: backtranslation, curation"):
        load_prompt("nope")
    bad = tmp_path / "t.txt"
    bad.write_text("no placeholder")
    with pytest.raises(InputError, match=r"t.txt: lacks the placeholder\(s\) \{output\}"):
        load_prompt(bad, required=("output",))


# --- postprocess and filters ------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw,clean",
    [
        ("Question: How do I X?", "How do I X?"),
        ("**Instruction:** Explain X.", "Explain X."),
        ("Here is a possible question: What is X?", "What is X?"),
        ("Sure! Here's the most likely question:\n\nWhat is X?", "What is X?"),
        ('The user should have asked: "What is X?"', "What is X?"),
        ("The most likely question is: Why X?", "Why X?"),
        ("[INST] What is X? [/INST]", "What is X?"),
        ("\u201cWhat is X?\u201d", "What is X?"),
        ("What is the question of life?", "What is the question of life?"),
        ("A great question. A good question to answer is: What is X?", "What is X?"),
        ("Answer the following question: what is X?", "Answer the following question: what is X?"),
        # An instruction that itself says "... query is:" keeps its start (issue 11).
        (
            "My SQL query is: SELECT * FROM t WHERE x = 1; why is it slow?",
            "My SQL query is: SELECT * FROM t WHERE x = 1; why is it slow?",
        ),
        ("Query: What is X?", "What is X?"),
    ],
)
def test_postprocess_instruction(raw, clean):
    assert clean_instruction(raw) == clean
    assert pm.hook.postprocess_instruction(text=raw, segment=None) == clean


def candidate(instruction, output="Some answer text " * 20, finish_reason="stop"):
    return {"instruction": instruction, "output": output, "finish_reason": finish_reason}


@pytest.mark.parametrize(
    "instruction,finish_reason,reason",
    [
        ("How do I repot an orchid?", "stop", None),
        ("Summarize the history of Rome in three paragraphs.", "stop", None),
        ("", "stop", "empty"),
        ("?!", "stop", "empty"),
        ("How do I", "length", "truncated"),
        ("x" * 2000, "stop", "too_long"),
        ("The text above describes how to repot an orchid.", "stop", "meta_text"),
        ("This passage is an answer to a question about orchids.", "stop", "meta_text"),
        ("The user should have asked about orchids", "stop", "meta_text"),
        ("I'm sorry, but I cannot help with that.", "stop", "refusal"),
        ("As an AI language model, I cannot know.", "stop", "refusal"),
        ("As an AI, I don't have opinions.", "stop", "refusal"),
        ("The most likely question is: how do I repot an orchid?", "stop", "meta_text"),
        # Real instructions that look like meta text or a refusal (issue 11): kept.
        ("What is the best question to ask at the end of a job interview?", "stop", None),
        ("My teacher said the answer is 42, but I got 41. Who is right?", "stop", None),
        ("As an AI researcher, which GPU should I buy for training?", "stop", None),
    ],
)
def test_instruction_filters(instruction, finish_reason, reason):
    checks = build_filters()
    assert first_rejection(checks, candidate(instruction, finish_reason=finish_reason)) == reason


def test_echo_filter():
    segment = "Water the orchid the day before you repot it, then loosen the roots gently."
    checks = build_filters(["echo"])
    assert first_rejection(checks, candidate(segment, output=segment)) == "echo"
    assert first_rejection(checks, candidate(segment[:40] + " and more?", output=segment)) is None
    assert first_rejection(checks, candidate("How do I repot an orchid?", output=segment)) is None


def test_unknown_filter_name_lists_available():
    with pytest.raises(
        UnknownComponent, match="unknown instruction filter 'nope'; available: .*echo"
    ):
        build_filters(["nope"])


# --- the stage --------------------------------------------------------------------------------


def test_augment_writes_candidates_with_provenance(tmp_path):
    segments = write_segments(tmp_path / "segments.jsonl")
    out = tmp_path / "candidates.jsonl"
    with StubOpenAI(by_header) as stub:
        summary = augment(
            segments,
            out,
            client_config=config(stub),
            settings=AugmentConfig(seed=7),
            show_progress=False,
        )
        requests = stub.generation_requests
    rows = read_jsonl(out)
    assert [r["segment_id"] for r in rows] == ["seg0", "seg1", "seg2"]  # input order
    assert rows[0]["instruction"] == "How do I repot an orchid?"
    assert rows[0]["raw_instruction"] == "Question: How do I repot an orchid?"
    assert rows[1]["instruction"] == "How often should I feed a sourdough starter?"
    assert rows[0]["output"] == SEGMENTS[0]["text"]
    prov = rows[0]["provenance"]
    assert prov["server_url"] == stub.base_url and prov["model"] == "stub"
    assert prov["template_hash"] == load_prompt("backtranslation").short_hash
    assert prov["params"] == {"temperature": 0.7, "top_p": 0.9, "max_tokens": 256, "seed": 7}
    assert prov["usage"]["completion_tokens"] > 0 and prov["finished_at"] >= prov["started_at"]
    # what went over the wire: chat endpoint, the filled template as one user turn
    assert all(r.is_chat for r in requests) and len(requests) == 3
    # (requests overlap: the server sees them in any order)
    contents = [r.body["messages"][0]["content"] for r in requests]
    assert all(c.startswith("Below is a candidate answer") for c in contents)
    assert sum(SEGMENTS[0]["text"] in c for c in contents) == 1
    assert not any(k.startswith("guided_") for r in requests for k in r.body)
    assert summary["accepted"] == 3 and summary["rejected"] == 0 and summary["failed"] == 0
    assert summary["completion_tokens"] > 0 and summary["segments_per_s"] > 0
    assert json.loads((tmp_path / "candidates.jsonl.parts" / "summary.json").read_text())


def test_augment_resumes_without_new_requests(tmp_path):
    segments = write_segments(tmp_path / "segments.jsonl")
    out = tmp_path / "candidates.jsonl"
    with StubOpenAI(by_header) as stub:
        augment(segments, out, client_config=config(stub), show_progress=False)
        first = out.read_text()
        n_before = len(stub.generation_requests)
        summary = augment(segments, out, client_config=config(stub), show_progress=False)
        assert len(stub.generation_requests) == n_before
    assert summary["already_done"] == 3 and out.read_text() == first
    # a changed sampling setting is a different run: generated again
    with StubOpenAI(by_header) as stub:
        augment(
            segments,
            out,
            client_config=config(stub),
            settings=AugmentConfig(temperature=1.0),
            show_progress=False,
        )
        assert len(stub.generation_requests) == 3


def test_augment_n_candidates_and_rejections(tmp_path):
    segments = write_segments(tmp_path / "segments.jsonl", SEGMENTS[:2])
    out = tmp_path / "candidates.jsonl"

    def handler(req):
        if req.body.get("prompt") == "Hello":  # preflight
            return reply("hi")
        assert req.body["n"] == 3
        if "orchid" in req.prompt_text:
            return reply("How do I repot?", "How do I repot?", "The text above is about orchids.")
        return reply("Why feed it?", "I'm sorry, I cannot.", "")

    with StubOpenAI(handler) as stub:
        summary = augment(
            segments,
            out,
            client_config=config(stub),
            settings=AugmentConfig(n=3),
            show_progress=False,
        )
    accepted = read_jsonl(out)
    rejected = read_jsonl(tmp_path / "candidates.rejected.jsonl")
    assert [r["instruction"] for r in accepted] == ["How do I repot?", "Why feed it?"]
    assert summary["rejected_by_reason"] == {
        "duplicate": 1,
        "meta_text": 1,
        "refusal": 1,
        "empty": 1,
    }
    assert {r["rejected_reason"] for r in rejected} == {
        "duplicate",
        "meta_text",
        "refusal",
        "empty",
    }
    assert summary["generations"] == 6


def test_truncated_generation_is_rejected(tmp_path):
    segments = write_segments(tmp_path / "segments.jsonl", SEGMENTS[:1])
    with StubOpenAI([reply("How do I", finish_reason="length")]) as stub:
        summary = augment(
            segments, tmp_path / "c.jsonl", client_config=config(stub), show_progress=False
        )
    assert summary["rejected_by_reason"] == {"truncated": 1}


def test_context_length_400_is_a_recorded_failure_and_run_goes_on(tmp_path):
    segments = write_segments(tmp_path / "segments.jsonl")
    out = tmp_path / "candidates.jsonl"

    def handler(req):
        if "starter" in req.prompt_text:
            return error(400, "This model's maximum context length is 2048 tokens.")
        return by_header(req)

    with StubOpenAI(handler) as stub:
        summary = augment(segments, out, client_config=config(stub), show_progress=False)
    assert [r["segment_id"] for r in read_jsonl(out)] == ["seg0", "seg2"]
    assert summary["failed_by_reason"] == {"http_400": 1}
    failure = read_jsonl(Path(summary["failures_path"]))[0]
    assert failure["input_id"] == "seg1" and "maximum context length" in failure["message"]


def test_transient_faults_are_retried(tmp_path):
    segments = write_segments(tmp_path / "segments.jsonl", SEGMENTS[:1])
    script = [
        StubResponse(reset=True),
        StubResponse(truncate=True, texts=["half"]),
        error(503, "busy"),
        reply("How do I repot an orchid?"),
    ]
    with StubOpenAI(script) as stub:
        summary = augment(
            segments,
            tmp_path / "c.jsonl",
            client_config=config(stub),
            preflight=False,
            show_progress=False,
        )
    assert summary["accepted"] == 1 and summary["retries"] == 3


def test_server_gone_stops_resumably_without_output(tmp_path):
    segments = write_segments(tmp_path / "segments.jsonl")
    out = tmp_path / "candidates.jsonl"
    cfg = ClientConfig(
        base_urls=["http://127.0.0.1:9"], model="stub", max_retries=1, retry_deadline_s=1
    )
    with pytest.raises(StageInterrupted, match="re-run the same command"):
        augment(segments, out, client_config=cfg, preflight=False, show_progress=False)
    assert not out.exists()


def test_completions_endpoint_sends_raw_prompt(tmp_path):
    segments = write_segments(tmp_path / "segments.jsonl", SEGMENTS[:1])
    with StubOpenAI(by_header) as stub:
        augment(
            segments,
            tmp_path / "c.jsonl",
            client_config=config(stub),
            settings=AugmentConfig(endpoint="completions"),
            show_progress=False,
        )
        (req,) = stub.generation_requests
    assert req.path.endswith("/v1/completions") and req.body["prompt"].startswith("Below is")


def test_bad_segment_line_names_file_and_line(tmp_path):
    segments = tmp_path / "segments.jsonl"
    segments.write_text(json.dumps(SEGMENTS[0]) + "\n" + json.dumps({"header": "no text"}) + "\n")
    out = tmp_path / "c.jsonl"
    with StubOpenAI(by_header) as stub, pytest.raises(InputError, match=r"segments.jsonl:2"):
        augment(segments, out, client_config=config(stub), show_progress=False)
    assert not out.exists()


def test_plugin_can_replace_the_request_and_postprocess(tmp_path):
    class MyPlugin:
        @hookimpl
        def backtranslation_request(self, segment, template):
            return {"prompt": f"[INST] {segment.text} [/INST]"}

        @hookimpl
        def postprocess_instruction(self, text, segment):
            return text.upper()

    segments = write_segments(tmp_path / "segments.jsonl", SEGMENTS[:1])
    pm.register(MyPlugin(), name="test-augment-plugin")
    try:
        with StubOpenAI([reply("how?")]) as stub:
            augment(
                segments,
                tmp_path / "c.jsonl",
                client_config=config(stub),
                settings=AugmentConfig(endpoint="chat"),
                show_progress=False,
            )
            (req,) = stub.generation_requests
    finally:
        pm.unregister(name="test-augment-plugin")
    # a raw prompt from the hook becomes one user turn on the chat endpoint
    assert req.body["messages"][0]["content"].startswith("[INST] Water")
    assert read_jsonl(tmp_path / "c.jsonl")[0]["instruction"] == "HOW?"


def test_cli_augment(tmp_path):
    segments = write_segments(tmp_path / "segments.jsonl")
    out = tmp_path / "candidates.jsonl"
    with StubOpenAI(by_header) as stub:
        result = CliRunner().invoke(
            augment_command,
            [
                str(segments),
                "-o",
                str(out),
                "--base-url",
                stub.base_url,
                "--model",
                "stub",
                "--temperature",
                "1.0",
                "--top-p",
                "0.95",
                "--max-tokens",
                "64",
                "-q",
            ],
        )
        assert result.exit_code == 0, result.output
        body = stub.generation_requests[0].body
    assert (body["temperature"], body["top_p"], body["max_tokens"]) == (1.0, 0.95, 64)
    assert len(read_jsonl(out)) == 3
    assert "3 candidates" in result.output


def test_cli_augment_wrong_model_fails_fast(tmp_path):
    segments = write_segments(tmp_path / "segments.jsonl")
    with StubOpenAI(by_header) as stub:
        result = CliRunner().invoke(
            augment_command,
            [str(segments), "-o", str(tmp_path / "c.jsonl"), "--base-url", stub.base_url,
             "--model", "other", "-q"],
        )  # fmt: skip
    assert result.exit_code == 1
    assert "'other' is not served" in result.output and "stub" in result.output


def test_cli_help_teaches():
    result = CliRunner().invoke(augment_command, ["--help"])
    assert "backtranslation.txt" in result.output and "T=0.7" in result.output
