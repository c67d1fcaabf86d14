"""Secrets, unsafe loaders, shells, and paths that could leave the run directory.

* the API key (from ``$HUMPBACK_API_KEY`` or ``--api-key-file``) reaches the server and
  nothing else: every file augment and curate write, and their stdout/stderr, are searched
  for it, also on the failure paths (a refused request, a refused key);
* the package source is scanned with ``ast``: no ``yaml.load``/``unsafe_load``/
  ``full_load``, ``eval``/``exec``, ``pickle``/``marshal``/``shelve``, no ``shell=True``,
  ``os.system``, ``os.popen``; subprocesses get argument lists;
* a run config cannot point Axolotl's output (model, prepared data) outside the run dir.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from humpback_plugin.cli import cli
from humpback_plugin.core.config import RUN_OWNED_AXOLOTL_KEYS, parse_config
from humpback_plugin.core.errors import InputError
from tests.stub_openai import StubOpenAI, StubRequest, StubResponse, reply

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "humpback_plugin"
# Unique enough that any occurrence is a leak, and found in any encoding of the text.
SECRET = "sk-humpback-test-7f3a9c1e5b2d4680aa11"


# --- a server that requires the key ------------------------------------------------------


class KeyedServer:
    """OpenAI-compatible on 127.0.0.1; 401 without ``Authorization: Bearer <key>``."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.authorized = 0
        self.refused = 0

    def answer(self, req: StubRequest) -> StubResponse:
        text = req.prompt_text
        if 'write "Score: <rating>"' in text:
            if "orchid" in text:
                return StubResponse(status=400, json={"error": {"message": "prompt too long"}})
            return reply("Clear and complete.\nScore: 5")
        return reply("How do I look after this?")

    def __enter__(self) -> KeyedServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _authorized(self) -> bool:
                if self.headers.get("Authorization") == f"Bearer {server.key}":
                    server.authorized += 1
                    return True
                server.refused += 1
                self._send(401, {"error": {"message": "Invalid API key"}})
                return False

            def do_GET(self) -> None:
                if self._authorized():
                    self._send(200, {"object": "list", "data": [{"id": "stub"}]})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if not self._authorized():
                    return
                req = StubRequest("POST", self.path, body)
                resp = server.answer(req)
                data = resp.json or StubOpenAI._completion(req, resp)
                self._send(resp.status, data)

            def _send(self, status: int, data: dict) -> None:
                payload = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def humpback(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "humpback_plugin", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def files_containing(folder: Path, needle: str) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


@pytest.mark.parametrize("source", ["env", "file"])
def test_api_key_never_written_or_printed(tmp_path, source):
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    segments = inputs / "segments.jsonl"
    segments.write_text(
        "".join(
            json.dumps({"id": f"s{i}", "text": f"Care guide {i}: {topic}. " * 30}) + "\n"
            for i, topic in enumerate(["water the orchid weekly", "feed the starter daily"])
        )
    )
    env = dict(os.environ, HUMPBACK_LOAD_PLUGINS="", PYTHONPATH=str(ROOT))
    key_args: list[str] = []
    if source == "env":
        env["HUMPBACK_API_KEY"] = SECRET
    else:
        env.pop("HUMPBACK_API_KEY", None)
        key_file = inputs / "key.txt"
        key_file.write_text(SECRET + "\n")
        key_args = ["--api-key-file", str(key_file)]
    candidates = outputs / "augment" / "candidates.jsonl"
    with KeyedServer(SECRET) as server:
        common = ["--base-url", server.base_url, "--model", "stub", *key_args]
        runs = [
            humpback("augment", str(segments), "-o", str(candidates), *common, env=env),
            humpback(
                *("curate", str(candidates), "-o", str(outputs / "curate" / "scored.jsonl")),
                *("--selected", str(outputs / "curate" / "a4.jsonl"), *common),
                env=env,
            ),
        ]
        assert server.refused == 0 and server.authorized > 0, "the key must reach the server"
        # A wrong key: a clear refusal that prints neither key.
        wrong = dict(env, HUMPBACK_API_KEY="sk-wrong-" + SECRET[::-1])
        refused = humpback(
            "augment", str(segments), "-o", str(outputs / "refused.jsonl"),
            "--base-url", server.base_url, "--model", "stub", env=wrong,
        )  # fmt: skip
    for proc in runs:
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert refused.returncode == 1 and "refused the API key (HTTP 401)" in refused.stderr
    # The failure path was exercised too: one pair refused, its message recorded.
    failures = (outputs / "curate" / "scored.jsonl.parts" / "failures.jsonl").read_text()
    assert "prompt too long" in failures
    written = sorted(str(p.relative_to(outputs)) for p in outputs.rglob("*") if p.is_file())
    assert {"augment/candidates.jsonl.parts/summary.json", "curate/a4.jsonl"} <= set(written)
    for needle in (SECRET, SECRET[::-1]):
        assert files_containing(outputs, needle) == []
        for proc in (*runs, refused):
            assert needle not in proc.stdout and needle not in proc.stderr


def test_api_key_not_in_client_errors_or_reprs():
    from humpback_plugin.core.client import ClientConfig

    config = ClientConfig(base_urls=["http://127.0.0.1:9"], model="m", api_key=SECRET)
    client = config.make_client()
    assert SECRET not in repr(client.stats) and SECRET not in str(client.base_urls)
    assert SECRET not in repr(config) and SECRET not in config.model_dump_json()
    # test_client.py::test_api_key_sent_but_never_in_errors covers the exceptions.


# --- the source: safe loaders, no shell ---------------------------------------------------


def _package_trees() -> list[tuple[Path, ast.AST]]:
    return [(p, ast.parse(p.read_text(encoding="utf-8"))) for p in sorted(PACKAGE.rglob("*.py"))]


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


UNSAFE_CALLS = {
    "eval", "exec", "yaml.load", "yaml.unsafe_load", "yaml.full_load", "yaml.load_all",
    "yaml.unsafe_load_all", "os.system", "os.popen", "subprocess.getoutput",
    "subprocess.getstatusoutput", "pickle.load", "pickle.loads", "marshal.loads",
}  # fmt: skip
UNSAFE_MODULES = {"pickle", "cPickle", "dill", "marshal", "shelve"}
SUBPROCESS_CALLS = {"run", "Popen", "call", "check_call", "check_output"}


def scan(tree: ast.AST, where: object) -> list[str]:
    """Every forbidden import, call and keyword in one module's syntax tree."""
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            module = getattr(node, "module", None) or ""
            for name in [module, *(a.name for a in node.names)]:
                if name.split(".")[0] in UNSAFE_MODULES:
                    problems.append(f"{where}:{node.lineno}: imports {name}")
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        if name in UNSAFE_CALLS:
            problems.append(f"{where}:{node.lineno}: calls {name}")
        for kw in node.keywords:
            if kw.arg == "shell" and not (
                isinstance(kw.value, ast.Constant) and kw.value.value is False
            ):
                problems.append(f"{where}:{node.lineno}: shell={ast.unparse(kw.value)}")
        # Commands are argument lists: a string command needs a shell to mean anything.
        if (
            name.removeprefix("subprocess.") in SUBPROCESS_CALLS
            and node.args
            and isinstance(node.args[0], ast.Constant | ast.JoinedStr | ast.BinOp)
        ):
            problems.append(f"{where}:{node.lineno}: {name} with a string command")
    return problems


def test_no_unsafe_loaders_eval_or_shell_in_the_package():
    trees = _package_trees()
    assert len(trees) > 20
    problems = [p for path, tree in trees for p in scan(tree, path.relative_to(ROOT))]
    assert problems == []


def test_the_scan_catches_what_it_looks_for():
    bad = """
import pickle
from marshal import loads
yaml.load(open("c.yaml"))
yaml.unsafe_load(text)
eval("1")
subprocess.run("ls -l", shell=True)
subprocess.Popen(f"ls {folder}")
os.system("ls")
os.popen("ls")
subprocess.run(["ls", "-l"], shell=False)
yaml.safe_load(text)
"""
    found = [p.split(": ", 1)[1] for p in scan(ast.parse(bad), "x")]
    assert found == [
        "imports pickle", "imports marshal", "calls yaml.load", "calls yaml.unsafe_load",
        "calls eval", "shell=True", "subprocess.run with a string command",
        "subprocess.Popen with a string command", "calls os.system", "calls os.popen",
    ]  # fmt: skip


def test_yaml_and_json_inputs_cannot_run_code(tmp_path):
    evil = tmp_path / "evil.yaml"
    marker = tmp_path / "pwned"
    evil.write_text(f"training: !!python/object/apply:os.system ['touch {marker}']\n")
    result = CliRunner().invoke(cli, ["run", "-c", str(evil), str(tmp_path / "run")])
    assert result.exit_code == 1 and "invalid YAML" in result.output
    assert not marker.exists()
    # test_config.py::test_yaml_is_loaded_safely covers load_config directly.


# --- paths stay inside the run directory ----------------------------------------------------


@pytest.mark.parametrize("key", sorted(RUN_OWNED_AXOLOTL_KEYS))
def test_config_cannot_send_training_output_outside_the_run_dir(key):
    data = {"training": {"base_model": "x", "overrides": {key: "/tmp/elsewhere"}}}
    with pytest.raises(InputError, match=rf"training.overrides: .*{key}: set by the run"):
        parse_config(data)
    ok = parse_config({"training": {"base_model": "x", "overrides": {"lora_r": 8}}})
    assert ok.training.overrides == {"lora_r": 8}


def test_pipeline_paths_are_fixed_names_under_the_run_dir(tmp_path):
    from humpback_plugin.core.layout import RunLayout

    paths = RunLayout(tmp_path / "run")
    run = (tmp_path / "run").resolve()
    every = [paths.seed, paths.segments, paths.segments_rejected, paths.candidates]
    for role in ("backward", "m0", "m1", "m2"):
        every += [paths.dataset(role), paths.axolotl_config(role), paths.trained(role)]
    for k in (1, 2):
        every += [paths.scored(k), paths.curated(k)]
    assert all(p.resolve().is_relative_to(run) for p in every)


def test_rendered_axolotl_config_writes_only_under_the_run_dir(tmp_path):
    """What `humpback run` hands to Axolotl: output and prepared data in the run dir."""
    from humpback_plugin.axolotl.configs import render_config

    run = tmp_path / "run"
    dataset = run / "m0" / "data" / "m0.jsonl"
    dataset.parent.mkdir(parents=True)
    dataset.write_text(json.dumps({"messages": []}) + "\n")
    config = parse_config({"training": {"base_model": "x", "overrides": {"lora_r": 8}}})
    rendered = render_config(
        "forward", 0, dataset=dataset, base_model="x", output_dir=run / "m0" / "model",
        overrides=config.training.overrides,
    )  # fmt: skip
    for key in ("output_dir", "dataset_prepared_path"):
        assert Path(rendered.config[key]).is_relative_to(run.resolve()), key


@pytest.mark.parametrize("escape", ["../outside.txt", "ABSOLUTE", "link/outside.txt"])
def test_manifest_paths_outside_the_run_dir_never_count_as_done(tmp_path, escape):
    """A tampered manifest naming a file outside the run directory, with that file's true
    sha256, still makes the stage look not done (and nothing is written there)."""
    from humpback_plugin.core.hashing import file_sha256
    from humpback_plugin.core.manifest import Manifest

    run = tmp_path / "run"
    run.mkdir()
    outside = tmp_path / "outside.txt"
    outside.write_text("precious")
    (run / "link").symlink_to(tmp_path)
    path = str(outside) if escape == "ABSOLUTE" else escape
    entry = {"path": path, "sha256": file_sha256(outside)}
    manifest = {
        "version": 1, "run_id": "x", "created_at": "now", "config": {},
        "stages": {"seed": {"status": "done", "outputs": [entry]}},
    }  # fmt: skip
    (run / "manifest.json").write_text(json.dumps(manifest))
    assert Manifest(run).is_done("seed") is False
    assert outside.read_text() == "precious"
    # the same entry pointing inside the run directory is done: the check is the path
    (run / "outside.txt").write_text("precious")
    manifest["stages"]["seed"]["outputs"] = [{"path": "outside.txt", "sha256": entry["sha256"]}]
    (run / "manifest.json").write_text(json.dumps(manifest))
    assert Manifest(run).is_done("seed") is True
