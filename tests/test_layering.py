"""The package's dependencies point one way: lower layers never import higher ones, and no modules import
each other in a circle. Every import counts, also one inside a function and one by name (a string such
as ``"fl_vmix.apps.server_app:app"`` handed to importlib or to Flower).

Layers, lowest first (a unit may import only units of a strictly lower layer, and itself):

0. ``privacy``, ``data``, ``models``, ``optim``, ``tables``: image privacy, data, networks, optimisers
1. ``experiment`` (typed config), ``training`` (Flower-free client logic), ``recording`` (run folders),
   and the package root ``fl_vmix`` (its ``__init__`` re-exports layer 0)
2. ``factory``: builds everything from an experiment
3. ``checks``: probes an experiment before round 1
4. ``apps``: the Flower adapters
5. ``runtime``: the command line, the launcher, process management
6. ``evaluation``, ``deploy``: reports and attacks; deployment tooling
7. ``__main__``
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fl_vmix"
LAYERS = {
    "fl_vmix.privacy": 0,
    "fl_vmix.data": 0,
    "fl_vmix.models": 0,
    "fl_vmix.optim": 0,
    "fl_vmix.tables": 0,
    "fl_vmix": 1,
    "fl_vmix.experiment": 1,
    "fl_vmix.training": 1,
    "fl_vmix.recording": 1,
    "fl_vmix.factory": 2,
    "fl_vmix.checks": 3,
    "fl_vmix.apps": 4,
    "fl_vmix.runtime": 5,
    "fl_vmix.evaluation": 6,
    "fl_vmix.deploy": 6,
    "fl_vmix.__main__": 7,
}
# Flower stays in the adapters and above; these layers must work (and be tested) without it.
FLOWER_FREE = (
    "fl_vmix.privacy",
    "fl_vmix.data",
    "fl_vmix.models",
    "fl_vmix.optim",
    "fl_vmix.tables",
    "fl_vmix.experiment",
    "fl_vmix.training",
    "fl_vmix.recording",
    "fl_vmix.factory",
    "fl_vmix.checks",
)
MODULE_NAME = re.compile(r"^fl_vmix(\.[A-Za-z_]\w*)*(:[\w.]+)?$")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def production_modules(root: Path) -> dict[str, Path]:
    return {
        module_name(p, root): p
        for p in sorted(root.rglob("*.py"))
        if not p.name.endswith("_test.py") and p.name != "conftest.py" and not p.name.startswith("_testing")
    }


def _logger_names(tree: ast.AST) -> set[int]:
    """ids of the string arguments of logging.getLogger(...): logger names look like module names."""
    return {
        id(node.args[0])
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and node.args
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "getLogger"
    }


def imports(path: Path, name: str, root_name: str) -> Iterator[tuple[str, int, bool]]:
    """Every module ``path`` imports, with its line and whether it was named in a string.

    Statements count anywhere (also inside functions); a string counts when it names a module of the
    package exactly (``"fl_vmix.apps.server_app:app"``, ``import_module("fl_vmix.x")``), except
    logger names and the bare package name (``python -m fl_vmix`` starts a process, not an import).
    """
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text(), str(path))
    loggers = _logger_names(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno, False
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield base, node.lineno, False
            for alias in node.names:
                yield f"{base}.{alias.name}", node.lineno, False  # a submodule, when it is one (filtered below)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and MODULE_NAME.match(node.value):
            target = node.value.split(":")[0]
            if target.split(".")[0] == root_name and "." in target and id(node) not in loggers:
                yield target, node.lineno, True


def unit_of(module: str) -> str | None:
    candidates = [u for u in LAYERS if module == u or module.startswith(u + ".")]
    return max(candidates, key=len) if candidates else None


def dependency_graph(root: Path) -> tuple[dict[str, set[str]], list[str]]:
    """Module -> the package modules it imports; plus every external ``flwr`` import of a Flower-free layer."""
    modules = production_modules(root)
    graph: dict[str, set[str]] = {}
    flower = []
    for name, path in modules.items():
        graph[name] = set()
        for target, line, by_name in imports(path, name, root.name):
            if target.split(".")[0] == "flwr" and name.startswith(FLOWER_FREE):
                flower.append(f"{name}:{line} imports {target}")
            if by_name and target not in modules:
                continue  # a string that only looks like a module name (a state key, say)
            # Name the deepest package module the import reaches ("a.b.c" may be the attribute c of a.b).
            while target and target not in modules:
                target = target.rsplit(".", 1)[0] if "." in target else ""
            if target and target != name:
                graph[name].add(target)
    return graph, flower


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    found = []
    for source, targets in graph.items():
        src_unit = unit_of(source)
        assert src_unit is not None, (
            f"{source} belongs to no layer: add its package to LAYERS in tests/test_layering.py"
        )
        for target in sorted(targets):
            dst_unit = unit_of(target)
            if dst_unit == src_unit:
                continue
            if dst_unit is None:
                found.append(f"{source} imports {target}, which belongs to no layer")
            elif LAYERS[dst_unit] >= LAYERS[src_unit]:
                found.append(
                    f"{source} (layer {LAYERS[src_unit]}, {src_unit}) imports {target} (layer {LAYERS[dst_unit]}, "
                    f"{dst_unit})"
                )
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_lower_layers_never_import_higher_ones():
    graph, _ = dependency_graph(PACKAGE)
    assert not layer_violations(graph)


def test_no_module_imports_another_in_a_circle():
    graph, _ = dependency_graph(PACKAGE)
    assert not cycles(graph)


def test_flower_stays_out_of_the_lower_layers():
    _, flower = dependency_graph(PACKAGE)
    assert not flower


@pytest.fixture()
def broken_package(tmp_path: Path) -> Path:
    """A copy of the layout with three planted faults: a by-name import upwards, a cycle, and flwr in privacy."""
    root = tmp_path / "fl_vmix"
    files = {
        "__init__.py": "",
        "privacy/__init__.py": "",
        "privacy/methods.py": (
            'import importlib\nPROVIDERS = ("fl_vmix.evaluation.baselines",)\nimportlib.import_module(PROVIDERS[0])\n'
        ),
        "privacy/noise.py": "def f():\n    from flwr.app import Message\n",
        "evaluation/__init__.py": "",
        "evaluation/baselines.py": "from fl_vmix.privacy import methods\n",
        "apps/__init__.py": "",
        "apps/validate.py": "def check():\n    from fl_vmix.apps.server_app import STRATEGIES\n",
        "apps/server_app.py": "from fl_vmix.apps.validate import check\n",
    }
    for relative, text in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)
    return root


def test_the_checks_find_planted_faults(broken_package: Path):
    graph, flower = dependency_graph(broken_package)
    assert layer_violations(graph) == [
        "fl_vmix.privacy.methods (layer 0, fl_vmix.privacy) imports fl_vmix.evaluation.baselines (layer 6, "
        "fl_vmix.evaluation)"
    ]
    assert sorted(cycles(graph)) == [
        ["fl_vmix.apps.server_app", "fl_vmix.apps.validate"],
        ["fl_vmix.evaluation.baselines", "fl_vmix.privacy.methods"],
    ]
    assert flower == ["fl_vmix.privacy.noise:2 imports flwr.app", "fl_vmix.privacy.noise:2 imports flwr.app.Message"]
