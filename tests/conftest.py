import importlib.util
import os
import sys
from pathlib import Path

import pytest

pytest_plugins = ["edgex.plugins.testing"]

# Tests judge edgex itself: third-party plugins installed on the machine must not interfere.
os.environ.setdefault("EDGEX_DISABLE_PLUGIN_AUTOLOAD", "1")


def _helper_module(name: str) -> None:
    """tests/NAME.py as the module ``NAME``, once per process: --import-mode=importlib puts no test
    folder on sys.path, so the test files ``import defects`` after this (dataclasses look their
    module up in sys.modules)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)


# the artifact planters (tests/defects.py first: defects_openvino builds on its Planted)
for _name in ("defects", "defects_openvino", "defects_mnn"):
    _helper_module(_name)


def pytest_xdist_auto_num_workers(config):
    """``-n auto`` (pyproject's addopts): a worker per core, at most 4. Each worker holds torch,
    TensorFlow and the converters (2-3 GB) and most tests fork conversion children of their own,
    so more workers than that fight over memory rather than finish sooner (docs/testing.md)."""
    return max(1, min(os.cpu_count() or 1, 4))


@pytest.fixture
def one_thread():
    """Torch on one thread for the test: tiny models train and run fastest so (and the CI box is shared)."""
    import torch  # here, not at the top: the conftest is loaded for tests that never touch torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def artifact_planters():
    """tests/defects.py's artifact planters in the conformance kit's form (``planters=``):
    ``scale_channel`` and ``scale_output`` for .onnx and .tflite artifacts."""
    import defects

    def planter(defect):
        return lambda artifact, folder: getattr(defects, defect)(artifact, folder / Path(artifact).name).path

    return {defect: planter(defect) for defect in ("scale_channel", "scale_output")}
