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
    modules = sorted(TARGETS.glob("*.py"))
    assert len(modules) > 5, f"no target modules found under {TARGETS}"
    offenders = {path.name: found for path in modules if (found := _core_imports(path.read_text(encoding="utf-8")))}
    assert not offenders, f"targets import edgex.core (use edgex.plugins): {offenders}"
