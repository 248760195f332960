"""Targets onnx and jetson: real exports, real onnxruntime, planted defects caught."""

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from edgex.core import api
from edgex.plugins.testing import check_target_conformance, tiny_cnn

MODELS = Path(__file__).parent / "models.py"


@pytest.mark.parametrize("target", ["onnx", "jetson"])
def test_conformance_every_precision(target, tmp_path, edgex_manager, artifact_planters):
    result = check_target_conformance(target, tmp_path, manager=edgex_manager, planters=artifact_planters)
    assert set(result.precisions) == {"fp32", "fp16", "int8"}
    assert result.defect_caught and len(result.defects) == 5 and not result.not_checked  # 3 weights, a channel, an output scale
    for precision, row in result.precisions.items():
        assert row.precision == precision and row.parity.samples == 8


def test_onnx_artifacts_by_precision(tmp_path, edgex_manager):
    net, example = tiny_cnn()
    calibration = (np.random.default_rng(1).standard_normal((64, 3, 16, 16)).astype("float32"),)
    sizes = {}
    for precision in ("fp32", "fp16", "int8"):
        report = api.convert(net, ["onnx"], out=tmp_path / precision, example_inputs=example, precision=precision, calibration=calibration, samples=4, plugins=edgex_manager)
        row = report.targets["onnx"]
        model = onnx.load(str(tmp_path / precision / row.artifacts[0]))
        ops = {n.op_type for n in model.graph.node}
        sizes[precision] = row.size_bytes
        if precision == "int8":
            assert {"QuantizeLinear", "DequantizeLinear"} <= ops and "int8" in row.converter
            assert row.io["outputs"][0]["quantization"]["scale"] > 0
            assert "simulated int8 reference" in row.parity.tolerance.source  # never a bound read from the artifact
        if precision == "fp16":
            assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
            assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # float32 I/O kept
            assert "fp16" in row.parity.tolerance.source
        if precision == "fp32":
            assert "noise floor" in row.parity.tolerance.source and row.converter.startswith("torch.onnx.export (dynamo")
    assert sizes["int8"] < sizes["fp32"] and sizes["fp16"] < sizes["fp32"]  # QDQ scales outweigh fp16 on a model this tiny


def test_dynamic_batch_runs_other_batch_sizes(tmp_path, edgex_manager):
    import onnxruntime as ort

    net, example = tiny_cnn()
    report = api.convert(net, ["onnx"], out=tmp_path, example_inputs=example, options={"dynamic_batch": True}, samples=2, plugins=edgex_manager)
    path = tmp_path / report.targets["onnx"].artifacts[0]
    session = ort.InferenceSession(str(path))
    batch = np.random.default_rng(0).standard_normal((3, 3, 16, 16)).astype("float32")
    (out,) = session.run(None, {session.get_inputs()[0].name: batch})
    with torch.no_grad():
        assert np.allclose(out, net(torch.from_numpy(batch)).numpy(), atol=1e-5)


def test_exporter_fallback_is_recorded(tmp_path, edgex_manager, monkeypatch):
    real_export = torch.onnx.export

    def dynamo_breaks(*args, **kwargs):
        if kwargs.get("dynamo", True):
            raise RuntimeError("simulated dynamo failure")
        return real_export(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", dynamo_breaks)
    net, example = tiny_cnn()
    row = api.convert(net, ["onnx"], out=tmp_path, example_inputs=example, samples=2, plugins=edgex_manager).targets["onnx"]
    assert row.status == "passed" and row.converter.startswith("torch.onnx.export (torchscript")
    assert any("dynamo exporter failed: RuntimeError: simulated dynamo failure" in m for m in row.messages)


def test_jetson_prepares_for_tensorrt_and_never_claims_it(tmp_path, edgex_manager):
    net, example = tiny_cnn()
    calibration = (np.random.default_rng(1).standard_normal((32, 3, 16, 16)).astype("float32"),)
    report = api.convert(net, ["tensorrt"], out=tmp_path, example_inputs=example, precision="int8", calibration=calibration, samples=4, plugins=edgex_manager)
    row = report.targets["jetson"]
    assert row.status == "passed"
    model = onnx.load(str(tmp_path / row.artifacts[0]))
    assert model.opset_import[0].version == 17
    assert all(d.HasField("dim_value") for i in model.graph.input for d in i.type.tensor_type.shape.dim)
    zero_points = [numpy_helper.to_array(i) for i in model.graph.initializer if "zero_point" in i.name]
    assert zero_points and all(np.all(z == 0) for z in zero_points)  # TensorRT takes symmetric int8 only
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert "TensorRT" not in row.backend.split(",")[0] and "not installed" in row.backend
        assert not any(a.endswith(".engine") for a in row.artifacts)


def test_onnx_reference_converts_and_validates(tmp_path, edgex_manager):
    net, example = tiny_cnn()
    path = tmp_path / "ref.onnx"
    torch.onnx.export(net, example, str(path), dynamo=False, input_names=["image"], output_names=["logits"])
    report = api.convert(str(path), ["onnx", "jetson"], out=tmp_path / "out", samples=4, plugins=edgex_manager)
    assert {t.status for t in report.targets.values()} == {"passed"}
    assert report.model["kind"] == "onnx"
    assert "ONNX reference" in report.targets["onnx"].parity.tolerance.source


# --------------------------------------------------------------------------- planted defects in artifacts


CALIBRATION = (np.random.default_rng(1).standard_normal((64, 3, 16, 16)).astype("float32"),)


def _convert(tmp_path, manager, precision="fp32"):
    net, example = tiny_cnn()
    report = api.convert(net, ["onnx"], out=tmp_path / "good", example_inputs=example, precision=precision, calibration=CALIBRATION, samples=4, plugins=manager)
    return net, example, tmp_path / "good" / report.targets["onnx"].artifacts[0]


def _edit(path, out, edit):
    model = onnx.load(str(path))
    edit(model)
    onnx.save(model, str(out))
    return out


def _first_conv_weight(model):
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    return next(i for i in model.graph.initializer if i.name == conv.input[1])


def test_validate_passes_a_good_artifact_and_catches_a_perturbed_one(tmp_path, edgex_manager):
    net, example, path = _convert(tmp_path, edgex_manager)
    good = api.validate(path, net, out=tmp_path / "v1", example_inputs=example, samples=8, plugins=edgex_manager)
    assert good.targets["onnx"].status == "passed"

    def perturb(model):
        weight = _first_conv_weight(model)
        array = numpy_helper.to_array(weight).copy()
        array.flat[7] += 0.05
        weight.CopyFrom(numpy_helper.from_array(array, weight.name))

    bad = api.validate(_edit(path, tmp_path / "bad.onnx", perturb), net, out=tmp_path / "v2", example_inputs=example, samples=8, plugins=edgex_manager)
    assert bad.targets["onnx"].status == "failed" and bad.exit_code == 1


def test_swapped_input_channels_are_caught(tmp_path, edgex_manager):
    net, example, path = _convert(tmp_path, edgex_manager)

    def swap(model):  # the artifact now expects BGR where the reference takes RGB
        weight = _first_conv_weight(model)
        array = numpy_helper.to_array(weight)[:, ::-1].copy()
        weight.CopyFrom(numpy_helper.from_array(array, weight.name))

    bad = api.validate(_edit(path, tmp_path / "bgr.onnx", swap), net, out=tmp_path / "v", example_inputs=example, samples=8, plugins=edgex_manager)
    assert bad.targets["onnx"].status == "failed"


def test_wrong_quantization_scale_is_caught(tmp_path, edgex_manager):
    net, example, path = _convert(tmp_path, edgex_manager, precision="int8")
    good = api.validate(path, net, out=tmp_path / "v1", example_inputs=example, calibration=CALIBRATION, samples=8, plugins=edgex_manager)
    assert good.targets["onnx"].status == "passed" and good.targets["onnx"].precision == "int8"

    def rescale(model):  # the first activation is dequantized with twice its real scale
        quantized = {n.output[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}
        dequant = next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in quantized)
        scale = next(i for i in model.graph.initializer if i.name == dequant.input[1])
        model.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(scale) * 2, "wrong_scale"))
        dequant.input[1] = "wrong_scale"

    bad = api.validate(_edit(path, tmp_path / "scale.onnx", rescale), net, out=tmp_path / "v2", example_inputs=example, calibration=CALIBRATION, samples=8, plugins=edgex_manager)
    assert bad.targets["onnx"].status == "failed"


def test_report_json_matches_the_contract(tmp_path, edgex_manager):
    net, example, _ = _convert(tmp_path, edgex_manager)
    data = json.loads((tmp_path / "good" / "report.json").read_text())
    assert data["edgex_version"] == "0.1.0"
    assert {"spec", "sha256", "params", "macs", "inputs"} <= set(data["model"])
    row = data["targets"]["onnx"]
    for key in ("status", "plugin", "precision", "artifacts", "size_bytes", "backend", "convert_seconds", "parity", "latency_ms", "messages"):
        assert key in row
    for key in ("samples", "max_abs", "mean_abs", "max_rel", "cosine", "sqnr_db", "top1_agreement", "tolerance", "passed"):
        assert key in row["parity"]
    assert set(row["parity"]["tolerance"]) >= {"atol", "rtol", "source"}
    assert set(row["latency_ms"]) >= {"median", "p90"}
    assert row["artifacts"] == ["onnx/model.onnx"] and (tmp_path / "good" / "onnx" / "model.onnx").stat().st_size == row["size_bytes"]


# --------------------------------------------------------------------------- fp16 emulated honestly


def _fp16_overflow_onnx(tmp_path):
    from edgex.plugins import export_onnx
    from edgex.core.loading import load_model

    reference = load_model(f"{MODELS}:fp16_overflow_mlp")
    path = tmp_path / "overflow.onnx"
    export_onnx(reference, path, opset=17)
    return reference, path


def test_jetson_fp16_emulation_overflows_where_fp16_would(tmp_path):
    import onnxruntime as ort

    from edgex.targets.onnx.model import fp16_model
    from edgex.targets.onnx.runtime import OnnxRuntime

    reference, path = _fp16_overflow_onnx(tmp_path)
    x = np.random.default_rng(0).standard_normal((1, 8)).astype("float32")
    (fp32,) = OnnxRuntime(path).run([x])
    assert np.all(np.isfinite(fp32)) and np.abs(fp32).max() < 1000
    emulated = OnnxRuntime(path, emulate_fp16=True)
    assert not np.all(np.isfinite(emulated.run([x])[0])) and emulated.details() == {"emulated": True}
    # why emulation: onnxruntime's CPU provider runs an fp16 graph's ops in fp32 and drops the Casts between them
    session = ort.InferenceSession(fp16_model(path).SerializeToString(), providers=["CPUExecutionProvider"])
    assert np.all(np.isfinite(session.run(None, {session.get_inputs()[0].name: x})[0]))


def test_jetson_fp16_row_says_emulated_and_fails_the_overflow_mlp(tmp_path, edgex_manager):
    report = api.convert(f"{MODELS}:fp16_overflow_mlp", ["jetson"], out=tmp_path, precision="fp16", samples=4, plugins=edgex_manager)
    row = report.targets["jetson"]
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert row.details["emulated"] is True and "TensorRT not run" in row.backend
        assert row.status == "failed"


def test_jetson_fp16_emulation_passes_an_ordinary_model(tmp_path, edgex_manager):
    net, example = tiny_cnn()
    row = api.convert(net, ["jetson"], out=tmp_path, example_inputs=example, precision="fp16", samples=4, plugins=edgex_manager).targets["jetson"]
    assert row.status == "passed"
    if row.details.get("emulated"):
        assert "TensorRT not run" in row.backend
        assert row.parity.max_abs > 0  # rounded to fp16, not run in fp32


def test_targets_lists_jetson_as_emulated_without_tensorrt(edgex_manager):
    status = edgex_manager.backend_status("jetson")
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert status.available and status.emulated and "TensorRT not run" in status.backend


# --------------------------------------------------------------------------- int8 on CPUs without VNNI

_CPUINFO = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse4_1 avx avx2 {extra}\nbugs\t\t: sysret_ss_attrs\n"


def test_reduce_range_auto_follows_the_cpu_flags():
    from edgex.targets.onnx.onnx import choose_reduce_range, int8_saturating_cpu

    assert int8_saturating_cpu(_CPUINFO.format(extra="fma"), "x86_64") == "AVX2 without VNNI"
    for vnni in ("avx512_vnni", "avx_vnni", "amx_int8"):
        assert int8_saturating_cpu(_CPUINFO.format(extra=vnni), "x86_64") is None
    assert int8_saturating_cpu("", "x86_64") is None  # unreadable: 8-bit weights, as other runtimes expect
    assert int8_saturating_cpu("processor\t: 0\nFeatures\t: fp asimd asimddp\n", "aarch64") is None
    assert choose_reduce_range("auto", "AVX2 without VNNI")[0] and not choose_reduce_range("auto", None)[0]
    assert "--reduce-range off" in choose_reduce_range("auto", "AVX2 without VNNI")[1]
    assert choose_reduce_range("on", None)[0] and not choose_reduce_range("off", "AVX2 without VNNI")[0]
    assert "saturate" in choose_reduce_range("off", "AVX2 without VNNI")[1]


def test_int8_report_records_the_weight_bits_and_why(tmp_path, edgex_manager):
    from edgex.targets.onnx.onnx import this_cpu_saturates_int8

    net, example = tiny_cnn()
    calibration = (np.random.default_rng(1).standard_normal((64, 3, 16, 16)).astype("float32"),)
    report = api.convert(net, ["onnx"], out=tmp_path, example_inputs=example, precision="int8", calibration=calibration, options={"reduce_range": "on"}, samples=4, plugins=edgex_manager)
    row = report.targets["onnx"]
    assert row.details["quantization"]["reduce_range"] is True and "7-bit weights" in row.converter
    model = onnx.load(str(tmp_path / row.artifacts[0]))
    weights = [numpy_helper.to_array(i) for i in model.graph.initializer if i.name.endswith("weight_quantized")]
    assert weights and max(np.abs(w.astype(np.int16)).max() for w in weights) <= 64  # 7 bits
    assert row.details["quantization"]["saturating_cpu"] == this_cpu_saturates_int8()


def test_jetson_int8_emulation_runs_the_qdq_graph_as_written(tmp_path, edgex_manager):
    """onnxruntime's fused int8 kernels saturate on CPUs without VNNI; TensorRT's do not, so the
    emulation computes the QDQ graph as written: what onnxruntime computes with no fusion at all."""
    import onnxruntime as ort

    from edgex.targets.onnx.runtime import OnnxRuntime
    net, example = tiny_cnn()
    calibration = (np.random.default_rng(1).standard_normal((32, 3, 16, 16)).astype("float32"),)
    row = api.convert(net, ["jetson"], out=tmp_path, example_inputs=example, precision="int8", calibration=calibration, samples=4, plugins=edgex_manager).targets["jetson"]
    if row.artifacts[-1].endswith(".engine"):
        pytest.skip("TensorRT is installed: parity ran on the engine")
    path = tmp_path / row.artifacts[0]
    assert row.details["quantization"] == {"reduce_range": False, "weight_bits": 8, "symmetric": True}
    assert "unfused" in row.backend and "TensorRT not run" in row.backend
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    as_written = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = calibration[0][:1]
    (expected,) = as_written.run(None, {as_written.get_inputs()[0].name: x})
    (emulated,) = OnnxRuntime(path, unfused_qdq=True).run([x])
    np.testing.assert_allclose(emulated, expected, rtol=0, atol=1e-5)
