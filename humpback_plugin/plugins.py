"""The plugin manager: built-in plugins first, then third-party ones from entry points.

Set ``HUMPBACK_LOAD_PLUGINS`` to a comma-separated list of distribution names to load
only those third-party plugins (an empty string loads none), as ``llm`` does with
``LLM_LOAD_PLUGINS``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from typing import Any

import pluggy

from humpback_plugin import hookspecs

ENTRY_POINT_GROUP = "humpback"

# Each module registers one stage's built-in components.
DEFAULT_PLUGINS = (
    "humpback_plugin.corpus",
    "humpback_plugin.segment_filters",
    "humpback_plugin.seed",
    "humpback_plugin.augment",
    "humpback_plugin.instruction_filters",
    "humpback_plugin.curate",
    "humpback_plugin.export",
    "humpback_plugin.pipeline",
    "humpback_plugin.sharding",
    "humpback_plugin.report",
)

pm = pluggy.PluginManager("humpback")
pm.add_hookspecs(hookspecs)


def _load_defaults() -> None:
    for name in DEFAULT_PLUGINS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            # A stage module not written yet must not break the others.
            if exc.name == name:
                continue
            raise
        pm.register(module, name=name)


def _load_entry_points() -> None:
    restrict = os.environ.get("HUMPBACK_LOAD_PLUGINS")
    if restrict is None:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        return
    wanted = {name.strip() for name in restrict.split(",") if name.strip()}
    for dist in importlib.metadata.distributions():
        if dist.metadata["Name"] not in wanted:
            continue
        for ep in dist.entry_points:
            if ep.group == ENTRY_POINT_GROUP and pm.get_plugin(ep.name) is None:
                pm.register(ep.load(), name=ep.name)


if not getattr(pm, "_humpback_loaded", False):
    _load_defaults()
    _load_entry_points()
    pm._humpback_loaded = True  # type: ignore[attr-defined]


def components(hook_name: str) -> dict[str, Any]:
    """Collect what every plugin registers through ``hook_name``, by name.

    pluggy calls the most recently registered plugin first, so the first registration of a
    name wins: third-party plugins (loaded after the built-ins) override built-ins.
    """
    found: dict[str, Any] = {}

    def register(name: str, component: Any) -> None:
        found.setdefault(name, component)

    getattr(pm.hook, hook_name)(register=register)
    return found


def pick(hook_name: str, name: str, kind: str) -> Any:
    """One named component, or a clear error listing what is available."""
    available = components(hook_name)
    if name not in available:
        names = ", ".join(sorted(available)) or "none"
        raise KeyError(f"unknown {kind} {name!r}; available: {names}")
    return available[name]


def get_plugins() -> list[dict[str, Any]]:
    """What is loaded, with the hooks each plugin implements (for ``humpback plugins``)."""
    out = []
    for plugin in pm.get_plugins():
        name = pm.get_name(plugin) or repr(plugin)
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        info: dict[str, Any] = {"name": name, "hooks": hooks}
        for loaded, dist in pm.list_plugin_distinfo():
            if loaded is plugin:
                info["distribution"] = dist.project_name
                info["version"] = dist.version
        out.append(info)
    return sorted(out, key=lambda i: (i["name"].startswith("humpback_plugin."), i["name"]))
