"""Run configs: unknown keys and wrong types are errors naming the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from humpback_plugin.core.config import dump_config, load_config, parse_config
from humpback_plugin.core.errors import InputError

GOOD = """
training:
  base_model: /models/base
seed:
  inputs: [seed.jsonl]
curate:
  mode: logprobs
  threshold: 4.5
"""


def test_good_config_round_trips(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(GOOD)
    config = load_config(path)
    assert config.curate.threshold == 4.5 and config.iterations == 2
    assert config.augment.temperature == 0.7 and config.augment.top_p == 0.9
    path.write_text(dump_config(config))
    assert load_config(path) == config


def test_unknown_key_is_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(GOOD + "  treshold: 5\n")
    with pytest.raises(InputError, match=r"c.yaml: unknown key 'curate.treshold'"):
        load_config(path)


def test_wrong_type_is_named():
    with pytest.raises(InputError, match=r"curate.threshold: Input should be a valid number"):
        parse_config({"training": {"base_model": "x"}, "curate": {"threshold": "high"}})


def test_missing_required_and_bad_yaml(tmp_path):
    with pytest.raises(InputError, match="training: Field required"):
        parse_config({})
    path = tmp_path / "bad.yaml"
    path.write_text("training:\n  base_model: [unclosed\n")
    with pytest.raises(InputError, match=r"bad.yaml:\d+: invalid YAML"):
        load_config(path)
    with pytest.raises(InputError, match="no such file"):
        load_config(tmp_path / "missing.yaml")


def test_yaml_is_loaded_safely(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("training: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(InputError, match="invalid YAML"):
        load_config(path)


def test_example_config_is_valid():
    root = Path(__file__).resolve().parents[1]
    config = load_config(root / "examples" / "run.yaml")
    assert config.curate.threshold == 4 and config.serving.models["m1"] == "humpback-m1"
