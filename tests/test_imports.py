"""The package's import structure: no import cycles, no private names across modules.

Imports are read with `ast`, not executed, and every import counts, also one inside a function: a lazy import
that closes a circle still ties two modules into one (the circle only waits for the first call).
"""

import ast
import pathlib

import pytest

CLQ = pathlib.Path(__file__).resolve().parents[1] / "clq"


def modules(root: pathlib.Path) -> dict[str, tuple[pathlib.Path, bool]]:
    """Dotted module name -> (file, is a package's __init__) for every .py file under `root`."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return out


def imported_names(name: str, path: pathlib.Path, is_pkg: bool, mods) -> list[tuple[str, str | None, int]]:
    """(module, imported name or None, line) for every import of a module in `mods`, anywhere in the file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, None, node.lineno) for a in node.names if a.name in mods]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                pkg = pkg[: len(pkg) - node.level + 1]
                base = ".".join(pkg + ([base] if base else []))
            for a in node.names:
                if f"{base}.{a.name}" in mods:  # `from pkg import submodule`
                    out.append((f"{base}.{a.name}", None, node.lineno))
                elif base in mods:
                    out.append((base, a.name, node.lineno))
    return out


def import_graph(root: pathlib.Path) -> dict[str, set[str]]:
    mods = modules(root)
    return {m: {t for t, _, _ in imported_names(m, p, pkg, mods)} - {m} for m, (p, pkg) in mods.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def private_imports(root: pathlib.Path) -> list[str]:
    """``file:line module._name`` for every underscore name one module takes from another module under `root`."""
    mods = modules(root)
    bad = []
    for m, (path, is_pkg) in mods.items():
        for target, name, line in imported_names(m, path, is_pkg, mods):
            if name is not None and name.startswith("_") and not name.startswith("__") and target != m:
                bad.append(f"{path.relative_to(root.parent)}:{line} {target}.{name}")
    return bad


@pytest.fixture
def toy(tmp_path):
    """A package `pkg` whose modules the test writes: files(name=source, ...)."""

    def files(**sources):
        for name, src in sources.items():
            path = tmp_path / "pkg" / (name.replace(".", "/") + ".py")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(src)
        return tmp_path / "pkg"

    return files


def test_the_checks_see_cycles_and_private_names(toy):
    root = toy(__init__="", a="from pkg.b import f\n", b="def f():\n    from pkg import a\n", c="from . import a\n",
               d="from pkg.a import _helper, __doc__\n")
    assert cycles(import_graph(root)) == [["pkg.a", "pkg.b"]]  # the lazy import in b closes it
    assert import_graph(root)["pkg.c"] == {"pkg.a"}
    assert private_imports(root) == ["pkg/d.py:1 pkg.a._helper"]


def test_clq_has_no_import_cycles():
    graph = import_graph(CLQ)
    assert {"clq.config", "clq.run", "clq.train.loop"} <= set(graph)
    assert cycles(graph) == []


def test_clq_config_does_not_import_the_training_loop():
    assert "clq.train.loop" not in import_graph(CLQ)["clq.config"]


def test_no_module_imports_a_private_name_of_another():
    assert private_imports(CLQ) == []
