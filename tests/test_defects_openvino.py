"""Issue 28: defects planted directly in OpenVINO IR files (tests/defects_openvino.py) at fp32,
fp16 and int8, judged by edgex's parity verdict on the ``openvino`` target (packages/edgex-openvino).

One conversion of ``examples:digits`` per precision per module; the planters' copies are read
back (the named constants changed, nothing else), then each is validated with a few parity
samples: the honest IR passes, every planted defect fails. Skipped where the openvino package is
not installed.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

pytest.importorskip("openvino")
if importlib.util.find_spec("edgex_openvino") is None:
    pytest.skip("the edgex-openvino distribution is not installed", allow_module_level=True)

from edgex.core import api  # noqa: E402

pytestmark = pytest.mark.slow

SAMPLES = 8
PRECISIONS = ("fp32", "fp16", "int8")


import defects_openvino as ov_defects  # noqa: E402  loaded by tests/conftest.py (no test folder is on sys.path)


@pytest.fixture(scope="module")
def irs(tmp_path_factory):
    """precision -> the IR (.xml) edgex's openvino target writes for examples:digits, converted
    once per module with the plugin loaded (edgex's suite loads no outside plugin by default)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EDGEX_LOAD_PLUGINS", "openvino")
        reference = api.load_model("examples:digits")
        out = tmp_path_factory.mktemp("openvino")
        irs = {}
        for precision in PRECISIONS:
            report = api.convert(reference, ["openvino"], out=out / precision, precision=precision, samples=SAMPLES)
            row = report.targets["openvino"]
            assert row.status == "passed", row.messages
            irs[precision] = out / precision / next(a for a in row.artifacts if str(a).endswith(".xml"))
        yield reference, irs


@pytest.fixture
def plugin(monkeypatch):
    monkeypatch.setenv("EDGEX_LOAD_PLUGINS", "openvino")


# --------------------------------------------------------------------------- reading the copies back


def _others_unchanged(honest, planted, layer, keys):
    """Every other weight layer's constants and the named layer's ``keys`` are as they were."""
    for index in range(len(ov_defects.weight_layer_names(honest))):
        before, after = ov_defects.constants(honest, index), ov_defects.constants(planted, index)
        for key in before:
            if index != layer or key in keys:
                assert np.array_equal(before[key], after[key]), (index, key)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_planters_change_what_they_say(irs, tmp_path, precision):
    _, artifacts = irs
    honest = artifacts[precision]
    names = ov_defects.weight_layer_names(honest)
    assert len(names) == 4  # three convolutions and the classifier's MatMul: "middle" is the second conv
    middle = 1
    before = ov_defects.constants(honest, "middle")
    stored = {"fp32": np.float32, "fp16": np.float16, "int8": np.int8}[precision]
    assert before["weight"].dtype == stored and before["weight"].shape == (32, 16, 3, 3)
    assert before["bias"].shape == (1, 32, 1, 1)

    scaled = ov_defects.scale_channel(honest, tmp_path / "scale.xml", layer="middle", channel=3, factor=1.5)
    assert scaled.path.with_suffix(".bin").exists() and scaled.layer == names[middle]
    after = ov_defects.constants(scaled.path, "middle")
    changed = "scale" if precision == "int8" else "weight"
    ratio = after[changed].astype(np.float64) / before[changed].astype(np.float64)
    assert np.allclose(ratio[3][np.isfinite(ratio[3])], 1.5, rtol=1e-3)
    assert np.array_equal(np.delete(after[changed], 3, axis=0), np.delete(before[changed], 3, axis=0))
    assert after["bias"][0, 3, 0, 0] == pytest.approx(1.5 * float(before["bias"][0, 3, 0, 0]), rel=1e-3)
    _others_unchanged(honest, scaled.path, middle, ["zero_point"] + (["weight"] if precision == "int8" else []))

    swapped = ov_defects.swap_channels(honest, tmp_path / "swap.xml", layer="middle", a=0, b=5)
    after = ov_defects.constants(swapped.path, "middle")
    for key in ("weight", "scale") if precision == "int8" else ("weight",):
        assert np.array_equal(after[key][[0, 5]], before[key][[5, 0]]) and not np.array_equal(after[key], before[key])
    assert np.array_equal(after["bias"][0, [0, 5]], before["bias"][0, [5, 0]])
    _others_unchanged(honest, swapped.path, middle, [])

    shifted = ov_defects.shift_bias(honest, tmp_path / "shift.xml", layer="middle", shift=0.5)
    after = ov_defects.constants(shifted.path, "middle")
    amount = 0.5 * float(np.abs(before["bias"].astype(np.float64)).max())
    assert shifted.details["amount"] == pytest.approx(amount)
    assert np.allclose(after["bias"].astype(np.float64) - before["bias"].astype(np.float64), amount, rtol=2e-3)
    _others_unchanged(honest, shifted.path, middle, ["weight", "scale"])

    import openvino as ov  # every copy still loads and runs on the CPU plugin

    core = ov.Core()
    image = np.random.default_rng(0).standard_normal((1, 1, 8, 8)).astype(np.float32)
    plain = core.compile_model(str(honest), "CPU")(image)[0]
    for planted in (scaled, swapped, shifted):
        assert not np.allclose(core.compile_model(str(planted.path), "CPU")(image)[0], plain)

    if precision != "int8":
        for plant in (ov_defects.scale_output, ov_defects.coarsen_scale):
            with pytest.raises(ValueError, match="float IR stores no quantization scale"):
                plant(honest, tmp_path / "q.xml")


def test_int8_scales_are_relocated_when_shared(irs, tmp_path):
    """NNCF's quantizers share range bytes (every low bound is offset 0, input_high and output_high
    one region): a patched range gets bytes of its own, the other quantizers keep theirs."""
    _, artifacts = irs
    honest = artifacts["int8"]
    ranges = ov_defects.quantizer_ranges(honest)
    assert ranges[0] == 0 and ranges[1] == ranges[3] > 0  # unsigned grid after a ReLU/pooling
    output = ov_defects.scale_output(honest, tmp_path / "out.xml", factor=4.0)
    assert np.allclose(ov_defects.quantizer_ranges(output.path), ranges * [1, 1, 4, 4])
    coarse = ov_defects.coarsen_scale(honest, tmp_path / "coarse.xml", factor=16.0)
    assert np.allclose(ov_defects.quantizer_ranges(coarse.path), ranges * 16)
    for planted in (output, coarse):
        for index in range(4):  # the other quantizers are untouched
            assert np.array_equal(ov_defects.quantizer_ranges(planted.path, index), ov_defects.quantizer_ranges(honest, index))
        assert planted.path.with_suffix(".bin").stat().st_size > honest.with_suffix(".bin").stat().st_size


# --------------------------------------------------------------------------- the parity verdict

#: defect -> plant(ir, out)
PLANTS = {
    "scale-middle-x1.5": lambda p, o: ov_defects.scale_channel(p, o, layer="middle", channel=1, factor=1.5),
    "swap-middle": lambda p, o: ov_defects.swap_channels(p, o, layer="middle", a=0, b=1),
    "shift-bias-middle": lambda p, o: ov_defects.shift_bias(p, o, layer="middle", shift=0.5),
    "output-scale-x4": lambda p, o: ov_defects.scale_output(p, o, factor=4.0),
    "coarsen-scale-x4": lambda p, o: ov_defects.coarsen_scale(p, o, factor=4.0),
    "coarsen-scale-x16": lambda p, o: ov_defects.coarsen_scale(p, o, factor=16.0),
}
#: a float IR stores no quantization scale
INT8_ONLY = ("output-scale-x4", "coarsen-scale-x4", "coarsen-scale-x16")
#: (precision, defect) today's criterion does not catch: strict xfail, to flip when it does
WRONG_TODAY: dict[tuple[str, str], str] = {
    # the last quantizer (the pooled features the classifier reads, range [0, 4.54]) on a 4x coarser
    # grid: 6 of its 8 bits left. Measured with 8 parity samples: SQNR 38.0 dB against the honest
    # IR's 42.7 dB, above the int8 floor (edgex's simulated reference minus 3 dB: 33.7 dB), and its
    # max |error| 0.17 inside the max bound: passed. x16 (4 bits left, 26.0 dB) is caught.
    ("int8", "coarsen-scale-x4"): "a 4x coarser last quantizer costs about 5 dB, inside the int8 tolerance",
}


def _cases():
    for precision in PRECISIONS:
        for defect in ("honest", *PLANTS):
            if precision != "int8" and defect in INT8_ONLY:
                continue
            reason = WRONG_TODAY.get((precision, defect))
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            yield pytest.param(precision, defect, marks=marks, id=f"{precision}-{defect}")


@pytest.mark.parametrize("precision,defect", list(_cases()))
def test_parity_verdict(irs, plugin, tmp_path, precision, defect):
    reference, artifacts = irs
    artifact = artifacts[precision]
    if defect != "honest":
        artifact = PLANTS[defect](artifact, tmp_path / "planted" / artifact.name).path
    report = api.validate(artifact, reference, target="openvino", out=tmp_path / "validate", precision=precision, samples=SAMPLES)
    row = report.targets["openvino"]
    sqnr = row.parity.sqnr_db if row.parity else None
    floor = row.parity.tolerance.min_sqnr_db if row.parity else None
    print(f"openvino {precision} {defect}: {row.status}, sqnr_db {sqnr}, min_sqnr_db {floor}, max_abs {row.parity.max_abs if row.parity else None}")
    assert row.status == ("passed" if defect == "honest" else "failed"), (sqnr, row.messages)
