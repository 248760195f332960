"""The one-way architecture: built-in targets are plugins like any other, so they import only
the public plugin API (``edgex.plugins``) and each other, never ``edgex.core``."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Iterable, Iterator

import edgex.targets

TARGETS = Path(edgex.targets.__path__[0])


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(nodes: Iterable[ast.AST]) -> Iterator[tuple[int, str]]:
    """Every module the import statements among ``nodes`` name, lazy imports inside functions
    included and ``if TYPE_CHECKING:`` blocks (never run) left out."""
    for node in nodes:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _imports(node.orelse)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            yield node.lineno, module
            for alias in node.names:  # ``from edgex import core`` names edgex.core too
                yield node.lineno, f"{module}.{alias.name}"
        else:
            yield from _imports(ast.iter_child_nodes(node))


def _core_imports(source: str) -> list[str]:
    found = {}  # one entry per import statement, by line
    for line, name in _imports([ast.parse(source)]):
        if line not in found and (name == "edgex.core" or name.startswith("edgex.core.")):
            found[line] = f"line {line}: {name}"
    return list(found.values())


def test_the_check_sees_lazy_imports_and_skips_type_checking_blocks():
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from edgex.core.types import ArtifactIO\n"
        "def run():\n    from edgex.core.parity import reference_outputs\n"
        "class Runner:\n    def go(self):\n        import edgex.core.layout\n"
        "from edgex import core\n"
    )
    assert _core_imports(source) == ["line 5: edgex.core.parity", "line 8: edgex.core.layout", "line 9: edgex.core"]


def test_targets_import_nothing_from_core():
    modules = sorted(TARGETS.rglob("*.py"))
    assert len(modules) > 5, f"no target modules found under {TARGETS}"
    offenders = {path.relative_to(TARGETS).as_posix(): found for path in modules if (found := _core_imports(path.read_text(encoding="utf-8")))}
    assert not offenders, f"targets import edgex.core (use edgex.plugins): {offenders}"


def test_targets_are_laid_out_by_family():
    """targets/ holds a package per family (onnx, litert, mcu, coreml) and at most three loose
    modules; every built-in target plugin is a module of its family's package, or a loose one."""
    from edgex.core.plugin_manager import BUILTIN_PLUGINS

    loose = sorted(p.name for p in TARGETS.glob("*.py"))
    assert len(loose) <= 3, loose
    families = {p.name for p in TARGETS.iterdir() if (p / "__init__.py").is_file()}
    assert {"onnx", "litert", "mcu", "coreml"} <= families, families
    for plugin in (p for p in BUILTIN_PLUGINS if p.startswith("edgex.targets.")):
        parts = plugin.split(".")[2:]
        assert len(parts) == 1 and f"{parts[0]}.py" in loose or len(parts) == 2 and parts[0] in families, plugin


# --------------------------------------------------------------------------- no import circles

import edgex.core  # noqa: E402
import edgex.examples  # noqa: E402
import edgex.plugins  # noqa: E402

PACKAGES = {"edgex.core": edgex.core, "edgex.plugins": edgex.plugins, "edgex.targets": edgex.targets, "edgex.examples": edgex.examples}


def _module_files() -> dict[str, Path]:
    """Every edgex module by dotted name (``edgex.core`` is its ``__init__``)."""
    modules = {}
    for package_name, package in PACKAGES.items():
        root = Path(package.__path__[0])
        for path in root.rglob("*.py"):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join((package_name, *parts))] = path
    return modules


def import_graph() -> dict[str, set[str]]:
    """Which edgex modules each edgex module imports, lazy imports included (a name imported
    ``from`` a package counts as the submodule when there is one, else as the package)."""
    modules = _module_files()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        by_statement: dict[int, set[str]] = {}
        for line, imported in _imports([ast.parse(path.read_text(encoding="utf-8"))]):
            while imported and imported not in modules:
                imported = imported.rpartition(".")[0]
            if imported:
                by_statement.setdefault(line, set()).add(imported)
        edges = set()
        for named in by_statement.values():
            # ``from edgex.core import layout`` names edgex.core and edgex.core.layout: the
            # statement wants the submodule, not the package's __init__
            edges |= {m for m in named if not any(other.startswith(m + ".") for other in named)}
        graph[name] = edges - {name}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_circle_finder_finds_a_planted_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle_among_edgex_modules():
    graph = import_graph()
    assert "edgex.core.pipeline" in graph and "edgex.core.data" in graph["edgex.core.pipeline"]
    assert circles(graph) == []


def test_private_names_do_not_cross_modules():
    """``from edgex.x import _name`` or ``module._name(...)`` across modules: a helper that
    crosses a module boundary is public and named for what it does."""
    offenders = []
    for name, path in _module_files().items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("edgex"):
                offenders += [f"{name}: from {node.module} import {a.name}" for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
    assert offenders == []


# --------------------------------------------------------------------------- MNN's telemetry


def _mnn_tools_imports(source: str) -> list[str]:
    """Imports of MNN's Python wrappers (``MNN.tools``: their logger pip-installs a package and
    posts usage logs), lazy ones included."""
    return [f"line {line}: {name}" for line, name in _imports([ast.parse(source)]) if name == "MNN.tools" or name.startswith("MNN.tools.")]


def test_no_edgex_module_imports_mnn_tools():
    planted = "import MNN\ndef f():\n    from MNN import tools\n    import MNN.tools.mnnconvert\nfrom MNN.tools.utils import log\n"
    assert _mnn_tools_imports(planted) == ["line 3: MNN.tools", "line 4: MNN.tools.mnnconvert", "line 5: MNN.tools.utils", "line 5: MNN.tools.utils.log"]
    offenders = {name: found for name, path in _module_files().items() if (found := _mnn_tools_imports(path.read_text(encoding="utf-8")))}
    assert not offenders, f"edgex modules import MNN.tools (call the C extension _tools instead): {offenders}"
