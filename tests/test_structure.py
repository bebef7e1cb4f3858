"""The package's import structure, read from the source with ``ast`` (nothing is imported).

Every ``import`` counts, at module level and inside functions alike: a lazy import is still a dependency, it
only runs later. Imports under ``if TYPE_CHECKING:`` never run and are left out. ``from pkg import name`` depends
on ``pkg.name`` when that is a module, else on ``pkg``.

What is checked (see ``docs/architecture.md``, the layers and the data flow):

* no import cycle between modules, and none between subpackages;
* the layers: ``rpe`` imports no other part of the package (third party: torch and pydantic only); ``models``
  no ``train``/``sweep``/``report``; ``train`` no ``sweep``/``report``; ``report`` no ``sweep`` (it reads the
  storage; what both share lives in ``irpe_bench.keys``); ``sweep`` may read ``report`` (one direction); the
  neutral modules import no other part;
* the command line is the top layer: the dispatcher (``irpe_bench/cli.py``, whose ``COMMANDS`` count as imports)
  and the subcommand modules (``describe.py`` and every ``*/cli.py``) may import any part; no other module
  imports them, and a subcommand never imports the dispatcher (the ``--set`` helper is ``irpe_bench.overrides``);
* no module imports a private name (``_x``) of another module, in the package or in ``benchmarks/``;
* the installed package imports nothing from ``benchmarks`` (or ``tests``).
* a launcher of several workers and ``status`` import no Lightning when they start (eager imports only: module
  level, not inside functions).
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import Dict, Iterator, List, NamedTuple, Set, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "irpe_bench"

#: top-level modules every layer may read; they import no other part of the package
NEUTRAL = {"irpe_bench.keys", "irpe_bench.overrides", "irpe_bench.redact", "irpe_bench.allocator", "irpe_bench.lazy",
           "irpe_bench.preloaded"}
#: subpackage -> the subpackages (and top-level modules) it must never import
FORBIDDEN = {
    "rpe": {"models", "train", "sweep", "report", "bench"},
    "pos": {"models", "train", "sweep", "report", "bench"},
    "models": {"train", "sweep", "report", "bench"},
    "train": {"sweep", "report", "bench"},
    "report": {"sweep", "bench"},
    "sweep": {"bench"},  # NOTE: may read report: seeds until decided steers a study by its own analysis
}
RPE_THIRD_PARTY = {"torch", "pydantic"}


class Edge(NamedTuple):
    source: str  # importing module
    target: str  # imported module (of this package) or top-level name (third party)
    names: Tuple[str, ...]  # names taken by ``from target import ...``
    line: int


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def discover(folder: str) -> Dict[str, Path]:
    return {module_name(p): p for p in sorted((ROOT / folder).rglob("*.py"))}


MODULES = discover(PACKAGE)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, annotations: bool = False, eager: bool = False) -> Iterator[ast.stmt]:
    """Every import statement, however deeply nested (functions, classes, try), except under TYPE_CHECKING
    (``annotations``: those too); ``eager``: only those that run when the module is imported (none inside a
    function)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test) and not annotations:
            yield from (n for child in node.orelse for n in _imports_of(child, annotations, eager))
            continue
        yield from _imports_of(node, annotations, eager)


def _imports_of(node: ast.AST, annotations: bool = False, eager: bool = False) -> Iterator[ast.stmt]:
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        yield node
    elif not (eager and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))):
        yield from _imports(node, annotations, eager)


def _known(name: str) -> str:
    """The module of this package that ``name`` (a dotted module path) lands in."""
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def edges(module: str, source: str, is_package: bool = False, annotations: bool = False,
          eager: bool = False) -> List[Edge]:
    """The imports of ``module`` (its ``source`` text; ``is_package``: an ``__init__.py``; ``annotations``: with
    the imports under TYPE_CHECKING; ``eager``: only those run at import time)."""
    out: List[Edge] = []
    for node in _imports(ast.parse(source), annotations, eager):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _known(alias.name) if alias.name.startswith(PACKAGE) else alias.name
                out.append(Edge(module, target, (), node.lineno))
            continue
        if node.level:
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[:len(base) - (node.level - 1)]
            origin = ".".join(base + ([node.module] if node.module else []))
        else:
            origin = node.module or ""
        if not origin.startswith(PACKAGE):
            out.append(Edge(module, origin, tuple(a.name for a in node.names), node.lineno))
            continue
        plain = []
        for alias in node.names:
            if f"{origin}.{alias.name}" in MODULES:  # ``from pkg import module``
                out.append(Edge(module, f"{origin}.{alias.name}", (), node.lineno))
            else:
                plain.append(alias.name)
        if plain:
            out.append(Edge(module, _known(origin), tuple(plain), node.lineno))
    return out


def file_edges(module: str, path: Path, annotations: bool = False, eager: bool = False) -> List[Edge]:
    return edges(module, path.read_text(encoding="utf-8"), path.name == "__init__.py", annotations, eager)


def dispatched(path: Path = ROOT / PACKAGE / "cli.py") -> List[Edge]:
    """The subcommand modules ``irpe_bench/cli.py`` imports by name (``COMMANDS``, via ``importlib``)."""
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        target = node.target if isinstance(node, ast.AnnAssign) else (node.targets[0] if isinstance(node, ast.Assign)
                                                                      else None)
        if isinstance(target, ast.Name) and target.id == "COMMANDS":
            value = ast.literal_eval(node.value)
            return [Edge("irpe_bench.cli", v.partition(":")[0], (), node.lineno) for v in value.values()]
    raise AssertionError("irpe_bench/cli.py defines no COMMANDS")


EDGES = [e for m, p in MODULES.items() for e in file_edges(m, p)] + dispatched()
INTERNAL = [e for e in EDGES if e.target in MODULES and e.target != e.source]


def is_command(module: str) -> bool:
    return module in ("irpe_bench.cli", "irpe_bench.describe") or module.endswith(".cli")


def part(module: str) -> str:
    """The subpackage (``rpe``, ``models``, ...), the top-level module (``keys``), or ``cli`` for a command."""
    if is_command(module):
        return "cli"
    return module.split(".")[1] if module != PACKAGE else PACKAGE


def find_cycle(graph: Dict[str, Set[str]]) -> List[str]:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or [] (iterative depth-first search)."""
    state: Dict[str, int] = {}  # 1: on the path, 2: done
    for start in sorted(graph):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(graph.get(start, ())))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return []


def _where(found: List[Edge]) -> str:
    return "\n".join(f"  {e.source} -> {e.target} (line {e.line}{', ' + ', '.join(e.names) if e.names else ''})"
                     for e in found)


def test_the_checker_finds_what_it_looks_for():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []
    src = "from .config import X\nimport irpe_bench.rpe.index\ndef f():\n    from ..models import create_model\n" \
          "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..sweep import config\n"
    found = {(e.target, e.names) for e in edges("irpe_bench.train.data", src)}
    assert found == {("irpe_bench.train.config", ("X",)), ("irpe_bench.rpe.index", ()),
                     ("irpe_bench.models", ("create_model",)), ("typing", ("TYPE_CHECKING",))}
    assert {part("irpe_bench.sweep.cli"), part("irpe_bench.sweep.budget"), part("irpe_bench.keys")} == \
        {"cli", "sweep", "keys"}


def test_no_import_cycle_between_modules():
    graph: Dict[str, Set[str]] = {}
    for e in INTERNAL:
        graph.setdefault(e.source, set()).add(e.target)
    cycle = find_cycle(graph)
    assert not cycle, "import cycle between modules: " + " -> ".join(cycle)


def test_no_import_cycle_between_subpackages():
    graph: Dict[str, Set[str]] = {}
    for e in INTERNAL:
        a, b = part(e.source), part(e.target)
        if a != b:
            graph.setdefault(a, set()).add(b)
    cycle = find_cycle(graph)
    assert not cycle, "import cycle between subpackages: " + " -> ".join(cycle) + "\n" + _where(
        [e for e in INTERNAL if (part(e.source), part(e.target)) in zip(cycle, cycle[1:])])


def test_layers_point_one_way():
    bad = [e for e in INTERNAL if not is_command(e.source) and part(e.target) in FORBIDDEN.get(part(e.source), ())]
    assert not bad, "a lower layer imports a higher one:\n" + _where(bad)


def test_neutral_modules_import_no_other_part():
    bad = [e for e in INTERNAL if e.source in NEUTRAL]
    assert not bad, "a neutral module imports the package:\n" + _where(bad)


def test_rpe_needs_only_torch():
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    bad = [e for e in EDGES if part(e.source) == "rpe" and not e.target.startswith(PACKAGE)
           and e.target.split(".")[0] not in stdlib | RPE_THIRD_PARTY]
    assert not bad, "rpe imports a third-party package besides torch and pydantic:\n" + _where(bad)


def test_nothing_below_the_command_line_imports_it():
    bad = [e for e in INTERNAL if is_command(e.target) and not is_command(e.source)]
    assert not bad, "a library module imports a command module:\n" + _where(bad)
    assert {e.target for e in dispatched()} >= {"irpe_bench.train.cli", "irpe_bench.sweep.cli"}


def test_no_cycle_even_through_annotations():
    """A config imports nothing that imports it, not even for a type: the registries it validates names against
    are declared where the config can read them without the modules they name (``rpe.registry.Registry.declare``)."""
    graph: Dict[str, Set[str]] = {}
    for name, path in MODULES.items():
        for e in file_edges(name, path, annotations=True):
            if e.target.startswith(PACKAGE) and e.target != e.source:
                graph.setdefault(e.source, set()).add(e.target)
    cycle = find_cycle(graph)
    assert not cycle, "import cycle between modules (annotations counted): " + " -> ".join(cycle)


def test_report_imports_no_sweep_at_all():
    """Not even a command module of report: the sweep layer writes a sweep's report (sweep/leaderboard.py)."""
    bad = [e for e in INTERNAL if part(e.source) == "report" and part(e.target) == "sweep"]
    assert not bad, "report imports sweep:\n" + _where(bad)


def test_the_package_imports_neither_benchmarks_nor_tests():
    bad = [e for e in EDGES if e.target.split(".")[0] in ("benchmarks", "tests")]
    assert not bad, "the installed package imports a checkout-only folder:\n" + _where(bad)


def test_no_private_names_cross_modules():
    clients = {**MODULES, **discover("benchmarks")}
    bad = []
    for m, p in clients.items():
        for e in file_edges(m, p):
            private = [n for n in e.names if n.startswith("_") and not n.startswith("__")]
            if e.target in MODULES and e.target != m and private:
                bad.append(e._replace(names=tuple(private)))
            elif e.target in MODULES and e.target.rsplit(".", 1)[-1].startswith("_"):
                bad.append(e)
    assert not bad, "private names imported from another module (make them public or move them):\n" + _where(bad)


def eager_closure(start: str) -> Set[str]:
    """Every module (of the package, and the top-level name of every third-party one) that importing ``start``
    imports, following only eager imports (the parent packages' ``__init__`` modules included)."""
    seen: Set[str] = set()
    todo = [start]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        if module not in MODULES:
            continue
        parts = module.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) in MODULES]
        for e in file_edges(module, MODULES[module], eager=True):
            todo.append(e.target if e.target.startswith(PACKAGE) else e.target.split(".")[0])
    return seen


def test_the_checker_follows_eager_imports_only():
    closure = eager_closure("irpe_bench.train.preemption")
    assert "lightning" in closure and "irpe_bench.train.stop" in closure
    assert "lightning" in eager_closure("irpe_bench.sweep.epoch_progress")
    assert "lightning" not in eager_closure("irpe_bench.train.stop")


@pytest.mark.parametrize("module", ["irpe_bench.sweep.runner", "irpe_bench.sweep.cli", "irpe_bench.sweep.status",
                                    "irpe_bench.sweep.disk", "irpe_bench.sweep.progress", "irpe_bench.sweep.preempt"])
def test_the_launcher_and_status_import_no_lightning(module):
    """A launcher of several workers and ``run.py status`` never train: importing Lightning (and torchmetrics
    behind it) would double their start-up. The worker's Lightning parts (the epoch callback, the time limit, the
    checkpoint plugin) are imported where a trial trains."""
    assert "lightning" not in eager_closure(module), module
