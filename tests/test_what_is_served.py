"""What is trained is what is served, against the stub server: the model's identity in
every cache key, and the chat-template check before augment and curate (issue 11).

The real-vLLM side (a LoRA adapter served with and without ``--chat-template``) is in
``tests/test_template_check_real.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from humpback_plugin.cli import cli
from humpback_plugin.core.chat_template import TrainingTemplate, load_training_template
from humpback_plugin.core.client import ClientConfig
from humpback_plugin.core.config import AugmentConfig, CurateConfig
from humpback_plugin.core.errors import InputError, TemplateMismatch
from humpback_plugin.core.store import RecordStore, ScopedStore
from humpback_plugin.stages.augment.stage import augment
from humpback_plugin.stages.curate.stage import curate
from tests.stub_openai import CHATML_TEMPLATE, StubOpenAI, reply

ROOT = Path(__file__).resolve().parents[1]
LLAMA2 = ROOT / "axolotl_configs" / "chat_templates" / "llama2_inst.jinja"
CHATML = CHATML_TEMPLATE
TOKENS = {"bos_token": "<s>", "eos_token": "</s>"}
SEGMENT_TEXT = "Orchids need a loose bark mix, not soil. " * 20


def judge(req):
    if req.body.get("structured_outputs"):
        return reply("4")
    return reply("Fine.\nScore: 4") if "Score: <rating>" in req.prompt_text else reply("Why?")


def write_candidates(path: Path, n: int = 3) -> Path:
    rows = [
        {"id": f"c{i}", "segment_id": f"s{i}", "instruction": f"Q{i}?", "output": f"A{i}. " * 30}
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_segments(path: Path, n: int = 3) -> Path:
    rows = [{"id": f"s{i}", "text": f"{i}. {SEGMENT_TEXT}", "header": "Orchids"} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def config(stub: StubOpenAI, **kw) -> ClientConfig:
    return ClientConfig(base_urls=[stub.base_url], model="stub", concurrency=2, **kw)


# --- model identity ---------------------------------------------------------------------------


def test_same_served_name_with_other_weights_sends_new_requests(tmp_path):
    """A retrained M0 served under the same name must judge again, not reuse old scores."""
    cands = write_candidates(tmp_path / "candidates.jsonl")
    out = tmp_path / "scored.jsonl"
    settings = CurateConfig(mode="paper", canaries=False)  # the 3 pairs only

    def run(stub: StubOpenAI, **kw) -> dict:
        before = len(stub.generation_requests)
        summary = curate(
            cands, out, client_config=config(stub, **kw), settings=settings, show_progress=False
        )
        return {"sent": len(stub.generation_requests) - before, **summary}

    with StubOpenAI(judge, roots={"stub": "/weights/m0-first"}) as stub:
        first = run(stub)
        again = run(stub)
        stub.roots["stub"] = "/weights/m0-retrained"  # same name, other weights
        retrained = run(stub)
        revised = run(stub, model_revision="2026-11-30")  # same path, weights swapped
    assert (first["sent"], again["sent"], retrained["sent"], revised["sent"]) == (3, 0, 3, 3)
    assert again["already_done"] == 3 and retrained["already_done"] == 0
    assert first["model_identity"]["weights"] == [{"root": "/weights/m0-first", "parent": None}]
    assert retrained["model_identity"]["key"] != first["model_identity"]["key"]
    assert revised["model_identity"]["revision"] == "2026-11-30"
    assert len(out.read_text().splitlines()) == 3  # the final file: one row per pair


def test_augment_cli_model_revision_and_weights_are_in_the_cache_key(tmp_path):
    segments = write_segments(tmp_path / "segments.jsonl")
    out = tmp_path / "candidates.jsonl"
    with StubOpenAI(judge, roots={"stub": "/weights/backward"}) as stub:
        base = ["augment", str(segments), "-o", str(out), "--base-url", stub.base_url]
        base += ["--model", "stub", "-q"]

        def sent(*extra: str) -> int:
            before = len(stub.generation_requests)
            result = CliRunner().invoke(cli, [*base, *extra])
            assert result.exit_code == 0, result.output
            return len(stub.generation_requests) - before

        assert sent() == 3 and sent() == 0
        assert sent("--model-revision", "b2") == 3 and sent("--model-revision", "b2") == 0
        stub.roots["stub"] = "/weights/backward-retrained"
        assert sent("--model-revision", "b2") == 3


def test_scoped_store_keeps_scopes_apart(tmp_path):
    with RecordStore(tmp_path / "s.jsonl") as raw:
        a, b = ScopedStore(raw, "a"), ScopedStore(raw, "b")
        a.append({"key": "k1", "v": 1})
        b.append({"key": "k1", "v": 2})
        assert "k1" in a and "k1" in b and len(raw) == 2
        assert a.get("k1") == {"key": "k1", "v": 1} and b.get("k1")["v"] == 2
        assert [r["v"] for r in a] == [1] and [r["v"] for r in b.ordered(["k1", "k2"])] == [2]
        assert a.keys() == {"k1"} and len(b) == 1


# --- the chat-template check ---------------------------------------------------------------


def test_training_template_renders_as_transformers_does():
    template = TrainingTemplate(LLAMA2.read_text(), str(LLAMA2), TOKENS)
    messages = [{"role": "system", "content": "S."}, {"role": "user", "content": "Q?"}]
    assert template.render(messages, add_generation_prompt=True) == (
        "<s>[INST] <<SYS>>\nS.\n<</SYS>>\n\nQ? [/INST]"
    )
    prefill = [{"role": "user", "content": "Rate."}, {"role": "assistant", "content": "Score: "}]
    assert template.render(prefill, continue_final_message=True) == (
        "<s>[INST] Rate. [/INST] Score: "
    )


def test_training_template_from_a_model_folder_and_an_axolotl_config(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "chat_template.jinja").write_text(LLAMA2.read_text())
    (model / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": {"content": "<s>"}, "eos_token": "</s>"})
    )
    found = load_training_template(model)
    assert found.text == LLAMA2.read_text() and found.special_tokens == TOKENS
    axolotl = tmp_path / "axolotl.yaml"
    axolotl.write_text(
        f"chat_template: jinja\nchat_template_jinja: |\n  {{{{ bos_token }}}}x\n"
        f"output_dir: {model}\n"
    )
    assert load_training_template(axolotl).special_tokens == TOKENS
    axolotl.write_text("chat_template: chatml\n")
    with pytest.raises(InputError, match="give the trained model's folder"):
        load_training_template(axolotl)


def test_matching_template_passes_and_is_reported(tmp_path):
    with StubOpenAI(judge, chat_template=LLAMA2.read_text(), special_tokens=TOKENS) as stub:
        summary = curate(
            write_candidates(tmp_path / "c.jsonl"),
            tmp_path / "scored.jsonl",
            client_config=config(stub, chat_template=str(LLAMA2)),
            show_progress=False,
        )
    report = summary["chat_template"]
    assert report["checked"] and report["template_sha256"]
    assert report[stub.base_url] == "same token ids for 3 probe conversations"
    assert summary["scored"] == 3


def test_mismatch_stops_before_any_request_and_names_both_renderings(tmp_path):
    segments = write_segments(tmp_path / "segments.jsonl")
    with StubOpenAI(judge, chat_template=CHATML, special_tokens=TOKENS) as stub:
        with pytest.raises(TemplateMismatch) as info:
            augment(
                segments,
                tmp_path / "candidates.jsonl",
                client_config=config(stub, chat_template=str(LLAMA2)),
                show_progress=False,
            )
        assert stub.generation_requests == []
        message = str(info.value)
        assert "server renders:   '<|im_start|>system\\nYou are a helpful assistant." in message
        assert "training renders: '<s>[INST] Probe:" in message
        assert "first difference at token 0" in message
        assert f"--chat-template {LLAMA2}" in message and "--skip-template-check" in message
        # Skipped on purpose: the stage runs and says so.
        summary = augment(
            segments,
            tmp_path / "candidates.jsonl",
            client_config=config(stub, chat_template=str(LLAMA2), template_check=False),
            show_progress=False,
        )
    assert summary["chat_template"] == {"checked": False, "why": "skipped (--skip-template-check)"}
    assert summary["segments"] == 3


def test_no_tokenize_endpoint_or_completions_endpoint_is_reported_not_checked(tmp_path):
    segments = write_segments(tmp_path / "segments.jsonl")
    with StubOpenAI(judge) as stub:  # not vLLM: no /tokenize
        summary = augment(
            segments,
            tmp_path / "a.jsonl",
            client_config=config(stub, chat_template=str(LLAMA2)),
            show_progress=False,
        )
        assert "no /tokenize endpoint" in summary["chat_template"][stub.base_url]
        summary = augment(
            segments,
            tmp_path / "b.jsonl",
            client_config=config(stub, chat_template=str(LLAMA2)),
            settings=AugmentConfig(endpoint="completions"),
            show_progress=False,
        )
    assert summary["chat_template"]["checked"] is False
    assert "completions endpoint" in summary["chat_template"]["why"]


def test_curate_cli_template_check_and_override(tmp_path):
    cands = write_candidates(tmp_path / "c.jsonl")
    with StubOpenAI(judge, chat_template=CHATML, special_tokens=TOKENS) as stub:
        args = ["curate", str(cands), "-o", str(tmp_path / "s.jsonl"), "--base-url"]
        args += [stub.base_url, "--model", "stub", "--chat-template", str(LLAMA2), "-q"]
        stopped = CliRunner().invoke(cli, args)
        assert stopped.exit_code == 1 and "chat template mismatch" in stopped.output
        assert stub.generation_requests == []
        overridden = CliRunner().invoke(cli, [*args, "--skip-template-check"])
    assert overridden.exit_code == 0, overridden.output
