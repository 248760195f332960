"""Per-channel scales where the kernel takes one (docs/int8_recipes.md, "Per-channel scales a
kernel refuses"): the detection on hand-built .tflite files (fast: the file LiteRT refuses to
load, the file whose BATCH_MATMUL kernel would read one scale, and the per-channel conv / fully
connected weights that are fine), the route around it (converting again with per-tensor weights
for that op) and ConvNeXt on coral and mcu (slow: whole conversions)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgex.core import api
from edgex.targets.litert import convert as litert
from edgex.targets.litert.runtime import LiteRTRuntime
from edgex.targets.litert.graph import read_graph, schema

sys.path.insert(0, str(Path(__file__).parent))
import models  # noqa: E402  (tests/models.py: the shared test models)

TARGET_SQNR_DB = 25.0


# --------------------------------------------------------------------------- hand-built files


def _tensor(module, shape, dtype, name, buffer=0, scales=(0.02,), axis=0):
    t = module.TensorT()
    t.shape, t.type, t.name, t.buffer = list(shape), dtype, name.encode(), buffer
    q = module.QuantizationParametersT()
    q.scale, q.zeroPoint, q.quantizedDimension = [float(s) for s in scales], [0] * len(scales), axis
    t.quantization = q
    return t


def _write(path, op_name, tensors, inputs, outputs, op_inputs, buffers, options=None):
    import flatbuffers

    module = schema()
    codes = {name: value for name, value in vars(module.BuiltinOperator).items() if not name.startswith("_")}
    model = module.ModelT()
    model.version = 3
    code = module.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = codes[op_name]
    code.version = 1
    model.operatorCodes = [code]
    op = module.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, list(op_inputs), list(outputs)
    if options is not None:
        op.builtinOptionsType, op.builtinOptions = options
    subgraph = module.SubGraphT()
    subgraph.tensors, subgraph.inputs, subgraph.outputs, subgraph.operators = tensors, list(inputs), list(outputs), [op]
    model.subgraphs = [subgraph]
    model.buffers = []
    for data in [None, *buffers]:
        buffer = module.BufferT()
        if data is not None:
            buffer.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), dtype=np.uint8)
        model.buffers.append(buffer)
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path.write_bytes(builder.Output())
    return path


def batch_matmul_file(path, axis: int):
    """x [1, 8, 16] @ w [16, 64] (a constant) as BATCH_MATMUL, w with 64 scales on ``axis``:
    axis 0 (size 16) is the file LiteRT refuses ("num_scales must be 1 ... or 16 ... but got 64"),
    axis 1 one it loads, whose int8 BATCH_MATMUL kernel reads one scale."""
    module, int8 = schema(), 9
    weights = np.random.default_rng(0).integers(-127, 128, (16, 64)).astype(np.int8)
    scales = np.linspace(0.001, 0.01, 64)
    tensors = [
        _tensor(module, (1, 8, 16), int8, "x"),
        _tensor(module, (16, 64), int8, "w", buffer=1, scales=scales, axis=axis),
        _tensor(module, (1, 8, 64), int8, "y", scales=(0.05,)),
    ]
    options = module.BatchMatMulOptionsT()
    return _write(path, "BATCH_MATMUL", tensors, [0], [2], [0, 1], [weights], (module.BuiltinOptions.BatchMatMulOptions, options))


def fully_connected_file(path):
    """x [1, 16] -> FULLY_CONNECTED with per-channel weights [64, 16] (axis 0) and bias: what
    the kernels take."""
    module, int8, int32 = schema(), 9, 2
    weights = np.random.default_rng(0).integers(-127, 128, (64, 16)).astype(np.int8)
    scales = np.linspace(0.001, 0.01, 64)
    tensors = [
        _tensor(module, (1, 16), int8, "x"),
        _tensor(module, (64, 16), int8, "w", buffer=1, scales=scales, axis=0),
        _tensor(module, (64,), int32, "b", buffer=2, scales=scales * 0.02, axis=0),
        _tensor(module, (1, 64), int8, "y", scales=(0.05,)),
    ]
    options = module.FullyConnectedOptionsT()
    return _write(path, "FULLY_CONNECTED", tensors, [0], [3], [0, 1, 2], [weights, np.zeros(64, np.int32)],
                  (module.BuiltinOptions.FullyConnectedOptions, options))


def test_detection_fires_on_the_file_litert_refuses(tmp_path):
    path = batch_matmul_file(tmp_path / "refused.tflite", axis=0)
    # the artifact of the issue: LiteRT's loader refuses it
    with pytest.raises(Exception, match="num_scales must be 1 for per-layer quantization, or 16 for per-axis quantization, but got 64"):
        LiteRTRuntime(path)
    findings = litert.per_channel_misuse(read_graph(path))
    assert [(f["op"], f["input"], f["tensor"], f["scales"]) for f in findings] == [("BATCH_MATMUL", 1, "w", 64)]
    assert "LiteRT refuses to load" in findings[0]["why"]
    with pytest.raises(litert.PerChannelRejected, match=r"BATCH_MATMUL #0 input 1 'w' has 64 scales") as caught:
        litert.check_per_channel(read_graph(path))
    assert caught.value.ops == ("BATCH_MATMUL",)
    assert isinstance(caught.value, litert.RejectedArtifact)  # so every path that rejects falls back


def test_detection_fires_where_the_kernel_takes_one_scale(tmp_path):
    path = batch_matmul_file(tmp_path / "per_axis.tflite", axis=1)
    findings = litert.per_channel_misuse(read_graph(path))
    assert [(f["op"], f["input"], f["axis"]) for f in findings] == [("BATCH_MATMUL", 1, 1)]
    assert "takes one scale" in findings[0]["why"]


def test_per_channel_weights_the_kernels_take_pass(tmp_path):
    path = fully_connected_file(tmp_path / "fc.tflite")
    LiteRTRuntime(path)  # loads and runs
    assert litert.per_channel_misuse(read_graph(path)) == []
    litert.check_per_channel(read_graph(path))


# --------------------------------------------------------------------------- whole conversions


class ConvNeXtBlock(nn.Module):
    """ConvNeXt's block as transformers writes it: depthwise 7x7, LayerNorm over channels (NHWC
    by permute), Linear 4x expansion, GELU, Linear, layer scale, residual."""

    def __init__(self, channels: int, layer_scale: float = 0.5) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(channels, channels, 7, padding=3, groups=channels)
        self.norm = nn.LayerNorm(channels)
        self.pwconv1 = nn.Linear(channels, 4 * channels)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * channels, channels)
        self.gamma = nn.Parameter(torch.full((channels,), layer_scale))

    def forward(self, x):
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.gamma * self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXtLike(nn.Module):
    def __init__(self, channels: int = 16, classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, channels, 4, 4)
        self.block = ConvNeXtBlock(channels)
        self.norm = nn.LayerNorm(channels)
        self.classifier = nn.Linear(channels, classes)

    def forward(self, x):
        x = self.block(self.stem(x))
        return self.classifier(self.norm(x.mean((2, 3))))


def _assert_row(report, target: str) -> None:
    row = report.targets[target]
    assert row.status == "passed", row.messages
    assert row.parity.sqnr_db >= TARGET_SQNR_DB, (row.parity.sqnr_db, row.messages)
    assert "per_tensor_weights_for" not in row.details.get("int8_checks", {}), row.messages


@pytest.mark.slow
def test_convnext_block_full_int8_on_coral_and_mcu(tmp_path):
    torch.manual_seed(0)
    model = ConvNeXtLike().eval()
    report = api.convert(model, ["coral", "mcu"], out=tmp_path, example_inputs=(torch.randn(1, 3, 32, 32),), samples=16)
    for target in ("coral", "mcu"):
        _assert_row(report, target)


@pytest.mark.slow
def test_per_channel_refusal_is_routed_around(tmp_path, monkeypatch):
    """With FULLY_CONNECTED's weights declared per-tensor-only, the first litert-torch artifact
    (per-channel rows) is refused and the path converts again with per-tensor weights for
    FULLY_CONNECTED: the row says so, and the artifact has one scale per fully-connected weight."""
    monkeypatch.delitem(litert.PER_CHANNEL_INPUTS, ("FULLY_CONNECTED", 1))
    torch.manual_seed(0)
    model = ConvNeXtLike().eval()
    report = api.convert(model, ["coral"], out=tmp_path, example_inputs=(torch.randn(1, 3, 32, 32),), samples=16)
    row = report.targets["coral"]
    assert row.status == "passed", row.messages
    assert row.details["int8_checks"]["per_tensor_weights_for"] == ["FULLY_CONNECTED"]
    assert row.details["int8_checks"]["per_channel_refused"][0]["op"] == "FULLY_CONNECTED"
    assert any(m.startswith("litert-torch converted with per-tensor weights for FULLY_CONNECTED") for m in row.messages)
    graph = read_graph(next(tmp_path.rglob("coral/*.tflite")))
    fcs = [op for op in graph.operators if op.name == "FULLY_CONNECTED"]
    assert fcs and all(not graph.tensor(op.inputs[1]).per_channel for op in fcs)
    assert litert.per_channel_misuse(graph) == []


@pytest.mark.slow
def test_transformers_convnext_full_int8(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.ConvNextConfig(
        num_channels=3, hidden_sizes=[16, 32], depths=[1, 1], num_stages=2, num_labels=5, image_size=32,
    )

    model = models.ImageLogits(transformers.ConvNextForImageClassification(config)).eval()
    report = api.convert(model, ["coral", "mcu"], out=tmp_path, example_inputs=(torch.randn(1, 3, 32, 32),), samples=16)
    for target in ("coral", "mcu"):
        _assert_row(report, target)
