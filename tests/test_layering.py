"""The package's layering, read from the source with ``ast`` (docs/architecture.md, STYLE.md).

Every import of a medseg module counts, at the top of a file or inside a function alike
(``if TYPE_CHECKING:`` imports count for the layer and private-name rules, not for cycles: they
never run). Each rule is checked per top-level package, so a failure names the package that
breaks it and the offending imports (``module:line -> module``).

* (a) no module imports a private name (``_name``) from another medseg module;
* (b) no import cycle between medseg modules (strongly connected components of the import
  graph). ``from medseg.pkg import name`` is an edge to the submodule ``medseg.pkg.name`` when
  there is one and to the package's ``__init__`` otherwise; importing ``medseg.pkg.mod`` is an
  edge to ``mod`` only (not to ``medseg.pkg``, whose ``__init__`` Python runs first), so a
  package ``__init__`` that re-exports its own submodules is not a cycle, while a submodule that
  imports names back from that ``__init__`` is;
* (c) the lower layers never import the top of the stack: modules in ``io``, ``data``,
  ``transforms``, ``physics``, ``layers``, ``networks``, ``losses`` and ``metrics`` import no
  module of the ``training`` layer or above (``training``, the task modules, ``engine``,
  ``model_folder``, ``workflows``, ``cli``). The output types (``medseg.tasks``,
  ``medseg.tasks.outputs``) sit at the bottom beside ``errors``.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

import medseg

PACKAGE_ROOT = Path(medseg.__file__).resolve().parent

#: Layer of each top-level part of medseg (lower numbers are lower layers). A submodule takes
#: the layer of the longest entry that prefixes it.
LAYERS: dict[str, int] = {
    "medseg": 0, "medseg.errors": 0, "medseg.tasks": 0, "medseg.tasks.outputs": 0,
    "medseg.io": 1,
    "medseg.data": 2, "medseg.transforms": 2, "medseg.physics": 2,
    "medseg.layers": 3,
    "medseg.networks": 4,
    "medseg.losses": 5, "medseg.inference": 5, "medseg.instance": 5, "medseg.uncertainty": 5,
    "medseg.metrics": 5,
    "medseg.reports": 6,
    "medseg.training": 7, "medseg.engine": 7, "medseg.model_folder": 7,
    "medseg.workflows": 8, "medseg.export": 8,
    "medseg.cli": 9,
}
TOP_OF_STACK = LAYERS["medseg.training"]
#: Packages that must stay below the top of the stack (rule c).
LOWER = ("io", "data", "transforms", "physics", "layers", "networks", "losses", "metrics")


def layer_of(module: str) -> int:
    """The layer of ``module``; a task module (``medseg.tasks.<name>``) sits with training."""
    if module.startswith("medseg.tasks.") and module != "medseg.tasks.outputs":
        return TOP_OF_STACK
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        key = ".".join(parts[:n])
        if key in LAYERS:
            return LAYERS[key]
    raise KeyError(f"{module} has no layer: add its package to LAYERS in {__file__}")


@dataclass(frozen=True)
class Edge:
    """``source`` imports ``target`` (a medseg module) at ``line``; ``names`` from ``from``."""

    source: str
    target: str
    line: int
    names: tuple[str, ...]
    type_checking: bool

    def __str__(self) -> str:
        what = f" ({', '.join(self.names)})" if self.names else ""
        return f"{self.source}:{self.line} -> {self.target}{what}"


def _module_files() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        parts = ("medseg", *path.relative_to(PACKAGE_ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _module_files()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, under_type_checking: bool = False):
    """``(node, type_checking)`` for every import in ``tree``, however deeply nested."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node, under_type_checking
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                yield from _imports(ast.Module(body=[child], type_ignores=[]), True)
            for child in node.orelse:
                yield from _imports(ast.Module(body=[child], type_ignores=[]),
                                    under_type_checking)
        else:
            yield from _imports(node, under_type_checking)


def _known_prefix(name: str) -> str | None:
    """The longest prefix of the dotted ``name`` that is a medseg module."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in MODULES:
            return ".".join(parts[:n])
    return None


def _edges_of(module: str, path: Path) -> list[Edge]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    edges = []
    for node, tc in _imports(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _known_prefix(alias.name)
                if target is not None:
                    edges.append(Edge(module, target, node.lineno, (), tc))
            continue
        if node.level:
            base = package.split(".")
            base = base[:len(base) - (node.level - 1)]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        if not (source == "medseg" or source.startswith("medseg.")):
            continue
        by_target: dict[str, list[str]] = {}
        for alias in node.names:
            sub = f"{source}.{alias.name}"
            target = sub if sub in MODULES else _known_prefix(source)
            if target is not None:
                by_target.setdefault(target, []).append(alias.name)
        for target, names in by_target.items():
            edges.append(Edge(module, target, node.lineno, tuple(names), tc))
    return [e for e in edges if e.target != module]


EDGES = [e for m, p in MODULES.items() for e in _edges_of(m, p)]
PACKAGES = sorted({m.split(".")[1] for m in MODULES if m.count(".") >= 1})


def _in_package(module: str, package: str) -> bool:
    return module == f"medseg.{package}" or module.startswith(f"medseg.{package}.")


def _strongly_connected(edges: list[Edge]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module (iterative)."""
    graph: dict[str, list[str]] = {m: [] for m in MODULES}
    for e in edges:
        graph[e.source].append(e.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(graph[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph[child])))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        top = stack.pop()
                        on_stack.discard(top)
                        component.append(top)
                        if top == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


RUNTIME_EDGES = [e for e in EDGES if not e.type_checking]
CYCLES = _strongly_connected(RUNTIME_EDGES)


def test_the_graph_is_read():
    """Sanity: known imports are found (top level, inside functions, relative, submodules)."""
    got = {(e.source, e.target) for e in EDGES}
    assert ("medseg.io.image", "medseg.io.meta") in got
    assert ("medseg.physics.restoration_data", "medseg.physics.phantom") in got
    assert ("medseg.workflows.commands", "medseg.physics") in got  # inside a function
    assert len(MODULES) > 50 and "medseg.cli" in MODULES and "medseg.io" in MODULES
    for m in MODULES:
        layer_of(m)  # every module has a layer


def test_tarjan_finds_cycles_and_ignores_trees():
    def e(a: str, b: str) -> Edge:
        return Edge(a, b, 1, (), False)

    global MODULES
    saved = MODULES
    MODULES = {m: Path() for m in "abcdef"}
    try:
        comps = _strongly_connected([e("a", "b"), e("b", "c"), e("c", "a"), e("c", "d"),
                                     e("d", "e"), e("e", "d"), e("a", "f")])
    finally:
        MODULES = saved
    assert sorted(comps) == [["a", "b", "c"], ["d", "e"]]


@pytest.mark.parametrize("package", PACKAGES)
def test_no_private_names_imported_from_another_module(package):
    bad = [str(e) for e in EDGES if _in_package(e.source, package)
           and any(n.startswith("_") and not n.startswith("__") for n in e.names)]
    assert not bad, (f"medseg.{package} imports private names of other modules; make them "
                     "public or move them where both sides can use them:\n" + "\n".join(bad))


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycle(package):
    mine = [c for c in CYCLES if any(_in_package(m, package) for m in c)]
    lines = []
    for comp in mine:
        members = set(comp)
        lines.append("cycle among " + ", ".join(comp) + ":")
        lines += [f"  {e}" for e in RUNTIME_EDGES if e.source in members and e.target in members]
    assert not mine, f"import cycles through medseg.{package}:\n" + "\n".join(lines)


@pytest.mark.parametrize("package", LOWER)
def test_lower_layers_never_import_the_top_of_the_stack(package):
    bad = [str(e) for e in EDGES
           if _in_package(e.source, package) and layer_of(e.target) >= TOP_OF_STACK]
    assert not bad, (f"medseg.{package} (layer {LAYERS['medseg.' + package]}) imports the top "
                     f"of the stack (layer >= {TOP_OF_STACK}: training, tasks modules, engine, "
                     "model_folder, workflows, cli):\n" + "\n".join(bad))


def test_output_types_stay_at_the_bottom():
    """``medseg.tasks.outputs`` (and ``errors``) import nothing above layer 0."""
    bad = [str(e) for e in EDGES if e.source in ("medseg.tasks.outputs", "medseg.errors")
           and layer_of(e.target) > 0]
    assert not bad, "\n".join(bad)
