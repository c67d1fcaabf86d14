"""The export stage's built-in plugin: the dataset formats."""

from __future__ import annotations

from typing import Any

from humpback_plugin.hookspecs import hookimpl
from humpback_plugin.stages.export.formats import BUILTIN_EXPORTERS


@hookimpl
def register_exporters(register: Any) -> None:
    for name, exporter in BUILTIN_EXPORTERS.items():
        register(name, exporter)
