"""Opt-in pytest plugin for target authors: ``pytest -p edgex.plugins.testing`` or
``pytest_plugins = ["edgex.plugins.testing"]`` in a conftest.

It gives tiny models, fixtures, and :func:`check_target_conformance`, which puts one target
through the whole contract the way edgex's own targets are checked: a declared spec, a typed
backend status that says what to install, every precision converted with artifacts written only
inside ``--out``, parity passing on a correct conversion *and failing on planted defects* (a
perturbed weight; at int8 a channel defect and, through a planter the target supplies for its
own artifact format, a coarsened output scale), and a one-line error for a file that is not an
artifact. Its result lists what it checked and what it could not.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pytest

from edgex.plugins import BackendStatus, EdgexError, TargetSpec


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


def channel_scaled(model: Any, factor: float = 1.5, channel: int = 0) -> Any:
    """A copy of ``model`` whose last weight layer computes output ``channel`` ``factor`` x (weight
    and bias): the channel defect, planted in the model so that it fits every target."""
    import torch

    bad = copy.deepcopy(model)
    layer = [m for m in bad.modules() if isinstance(getattr(m, "weight", None), torch.nn.Parameter) and m.weight.dim() >= 2][-1]
    with torch.no_grad():
        layer.weight[channel] *= factor
        if getattr(layer, "bias", None) is not None:
            layer.bias[channel] *= factor
    return bad


#: plants a defect in an artifact: ``planter(artifact, folder)`` writes a defective copy of
#: ``artifact`` into ``folder`` (which exists and is empty) and returns the copy's path
Planter = Callable[[Path, Path], Path]

#: the artifact-level defects a target can supply planters for, and what each must do
PLANTED_DEFECTS = {
    "scale_channel": "one output channel of a weight layer computes 1.5x its value (its weight scale written 1.5x)",
    "scale_output": "the output's quantization scale written 4x coarser while the stored integers stay",
}

#: below fp32: precisions quantized to integers, where the int8 defects apply
_INTEGER = ("int8", "dynamic-int8")


@dataclass
class ConformanceResult:
    """What :func:`check_target_conformance` checked (``checks``, in order) and what it could not
    check, with why (``not_checked``); ``precisions`` holds each precision's report row."""

    target: str
    precisions: dict[str, Any]
    checks: list[str] = field(default_factory=list)
    not_checked: list[str] = field(default_factory=list)
    #: every planted defect, by "precision: defect", and whether parity failed it
    defects: dict[str, bool] = field(default_factory=dict)

    @property
    def defect_caught(self) -> bool:
        return bool(self.defects) and all(self.defects.values())


def _listing(folder: Path, skip: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if p.resolve() != skip.resolve()} if folder.is_dir() else set()


def check_target_conformance(
    target: str,
    out: Path,
    *,
    manager: Any = None,
    model: Any = None,
    example_inputs: Sequence[Any] | None = None,
    precisions: Sequence[str] | None = None,
    calibration: Any = None,
    planters: Mapping[str, Planter] | None = None,
) -> ConformanceResult:
    """Assert that ``target`` honours the edgex contract; returns what was checked.

    - it declares itself (a ``TargetSpec``) and reports a typed ``BackendStatus`` that says what
      to install when the backend is missing (the check is then skipped);
    - every precision (``precisions``, default all it offers) converts, passes parity, and writes
      its artifacts inside ``out``, nothing beside ``out`` or in the working directory;
    - parity FAILS on planted defects: at every precision, the first weight layer negated in the
      reference; at int8 and dynamic-int8, one output channel of the last weight layer 1.5x in
      the reference (or in the artifact, by ``planters["scale_channel"]``) and the output scale
      written 4x coarser in the artifact, by ``planters["scale_output"]`` -- artifact formats are
      the target's, so the target supplies artifact planters (``Planter``, see
      ``PLANTED_DEFECTS``); a defect without one is listed in ``not_checked``;
    - a file that is not its artifact is refused with a one-line error.
    """
    import numpy as np

    from edgex.core import api

    out = Path(out)
    planters = dict(planters or {})
    unknown = set(planters) - set(PLANTED_DEFECTS)
    assert not unknown, f"unknown planted defects {sorted(unknown)}: choose from {sorted(PLANTED_DEFECTS)}"
    manager = manager or api.plugin_manager()
    registered = manager.resolve_target(target)
    spec = registered.spec
    assert isinstance(spec, TargetSpec), f"{target}: edgex_targets must return TargetSpec"
    assert spec.precisions and spec.default_precision in spec.precisions, f"{target}: default precision must be one it offers"
    assert spec.artifact_kinds, f"{target}: declare the artifact kinds it writes"
    result = ConformanceResult(spec.name, {})
    result.checks.append(f"declares {spec.name}: precisions {', '.join(spec.precisions)}, artifacts {', '.join(spec.artifact_kinds)}")
    status = manager.backend_status(target)
    assert isinstance(status, BackendStatus), f"{target}: edgex_backend_status must return BackendStatus"
    if not status.available:
        assert status.install_hint or status.detail, f"{target}: an unavailable backend must say what to install"
        pytest.skip(f"{target}: {status.missing_message()}")
    result.checks.append(f"backend available: {status.backend}")
    if model is None:
        model, example_inputs = tiny_cnn()
    if calibration is None:
        calibration = (np.random.default_rng(0).standard_normal((64, *tuple(example_inputs[0].shape[1:]))).astype("float32"),)
    common = dict(example_inputs=example_inputs, calibration=calibration, samples=8, plugins=manager)
    out.mkdir(parents=True, exist_ok=True)
    beside, here = _listing(out.parent, out), _listing(Path.cwd(), out)

    def judged(artifact: Path, reference: Any, folder: Path, precision: str, defect: str) -> None:
        verdict = api.validate(artifact, reference, target=spec.name, out=folder, precision=precision, **common).targets[spec.name]
        caught = verdict.status == "failed"
        result.defects[f"{precision}: {defect}"] = caught
        assert caught, f"{target} {precision}: parity did not catch {defect} ({verdict.status}: {verdict.messages})"

    for precision in precisions or spec.precisions:
        folder = out / precision
        report = api.convert(model, [target], out=folder, precision=precision, **common)
        row = report.targets[spec.name]
        assert row.status == "passed", f"{target} {precision}: {row.status}: {row.messages}"
        assert row.parity is not None and row.parity.passed
        assert row.artifacts, f"{target} {precision}: no artifacts reported"
        for artifact in row.artifacts:
            path = (folder / artifact).resolve()
            assert path.exists(), f"{target}: reported artifact {artifact} does not exist"
            assert folder.resolve() in path.parents, f"{target}: artifact {path} written outside --out"
        assert not list(folder.glob(".edgex-tmp-*")), f"{target}: temporary folders left in --out"
        result.precisions[precision] = row
        result.checks.append(f"{precision}: converts, parity passes on {row.backend}, artifacts inside --out")
        artifact = folder / row.artifacts[0]
        judged(artifact, perturbed(model), folder / "defect-weight", precision, "a perturbed weight (first layer negated in the reference)")
        if precision not in _INTEGER:
            continue
        if "scale_channel" in planters:
            planted = planters["scale_channel"](artifact, _empty(folder / "planted-channel"))
            judged(planted, model, folder / "defect-channel", precision, f"a channel defect in the artifact ({PLANTED_DEFECTS['scale_channel']})")
        else:
            judged(artifact, channel_scaled(model), folder / "defect-channel", precision, "a channel defect (last weight layer's channel 0 1.5x in the reference)")
        if "scale_output" in planters:
            planted = planters["scale_output"](artifact, _empty(folder / "planted-output"))
            judged(planted, model, folder / "defect-output", precision, f"a coarsened output scale in the artifact ({PLANTED_DEFECTS['scale_output']})")
        else:
            result.not_checked.append(f"{precision}: a coarsened output scale (no 'scale_output' planter supplied for {spec.name}'s artifacts)")
    result.checks.extend(f"parity fails on {defect}" for defect in result.defects)

    # edgex check: the plugin's prediction for the model it just converted must be what happened
    prediction = api.check(model, [spec.name], example_inputs=example_inputs, plugins=manager).targets[0]
    if prediction.outcome == "unknown" and "edgex_check_operators" in prediction.reason:
        result.not_checked.append(f"edgex check: {prediction.reason}")
    else:
        assert prediction.outcome == "converts", f"{target}: edgex check predicted {prediction.outcome} ({prediction.reason}) for a model it converts"
        result.checks.append(f"edgex check predicts it converts, by {prediction.source or 'its plugin'}")

    garbage = _empty(out / "bad-input") / f"not-a-model{spec.artifact_kinds[0]}"
    garbage.write_bytes(b"this is not a model\n")
    try:
        row = api.validate(garbage, model, target=spec.name, out=out / "bad-input-report", **common).targets[spec.name]
        assert row.status == "error", f"{target}: a file that is not its artifact gave {row.status}: {row.messages}"
        message = " ".join(row.messages)
    except EdgexError as exc:
        message = str(exc)
    assert message and "\n" not in message, f"{target}: bad input must give a one-line error, got {message!r}"
    result.checks.append(f"refuses a file that is not its artifact in one line: {message}")

    assert _listing(out.parent, out) == beside, f"{target}: wrote beside --out: {sorted(_listing(out.parent, out) - beside)}"
    assert _listing(Path.cwd(), out) == here, f"{target}: wrote into the working directory: {sorted(_listing(Path.cwd(), out) - here)}"
    result.checks.append("wrote nothing beside --out or into the working directory")
    return result


def _empty(folder: Path) -> Path:
    folder.mkdir(parents=True)
    return folder


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
