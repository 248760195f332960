"""Documentation that cannot drift: every hook documented and tested, the API example runs."""

import inspect
import re
from pathlib import Path

import pytest

from edgex.core import hookspecs

ROOT = Path(__file__).parent.parent
HOOKS = sorted(name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("edgex_"))


def test_there_are_hooks():
    assert {"edgex_targets", "edgex_convert", "edgex_load_runtime", "edgex_compress", "edgex_stage_started"} <= set(HOOKS)


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_doc_section(hook):
    text = (ROOT / "docs" / "plugin_hooks.md").read_text()
    assert re.search(rf"^### {hook}$", text, re.M), f"docs/plugin_hooks.md has no '### {hook}' section"


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_test(hook):
    tests = [p for p in (ROOT / "tests").rglob("*.py") if p.name != "test_docs.py"]
    assert any(hook in p.read_text() for p in tests), f"no test mentions {hook}"


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
