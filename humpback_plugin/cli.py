"""The ``humpback`` command line.

Kept thin: each pipeline stage module adds its own command through the
``register_commands`` hook, exactly as a third-party plugin would.
"""

from __future__ import annotations

import json
import sys

import click

from humpback_plugin import __version__


class HumpbackGroup(click.Group):
    """List commands in pipeline order rather than alphabetically."""

    ORDER = (
        "run",
        "status",
        "seed",
        "segment",
        "augment",
        "curate",
        "export",
        "configs",
        "merge",
        "report",
        "server",
        "plugins",
    )

    def list_commands(self, ctx: click.Context) -> list[str]:
        names = super().list_commands(ctx)
        rank = {n: i for i, n in enumerate(self.ORDER)}
        return sorted(names, key=lambda n: (rank.get(n, len(rank)), n))


@click.group(cls=HumpbackGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="humpback")
def cli() -> None:
    """Instruction backtranslation (Humpback) with vLLM servers and Axolotl.

    \b
    The method (Li et al. 2023, arXiv 2308.06259):
      1. seed      human (instruction, response) pairs, e.g. oasst1 first turns
      2. segment   clean, header-delimited web segments from your corpus
      3. export    datasets + Axolotl configs: backward model (response -> instruction), M0
      4. augment   the backward model writes an instruction for every segment
      5. curate    the current model rates each pair 1-5; keep score >= k
      6. iterate   M1 = base + seed + A(1) re-rates -> A(2); M2 is Humpback
    `humpback run` does all of it with a resumable run directory.

    Models are served by a running vLLM OpenAI-compatible server (--base-url, key from
    $HUMPBACK_API_KEY), or by `humpback server start` for a local default.
    """


@cli.command(name="plugins")
@click.option("--all", "show_all", is_flag=True, help="Include the built-in plugins.")
def plugins_command(show_all: bool) -> None:
    """List the loaded plugins and the hooks each implements."""
    from humpback_plugin.plugins import get_plugins

    plugins = get_plugins()
    if not show_all:
        plugins = [p for p in plugins if not p["name"].startswith("humpback_plugin.")]
    click.echo(json.dumps(plugins, indent=2))


def _add_plugin_commands() -> None:
    from humpback_plugin.plugins import pm
    from humpback_plugin.server import server

    cli.add_command(server)
    pm.hook.register_commands(cli=cli)


_add_plugin_commands()


def main() -> None:
    """Console-script entry point: turn known errors into one clear line and exit 1."""
    from humpback_plugin.jsonl_io import InputError

    try:
        cli(standalone_mode=True)
    except InputError as exc:  # pragma: no cover - click exits before this in most paths
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
