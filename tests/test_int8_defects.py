"""Issue 15: int8 defects planted directly in artifact files (tests/defects.py).

The first tests read each planted file back: the planter changed exactly what it says and the file
still loads on its runtime. The parity-verdict tests (a planted defect => "failed", the honest
artifact => "passed") run the digits CNN and tests/models.py:resnet_tiny with 32 parity samples;
what today's criterion gets wrong is a strict xfail, to flip when the criterion is fixed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import defects  # tests/defects.py, loaded by tests/conftest.py (no test folder is on sys.path)
from edgex.core import api

pytestmark = pytest.mark.slow

SAMPLES = 32
def _seven_bit_onnx() -> bool:
    from edgex.targets.onnx.onnx import this_cpu_saturates_int8

    return this_cpu_saturates_int8() is not None


TODAY = pytest.mark.xfail(_seven_bit_onnx(), strict=True, reason="a defect inside 7-bit quantization noise (see WRONG_TODAY)")




MODELS = {"digits": "examples:digits", "resnet_tiny": f"{Path(__file__).with_name('models.py')}:resnet_tiny"}
ARTIFACTS = (("tflite", "int8"), ("onnx", "int8"), ("coreml", "dynamic-int8"))


def _calibration(reference):
    """The data an artifact is quantized with and validated against: the model's own, else a
    seeded draw (validate then calibrates edgex's reference on the same rows)."""
    if reference.calibration is not None:
        return None
    shape = reference.inputs[0].shape
    return np.random.default_rng(1).standard_normal((256, *shape[1:])).astype(np.float32)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """model name -> (reference, {artifact kind: path}): full-int8 .tflite, ONNX int8 and Core ML
    dynamic-int8, each converted once per module."""
    cache = {}

    def convert(name):
        if name not in cache:
            out = tmp_path_factory.mktemp(name)
            reference = api.load_model(MODELS[name])
            calibration = _calibration(reference)
            artifacts = {}
            for kind, precision in ARTIFACTS:
                report = api.convert(reference, [kind], out=out / kind, precision=precision, samples=SAMPLES, calibration=calibration)
                artifacts[kind] = out / kind / report.targets[kind].artifacts[0]
            cache[name] = reference, artifacts, calibration
        return cache[name]

    return convert


@pytest.fixture
def digits(converted):
    return converted("digits")


# --------------------------------------------------------------------------- reading the files back


def _tflite_layer(path, layer):
    from edgex.targets.litert.graph import read_graph

    graph = read_graph(path)
    ops = [op for op in graph.operators if op.name in defects.TFLITE_WEIGHT_OPS and graph.tensor(op.inputs[1]).per_channel]
    op = ops[-1] if layer == "last" else ops[(len(ops) - 1) // 2]
    weight = graph.tensor(op.inputs[1])
    return graph, weight, graph.value(weight.index), graph.value(op.inputs[2])


def _litert_runs(path):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], dtype=detail["dtype"]))
    interpreter.invoke()


def _tflm_runs(path):
    from tflite_micro.python.tflite_micro import runtime

    interpreter = runtime.Interpreter.from_file(str(path))
    interpreter.set_input(np.zeros(interpreter.get_input_details(0)["shape"], dtype=np.int8), 0)
    interpreter.invoke()


@pytest.mark.parametrize("layer", ["last", "middle"])
def test_tflite_scale_channel(digits, tmp_path, layer):
    honest = digits[1]["tflite"]
    planted = defects.scale_channel(honest, tmp_path / "m.tflite", layer=layer, channel=3, factor=1.5)
    _, before, w0, b0 = _tflite_layer(honest, layer)
    _, after, w1, b1 = _tflite_layer(planted.path, layer)
    ratio = np.array(after.scales) / np.array(before.scales)
    assert ratio[3] == pytest.approx(1.5) and np.allclose(np.delete(ratio, 3), 1.0)
    assert np.array_equal(w0, w1) and np.array_equal(b0, b1)
    _litert_runs(planted.path)
    _tflm_runs(planted.path)


def test_tflite_swap_channels(digits, tmp_path):
    honest = digits[1]["tflite"]
    planted = defects.swap_channels(honest, tmp_path / "m.tflite", layer="middle", a=0, b=5)
    _, before, w0, b0 = _tflite_layer(honest, "middle")
    _, after, w1, b1 = _tflite_layer(planted.path, "middle")
    axis = before.quantized_dimension
    assert np.array_equal(np.take(w1, [0, 5], axis=axis), np.take(w0, [5, 0], axis=axis))
    assert not np.array_equal(w0, w1), "the two channels' weights differ, so the swap is visible"
    assert (b1[0], b1[5]) == (b0[5], b0[0]) and (after.scales[0], after.scales[5]) == (before.scales[5], before.scales[0])
    _litert_runs(planted.path)
    _tflm_runs(planted.path)


@pytest.mark.parametrize("factor", [4.0, 16.0])
def test_tflite_scale_output_keeps_int8_values(digits, tmp_path, factor):
    from edgex.targets.litert.graph import read_graph

    honest = digits[1]["tflite"]
    planted = defects.scale_output(honest, tmp_path / "m.tflite", factor=factor)
    before, after = read_graph(honest), read_graph(planted.path)
    out = before.outputs[0]
    assert after.tensor(out).scales[0] == pytest.approx(factor * before.tensor(out).scales[0])
    assert _litert_int8_output(planted.path) == _litert_int8_output(honest), "only the scale changed: the int8 values did not"


def _litert_int8_output(path):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    interpreter.set_tensor(detail["index"], np.random.default_rng(0).integers(-128, 127, detail["shape"], dtype=np.int8))
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).tolist()


def test_tflite_drop_bias(digits, tmp_path):
    honest = digits[1]["tflite"]
    planted = defects.drop_bias(honest, tmp_path / "m.tflite", layer="last")
    _, _, w0, b0 = _tflite_layer(honest, "last")
    _, _, w1, b1 = _tflite_layer(planted.path, "last")
    assert np.any(b0 != 0) and np.all(b1 == 0) and np.array_equal(w0, w1)
    _tflm_runs(planted.path)


def _onnx_initializers(path):
    import onnx
    from onnx import numpy_helper

    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


def test_onnx_planters(digits, tmp_path):
    import onnxruntime as ort

    honest = digits[1]["onnx"]
    before = _onnx_initializers(honest)
    scaled = defects.scale_channel(honest, tmp_path / "scale.onnx", layer="middle", channel=3)
    after = _onnx_initializers(scaled.path)
    weight = scaled.layer
    scale = weight.replace("_quantized", "_scale")
    assert after[scale][3] == pytest.approx(1.5 * before[scale][3]) and np.allclose(np.delete(after[scale] / before[scale], 3), 1)

    swapped = defects.swap_channels(honest, tmp_path / "swap.onnx", layer="middle", a=0, b=5)
    after = _onnx_initializers(swapped.path)
    assert np.array_equal(after[weight][[0, 5]], before[weight][[5, 0]])

    output = defects.scale_output(honest, tmp_path / "out.onnx", factor=4.0)
    after = _onnx_initializers(output.path)
    assert after["output_planted_scale"] == pytest.approx(4 * before["output_scale"])
    assert after["output_scale"] == before["output_scale"], "the QuantizeLinear before it keeps its scale"

    dropped = defects.drop_bias(honest, tmp_path / "bias.onnx", layer="last")
    after = _onnx_initializers(dropped.path)
    assert np.any(before[dropped.layer] != 0) and np.all(after[dropped.layer] == 0)

    feed = {"image": np.random.default_rng(0).standard_normal((1, 1, 8, 8)).astype(np.float32)}
    results = {p.defect: ort.InferenceSession(str(p.path)).run(None, feed)[0] for p in (scaled, swapped, output, dropped)}
    plain = ort.InferenceSession(str(honest)).run(None, feed)[0]
    assert np.allclose(results["scale_output"], 4 * plain)


def test_coreml_planters(digits, tmp_path):
    from edgex.targets.coreml.interpreter import load_package

    honest = digits[1]["coreml"]

    def constexpr(path, name):
        package = load_package(path)
        function = package.program.functions[package.function]
        op = next(op for op in function.operations if op.outputs[0].name == name)
        return {key: np.array(var.val) for key, var in op.inputs.items() if var.val is not None}

    scaled = defects.scale_channel(honest, tmp_path / "scale.mlpackage", layer="last", channel=3)
    before, after = constexpr(honest, scaled.layer), constexpr(scaled.path, scaled.layer)
    ratio = after["scale"].astype(np.float32).ravel() / before["scale"].astype(np.float32).ravel()
    assert ratio[3] == pytest.approx(1.5, rel=1e-3) and np.allclose(np.delete(ratio, 3), 1)

    swapped = defects.swap_channels(honest, tmp_path / "swap.mlpackage", layer="middle", a=0, b=5)
    before, after = constexpr(honest, swapped.layer), constexpr(swapped.path, swapped.layer)
    data = "quantized_data" if "quantized_data" in before else "data"
    assert np.array_equal(after[data][[0, 5]], before[data][[5, 0]])
    with pytest.raises(ValueError, match="float"):
        defects.scale_output(honest, tmp_path / "out.mlpackage")


# --------------------------------------------------------------------------- the parity verdict

#: defect -> plant(artifact, out), the issue's list (the same as benchmarks/int8_defects.py plants)
PLANTS = {
    "scale-last-x1.5": lambda p, o: defects.scale_channel(p, o, layer="last", channel=1),
    "scale-middle-x1.5": lambda p, o: defects.scale_channel(p, o, layer="middle", channel=1),
    "swap-middle": lambda p, o: defects.swap_channels(p, o, layer="middle", a=0, b=1),
    "output-scale-x4": lambda p, o: defects.scale_output(p, o, factor=4.0),
    "output-scale-x16": lambda p, o: defects.scale_output(p, o, factor=16.0),
    "x4+scale-last": lambda p, o: defects.scale_channel(defects.scale_output(p, o.with_name("x4-" + o.name), factor=4.0).path, o,
                                                        layer="last", channel=1),
    "drop-bias-last": lambda p, o: defects.drop_bias(p, o, layer="last"),
}
#: target -> (artifact of the digits fixture it validates, precision)
TARGETS = {"tflite": ("tflite", "int8"), "coral": ("tflite", "int8"), "mcu": ("tflite", "int8"),
           "onnx": ("onnx", "int8"), "coreml": ("coreml", "dynamic-int8")}
#: (model, target, defect) today's criterion gets wrong (benchmarks/int8_defects.py, 32 samples)
WRONG_TODAY = {
    # onnxruntime on a CPU without VNNI gets 7-bit weights (reduce_range, targets/onnx.py): there one
    # channel x1.5 in resnet_tiny's middle 1x1 downsample conv costs 3.2 dB, inside what honest 7-bit
    # quantization differs from edgex's simulation on other models (up to 1.1 dB below it, plus the
    # 3 dB margin). Caught on the 8-bit tflite/mcu artifacts. Issue 15 leaves this one open.
    ("resnet_tiny", "onnx", "scale-middle-x1.5"),
}
#: the targets each model is judged on: coral and mcu validate the same .tflite as tflite, so the
#: second model runs the three artifact kinds only
MODEL_TARGETS = {"digits": ("tflite", "coral", "mcu", "onnx", "coreml"), "resnet_tiny": ("tflite", "onnx", "coreml")}
#: Core ML programs have float outputs: no output scale to write wrong
IMPOSSIBLE = {("coreml", d) for d in ("output-scale-x4", "output-scale-x16", "x4+scale-last")}


def _cases():
    for model, targets in MODEL_TARGETS.items():
        for target in targets:
            for defect in ("honest", *PLANTS):
                if (target, defect) not in IMPOSSIBLE:
                    marks = [TODAY] if (model, target, defect) in WRONG_TODAY else []
                    yield pytest.param(model, target, defect, marks=marks, id=f"{model}-{target}-{defect}")


@pytest.mark.parametrize("model,target,defect", list(_cases()))
def test_parity_verdict(converted, tmp_path, model, target, defect):
    reference, artifacts, calibration = converted(model)
    kind, precision = TARGETS[target]
    artifact = artifacts[kind]
    if defect != "honest":
        artifact = PLANTS[defect](artifact, tmp_path / artifact.name).path
    report = api.validate(artifact, reference, target=target, out=tmp_path / "validate", precision=precision, samples=SAMPLES, calibration=calibration)
    row = report.targets[target]
    assert row.status == ("passed" if defect == "honest" else "failed"), row.messages


# --------------------------------------------------------------------------- an LSTM, rewritten for mcu and coral


@pytest.fixture(scope="module")
def lstm_int8(tmp_path_factory):
    """tests/models.py:lstm_long (nn.LSTM 8 -> 16 over 20 steps) converted for mcu, where
    ``lstm-steps`` writes it out per step: (reference, the full-int8 .tflite, calibration)."""
    pytest.importorskip("tflite_micro")
    reference = api.load_model(f"{Path(__file__).with_name('models.py')}:lstm_long")
    calibration = _calibration(reference)
    out = tmp_path_factory.mktemp("lstm")
    report = api.convert(reference, ["mcu"], out=out, samples=SAMPLES, calibration=calibration)
    row = report.targets["mcu"]
    assert row.status == "passed" and [e["name"] for e in row.details["rewrites"] if e["status"] == "applied"] == ["lstm-steps"], row.messages
    return reference, out / row.artifacts[0], calibration


@pytest.mark.parametrize("target", ["mcu", "coral"])
@pytest.mark.parametrize("defect", ["honest", "swap-middle"])
def test_a_defect_inside_a_rewritten_lstm_is_caught(lstm_int8, tmp_path, target, defect):
    """The LSTM itself cannot be simulated (one recurrent op), the model the target converts can:
    the tolerance comes from that, and it still fails a planted defect in the recurrent part (two
    rows of the input-to-hidden gate weights, which every step shares, swapped: about 6 dB below
    what honest int8 reaches, while its max error stays inside the max bound, so the SQNR rule of
    the simulated reference is what catches it)."""
    reference, artifact, calibration = lstm_int8
    if defect != "honest":
        artifact = defects.swap_channels(artifact, tmp_path / "swapped.tflite", layer="middle", a=0, b=5).path
    report = api.validate(artifact, reference, target=target, out=tmp_path / "validate", samples=SAMPLES, calibration=calibration)
    row = report.targets[target]
    simulated = row.details.get("int8_reference")
    assert simulated is not None and "as rewritten for this target (lstm-steps)" in simulated["calibration"], row.messages
    assert "rewrites" not in row.details  # validate converted nothing
    assert row.status == ("passed" if defect == "honest" else "failed"), row.messages
