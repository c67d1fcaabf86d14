"""`humpback run` re-runs what changed (issue 11): ``--from``, changed inputs and settings,
training again on another dataset or config, model identity across a retrain, one prompt
path for the backward model, serve commands and the template check, against the stub."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from humpback_plugin.axolotl.training import stamp_path, train
from humpback_plugin.cli import cli
from humpback_plugin.core.layout import stage_names
from tests.stub_openai import CHATML_TEMPLATE, StubOpenAI
from tests.test_pipeline import make_config, stub_handler

ROOT = Path(__file__).resolve().parents[1]
LLAMA2 = ROOT / "axolotl_configs" / "chat_templates" / "llama2_inst.jinja"
CHATML = CHATML_TEMPLATE


@pytest.fixture
def stub():
    with StubOpenAI(stub_handler, models=("stub",), roots={"stub": "/weights/stub"}) as server:
        yield server


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["run", *args])
    return result.exit_code, result.output


def ran(output: str) -> list[str]:
    """The stages a run ran (not skipped), from its log lines."""
    names = []
    for line in output.splitlines():
        if line.startswith("[") and "] " in line and line.endswith(" ...") and ": done" not in line:
            names.append(line.split("] ", 1)[1].split(" ", 1)[0])
    return names


def trained_elsewhere(run_dir: Path, role: str) -> None:
    model = run_dir / role / "model"
    model.mkdir()
    (model / "adapter_model.safetensors").write_bytes(b"trained again elsewhere")


def edit_config(run_dir: Path, change) -> None:
    path = run_dir / "config.yaml"
    config = yaml.safe_load(path.read_text())
    change(config)
    path.write_text(yaml.safe_dump(config))


def test_from_reruns_the_stage_and_every_later_one(tmp_path, stub):
    config = make_config(tmp_path, stub.base_url)
    run_dir = tmp_path / "run"
    assert run("-c", str(config), str(run_dir))[0] == 0
    code, out = run(str(run_dir), "--from", "curate_2", "--no-wait")
    # M2 is trained again too: the run stops there, waiting for it (exit 3).
    assert code == 3, out
    assert ran(out) == ["curate_2", "m2_data", "train_m2"]
    assert "curate_2 (again: --from) ..." in out
    assert (run_dir / "m2" / "model.previous").is_dir()
    trained_elsewhere(run_dir, "m2")
    code, out = run(str(run_dir))
    assert code == 0 and ran(out) == ["train_m2"], out
    # Earlier stages stay done; nothing else changed, so a plain re-run skips everything.
    code, out = run(str(run_dir))
    assert code == 0 and ran(out) == [], out


def test_changed_settings_and_inputs_rerun_what_depends_on_them(tmp_path, stub):
    config = make_config(tmp_path, stub.base_url)
    run_dir = tmp_path / "run"
    assert run("-c", str(config), str(run_dir), "--until", "curate_1")[0] == 0
    # A curate setting: curate_1 runs again; the judge's answers come from its store.
    edit_config(run_dir, lambda c: c["curate"].update(threshold=3))
    before = len(stub.generation_requests)
    code, out = run(str(run_dir), "--until", "curate_1")
    assert code == 0 and ran(out) == ["curate_1"], out
    assert "curate_1 (again: settings changed)" in out
    assert len(stub.generation_requests) == before  # same judge, same pairs: cached
    # An input: a corpus page changes, so segments and everything after them run again.
    page = next((tmp_path / "inputs" / "corpus").glob("*.html"))
    page.write_text(page.read_text().replace("</main>", "<p>One more line.</p></main>"))
    code, out = run(str(run_dir), "--until", "curate_1")
    assert code == 0, out
    assert "segments (again: input changed: " in out and ran(out)[0] == "segments"
    status = json.loads(CliRunner().invoke(cli, ["status", str(run_dir), "--json"]).output)
    assert {r["status"] for r in status if r["stage"] in stage_names(2)[:8]} == {"done"}


def test_training_runs_again_when_its_dataset_or_config_changed(tmp_path, stub):
    config = make_config(tmp_path, stub.base_url)
    run_dir = tmp_path / "run"
    assert run("-c", str(config), str(run_dir), "--until", "train_m0")[0] == 0
    # The training config changes: backward_data renders another axolotl.yaml, so the
    # backward model must be trained again; the one trained before is kept aside.
    edit_config(run_dir, lambda c: c["training"].update(max_steps=7))
    code, out = run(str(run_dir), "--until", "train_m0", "--no-wait")
    assert code == 3, out
    assert "backward_data (again: settings changed)" in out
    assert "train_backward (again: input changed: backward/axolotl.yaml)" in out
    assert (run_dir / "backward/model.previous").is_dir()
    assert not (run_dir / "backward/model").exists() and "axolotl train " in out
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["stages"]["train_backward"]["status"] == "waiting"
    # Trained elsewhere and copied in: the run goes on, and m0 is trained again too.
    trained_elsewhere(run_dir, "backward")
    code, out = run(str(run_dir), "--until", "train_m0", "--no-wait")
    assert code == 3 and "train_m0 (again: input changed: m0/axolotl.yaml)" in out, out


def test_train_reuses_only_a_model_trained_from_the_same_files(tmp_path):
    config, dataset, out = tmp_path / "axolotl.yaml", tmp_path / "data.jsonl", tmp_path / "model"
    config.write_text("max_steps: 4\n")
    dataset.write_text('{"messages": []}\n')
    out.mkdir()
    (out / "adapter_model.safetensors").write_bytes(b"weights")
    # Trained elsewhere and copied in, no stamp: taken as it is, and stamped.
    assert train(config, out, execute=False, wait=False, inputs=[dataset]) == "already trained"
    assert stamp_path(out).exists()
    assert train(config, out, execute=False, wait=False, inputs=[dataset]) == "already trained"
    dataset.write_text('{"messages": [1]}\n')
    with pytest.raises(Exception, match="waiting for"):
        train(config, out, execute=False, wait=False, inputs=[dataset])
    assert (tmp_path / "model.previous" / "adapter_model.safetensors").exists()


def test_a_retrained_judge_under_the_same_name_judges_again(tmp_path, stub):
    """Issue 11: a retrained M0 served under the same name got the old judgements back."""
    config = make_config(tmp_path, stub.base_url)
    run_dir = tmp_path / "run"
    assert run("-c", str(config), str(run_dir), "--until", "curate_1")[0] == 0
    candidates = sum(1 for _ in (run_dir / "augment" / "candidates.jsonl").open())
    (run_dir / "m0" / "model" / "adapter_model.safetensors").write_bytes(b"retrained weights")
    before = len(stub.generation_requests)
    code, out = run(str(run_dir), "--until", "curate_1")
    assert code == 0, out
    assert "train_m0 (again: outputs changed)" in out and "curate_1 (again: input changed" in out
    assert len(stub.generation_requests) - before >= candidates > 0
    manifest = json.loads((run_dir / "manifest.json").read_text())
    identity = manifest["stages"]["curate_1"]["stats"]["model_identity"]
    assert identity["revision"] == manifest["stages"]["train_m0"]["outputs"][0]["sha256"]


def test_one_prompt_path_a_changed_template_changes_training_rows_and_requests(tmp_path, stub):
    template = tmp_path / "my_backward.txt"
    template.write_text("FIRST TEMPLATE. Which question does this answer?\n\n{output}\n")
    config = make_config(tmp_path, stub.base_url)
    data = yaml.safe_load(config.read_text())
    data["augment"]["template"] = str(template)
    config.write_text(yaml.safe_dump(data))
    run_dir = tmp_path / "run"

    def both_sides() -> tuple[set[str], set[str]]:
        rows = [json.loads(x) for x in (run_dir / "backward/data/backward.jsonl").open()]
        trained = {r["messages"][0]["content"].split(".")[0] for r in rows}
        sent = {r.prompt_text.split(".")[0] for r in stub.generation_requests[-3:]}
        return trained, sent

    assert run("-c", str(config), str(run_dir), "--until", "augment")[0] == 0
    assert both_sides() == ({"FIRST TEMPLATE"}, {"FIRST TEMPLATE"})
    template.write_text("SECOND TEMPLATE. Which question does this answer?\n\n{output}\n")
    code, out = run(str(run_dir), "--until", "augment", "--no-wait")
    assert code == 3 and ran(out) == ["backward_data", "train_backward"], out
    trained_elsewhere(run_dir, "backward")  # on the new rows
    code, out = run(str(run_dir), "--until", "augment")
    assert code == 0 and ran(out) == ["train_backward", "augment"], out
    assert both_sides() == ({"SECOND TEMPLATE"}, {"SECOND TEMPLATE"})


def test_each_trained_model_gets_its_serve_command(tmp_path, stub):
    config = make_config(tmp_path, stub.base_url)
    run_dir = tmp_path / "run"
    (run_dir / "m0" / "model" / "adapter_config.json").write_text(json.dumps({"r": 12}))
    code, out = run("-c", str(config), str(run_dir), "--until", "train_m0")
    assert code == 0, out
    m0_template = run_dir / "m0" / "chat_template.jinja"
    assert m0_template.read_text() == LLAMA2.read_text()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    lora = manifest["stages"]["train_m0"]["serve_command"]
    assert lora.startswith("vllm serve /models/base --chat-template ")
    assert f"--chat-template {m0_template.resolve()}" in lora
    assert "--enable-lora --max-lora-rank 16 --max-loras 1 --lora-modules stub=" in lora
    assert lora in out and (run_dir / "m0" / "serve.sh").read_text().count(lora) == 1
    full = CliRunner().invoke(cli, ["serve-command", str(run_dir), "backward"])
    assert full.exit_code == 0, full.output
    assert full.output.strip() == (
        f"vllm serve {(run_dir / 'backward' / 'model').resolve()} --served-model-name stub "
        f"--chat-template {(run_dir / 'backward' / 'chat_template.jinja').resolve()}"
    )
    again = CliRunner().invoke(cli, ["serve-command", str(run_dir), "m0"])
    assert again.output.strip() == lora
    bad = CliRunner().invoke(cli, ["serve-command", str(run_dir), "m9"])
    assert bad.exit_code == 2 and "roles of this run: backward, m0, m1, m2" in bad.output


@pytest.mark.parametrize("served", ["llama2", "chatml"])
def test_the_run_checks_the_servers_chat_template(tmp_path, served):
    server_template = LLAMA2.read_text() if served == "llama2" else CHATML
    with StubOpenAI(
        stub_handler,
        chat_template=server_template,
        special_tokens={"bos_token": "<s>", "eos_token": "</s>"},
    ) as server:
        config = make_config(tmp_path, server.base_url)
        run_dir = tmp_path / "run"
        code, out = run("-c", str(config), str(run_dir), "--until", "augment")
        if served == "llama2":
            assert code == 0, out
            manifest = json.loads((run_dir / "manifest.json").read_text())
            report = manifest["stages"]["augment"]["stats"]["chat_template"]
            assert report["checked"] and "same token ids" in report[server.base_url]
            return
        assert code == 1 and "chat template mismatch" in out
        assert f"humpback serve-command {run_dir} backward" in out
        assert server.generation_requests == []
        code, out = run(str(run_dir), "--until", "augment", "--skip-template-check")
    assert code == 0, out
