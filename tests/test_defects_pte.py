"""Issue 28 on target ``executorch``: every defect kind planted in a real XNNPACK .pte, at fp32 and
int8, is caught by ``validate``; the honest .pte passes.

The digits CNN is converted once per precision (module fixtures). Its classifier (a Linear with no
BatchNorm folded into it) is the known layer the ``pte_*`` planters of tests/defects.py find in the
file by value: its float32 weight and bias at fp32; at int8 its int8 weight, their float32
per-channel scales, its int32 bias and that bias's float32 scales (``xnnpack_int32_bias``).

Defects (channel 3, and 5 for the swap):

- ``scale_channel``: the channel's weights x1.5 (fp32: the float32 row; int8: its weight scale).
- ``swap_channels``: channels 3 and 5 swapped, weights and bias (int8: int8 rows, weight scales,
  int32 bias values and bias scales).
- ``shift_bias``: the channel's bias + ``BIAS_SHIFT`` = 0.5 logit. The digits CNN's logits have an
  RMS of about 4.7 and span about 23 (its int8 output scale is 0.09), so that is ~1/10 of their
  RMS, ~2% of their range: an argmax rarely changes, but one logit in ten is off by 0.5
  everywhere (SQNR ~29.5 dB against the honest 133 dB at fp32 and ~40 dB at int8).
- ``coarsen_output`` (int8 only; fp32 has no output scale): the output scale x16.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("executorch")
pytest.importorskip("torchao")

import defects  # noqa: E402  tests/defects.py, loaded by tests/conftest.py (no test folder is on sys.path)
from edgex.core import api  # noqa: E402

pytestmark = pytest.mark.slow

SAMPLES = 8
MODEL = "examples:digits"
CHANNEL, OTHER = 3, 5
BIAS_SHIFT = 0.5  # logits; see the module doc
DEFECTS = ("scale_channel", "swap_channels", "shift_bias", "coarsen_output")
PRECISIONS = ("fp32", "int8")




@pytest.fixture(scope="module")
def classifier():
    """The digits CNN's last Linear (weight [out, in], bias [out]) as the converter stores it."""
    layer = api.load_model(MODEL).module.classifier
    return layer.weight.detach().numpy().astype(np.float32), layer.bias.detach().numpy().astype(np.float32)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """precision -> (the .pte, its convert row, the honest validate row), converted once each."""
    converted = {}
    for precision in PRECISIONS:
        out = tmp_path_factory.mktemp(f"pte-{precision}")
        row = api.convert(MODEL, ["executorch"], out=out, precision=precision, samples=SAMPLES).targets["executorch"]
        assert row.status == "passed", row.messages
        path = out / row.artifacts[0]
        converted[precision] = (path, row, _validate(path, out / "honest", precision))
    return converted


def _validate(path: Path, out: Path, precision: str):
    return api.validate(path, MODEL, target="executorch", precision=precision, samples=SAMPLES, out=out).targets["executorch"]


def _plant(defect: str, precision: str, path: Path, row, weight: np.ndarray, bias: np.ndarray, bad: Path):
    if defect == "scale_channel":
        if precision == "fp32":
            return defects.pte_scale_weight(path, bad, weight, channel=CHANNEL, factor=1.5)
        return defects.pte_scale_int8_channel(path, bad, weight, channel=CHANNEL, factor=1.5)
    if defect == "swap_channels":
        return defects.pte_swap_channels(path, bad, weight, bias, a=CHANNEL, b=OTHER)
    if defect == "shift_bias":
        return defects.pte_shift_bias(path, bad, weight, bias, channel=CHANNEL, shift=BIAS_SHIFT)
    return defects.pte_coarsen_output(path, bad, row.io["outputs"][0]["quantization"]["scale"], factor=16.0)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_the_honest_pte_passes(artifacts, precision):
    _, _, honest = artifacts[precision]
    assert (honest.status, honest.precision) == ("passed", precision), honest.messages


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("defect", DEFECTS)
def test_every_planted_defect_is_caught(artifacts, classifier, defect, precision, tmp_path):
    if (defect, precision) == ("coarsen_output", "fp32"):
        pytest.skip("an fp32 program's output is float: no scale is stored to coarsen")
    path, row, honest = artifacts[precision]
    weight, bias = classifier
    planted = _plant(defect, precision, path, row, weight, bias, tmp_path / "bad.pte")
    assert planted.path.read_bytes() != path.read_bytes() and planted.path.stat().st_size == path.stat().st_size
    verdict = _validate(planted.path, tmp_path / "out", precision)
    print(f"{defect} {precision}: {verdict.status}, SQNR honest {honest.parity.sqnr_db:.1f} dB, defective {verdict.parity.sqnr_db:.1f} dB")
    assert verdict.status == "failed", (honest.parity.sqnr_db, verdict.parity.sqnr_db, verdict.messages)
    assert verdict.parity.sqnr_db < honest.parity.sqnr_db


def test_int8_bias_is_found_as_int32_at_the_input_scale(artifacts, classifier):
    """round(bias / (input_scale x weight_scale)) is what the int8 program holds, and its scales."""
    path = artifacts["int8"][0]
    weight, bias = classifier
    ints, bias_scales, input_scale = defects.xnnpack_int32_bias(path, weight, bias)
    _, scales = defects.xnnpack_int8_weight(weight)
    assert ints.dtype == np.int32 and 0 < input_scale < 1
    np.testing.assert_allclose(bias_scales, input_scale * scales, rtol=1e-6)
    np.testing.assert_allclose(ints * bias_scales, bias, atol=float(bias_scales.max()))
    data = path.read_bytes()
    assert data.count(ints.tobytes()) == data.count(bias_scales.tobytes()) == 1
    assert np.ascontiguousarray(bias).tobytes() not in data  # no float32 bias at int8


def test_the_shifted_int8_bias_lands_on_its_grid(artifacts, classifier, tmp_path):
    weight, bias = classifier
    planted = defects.pte_shift_bias(artifacts["int8"][0], tmp_path / "bad.pte", weight, bias, channel=CHANNEL, shift=BIAS_SHIFT)
    assert planted.details["precision"] == "int8" and abs(planted.details["shift"] - BIAS_SHIFT) < 1e-3


@pytest.mark.parametrize("precision", PRECISIONS)
def test_planters_refuse_a_layer_not_in_the_file(artifacts, precision, tmp_path):
    """A weight that is not the file's (nor its int8 form) is refused; nothing is written."""
    path = artifacts[precision][0]
    stranger = np.random.default_rng(0).standard_normal((10, 64)).astype(np.float32)
    with pytest.raises(ValueError, match="neither as float32, float16 nor as XNNPACK int8"):
        defects.pte_swap_channels(path, tmp_path / "bad.pte", stranger, None, a=0, b=1)
    with pytest.raises(ValueError, match="neither as float32, float16 nor as XNNPACK int8"):
        defects.pte_shift_bias(path, tmp_path / "bad.pte", stranger, np.zeros(10, np.float32))
    assert not (tmp_path / "bad.pte").exists()


def test_a_bias_not_in_the_file_is_refused(artifacts, classifier, tmp_path):
    weight, bias = classifier
    for precision in PRECISIONS:
        with pytest.raises(ValueError, match="not once|not one"):
            defects.pte_shift_bias(artifacts[precision][0], tmp_path / "bad.pte", weight, bias + 1.0, channel=CHANNEL)
    assert not (tmp_path / "bad.pte").exists()
