"""Verdicts below fp32 and references that cannot judge: a check that cannot fail is never a pass.

- A reference whose output does not depend on its input is ``inconclusive`` (exit 1) on every target.
- The fp16-overflow MLP (hidden activations ~1.3e5, outputs ~100) fails on every fp16 target,
  naming the module, although the CPU backends compute it in fp32 and match torch.
- The int8 tolerance comes from edgex's simulated reference, not from the artifact: a coarser
  output scale cannot widen it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgex.core import api, parity
from edgex.core.loading import load_model
from edgex.core.types import QuantParams

MODELS = Path(__file__).parent / "models.py"


@pytest.fixture(scope="module")
def manager():
    from edgex.core.plugin_manager import PluginManager

    return PluginManager(load_entry_points=False)


@pytest.mark.parametrize(("factory", "seen"), [("zero_classifier", "is 0 for every input"), ("constant_classifier", "is the same for every input")])
def test_a_reference_that_ignores_its_input_is_inconclusive(tmp_path, manager, factory, seen):
    report = api.convert(f"{MODELS}:{factory}", ["onnx"], out=tmp_path / "out", samples=8, plugins=manager)
    row = report.targets["onnx"]
    assert row.status == "inconclusive", row.messages
    assert any(seen in m and "--weights" in m for m in row.messages), row.messages
    assert report.exit_code == 1 and report.to_json()["targets"]["onnx"]["status"] == "inconclusive"


def test_a_trained_model_is_not_inconclusive(tmp_path, manager):
    report = api.convert("examples:digits", ["onnx"], out=tmp_path / "out", samples=8, plugins=manager)
    assert report.targets["onnx"].status == "passed", report.targets["onnx"].messages


FP16_TARGETS = ["onnx", "jetson", "coreml", pytest.param("tflite", marks=pytest.mark.slow)]


@pytest.mark.parametrize("target", FP16_TARGETS)
def test_fp16_overflow_fails_on_every_fp16_target(tmp_path, manager, target):
    report = api.convert(f"{MODELS}:fp16_overflow_mlp", [target], precision="fp16", out=tmp_path / "out", samples=8, plugins=manager)
    row = report.targets[target]
    assert row.status == "failed", (row.status, row.messages)
    assert any("fp16 overflow" in m and "'fc1'" in m for m in row.messages), row.messages
    assert row.to_json().get("fp16_arithmetic"), "the row says what the backend really computed in"


def test_fp16_without_overflow_passes(tmp_path, manager):
    report = api.convert("examples:digits", ["onnx"], precision="fp16", out=tmp_path / "out", samples=8, plugins=manager)
    assert report.targets["onnx"].status == "passed", report.targets["onnx"].messages


# --------------------------------------------------------------------------- the int8 rule, unit by unit


class _Sim:
    """A simulated reference whose error against float is ``noise`` per element."""

    scheme = "int8"

    def __init__(self, reference, noise):
        self.outputs = [[o + noise for o in sample] for sample in reference]


def _reference(seed=0, n=16):
    rng = np.random.default_rng(seed)
    return [[rng.normal(size=(1, 10)).astype(np.float32) * 3] for _ in range(n)]


def _judge(reference, actual, tolerance):
    return parity.compare(reference, actual, ["logits"], [tolerance])


def test_int8_bound_comes_from_the_simulated_reference_not_the_artifact():
    reference = _reference()
    step = parity.range_step(reference, 0)
    sim = _Sim(reference, 0.0)
    sim.outputs = [[np.round(o / step) * step for o in sample] for sample in reference]  # honest int8 outputs
    honest_quant = QuantParams(step, 0, "int8")
    tol = parity.tolerance_for("int8", 0, reference, parity.NoiseFloor(None, ""), honest_quant, simulated=sim)
    e_sim = parity.output_error(reference, sim.outputs, 0)[0]
    assert tol.atol == pytest.approx(max(3 * e_sim, 2 * step)) and tol.min_sqnr_db is not None and not tol.problem
    # an artifact that coarsened its output scale 16x: the tolerance does not grow with it, and the scale is flagged
    coarse = parity.tolerance_for("int8", 0, reference, parity.NoiseFloor(None, ""), QuantParams(16 * step, 0, "int8"), simulated=sim)
    assert coarse.atol <= tol.atol and "calibration problem" in coarse.problem
    requantized = [[np.round(o / (16 * step)) * 16 * step for o in sample] for sample in reference]
    assert not _judge(reference, requantized, coarse).passed
    honest = [[np.round(o / step + 0.01) * step for o in sample] for sample in reference]  # rounded a little differently
    assert _judge(reference, honest, tol).passed


def test_int8_sqnr_must_stay_near_the_simulated_reference():
    reference = _reference()
    sim = _Sim(reference, 0.01)
    tol = parity.tolerance_for("int8", 0, reference, parity.NoiseFloor(None, ""), None, simulated=sim)
    # every element inside the per-element bound, but the error everywhere: SQNR far below sqnr_sim
    smeared = [[o + np.sign(o) * 0.9 * tol.atol for o in sample] for sample in reference]
    judged = _judge(reference, smeared, tol)
    assert judged.outputs[0].within_tolerance == 1.0 and not judged.passed
    assert any("SQNR" in m for m in judged.messages)


def test_an_sqnr_under_the_floor_never_passes_below_fp32():
    reference = _reference()
    noise = parity.NoiseFloor(None, "")
    tol = parity.tolerance_for("fp16", 0, reference, noise)
    assert tol.min_sqnr_db == parity.MIN_SQNR_DB
    garbage = [[np.zeros_like(o) for o in sample] for sample in reference]  # 0 dB: the error is the signal
    loose = parity.Tolerance(1e9, 0.0, "a bound that allows anything", parity.MIN_SQNR_DB)
    assert not _judge(reference, garbage, loose).passed


def test_validate_of_an_int8_artifact_without_data_refuses(tmp_path, manager):
    """Standard-normal inputs fall outside an int8 artifact's input range: a false alarm. With no
    data at all, validate says what to pass instead."""
    from edgex.core.errors import UsageError

    converted = api.convert("examples:digits", ["tflite"], precision="int8", out=tmp_path / "out", samples=8, plugins=manager)
    assert converted.targets["tflite"].status == "passed", converted.targets["tflite"].messages
    artifact = tmp_path / "out" / converted.targets["tflite"].artifacts[0]
    model = load_model("examples:digits")
    bare = type(model)(spec=model.spec, inputs=model.inputs, output_names=model.output_names, example_inputs=model.example_inputs, module=model.module)
    with pytest.raises(UsageError, match="--calibration"):
        api.validate(artifact, bare, target="tflite", out=tmp_path / "v", samples=8, plugins=manager)
    # with the data it was calibrated on, the same artifact passes
    report = api.validate(artifact, "examples:digits", target="tflite", out=tmp_path / "v2", samples=8, plugins=manager)
    assert report.targets["tflite"].status == "passed", report.targets["tflite"].messages
    assert "int8_reference" in report.to_json()["targets"]["tflite"]
