"""The house rules: every import of fxvene's own code (function-local ones included) follows the layer
table of CONTRIBUTING.md, no module imports a private name of another subpackage, and no import
circle exists between modules. Read from the source with ``ast``; nothing is imported.

The only exemption is a function-local import whose line carries ``# lazy: import cost``.
"""

import ast
import pathlib

import networkx as nx
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXEMPT = "# lazy: import cost"

# subpackage -> the subpackages it may import (besides itself). The order is the layer table of
# CONTRIBUTING.md, from the ground up; "top" is fxvene/__init__.py and fxvene/__main__.py.
LOWER = {
    "_version": set(),
    "models": {"passes"},
    "passes": {"models"},
    "causal": set(),
    "interventions": set(),
    "graph": {"_version", "models", "passes", "interventions"},
    "inspection": {"models", "passes", "interventions", "graph"},
    "api": {"models", "passes", "interventions", "graph", "inspection"},
    "zoo": {"graph"},
    "sweeps": {"models", "passes", "interventions", "graph", "inspection", "api", "zoo"},
    "methods": {"models", "passes", "interventions", "graph", "inspection", "api", "zoo", "sweeps"},
    "cli": {"models", "passes", "interventions", "graph", "inspection", "api", "zoo", "sweeps", "methods", "causal"},
}
TOP_LEVEL_MODULES = 12  # at most this many modules directly in fxvene/ (the bound)


def _sources():
    """(dotted module name, path, is_package) of every module of the installed package."""
    for base, prefix in (
        (ROOT / "fxvene", "fxvene"),
        (ROOT / "passes", "fxvene.passes"),
        (ROOT / "models", "fxvene.models"),
    ):
        for path in sorted(base.rglob("*.py")):
            rel = path.relative_to(base).with_suffix("").parts
            is_pkg = rel[-1] == "__init__"
            parts = rel[:-1] if is_pkg else rel
            yield ".".join((prefix, *parts)), path, is_pkg


def _imports(module, path, is_pkg):
    """(line, target module, imported names, local, exempt) of each fxvene import in ``path``."""
    tree = ast.parse(path.read_text())
    lines = path.read_text().splitlines()
    local_lines = set()
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            local_lines |= {n.lineno for n in ast.walk(fn) if isinstance(n, ast.Import | ast.ImportFrom)}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            target, names = None, [a.name for a in node.names]
        else:
            continue
        text = " ".join(lines[node.lineno - 1 : node.end_lineno])
        local = node.lineno in local_lines
        if target is None:
            for name in names:
                if name == "fxvene" or name.startswith("fxvene."):
                    yield node.lineno, name, [], local, local and EXEMPT in text
        elif target == "fxvene" or target.startswith("fxvene."):
            yield node.lineno, target, names, local, local and EXEMPT in text


MODULES = {name: (path, is_pkg) for name, path, is_pkg in _sources()}


def _resolve(target, names):
    """The modules an import loads: ``from fxvene.x import y`` loads fxvene.x.y where that is a module."""
    found = [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
    return found or [target]


def _room(module):
    """The subpackage a module lives in (``top`` for fxvene/__init__.py and fxvene/__main__.py)."""
    parts = module.split(".")
    if len(parts) == 1 or parts[1] == "__main__":
        return "top"
    return parts[1]


EDGES = [
    (module, dep, line, names, exempt)
    for module, (path, is_pkg) in MODULES.items()
    for line, target, names, _local, exempt in _imports(module, path, is_pkg)
    for dep in _resolve(target, names)
]


def test_the_table_names_every_subpackage():
    rooms = {_room(m) for m in MODULES} - {"top"}
    assert rooms == set(LOWER), f"subpackages not in the layer table: {rooms ^ set(LOWER)}"


def test_imports_follow_the_layer_table():
    bad = []
    for module, dep, line, _names, exempt in EDGES:
        src, dst = _room(module), _room(dep)
        if exempt or src == "top" or src == dst or dst in LOWER[src] or dst == "_version":  # a leaf: anyone may
            continue
        bad.append(
            f"{MODULES[module][0].relative_to(ROOT)}:{line} imports {dep} ({src} may import {sorted(LOWER[src])})"
        )
    assert not bad, "imports against the layer table:\n" + "\n".join(bad)


def test_no_private_name_crosses_a_subpackage():
    bad = []
    for module, dep, line, names, _exempt in EDGES:
        if _room(module) == _room(dep):
            continue
        private = [n for n in names if n.startswith("_") and not n.startswith("__")]
        private += [p for p in dep.split(".")[1:] if p.startswith("_") and not p.startswith("__") and p != "_version"]
        if private:
            bad.append(f"{MODULES[module][0].relative_to(ROOT)}:{line} takes {private} from {dep}")
    assert not bad, "private names used across subpackages (make them public where they live):\n" + "\n".join(bad)


def test_no_import_circle():
    graph = nx.DiGraph()
    graph.add_nodes_from(MODULES)
    graph.add_edges_from((m, d) for m, d, _l, _n, exempt in EDGES if not exempt and d in MODULES and d != m)
    circles = [c for c in nx.strongly_connected_components(graph) if len(c) > 1]
    assert not circles, f"import circles: {[sorted(c) for c in circles]}"


def test_the_top_of_the_package_stays_small():
    top = sorted(p.name for p in (ROOT / "fxvene").glob("*.py"))
    assert len(top) <= TOP_LEVEL_MODULES, top


@pytest.mark.parametrize("room", sorted(LOWER))
def test_each_subpackage_says_what_it_owns_and_may_import(room):
    init = ROOT / {"models": "models", "passes": "passes"}.get(room, f"fxvene/{room}") / "__init__.py"
    if room == "_version":
        return
    doc = ast.get_docstring(ast.parse(init.read_text())) or ""
    assert "May import:" in doc, f"{init.relative_to(ROOT)}: the docstring says what it owns and 'May import: ...'"


def test_the_checker_sees_local_and_relative_imports(tmp_path):
    """The reader finds a function-local import and resolves a relative one (or the checks above pass vacuously)."""
    src = tmp_path / "m.py"
    src.write_text("from . import x\n\ndef f():\n    from fxvene.api import intervenable  # lazy: import cost\n")
    found = list(_imports("fxvene.sweeps.m", src, False))
    assert [(t, local, exempt) for _l, t, _n, local, exempt in found] == [
        ("fxvene.sweeps", False, False),
        ("fxvene.api", True, True),
    ]
