"""The package as a user installs it: a wheel, in a fresh venv, the repository off the path.

Issue 11: installed from a wheel, ``humpback export`` looked for ``prompts/`` outside the
package. Here the wheel is built from the tracked files, installed with ``--no-deps`` into
a new venv (no system site-packages, no pip of its own), and its declared dependencies,
with theirs, are linked in from the environment running the test, so a dependency the
wheel forgets to declare is missing there too (``pip check`` must pass). The installed
``humpback`` console script then runs seed -> segment -> export -> configs -> augment ->
curate from a folder outside the repository, against the stub server (template check on).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import time
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.stub_openai import StubOpenAI, reply

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
LLAMA2 = ROOT / "axolotl_configs" / "chat_templates" / "llama2_inst.jinja"


def handler(req):
    if req.body.get("structured_outputs"):
        return reply("4")
    if "Score: <rating>" in req.prompt_text:
        return reply("Helpful.\nScore: 4")
    return reply("How do I use this part of Python?")


def tracked_copy(dest: Path) -> Path:
    """The files git tracks (links kept as links), as a fresh clone would have them."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, check=True, capture_output=True,
    ).stdout.decode().split("\0")  # fmt: skip
    archive = dest.with_suffix(".tar")
    with tarfile.open(archive, "w") as tar:
        for name in filter(None, files):
            if (ROOT / name).exists() or (ROOT / name).is_symlink():
                tar.add(ROOT / name, arcname=name, recursive=False)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="tar")
    return dest


def dependency_closure(wheel_requires: list[str]) -> list[metadata.Distribution]:
    """The distributions the wheel's requirements pull in, from this environment."""
    todo = [Requirement(r) for r in wheel_requires]
    seen: dict[str, metadata.Distribution] = {}
    while todo:
        req = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = req.name.lower().replace("_", "-")
        if name in seen:
            continue
        dist = metadata.distribution(req.name)
        assert dist.version in req.specifier, f"{req} not satisfied here ({dist.version})"
        seen[name] = dist
        todo += [Requirement(r) for r in dist.requires or []]
    return list(seen.values())


def link_into(site: Path, dists: list[metadata.Distribution]) -> None:
    """Link each distribution's top-level packages, modules and metadata into ``site``."""
    for dist in dists:
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if ".." not in Path(str(f)).parts}
        for top in tops - {"__pycache__"}:
            target = Path(str(dist.locate_file(top)))
            if target.exists() and not (site / top).exists():
                (site / top).symlink_to(target)


def test_wheel_in_a_fresh_venv_runs_the_stages(tmp_path):
    started = time.monotonic()
    src = tracked_copy(tmp_path / "src")
    pip = [sys.executable, "-m", "pip"]
    quiet = {"check": True, "capture_output": True, "text": True}
    subprocess.run([*pip, "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(src)], **quiet)
    (wheel,) = tmp_path.glob("humpback_plugin-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], **quiet
        ).stdout.strip()
    )
    subprocess.run([*pip, "--python", str(python), "install", "-q", "--no-deps", wheel], **quiet)
    requires = metadata.Distribution.at(next(site.glob("humpback_plugin-*.dist-info"))).requires
    link_into(site, dependency_closure(requires or []))
    check = subprocess.run([*pip, "--python", str(python), "check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr

    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["HUMPBACK_LOAD_PLUGINS"] = ""

    def sh(*args: str) -> str:
        done = subprocess.run(args, cwd=work, env=env, capture_output=True, text=True)
        assert done.returncode == 0, f"{args}\n{done.stdout}\n{done.stderr}"
        return done.stdout

    where = sh(str(python), "-c", "import humpback_plugin, sys; print(humpback_plugin.__file__)")
    assert where.startswith(str(site)) and str(ROOT) not in where
    seed = sh(
        str(python), "-c", "from humpback_plugin.run.demo import seed_path; print(seed_path())"
    )
    sh(
        str(python),
        "-c",
        "from humpback_plugin.run.demo import write_corpus; write_corpus('corpus', limit=8)",
    )
    with StubOpenAI(
        handler,
        chat_template=LLAMA2.read_text(),
        special_tokens={"bos_token": "<s>", "eos_token": "</s>"},
    ) as stub:
        server = ["--base-url", stub.base_url, "--model", "stub", "-q"]
        sh("humpback", "seed", seed.strip(), "-o", "seed.jsonl")
        sh("humpback", "segment", "corpus", "-o", "segments.jsonl", "--limit", "6")
        sh("humpback", "export", "seed.jsonl", "-o", "data")
        sh("humpback", "configs", "backward", "--dataset", "data/backward.jsonl", "-o", "configs",
           "--cpu", "--no-validate")  # fmt: skip
        sh("humpback", "configs", "forward", "-i", "0", "--dataset", "data/m0.jsonl", "-o",
           "configs", "--cpu", "--no-validate")  # fmt: skip
        sh("humpback", "augment", "segments.jsonl", "-o", "candidates.jsonl", *server,
           "--chat-template", "configs/backward.yaml")  # fmt: skip
        sh("humpback", "curate", "candidates.jsonl", "-o", "scored.jsonl", "--selected",
           "a4.jsonl", *server, "--chat-template", "configs/m0.yaml")  # fmt: skip
        tokenized = [r for r in stub.requests if r.path == "/tokenize"]
    backward = [json.loads(line) for line in (work / "data" / "backward.jsonl").open()]
    assert backward and backward[0]["messages"][0]["content"].endswith(
        "Answer in the style of an AI Assistant."
    )
    candidates = (work / "candidates.jsonl").read_text().splitlines()
    scored = [json.loads(line) for line in (work / "scored.jsonl").open()]
    assert candidates and len(scored) == len(candidates)
    assert all(s["score"] == 4 for s in scored) and len(tokenized) >= 12  # both stages checked
    summary = json.loads((work / "candidates.jsonl.parts" / "summary.json").read_text())
    assert "same token ids" in summary["chat_template"][stub.base_url]
    print(f"\nwheel -> fresh venv -> six stages: {time.monotonic() - started:.1f}s")
