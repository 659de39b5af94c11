"""The shape of ``exporter/`` as docs/CONVENTIONS draw it, checked on the source: no import cycle (lazy
imports inside functions and ``TYPE_CHECKING`` imports count), no module over 400 lines and no class over
300, leaves that import only leaves, the state apart from the configuration and the brokers, and broker
packages named only by the registry.

The import graph is read with ``ast`` from every module under ``exporter/``; nothing is imported.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "exporter"
MAX_MODULE_LINES = 400
MAX_CLASS_LINES = 300
# Modules every layer may import: they import nothing from exporter but each other.
LEAVES = frozenset({
    "exporter",  # __version__
    "exporter.config_values",
    "exporter.labels",
    "exporter.options",
    "exporter.secrets",
    "exporter.status",
})


def module_names(package: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module of ``package`` (a package is its ``__init__``)."""
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: set[str]) -> Iterator[str]:
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative: from the module's package, one level up per extra dot
            package = module.split(".") if is_package else module.split(".")[:-1]
            anchor = package[: len(package) - (node.level - 1)]
            base = ".".join([*anchor, *([base] if base else [])])
        # ``from pkg import mod`` imports the submodule; ``from mod import name`` the module.
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
    for name in names:
        while name and name not in known:  # ``import exporter.x.attr`` style: the longest module prefix
            name = name.rpartition(".")[0]
        if name:
            yield name


def import_graph(package: Path) -> dict[str, set[str]]:
    """Module -> the modules of ``package`` it imports anywhere in its source (top level, inside
    functions, under ``if TYPE_CHECKING:``)."""
    modules = module_names(package)
    known = set(modules)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        edges: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges.update(_targets(node, name, path.name == "__init__.py", known))
        edges.discard(name)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(PACKAGE)


# ------------------------------------------------------------------ the checker itself
def test_the_walker_sees_lazy_and_relative_imports_and_finds_their_cycle(tmp_path: Path) -> None:
    pkg = tmp_path / "app"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from app.sub import b\n")
    (pkg / "a.py").write_text("def f():\n    from app.sub.b import g\n    return g\n")
    (pkg / "sub" / "b.py").write_text("from ..a import f\n")  # a -> sub.b (lazily) -> a
    (pkg / "c.py").write_text("import app.a\nfrom typing import TYPE_CHECKING\n"
                              "if TYPE_CHECKING:\n    from app import sub\n")
    got = import_graph(pkg)
    assert got == {"app": set(), "app.sub": {"app.sub.b"}, "app.a": {"app.sub.b"}, "app.sub.b": {"app.a"},
                   "app.c": {"app.a", "app.sub"}}
    assert cycles(got) == [["app.a", "app.sub.b"]]


# ------------------------------------------------------------------ the rules
def test_no_import_cycle(graph: dict[str, set[str]]) -> None:
    found = cycles(graph)
    assert not found, found


def test_no_module_over_400_lines_and_no_class_over_300() -> None:
    too_long = []
    for name, path in module_names(PACKAGE).items():
        text = path.read_text(encoding="utf-8")
        if len(text.splitlines()) > MAX_MODULE_LINES:
            too_long.append(f"{name}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef) and node.end_lineno is not None:
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_CLASS_LINES:
                    too_long.append(f"{name}.{node.name}: {lines} lines")
    assert not too_long, too_long


def test_every_module_opens_with_a_docstring() -> None:
    missing = [name for name, path in module_names(PACKAGE).items()
               if not ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))]
    assert not missing, missing


def test_leaves_import_only_leaves(graph: dict[str, set[str]]) -> None:
    assert set(graph) >= LEAVES, "a leaf named here no longer exists"
    bad = {leaf: sorted(graph[leaf] - LEAVES) for leaf in LEAVES if graph[leaf] - LEAVES}
    assert not bad, bad


def test_the_state_imports_neither_the_configuration_nor_the_brokers(graph: dict[str, set[str]]) -> None:
    bad = {m: sorted(t for t in targets if _under(t, "exporter.config") or _under(t, "exporter.brokers"))
           for m, targets in graph.items() if _under(m, "exporter.state")}
    bad = {m: t for m, t in bad.items() if t}
    assert not bad, bad


def test_brokers_import_nothing_from_the_state(graph: dict[str, set[str]]) -> None:
    bad = {m: sorted(t for t in targets if _under(t, "exporter.state"))
           for m, targets in graph.items() if _under(m, "exporter.brokers")}
    bad = {m: t for m, t in bad.items() if t}
    assert not bad, bad


def test_events_and_brokers_receive_their_slice_and_never_read_the_configuration(
        graph: dict[str, set[str]]) -> None:
    bad = {m: sorted(t for t in targets if t in ("exporter.config", "exporter.app"))
           for m, targets in graph.items() if _under(m, "exporter.brokers") or _under(m, "exporter.events")}
    bad = {m: t for m, t in bad.items() if t}
    assert not bad, bad


def test_only_the_registry_names_a_broker_package(graph: dict[str, set[str]]) -> None:
    """The shared broker modules (``exporter/brokers/*.py``) leave choosing a broker to ``registry.py``,
    which loads the packages by name when one is chosen."""
    packages = {m for m in graph if m.count(".") == 2 and _under(m, "exporter.brokers")
                and (PACKAGE / "brokers" / m.rsplit(".", 1)[1]).is_dir()}
    assert packages >= {"exporter.brokers.redis", "exporter.brokers.rabbitmq", "exporter.brokers.kombu"}
    shared = {m for m in graph if m.count(".") == 2 and _under(m, "exporter.brokers")} - packages
    bad = {m: sorted(t for t in graph[m] if any(_under(t, p) for p in packages)) for m in shared}
    bad = {m: t for m, t in bad.items() if t}
    assert not bad, bad


def test_config_and_cli_share_the_options_and_import_neither_each_other_nor_broker_logic(
        graph: dict[str, set[str]]) -> None:
    assert "exporter.options" in graph["exporter.config"] and "exporter.options" in graph["exporter.cli"]
    assert "exporter.cli" not in graph["exporter.config"] and "exporter.config" not in graph["exporter.cli"]
    # The one broker module config.py reads is the declaration of the slices it builds.
    assert {t for t in graph["exporter.config"] if _under(t, "exporter.brokers")} == {"exporter.brokers.settings"}
