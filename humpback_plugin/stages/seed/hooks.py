"""The seed stage's built-in plugin: the oasst1 and generic-pairs loaders."""

from __future__ import annotations

from typing import Any

from humpback_plugin.hookspecs import hookimpl
from humpback_plugin.stages.seed.loaders import BUILTIN_LOADERS


@hookimpl
def register_seed_loaders(register: Any) -> None:
    for name, loader in BUILTIN_LOADERS.items():
        register(name, loader)
