"""The pytest plugin for users (edgex.core.pytest_plugin): it fails a user's test when parity
fails, passes it when parity holds, skips where a backend is missing, and loads light."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

ROOT = Path(__file__).parent.parent
SITE = Path(__file__).parent / "data" / "site"
EXAMPLE = ROOT / "docs" / "examples" / "test_my_model_on_edge.py"


@pytest.fixture
def user_suite(pytester, monkeypatch):
    """A user's pytest run with edgex's plugin, whether or not this environment's edgex was
    installed with its entry point (autoloading off, so it cannot load twice). In a process of
    its own: an in-process run unloads the modules it imported, and torch cannot load twice."""
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")

    def run(*args):
        return pytester.runpytest_subprocess("-p", "edgex.core.pytest_plugin", "-p", "no:cacheprovider", "-rs", *args)

    return run


def test_the_documented_example_suite_passes(pytester, user_suite):
    shutil.copy(EXAMPLE, pytester.path / EXAMPLE.name)
    user_suite().assert_outcomes(passed=2)


BROKEN_EXPORT = '''
import torch


class Classifier(torch.nn.Module):
    """exported_defect=True plants a defect in the artifact only: under export (torch.export or
    TorchScript tracing) the logits are scaled, while eager PyTorch, the reference, is untouched."""

    def __init__(self, exported_defect):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
        self.exported_defect = exported_defect

    def forward(self, x):
        exporting = torch.compiler.is_compiling() or torch.jit.is_tracing()
        return self.net(x) * (1.5 if self.exported_defect and exporting else 1.0)


def test_parity_holds(edgex_parity):
    edgex_parity(Classifier(False).eval(), ["onnx"], example_inputs=(torch.randn(1, 6),), samples=4)


def test_parity_fails(edgex_parity):
    edgex_parity(Classifier(True).eval(), ["onnx"], example_inputs=(torch.randn(1, 6),), samples=4)
'''


def test_a_parity_failure_fails_the_users_test_with_the_verdicts_reason(pytester, user_suite):
    pytester.makepyfile(test_users_model=BROKEN_EXPORT)
    result = user_suite()
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*edgex: onnx failed at fp32: output * max |error| * exceeds the tolerance*", "*edgex: the whole report: *report.json*"])
    assert "Traceback" not in result.stdout.str()  # one line per verdict, not a stack


SKIPS = '''
import pytest


@pytest.mark.edgex_target("ghost")
def test_marked_for_a_missing_backend():
    raise AssertionError("the marker should have skipped this test")


def test_helper_on_a_missing_backend(edgex_parity):
    edgex_parity("examples:digits", ["ghost"])
    raise AssertionError("the helper should have skipped this test")


@pytest.mark.edgex_target("onnx")
def test_marked_for_an_installed_backend():
    pass


@pytest.mark.edgex_target("no-such-target")
def test_marked_with_a_misspelt_target():
    pass
'''


def test_a_missing_backend_skips_cleanly(pytester, user_suite, monkeypatch):
    # a third-party target whose runtime is not installed
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(SITE), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("EDGEX_LOAD_PLUGINS", "ghost")
    pytester.makepyfile(test_skips=SKIPS)
    result = user_suite()
    result.assert_outcomes(passed=1, skipped=2, errors=1)  # a misspelt target errors in setup
    assert result.stdout.str().count("pip install ghost-runtime") == 2
    result.stdout.fnmatch_lines(["edgex_target('no-such-target'): unknown target 'no-such-target'*"])
    assert "During handling" not in result.stdout.str()


def test_loading_the_plugin_imports_no_framework():
    import tomllib

    entry_points = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["pytest11"]
    assert entry_points == {"edgex": "edgex.core.pytest_plugin"}
    code = "import sys, edgex.core.pytest_plugin as p; assert p.edgex_parity; print([m for m in ('torch', 'numpy', 'edgex.core.plugin_manager') if m in sys.modules])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout
