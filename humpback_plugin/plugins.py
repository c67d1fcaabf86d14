"""The plugin manager: built-in plugins first, then third-party ones from entry points.

Each stage's ``hooks`` module is a built-in plugin that registers the stage's components
(readers, filters, scorers, ...). Set ``HUMPBACK_LOAD_PLUGINS`` to a comma-separated list
of distribution names to load only those third-party plugins (an empty string loads
none), as ``llm`` does with ``LLM_LOAD_PLUGINS``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from typing import Any

import pluggy

from humpback_plugin import hookspecs
from humpback_plugin.core.errors import UnknownComponent, UsageError
from humpback_plugin.core.prompts import PromptTemplate, builtin_templates, load_prompt

ENTRY_POINT_GROUP = "humpback"

# The built-in plugins: one per stage, registering that stage's components.
DEFAULT_PLUGINS = (
    "humpback_plugin.stages.seed.hooks",
    "humpback_plugin.stages.corpus.hooks",
    "humpback_plugin.stages.augment.hooks",
    "humpback_plugin.stages.curate.hooks",
    "humpback_plugin.stages.export.hooks",
)

# Registration hooks and the kind of component each registers (for listings and errors).
COMPONENT_KINDS = {
    "register_corpus_readers": "corpus reader",
    "register_extractors": "extractor",
    "register_segmenters": "segmenter",
    "register_segment_filters": "segment filter",
    "register_seed_loaders": "seed loader",
    "register_instruction_filters": "instruction filter",
    "register_scorers": "scorer",
    "register_selectors": "selector",
    "register_probe_kinds": "probe kind",
    "register_exporters": "export format",
    "register_prompt_templates": "prompt template",
}

pm = pluggy.PluginManager("humpback")
pm.add_hookspecs(hookspecs)


def _load_defaults() -> None:
    for name in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(name), name=name)


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


def pick(hook_name: str, name: str) -> Any:
    """One named component, or :class:`UnknownComponent` listing what is available."""
    available = components(hook_name)
    if name not in available:
        names = ", ".join(sorted(available)) or "none"
        raise UnknownComponent(f"unknown {COMPONENT_KINDS[hook_name]} {name!r}; available: {names}")
    return available[name]


def build(
    hook_name: str, names: list[str] | tuple[str, ...], options: dict[str, dict[str, Any]]
) -> list[tuple[str, Any]]:
    """Fresh instances of named component factories (filters keep per-run state), each
    called with its own options: ``[(name, factory(**options[name])), ...]``."""
    built = []
    for name in names:
        factory = pick(hook_name, name)
        try:
            built.append((name, factory(**dict(options.get(name) or {}))))
        except (TypeError, ValueError) as exc:
            raise UsageError(
                f"bad options for {COMPONENT_KINDS[hook_name]} {name!r}: {exc}"
            ) from exc
    return built


def load_template(name_or_path: str, required: tuple[str, ...] = ()) -> PromptTemplate:
    """A prompt template by path, by a name a plugin registered, or a built-in name."""
    return load_prompt(
        name_or_path, required=required, named=components("register_prompt_templates")
    )


def registered_components() -> dict[str, list[str]]:
    """Every selectable component name, by kind (for ``humpback plugins --all``)."""
    listing = {kind: sorted(components(hook)) for hook, kind in COMPONENT_KINDS.items()}
    templates = set(listing["prompt template"]) | set(builtin_templates())
    listing["prompt template"] = sorted(templates)
    return listing


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
