"""The ``humpback`` command line: a thin group over the commands in ``commands/``.

Built-in commands are imported only when used (``humpback --help`` imports none of the
stages), listed in pipeline order; third-party plugins add theirs through the
``register_commands`` hook.
"""

from __future__ import annotations

import importlib

import click

from humpback_plugin import __version__
from humpback_plugin.commands.common import Group
from humpback_plugin.plugins import pm

# name -> "module:attribute", in the order `humpback --help` lists them.
BUILTIN_COMMANDS = {
    "run": "humpback_plugin.commands.run:run_command",
    "status": "humpback_plugin.commands.run:status_command",
    "serve-command": "humpback_plugin.commands.serve_command:serve_command_command",
    "seed": "humpback_plugin.commands.seed:seed_command",
    "segment": "humpback_plugin.commands.segment:segment_command",
    "augment": "humpback_plugin.commands.augment:augment_command",
    "curate": "humpback_plugin.commands.curate:curate_command",
    "export": "humpback_plugin.commands.export:export_command",
    "configs": "humpback_plugin.commands.configs:configs_command",
    "merge": "humpback_plugin.commands.merge:merge_command",
    "eval": "humpback_plugin.commands.eval:eval_group",
    "report": "humpback_plugin.commands.report:report_command",
    "server": "humpback_plugin.commands.server:server",
    "plugins": "humpback_plugin.commands.plugins:plugins_command",
}


class HumpbackGroup(Group):
    """Loads built-in commands on first use; plugins' commands are added eagerly."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        extra = sorted(set(super().list_commands(ctx)) - set(BUILTIN_COMMANDS))
        return [*BUILTIN_COMMANDS, *extra]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.commands or name not in BUILTIN_COMMANDS:
            return super().get_command(ctx, name)
        module, _, attribute = BUILTIN_COMMANDS[name].partition(":")
        found = getattr(importlib.import_module(module), attribute)
        self.add_command(found, name)
        return found


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
      7. eval      M0, M1, M2: win rates against a reference and M0, lm-eval accuracy
    `humpback run` does all of it with a resumable run directory.

    Models are served by a running vLLM OpenAI-compatible server (--base-url, key from
    $HUMPBACK_API_KEY), or by `humpback server start` for a local default.
    """


pm.hook.register_commands(cli=cli)


def main() -> None:
    """Console-script entry point."""
    cli()
