"""Mixed precision on the ONNX targets (onnx, jetson): the layers full int8 cannot carry, chosen in
edgex's simulation, are left out of onnxruntime's QDQ quantization (float weights, float values
inside them, int8 again where their values cross into int8 nodes), named in the file's
``edgex.kept_wider`` metadata, and judged against a simulation that keeps them too, at convert
and at validate alike. docs/mixed_precision.md, docs/targets/onnx.md."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from edgex.core import api
from edgex.core.quant_reference import MIXED_PRECISION_BELOW_DB
from edgex.core.types import WiderLayers
from edgex.targets.onnx.model import KEPT_WIDER_KEY, kept_float_nodes

sys.path.insert(0, str(Path(__file__).parent))
import models  # noqa: E402  (tests/models.py: the shared test models)

#: the layer edgex keeps for OffsetAttention: the output projection, which reads the offset
#: values (with, on some data, the block's residual add it feeds: the block's own ops)
KEPT = "blocks.1.attn.proj"
TARGETS = ("onnx", "jetson")
#: the float full-int8 floor every int8 verdict asks at least (parity.py)
FULL_INT8_FLOOR_DB = 10.0


def _data(shape=(3, 16, 16), n=32, seed=0):
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)


def _artifact(out: Path, row) -> Path:
    return out / next(a for a in row.artifacts if a.endswith(".onnx"))


def _kept(model) -> dict:
    return json.loads(next(p.value for p in model.metadata_props if p.key == KEPT_WIDER_KEY))


def _linear(model, module: str):
    """The Gemm of the torch Linear ``module`` (it reads ``module.bias``)."""
    return next(n for n in model.graph.node if n.op_type == "Gemm" and n.input[2] == f"{module}.bias")


def _float_weight(model, node) -> bool:
    """Whether ``node`` reads its weight as a float initializer (no DequantizeLinear before it)."""
    initializers = {i.name: i for i in model.graph.initializer}
    weight = initializers.get(node.input[1])
    return weight is not None and weight.data_type == onnx.TensorProto.FLOAT


def _scale_row(path: Path, dest: Path, module: str, factor: float, row: int = 0) -> Path:
    """A copy of the .onnx with one row of ``module``'s float weight scaled by ``factor``."""
    model = onnx.load(str(path))
    node = _linear(model, module)
    assert _float_weight(model, node), "the planted defect goes into a kept-float weight"
    weight = next(i for i in model.graph.initializer if i.name == node.input[1])
    values = numpy_helper.to_array(weight).copy()
    values[row] *= factor
    weight.CopyFrom(numpy_helper.from_array(values, weight.name))
    onnx.save(model, str(dest))
    return dest


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """OffsetAttention converted for onnx and jetson (int8) in one run: mixed precision auto."""
    out = tmp_path_factory.mktemp("mixed-onnx")
    model, example = models.offset_attention()
    data = dict(example_inputs=example, calibration=_data(), samples=16)
    return out / "run", model, data, api.convert(model, list(TARGETS), precision="int8", out=out / "run", **data)


# --------------------------------------------------------------------------- auto: convert


def test_onnx_and_jetson_keep_the_chosen_layers_float_and_pass(mixed):
    out, _, _, report = mixed
    for target in TARGETS:
        row = report.targets[target]
        assert row.status == "passed", (target, row.messages)
        chosen = row.details["mixed_precision"]
        assert KEPT in chosen["modules"] and chosen["as"] == "float" and chosen["chosen_by"] == "auto", chosen
        assert chosen["sqnr_before_db"] < MIXED_PRECISION_BELOW_DB <= chosen["sqnr_db"]
        assert "kept float" in row.details["int8_reference"]["description"], "the verdict's simulation keeps them too"
        assert row.parity.sqnr_db >= chosen["simulated_db"] - 3, "the artifact lands within 3 dB of its simulation"
        kept = row.details["quantization"]["kept_float"]
        assert kept["modules"] == chosen["modules"] and not kept["missing"], kept
        assert any(m.startswith(f"kept float: {len(kept['onnx_nodes'])} ONNX nodes of ") and KEPT in m for m in row.messages), row.messages

        # the file: its metadata names the kept layers and nodes; those read float weights and no
        # QDQ pair sits inside them, while every other layer is int8 as before
        model = onnx.load(str(_artifact(out, row)))
        assert _kept(model) == {"modules": chosen["modules"], "as": "float", "chosen_by": "auto", "nodes": kept["onnx_nodes"]}
        nodes = {n.name: n for n in model.graph.node}
        assert set(kept["onnx_nodes"]) <= set(nodes)
        proj = _linear(model, KEPT)
        assert proj.name in kept["onnx_nodes"] and _float_weight(model, proj)
        producers = {out: n for n in model.graph.node for out in n.output}
        assert all(producers[i].op_type != "DequantizeLinear" for i in proj.input[1:] if i in producers), "no QDQ on its weight or bias"
        int8_linears = [n for n in model.graph.node if n.op_type == "Gemm" and n.name not in kept["onnx_nodes"]]
        assert len(int8_linears) >= 10 and not any(_float_weight(model, n) for n in int8_linears)
        assert all(producers[n.input[1]].op_type == "DequantizeLinear" for n in int8_linears)


# --------------------------------------------------------------------------- planted defects: validate


def test_a_defect_planted_in_a_kept_float_weight_is_caught_and_the_honest_file_passes(mixed, tmp_path):
    out, model, data, report = mixed
    artifact = _artifact(out, report.targets["onnx"])
    planted = _scale_row(artifact, tmp_path / "planted.onnx", KEPT, 1.5)
    caught = api.validate(planted, model, target="onnx", out=tmp_path / "planted", **data).targets["onnx"]
    assert caught.status == "failed", caught.messages
    honest = api.validate(artifact, model, target="onnx", out=tmp_path / "honest", **data).targets["onnx"]
    assert honest.status == "passed", honest.messages
    # validate re-describes the file: the kept layers come from its metadata, simulated alike
    assert KEPT in honest.details["mixed_precision"]["modules"] and "kept float" in honest.details["int8_reference"]["description"]
    assert honest.parity.sqnr_db == pytest.approx(report.targets["onnx"].parity.sqnr_db)


def test_a_two_percent_defect_in_a_kept_float_weight_is_caught_where_the_full_int8_floor_would_pass_it(mixed, tmp_path):
    """One row of the kept projection off by 2%: the file still beats the floor full int8 would
    ask, but not the simulation that keeps the projection float as the file says it does."""
    out, model, data, report = mixed
    artifact = _artifact(out, report.targets["jetson"])
    planted = _scale_row(artifact, tmp_path / "planted.trt.onnx", KEPT, 1.02)
    caught = api.validate(planted, model, target="jetson", out=tmp_path / "planted", **data).targets["jetson"]
    assert caught.status == "failed", caught.messages
    assert caught.parity.sqnr_db > FULL_INT8_FLOOR_DB, "a defect above the full-int8 floor: only the mixed simulation catches it"
    assert caught.parity.tolerance.min_sqnr_db > caught.parity.sqnr_db


# --------------------------------------------------------------------------- the user's layers


def test_the_users_layers_are_kept_float_on_both_targets(tmp_path):
    model, example = models.offset_attention()
    report = api.convert(model, list(TARGETS), precision="int8", out=tmp_path, example_inputs=example, calibration=_data(), samples=16, keep_wider=["blocks.1"])
    for target in TARGETS:
        row = report.targets[target]
        assert row.status == "passed", (target, row.messages)
        chosen = row.details["mixed_precision"]
        assert chosen["chosen_by"] == "user" and {"blocks.1", KEPT, "blocks.1.fc1", "blocks.1.attn"} <= set(chosen["modules"]), chosen
        onnx_model = onnx.load(str(_artifact(tmp_path, row)))
        linears = {n.input[2].removesuffix(".bias"): n for n in onnx_model.graph.node if n.op_type == "Gemm"}
        assert all(_float_weight(onnx_model, n) == name.startswith("blocks.1.") for name, n in linears.items()), "blocks.1 float, the rest int8"
        # inside the kept block nothing is quantized: its softmax reads and writes float
        softmax = [n for n in onnx_model.graph.node if n.op_type == "Softmax"]
        producers = {out: n for n in onnx_model.graph.node for out in n.output}
        kept_nodes = set(_kept(onnx_model)["nodes"])
        assert [producers[n.input[0]].op_type == "DequantizeLinear" for n in softmax] == [n.name not in kept_nodes for n in softmax] == [True, False]


def test_a_layer_kept_alone_between_int8_layers_stays_float_on_onnxruntime(tmp_path):
    """onnxruntime's QDQ optimizer quantizes, per tensor, the float weights of a Gemm that reads a
    DequantizeLinear and feeds a QuantizeLinear; the onnx target guards such a kept layer with a
    one-input Sum. The file without that guard runs int8 there and fails its verdict."""
    model, example = models.offset_attention()
    data = dict(example_inputs=example, calibration=_data(), samples=16)
    row = api.convert(model, ["onnx"], precision="int8", out=tmp_path / "run", keep_wider=[KEPT], **data).targets["onnx"]
    assert row.status == "passed", row.messages
    kept = row.details["quantization"]["kept_float"]
    artifact = _artifact(tmp_path / "run", row)
    onnx_model = onnx.load(str(artifact))
    proj = _linear(onnx_model, KEPT)
    assert kept["onnx_nodes"] == kept["guarded"] == [proj.name] and _float_weight(onnx_model, proj)
    guard = next(n for n in onnx_model.graph.node if n.op_type == "Sum" and list(n.input) == list(proj.output))
    assert any("one-input Sum" in m for m in row.messages), row.messages

    # the guard taken out: the same float weights, which onnxruntime now quantizes itself
    proj.output[0] = guard.output[0]
    onnx_model.graph.node.remove(guard)
    onnx.save(onnx_model, str(tmp_path / "unguarded.onnx"))
    verdict = api.validate(tmp_path / "unguarded.onnx", model, target="onnx", out=tmp_path / "unguarded", **data).targets["onnx"]
    assert verdict.status == "failed", verdict.messages


# --------------------------------------------------------------------------- which ONNX nodes a module holds


def test_onnxruntime_fused_nodes_and_the_reshapes_between_kept_nodes_are_kept():
    """After onnxruntime's optimizer a node's scope comes from the export's node of its name
    (``<first>/<Name>Fusion``, ``<name>_token_<n>``); a scope-less Reshape it put between two kept
    nodes is kept with them, one leading into an int8 node is not."""
    graph = helper.make_graph(
        [
            helper.make_node("LayerNormalization", ["x", "g", "b"], ["n"], name="node_layer_norm"),
            helper.make_node("Reshape", ["n", "s"], ["n2"], name="gemm_input_reshape_token_4"),
            helper.make_node("Gemm", ["n2", "w", "c"], ["q2"], name="node_MatMul_1/MatMulAddFusion"),
            helper.make_node("Reshape", ["q2", "s3"], ["q"], name="gemm_output_reshape_token_7"),
            helper.make_node("Softmax", ["q"], ["y"], name="node_softmax"),
        ],
        "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 4])], [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 4])],
    )
    scopes = {"node_layer_norm": "block.norm", "node_MatMul_1": "block.query", "node_linear": "block.query", "node_softmax": "block"}
    kept = kept_float_nodes(graph, scopes, WiderLayers(("block.norm", "block.query", "block.missing"), "float", "user"))
    assert kept["nodes"] == ["node_layer_norm", "gemm_input_reshape_token_4", "node_MatMul_1/MatMulAddFusion"]
    assert kept["modules"] == ["block.norm", "block.query"] and kept["missing"] == ["block.missing"]
    everything = kept_float_nodes(graph, scopes, WiderLayers(("block.norm", "block.query", "block"), "float", "user"))
    assert everything["nodes"] == [n.name for n in graph.node]
