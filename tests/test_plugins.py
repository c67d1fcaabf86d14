"""The plugin system: inline plugins, a real installed plugin package, the env filter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from humpback_plugin.cli import cli
from humpback_plugin.core.errors import UnknownComponent
from humpback_plugin.hookspecs import hookimpl
from humpback_plugin.plugins import components, load_template, pick, pm
from tests.stub_openai import StubOpenAI, reply

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "humpback-llama2-prompt"


def test_builtins_register_every_stage():
    assert {"paper", "constrained", "logprobs"} <= set(components("register_scorers"))
    assert {"length", "nav_header", "minhash", "english"} <= set(
        components("register_segment_filters")
    )
    assert {"empty", "echo", "truncated"} <= set(components("register_instruction_filters"))
    assert {"chat_template", "instruction"} <= set(components("register_exporters"))
    assert {"threshold", "target_yield", "quantile"} <= set(components("register_selectors"))
    with pytest.raises(UnknownComponent, match="unknown scorer 'nope'; available: constrained"):
        pick("register_scorers", "nope")


class ShoutyLength:
    """An inline plugin that replaces the built-in `length` filter by reusing its name."""

    @hookimpl
    def register_segment_filters(self, register):
        def factory(**options):
            return lambda segment: None if "KEEP" in segment.text else "shouty:no_keep"

        register("length", factory)


def test_inline_plugin_replaces_a_builtin_by_name():
    builtin = components("register_segment_filters")["length"]
    plugin = ShoutyLength()
    pm.register(plugin, name="shouty")
    try:
        check = components("register_segment_filters")["length"]()
        assert check(type("S", (), {"text": "short KEEP"})()) is None
        assert check(type("S", (), {"text": "x" * 1000})()) == "shouty:no_keep"
        listed = json.loads(CliRunner().invoke(cli, ["plugins"]).output)
        assert {"name": "shouty", "hooks": ["register_segment_filters"]} in listed
    finally:
        pm.unregister(plugin)
    assert components("register_segment_filters")["length"] is builtin
    assert builtin()(type("S", (), {"text": "x" * 1000})()) is None  # the paper's 600-3,000


def test_plugins_all_lists_builtins_with_hooks_and_components_by_kind():
    listed = json.loads(CliRunner().invoke(cli, ["plugins", "--all"]).output)
    by_name = {p["name"]: p["hooks"] for p in listed["plugins"]}
    assert "register_scorers" in by_name["humpback_plugin.stages.curate.hooks"]
    assert "register_corpus_readers" in by_name["humpback_plugin.stages.corpus.hooks"]
    kinds = listed["components"]
    assert kinds["scorer"] == ["constrained", "logprobs", "paper"]
    assert kinds["selector"] == ["calibrated", "quantile", "target_yield", "threshold"]
    assert kinds["probe kind"] == [
        "blog", "boilerplate", "echo", "injected", "other_answer", "truncated",
    ]  # fmt: skip
    assert kinds["export format"] == ["chat_template", "instruction"]
    assert {"backtranslation", "curation"} <= set(kinds["prompt template"])
    assert {"warc", "html", "jsonl"} <= set(kinds["corpus reader"])
    assert {"html_headers", "text_headers"} <= set(kinds["segmenter"])


def test_a_plugin_prompt_template_is_picked_by_name(tmp_path):
    template = tmp_path / "terse.txt"
    template.write_text("Question for this answer:\n{output}\n")

    class Terse:
        @hookimpl
        def register_prompt_templates(self, register):
            register("terse", template)

    pm.register(Terse(), name="terse")
    try:
        assert load_template("terse", required=("output",)).text.startswith("Question for")
        listed = json.loads(CliRunner().invoke(cli, ["plugins", "--all"]).output)
        assert "terse" in listed["components"]["prompt template"]
    finally:
        pm.unregister(name="terse")


@pytest.fixture(scope="module")
def installed_example(tmp_path_factory):
    """The example plugin package, really pip-installed into a folder of its own."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps",
         "--target", str(target), str(EXAMPLE)],
        check=True,
    )  # fmt: skip
    return target


def _augment_with(site: Path, env_extra: dict[str, str], tmp: Path) -> list:
    """Run `humpback augment` in a fresh interpreter that sees the installed plugin."""
    segments = tmp / "segments.jsonl"
    segments.write_text(json.dumps({"text": "Lists are mutable sequences. " * 30}) + "\n")
    with StubOpenAI(lambda req: reply("What is a list?")) as stub:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)]), **env_extra}
        subprocess.run(
            [sys.executable, "-m", "humpback_plugin", "augment", str(segments), "-o",
             str(tmp / "out.jsonl"), "--base-url", stub.base_url, "--model", "stub", "-q",
             "--endpoint", "completions"],
            check=True, env=env, capture_output=True,
        )  # fmt: skip
        return stub.generation_requests


def test_installed_plugin_package_replaces_the_backtranslation_prompt(installed_example, tmp_path):
    requests = _augment_with(installed_example, {}, tmp_path)
    prompt = requests[0].body["prompt"]
    assert prompt.startswith("[INST] Below is a candidate answer") and prompt.endswith("[/INST]")
    out = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert out[0]["instruction"] == "What is a list?"


def test_env_var_restricts_third_party_plugins(installed_example, tmp_path):
    requests = _augment_with(installed_example, {"HUMPBACK_LOAD_PLUGINS": ""}, tmp_path)
    assert not requests[0].body["prompt"].startswith("[INST]")
