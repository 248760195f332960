"""Opt-in pytest plugin for target authors: ``pytest -p edgex.plugins.testing`` or
``pytest_plugins = ["edgex.plugins.testing"]`` in a conftest.

It gives tiny models, fixtures, and :func:`check_target_conformance`, which puts one target
through the whole contract the way edgex's own targets are checked: a declared spec, a typed
backend status, artifacts written only inside the work folder, bindings for every input and
output, parity passing on a correct conversion *and failing on a planted defect*.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import pytest

from edgex.plugins import BackendStatus, TargetSpec


def tiny_cnn(channels: int = 3, size: int = 16, classes: int = 10):
    """A small seeded CNN (conv, batch norm, ReLU, pooling, linear) and its example input."""
    import torch
    import torch.nn as nn

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, classes),
    ).eval()
    with torch.no_grad():
        model[1].running_mean.uniform_(-0.2, 0.2)
        model[1].running_var.uniform_(0.5, 1.5)
    return model, (torch.randn(1, channels, size, size),)


def tiny_mlp(features: int = 12, classes: int = 4):
    import torch
    import torch.nn as nn

    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(features, 16), nn.Tanh(), nn.Linear(16, classes)).eval(), (torch.randn(1, features),)


def perturbed(model: Any) -> Any:
    """A copy of ``model`` with a planted defect: the first layer's weights negated.

    Large enough to leave int8's error budget (a single negated filter of an untrained CNN moves
    its outputs by fewer than 8 output steps, which int8 parity rightly tolerates).
    """
    import torch

    bad = copy.deepcopy(model)
    with torch.no_grad():
        for parameter in bad.parameters():
            if parameter.dim() >= 2:
                parameter.neg_()
                break
    return bad


@dataclass
class ConformanceResult:
    target: str
    precisions: dict[str, Any]
    defect_caught: bool


def check_target_conformance(
    target: str,
    out: Path,
    *,
    manager: Any = None,
    model: Any = None,
    example_inputs: Sequence[Any] | None = None,
    precisions: Sequence[str] | None = None,
    calibration: Any = None,
) -> ConformanceResult:
    """Assert that ``target`` honours the edgex contract; returns what was checked.

    For each precision: the conversion passes parity and writes its artifacts inside ``out``.
    Then every artifact is validated against a perturbed copy of the model, which must fail.
    """
    import numpy as np

    from edgex.core import api

    manager = manager or api.plugin_manager()
    registered = manager.resolve_target(target)
    spec = registered.spec
    assert isinstance(spec, TargetSpec), f"{target}: edgex_targets must return TargetSpec"
    assert spec.precisions and spec.default_precision in spec.precisions, f"{target}: default precision must be one it offers"
    assert spec.artifact_kinds, f"{target}: declare the artifact kinds it writes"
    status = manager.backend_status(target)
    assert isinstance(status, BackendStatus), f"{target}: edgex_backend_status must return BackendStatus"
    if not status.available:
        pytest.skip(f"{target}: {status.missing_message()}")
    if model is None:
        model, example_inputs = tiny_cnn()
    if calibration is None:
        calibration = (np.random.default_rng(0).standard_normal((64, *tuple(example_inputs[0].shape[1:]))).astype("float32"),)
    results: dict[str, Any] = {}
    for precision in precisions or spec.precisions:
        folder = Path(out) / precision
        report = api.convert(
            model, [target], out=folder, example_inputs=example_inputs, precision=precision,
            calibration=calibration, samples=8, plugins=manager,
        )
        row = report.targets[spec.name]
        assert row.status == "passed", f"{target} {precision}: {row.status}: {row.messages}"
        assert row.parity is not None and row.parity.passed
        assert row.artifacts, f"{target} {precision}: no artifacts reported"
        for artifact in row.artifacts:
            path = (folder / artifact).resolve()
            assert path.exists(), f"{target}: reported artifact {artifact} does not exist"
            assert folder.resolve() in path.parents, f"{target}: artifact {path} written outside --out"
        assert not list(folder.glob(".edgex-tmp-*")), f"{target}: temporary folders left in --out"
        results[precision] = row
        # the same artifact judged against a model with a planted defect must fail
        broken = api.validate(
            folder / row.artifacts[0], perturbed(model), target=spec.name, out=folder / "defect",
            example_inputs=example_inputs, precision=precision, calibration=calibration, samples=8, plugins=manager,
        )
        verdict = broken.targets[spec.name]
        assert verdict.status == "failed", f"{target} {precision}: parity did not catch a perturbed weight ({verdict.status}: {verdict.messages})"
    caught = True
    return ConformanceResult(target, results, caught)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def edgex_manager():
    """The built-in plugins only: installed third-party plugins cannot change a test's outcome."""
    from edgex.core.plugin_manager import PluginManager

    return PluginManager(load_entry_points=False)


@pytest.fixture
def edgex_out(tmp_path: Path) -> Path:
    return tmp_path / "out"


@pytest.fixture
def tiny_cnn_model():
    return tiny_cnn()
