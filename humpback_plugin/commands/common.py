"""What every ``humpback`` command shares: error handling, the client options, summaries.

Library code raises :class:`~humpback_plugin.core.errors.HumpbackError`; :class:`Command`
and :class:`Group` turn it into ``Error: <message>`` and the error's exit code, so no command
needs its own ``try``. An ``OSError`` (disk full, read-only folder) names its path and is
reported the same way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import click

from humpback_plugin.core.client import ClientConfig, load_api_key
from humpback_plugin.core.config import ClientSettings, RunConfig, default
from humpback_plugin.core.engine import ENGINES, Engine, engine_for
from humpback_plugin.core.errors import HumpbackError, UsageError


@contextlib.contextmanager
def user_errors(ctx: click.Context | None = None) -> Iterator[None]:
    """Turn the project's exceptions into click's, with the right exit code."""
    try:
        yield
    except UsageError as exc:
        raise click.UsageError(str(exc), ctx) from exc
    except HumpbackError as exc:
        error = click.ClickException(str(exc))
        error.exit_code = exc.exit_code
        raise error from exc
    except OSError as exc:
        raise click.ClickException(str(exc)) from exc


class Command(click.Command):
    def invoke(self, ctx: click.Context) -> Any:
        with user_errors(ctx):
            return super().invoke(ctx)


class Group(click.Group):
    """A command group whose commands (and sub-groups) report errors as one line."""

    command_class = Command

    def invoke(self, ctx: click.Context) -> Any:
        with user_errors(ctx):
            return super().invoke(ctx)


Group.group_class = Group


def command(name: str, **kwargs: Any) -> Callable[[Callable], Command]:
    return click.command(name, cls=Command, **kwargs)


def group(name: str, **kwargs: Any) -> Callable[[Callable], Group]:
    return click.group(name, cls=Group, **kwargs)


def split_names(value: str | None) -> list[str] | None:
    """``"a, b,c"`` -> ``["a", "b", "c"]``; None stays None."""
    if value is None:
        return None
    return [name.strip() for name in value.split(",") if name.strip()]


def options(*decorators: Callable) -> Callable[[Callable], Callable]:
    """Apply click option decorators in the order they are listed (top first)."""

    def apply(fn: Callable) -> Callable:
        for decorator in reversed(decorators):
            fn = decorator(fn)
        return fn

    return apply


# --- talking to servers --------------------------------------------------------------------

client_options = options(
    click.option(
        "--base-url",
        "base_urls",
        multiple=True,
        required=True,
        envvar="HUMPBACK_BASE_URL",
        help="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1. Repeat it for "
        "several servers of the same model (requests go to the least busy).",
    ),
    click.option("--model", required=True, help="Served model name, or a LoRA adapter's name."),
    click.option(
        "--api-key-file",
        type=click.Path(exists=True, dir_okay=False),
        help="File holding the API key (default: $HUMPBACK_API_KEY; never printed).",
    ),
    click.option(
        "--concurrency",
        type=click.IntRange(1),
        default=default(ClientSettings, "concurrency"),
        show_default=True,
        help="Requests in flight per server URL.",
    ),
    click.option(
        "--timeout",
        type=float,
        default=default(ClientSettings, "timeout_s"),
        show_default=True,
        help="Seconds per request.",
    ),
    click.option(
        "--retry-deadline",
        type=float,
        default=default(ClientSettings, "retry_deadline_s"),
        show_default=True,
        help="Give up (and stop, resumable) after retrying a server this many seconds.",
    ),
    click.option(
        "--work-dir",
        type=click.Path(file_okay=False),
        help="Resumable store of finished requests (default: <output>.parts/).",
    ),
    click.option("--no-preflight", is_flag=True, help="Skip the check that the server is up."),
    click.option(
        "--chat-template",
        type=click.Path(exists=True),
        help="The chat template MODEL was trained with: the trained output folder (Axolotl "
        "saves the tokenizer and template there), its Axolotl config, or a .jinja file. "
        "Before the first request the server's rendering of probe conversations is compared "
        "with it, token by token (vLLM's /tokenize).",
    ),
    click.option(
        "--skip-template-check",
        is_flag=True,
        default=not default(ClientSettings, "template_check"),
        help="Do not stop when the server's chat template differs from --chat-template.",
    ),
    click.option(
        "--model-revision",
        help="Part of every cache key with what the server reports of MODEL's weights: "
        "change it when other weights are served under the same name and path.",
    ),
    click.option("--quiet", "-q", is_flag=True, help="No progress bar."),
)


def client_config(
    base_urls: tuple[str, ...],
    model: str,
    api_key_file: str | None,
    concurrency: int,
    timeout: float,
    retry_deadline: float,
    chat_template: str | None = None,
    skip_template_check: bool = False,
    model_revision: str | None = None,
) -> ClientConfig:
    """The client options as a :class:`ClientConfig` (the key read from file or env)."""
    return ClientConfig(
        base_urls=list(base_urls),
        model=model,
        api_key=load_api_key(api_key_file),
        concurrency=concurrency,
        timeout_s=timeout,
        retry_deadline_s=retry_deadline,
        chat_template=chat_template,
        template_check=not skip_template_check,
        model_revision=model_revision,
    )


_CLIENT_OPTIONS = (
    "base_urls", "model", "api_key_file", "concurrency", "timeout", "retry_deadline",
    "chat_template", "skip_template_check", "model_revision",
)  # fmt: skip


def pop_client_config(kwargs: dict[str, Any]) -> ClientConfig:
    """Take the client options out of a command's keyword arguments."""
    return client_config(**{name: kwargs.pop(name) for name in _CLIENT_OPTIONS})


shard_option = click.option(
    "--shard",
    metavar="I/N",
    help="Process only shard I of N (by record id), e.g. 0/4 on the first of four machines; "
    "join the outputs with `humpback merge`. With a Ray cluster, --engine ray is simpler.",
)

ray_address_option = click.option(
    "--ray-address",
    help="The Ray cluster: auto (this node's), ray://HEAD:10001 (Ray Client). Default: "
    "$RAY_ADDRESS, else a local Ray instance for this command.",
)

engine_options = options(
    click.option(
        "--engine",
        type=click.Choice(sorted(ENGINES)),
        default=default(RunConfig, "engine"),
        show_default=True,
        help="local: requests from this process. ray: from Ray actors on a Ray cluster "
        "(pip install 'humpback-plugin[ray]'); this process still reads, resumes and writes.",
    ),
    ray_address_option,
    click.option(
        "--ray-actors",
        type=click.IntRange(1),
        help="Ray actors sending requests, sharing --concurrency per URL (default: one per "
        "--base-url).",
    ),
    click.option(
        "--client-processes",
        type=click.IntRange(1),
        default=1,
        show_default=True,
        help="With --engine local: processes of this machine sending requests, sharing "
        "--concurrency per URL. One process tops out at 2,500-4,000 requests/s (bench/"
        "bench_client.py); more help when a fast GPU server waits on the client.",
    ),
)


@contextlib.contextmanager
def opened_engine(
    engine: str,
    ray_address: str | None = None,
    ray_actors: int | None = None,
    workers: int | None = None,
    client_processes: int | None = None,
) -> Iterator[Engine]:
    """The engine the options name, released (a local Ray instance stopped, client
    processes ended) afterwards."""
    opened = engine_for(engine, ray_address, ray_actors, workers, client_processes)
    try:
        yield opened
    finally:
        opened.close()


# --- output --------------------------------------------------------------------------------


def print_summary(title: str, rows: list[tuple[str, Any]]) -> None:
    """A two-column table of what a stage did, on stderr."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    for name, value in rows:
        table.add_row(name, f"{value:,.2f}" if isinstance(value, float) else str(value))
    Console(stderr=True).print(table)


def parse_settings(values: tuple[str, ...], option: str, example: str) -> dict[str, Any]:
    """``KEY=VALUE`` pairs (values parsed as YAML) into a dict."""
    import yaml

    out: dict[str, Any] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"expected {example}, got {item!r}", param_hint=option)
        out[key.strip()] = yaml.safe_load(value)
    return out
