"""The import graph of the library and the experiments: no cycle, no module reaching into
another package's private (``_name``) objects (a name with an underscore is private to its
folder), and every config's mode resolves (cheap: no JAX
work, the graph is read from the source with ``ast``)."""

from __future__ import annotations

import ast
import glob
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("rkdsc_jax", "experiments")


def _modules() -> dict[str, str]:
    """module name → file, for every .py under the packages."""
    modules = {}
    for package in PACKAGES:
        for path in glob.glob(os.path.join(ROOT, package, "**", "*.py"), recursive=True):
            parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The repository module ``name`` refers to (itself, or the package holding it)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str, path: str):
    """(target module, imported names or None, alias → module) of every import in ``path``,
    at module level or inside functions (a lazy import closes a cycle all the same)."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    edges, aliases = [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _resolve(alias.name)
                if target:
                    edges.append((target, None))
                    if alias.asname:
                        aliases[alias.asname] = target
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                if full in MODULES:  # ``from pkg import module``
                    edges.append((full, None))
                    aliases[alias.asname or alias.name] = full
                elif _resolve(base):
                    edges.append((_resolve(base), alias.name))
    return edges, aliases, tree


def _package(module: str) -> str:
    return module if MODULES[module].endswith("__init__.py") else module.rpartition(".")[0]


def _foreign(module: str, target: str) -> bool:
    """A ``_name`` is private to its package (folder): modules of another package may not use it."""
    return target != module and _package(target) != _package(module)


def _graph():
    graph, private = {}, []
    for module, path in MODULES.items():
        edges, aliases, tree = _imports(module, path)
        graph[module] = {target for target, _ in edges if target != module}
        for target, name in edges:
            if name and name.startswith("_") and not name.startswith("__") and _foreign(module, target):
                private.append(f"{module} imports {name} from {target}")
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")
                    and _foreign(module, aliases[node.value.id])):
                private.append(f"{module} uses {aliases[node.value.id]}.{node.attr}")
    return graph, private


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return components


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert MODULES["experiments.common.layout"].endswith(os.path.join("common", "layout.py"))


def test_no_import_cycle():
    graph, _ = _graph()
    assert _cycles(graph) == []


def test_no_module_uses_another_packages_private_names():
    _, private = _graph()
    assert private == []


def test_the_experiment_layer_is_one_folder_per_study_on_a_shared_core():
    """Studies import the shared core and the library, never one another (paper A's pipeline
    may run the search mode of ``experiments.darts``, a study of its own, through its public API)."""
    graph, _ = _graph()
    studies = ("ltosc", "rkdsc", "darts")
    allowed = {("rkdsc", "darts")}
    for module, targets in graph.items():
        parts = module.split(".")
        if parts[0] == "experiments" and len(parts) > 1 and parts[1] == "common":
            assert not [t for t in targets if t.split(".")[1:2] and t.split(".")[1] in studies], module
        if parts[0] == "experiments" and len(parts) > 1 and parts[1] in studies:
            for target in targets:
                other = target.split(".")[1] if target.startswith("experiments.") and "." in target else None
                if other in studies and other != parts[1]:
                    assert (parts[1], other) in allowed, f"{module} imports {target}"


CONFIGS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "experiments", "configs", "*.py"))
                 if not p.endswith(("__init__.py", "common.py")))


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_names_a_mode_that_resolves(name):
    import importlib

    from experiments import main

    config = importlib.import_module(f"experiments.configs.{name}").get_config()
    assert config.mode in main.MODES
    target = main.MODES[config.mode]
    module, function = target(config) if callable(target) else target
    assert callable(getattr(importlib.import_module(module), function))
