"""Every target from a ``torch.export`` program (``.pt2``, what ``edgex compress`` writes):
real exports, real converters, real runtimes; the README's int8 command on a ``.pt2``."""

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from edgex.core import api
from edgex.examples import load_example
from edgex.plugins import convert_opset
@pytest.fixture(scope="module")
def digits():
    return load_example("digits")  # big enough that coreml's int8 weight compression compresses


@pytest.fixture(scope="module")
def calibration(digits):
    return digits.calibration[0][:32]


@pytest.fixture(scope="module")
def pt2(digits, tmp_path_factory):
    import torch

    path = tmp_path_factory.mktemp("pt2") / "digits.pt2"
    torch.export.save(torch.export.export(digits.module, digits.example_inputs), str(path))
    return path


def _converts_and_passes(pt2, calibration, target, precision, tmp_path, edgex_manager, **kwargs):
    report = api.convert(str(pt2), [target], out=tmp_path, precision=precision, calibration=(calibration,), samples=4, plugins=edgex_manager, **kwargs)
    row = report.targets[target]
    assert report.model["kind"] == "torch"
    assert (row.status, row.precision) == ("passed", precision), row.messages
    assert not any("not supported yet" in m for m in row.messages)  # the .pt2 module's refused train()/eval()
    return row


def test_onnx_from_pt2(pt2, calibration, tmp_path, edgex_manager):
    row = _converts_and_passes(pt2, calibration, "onnx", "int8", tmp_path, edgex_manager)
    assert row.converter.startswith("torch.onnx.export (dynamo, opset 18)")


def test_jetson_exports_opset_17_from_pt2(pt2, calibration, tmp_path, edgex_manager):
    row = _converts_and_passes(pt2, calibration, "jetson", "int8", tmp_path, edgex_manager)
    model = onnx.load(str(tmp_path / row.artifacts[0]))
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 17
    assert "-> onnx.version_converter (opset 17)" in row.converter and row.details["tensorrt"]["opset"] == 17


def test_jetson_opset_17_keeps_the_scopes_explain_reads(pt2, tmp_path, edgex_manager):
    """onnx's version converter drops node metadata; without it a Conv with batch norm folded in
    is read as the bare conv and explain flags an honest artifact."""
    report = api.convert(str(pt2), ["jetson"], out=tmp_path / "out", precision="fp32", samples=4, plugins=edgex_manager)
    row = report.targets["jetson"]
    assert row.status == "passed" and "onnx.version_converter" in row.converter
    explained = api.explain(tmp_path / "out" / row.artifacts[0], str(pt2), out=tmp_path / "explain", samples=4, plugins=edgex_manager)
    assert explained.first_flagged is None and len(explained.matched) >= 4


@pytest.mark.slow
def test_tflite_from_pt2_through_litert_torch(pt2, calibration, tmp_path, edgex_manager):
    row = _converts_and_passes(pt2, calibration, "tflite", "int8", tmp_path, edgex_manager)
    assert row.converter.startswith("litert-torch") and not any("converter litert-torch failed" in m for m in row.messages)


@pytest.mark.slow
def test_tflite_from_pt2_through_onnx2tf(pt2, calibration, tmp_path, edgex_manager):
    row = _converts_and_passes(pt2, calibration, "tflite", "int8", tmp_path, edgex_manager, options={"tflite_converter": "onnx2tf"})
    assert "onnx2tf" in row.converter


@pytest.mark.slow
def test_coral_from_pt2(pt2, calibration, tmp_path, edgex_manager):
    row = _converts_and_passes(pt2, calibration, "coral", "int8", tmp_path, edgex_manager)
    assert row.converter.startswith("litert-torch")


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp16", "dynamic-int8"])
def test_coreml_from_pt2(pt2, calibration, precision, tmp_path, edgex_manager):
    _converts_and_passes(pt2, calibration, "coreml", precision, tmp_path, edgex_manager)


@pytest.mark.slow
def test_mcu_from_pt2(pt2, calibration, tmp_path, edgex_manager):
    row = _converts_and_passes(pt2, calibration, "mcu", "int8", tmp_path, edgex_manager)
    assert row.converter.startswith("litert-torch")


@pytest.mark.slow
def test_executorch_from_pt2(pt2, calibration, tmp_path, edgex_manager):
    pytest.importorskip("executorch")
    row = _converts_and_passes(pt2, calibration, "executorch", "int8", tmp_path, edgex_manager)
    assert row.converter.startswith("PT2E (XNNPACKQuantizer") and row.details["executorch"]["delegation"]["portable_ops"] == {}


# --------------------------------------------------------------------------- the opset conversion


def _reduce_mean_model(noop_with_empty_axes: int) -> onnx.ModelProto:
    node = helper.make_node("ReduceMean", ["x", "axes"], ["y"], keepdims=1, noop_with_empty_axes=noop_with_empty_axes)
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2, 3, 3])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 2, 1, 1])],
        [numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "axes")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_convert_opset_drops_an_attribute_left_at_its_default(tmp_path):
    import onnxruntime as ort

    path = tmp_path / "m.onnx"
    onnx.save(_reduce_mean_model(0), str(path))
    convert_opset(path, 17)  # onnx's own adapter keeps noop_with_empty_axes, which opset 17 lacks
    model = onnx.load(str(path))
    assert model.opset_import[0].version == 17
    assert sorted(a.name for a in model.graph.node[0].attribute) == ["axes", "keepdims"]
    x = np.random.default_rng(0).standard_normal((1, 2, 3, 3)).astype("float32")
    (y,) = ort.InferenceSession(str(path)).run(None, {"x": x})
    assert np.allclose(y, x.mean(axis=(2, 3), keepdims=True), atol=1e-6)


def test_convert_opset_refuses_an_attribute_with_no_older_meaning(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_reduce_mean_model(1), str(path))
    with pytest.raises(ValueError, match="noop_with_empty_axes has no opset 17 equivalent"):
        convert_opset(path, 17)


# --------------------------------------------------------------------------- the README's commands


def _edgex(*args, cwd):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-m", "edgex.core.cli", *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_readme_int8_commands_pass_on_a_pt2_from_compress(calibration, tmp_path):
    calibration_file = tmp_path / "calib.npy"
    np.save(calibration_file, calibration)
    pt2 = tmp_path / "model.pt2"
    done = _edgex("compress", "examples:digits", "--prune", "0.3", "--out", pt2, cwd=tmp_path)
    assert done.returncode == 0 and pt2.is_file(), done.stdout + done.stderr
    done = _edgex("convert", pt2, "--target", "all", "--quantize", "int8", "--calibration", calibration_file, "--out", tmp_path / "out", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = json.loads((tmp_path / "out" / "report.json").read_text())["targets"]
    assert {name: row["status"] for name, row in rows.items()} == {
        "onnx": "passed", "jetson": "passed", "tflite": "passed", "coral": "passed", "coreml": "skipped", "mcu": "passed",
        "executorch": "passed", "ncnn": "skipped", "mnn": "passed",
    }
    # coreml has no full-int8 scheme: its row says so instead of the target vanishing
    assert rows["coreml"]["messages"] == ["coreml offers fp32, fp16, dynamic-int8, not int8"]
    assert "coreml: coreml offers fp32, fp16, dynamic-int8, not int8" in done.stdout + done.stderr
    done = _edgex("validate", tmp_path / "out" / "onnx" / "model.onnx", "--reference", pt2, "--calibration", calibration_file, "--out", tmp_path / "validated", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
