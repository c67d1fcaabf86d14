"""``humpback plugins``: what is loaded, and every component that can be picked by name."""

from __future__ import annotations

import json

import click

from humpback_plugin.commands.common import command
from humpback_plugin.plugins import get_plugins, registered_components


@command("plugins")
@click.option(
    "--all",
    "show_all",
    is_flag=True,
    help="Include the built-in plugins, and list every component by kind.",
)
def plugins_command(show_all: bool) -> None:
    """List the loaded plugins and the hooks each implements.

    \b
    With --all, also every component a config or option can pick by name, by kind:
    corpus readers, segmenters, segment filters, seed loaders, instruction filters,
    scorers (--mode), selectors (--selector), export formats (--format) and prompt
    templates (--template).
    """
    plugins = get_plugins()
    if not show_all:
        click.echo(
            json.dumps(
                [p for p in plugins if not p["name"].startswith("humpback_plugin.")], indent=2
            )
        )
        return
    click.echo(json.dumps({"plugins": plugins, "components": registered_components()}, indent=2))
