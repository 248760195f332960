"""Target ``tflite``: real conversions on both converter paths, parity on LiteRT, planted defects.

Models are small (the digits CNN, a 16x16 CNN) so the file runs in a few minutes on 2 cores.
"""

from __future__ import annotations

import json
import os
import signal
from dataclasses import replace

import numpy as np
import pytest

from edgex.core import api
from edgex.core.cli import main
from edgex.plugins.testing import check_target_conformance, perturbed, tiny_cnn
from edgex.targets.litert import convert as litert
from edgex.targets.litert.runtime import LiteRTRuntime
from edgex.targets.litert import converters
from edgex.targets.litert.graph import read_graph, rewrite

pytestmark = pytest.mark.slow


def _row(report, target="tflite"):
    return report.targets[target]


@pytest.fixture(scope="module")
def digits_int8(tmp_path_factory):
    """The shipped digits CNN in full int8, converted once for the tests that inspect it."""
    out = tmp_path_factory.mktemp("digits-int8")
    report = api.convert("examples:digits", ["tflite"], out=out, precision="int8", samples=16)
    row = _row(report)
    assert row.status == "passed", row.messages
    return out / row.artifacts[0], row


# --------------------------------------------------------------------------- the contract


def test_conformance_every_precision(tmp_path):
    result = check_target_conformance("tflite", tmp_path, precisions=["fp32", "fp16", "dynamic-int8", "int8"])
    assert set(result.precisions) == {"fp32", "fp16", "dynamic-int8", "int8"}
    int8 = result.precisions["int8"]
    assert int8.io["inputs"][0]["dtype"] == "int8" and int8.io["outputs"][0]["dtype"] == "int8"
    assert result.precisions["fp16"].parity.tolerance.source.startswith("fp16")


def test_full_int8_digits_layout_quantization_and_report(digits_int8):
    path, row = digits_int8
    binding = row.io["inputs"][0]
    assert binding["layout"] == "NHWC" and binding["shape"] == [1, 8, 8, 1]
    assert binding["quantization"]["dtype"] == "int8" and binding["quantization"]["scale"] > 0
    assert row.io["outputs"][0]["quantization"]["dtype"] == "int8"
    assert row.details["conversion"]["path"] in ("litert-torch", "onnx2tf")
    assert row.details["conversion"]["tried"][0]["outcome"] == "used"
    checks = row.details["int8_checks"]
    assert checks["all_tensors_int8_or_int32"] and checks["per_channel_weight_tensors"] >= 3
    assert row.accuracy["drop_points"] <= 1.0 and row.accuracy["top1_agreement"] >= 0.99
    graph = read_graph(path)
    assert {t.dtype for _, t in graph.all_tensors} <= {"int8", "int32"}
    assert not graph.operators[0].name == "TRANSPOSE"  # NHWC-native: no layout shuffle at the input
    stamp = graph.edgex_metadata()
    assert stamp["precision"] == "int8" and stamp["inputs"][0]["perm"] == [0, 2, 3, 1]


def test_validate_reads_the_artifact_back(digits_int8, tmp_path):
    path, _ = digits_int8
    report = api.validate(path, "examples:digits", out=tmp_path, samples=16)
    row = _row(report)
    assert row.status == "passed", row.messages
    assert row.precision == "int8" and row.io["inputs"][0]["layout"] == "NHWC"


# --------------------------------------------------------------------------- planted defects


def test_perturbed_weight_fails_int8_parity(digits_int8, tmp_path):
    path, _ = digits_int8
    model = api.load_model("examples:digits")
    broken = replace(model, module=perturbed(model.module), calibration=model.calibration)
    row = _row(api.validate(path, broken, out=tmp_path, samples=16))
    assert row.status == "failed", row.messages


def test_swapped_layout_in_the_artifact_fails_parity(digits_int8, tmp_path):
    """The artifact's own layout record says H and W are swapped: parity must notice."""
    path, _ = digits_int8
    wrong = tmp_path / "model_int8.tflite"
    wrong.write_bytes(path.read_bytes())
    stamp = read_graph(wrong).edgex_metadata()
    stamp["inputs"][0]["perm"] = [0, 3, 2, 1]  # NWHC: images fed transposed
    rewrite(wrong, {"edgex": json.dumps(stamp).encode()})
    row = _row(api.validate(wrong, "examples:digits", out=tmp_path / "out", samples=16))
    assert row.status == "failed", row.messages


def test_wrong_int8_output_scale_fails_parity(digits_int8, tmp_path, monkeypatch):
    path, _ = digits_int8
    honest = litert.describe_tflite

    def wrong_scale(artifact, reference):
        io = honest(artifact, reference)
        out = io.outputs[0]
        return replace(io, outputs=(replace(out, quant=replace(out.quant, scale=out.quant.scale * 1.25)),))

    monkeypatch.setattr(litert, "describe_tflite", wrong_scale)  # the forked child sees it too
    row = _row(api.validate(path, "examples:digits", out=tmp_path, samples=16))
    assert row.status == "failed", row.messages


# --------------------------------------------------------------------------- int8 checks


def test_full_int8_check_rejects_float_tensors_naming_them(tmp_path):
    model, example = tiny_cnn()
    report = api.convert(model, ["tflite"], out=tmp_path, example_inputs=example, precision="dynamic-int8", samples=4)
    # the hybrid kernels quantize each conv's and linear's input as they run: simulated, exactly
    row = _row(report)
    simulated = row.details["int8_reference"]
    assert "as the kernel runs" in simulated["description"]
    assert abs(simulated["outputs"][0]["sqnr_sim_db"] - row.parity.sqnr_db) < 0.5, (simulated, row.parity.sqnr_db)
    graph = read_graph(tmp_path / row.artifacts[0])
    with pytest.raises(litert.RejectedArtifact, match=r"not full int8: \d+ tensors are not int8/int32/bool \(float32"):
        litert.check_full_int8(graph)


def test_full_int8_check_rejects_a_poisoned_scale(digits_int8, tmp_path):
    from edgex.targets.litert.graph import schema

    path, _ = digits_int8
    model = schema().ModelT.InitFromPackedBuf(bytearray(path.read_bytes()), 0)
    graph = read_graph(path)
    victim = graph.operators[1].outputs[0]  # an activation in the middle
    model.subgraphs[0].tensors[victim].quantization.scale = np.array([1.3e36], dtype=np.float32)
    import flatbuffers

    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    poisoned = tmp_path / "poisoned.tflite"
    poisoned.write_bytes(builder.Output())
    with pytest.raises(litert.RejectedArtifact, match="scale 1.3e\\+36"):
        litert.check_full_int8(read_graph(poisoned))


def test_litert_runtime_falls_back_when_xnnpack_declines(digits_int8, tmp_path):
    """A near-zero activation scale makes XNNPACK refuse the model; the builtin kernels run it."""
    import flatbuffers

    from edgex.targets.litert.graph import schema

    path, _ = digits_int8
    model = schema().ModelT.InitFromPackedBuf(bytearray(path.read_bytes()), 0)
    graph = read_graph(path)
    victim = graph.operators[0].outputs[0]
    model.subgraphs[0].tensors[victim].quantization.scale = np.array([1e-12], dtype=np.float32)
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    declined = tmp_path / "declined.tflite"
    declined.write_bytes(builder.Output())
    runtime = LiteRTRuntime(declined)
    assert "builtin kernels" in runtime.backend and "XNNPACK" in runtime.backend
    out = runtime.run([np.zeros((1, 8, 8, 1), np.int8)])
    assert out[0].shape == (1, 10) and out[0].dtype == np.int8
    assert "default kernels" in LiteRTRuntime(path).backend


# --------------------------------------------------------------------------- converter paths


def test_onnx2tf_path_makes_nhwc_int8_without_network(tmp_path, monkeypatch):
    """A 3-channel image input is what makes onnx2tf download sample images; edgex pre-empts it."""
    model, example = tiny_cnn()
    calibration = (np.random.default_rng(1).uniform(0, 1, (32, 3, 16, 16)).astype("float32"),)
    report = api.convert(
        model, ["tflite"], out=tmp_path, example_inputs=example, precision="int8", calibration=calibration,
        samples=8, options={"tflite_converter": "onnx2tf"},
    )
    row = _row(report)
    assert row.status == "passed", row.messages
    assert row.details["conversion"]["path"] == "onnx2tf" and "onnx2tf" in row.converter
    assert row.io["inputs"][0]["layout"] == "NHWC"
    assert not list((tmp_path / "tflite").glob("*.onnx")), "intermediate files must not be left in --out"


def test_sample_file_for_onnx2tf_comes_from_the_users_data(tmp_path):
    model = api.load_model(tiny_cnn()[0], example_inputs=tiny_cnn()[1])
    batches = [(np.full((1, 3, 16, 16), float(i), np.float32),) for i in range(25)]
    converters._write_onnx2tf_sample(tmp_path, model, batches)
    sample = np.load(tmp_path / converters.ONNX2TF_SAMPLE_FILE)
    assert sample.shape == (20, 16, 16, 3) and sample[3].min() == 3.0


def test_a_crashing_converter_falls_back_to_the_other_path(tmp_path, monkeypatch):
    """litert-torch dies with SIGSEGV (as converters do): the target still converts with onnx2tf."""

    def segfault(*args, **kwargs):
        import faulthandler

        faulthandler.disable()  # pytest's handler would print the crash of this child
        os.kill(os.getpid(), signal.SIGSEGV)

    monkeypatch.setitem(converters.PATHS, "litert-torch", segfault)
    model, example = tiny_cnn()
    row = _row(api.convert(model, ["tflite"], out=tmp_path, example_inputs=example, samples=4))
    assert row.status == "passed", row.messages
    tried = row.details["conversion"]["tried"]
    assert tried[0]["path"] == "litert-torch" and tried[0]["outcome"] == "failed" and "SIGSEGV" in tried[0]["reason"]
    assert tried[1] == {"path": "onnx2tf", "outcome": "used"}
    assert any("litert-torch failed" in m for m in row.messages)


# --------------------------------------------------------------------------- bad input


MODEL_WITH_ERFINV = '''
import torch
import torch.nn as nn


class Gaussianize(nn.Module):
    def forward(self, x):
        return torch.special.erfinv(torch.tanh(x))


def build():
    model = nn.Sequential(nn.Linear(8, 8), Gaussianize(), nn.Linear(8, 4)).eval()
    return model, (torch.randn(1, 8),)
'''


def test_an_op_no_path_converts_names_the_op_and_module(tmp_path, capsys):
    source = tmp_path / "erfinv_model.py"
    source.write_text(MODEL_WITH_ERFINV)
    code = main(["convert", f"{source}:build", "--target", "tflite", "--out", str(tmp_path / "out"), "--samples", "2", "--json"])
    assert code == 3
    row = json.loads(capsys.readouterr().out)["targets"]["tflite"]
    assert row["status"] == "error"
    message = row["messages"][0]
    assert "aten.erfinv" in message and "Gaussianize at '1'" in message, message
    assert "\n" not in message
    assert not (tmp_path / "out" / "tflite").exists()


def test_calibration_of_the_wrong_shape_is_one_line_exit_2(tmp_path, capsys):
    bad = tmp_path / "calibration.npy"
    np.save(bad, np.zeros((10, 3, 8, 8), np.float32))
    code = main(["convert", "examples:digits", "--target", "tflite", "--quantize", "int8", "--calibration", str(bad), "--out", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "calibration" in err and "(3, 8, 8)" in err
    assert not (tmp_path / "out" / "tflite").exists()


def test_an_int32_input_passes_the_full_int8_check_only_when_read_as_lookup_indices():
    from types import SimpleNamespace as Op

    ids_graph = Op(operators=[Op(name="RESHAPE", inputs=[0, 1], outputs=[2]), Op(name="EMBEDDING_LOOKUP", inputs=[2, 3], outputs=[4])])
    assert litert._only_indices(ids_graph, 0)
    added = Op(operators=[*ids_graph.operators, Op(name="ADD", inputs=[0, 5], outputs=[6])])  # also computed on
    assert not litert._only_indices(added, 0)
    table = Op(operators=[Op(name="GATHER", inputs=[0, 2], outputs=[4])])  # the gathered values, not the indices
    assert not litert._only_indices(table, 0)
    assert not litert._only_indices(Op(operators=[]), 0)


def test_litert_torch_is_given_an_eval_mode_module(tmp_path, caplog):
    """An image model reaches litert-torch inside its channel-last wrapper, a new module (so in
    training mode unless told): litert-torch then "converts in training mode" (its warning)."""
    import logging

    model = api.load_model(tiny_cnn()[0], example_inputs=tiny_cnn()[1])
    with caplog.at_level(logging.WARNING):
        converters.convert_litert_torch(model, "fp32", None, tmp_path, [2])
    assert not [r for r in caplog.records if "training mode" in r.getMessage()]
