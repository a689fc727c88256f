"""The package's import graph has no circle. Every import counts, at module level or inside a function (a deferred
import is still a dependency); only imports under ``if TYPE_CHECKING:`` are exempt. Built from the source by AST,
so it sees what a runtime check of ``sys.modules`` would miss."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "lora_spec"


def _module(path: Path, pkg: Path = PKG) -> str:
    parts = list(path.relative_to(pkg.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            t = node.test
            if (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
                    isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"):
                skip.update(id(d) for c in node.body for d in ast.walk(c))
    return skip


def import_graph(pkg: Path = PKG) -> dict[str, set[str]]:
    """``{module: modules of the package it imports}`` (``from .x import name`` counts ``x.name`` when that is a
    module, else ``x``)."""
    mods = {_module(p, pkg): p for p in pkg.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        skip = _type_checking_nodes(tree)
        here = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(here[:len(here) - node.level + 1] + ([node.module] if node.module else [])) \
                    if node.level else (node.module or "")
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t and t != mod:
                    graph[mod].add(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    x = stack.pop()
                    on.discard(x)
                    comp.append(x)
                    if x == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_the_checker_finds_deferred_and_relative_imports(tmp_path):
    pkg = tmp_path / "lora_spec"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from .sub.b import g\n")
    (pkg / "sub" / "b.py").write_text("from ..c import h\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import f\n"
                              "import lora_spec.a\n")
    (pkg / "d.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import f\n")
    g = import_graph(pkg)
    assert g["lora_spec.a"] == {"lora_spec.sub.b"} and g["lora_spec.sub.b"] == {"lora_spec.c"}
    assert cycles(g) == [["lora_spec.a", "lora_spec.c", "lora_spec.sub.b"]]
    assert g["lora_spec.d"] == set()  # TYPE_CHECKING imports are exempt


def test_no_import_circles():
    found = cycles(import_graph())
    assert not found, "import circles: " + "; ".join(" <-> ".join(c) for c in found)


def test_no_mid_file_imports_marked_e402():
    hits = [f"{p.relative_to(PKG.parent)}:{i}" for p in PKG.rglob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1) if "noqa: E402" in line]
    assert not hits, f"imports below code (import them at the top of the module): {hits}"


def test_no_private_name_is_imported_from_another_module():
    """A name one module shares with another is public (no leading underscore): ``from .x import _y`` across
    modules hides a dependency the owner does not know it has."""
    hits = []
    for p in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom):
                hits += [f"{p.relative_to(PKG.parent)}:{node.lineno} {a.name}" for a in node.names
                         if a.name.startswith("_") and not a.name.startswith("__")]
    assert not hits, f"private names imported across modules: {hits}"


def _top_level_imports(pkg: Path = PKG) -> dict[str, set[str]]:
    """``{module: what it imports at module level}``: package modules and the top package of anything else."""
    mods = {_module(p, pkg): p for p in pkg.rglob("*.py")}
    out: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        here = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
        for node in tree.body:
            out[mod].update(_targets(node, here, mods))
    return out


def _targets(node: ast.AST, here: list[str], mods: dict) -> set[str]:
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
        base = ".".join(here[:len(here) - node.level + 1] + ([node.module] if node.module else [])) \
            if node.level else (node.module or "")
        names = [base] + [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in mods]
    else:
        return set()
    out = set()
    for t in names:
        if t.split(".")[0] != PKG.name:
            out.add(t.split(".")[0])
            continue
        while t and t not in mods:
            t = t.rpartition(".")[0]
        if t:
            out.add(t)
            out.update(".".join(t.split(".")[:i]) for i in range(1, t.count(".") + 1))  # its packages load first
    return out


def _costly(target: str, top: dict[str, set[str]], seen: set[str] | None = None) -> bool:
    """Importing ``target`` loads a third-party library (anything but the standard library and click, which every
    command loads anyway): ``target`` is one, or a package module whose module-level imports reach one."""
    import sys

    if target not in top:
        return target not in sys.stdlib_module_names and target != "click"
    seen = set() if seen is None else seen
    if target in seen:
        return False
    seen.add(target)
    return any(_costly(t, top, seen) for t in top[target])


def _catches_import_error(node: ast.AST) -> bool:
    """A ``try`` that guards an optional dependency: one of its handlers catches ImportError or
    ModuleNotFoundError (a ``try`` for other errors exempts nothing)."""
    if not isinstance(node, ast.Try):
        return False
    names = set()
    for h in node.handlers:
        for t in (h.type.elts if isinstance(h.type, ast.Tuple) else [h.type]) if h.type is not None else []:
            names.add(ast.unparse(t).rsplit(".", 1)[-1])
    return bool(names & {"ImportError", "ModuleNotFoundError"})


def deferred_imports_without_reason(pkg: Path = PKG) -> list[str]:
    """Imports inside functions that ``lorasp --help`` and the light commands do not need deferred: a standard
    library module, or a package module whose module-level imports load no third-party library. Imports in a
    ``try`` that catches ImportError (an optional dependency) and under ``if TYPE_CHECKING:`` are exempt."""
    top = _top_level_imports(pkg)
    mods = {_module(p, pkg): p for p in pkg.rglob("*.py")}
    bad = []
    for mod, path in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        here = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
        body = {id(n) for n in tree.body}
        exempt = _type_checking_nodes(tree) | {id(d) for n in ast.walk(tree) if _catches_import_error(n)
                                                for c in n.body for d in ast.walk(c)}
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)) or id(node) in body or id(node) in exempt:
                continue
            targets = _targets(node, here, mods) - {PKG.name}
            if not any(_costly(t, top) for t in targets):
                bad.append(f"{path.relative_to(pkg.parent)}:{node.lineno} {ast.unparse(node)}")
    return bad


def test_imports_inside_functions_only_defer_a_library():
    """An import inside a function is there to keep ``lorasp --help`` and the light commands from loading torch,
    transformers and the like; every other import is at the top of its module."""
    bad = deferred_imports_without_reason()
    assert not bad, "imports inside functions that load no third-party library (move them to the top):\n" + \
        "\n".join(bad)
