"""The package's layout rules, read from the source with ``ast``: no import cycle between modules, no library module
importing the command line, no function-local import of the package's own modules (the usual way to dodge a cycle),
one callback class per file in ``callbacks/``, and ``tests/`` mirroring the package."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

PACKAGE = REPO / "agent_lightning"
ROOT = "agent_lightning"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, ast.Module]:
    return {module_name(p): ast.parse(p.read_text(encoding="utf-8")) for p in sorted(PACKAGE.rglob("*.py"))}


def _imported(node: ast.AST, known: set[str]) -> list[str]:
    """The package modules an import statement loads (``from a.b import c`` loads ``a.b.c`` when that is a module)."""
    names: list[str] = []
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    return [name for name in names if name in known]


def import_graph(trees: dict[str, ast.Module], top_level_only: bool = True) -> dict[str, set[str]]:
    """Module -> the package modules it imports at module level (and, importing ``a.b.c``, the packages ``a.b``
    whose ``__init__`` that runs, except its own parents, which are already being imported)."""
    known = set(trees)
    graph: dict[str, set[str]] = {}
    for name, tree in trees.items():
        statements = tree.body if top_level_only else list(ast.walk(tree))
        edges: set[str] = set()
        for node in statements:
            for target in _imported(node, known):
                parts = target.split(".")
                for depth in range(2, len(parts) + 1):
                    parent = ".".join(parts[:depth])
                    if parent in known and not (name == parent or name.startswith(parent + ".")):
                        edges.add(parent)
                if target != name:
                    edges.add(target)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a list of modules, or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle_and_accepts_a_tree():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_graph_counts_package_inits_and_from_imports_of_submodules():
    trees = {
        "agent_lightning.x": ast.parse("from agent_lightning.y import helper"),
        "agent_lightning.y": ast.parse(""),
        "agent_lightning.y.helper": ast.parse("from agent_lightning import x"),
        "agent_lightning": ast.parse(""),
    }
    graph = import_graph(trees)
    assert graph["agent_lightning.x"] == {"agent_lightning.y", "agent_lightning.y.helper"}
    assert find_cycle(graph) is not None  # x -> y.helper -> x


def test_no_import_cycle_between_modules_of_the_package():
    graph = import_graph(modules())
    assert len(graph) > 40  # the whole package was read
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_no_library_module_imports_the_command_line():
    graph = import_graph(modules(), top_level_only=False)
    offenders = {
        name: sorted(t for t in targets if t == f"{ROOT}.cli" or t.startswith(f"{ROOT}.cli."))
        for name, targets in graph.items()
        if not (name == f"{ROOT}.cli" or name.startswith(f"{ROOT}.cli.") or name == f"{ROOT}.__main__")
    }
    assert not {k: v for k, v in offenders.items() if v}


def test_no_function_local_import_of_the_package():
    local = []
    for name, tree in modules().items():
        for function in ast.walk(tree):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(function):
                module = node.module if isinstance(node, ast.ImportFrom) else None
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [module or ""]
                if isinstance(node, (ast.Import, ast.ImportFrom)) and any(n.startswith(ROOT) for n in names):
                    local.append(f"{name}.{function.name}: {ast.unparse(node)}")
    assert not local, local


def test_callbacks_hold_one_callback_class_per_file():
    for path in sorted((PACKAGE / "callbacks").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        classes = [node.name for node in tree.body if isinstance(node, ast.ClassDef)]
        callbacks = [c for c in classes if not c.endswith(("Measurement", "Error"))]
        assert len(callbacks) <= 1, f"{path.name} defines {callbacks}"


def test_every_technique_package_works_without_lightning_callbacks():
    graph = import_graph(modules(), top_level_only=False)
    for technique in ("pruning", "quantization", "distillation", "deployment"):
        prefix = f"{ROOT}.{technique}"
        for name, targets in graph.items():
            if name == prefix or name.startswith(prefix + "."):
                reaching = sorted(t for t in targets if t.startswith(f"{ROOT}.callbacks"))
                assert not reaching, f"{name} imports {reaching}"


def test_tests_mirror_the_package():
    for folder in ("pruning", "quantization", "distillation", "deployment", "cli", "callbacks", "datamodules"):
        assert (PACKAGE / folder / "__init__.py").is_file(), folder
        assert list((REPO / "tests" / folder).glob("test_*.py")), f"tests/{folder} has no tests"
