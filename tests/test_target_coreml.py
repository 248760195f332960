"""Target ``coreml``: real coremltools conversions, validated on the MIL reference interpreter
(this is Linux: Core ML itself cannot run here).

Every parity path is shown both ways: a correct conversion passes, and a planted defect -- a
weight perturbed inside the saved package, a wrong palette -- fails.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ct = pytest.importorskip("coremltools")  # imported here once: every forked target run inherits it
torch = pytest.importorskip("torch")

import torch.nn as nn  # noqa: E402

from edgex.core import api  # noqa: E402
from edgex.core.cli import main as cli_main  # noqa: E402
from edgex.examples import zoo  # noqa: E402
from edgex.plugins.testing import check_target_conformance  # noqa: E402
from edgex.targets.coreml.interpreter import load_package  # noqa: E402

pytestmark = pytest.mark.skipif(sys.platform == "darwin", reason="these tests pin the Linux path (the MIL interpreter)")


# --------------------------------------------------------------------------- models


def small_cnn():
    """Weights large enough (> 2048 elements) for coremltools to compress them."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    ).eval()
    with torch.no_grad():
        model[3].running_mean.uniform_(-0.2, 0.2)
        model[3].running_var.uniform_(0.5, 1.5)
    return model, (torch.randn(1, 3, 16, 16),)


def families():
    """The model families the target must carry, at sizes a 2-core CI machine converts quickly."""
    torch.manual_seed(0)
    residual = zoo._seeded(zoo.ResNet(widths=(8, 16, 32, 64), blocks=(1, 1, 1, 1), classes=10, stem_stride=1, stem_pool=False), 7)
    torch.manual_seed(2)
    depthwise = zoo._batch_statistics(zoo._seeded(zoo.MobileNetV2(), 2), (1, 3, 32, 32), 2)
    torch.manual_seed(3)
    transformer = zoo.TransformerClassifier(dim=32, heads=4, layers=2).eval()
    return {
        "cnn": zoo.dscnn(),
        "depthwise": (depthwise, (torch.randn(1, 3, 32, 32),)),
        "residual": (residual, (torch.randn(1, 3, 32, 32),)),
        "transformer": (transformer, (torch.randn(1, 8, 32),)),
        "lstm": zoo.lstm(),
    }


FAMILIES = families()


class TwoInTwoOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.fc = nn.Linear(6, 3)

    def forward(self, image, features):
        return self.conv(image).mean(dim=(2, 3)), self.fc(features).tanh()


# --------------------------------------------------------------------------- helpers


def convert(model, example, out, precision, **options):
    report = api.convert(model, ["coreml"], out=out, example_inputs=example, precision=precision, samples=8, options=options or None)
    return report.targets["coreml"]


def package_of(out: Path) -> Path:
    return out / "coreml" / "model.mlpackage"


def _blob_files(package: Path) -> list[Path]:
    return [p for p in package.rglob("*") if p.is_file() and p.suffix in (".bin", ".mlmodel")]


def rewrite_constant(package: Path, value: np.ndarray, new_value: np.ndarray) -> Path:
    """Replace the stored bytes of one constant inside a saved package, as corruption would."""
    old, new = np.ascontiguousarray(value).tobytes(), np.ascontiguousarray(new_value.astype(value.dtype)).tobytes()
    assert len(old) == len(new)
    for path in _blob_files(package):
        data = path.read_bytes()
        if data.count(old) == 1:
            path.write_bytes(data.replace(old, new))
            return path
    raise AssertionError("the constant's bytes were not found exactly once in the package")


def largest_constant(package: Path, op_type: str, input_name: str) -> np.ndarray:
    loaded = load_package(package)
    ops = [op for op in loaded.program.functions["main"].operations if op.op_type == op_type]
    values = [np.asarray(op.inputs[input_name].val if input_name else op.outputs[0].val) for op in ops]
    values = [v for v in values if v.dtype.kind == "f" and v.size >= 8]
    assert values, f"no {op_type} constant in {package}"
    return max(values, key=lambda v: v.size)


# --------------------------------------------------------------------------- contract


def test_target_is_declared_with_alias_and_interpreter_backend(edgex_manager):
    registered = edgex_manager.resolve_target("mlpackage")
    assert registered.name == "coreml" and registered.plugin == "edgex.targets.coreml.coreml"
    assert registered.spec.default_precision == "fp16"
    status = edgex_manager.backend_status("coreml")
    assert status.available and "MIL reference interpreter" in status.backend


def test_loading_the_plugin_imports_no_heavy_framework():
    import subprocess

    code = (
        "import sys; from edgex.core.plugin_manager import PluginManager; m = PluginManager(load_entry_points=False);"
        "m.backend_status('coreml'); heavy = [n for n in ('torch', 'coremltools', 'edgex.targets.coreml.kernels') if n in sys.modules];"
        "print(','.join(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


@pytest.mark.slow
def test_conformance_fp32_and_fp16(edgex_manager, tmp_path):
    result = check_target_conformance("coreml", tmp_path, manager=edgex_manager, precisions=["fp32", "fp16"])
    assert result.defect_caught
    assert "fp16 emulated" in result.precisions["fp16"].backend
    assert result.precisions["fp32"].backend.endswith("program, fp32)")


# --------------------------------------------------------------------------- model families


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_matches_torch(family, precision, tmp_path):
    model, example = FAMILIES[family]
    row = convert(model, example, tmp_path, precision)
    assert row.status == "passed", row.messages
    assert row.precision == precision
    expected_source = "fp32 noise floor" if precision == "fp32" else "fp16"
    assert row.parity.tolerance.source.startswith(expected_source)
    assert row.parity.max_abs <= row.parity.tolerance.atol
    assert row.backend == f"edgex MIL reference interpreter (coremltools {ct.__version__} program, {'fp32' if precision == 'fp32' else 'fp16 emulated'})"
    # names as in the torch model
    package = load_package(package_of(tmp_path))
    reference = api.load_model(model, example_inputs=example)
    assert [f.name for f in package.inputs] == [s.name for s in reference.inputs]
    assert [f.name for f in package.outputs] == list(reference.output_names)
    if family == "transformer":
        # the traced graph of nn.TransformerEncoder does not convert: the export path does
        assert row.details["coreml"]["conversion_path"] == "torch.export"
        assert any("converted through torch.export because" in m for m in row.messages)
    else:
        assert row.details["coreml"]["conversion_path"] == "torch.jit.trace"
    if family == "lstm":
        assert row.details["mil_interpreter"]["op_types"].get("lstm") == 1
    if family == "depthwise":
        assert "conv" in row.details["mil_interpreter"]["op_types"]


@pytest.mark.slow
def test_two_inputs_two_outputs_keep_names_and_deployment_target(tmp_path):
    torch.manual_seed(5)
    model = TwoInTwoOut().eval()
    example = (torch.randn(1, 2, 6, 6), torch.randn(1, 6))
    row = convert(model, example, tmp_path, "fp16", minimum_deployment_target="iOS17")
    assert row.status == "passed", row.messages
    package = load_package(package_of(tmp_path))
    assert [f.name for f in package.inputs] == ["image", "features"]
    assert [f.name for f in package.outputs] == ["output_0", "output_1"]
    assert all(f.dtype == "float32" for f in package.inputs + package.outputs)  # float32 I/O whatever the compute precision
    assert row.details["coreml"]["minimum_deployment_target"] == "iOS17"
    assert package.spec.specificationVersion == 8  # iOS17
    assert package.metadata["edgex.precision"] == "fp16"


@pytest.mark.slow
def test_transformer_for_ios18_runs_fused_attention(tmp_path):
    model, example = FAMILIES["transformer"]
    row = convert(model, example, tmp_path, "fp16", minimum_deployment_target="iOS18")
    assert row.status == "passed", row.messages
    assert row.details["mil_interpreter"]["op_types"].get("scaled_dot_product_attention") == 2


# --------------------------------------------------------------------------- planted defects


def _write_factory(folder: Path) -> str:
    source = folder / "cnn_factory.py"
    source.write_text(
        "import torch, torch.nn as nn\n"
        "def build():\n"
        "    torch.manual_seed(0)\n"
        "    m = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),\n"
        "                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)).eval()\n"
        "    return m, (torch.randn(1, 3, 16, 16),)\n"
    )
    return f"{source}:build"


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_weight_perturbed_inside_the_package_is_caught(precision, tmp_path):
    spec = _write_factory(tmp_path)
    assert cli_main(["convert", spec, "--target", "coreml", "--quantize", "none" if precision == "fp32" else "fp16", "--samples", "8", "--out", str(tmp_path / "out")]) == 0
    package = package_of(tmp_path / "out")
    reference = ["--reference", spec, "--samples", "8"]
    assert cli_main(["validate", str(package), *reference, "--out", str(tmp_path / "clean")]) == 0

    weight = largest_constant(package, "const", "")
    broken = weight.copy()
    broken[0] = -broken[0]  # the first output filter negated, stored bytes only
    rewrite_constant(package, weight, broken)
    assert cli_main(["validate", str(package), *reference, "--out", str(tmp_path / "broken")]) == 1
    report = api.validate(package, spec, samples=8, out=tmp_path / "broken-api")
    row = report.targets["coreml"]
    assert row.status == "failed" and row.precision == precision
    assert row.parity.max_abs > row.parity.tolerance.atol


@pytest.mark.slow
def test_palettized_weights_pass_and_a_wrong_palette_is_caught(tmp_path):
    model, example = small_cnn()
    row = convert(model, example, tmp_path, "dynamic-int8", weight_compression="palettize-8")
    assert row.status == "passed", row.messages
    assert row.details["mil_interpreter"]["op_types"].get("constexpr_lut_to_dense") == 2
    assert "simulated dynamic-int8 reference" in row.parity.tolerance.source and row.details["int8_reference"]["description"].count("palettized")
    package = package_of(tmp_path)
    palette = largest_constant(package, "constexpr_lut_to_dense", "lut")
    rewrite_constant(package, palette, palette[::-1].copy())  # every index now reads the wrong entry
    broken = api.validate(package, model, example_inputs=example, samples=8, out=tmp_path / "broken").targets["coreml"]
    assert broken.status == "failed"


# --------------------------------------------------------------------------- weight compression


@pytest.mark.slow
@pytest.mark.parametrize(
    "options,op_type",
    [
        ({}, "constexpr_affine_dequantize"),  # dynamic-int8 means int8 linear quantization by default
        ({"weight_compression": "palettize-4", "minimum_deployment_target": "iOS18"}, "constexpr_lut_to_dense"),
        ({"weight_compression": "palettize-6"}, "constexpr_lut_to_dense"),
        ({"weight_compression": "int8", "minimum_deployment_target": "iOS18"}, "constexpr_blockwise_shift_scale"),
    ],
    ids=["int8", "palettize-4-ios18", "palettize-6", "int8-ios18"],
)
def test_compressed_weights_are_decompressed_and_pass(options, op_type, tmp_path):
    model, example = small_cnn()
    row = convert(model, example, tmp_path, "dynamic-int8", **options)
    assert row.status == "passed", row.messages
    assert row.precision == "dynamic-int8"
    assert row.details["coreml"]["compressed_weight_tensors"] == 2
    assert row.details["mil_interpreter"]["op_types"].get(op_type) == 2
    assert row.details["mil_interpreter"]["constexpr_decompressed"] == 2


@pytest.mark.slow
def test_a_pruned_model_is_stored_sparse_without_changing_a_value(tmp_path):
    model, example = small_cnn()
    with torch.no_grad():
        for index in (2, 5):  # the two large convolutions, 60% zeros
            weight = model[index].weight
            weight[weight.abs() < weight.abs().flatten().kthvalue(int(0.6 * weight.numel())).values] = 0.0
    row = convert(model, example, tmp_path, "fp16", weight_compression="sparse")
    assert row.status == "passed", row.messages
    assert row.precision == "fp16"  # lossless storage keeps the fp16 tolerance
    assert row.details["mil_interpreter"]["op_types"].get("constexpr_sparse_to_dense") == 2
    dense = convert(model, example, tmp_path / "dense", "fp16", weight_compression="none")
    assert row.size_bytes < dense.size_bytes
    default = convert(model, example, tmp_path / "default", "fp16")  # a pruned model: sparse unless told otherwise
    assert default.details["coreml"]["weight_compression"] == "sparse" and default.size_bytes == row.size_bytes
    assert any("stored sparsely" in m for m in default.messages)


# --------------------------------------------------------------------------- what it refuses


@pytest.mark.slow
def test_a_program_with_an_op_the_interpreter_lacks_is_an_error(tmp_path):
    class Recurrent(nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = nn.GRU(4, 8, batch_first=True)

        def forward(self, sequence):
            return self.gru(sequence)[0][:, -1]

    torch.manual_seed(0)
    row = convert(Recurrent().eval(), (torch.randn(1, 5, 4),), tmp_path, "fp32")
    assert row.status == "error"
    assert row.parity is None
    assert any("cannot validate: MIL op while_loop" in m and "not implemented" in m for m in row.messages)


@pytest.mark.slow
def test_a_kernel_removed_is_an_error_not_a_pass(tmp_path, monkeypatch):
    from edgex.targets.coreml import kernels as mil_kernels

    monkeypatch.delitem(mil_kernels.KERNELS, "relu")  # the forked target run inherits this
    model, example = small_cnn()
    row = convert(model, example, tmp_path, "fp32")
    assert row.status == "error"
    assert any("cannot validate: MIL op relu not implemented" in m for m in row.messages)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--quantize", "fp16", "--weight-compression", "palettize-4"], "use it with --quantize dynamic-int8"),
        (["--quantize", "dynamic-int8", "--weight-compression", "sparse"], "goes with --quantize fp32 or fp16"),
        (["--quantize", "dynamic-int8", "--minimum-deployment-target", "iOS15"], "compressed weights need iOS16"),
        (["--quantize", "int8"], "coreml offers fp32, fp16, dynamic-int8, not int8"),
    ],
)
def test_contradictory_options_are_usage_errors(args, message, tmp_path, capsys):
    spec = _write_factory(tmp_path)
    code = cli_main(["convert", spec, "--target", "coreml", "--samples", "2", *args, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and message in err
    assert not list((tmp_path / "out").glob("coreml"))


def _neural_network_model(path: Path) -> Path:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3)).eval()
    traced = torch.jit.trace(model, torch.randn(1, 4))
    ct.convert(traced, inputs=[ct.TensorType(name="input", shape=(1, 4))], convert_to="neuralnetwork").save(str(path))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["garbled-spec", "no-manifest", "neural-network", "truncated-weights"])
def test_a_bad_package_is_a_one_line_error_with_exit_2(damage, tmp_path, capsys):
    spec = _write_factory(tmp_path)
    target = ["--target", "coreml"]
    if damage == "neural-network":
        artifact = _neural_network_model(tmp_path / "model.mlmodel")
        factory = tmp_path / "linear_factory.py"
        factory.write_text("import torch\ndef build():\n    return torch.nn.Sequential(torch.nn.Linear(4, 3)).eval(), (torch.randn(1, 4),)\n")
        spec = f"{factory}:build"
    else:
        assert cli_main(["convert", spec, "--target", "coreml", "--samples", "2", "--out", str(tmp_path / "out")]) == 0
        artifact = package_of(tmp_path / "out")
        if damage == "garbled-spec":
            model_file = next(artifact.rglob("model.mlmodel"))
            model_file.write_bytes(b"\x00garbage" + model_file.read_bytes()[::3])
        elif damage == "no-manifest":
            (artifact / "Manifest.json").unlink()
        else:
            weights = next(artifact.rglob("weight.bin"))
            weights.write_bytes(weights.read_bytes()[:100])
    capsys.readouterr()
    code = cli_main(["validate", str(artifact), "--reference", spec, *target, "--samples", "2", "--out", str(tmp_path / "check")])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("edgex: error:"), err
    expected = {"garbled-spec": "cannot read", "no-manifest": "no Manifest.json", "neural-network": "not an ML Program", "truncated-weights": "cannot read the ML Program"}[damage]
    assert expected in err
