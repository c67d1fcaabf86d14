"""``axolotl humpback ...``: the humpback command line as an Axolotl subcommand.

Axolotl 0.19 builds its command line with ``PluginCommandGroup``, which adds every entry
point of the group ``axolotl.cli_commands`` as a lazily imported click command (a name
Axolotl already uses is ignored). Registered in pyproject.toml as::

    [project.entry-points."axolotl.cli_commands"]
    humpback = "humpback_plugin.axolotl.entry:humpback"

so ``axolotl humpback export ...``, ``axolotl humpback configs ...`` and every other
``humpback`` command work from the same environment as ``axolotl train``. Importing this
module does not import Axolotl.
"""

from __future__ import annotations

from humpback_plugin.cli import cli as humpback

__all__ = ["humpback"]
