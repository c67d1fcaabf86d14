"""The layout's rules, checked on the source: what may import what.

core/      records, IO, store, client, runner, config, layout: imports no other layer
stages/    one folder per stage; imports core, plugins and hookspecs, never another stage
axolotl/, vllm/, run/   integrations and orchestration on top of core and stages
commands/, cli.py        the only modules that import click
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "humpback_plugin"
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "_convert_gguf.py")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, at top level?) for every import in the file, functions included."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
            # "from pkg import module" imports the module; "from module import name" the module
            found += [(n, id(node) in top) for n in names] + [(node.module, id(node) in top)]
    return found


GRAPH = {
    module_name(p): {m for m, _ in imports(p) if m.startswith("humpback_plugin")} for p in MODULES
}
KNOWN = set(GRAPH)


def internal(names: set[str]) -> set[str]:
    return {n for n in names if n in KNOWN}


def test_no_import_cycles():
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        stack.append(name)
        for dep in sorted(internal(GRAPH[name])):
            # a module's own packages are imported before it anyway: not a cycle of code
            if dep == name or name.startswith(dep + "."):
                continue
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep) :] + [dep]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[name] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name)


def test_no_project_import_hidden_in_a_function():
    hidden = [
        f"{module_name(p)} imports {m} inside a function"
        for p in MODULES
        for m, top in imports(p)
        if m.startswith("humpback_plugin") and not top
    ]
    assert hidden == []


def test_click_only_at_the_edge():
    using = sorted(
        module_name(p) for p in MODULES if any(m.split(".")[0] == "click" for m, _ in imports(p))
    )
    assert all(
        m == "humpback_plugin.cli" or m.startswith("humpback_plugin.commands.") for m in using
    )
    assert "humpback_plugin.commands.common" in using


@pytest.mark.parametrize("layer", ["core"])
def test_core_imports_no_other_layer(layer):
    for name, deps in GRAPH.items():
        if name.startswith(f"humpback_plugin.{layer}."):
            outside = {d for d in internal(deps) if not d.startswith("humpback_plugin.core")}
            assert outside - {"humpback_plugin"} == set(), name


def test_stages_sit_side_by_side():
    for name, deps in GRAPH.items():
        if not name.startswith("humpback_plugin.stages."):
            continue
        own = ".".join(name.split(".")[:3])
        for dep in internal(deps):
            if dep.startswith("humpback_plugin.stages.") and dep != "humpback_plugin.stages":
                assert dep.startswith(own), f"{name} imports another stage: {dep}"
            assert not dep.startswith(
                ("humpback_plugin.run", "humpback_plugin.commands", "humpback_plugin.cli")
            ), f"{name} imports {dep}"


def test_stage_hooks_modules_do_not_import_the_plugin_manager():
    # plugins.py imports every stage's hooks module: importing it back would be a cycle
    for name, deps in GRAPH.items():
        if name.endswith(".hooks"):
            assert "humpback_plugin.plugins" not in deps, name


def test_no_module_over_500_lines():
    long = {module_name(p): n for p in MODULES if (n := len(p.read_text().splitlines())) > 500}
    assert long == {}
