"""The import graph of kerascls reads top down: no cycles, no borrowing of private names.

Every ``import`` and ``from ... import`` statement in a kerascls module counts, at module level
or inside a function (a lazy import still ties the two modules together).
"""

from __future__ import annotations

import ast
from pathlib import Path

import kerascls

ROOT = Path(kerascls.__file__).parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in ROOT.rglob("*.py")}


def _resolve(name: str) -> str | None:
    """The kerascls module a dotted name refers to (the longest module prefix)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in MODULES:
            return candidate
        parts.pop()
    return None


def _imports(module: str) -> list[tuple[str, list[str], int]]:
    """``(target module, imported names, line)`` for every kerascls import in ``module``."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _resolve(alias.name)
                if target:
                    found.append((target, [], node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if not source.startswith("kerascls"):
                continue
            for alias in node.names:
                sub = _resolve(f"{source}.{alias.name}")
                if sub == f"{source}.{alias.name}":
                    found.append((sub, [], node.lineno))
                else:
                    target = _resolve(source)
                    if target:
                        found.append((target, [alias.name], node.lineno))
    return found


def import_graph() -> dict[str, set[str]]:
    graph = {m: set() for m in MODULES}
    for module in MODULES:
        for target, _, _ in _imports(module):
            if target != module:
                graph[module].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of modules, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_find_cycle_sees_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_among_kerascls_modules():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_module_imports_another_modules_private_names():
    borrowed = []
    for module in MODULES:
        for target, names, line in _imports(module):
            for name in names:
                dunder = name.startswith("__") and name.endswith("__")
                if name.startswith("_") and not dunder and target != module:
                    borrowed.append(f"{module}:{line} imports {target}.{name}")
    assert not borrowed, "\n".join(borrowed)


def test_configuration_imports_no_stage():
    """The configuration names the choices (kerascls.choices); it imports no code that acts."""
    stages = ("kerascls.distribute", "kerascls.train", "kerascls.engines", "kerascls.training",
              "kerascls.export", "kerascls.evaluate", "kerascls.data", "kerascls.models")
    targets = {t for t, _, _ in _imports("kerascls.config")}
    assert not {t for t in targets if t.startswith(stages)}, targets


def test_only_the_tfp_engine_imports_tfp_and_tf_keras():
    importers = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n.split(".")[0] in ("tensorflow_probability", "tf_keras") for n in names):
                importers.append(module)
    assert set(importers) == {"kerascls.engines.tfp"}, importers
