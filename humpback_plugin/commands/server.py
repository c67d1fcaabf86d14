"""``humpback server``: the embedded vLLM server on 127.0.0.1."""

from __future__ import annotations

import json
from pathlib import Path

import click

from humpback_plugin.commands.common import group
from humpback_plugin.vllm.install import ensure_installed, is_installed, summary_lines
from humpback_plugin.vllm.server import (
    DEFAULT_HOST,
    DEFAULT_KV_CACHE_GIB,
    DEFAULT_MAX_MODEL_LEN,
    DEFAULT_PORT,
    DEFAULT_SERVED_MODEL_NAME,
    DEFAULT_START_TIMEOUT_S,
    DEFAULT_STOP_GRACE_S,
    server_status,
    start_server,
    stop_server,
)


@group("server")
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
    info = ensure_installed(home, python, device=device, force=force)
    if info.install_seconds == 0.0:
        click.echo("already installed")
    click.echo("\n".join(summary_lines(info)))


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
@click.option(
    "--chat-template",
    type=click.Path(exists=True, dir_okay=False),
    help="The jinja chat template the served models were trained with (vLLM applies it to "
    "every chat request, adapters included); default: the base model's own.",
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
    chat_template: str | None,
    max_model_len: int,
    kv_cache_gib: int,
    timeout: float,
    extra_args: tuple[str, ...],
) -> None:
    """Start the server detached; extra args after `--` go to vLLM verbatim."""
    h = start_server(
        home, port=port, host=host, model=model, served_model_name=served_model_name,
        loras=loras, max_model_len=max_model_len, kv_cache_gib=kv_cache_gib,
        timeout=timeout, state_dir=state_dir, extra_args=extra_args, chat_template=chat_template,
    )  # fmt: skip
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
    stopped = stop_server(home, state_dir=state_dir, grace=grace)
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
