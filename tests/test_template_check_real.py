"""The chat-template check against a real vLLM (issue 11).

vLLM applies one chat template to every chat request, LoRA adapters included; without
``--chat-template`` it is the base model's (SmolLM2's ChatML with its default system
prompt), not the ``[INST]`` template Axolotl trained the adapter with. Here a LoRA adapter
is served with its training template and augment passes the check, its prompts counted
by vLLM exactly as the training rendering; a server started without ``--chat-template``
is caught before any request, with both renderings in the error.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml

from humpback_plugin.core.chat_template import load_training_template
from humpback_plugin.core.client import ClientConfig
from humpback_plugin.core.config import AugmentConfig
from humpback_plugin.core.errors import TemplateMismatch
from humpback_plugin.stages.augment.stage import augment
from humpback_plugin.vllm import server as srv
from humpback_plugin.vllm.install import install_peft
from tests.test_server_real import _MAKE_LORA
from tests.vllm_fixture import require_vllm_install

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
LLAMA2 = ROOT / "axolotl_configs" / "chat_templates" / "llama2_inst.jinja"
SEGMENT = {
    "id": "orchid",
    "header": "How to repot an orchid",
    "text": "Orchids do not grow in soil. They need a loose, airy mix, usually fir bark with "
    "a little perlite, because their roots take up water and air at the surface. Repot every "
    "one to two years, right after flowering, when new roots start to appear.",
}


def axolotl_config(path: Path, base_model: Path) -> Path:
    """What `humpback run` renders for a role: the template inline, the local base model."""
    path.write_text(
        yaml.safe_dump(
            {
                "base_model": str(base_model),
                "chat_template": "jinja",
                "chat_template_jinja": LLAMA2.read_text(),
            }
        )
    )
    return path


def write_segments(path: Path) -> Path:
    path.write_text(json.dumps(SEGMENT) + "\n")
    return path


def test_lora_adapter_served_with_its_training_template_passes(tmp_path):
    info = require_vllm_install()
    install_peft()
    adapter = tmp_path / "backward-adapter"
    subprocess.run(
        [str(info.python), "-c", _MAKE_LORA, str(info.model_dir), str(adapter), "8"], check=True
    )
    training = axolotl_config(tmp_path / "axolotl.yaml", info.model_dir)
    out = tmp_path / "candidates.jsonl"
    with srv.running_server(
        port=0, state_dir=tmp_path / "state", loras=[("backward", adapter)], chat_template=LLAMA2
    ) as handle:
        cmd = json.loads((handle.state_dir / "state.json").read_text())["cmd"]
        assert cmd[cmd.index("--chat-template") + 1] == str(LLAMA2.resolve())
        summary = augment(
            write_segments(tmp_path / "segments.jsonl"),
            out,
            client_config=ClientConfig(
                base_urls=[handle.base_url],
                model="backward",
                concurrency=1,
                chat_template=str(training),
            ),  # fmt: skip
            settings=AugmentConfig(max_tokens=16),
            show_progress=False,
        )
        # The prompt vLLM counted is the training rendering of the request, token for token.
        store = tmp_path / "candidates.jsonl.parts" / "generations.jsonl"
        (generation,) = [json.loads(line) for line in store.open()]
        prompt = load_training_template(training)
        filled = (
            (ROOT / "prompts" / "backtranslation.txt")
            .read_text()
            .replace("{output}", SEGMENT["text"])
            .strip()
        )
        request = [{"role": "user", "content": filled}]
        tokens = httpx.post(
            handle.base_url.removesuffix("/v1") + "/tokenize",
            json={
                "model": "backward",
                "prompt": prompt.render(request, add_generation_prompt=True),
                "add_special_tokens": False,
            },
            timeout=60,
        ).json()["count"]
    report = summary["chat_template"]
    assert report["checked"] and "same token ids" in report[handle.base_url]
    assert generation["provenance"]["usage"]["prompt_tokens"] == tokens
    (weights,) = summary["model_identity"]["weights"]
    assert weights["root"] == str(adapter) and weights["parent"] == "smollm2-135m"


def test_server_without_the_training_template_is_caught(vllm_server, tmp_path):
    info = require_vllm_install()
    training = axolotl_config(tmp_path / "axolotl.yaml", info.model_dir)
    with pytest.raises(TemplateMismatch) as caught:
        augment(
            write_segments(tmp_path / "segments.jsonl"),
            tmp_path / "candidates.jsonl",
            client_config=ClientConfig(
                base_urls=[vllm_server.base_url],
                model=vllm_server.model,
                chat_template=str(training),
            ),  # fmt: skip
            show_progress=False,
        )
    message = str(caught.value)
    assert "server renders:   '<|im_start|>system\\nYou are a helpful AI assistant" in message
    assert "training renders: '<|im_start|>[INST] Probe:" in message
    assert "first difference at token 1" in message and "--skip-template-check" in message
    assert not (tmp_path / "candidates.jsonl.parts" / "generations.jsonl").exists()
