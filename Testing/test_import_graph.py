"""The ``x2ct`` package's imports run one way: no module imports, directly or through others, itself.

The graph is built from the package's own source with :mod:`ast`, so it sees every import whether or
not it runs: top-level ones, those inside functions (deferred imports) and those under
``if TYPE_CHECKING:``. Each ``import a.b`` / ``from a.b import c`` / ``from ..b import c`` is resolved
to a module of the package: ``from pkg import name`` counts as an import of ``pkg.name`` when that is a
module, else of ``pkg`` (its ``__init__``). Imports from outside the package are ignored, except that
the package must never import Slicer, Qt, CTK or VTK (the Slicer module is the only GUI glue).
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set, Tuple

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "X2CTTraining" / "x2ct"

GUI_MODULES = {"slicer", "qt", "ctk", "vtk", "vtkmodules", "PythonQt", "DICOMLib", "mrml"}
"""Top-level names of Slicer's Python world, which the headless package must not import."""


def package_modules(root: Path) -> Dict[str, Path]:
    """Dotted module name -> file of every ``.py`` of the package at ``root`` (``pkg/__init__.py`` is ``pkg``)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = (root.name, *path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _imports(tree: ast.AST, module: str, is_package: bool) -> Iterator[Tuple[str, int]]:
    """(absolute dotted name, line) of every import in ``tree``; ``from X import n`` yields ``X.n``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join([*base, node.module] if node.module else base)
            else:
                prefix = node.module or ""
            for alias in node.names:
                yield f"{prefix}.{alias.name}", node.lineno


def _resolve(name: str, modules: Dict[str, Path]) -> Optional[str]:
    """The package module that an imported dotted name lands in (the longest prefix that is a module)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def _packages_run_first(target: str, module: str, modules: Dict[str, Path]) -> Set[str]:
    """The packages whose ``__init__`` Python runs before ``target`` when ``module`` imports it: every package
    above ``target`` that does not also hold ``module`` (those are already being imported)."""
    parts = target.split(".")
    above = {".".join(parts[:end]) for end in range(1, len(parts))}
    return {p for p in above if p in modules and p != module and not module.startswith(p + ".")}


def import_graph(root: Path) -> Tuple[Dict[str, Set[str]], List[Tuple[str, int, str]]]:
    """(module -> the package modules it imports, [(module, line, name) of every Slicer/Qt/CTK/VTK import])."""
    modules = package_modules(root)
    graph: Dict[str, Set[str]] = {}
    gui: List[Tuple[str, int, str]] = []
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        edges = set()
        for name, line in _imports(tree, module, path.name == "__init__.py"):
            if name.split(".")[0] in GUI_MODULES:
                gui.append((module, line, name))
            target = _resolve(name, modules)
            if target is not None and target != module:
                edges.add(target)
                edges.update(_packages_run_first(target, module, modules))
        graph[module] = edges
    return graph, gui


def find_cycle(graph: Dict[str, Set[str]]) -> Optional[List[str]]:
    """One import cycle as a path ``[a, b, ..., a]``, or None (depth-first search, white/grey/black)."""
    state: Dict[str, int] = {}  # 1 = on the current path, 2 = finished
    path: List[str] = []

    def visit(node: str) -> Optional[List[str]]:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


def test_x2ct_has_no_import_cycle():
    graph, _ = import_graph(PACKAGE_DIR)
    assert "x2ct.inference.predict" in graph and graph["x2ct.cli"], "the graph builder found no modules or imports"
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_x2ct_never_imports_slicer_qt_ctk_or_vtk():
    _, gui = import_graph(PACKAGE_DIR)
    assert gui == [], "\n".join(f"{module} line {line}: imports {name}" for module, line, name in gui)


def test_the_checker_sees_deferred_type_checking_and_relative_imports(tmp_path: Path):
    """A cycle made only of an import inside a function and one under TYPE_CHECKING is found, with its path."""
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from .sub.b import g\n")
    (package / "sub" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..a import f\nimport vtk\n"
    )
    (package / "c.py").write_text("from pkg.sub import b\nfrom . import a\n")
    graph, gui = import_graph(package)
    assert graph["pkg.c"] == {"pkg.sub.b", "pkg.sub", "pkg.a"}  # importing pkg.sub.b runs pkg/sub/__init__.py
    assert find_cycle(graph) == ["pkg.a", "pkg.sub.b", "pkg.a"]
    assert gui == [("pkg.sub.b", 4, "vtk")]
    (package / "sub" / "b.py").write_text("import os\n")  # the cycle broken: a -> b only
    assert find_cycle(import_graph(package)[0]) is None


def test_the_checker_sees_a_cycle_through_a_package_init(tmp_path: Path):
    """Importing ``pkg.inference.pre`` runs ``pkg/inference/__init__.py`` first; when that imports a module that
    imports the importer back, Python fails with a partially initialised module: the checker must see it."""
    package = tmp_path / "pkg"
    for folder in ("inference", "data"):
        (package / folder).mkdir(parents=True)
        (package / folder / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "inference" / "__init__.py").write_text("from .batch import run\n")
    (package / "inference" / "batch.py").write_text("from ..data.folder import Case\n")
    (package / "inference" / "pre.py").write_text("")
    (package / "data" / "folder.py").write_text("from ..inference.pre import prepare\n")
    cycle = find_cycle(import_graph(package)[0])
    assert cycle is not None and {"pkg.inference", "pkg.inference.batch", "pkg.data.folder"} <= set(cycle)
    (package / "inference" / "__init__.py").write_text("")  # the package no longer imports batch: no cycle
    assert find_cycle(import_graph(package)[0]) is None
