"""The one parity implementation: metrics, tolerances, layout and quantization undone, defects caught."""

import math

import numpy as np
import pytest
import torch

from edgex.core import layout, parity
from edgex.core.errors import UsageError
from edgex.core.loading import load_model
from edgex.core.types import ArtifactIO, QuantParams, TensorBinding
from edgex.plugins.testing import tiny_cnn

RNG = np.random.default_rng(0)


def _outputs(n=8, classes=10, scale=3.0):
    return [[(RNG.standard_normal((1, classes)) * scale).astype(np.float32)] for _ in range(n)]


def _tol(atol):
    return [parity.Tolerance(atol, 0.0, "test")]


def test_identical_outputs_pass_with_perfect_metrics():
    ref = _outputs()
    report = parity.compare(ref, [[o.copy() for o in s] for s in ref], ["logits"], _tol(1e-6))
    assert report.passed and report.max_abs == 0.0 and report.cosine == pytest.approx(1.0)
    assert report.sqnr_db == parity.SQNR_CAP_DB and report.top1_agreement == 1.0


def test_metrics_follow_their_definitions():
    ref = [[np.array([[1.0, -2.0, 3.0]], np.float32)]]
    got = [[np.array([[1.5, -2.0, 3.0]], np.float32)]]
    report = parity.compare(ref, got, ["y"], _tol(0.1))
    assert report.max_abs == pytest.approx(0.5) and report.mean_abs == pytest.approx(0.5 / 3)
    assert report.max_rel == pytest.approx(0.5 / 3.0)
    assert report.sqnr_db == pytest.approx(10 * math.log10(14 / 0.25))
    assert not report.passed and report.outputs[0].within_tolerance == pytest.approx(2 / 3)
    assert "exceeds the tolerance" in report.messages[-1]


def test_top1_is_none_for_non_class_outputs():
    ref = [[RNG.standard_normal((1, 4, 5, 5)).astype(np.float32)]]
    assert parity.compare(ref, ref, ["map"], _tol(0)).top1_agreement is None


def test_nan_in_artifact_fails_and_is_named():
    ref = _outputs(2)
    got = [[o.copy() for o in s] for s in ref]
    got[1][0][0, 3] = np.nan
    report = parity.compare(ref, got, ["logits"], _tol(1.0))
    assert not report.passed and any("NaN" in m for m in report.messages)


def test_nan_in_reference_is_a_usage_error():
    class Broken(torch.nn.Module):
        def forward(self, x):
            return torch.log(x - 100)  # NaN for every realistic input

    model = load_model("broken", module=Broken(), example_inputs=(torch.zeros(1, 4),))
    with pytest.raises(UsageError, match="NaN or infinite"):
        parity.reference_outputs(model, [(np.zeros((1, 4), np.float32),)])


def test_fp32_tolerance_comes_from_the_measured_noise_floor():
    net, example = tiny_cnn()
    model = load_model("tiny", module=net, example_inputs=example)
    batches = [(RNG.standard_normal((1, 3, 16, 16)).astype(np.float32),) for _ in range(6)]
    reference = parity.reference_outputs(model, batches)
    noise = parity.noise_floor(model, batches, reference)
    assert noise.per_output is not None and 0 < noise.per_output[0] < 1e-5  # relative: near fp32 epsilon
    tol = parity.tolerance_for("fp32", 0, reference, noise)
    peak = max(float(np.abs(s[0]).max()) for s in reference)
    assert tol.atol == pytest.approx(parity.FP32_NOISE_FACTOR * noise.per_output[0] * peak)
    assert "noise floor" in tol.source and "fp64" in tol.source


def test_tolerances_scale_with_precision():
    reference = _outputs()
    noise = parity.NoiseFloor((1e-7,), "test")
    fp32 = parity.tolerance_for("fp32", 0, reference, noise)
    fp16 = parity.tolerance_for("fp16", 0, reference, noise)
    int8 = parity.tolerance_for("int8", 0, reference, noise, QuantParams(0.05, 3, "int8"))
    assert fp32.atol < fp16.atol < int8.atol
    assert int8.atol == pytest.approx(parity.INT8_STEPS * 0.05) and "output scale" in int8.source
    user = parity.tolerance_for("int8", 0, reference, noise, atol=0.5)
    assert (user.atol, user.source) == (0.5, "user (--atol/--rtol)")


def test_quantize_round_trip_and_rounding():
    q = QuantParams(0.1, -3, "int8")
    x = np.array([-20.0, -0.25, 0.05, 0.15, 1.0, 20.0], np.float32)
    codes = layout.quantize(x, q)
    assert codes.dtype == np.int8 and codes.tolist() == [-128, -6, -2, -1, 7, 127]  # half away from zero, clamped
    assert np.allclose(layout.dequantize(codes[1:5], q), [-0.3, 0.1, 0.2, 1.0], atol=1e-6)


def test_layout_permutation_round_trip():
    x = RNG.standard_normal((1, 3, 4, 5)).astype(np.float32)
    binding = TensorBinding("x", (1, 4, 5, 3), "float32", "NHWC", (0, 2, 3, 1))
    native = layout.to_artifact(x, binding)
    assert native.shape == (1, 4, 5, 3)
    assert np.array_equal(layout.from_artifact(native, binding), x)
    assert layout.infer_permutation((1, 3, 4, 5), (1, 4, 5, 3)) == (0, 2, 3, 1)
    assert layout.infer_permutation((1, 3, 4, 5), (1, 3, 4, 5)) == (0, 1, 2, 3)
    assert layout.infer_permutation((1, 3, 4, 5), (1, 5, 4, 3)) is None


# --------------------------------------------------------------------------- planted defects


def _torch_outputs(net, batches):
    with torch.no_grad():
        return [[net(torch.from_numpy(b[0])).numpy()] for b in batches]


@pytest.fixture
def cnn_case():
    net, example = tiny_cnn()
    model = load_model("tiny", module=net, example_inputs=example)
    batches = [(RNG.standard_normal((1, 3, 16, 16)).astype(np.float32),) for _ in range(8)]
    reference = parity.reference_outputs(model, batches)
    noise = parity.noise_floor(model, batches, reference)
    return net, batches, reference, [parity.tolerance_for("fp32", 0, reference, noise)]


def test_honest_recomputation_passes(cnn_case):
    net, batches, reference, tol = cnn_case
    again = _torch_outputs(net, batches)
    assert parity.compare(reference, again, ["output"], tol).passed


def test_perturbed_weight_is_caught(cnn_case):
    net, batches, reference, tol = cnn_case
    with torch.no_grad():
        net[0].weight[2, 1, 1, 1] += 0.01
    report = parity.compare(reference, _torch_outputs(net, batches), ["output"], tol)
    assert not report.passed and report.max_abs > 10 * tol[0].atol


def test_swapped_channel_order_is_caught(cnn_case):
    net, batches, reference, tol = cnn_case
    swapped = [(b[0][:, ::-1].copy(),) for b in batches]  # RGB fed as BGR
    assert not parity.compare(reference, _torch_outputs(net, swapped), ["output"], tol).passed


def test_missing_layout_permutation_is_caught(cnn_case):
    """An NHWC artifact described as NCHW: core feeds it the wrong axes."""
    net, batches, reference, tol = cnn_case
    wrong = TensorBinding("x", (1, 3, 16, 16), "float32", "NCHW", None)
    fed = [(layout.to_artifact(b[0], wrong).reshape(1, 16, 16, 3).transpose(0, 3, 1, 2).copy(),) for b in batches]
    assert not parity.compare(reference, _torch_outputs(net, fed), ["output"], tol).passed


def test_wrong_output_scale_is_caught():
    reference = _outputs(16, scale=2.0)
    peak = max(float(np.abs(s[0]).max()) for s in reference)
    true_q = QuantParams(peak / 127, 0, "int8")  # the full int8 range, as calibration would give
    codes = [[layout.quantize(s[0], true_q)] for s in reference]
    noise = parity.NoiseFloor((1e-6,), "test")
    good = [[layout.from_artifact(c[0], TensorBinding("y", (1, 10), "int8", quant=true_q))] for c in codes]
    tol = [parity.tolerance_for("int8", 0, reference, noise, true_q)]
    assert parity.compare(reference, good, ["y"], tol).passed
    wrong_q = QuantParams(true_q.scale * 1.25, 0, "int8")
    bad = [[layout.from_artifact(c[0], TensorBinding("y", (1, 10), "int8", quant=wrong_q))] for c in codes]
    assert not parity.compare(reference, bad, ["y"], [parity.tolerance_for("int8", 0, reference, noise, wrong_q)]).passed


def test_outputs_are_matched_by_name_then_order():
    from edgex.core.layout import match_outputs

    io = ArtifactIO(None, "fp32", (), (TensorBinding("b", (1,), "float32"), TensorBinding("a", (1,), "float32")))
    assert match_outputs(["a", "b"], io) == [1, 0]
    assert match_outputs(["x", "y"], io) == [0, 1]
