"""Axolotl configs: step table, batch arithmetic, lr schedule, key and Axolotl validation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from humpback_plugin.axolotl.configs import CONFIGS_DIR, VARIANTS, render_config, write_config
from humpback_plugin.axolotl.schedule import PAPER_STEP_TABLE, paper_steps, split_batch, wsd_lr
from humpback_plugin.axolotl.templates import load_yaml
from humpback_plugin.axolotl.validate import SCHEMA_SNAPSHOT, check_keys
from humpback_plugin.cli import cli
from humpback_plugin.core.errors import ConfigError, InputError, UsageError
from humpback_plugin.stages.export.stage import export_datasets
from tests.test_axolotl_real import axolotl_bin, axolotl_python, check, run


@pytest.fixture
def datasets(tmp_path: Path) -> Path:
    seed = tmp_path / "seed.jsonl"
    seed.write_text(
        "".join(json.dumps({"instruction": f"q{i}", "output": f"a{i}"}) + "\n" for i in range(40))
    )
    export_datasets(seed, tmp_path / "ds")
    return tmp_path / "ds"


@pytest.mark.parametrize(("examples", "batch", "steps"), PAPER_STEP_TABLE)
def test_step_table_rows_are_exact(examples: int, batch: int, steps: int) -> None:
    plan = paper_steps(examples)
    assert (plan.batch_size, plan.steps) == (batch, steps)


def test_step_table_between_and_beyond_rows() -> None:
    assert paper_steps(2999).batch_size == 8 and paper_steps(3000).batch_size == 32
    # epochs change smoothly across the 8 -> 32 switch
    assert abs(paper_steps(2999).epochs - paper_steps(3000).epochs) < 0.05
    mid = paper_steps(45021)  # 3,200 seed + 41,821 A5
    assert 1200 < mid.steps < 1600 and "interpolated" in mid.rule
    a4 = paper_steps(3200 + 195043)
    assert a4.steps == math.ceil(198243 / 32) and "past the table" in a4.rule
    assert paper_steps(50).steps == 15
    with pytest.raises(UsageError, match="empty"):
        paper_steps(0)


def test_batch_arithmetic() -> None:
    assert split_batch(32, 1, None, 4) == (4, 8)
    assert split_batch(32, 8, None, 1) == (1, 4)
    assert split_batch(8, 1, None, 4) == (4, 2)
    assert split_batch(32, 8, 2, 1) == (2, 2)
    with pytest.raises(ConfigError, match="3 GPUs cannot share a batch of 32"):
        split_batch(32, 3, None, 4)
    with pytest.raises(ConfigError, match="micro batch 3"):
        split_batch(32, 1, 3, 4)


def test_render_fills_the_run(datasets: Path, tmp_path: Path) -> None:
    r = render_config(
        "forward", 0, dataset=datasets / "m0.jsonl", base_model="my/base", output_dir=tmp_path / "o"
    )
    cfg = r.config
    assert cfg["base_model"] == "my/base"
    assert cfg["datasets"][0]["path"] == str((datasets / "m0.jsonl").resolve())
    assert cfg["datasets"][0]["roles_to_train"] == ["assistant"]
    assert cfg["output_dir"] == str((tmp_path / "o").resolve())
    # 40 examples: batch 8, steps from the table (2.4 epochs below 100 examples)
    assert r.plan.batch_size == 8 and cfg["max_steps"] == 12
    assert cfg["micro_batch_size"] * cfg["gradient_accumulation_steps"] == 8
    assert cfg["weight_decay"] == 0.1
    assert cfg["overrides_of_model_config"]["attention_dropout"] == 0.1
    assert cfg["train_on_inputs"] is False
    assert "[INST]" in cfg["chat_template_jinja"] and cfg["chat_template"] == "jinja"
    assert r.train_command("c.yaml") == "axolotl train c.yaml"


def test_lr_schedule_ends_at_9e_6_not_9e_11(datasets: Path) -> None:
    r = render_config("forward", 1, dataset=datasets / "m0.jsonl", examples=45021)
    cfg = r.config
    assert cfg["learning_rate"] == 1e-5
    assert cfg["lr_scheduler"] == "warmup_stable_decay"
    assert cfg["lr_scheduler_kwargs"]["decay_type"] == "linear"
    rates = [wsd_lr(i, cfg) for i in range(cfg["max_steps"])]
    assert rates[0] == pytest.approx(1e-5)
    assert rates[-1] == pytest.approx(9e-6) and r.final_lr == pytest.approx(9e-6)
    steps = [a - b for a, b in zip(rates, rates[1:], strict=False)]
    assert max(steps) == pytest.approx(min(steps))  # linear


def test_gpu_variants(datasets: Path) -> None:
    r = render_config(
        "backward", dataset=datasets / "backward.jsonl", variant="zero3", gpus=8, examples=3200
    )
    cfg = r.config
    assert cfg["micro_batch_size"] * cfg["gradient_accumulation_steps"] * 8 == 32
    assert Path(cfg["deepspeed"]).is_file()
    assert r.train_command("c.yaml") == "axolotl train c.yaml -- --num_processes 8"
    r = render_config("forward", 2, dataset=datasets / "m0.jsonl", variant="fsdp2", gpus=4)
    assert r.config["fsdp_version"] == 2
    r = render_config("forward", 0, dataset=datasets / "m0.jsonl", variant="qlora")
    assert r.config["adapter"] == "qlora" and r.config["load_in_4bit"] is True
    with pytest.raises(ConfigError, match="needs GPUs"):
        render_config("forward", 0, dataset=datasets / "m0.jsonl", variant="zero3", cpu=True)


def test_cpu_profile(datasets: Path) -> None:
    cfg = render_config("backward", dataset=datasets / "backward.jsonl", cpu=True).config
    assert cfg["max_steps"] == 4 and cfg["warmup_steps"] == 0 and cfg["bf16"] is False
    for kernel in ("lora_mlp_kernel", "lora_qkv_kernel", "lora_o_kernel", "lora_embedding_kernel"):
        assert cfg[kernel] is False


def test_unknown_key_names_key_and_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        check_keys({"base_model": "x", "lerning_rate": 1e-5}, tmp_path / "bad.yaml")
    message = str(err.value)
    assert "bad.yaml" in message and "'lerning_rate'" in message
    assert "did you mean 'learning_rate'" in message
    with pytest.raises(ConfigError, match=r"datasets\[0\]\.'rols_to_train'"):
        check_keys({"datasets": [{"path": "x", "rols_to_train": ["assistant"]}]}, "c.yaml")


def test_templates_and_snapshot_keys_are_known() -> None:
    for path in sorted(CONFIGS_DIR.rglob("*.yaml")):
        check_keys(load_yaml(path), path)
    snapshot = json.loads(SCHEMA_SNAPSHOT.read_text())
    assert snapshot["axolotl_version"] == "0.19.0"
    assert "lr_scheduler_kwargs" in snapshot["keys"]["top_level"]


def test_bad_yaml_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("base_model: x\ndatasets: [\n")
    with pytest.raises(InputError, match=r"bad.yaml:line \d+, column \d+: malformed YAML"):
        load_yaml(bad)


def test_configs_command(datasets: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "configs"
    result = runner.invoke(
        cli,
        [
            "configs",
            "forward",
            "-i",
            "0",
            "--dataset",
            str(datasets / "m0.jsonl"),
            "-o",
            str(out),
            "--base-model",
            "my/base",
            "--set",
            "num_epochs=1",
            "--no-validate",
        ],
    )
    assert result.exit_code == 0, result.output
    assert f"axolotl train {out / 'm0.yaml'}" in result.output
    cfg = yaml.safe_load((out / "m0.yaml").read_text())
    assert cfg["base_model"] == "my/base" and cfg["num_epochs"] == 1

    result = runner.invoke(
        cli,
        [
            "configs",
            "backward",
            "--dataset",
            str(datasets / "backward.jsonl"),
            "-o",
            str(out),
            "--set",
            "lerning_rate=1",
            "--no-validate",
        ],
    )
    assert result.exit_code == 1 and "'lerning_rate'" in result.output
    assert not (out / "backward.yaml").exists()

    result = runner.invoke(cli, ["configs", "check", str(out / "m0.yaml")])
    assert result.exit_code == 0 and "keys checked" in result.output
    result = runner.invoke(cli, ["configs", "steps", "3200"])
    assert result.exit_code == 0 and "500" in result.output


# --- with the real Axolotl (its own venv, driven in a subprocess) -----------------------------


@pytest.mark.axolotl
def test_every_variant_passes_axolotl_validation(datasets: Path, tmp_path: Path) -> None:
    bin_path = axolotl_bin()
    paths = []
    for variant in VARIANTS:
        gpus = 8 if variant in ("zero3", "fsdp2") else 1
        for role, iteration in (("backward", 0), ("forward", 0), ("forward", 1)):
            dataset = datasets / ("backward.jsonl" if role == "backward" else "m0.jsonl")
            r = render_config(role, iteration, dataset=dataset, variant=variant, gpus=gpus)
            paths.append((write_config(r, tmp_path / variant / f"{r.name}.yaml"), gpus))
    for cpu_variant in ("full", "lora"):
        r = render_config(
            "backward", dataset=datasets / "backward.jsonl", variant=cpu_variant, cpu=True
        )
        paths.append((write_config(r, tmp_path / "cpu" / f"{cpu_variant}.yaml"), 1))
    python = axolotl_python(bin_path)
    for gpus in (1, 8):
        files = [str(p) for p, g in paths if g == gpus and "cpu" not in str(p)]
        out = check(
            run(
                [python, "-m", "humpback_plugin", "configs", "check", "--gpus", str(gpus), *files],
                bin_path,
            ),
            "configs check",
        )
        assert out.count("Axolotl validation passed") == len(files), out
    cpu_files = [str(p) for p, _ in paths if "/cpu/" in str(p)]
    out = check(
        run([python, "-m", "humpback_plugin", "configs", "check", "--cpu", *cpu_files], bin_path),
        "configs check --cpu",
    )
    assert out.count("Axolotl validation passed") == 2, out
    templates = [str(p) for p in sorted(CONFIGS_DIR.glob("*.yaml"))]
    out = check(
        run([python, "-m", "humpback_plugin", "configs", "check", *templates], bin_path),
        "templates",
    )
    assert out.count("Axolotl validation passed") == 3


@pytest.mark.axolotl
def test_axolotl_rejects_a_bad_config_clearly(tmp_path: Path) -> None:
    bin_path = axolotl_bin()
    bad = tmp_path / "bad.yaml"
    bad.write_text("base_model: x\nmicro_batch_size: 2\nlearning_rate: fast\ndatasets: []\n")
    proc = run(
        [axolotl_python(bin_path), "-m", "humpback_plugin", "configs", "check", bad], bin_path
    )
    assert proc.returncode == 1
    assert "bad.yaml: Axolotl rejects the config" in proc.stderr and "learning_rate" in proc.stderr


@pytest.mark.axolotl
def test_schema_snapshot_matches_installed_axolotl() -> None:
    bin_path = axolotl_bin()
    code = (
        "import json; from humpback_plugin.axolotl.validate import live_schema_keys;"
        "print(json.dumps(live_schema_keys()))"
    )
    proc = run([axolotl_python(bin_path), "-c", code], bin_path)
    check(proc, "schema keys")
    live = json.loads(proc.stdout.strip().splitlines()[-1])
    assert live == json.loads(SCHEMA_SNAPSHOT.read_text())["keys"]


@pytest.mark.axolotl
def test_transformers_scheduler_ends_at_9e_6(datasets: Path, tmp_path: Path) -> None:
    """The rendered config through the very scheduler Axolotl's trainer builds."""
    bin_path = axolotl_bin()
    r = render_config("forward", 1, dataset=datasets / "m0.jsonl", examples=45021)
    path = write_config(r, tmp_path / "m1.yaml")
    code = (
        "import json, sys, yaml; from humpback_plugin.axolotl.schedule import "
        "scheduled_learning_rates as s; "
        "print(json.dumps(s(yaml.safe_load(open(sys.argv[1])))))"
    )
    proc = run([axolotl_python(bin_path), "-c", code, path], bin_path)
    check(proc, "scheduler")
    rates = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(rates) == r.config["max_steps"]
    assert rates[0] == pytest.approx(1e-5) and rates[-1] == pytest.approx(9e-6)
    assert min(rates) > 8.99e-6  # never the 9e-11 of a multiplier misread
    assert rates == pytest.approx([wsd_lr(i, r.config) for i in range(len(rates))])
