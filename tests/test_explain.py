"""``edgex explain``: a planted defect is located at its layer, honest artifacts flag nothing.

Real conversions and real runtimes (onnxruntime, LiteRT, the MIL interpreter) on the shipped
digits CNN, whose ``features.3`` (the second convolution) is where defects are planted; each
converter fuses it with its batch norm (and ReLU), so the first layer flagged is the op that
computes it, and the report must name ``features.3`` among that op's modules.
"""

from __future__ import annotations

import copy
import json
import math
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from edgex.core import api
from edgex.core.cli import main
from edgex.core.explain import ModuleRun, discover_modules, match_layers
from edgex.core.loading import load_model
from edgex.core.types import ArtifactIO, ArtifactTrace, TensorBinding, TracedTensor

SITE = Path(__file__).parent / "data" / "site"
DEFECT = "features.3"


def run(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def layers_of(report_json):
    return {layer["module"]: layer for layer in report_json["layers"]}


def assert_located(report_json, flagged):
    """The first flagged layer computes the perturbed module; every matched layer before it is close."""
    layers = layers_of(report_json)
    assert report_json["first_flagged"] == flagged, report_json["verdict"]
    assert DEFECT in layers[flagged]["fused_with"] or DEFECT in report_json["suspects"]
    assert not layers[flagged]["passed"] and layers[flagged]["sqnr_db"] < 30
    before = [l for l in report_json["layers"][: [l["module"] for l in report_json["layers"]].index(flagged)] if l["matched"]]
    assert before, "no matched layer before the defect: nothing shows that earlier layers are fine"
    for layer in before:
        assert layer["passed"] and layer["sqnr_db"] > 60, layer


@pytest.fixture(scope="module")
def digits():
    return load_model("examples:digits")


def converted_digits(tmp_path_factory, target, precision="fp32"):
    """The shipped digits CNN converted (and passing parity): the artifact's path."""
    out = tmp_path_factory.mktemp(f"{target}-{precision}")
    row = api.convert("examples:digits", [target], out=out, precision=precision, samples=2).targets[target]
    assert row.status == "passed", row.messages
    return out / row.artifacts[0]


@pytest.fixture(scope="module")
def digits_onnx(tmp_path_factory):
    return converted_digits(tmp_path_factory, "onnx")


@pytest.fixture(scope="module")
def digits_int8_tflite(tmp_path_factory):
    return converted_digits(tmp_path_factory, "tflite", "int8")


def perturbed_digits(digits):
    """The digits CNN with one filter of ``features.3`` negated."""
    bad = copy.deepcopy(digits.module)
    with torch.no_grad():
        bad.features[3].weight[0].neg_()
    return bad


# --------------------------------------------------------------------------- located defects


def test_onnx_defect_planted_in_the_artifact_is_located(digits_onnx, tmp_path, capsys):
    model = onnx.load(str(digits_onnx))
    (weight,) = [i for i in model.graph.initializer if i.name == f"{DEFECT}.weight"]
    values = numpy_helper.to_array(weight).copy()
    values[0] *= -1.0
    weight.CopyFrom(numpy_helper.from_array(values, weight.name))
    bad = tmp_path / "bad.onnx"
    onnx.save(model, str(bad))

    out = tmp_path / "out"
    code, printed, err = run(capsys, "explain", bad, "--reference", "examples:digits", "--json", "--out", out)
    assert code == 1, err  # the outputs fail parity, as edgex validate says
    report = json.loads(printed)
    assert report == json.loads((out / "explain.json").read_text())
    # the dynamo exporter folds the conv into its batch norm: one Conv node, both modules named
    assert_located(report, "features.4")
    assert layers_of(report)["features.4"]["fused_with"] == [DEFECT]
    assert layers_of(report)[DEFECT]["reason"].startswith("fused into features.4")
    assert report["outputs"]["passed"] is False and "features.4" in report["verdict"]
    assert sorted(p.name for p in out.iterdir()) == ["explain.html", "explain.json", "logs"]  # nothing else, no scratch left
    assert "features.4" in (out / "explain.html").read_text()  # the page shows the verdict too


def test_honest_fp32_onnx_flags_no_layer(digits_onnx, tmp_path, capsys):
    code, printed, err = run(capsys, "explain", digits_onnx, "--reference", "examples:digits", "--samples", "4", "--out", tmp_path)
    assert code == 0, err
    assert "every matched layer is within its tolerance" in printed and "OUTSIDE" not in printed
    report = json.loads((tmp_path / "explain.json").read_text())
    assert report["first_flagged"] is None and report["outputs"]["samples"] == 4
    matched = [l for l in report["layers"] if l["matched"]]
    assert len(matched) >= 8 and report["matched"] + report["unmatched"] == len(report["layers"])
    assert all(l["passed"] and "noise floor" in l["tolerance"]["source"] for l in matched)
    assert report["skipped"] == {"alias": ["features"]}  # the Sequential returns its last child's output


def test_tflite_converted_from_a_perturbed_model_is_located(digits, tmp_path):
    row = api.convert(perturbed_digits(digits), ["tflite"], out=tmp_path / "bad", example_inputs=digits.example_inputs, samples=2).targets["tflite"]
    assert row.status == "passed"  # against the model it was converted from
    report = api.explain(tmp_path / "bad" / row.artifacts[0], "examples:digits", out=tmp_path / "explain")
    data = report.to_json()
    assert report.exit_code == 1 and data["first_flagged"] == "features.5"
    # litert-torch fuses conv, batch norm and ReLU into one CONV_2D and names all three
    assert sorted(layers_of(data)["features.5"]["fused_with"]) == [DEFECT, "features.4"]
    assert layers_of(data)["features.5"]["layout"] == "NHWC"
    assert_located(data, "features.5")


def test_coreml_defect_is_located_through_torchscript_value_names(digits, tmp_path):
    row = api.convert("examples:digits", ["coreml"], out=tmp_path / "coreml", precision="fp32", samples=2).targets["coreml"]
    assert row.status == "passed"
    package = tmp_path / "coreml" / row.artifacts[0]
    honest = api.explain(package, "examples:digits", out=tmp_path / "honest", samples=4)
    assert honest.first_flagged is None and len(honest.matched) >= 8
    # the same package against a reference whose features.3 differs: the defect's layer must show
    report = api.explain(package, perturbed_digits(digits), example_inputs=digits.example_inputs, out=tmp_path / "bad", samples=4)
    data = report.to_json()
    assert_located(data, "features.4")
    assert data["suspects"] == [DEFECT, "features.4"]


# --------------------------------------------------------------------------- quantized artifacts


def test_int8_tflite_reports_per_layer_sqnr(digits_int8_tflite, tmp_path):
    report = api.explain(digits_int8_tflite, "examples:digits", out=tmp_path)
    assert report.precision == "int8" and report.exit_code == 0
    matched = report.matched
    assert len(matched) >= 5
    for layer in matched:
        assert math.isfinite(layer.parity.sqnr_db) and 20 < layer.parity.sqnr_db < 80, (layer.module, layer.parity.sqnr_db)
        assert layer.parity.tolerance.source.startswith("int8")
    # intermediate tensors are dequantized with their own scale, which sets each layer's tolerance
    conv = next(l for l in matched if l.module == "features.5")
    assert "output scale" in conv.parity.tolerance.source and conv.layout == "NHWC"
    assert report.to_json()["largest_sqnr_drop"]["db"] > 0
    # per-layer int8 sensitivity in edgex's simulation: every quantized layer, its share of MACs
    sensitivity = report.to_json()["int8_sensitivity"]
    assert sensitivity["method"] == "leave-out" and sensitivity["sqnr_db"] > 30
    shares = {layer["module"]: layer["macs_share"] for layer in sensitivity["layers"] if len(layer["modules"]) == 1}
    assert {"features.3", "features.7"} <= set(shares) and sum(shares.values()) == pytest.approx(1, abs=0.01)
    # an honest artifact tracks edgex's simulation layer by layer
    assert report.leaves_simulation is None and all(layer.simulated_sqnr_db is not None for layer in matched)
    assert all(abs(layer.parity.sqnr_db - layer.simulated_sqnr_db) < 2 for layer in matched), [(l.module, l.parity.sqnr_db, l.simulated_sqnr_db) for l in matched]


def test_int8_tflite_defect_is_where_the_artifact_leaves_the_simulation(digits_int8_tflite, tmp_path):
    """One output channel of the second convolution scaled x1.5 in the .tflite itself: the
    artifact leaves edgex's int8 simulation at the op holding it, as far below it as the defect costs."""
    sys.path.insert(0, str(Path(__file__).parent))
    import defects

    planted = defects.scale_channel(digits_int8_tflite, tmp_path / "planted.tflite", layer=1, channel=1, factor=1.5)
    report = api.explain(planted.path, "examples:digits", out=tmp_path / "out", samples=4)
    left = report.leaves_simulation
    assert left is not None and left.module == "features.5" and left.simulated_sqnr_db - left.parity.sqnr_db > 10
    assert report.to_json()["leaves_simulation"]["module"] == "features.5"


@pytest.fixture(scope="module")
def digits_int8_onnx(tmp_path_factory):
    return converted_digits(tmp_path_factory, "onnx", "int8")


def test_honest_int8_onnx_flags_nothing_and_never_compares_a_clipped_tensor_as_its_op(digits_int8_onnx, tmp_path):
    report = api.explain(digits_int8_onnx, "examples:digits", out=tmp_path, samples=4)
    data = report.to_json()
    assert report.exit_code == 0 and data["first_flagged"] is None, data["verdict"]
    layers = layers_of(data)
    # ORT's QDQ quantizer drops the ReLU after conv + batch norm: the tensor clipped by the int8
    # range is neither the batch norm's output nor (in float) the ReLU's, so it is not compared
    assert not layers["features.4"]["matched"] and "QDQ quantizer removed" in layers["features.4"]["reason"]
    matched = report.matched
    assert [l.module for l in matched][:1] == ["features.6"] and len(matched) >= 3
    assert all(l.parity.tolerance.source.startswith("int8") for l in matched)


def test_int8_onnx_weight_defect_is_located_between_matched_layers(digits_int8_onnx, tmp_path):
    model = onnx.load(str(digits_int8_onnx))
    (weight,) = [i for i in model.graph.initializer if i.name == f"{DEFECT}.weight_quantized"]
    values = numpy_helper.to_array(weight).copy()
    values[0] = -np.clip(values[0].astype(np.int16), -127, 127).astype(values.dtype)
    weight.CopyFrom(numpy_helper.from_array(values, weight.name))
    bad = tmp_path / "bad.onnx"
    onnx.save(model, str(bad))
    data = api.explain(bad, "examples:digits", out=tmp_path / "out", samples=4).to_json()
    assert data["first_flagged"] == "features.6", data["verdict"]  # the first matched layer after the defect
    assert DEFECT in data["suspects"] and "features.1" in data["suspects"]  # not matched, so not cleared
    assert layers_of(data)["features.6"]["sqnr_db"] < 30


def test_mcu_traces_on_litert_reference_kernels_and_says_so(digits_int8_tflite, tmp_path):
    report = api.explain(digits_int8_tflite, "examples:digits", target="mcu", out=tmp_path, samples=4)
    assert "BUILTIN_REF" in report.backend
    assert any("TFLM" in note and "not on TFLM" in note for note in report.notes)
    assert report.first_flagged is None and len(report.matched) >= 5


# --------------------------------------------------------------------------- what cannot be explained


def test_target_without_the_hook_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(SITE))
    monkeypatch.setenv("EDGEX_LOAD_PLUGINS", "torchscript")
    artifact = tmp_path / "model.ts"
    artifact.write_bytes(b"")
    code, _, err = run(capsys, "explain", artifact, "--reference", "examples:digits", "--out", tmp_path / "out")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err
    assert lines[0].startswith("edgex: error: target 'torchscript' cannot explain") and "edgex_load_tracer" in lines[0]
    assert not (tmp_path / "out").exists()


def test_onnx_reference_cannot_be_explained(digits_onnx, tmp_path, capsys):
    code, _, err = run(capsys, "explain", digits_onnx, "--reference", digits_onnx, "--out", tmp_path / "out")
    assert code == 2 and "needs a torch reference" in err and not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- the rules, on their own


def test_module_roles():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(inplace=True), torch.nn.Dropout(0.5))
            self.act = torch.nn.Tanh()
            self.head = torch.nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.act(self.act(self.body(x))))

    runs = {r.path: r for r in discover_modules(Net().eval(), [np.ones((1, 4), np.float32)])}
    assert runs["body.1"].role == "layer"  # in place, but it changes the values
    assert runs["body.2"].role == "pass-through"  # Dropout in eval
    assert runs["body"].role == "alias" and runs["body"].alias_of == "body.1"
    assert runs["act"].role == "repeated" and runs["act"].calls == 2
    assert runs["head"].output_index == 0


def _io(shape):
    return ArtifactIO(Path("x"), "fp32", (), (TensorBinding("out", shape, "float32"),))


def test_a_layout_the_artifact_does_not_state_is_never_guessed():
    runs = [ModuleRun("conv", "Conv2d", 1, 1, (1, 8, 8, 8), "layer"), ModuleRun("pool", "MaxPool2d", 1, 2, (1, 8, 4, 2), "layer")]
    trace = ArtifactTrace(
        (
            TracedTensor("a", np.zeros((1, 8, 8, 8), np.float32), ("conv",)),  # NCHW or NHWC? both fit
            TracedTensor("b", np.zeros((1, 4, 2, 8), np.float32), ("pool",)),  # only NHWC fits
        ),
        (),
    )
    found = match_layers(runs, trace, _io((1, 2)), [])
    assert "ambiguous" in found["conv"]
    assert found["pool"].binding.perm == (0, 2, 3, 1)
    # stated by the tracer, the same shape is accepted as stated
    stated = ArtifactTrace((TracedTensor("a", np.zeros((1, 8, 8, 8), np.float32), ("conv",), (0, 2, 3, 1)),), ())
    assert match_layers(runs[:1], stated, _io((1, 2)), [])["conv"].binding.layout == "NHWC"


#: built-in targets without a tracer, and why (their docs say so too)
UNTRACED = {"mnn": "an int8 MNN module's intermediate outputs read back as int8 buffers taken for float (docs/targets/mnn.md)"}


def test_edgex_load_tracer_is_optional_and_declared_by_every_builtin_target(edgex_manager):
    builtin = {p.name for p in edgex_manager.plugins() if p.builtin}
    targets = [name for name, registered in edgex_manager.targets().items() if registered.plugin in builtin]
    assert {"onnx", "jetson", "tflite", "coral", "coreml", "mcu", "executorch"} <= set(targets)
    for target in targets:
        assert edgex_manager.can_trace(target) == (target not in UNTRACED), target
    hooks = {p.name: p.hooks for p in edgex_manager.plugins()}
    assert "edgex_load_tracer" in hooks["edgex.targets.onnx.onnx"]
    assert "edgex_load_tracer" not in hooks["edgex.core.compression.pruning"]
