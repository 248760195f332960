"""Mixed precision on target ``openvino`` (edgex's docs/mixed_precision.md): the layers full int8
cannot carry, chosen in edgex's simulation, are NNCF's ignored scope, so the IR runs them as float
ops on float weights; the IR's rt_info records them, so that ``edgex validate`` simulates them kept
too.

The model is edgex's own OffsetAttention (its tests/models.py, found beside this distribution in
edgex's repository; skipped elsewhere), converted once with mixed precision (auto) and once with
``mixed_precision="off"`` (module fixtures)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openvino")
pytest.importorskip("nncf")

MODELS = Path(__file__).resolve().parents[3] / "tests" / "models.py"
if not MODELS.is_file():  # pragma: no cover -- the distribution tested outside edgex's repository
    pytest.skip("edgex's tests/models.py is not beside this distribution", allow_module_level=True)
MODEL = f"{MODELS}:offset_attention"

pytestmark = pytest.mark.slow

#: the layer edgex keeps float at NNCF's scheme here (7-bit weights): the output projection, which
#: reads the attention's offset values; where the defect is planted
KEPT_LINEAR = "blocks.1.attn.proj"


def _data(n: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 16, 16)).astype(np.float32)


def _convert(out: Path, **kwargs):
    from edgex.core import api

    with pytest.MonkeyPatch.context() as patch:  # the conftest's autouse fixture comes after a module fixture
        patch.setenv("EDGEX_LOAD_PLUGINS", "openvino")
        row = api.convert(MODEL, ["openvino"], precision="int8", out=out, calibration=_data(), samples=16, **kwargs).targets["openvino"]
    return row, (out / next(a for a in row.artifacts if a.endswith(".xml")) if row.artifacts else None)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """(row, IR .xml) of the int8 conversion with mixed precision (auto, the default)."""
    return _convert(tmp_path_factory.mktemp("ov-mixed"))


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """The same conversion at full int8 (``mixed_precision="off"``)."""
    return _convert(tmp_path_factory.mktemp("ov-full"), mixed_precision="off")


def _weights(xml: Path) -> dict[str, str]:
    """Each MatMul's torch module -> how the IR stores its weights: "float" (a float32 constant it
    reads directly) or "int8" (NNCF's int8 constant, dequantized)."""
    from edgex_openvino.plugin import _read, op_module

    stored = {}
    for op in _read(xml).get_ordered_ops():
        if op.get_type_name() != "MatMul" or op_module(op, {}) is None:
            continue
        node = op.input_value(1).get_node()
        while node.get_type_name() in ("Multiply", "Subtract", "Convert", "Reshape", "Transpose"):
            node = node.input_value(0).get_node()
        if node.get_type_name() == "Constant":
            stored[op_module(op, {})] = "int8" if node.get_output_element_type(0).get_type_name() in ("i8", "u8") else "float"
    return stored


def _fake_quantized_inputs(xml: Path, module: str) -> int:
    """How many activation inputs of the module's ops NNCF fake-quantizes."""
    from edgex_openvino.plugin import _read, op_module

    count = 0
    for op in _read(xml).get_ordered_ops():
        if op_module(op, {}) == module and op.get_type_name() not in ("Constant", "FakeQuantize"):
            count += sum(op.input_value(i).get_node().get_type_name() == "FakeQuantize" for i in range(op.get_input_size()))
    return count


def test_the_chosen_layers_are_left_out_of_nncf_and_the_ir_passes(mixed):
    from edgex.core.quant_reference import MIXED_PRECISION_BELOW_DB
    from edgex_openvino.plugin import _read, kept_wider

    row, xml = mixed
    assert row.status == "passed", row.messages
    chosen = row.details["mixed_precision"]
    modules = chosen["modules"]
    assert KEPT_LINEAR in modules and all(m == "blocks.1" or m.startswith("blocks.1.") for m in modules), chosen
    assert chosen["as"] == "float" and chosen["chosen_by"] == "auto" and chosen["sqnr_before_db"] < MIXED_PRECISION_BELOW_DB, chosen
    assert "kept float" in row.details["int8_reference"]["description"], "the verdict's simulation keeps them too"
    # the IR says what it kept (rt_info, read back by validate), beside what NNCF's scheme says
    assert kept_wider(_read(xml)) == {"modules": modules, "as": "float"}
    quantization = row.details["openvino"]["quantization"]
    assert quantization["kept_wider"] == {"modules": modules, "as": "float"} and quantization["float_outputs"] and quantization["bias_correction"]
    kept = row.details["openvino"]["nncf"]["kept_float"]
    assert kept["modules"] == modules and kept["float_weight_ops"] == [f"__module.{KEPT_LINEAR}/aten::linear/MatMul"], kept
    assert any(m.startswith("kept float (left out of NNCF's quantization") for m in row.messages), row.messages
    # really float in the file: the kept MatMul on float32 weights, its input not fake-quantized; every other MatMul int8
    stored = _weights(xml)
    assert stored == {name: "float" if name in modules else "int8" for name in stored}, stored
    assert _fake_quantized_inputs(xml, KEPT_LINEAR) == 0


def test_full_int8_fails_where_the_simulation_said_it_would(full):
    from edgex_openvino.plugin import _read, kept_wider

    row, xml = full
    assert row.status == "failed" and "mixed_precision" not in row.details, row.messages
    assert "kept_float" not in row.details["openvino"].get("nncf", {}) and "kept_wider" not in row.details["openvino"]["quantization"]
    assert kept_wider(_read(xml)) is None and set(_weights(xml).values()) == {"int8"}
    assert _fake_quantized_inputs(xml, KEPT_LINEAR) == 1


def test_a_defect_planted_in_a_kept_float_layer_is_caught(mixed, tmp_path, monkeypatch):
    """The kept MatMul's float weights, output channel 0 x 1.5, written into a copy of the IR; the
    honest IR passes validate, which reads the kept layers back from its rt_info."""
    from edgex.core import api
    from edgex_openvino.defects import scale_float_channel
    from edgex_openvino.plugin import _read, kept_wider

    row, xml = mixed
    (tmp_path / "planted").mkdir()
    planted = scale_float_channel(xml, tmp_path / "planted", KEPT_LINEAR, factor=1.5, channel=0)
    assert kept_wider(_read(planted)) == kept_wider(_read(xml)), "the copy keeps the record"
    data = dict(target="openvino", precision="int8", calibration=_data(), samples=16)
    caught = api.validate(planted, MODEL, out=tmp_path / "caught", **data).targets["openvino"]
    assert caught.status == "failed", caught.messages
    honest = api.validate(xml, MODEL, out=tmp_path / "honest", **data).targets["openvino"]
    assert honest.status == "passed", honest.messages
    assert honest.details["mixed_precision"]["modules"] == row.details["mixed_precision"]["modules"]
    assert "kept float" in honest.details["int8_reference"]["description"]


def test_the_onnx_route_maps_its_ops_to_torch_modules(tmp_path):
    """Read from an ONNX export (--openvino-route onnx, or an ONNX reference), the IR's ops are
    named after the ONNX nodes: ``onnx_node_scope`` of the export names their modules, NNCF's
    ignored scope is built from those; a module the model lacks is a usage error."""
    from edgex.core import api
    from edgex.plugins import UsageError, WiderLayers, export_onnx
    from edgex_openvino.plugin import _held_ops, _onnx_scopes, _openvino, op_module

    reference = api.load_model(MODEL)
    export_onnx(reference, tmp_path / "model.onnx", opset=17)
    scopes = _onnx_scopes(tmp_path / "model.onnx")
    model = _openvino().convert_model(str(tmp_path / "model.onnx"))
    held = _held_ops(model, WiderLayers(("blocks.1", KEPT_LINEAR), "float", "user"), scopes)
    modules = {op.get_friendly_name(): op_module(op, scopes) for op in model.get_ordered_ops()}
    assert {modules[name] for name in held} == {"blocks.1", KEPT_LINEAR}
    assert sorted(op.get_type_name() for op in model.get_ordered_ops() if op.get_friendly_name() in held) == ["Add", "Add", "Add", "MatMul", "Relu"]
    assert modules[next(op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() == "MVN")] == "blocks.0.norm1"  # named by its tensor
    with pytest.raises(UsageError, match="no op of the OpenVINO model belongs to blocks.7"):
        _held_ops(model, WiderLayers(("blocks.7",), "float", "user"), scopes)
