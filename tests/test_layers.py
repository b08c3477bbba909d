"""The package's import graph, read from the source with ``ast``: no circle, and no import from a
lower layer to a higher one (STYLE.md: web -> service -> jobs -> store -> models -> analysis ->
engine -> specs/results). Imports inside functions count as much as those at the top of a module;
those under ``if TYPE_CHECKING:`` do not (they never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "backend" / "patchstudio"

# Bottom to top. A module's layer is that of the longest prefix listed here.
LAYERS: list[tuple[str, ...]] = [
    ("errors", "specs", "results", "settings", "models.prompts"),
    ("engine",),
    ("analysis",),
    ("models", "prompt_sets"),  # registry, training, default_model, hydra_report; prompt_sets: uploaded pairs, checked on a model
    ("store", "studies"),  # studies: the studies table's rows, on the run store
    ("jobs",),
    ("service", "model_manager", "live"),  # model_manager: the models a service loads and unloads while it runs; live: the estimate-first answer on top of submit
    ("web",),
    ("cli", ""),  # "": patchstudio/__init__.py, the notebook facade (lazily imports engine and models)
]

# What any layer may take from the package's root module: its version string.
ROOT_NAMES = {"__version__"}

# Imports that break the rules today, in files other helpers own; each is removed at merge.
KNOWN: dict[tuple[str, str], str] = {}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def resolve(name: str) -> str | None:
    """The package module that ``patchstudio.<name>`` names (a module, or the package holding an attribute)."""
    while name not in MODULES:
        if "." not in name:
            return "" if name in ("", "patchstudio") else None
        name = name.rsplit(".", 1)[0]
    return name


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(module: str) -> set[str]:
    """The package modules ``module`` imports (relative names resolved; the root only for more than its version)."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    is_package = MODULES[module].name == "__init__.py"
    here = module.split(".") if module else []
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "patchstudio" or alias.name.startswith("patchstudio."):
                    found = resolve(alias.name.removeprefix("patchstudio").lstrip("."))
                    if found is not None:
                        out.add(found)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here if is_package else here[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            elif node.module == "patchstudio" or (node.module or "").startswith("patchstudio."):
                prefix = node.module.removeprefix("patchstudio").lstrip(".")
            else:
                prefix = None
            if prefix is not None:
                for alias in node.names:
                    full = f"{prefix}.{alias.name}" if prefix else alias.name
                    if full in MODULES:
                        out.add(full)  # a submodule
                    elif prefix or alias.name not in ROOT_NAMES:
                        found = resolve(prefix)
                        if found is not None:
                            out.add(found)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    out.discard(module)
    return out


GRAPH = {m: imports(m) for m in MODULES}


def layer(module: str) -> int:
    if module == "":
        return len(LAYERS) - 1
    found = [(len(prefix), i) for i, prefixes in enumerate(LAYERS) for prefix in prefixes
             if prefix and (module == prefix or module.startswith(prefix + "."))]
    assert found, f"patchstudio.{module} is in no layer: add it to LAYERS"
    return max(found)[1]


def test_the_graph_sees_the_package():
    assert {"engine.run", "analysis.views", "service", "web.app", "cli", ""} <= set(MODULES)
    assert "engine.run" in GRAPH["service"] and "service" in GRAPH["web.deps"]  # top-level imports are read
    assert "engine.run" in GRAPH[""]  # and those inside functions (patchstudio.run's lazy import)


def test_every_module_has_a_layer():
    for module in MODULES:
        layer(module)


def test_no_import_goes_up_a_layer():
    upward = sorted(
        f"patchstudio.{m or '__init__'} (layer {layer(m)}) imports patchstudio.{d or '__init__'} (layer {layer(d)})"
        for m, deps in GRAPH.items() for d in deps
        if layer(d) > layer(m) and (m, d) not in KNOWN
    )
    assert upward == []


def test_the_known_exceptions_still_exist():
    """An exception that is fixed must leave the list, so the list stays true."""
    for (m, d), why in KNOWN.items():
        assert d in GRAPH[m], f"patchstudio.{m} no longer imports patchstudio.{d}: drop it from KNOWN ({why})"


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle, as the list of modules around it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state:
                found = walk(dep)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = walk(node)
            if found:
                return found
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_circle():
    graph = {m: {d for d in deps if (m, d) not in KNOWN} for m, deps in GRAPH.items()}
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(f"patchstudio.{m}" for m in cycle)
