"""The package's shape (issue 39): no import cycles between pcsym modules, every subpackage imports only
from the parts its ``__init__`` docstring names, and imports sit inside functions only where import time
needs them (``pcsym --help`` without numpy, a cold ``classify`` without torch).

Read from the source (``ast``), so imports inside functions count too: they used to hide cycles.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pcsym"

#: the parts of pcsym, bottom to top (docs/architecture.md); "foundations" are the modules directly in pcsym/
PARTS = ("foundations", "geometry", "data", "models", "inference", "training", "cli")

#: the only imports of pcsym modules inside functions outside the CLI, each kept there for import time
LAZY = {
    ("pcsym.config", "pcsym.models.groups"): "`pcsym --help` imports config; groups imports numpy",
    ("pcsym.models.checkpoint", "pcsym.models.classifier"): "classify resolves shipped names without torch",
    ("pcsym.models.checkpoint", "pcsym.models.ensemble"): "the same: an ensemble is built with torch",
    ("pcsym.inference.predict", "pcsym.inference.export"): "classify runs numpy exports without torch",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def part_of(module: str) -> str:
    parts = module.split(".")
    if module == "pcsym.__main__":
        return "cli"
    return parts[1] if len(parts) > 1 and parts[1] in PARTS else "foundations"


def imports(known: dict[str, Path]) -> list[tuple[str, str, bool]]:
    """Every (importer, imported pcsym module, inside a function?) of the package."""
    edges = []
    for name, path in known.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text())
        lazy = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                for n in ast.walk(f)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in known else source for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in known:  # `import pcsym.x.y` or an attribute: its module
                    target = target.rpartition(".")[0]
                if target.startswith("pcsym") and target != name:
                    edges.append((name, target, id(node) in lazy))
    return edges


def allowed_parts() -> dict[str, set[str]]:
    """What each part may import, from the "Imports from:" line of its ``__init__`` docstring."""
    allowed = {}
    for part in PARTS:
        init = PACKAGE / ("__init__.py" if part == "foundations" else f"{part}/__init__.py")
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        m = re.search(r"^Imports from: (.*)\.$", doc, re.M)
        assert m, f"{init.relative_to(PACKAGE.parent)}: its docstring has no 'Imports from: ...' line"
        names = {w.strip() for w in m.group(1).split(",")}
        assert names <= set(PARTS) | {"nothing"}, f"{init}: unknown parts {names - set(PARTS)}"
        allowed[part] = (names - {"nothing"}) | {part}
    return allowed


def find_cycle(edges) -> list[str] | None:
    graph: dict[str, set[str]] = {}
    for a, b, _ in edges:
        graph.setdefault(a, set()).add(b)
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycles_between_pcsym_modules():
    cycle = find_cycle(imports(modules()))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle_hidden_in_a_function():
    edges = [("pcsym.a", "pcsym.b", False), ("pcsym.b", "pcsym.c", False), ("pcsym.c", "pcsym.a", True)]
    assert find_cycle(edges) == ["pcsym.a", "pcsym.b", "pcsym.c", "pcsym.a"]
    assert find_cycle(edges[:2]) is None


def test_every_part_imports_only_what_its_docstring_allows():
    allowed = allowed_parts()
    order = {part: i for i, part in enumerate(PARTS)}
    for part, names in allowed.items():  # the parts form layers: each imports only parts below it
        assert all(order[n] <= order[part] for n in names), f"{part} may import a part above it: {names}"
    wrong = [f"{a} imports {b}" for a, b, lazy in imports(modules())
             if part_of(b) not in allowed[part_of(a)] and not (lazy and (a, b) in LAZY)]
    assert not wrong, "\n".join(wrong)


def test_imports_inside_functions_only_where_import_time_needs_them():
    lazy = {(a, b) for a, b, inside in imports(modules()) if inside and part_of(a) != "cli"}
    assert lazy <= set(LAZY), f"move these imports to the top of their modules: {sorted(lazy - set(LAZY))}"
    assert set(LAZY) <= lazy, f"no longer imported inside a function (drop from LAZY): {sorted(set(LAZY) - lazy)}"


def test_every_subpackage_says_what_lives_there():
    for init in PACKAGE.rglob("__init__.py"):
        if init.parent.name == "native":  # the kernels' loader itself, documented at length
            continue
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert len(doc.split()) >= 15, f"{init.relative_to(PACKAGE.parent)}: say what lives in this package"
