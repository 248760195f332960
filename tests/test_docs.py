"""Documentation that cannot drift: every hook documented and tested, the API example runs."""

import ast
import inspect
import re
from pathlib import Path

import pytest

from edgex.core import hookspecs

ROOT = Path(__file__).parent.parent
HOOKS = sorted(name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("edgex_"))


def test_there_are_hooks():
    assert {"edgex_targets", "edgex_convert", "edgex_load_runtime", "edgex_compress", "edgex_stage_started"} <= set(HOOKS)


def doc_section(text: str, hook: str) -> str | None:
    """The body of ``### hook`` in ``text``, up to the next heading; None when there is no such section."""
    match = re.search(rf"^### {re.escape(hook)}[ \t]*\n(.*?)(?=^#|\Z)", text, re.M | re.S)
    return match.group(1) if match else None


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_doc_section(hook):
    section = doc_section((ROOT / "docs" / "plugin_hooks.md").read_text(), hook)
    assert section is not None, f"docs/plugin_hooks.md has no '### {hook}' section"
    assert section.strip(), f"docs/plugin_hooks.md's '### {hook}' section is empty: say what the hook does"


def names_in_code(node: ast.AST) -> set[str]:
    """Every name the code under ``node`` refers to: names, attributes, string constants and the
    names of functions it defines (a hook implementation inside a test). Comments are not code."""
    found: set[str] = set()
    for child in ast.walk(node):
        if isinstance(child, ast.Name):
            found.add(child.id)
        elif isinstance(child, ast.Attribute):
            found.add(child.attr)
        elif isinstance(child, ast.Constant) and isinstance(child.value, str):
            found.update(re.findall(r"\bedgex_\w+", child.value))
        elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) and child is not node:
            found.add(child.name)
    return found


def hooks_tested_in(source: str) -> set[str]:
    """The hooks some ``def test_*`` in ``source`` refers to in its code."""
    tree = ast.parse(source)
    tests = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name.startswith("test_")]
    return {name for test in tests for name in names_in_code(test) if name in HOOKS}


HOOKS_WITH_A_TEST = set().union(*(hooks_tested_in(p.read_text()) for p in (ROOT / "tests").rglob("test_*.py") if p.name != "test_docs.py"))


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_test(hook):
    assert hook in HOOKS_WITH_A_TEST, f"no test function in tests/ refers to {hook} in its code (a comment does not count)"


def test_hook_checks_see_code_not_comments():
    """The checks above can fail: a comment, a module-level mention or an empty section is not enough."""
    commented = "def test_x():\n    # edgex_convert is tested here\n    assert True\n"
    at_module_level = "HOOK = 'edgex_convert'\n\ndef helper():\n    return edgex_convert\n"
    called = "def test_x(manager):\n    assert manager.pm.hook.edgex_convert\n"
    named = "def test_x():\n    assert 'edgex_convert' in text\n"
    implemented = "def test_x():\n    class P:\n        def edgex_convert(self, request): ...\n"
    assert hooks_tested_in(commented) == hooks_tested_in(at_module_level) == set()
    assert hooks_tested_in(called) == hooks_tested_in(named) == hooks_tested_in(implemented) == {"edgex_convert"}
    assert doc_section("### edgex_convert\n\n### edgex_describe_artifact\nprose\n", "edgex_convert").strip() == ""
    assert doc_section("### edgex_convert\n\nprose\n## Next\n", "edgex_convert").strip() == "prose"
    assert doc_section("### edgex_converter\nprose\n", "edgex_convert") is None


def test_readme_opens_with_two_setup_commands():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1).strip().splitlines()
    assert len(block) == 2 and "pip install -c constraints.txt" in block[0] and "pytest" in block[1]
    run = (ROOT / ".ci" / "run").read_text()
    assert block[1].replace("pip install", "pip install -q") in run


def test_readme_links_exist():
    text = (ROOT / "README.md").read_text()
    for link in re.findall(r"\]\(([^)#]+)\)", text):
        if not link.startswith("http"):
            assert (ROOT / link).exists(), link


def test_python_api_example_runs(tmp_path, monkeypatch):
    text = (ROOT / "docs" / "python_api.md").read_text()
    example = re.search(r"## Example.*?```python\n(.*?)```", text, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(example, "docs/python_api.md", "exec"), {})
