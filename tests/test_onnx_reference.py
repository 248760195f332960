"""Issue 28, part 3: an ONNX reference gets edgex's simulated references too.

``edgex.core.onnx_module`` writes the ONNX graph out as torch ops, checked against onnxruntime,
and the one simulation quantizes it. The verdict then follows the simulation, as for a torch
reference: an honest int8 artifact passes near it, a defect planted in the artifact fails, and an
op that cannot be written out is named in the row.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

import defects  # tests/defects.py, loaded by tests/conftest.py
from edgex.core import api
from edgex.core.onnx_module import check_translation, onnx_module
from edgex.core.parity import _onnx_run
from edgex.core.quant_reference import CannotSimulate, simulate

SAMPLES = 16


class ManyOps(torch.nn.Module):
    """One of most op types a torch model exports to ONNX: convolutions with BatchNorm, ReLU6,
    pools, a 1x1 strided conv, reshapes, concat, LayerNorm, GELU, softmax."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU6())
        self.side = torch.nn.Conv2d(8, 8, 1, stride=2, groups=2)
        self.norm = torch.nn.LayerNorm(16)
        self.head = torch.nn.Linear(16, 5)

    def forward(self, x):
        x = self.stem(x)
        a = torch.nn.functional.max_pool2d(x, 2)
        b = torch.nn.functional.avg_pool2d(self.side(x), 1)
        x = torch.cat([a, torch.sigmoid(b) * b], dim=1)
        x = torch.nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)
        x = torch.nn.functional.gelu(self.norm(x))
        return torch.softmax(self.head(x), dim=-1), x.transpose(0, 1).reshape(-1)


def _export(module, example, path, dynamo=False):
    kwargs = {"external_data": False} if dynamo else {}
    torch.onnx.export(module.eval(), example, str(path), dynamo=dynamo, input_names=["x"], **kwargs)
    return path


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_an_onnx_graph_written_out_as_torch_ops_reproduces_onnxruntime(tmp_path, dynamo):
    module = ManyOps()
    module.stem[1].running_mean.uniform_(-0.5, 0.5)
    module.stem[1].running_var.uniform_(0.5, 2.0)
    example = (torch.randn(1, 3, 8, 8),)
    path = _export(module, example, tmp_path / "many.onnx", dynamo)
    batches = [(np.random.default_rng(k).standard_normal((1, 3, 8, 8)).astype(np.float32),) for k in range(3)]
    translated = onnx_module(path)
    check_translation(translated, _onnx_run(path, batches), batches)  # raises when it computes otherwise
    # and the simulation quantizes it as a torch model: the conv's weights per channel, its BatchNorm folded
    sim = simulate(translated, batches[0], batches, batches, "int8")
    assert sim.quantized_weights == 3 and sim.activation_points > 5


def test_a_wrong_translation_is_refused(tmp_path):
    path = _export(ManyOps(), (torch.randn(1, 3, 8, 8),), tmp_path / "many.onnx")
    batches = [(np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32),)]
    translated = onnx_module(path)
    with torch.no_grad():
        next(p for p in translated.parameters() if p.ndim == 4).mul_(1.01)  # a weight read 1% off
    with pytest.raises(CannotSimulate, match="differs from onnxruntime on output 0"):
        check_translation(translated, _onnx_run(path, batches), batches)


def test_an_op_it_cannot_write_out_is_named(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Einsum", ["x"], ["t"], equation="ij->ij"), helper.make_node("Relu", ["t"], ["y"])], "g", [x], [y])
    path = tmp_path / "einsum.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(CannotSimulate, match="op types edgex does not write out for a simulation: Einsum"):
        onnx_module(path)


@pytest.fixture(scope="module")
def digits_onnx(tmp_path_factory):
    """The digits CNN as an ONNX reference, its training images as calibration, and its honest onnx int8 artifact."""
    out = tmp_path_factory.mktemp("onnx-reference")
    model = api.load_model("examples:digits")
    path = _export(model.module, tuple(torch.from_numpy(a) for a in model.example_inputs), out / "digits.onnx")
    calibration = out / "calibration.npy"
    np.save(calibration, model.calibration[0][:64])
    report = api.convert(str(path), ["onnx"], out=out / "int8", precision="int8", samples=SAMPLES, calibration=str(calibration))
    return path, calibration, report.targets["onnx"], out / "int8" / report.targets["onnx"].artifacts[0]


def test_an_onnx_reference_is_judged_against_its_simulation(digits_onnx):
    _, _, row, _ = digits_onnx
    reference = row.details["int8_reference"]
    assert row.status == "passed", row.messages
    assert "ONNX reference written out as torch ops" in reference["calibration"]
    assert "simulated int8 reference" in row.parity.tolerance.source
    assert abs(reference["outputs"][0]["sqnr_sim_db"] - row.parity.sqnr_db) < 1.5  # lands on its simulation
    assert not any("output steps alone" in m for m in row.messages)


def test_a_defect_in_the_artifact_fails_against_the_onnx_references_simulation(digits_onnx, tmp_path):
    path, calibration, _, artifact = digits_onnx
    planted = defects.scale_channel(artifact, tmp_path / "planted.onnx", layer="middle", channel=1, factor=1.5)
    row = api.validate(planted.path, str(path), target="onnx", out=tmp_path / "validate", precision="int8", samples=SAMPLES, calibration=str(calibration)).targets["onnx"]
    assert row.status == "failed" and "simulated int8 reference" in row.parity.tolerance.source, row.messages
