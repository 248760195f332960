"""Planting defects directly in converted artifact files (issues 15 and 28: is the parity verdict independent?).

Each planter takes an artifact and writes a modified copy, returning a :class:`Planted` that says
where the defect went. Test scaffolding, not product code: tests load it by path (it lives next to
``tests/models.py``; ``--import-mode=importlib`` puts no test folder on ``sys.path``), and
``benchmarks/int8_defects.py`` uses it to measure which defects the parity verdict catches.

Formats and what each defect does to the data:

- full-int8 ``.tflite`` (targets tflite, coral and mcu all validate this file): the weight ops are
  CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED with per-channel int8 weights. Edited through the
  flatbuffer object API (``ModelT``), repacked, every buffer inline, so LiteRT and TFLM load it.
- float and dynamic-int8 ``.tflite`` (tflite at fp32, fp16 and dynamic-int8; ``_format`` says
  "tflite-float" where no weight op has a quantized weight): the float weight is the op's own
  float32 constant, or at fp16 the float16 constant a DEQUANTIZE feeds it; the bias is float32.
  Edited in the buffers, in their dtype. dynamic-int8 weights are int8 with per-channel scales (the
  full-int8 edits), their bias float32 (edited as float).
- ONNX int8 (QDQ; targets onnx and jetson: both write per-channel symmetric int8 weights, jetson's
  activations are symmetric too, as TensorRT requires, onnx's are not): the weight ops are Conv,
  Gemm and MatMul whose weight input is a DequantizeLinear of an int8 initializer with a
  per-channel scale. (edgex's onnx target has no dynamic-int8 precision;
  its int8 is QDQ static quantization.)
- ONNX float (``_format`` says "onnx-float" for an .onnx whose weight ops read no
  DequantizeLinear): onnx at fp16 (float16 initializers, the graph's float32 input and output
  Cast), jetson at fp16 (the artifact keeps float32 weights: TensorRT builds fp16 on the device,
  emulated on onnxruntime here) and both at fp32. The weight ops are Conv, Gemm and MatMul whose
  weight is a float initializer, read directly or through a Cast; their bias is the op's third
  input (a MatMul's: the initializer of the Add that consumes it). Edited in the initializers, in
  their own dtype.
- Core ML dynamic-int8 ``.mlpackage``: the weight ops are the ``constexpr_affine_dequantize`` /
  ``constexpr_blockwise_shift_scale`` ops whose scale (and data) are blobs in weight.bin, patched
  in place. coremltools keeps small weights (the digits CNN's first conv and classifier) in fp16:
  only compressed weights count. Core ML fp32 / fp16 (``_format`` says "mlpackage-float"): the
  weight ops are conv, linear and conv_transpose whose weight is a ``const`` blob, patched in its
  dtype. ``scale_output`` is impossible there (a Core ML program's outputs
  are float; no scale is stored for them), and so is ``drop_bias`` on a weight without a blob bias.

- ExecuTorch ``.pte`` (fp32 or int8, XNNPACK-lowered): the program holds no tensor names and its
  weights sit in the XNNPACK delegate's blob (or the program's constant data), so the ``pte_*``
  planters find a *known* weight's bytes in the file -- the float32 values of a layer the
  converter keeps as is (one without a BatchNorm folded into it), or at int8 the int8 values and
  float32 per-channel scales the XNNPACK quantizer computes from it (``xnnpack_int8_weight``) --
  and overwrite them in place, refusing when the bytes are not found exactly once.

Defects (``layer`` is "last", "middle" or an index into the format's weight ops, in graph order):

- ``scale_channel``: output channel ``channel`` of the layer computes ``factor`` x its value before
  the activation (tflite: the kernel's requantisation multiplier of that channel -- bias included,
  since the int32 bias is read at input scale x weight scale; onnx: the weight and bias scales of
  the channel; onnx-float: the channel's weights and bias; coreml: the dequant scale, so the bias
  is not scaled).
- ``swap_channels``: the layer's output channels ``a`` and ``b`` are computed in each other's place
  (weights, bias, scales and zero points swapped), so the next layer reads them in the wrong order.
- ``shift_bias``: ``shift`` x the bias's spread (its standard deviation over the layer's output
  channels, in float; max |bias| where all channels are equal) added to the bias of channel
  ``channel`` (every channel when None), before the activation. The unit is the layer's own, so
  the shift is material whatever the layer's scale: the default, 1 spread on every channel, moves
  each pre-activation by about as much as its bias varies between channels. tflite and onnx int8:
  the int32 bias gains the shift in its own units (tflite: the bias tensor's scale, input scale x
  weight scale; onnx: the bias DequantizeLinear's scale), rounded and clipped to int32; onnx-float
  and coreml: the float bias, in its dtype.
- ``scale_output``: the model output's quantisation scale is written ``factor`` x while the int8
  values stay what they were (tflite: the producing weight op's scales are multiplied too, which
  cancels in its requantisation; onnx: only the final DequantizeLinear's scale changes), so the
  dequantized output is ``factor`` x the honest one. Impossible on onnx-float (no scale is stored
  for a float output) and coreml; on ONNX int8 it is also "a scale coarsened": onnx's and jetson's
  int8 artifacts alike.
- ``drop_bias``: the layer's bias is all zeros.
"""

from __future__ import annotations

import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

TFLITE_WEIGHT_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
ONNX_WEIGHT_OPS = ("Conv", "Gemm", "MatMul")
#: TensorProto data types of float weights: FLOAT, FLOAT16, DOUBLE, BFLOAT16
_ONNX_FLOATS = (1, 10, 11, 16)
COREML_WEIGHT_OPS = ("constexpr_affine_dequantize", "constexpr_blockwise_shift_scale")
#: ops that move int8 bytes without requantising: an output scale written behind them reaches the data as is
_TFLITE_BYTE_MOVERS = ("RESHAPE", "SQUEEZE", "EXPAND_DIMS")


@dataclass(frozen=True)
class Planted:
    """Where a defect went: the written file, the defect, the layer (a name in the file) and its details."""

    path: Path
    defect: str
    layer: str
    details: dict[str, Any]


def _pick(layers: list, layer: str | int) -> int:
    if not layers:
        raise ValueError("the artifact has no quantized weight op to plant a defect in")
    if layer == "last":
        return len(layers) - 1
    if layer == "middle":
        return (len(layers) - 1) // 2
    return int(layer)


def _format(path: Path) -> str:
    """"tflite", "onnx" (int8 QDQ), "onnx-float" (float weights) or "mlpackage"."""
    path = Path(path)
    if path.suffix == ".onnx":
        return "onnx" if _onnx_is_qdq(path) else "onnx-float"
    if path.suffix == ".tflite":
        return "tflite" if _tflite_quantized(path) else "tflite-float"
    if path.suffix == ".mlpackage":
        return "mlpackage" if _coreml_compressed(path) else "mlpackage-float"
    raise ValueError(f"{path}: not a .tflite, .onnx or .mlpackage artifact")


# --------------------------------------------------------------------------- .tflite


def _tflite_edit(path: Path, out: Path, edit: Callable[[Any, Any, dict[str, str]], Planted]) -> Planted:
    """Copy ``path`` to ``out`` with every buffer inline, let ``edit(model, subgraph, opnames)`` change
    the ``ModelT``, repack it."""
    import flatbuffers

    from edgex.targets.litert.graph import _builtin_names, rewrite, schema

    out = Path(out)
    shutil.copyfile(path, out)
    rewrite(out)  # weights appended after the flatbuffer ("offset buffers") would not survive a repack
    model = schema().ModelT.InitFromPackedBuf(bytearray(out.read_bytes()), 0)
    names = _builtin_names()
    opnames = [names.get(max(int(c.builtinCode), int(c.deprecatedBuiltinCode)), "") for c in model.operatorCodes]
    planted = edit(model, model.subgraphs[0], opnames)
    builder = flatbuffers.Builder(max(1024, out.stat().st_size))
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    out.write_bytes(builder.Output())
    return planted


def _tflite_weight_ops(subgraph: Any, opnames: list[str]) -> list[Any]:
    ops = []
    for op in subgraph.operators:
        if opnames[op.opcodeIndex] in TFLITE_WEIGHT_OPS and len(op.inputs) > 1:
            q = subgraph.tensors[op.inputs[1]].quantization
            if q is not None and q.scale is not None and len(q.scale):
                ops.append(op)
    return ops


def _tflite_array(model: Any, tensor: Any, dtype: str) -> np.ndarray:
    shape = [int(d) for d in tensor.shape]
    return np.asarray(model.buffers[tensor.buffer].data, dtype=np.uint8).view(dtype).reshape(shape).copy()


def _tflite_store(model: Any, tensor: Any, values: np.ndarray) -> None:
    model.buffers[tensor.buffer].data = np.ascontiguousarray(values).view(np.uint8).reshape(-1)


def _tflite_layer(model: Any, subgraph: Any, opnames: list[str], layer: str | int) -> tuple[Any, Any, Any, int]:
    """(op, weight tensor, bias tensor or None, output-channel axis) of the chosen weight op."""
    ops = _tflite_weight_ops(subgraph, opnames)
    op = ops[_pick(ops, layer)]
    weight = subgraph.tensors[op.inputs[1]]
    bias = subgraph.tensors[op.inputs[2]] if len(op.inputs) > 2 and op.inputs[2] >= 0 else None
    return op, weight, bias, int(weight.quantization.quantizedDimension)


def _tflite_model(path: Path) -> tuple[Any, list[str]]:
    from edgex.targets.litert.graph import _builtin_names, schema

    model = schema().ModelT.InitFromPackedBuf(bytearray(Path(path).read_bytes()), 0)
    names = _builtin_names()
    return model, [names.get(max(int(c.builtinCode), int(c.deprecatedBuiltinCode)), "") for c in model.operatorCodes]


def _tflite_quantized(path: Path) -> bool:
    """Whether a weight op of the .tflite has a quantized (int8) weight: full or dynamic int8."""
    model, opnames = _tflite_model(path)
    return bool(_tflite_weight_ops(model.subgraphs[0], opnames))


#: TFLite tensor types of float constants (schema TensorType) and their dtypes
_TFLITE_FLOATS = {0: "float32", 1: "float16"}


def _tflite_stored(model: Any, subgraph: Any, opnames: list[str], index: int) -> Any | None:
    """The constant tensor holding the float value of input ``index``: itself, or the float16
    constant a DEQUANTIZE expands (fp16 .tflite); None when the input is computed."""
    producer = next((op for op in subgraph.operators if index in list(op.outputs)), None)
    if producer is not None:
        if opnames[producer.opcodeIndex] != "DEQUANTIZE":
            return None
        index = producer.inputs[0]
    tensor = subgraph.tensors[index]
    data = model.buffers[tensor.buffer].data
    return tensor if int(tensor.type) in _TFLITE_FLOATS and data is not None and len(data) else None


def _tflite_float_layer(model: Any, subgraph: Any, opnames: list[str], layer: str | int) -> tuple[Any, Any, int]:
    """(stored weight tensor, stored bias tensor or None, output-channel axis) of the chosen float weight op."""
    layers = []
    for op in subgraph.operators:
        name = opnames[op.opcodeIndex]
        if name in TFLITE_WEIGHT_OPS and len(op.inputs) > 1 and (weight := _tflite_stored(model, subgraph, opnames, op.inputs[1])) is not None:
            bias = _tflite_stored(model, subgraph, opnames, op.inputs[2]) if len(op.inputs) > 2 and op.inputs[2] >= 0 else None
            layers.append((weight, bias, 3 if name == "DEPTHWISE_CONV_2D" else 0))
    return layers[_pick(layers, layer)]


def _tflite_floats(model: Any, tensor: Any) -> np.ndarray:
    return _tflite_array(model, tensor, _TFLITE_FLOATS[int(tensor.type)])


def _name(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, (bytes, bytearray)) else str(value)


# --------------------------------------------------------------------------- .onnx


def _onnx_edit(path: Path, out: Path, edit: Callable[[Any, dict[str, Any]], Planted]) -> Planted:
    import onnx

    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    planted = edit(model, inits)
    onnx.save(model, str(out))
    return planted


def _onnx_get(inits: dict[str, Any], name: str) -> np.ndarray:
    from onnx import numpy_helper

    return numpy_helper.to_array(inits[name]).copy()


def _onnx_set(inits: dict[str, Any], name: str, values: np.ndarray) -> None:
    from onnx import numpy_helper

    inits[name].CopyFrom(numpy_helper.from_array(np.asarray(values, dtype=_onnx_get(inits, name).dtype), name))


def _onnx_dequantized(model: Any, inits: dict[str, Any], tensor: str) -> tuple[Any, int] | None:
    """The DequantizeLinear of an initializer that produces ``tensor``, and its axis; else None."""
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and tensor in node.output and node.input[0] in inits:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            return node, axis
    return None


def _onnx_layer(model: Any, inits: dict[str, Any], layer: str | int) -> tuple[Any, Any, int, Any]:
    """(weight op, weight DequantizeLinear, its channel axis, bias DequantizeLinear or None)."""
    ops = []
    for node in model.graph.node:
        if node.op_type in ONNX_WEIGHT_OPS and len(node.input) > 1:
            found = _onnx_dequantized(model, inits, node.input[1])
            if found is not None and _onnx_get(inits, found[0].input[1]).size > 1:
                ops.append((node, *found))
    node, weight, axis = ops[_pick(ops, layer)]
    if node.op_type == "MatMul":
        axis = 1  # weight [in, out]
    bias = _onnx_dequantized(model, inits, node.input[2]) if len(node.input) > 2 and node.input[2] else None
    return node, weight, axis, bias[0] if bias else None


def _onnx_is_qdq(path: Path) -> bool:
    """Whether a weight op of the .onnx at ``path`` reads its weight through a DequantizeLinear."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    dequantized = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return any(n.op_type in ONNX_WEIGHT_OPS and len(n.input) > 1 and n.input[1] in dequantized for n in model.graph.node)


def _onnx_source(model: Any, inits: dict[str, Any], tensor: str) -> str | None:
    """The float initializer that is ``tensor``, directly or through a Cast (fp16 graphs); else None."""
    if tensor in inits:
        return tensor
    for node in model.graph.node:
        if node.op_type == "Cast" and tensor in node.output and node.input[0] in inits:
            return node.input[0]
    return None


def _onnx_bias_tensor(model: Any, node: Any) -> str | None:
    """The tensor added to ``node``'s output as its bias: a Conv's or Gemm's third input, a MatMul's
    sole consumer's other input where that consumer is an Add."""
    if node.op_type != "MatMul":
        return node.input[2] if len(node.input) > 2 and node.input[2] else None
    consumers = [n for n in model.graph.node if node.output[0] in n.input]
    if len(consumers) == 1 and consumers[0].op_type == "Add":
        return next(i for i in consumers[0].input if i != node.output[0])
    return None


def _onnx_float_layer(model: Any, inits: dict[str, Any], layer: str | int) -> tuple[Any, str, int, str | None]:
    """(weight op, weight initializer, its output-channel axis, bias initializer or None) of a float graph."""
    ops = []
    for node in model.graph.node:
        if node.op_type in ONNX_WEIGHT_OPS and len(node.input) > 1:
            weight = _onnx_source(model, inits, node.input[1])
            if weight is not None and inits[weight].data_type in _ONNX_FLOATS and len(inits[weight].dims) >= 2:
                ops.append((node, weight))
    node, weight = ops[_pick(ops, layer)]
    rank = len(inits[weight].dims)
    if node.op_type == "Gemm":
        axis = 0 if next((a.i for a in node.attribute if a.name == "transB"), 0) else 1
    elif node.op_type == "MatMul":
        axis = rank - 1  # weight [..., in, out]
    else:
        axis = 0  # Conv: [out, in / group, *kernel]
    tensor = _onnx_bias_tensor(model, node)
    bias = _onnx_source(model, inits, tensor) if tensor else None
    if bias is not None and int(np.prod(inits[bias].dims)) != int(inits[weight].dims[axis]):
        bias = None  # a broadcast constant, not one value per output channel
    return node, weight, axis, bias


# --------------------------------------------------------------------------- .mlpackage

#: MIL blob storage data types (coremltools mil/mil/backend/... BlobDataType)
_BLOB_DTYPES = {1: np.float16, 2: np.float32, 3: np.uint8, 4: np.int8}


class _Blobs:
    """The weight.bin of a copied .mlpackage, patched in place at the offsets the program names."""

    def __init__(self, package: Path):
        self.file = package / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
        self.data = bytearray(self.file.read_bytes())

    def _where(self, value: Any) -> tuple[int, int, Any]:
        if value.WhichOneof("value") != "blobFileValue":
            raise ValueError("the value is stored in the program, not in weight.bin: this planter patches weight.bin only")
        sentinel, dtype, size, offset = struct.unpack_from("<IIQQ", self.data, value.blobFileValue.offset)
        if sentinel != 0xDEADBEEF or dtype not in _BLOB_DTYPES:
            raise ValueError(f"weight.bin: no blob of a known type at {value.blobFileValue.offset}")
        return offset, size, _BLOB_DTYPES[dtype]

    def get(self, value: Any) -> np.ndarray:
        offset, size, dtype = self._where(value)
        return np.frombuffer(bytes(self.data[offset:offset + size]), dtype=dtype).copy()

    def put(self, value: Any, array: np.ndarray) -> None:
        offset, size, dtype = self._where(value)
        raw = np.ascontiguousarray(array, dtype=dtype).tobytes()
        assert len(raw) == size, "a patched blob keeps its size"
        self.data[offset:offset + size] = raw

    def save(self) -> None:
        self.file.write_bytes(bytes(self.data))


def _coreml_edit(path: Path, out: Path, edit: Callable[[Any, _Blobs], Planted]) -> Planted:
    import coremltools as ct

    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(path, out)
    spec = ct.models.MLModel(str(out), skip_model_load=True).get_spec()
    function = spec.mlProgram.functions[spec.description.defaultFunctionName or "main"]
    block = function.block_specializations[function.opset]
    blobs = _Blobs(out)
    planted = edit(block, blobs)
    blobs.save()
    return planted


def _coreml_layer(block: Any, layer: str | int) -> tuple[Any, Any, Any]:
    """(compressed-weight op, the op consuming it, its bias value or None)."""
    ops = [op for op in block.operations if op.type in COREML_WEIGHT_OPS]
    op = ops[_pick(ops, layer)]
    weight = op.outputs[0].name
    consumer = next(o for o in block.operations if any(a.name == weight for v in o.inputs.values() for a in v.arguments))
    bias = None
    if "bias" in consumer.inputs:
        bias_name = consumer.inputs["bias"].arguments[0].name
        bias = next((o.attributes["val"] for o in block.operations if o.type == "const" and o.outputs[0].name == bias_name), None)
    return op, consumer, bias


def _coreml_compressed(path: Path) -> bool:
    """Whether the .mlpackage holds compressed (constexpr) weights: dynamic-int8 or palettized."""
    return any(op.type in COREML_WEIGHT_OPS for op in _coreml_block(path).operations)


def _coreml_block(path: Path) -> Any:
    import coremltools as ct

    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    function = spec.mlProgram.functions[spec.description.defaultFunctionName or "main"]
    return function.block_specializations[function.opset]


#: Core ML ops whose "weight" input is a float const at fp32 / fp16, and their output-channel axis
COREML_FLOAT_WEIGHT_OPS = {"conv": 0, "linear": 0, "conv_transpose": 1}


def _coreml_float_layer(block: Any, layer: str | int) -> tuple[Any, Any, int]:
    """(weight blob value, bias blob value or None, output-channel axis) of the chosen float weight op."""
    consts = {o.outputs[0].name: o.attributes["val"] for o in block.operations if o.type == "const"}
    layers = []
    for op in block.operations:
        if op.type in COREML_FLOAT_WEIGHT_OPS and "weight" in op.inputs:
            weight = consts.get(op.inputs["weight"].arguments[0].name)
            if weight is not None and weight.WhichOneof("value") == "blobFileValue":
                bias = consts.get(op.inputs["bias"].arguments[0].name) if "bias" in op.inputs else None
                layers.append((weight, bias, COREML_FLOAT_WEIGHT_OPS[op.type]))
    return layers[_pick(layers, layer)]


def _blob_shape(value: Any) -> list[int]:
    return [int(d.constant.size) for d in value.type.tensorType.dimensions]


def _coreml_data_key(op: Any) -> str:
    return "quantized_data" if "quantized_data" in op.attributes else "data"


def _coreml_offset_key(op: Any) -> str:
    return "zero_point" if "zero_point" in op.attributes else "offset"


# --------------------------------------------------------------------------- the defects


def scale_channel(path: Path, out: Path, layer: str | int = "last", channel: int = 0, factor: float = 1.5) -> Planted:
    """Output channel ``channel`` of ``layer`` computes ``factor`` x its value (see the module doc)."""
    kind = _format(path)
    if kind == "tflite":
        def edit(model, subgraph, opnames):
            op, weight, _, _ = _tflite_layer(model, subgraph, opnames, layer)
            scales = np.array(weight.quantization.scale, dtype=np.float32)
            scales[channel] *= factor
            weight.quantization.scale = scales
            return Planted(Path(out), "scale_channel", _name(weight.name), {"channel": channel, "factor": factor})

        return _tflite_edit(path, out, edit)
    if kind in ("tflite-float", "mlpackage-float"):
        return _float_channels(path, out, kind, layer, lambda values, axis: _channel_scaled(values, axis, channel, factor), "scale_channel", {"channel": channel, "factor": factor})
    if kind == "onnx":
        def edit(model, inits):
            node, weight, _, bias = _onnx_layer(model, inits, layer)
            for dq in (weight, bias):
                if dq is not None:
                    scales = _onnx_get(inits, dq.input[1])
                    scales[channel] *= factor
                    _onnx_set(inits, dq.input[1], scales)
            return Planted(Path(out), "scale_channel", weight.input[0], {"channel": channel, "factor": factor})

        return _onnx_edit(path, out, edit)
    if kind == "onnx-float":
        def edit(model, inits):
            _, weight, axis, bias = _onnx_float_layer(model, inits, layer)
            for name, at in ((weight, axis), (bias, 0)):
                if name is not None:
                    values = _onnx_get(inits, name)
                    index = [slice(None)] * values.ndim
                    index[at] = channel
                    values[tuple(index)] *= values.dtype.type(factor)
                    _onnx_set(inits, name, values)
            return Planted(Path(out), "scale_channel", weight, {"channel": channel, "factor": factor})

        return _onnx_edit(path, out, edit)

    def edit(block, blobs):
        op, _, _ = _coreml_layer(block, layer)
        scales = blobs.get(op.attributes["scale"])
        scales[channel] *= factor
        blobs.put(op.attributes["scale"], scales)
        return Planted(Path(out), "scale_channel", op.outputs[0].name, {"channel": channel, "factor": factor})

    return _coreml_edit(path, out, edit)


def swap_channels(path: Path, out: Path, layer: str | int = "middle", a: int = 0, b: int = 1) -> Planted:
    """Output channels ``a`` and ``b`` of ``layer`` swapped: weights, bias, scales, zero points."""
    kind = _format(path)
    details = {"channels": (a, b)}
    if kind == "tflite":
        def edit(model, subgraph, opnames):
            _, weight, bias, axis = _tflite_layer(model, subgraph, opnames, layer)
            values = _tflite_array(model, weight, "int8")
            _tflite_store(model, weight, _swapped(values, axis, a, b))
            q = weight.quantization
            q.scale = _swapped(np.array(q.scale, dtype=np.float32), 0, a, b)
            if q.zeroPoint is not None and len(q.zeroPoint) > 1:
                q.zeroPoint = _swapped(np.array(q.zeroPoint, dtype=np.int64), 0, a, b)
            if bias is not None:
                _tflite_store(model, bias, _swapped(_tflite_array(model, bias, "int32"), 0, a, b))
            return Planted(Path(out), "swap_channels", _name(weight.name), details)

        return _tflite_edit(path, out, edit)
    if kind in ("tflite-float", "mlpackage-float"):
        return _float_channels(path, out, kind, layer, lambda values, axis: _swapped(values, axis, a, b), "swap_channels", details)
    if kind == "onnx":
        def edit(model, inits):
            _, weight, axis, bias = _onnx_layer(model, inits, layer)
            _onnx_set(inits, weight.input[0], _swapped(_onnx_get(inits, weight.input[0]), axis, a, b))
            for dq in (weight, bias):
                if dq is None:
                    continue
                for name in list(dq.input[1:3]) + ([dq.input[0]] if dq is bias else []):
                    values = _onnx_get(inits, name)
                    if values.size > 1:
                        _onnx_set(inits, name, _swapped(values, 0, a, b))
            return Planted(Path(out), "swap_channels", weight.input[0], details)

        return _onnx_edit(path, out, edit)
    if kind == "onnx-float":
        def edit(model, inits):
            _, weight, axis, bias = _onnx_float_layer(model, inits, layer)
            _onnx_set(inits, weight, _swapped(_onnx_get(inits, weight), axis, a, b))
            if bias is not None:
                _onnx_set(inits, bias, _swapped(_onnx_get(inits, bias).reshape(-1), 0, a, b).reshape(tuple(inits[bias].dims)))
            return Planted(Path(out), "swap_channels", weight, details)

        return _onnx_edit(path, out, edit)

    def edit(block, blobs):
        op, _, bias = _coreml_layer(block, layer)
        for key in (_coreml_data_key(op), "scale", _coreml_offset_key(op)):
            value = op.attributes.get(key) if key in op.attributes else None
            if value is None or value.WhichOneof("value") != "blobFileValue":
                continue
            shape = [int(d.constant.size) for d in value.type.tensorType.dimensions]
            blobs.put(value, _swapped(blobs.get(value).reshape(shape), 0, a, b))
        if bias is not None:
            blobs.put(bias, _swapped(blobs.get(bias), 0, a, b))
        return Planted(Path(out), "swap_channels", op.outputs[0].name, details)

    return _coreml_edit(path, out, edit)


def _float_channels(path: Path, out: Path, kind: str, layer: str | int, change: Callable[[np.ndarray, int], np.ndarray], defect: str, details: dict[str, Any]) -> Planted:
    """``change(values, axis)`` applied to ``layer``'s float weight (at its output-channel axis)
    and bias (axis 0), in their dtype: float .tflite and Core ML fp32 / fp16."""
    if kind == "tflite-float":
        def edit(model, subgraph, opnames):
            weight, bias, axis = _tflite_float_layer(model, subgraph, opnames, layer)
            for tensor, at in ((weight, axis), (bias, 0)):
                if tensor is not None:
                    _tflite_store(model, tensor, change(_tflite_floats(model, tensor), at))
            return Planted(Path(out), defect, _name(weight.name), details)

        return _tflite_edit(path, out, edit)

    def edit(block, blobs):
        weight, bias, axis = _coreml_float_layer(block, layer)
        blobs.put(weight, change(blobs.get(weight).reshape(_blob_shape(weight)), axis))
        if bias is not None and bias.WhichOneof("value") == "blobFileValue":  # a small bias may sit in the program
            blobs.put(bias, change(blobs.get(bias), 0))
        return Planted(Path(out), defect, "weight", details)

    return _coreml_edit(path, out, edit)


def _channel_scaled(values: np.ndarray, axis: int, channel: int, factor: float) -> np.ndarray:
    values = np.array(values, copy=True)
    index = [slice(None)] * values.ndim
    index[axis] = channel
    values[tuple(index)] *= values.dtype.type(factor)
    return values


def _swapped(values: np.ndarray, axis: int, a: int, b: int) -> np.ndarray:
    values = np.array(values, copy=True)
    order = np.arange(values.shape[axis])
    order[[a, b]] = order[[b, a]]
    return np.take(values, order, axis=axis)


def scale_output(path: Path, out: Path, factor: float = 4.0, output: int = 0) -> Planted:
    """The model output's quantisation scale written ``factor`` x: the dequantized output is ``factor`` x."""
    kind = _format(path)
    if kind == "tflite":
        def edit(model, subgraph, opnames):
            tensor = subgraph.outputs[output]
            chain = [tensor]
            while True:  # back through ops that copy int8 bytes, to the op that requantises
                producer = next(op for op in subgraph.operators if chain[-1] in op.outputs)
                if opnames[producer.opcodeIndex] not in _TFLITE_BYTE_MOVERS:
                    break
                chain.append(producer.inputs[0])
            if opnames[producer.opcodeIndex] not in TFLITE_WEIGHT_OPS:
                raise ValueError(f"the output is requantised by {opnames[producer.opcodeIndex]}, not a weight op: "
                                 "its int8 values would move with the scale")
            for index in chain:
                q = subgraph.tensors[index].quantization
                q.scale = np.array(q.scale, dtype=np.float32) * factor
            weight = subgraph.tensors[producer.inputs[1]].quantization
            weight.scale = np.array(weight.scale, dtype=np.float32) * factor  # cancels in the requantisation
            return Planted(Path(out), "scale_output", _name(subgraph.tensors[tensor].name), {"factor": factor})

        return _tflite_edit(path, out, edit)
    if kind == "onnx":
        def edit(model, inits):
            from onnx import numpy_helper

            name = model.graph.output[output].name
            dq = next(n for n in model.graph.node if name in n.output)
            if dq.op_type != "DequantizeLinear":
                raise ValueError(f"output {name!r} comes from {dq.op_type}, not a DequantizeLinear: it carries no scale")
            # its own initializer: the QuantizeLinear before it shares the scale's and must keep it
            written = name + "_planted_scale"
            model.graph.initializer.append(numpy_helper.from_array(_onnx_get(inits, dq.input[1]) * np.float32(factor), written))
            dq.input[1] = written
            return Planted(Path(out), "scale_output", name, {"factor": factor})

        return _onnx_edit(path, out, edit)
    if kind == "onnx-float":
        raise ValueError("a float ONNX graph's outputs carry no quantisation scale to write wrong")
    raise ValueError("a Core ML program's outputs are float: no output scale is stored to write wrong")


def drop_bias(path: Path, out: Path, layer: str | int = "last") -> Planted:
    """The bias of ``layer`` zeroed."""
    kind = _format(path)
    if kind == "tflite":
        def edit(model, subgraph, opnames):
            _, weight, bias, _ = _tflite_layer(model, subgraph, opnames, layer)
            if bias is None:
                raise ValueError(f"{_name(weight.name)}: the layer has no bias")
            _tflite_store(model, bias, np.zeros_like(_tflite_array(model, bias, "int32")))
            return Planted(Path(out), "drop_bias", _name(bias.name), {})

        return _tflite_edit(path, out, edit)
    if kind == "onnx":
        def edit(model, inits):
            node, weight, _, bias = _onnx_layer(model, inits, layer)
            if bias is None:
                raise ValueError(f"{node.name or node.op_type}: the layer has no quantized bias input")
            _onnx_set(inits, bias.input[0], np.zeros_like(_onnx_get(inits, bias.input[0])))
            return Planted(Path(out), "drop_bias", bias.input[0], {})

        return _onnx_edit(path, out, edit)
    if kind == "onnx-float":
        def edit(model, inits):
            node, _, _, bias = _onnx_float_layer(model, inits, layer)
            if bias is None:
                raise ValueError(f"{node.name or node.op_type}: the layer has no bias initializer")
            _onnx_set(inits, bias, np.zeros_like(_onnx_get(inits, bias)))
            return Planted(Path(out), "drop_bias", bias, {})

        return _onnx_edit(path, out, edit)

    def edit(block, blobs):
        op, _, bias = _coreml_layer(block, layer)
        if bias is None:
            raise ValueError(f"{op.outputs[0].name}: its consumer has no constant bias")
        blobs.put(bias, np.zeros_like(blobs.get(bias)))
        return Planted(Path(out), "drop_bias", op.outputs[0].name, {})

    return _coreml_edit(path, out, edit)


def _shifted(bias: np.ndarray, channel: int | None, shift: float) -> tuple[np.ndarray, float]:
    """(the float bias plus ``shift`` spreads on ``channel``, or every channel, the float shift)."""
    bias = np.asarray(bias, dtype=np.float64).reshape(-1)
    spread = float(bias.std()) or float(np.abs(bias).max())
    if spread == 0.0:
        raise ValueError("the bias is all zeros: it has no spread to measure a shift in")
    delta = shift * spread
    shifted = bias.copy()
    if channel is None:
        shifted += delta
    else:
        shifted[channel] += delta
    return shifted, delta


def _shifted_int32(values: np.ndarray, scales: np.ndarray, channel: int | None, shift: float) -> tuple[np.ndarray, float]:
    """An int32 bias read at ``scales`` (one, or one per channel), shifted as :func:`_shifted` says, in its own units."""
    values = np.asarray(values).reshape(-1)
    scales = np.broadcast_to(np.asarray(scales, dtype=np.float64).reshape(-1), values.shape)
    shifted, delta = _shifted(values * scales, channel, shift)
    quantized = np.clip(np.round(shifted / scales), np.iinfo(np.int32).min, np.iinfo(np.int32).max).astype(np.int32)
    return quantized, delta


def shift_bias(path: Path, out: Path, layer: str | int = "middle", channel: int | None = None, shift: float = 1.0) -> Planted:
    """``shift`` x the spread of ``layer``'s bias added to channel ``channel`` of it, every channel
    when None (see the module doc)."""
    kind = _format(path)
    if kind == "tflite":
        def edit(model, subgraph, opnames):
            _, weight, bias, _ = _tflite_layer(model, subgraph, opnames, layer)
            if bias is None:
                raise ValueError(f"{_name(weight.name)}: the layer has no bias")
            if int(bias.type) in _TFLITE_FLOATS:  # dynamic-int8: int8 weights, a float bias
                values = _tflite_floats(model, bias)
                shifted, delta = _shifted(values, channel, shift)
                _tflite_store(model, bias, shifted.astype(values.dtype).reshape(values.shape))
                return Planted(Path(out), "shift_bias", _name(bias.name), {"channel": channel, "shift": shift, "delta": delta})
            q = bias.quantization
            scales = np.array(q.scale, dtype=np.float64) if q is not None and q.scale is not None and len(q.scale) else None
            if scales is None:
                raise ValueError(f"{_name(bias.name)}: the bias carries no scale")
            values, delta = _shifted_int32(_tflite_array(model, bias, "int32"), scales, channel, shift)
            _tflite_store(model, bias, values.reshape([int(d) for d in bias.shape]))
            return Planted(Path(out), "shift_bias", _name(bias.name), {"channel": channel, "shift": shift, "delta": delta})

        return _tflite_edit(path, out, edit)
    if kind in ("tflite-float", "mlpackage-float"):
        def shifted_bias(values: np.ndarray, where: str) -> tuple[np.ndarray, Planted]:
            shifted, delta = _shifted(values, channel, shift)
            return shifted.astype(values.dtype).reshape(values.shape), Planted(Path(out), "shift_bias", where, {"channel": channel, "shift": shift, "delta": delta})

        if kind == "tflite-float":
            def edit(model, subgraph, opnames):
                weight, bias, _ = _tflite_float_layer(model, subgraph, opnames, layer)
                if bias is None:
                    raise ValueError(f"{_name(weight.name)}: the layer has no constant bias")
                values, planted = shifted_bias(_tflite_floats(model, bias), _name(bias.name))
                _tflite_store(model, bias, values)
                return planted

            return _tflite_edit(path, out, edit)

        def edit(block, blobs):
            _, bias, _ = _coreml_float_layer(block, layer)
            if bias is None or bias.WhichOneof("value") != "blobFileValue":
                raise ValueError("the layer has no bias in weight.bin")
            values, planted = shifted_bias(blobs.get(bias), "bias")
            blobs.put(bias, values)
            return planted

        return _coreml_edit(path, out, edit)
    if kind == "onnx":
        def edit(model, inits):
            node, _, _, bias = _onnx_layer(model, inits, layer)
            if bias is None:
                raise ValueError(f"{node.name or node.op_type}: the layer has no quantized bias input")
            values = _onnx_get(inits, bias.input[0])
            zero = _onnx_get(inits, bias.input[2]).astype(np.int64) if len(bias.input) > 2 and bias.input[2] else 0
            shifted, delta = _shifted_int32(values.astype(np.int64) - zero, _onnx_get(inits, bias.input[1]), channel, shift)
            _onnx_set(inits, bias.input[0], (shifted.astype(np.int64) + np.reshape(zero, -1)).reshape(values.shape))
            return Planted(Path(out), "shift_bias", bias.input[0], {"channel": channel, "shift": shift, "delta": delta})

        return _onnx_edit(path, out, edit)
    if kind == "onnx-float":
        def edit(model, inits):
            node, _, _, bias = _onnx_float_layer(model, inits, layer)
            if bias is None:
                raise ValueError(f"{node.name or node.op_type}: the layer has no bias initializer")
            values = _onnx_get(inits, bias)
            shifted, delta = _shifted(values, channel, shift)
            _onnx_set(inits, bias, shifted.reshape(values.shape))
            return Planted(Path(out), "shift_bias", bias, {"channel": channel, "shift": shift, "delta": delta})

        return _onnx_edit(path, out, edit)

    def edit(block, blobs):
        op, _, bias = _coreml_layer(block, layer)
        if bias is None:
            raise ValueError(f"{op.outputs[0].name}: its consumer has no constant bias")
        values = blobs.get(bias)
        shifted, delta = _shifted(values, channel, shift)
        blobs.put(bias, shifted.reshape(values.shape))
        return Planted(Path(out), "shift_bias", op.outputs[0].name, {"channel": channel, "shift": shift, "delta": delta})

    return _coreml_edit(path, out, edit)


# --------------------------------------------------------------------------- .pte (found by value)


def _pte_patch(path: Path, out: Path, old: np.ndarray, new: np.ndarray) -> None:
    """Copy ``path`` to ``out`` with the one occurrence of ``old``'s bytes replaced by ``new``'s."""
    data = bytearray(Path(path).read_bytes())
    raw = np.ascontiguousarray(old).tobytes()
    hits = data.count(raw)
    if hits != 1:
        raise ValueError(f"{Path(path).name}: the {old.dtype} values to patch occur {hits} times, not once")
    at = data.find(raw)
    data[at : at + len(raw)] = np.ascontiguousarray(new, dtype=old.dtype).tobytes()
    Path(out).write_bytes(bytes(data))


def xnnpack_int8_weight(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int8 values, float32 scales per output channel) as ExecuTorch's XNNPACK quantizer stores a
    weight: per-channel symmetric, [-127, 127], scale max|w| / 127 (at least its eps 2**-12)."""
    weight = np.asarray(weight, dtype=np.float32)
    peak = np.abs(weight.reshape(len(weight), -1)).max(axis=1)
    scales = np.maximum(peak / np.float32(127.0), np.float32(2.0**-12)).astype(np.float32)
    shaped = scales.reshape(-1, *([1] * (weight.ndim - 1)))
    return np.clip(np.round(weight / shaped), -127, 127).astype(np.int8), scales


def pte_scale_weight(path: Path, out: Path, weight: np.ndarray, channel: int = 0, factor: float = 1.5) -> Planted:
    """fp32 / fp16: output channel ``channel`` of the known ``weight`` stored ``factor`` x."""
    old = np.ascontiguousarray(weight, dtype=_PTE_FLOATS[_pte_precision(path, weight)])
    new = old.copy()
    new[channel] *= new.dtype.type(factor)
    _pte_patch(path, out, old, new)
    return Planted(Path(out), "scale_weight", f"weight {tuple(old.shape)}", {"channel": channel, "factor": factor})


def pte_negate_int8_channel(path: Path, out: Path, weight: np.ndarray, channel: int = 0) -> Planted:
    """int8: the int8 weight values of output channel ``channel`` negated (its scale kept)."""
    values, _ = xnnpack_int8_weight(weight)
    new = values.copy()
    new[channel] = -values[channel]
    _pte_patch(path, out, values, new)
    return Planted(Path(out), "negate_int8_channel", f"weight {tuple(values.shape)}", {"channel": channel})


def pte_scale_int8_channel(path: Path, out: Path, weight: np.ndarray, channel: int = 0, factor: float = 1.5) -> Planted:
    """int8: the float32 weight scale of output channel ``channel`` written ``factor`` x."""
    _, scales = xnnpack_int8_weight(weight)
    new = scales.copy()
    new[channel] *= np.float32(factor)
    _pte_patch(path, out, scales, new)
    return Planted(Path(out), "scale_channel", f"weight {tuple(np.shape(weight))}", {"channel": channel, "factor": factor})


def pte_coarsen_output(path: Path, out: Path, scale: float, factor: float = 16.0) -> Planted:
    """int8: the output tensor's scale ``scale`` written ``factor`` x. XNNPACK requantizes into the
    output with that scale and dequantizes with it too, so the output keeps its size but lands
    on a ``factor`` x coarser grid (and loses ``log2(factor)`` bits)."""
    old = np.array([scale], dtype=np.float32)
    _pte_patch(path, out, old, old * np.float32(factor))
    return Planted(Path(out), "coarsen_output", "output", {"scale": float(scale), "factor": factor})


# --- .pte: every defect kind (issue 28)
#
# At int8 the XNNPACK program stores a Linear/Conv's bias as int32, round(bias / (input_scale x
# weight_scale[c])), and beside it that bias's float32 per-channel scales, input_scale x
# weight_scale[c] (both found in executorch 1.x's digits .pte; nothing else holds the float bias).
# The input scale is the layer's input activation scale from calibration, which the model does not
# give: ``xnnpack_int32_bias`` finds it as the one float32 value of the file for which those int32
# bytes occur in the file.


def _pte_patch_all(path: Path, out: Path, patches: list[tuple[np.ndarray, np.ndarray]]) -> None:
    """Like ``_pte_patch`` for several (old, new) pairs at once: each ``old``'s bytes must occur
    exactly once in ``path`` (overlapping occurrences counted) and no two may overlap, else nothing
    is written."""
    original = Path(path).read_bytes()
    data = bytearray(original)
    taken: list[tuple[int, int]] = []
    for old, new in patches:
        raw = np.ascontiguousarray(old).tobytes()
        at = original.find(raw)
        if at < 0 or original.find(raw, at + 1) >= 0:
            hits = "no" if at < 0 else "several"
            raise ValueError(f"{Path(path).name}: the {old.dtype} {tuple(old.shape)} values to patch occur {hits} times, not once")
        if any(at < end and start < at + len(raw) for start, end in taken):
            raise ValueError(f"{Path(path).name}: two of the values to patch overlap in the file")
        taken.append((at, at + len(raw)))
        data[at : at + len(raw)] = np.ascontiguousarray(new, dtype=old.dtype).tobytes()
    Path(out).write_bytes(bytes(data))


#: how a .pte stores a float weight at each float precision
_PTE_FLOATS = {"fp32": np.float32, "fp16": np.float16}


def _pte_precision(path: Path, weight: np.ndarray) -> str:
    """"fp32" / "fp16" when ``weight``'s float32 / float16 bytes are in the file, "int8" when its
    XNNPACK int8 values are."""
    data = Path(path).read_bytes()
    for precision, dtype in _PTE_FLOATS.items():
        if np.ascontiguousarray(weight, dtype=dtype).tobytes() in data:
            return precision
    if xnnpack_int8_weight(weight)[0].tobytes() in data:
        return "int8"
    raise ValueError(f"{Path(path).name}: the weight {tuple(np.shape(weight))} is in the file neither as float32, float16 nor as XNNPACK int8")


def xnnpack_int32_bias(path: Path, weight: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(int32 bias values, their float32 per-channel scales, the layer's input scale) of the layer
    with the known float ``weight`` and ``bias`` in an int8 XNNPACK .pte (see the section's note).
    Every finite positive float32 in the file (at any byte offset) is tried as the input scale;
    refuses unless the int32 bytes it gives are found, at exactly one place in the file."""
    data = Path(path).read_bytes()
    _, scales = xnnpack_int8_weight(weight)
    bias = np.asarray(bias, dtype=np.float32)
    words = [np.frombuffer(data[k : k + (len(data) - k) // 4 * 4], dtype=np.float32) for k in range(4)]
    floats = np.unique(np.concatenate(words))
    floats = floats[np.isfinite(floats) & (floats > 0)]
    found: dict[int, tuple[np.ndarray, np.ndarray, float]] = {}
    with np.errstate(all="ignore"):
        for x in floats:
            bias_scales = (np.float32(x) * scales).astype(np.float32)
            exact = bias / bias_scales
            if not np.all(np.isfinite(exact)) or np.abs(exact).max() >= 2**31 or np.abs(exact).max() < 16:
                continue  # out of int32, or too few levels to tell the bias apart from other bytes
            values = np.round(exact).astype(np.int32)
            raw = values.tobytes()
            at = data.find(raw)
            if at < 0:
                continue
            if data.find(raw, at + 1) >= 0:
                raise ValueError(f"{Path(path).name}: the int32 bias for input scale {x:g} occurs several times")
            found.setdefault(at, (values, bias_scales, float(x)))
    if len(found) != 1:
        raise ValueError(f"{Path(path).name}: the int32 bias of the weight {tuple(np.shape(weight))} is found at {len(found)} places, not one")
    return next(iter(found.values()))


def pte_swap_channels(path: Path, out: Path, weight: np.ndarray, bias: np.ndarray | None = None, a: int = 0, b: int = 1) -> Planted:
    """Output channels ``a`` and ``b`` of the layer with the known float ``weight`` (and ``bias``)
    swapped. fp32 / fp16: the float weight rows and bias values. int8: the int8 weight rows, their
    float32 scales, the int32 bias values and the bias's float32 scales (so each channel is its
    neighbour's, exactly)."""
    precision = _pte_precision(path, weight)
    if precision in _PTE_FLOATS:
        weight = np.ascontiguousarray(weight, dtype=_PTE_FLOATS[precision])
        patches = [(weight, _swapped(weight, 0, a, b))]
        if bias is not None:
            old = np.ascontiguousarray(bias, dtype=_PTE_FLOATS[precision])
            patches.append((old, _swapped(old, 0, a, b)))
    else:
        values, scales = xnnpack_int8_weight(weight)
        patches = [(values, _swapped(values, 0, a, b)), (scales, _swapped(scales, 0, a, b))]
        if bias is not None:
            ints, bias_scales, _ = xnnpack_int32_bias(path, weight, bias)
            patches += [(ints, _swapped(ints, 0, a, b)), (bias_scales, _swapped(bias_scales, 0, a, b))]
    _pte_patch_all(path, out, patches)
    return Planted(Path(out), "swap_channels", f"weight {tuple(weight.shape)}", {"channels": (a, b), "precision": precision, "bias": bias is not None})


def pte_shift_bias(path: Path, out: Path, weight: np.ndarray, bias: np.ndarray, channel: int = 0, shift: float = 1.0) -> Planted:
    """The bias of output channel ``channel`` of the layer with the known float ``weight`` and
    ``bias`` stored ``shift`` higher (in the layer's output units). fp32 / fp16: the float value. int8:
    the int32 value moves by round(shift / its bias scale), so the shift lands on the int32 grid
    (``details["shift"]`` is the one written)."""
    precision = _pte_precision(path, weight)
    old = np.ascontiguousarray(bias, dtype=_PTE_FLOATS.get(precision, np.float32))
    if precision in _PTE_FLOATS:
        new = old.copy()
        new[channel] += new.dtype.type(shift)
        _pte_patch_all(path, out, [(old, new)])
        written = float(new[channel] - old[channel])
    else:
        ints, bias_scales, _ = xnnpack_int32_bias(path, weight, old)
        step = int(np.round(shift / float(bias_scales[channel])))
        if step == 0:
            raise ValueError(f"a shift of {shift:g} is under half the int32 bias step {float(bias_scales[channel]):g}")
        new = ints.copy()
        new[channel] = np.int32(int(ints[channel]) + step)
        _pte_patch_all(path, out, [(ints, new)])
        written = step * float(bias_scales[channel])
    return Planted(Path(out), "shift_bias", f"bias {tuple(old.shape)}", {"channel": channel, "shift": written, "precision": precision})


# --------------------------------------------------------------------------- ncnn .param + .bin

#: ncnn layers whose weight is [output channel][...] in the .bin
NCNN_WEIGHT_LAYERS = ("Convolution", "ConvolutionDepthWise", "InnerProduct")


def _ncnn_edit(path: Path, out: Path, layer: str | int, change: Callable[[np.ndarray, np.ndarray | None], tuple[np.ndarray, np.ndarray | None]], defect: str, details: dict[str, Any]) -> Planted:
    """``change(weight [channels, ...], bias)`` applied to ``layer`` (an index into the weight
    layers, "last" or "middle") of an ncnn pair, in the weight's stored dtype (float32 or float16,
    after its flag tag) and the bias's float32; written to ``out`` and the .bin beside it."""
    from edgex.targets.ncnn.model import bin_path, read_param, weight_blobs

    layers = read_param(path)
    data = bytearray(bin_path(path).read_bytes())
    blobs, _ = weight_blobs(layers, bytes(data))
    chosen = [l for l in layers if l.type in NCNN_WEIGHT_LAYERS]
    target = chosen[_pick(chosen, layer)]
    mine = {b.role: b for b in blobs if b.layer == target.name}
    weight = mine["weight"]
    channels = target.int(0)
    values = np.frombuffer(bytes(data), weight.dtype, weight.count, weight.offset).reshape(channels, -1)
    bias_blob = mine.get("bias")
    bias = np.frombuffer(bytes(data), "float32", bias_blob.count, bias_blob.offset) if bias_blob else None
    new_weight, new_bias = change(values.copy(), None if bias is None else bias.copy())
    data[weight.offset : weight.offset + values.nbytes] = np.ascontiguousarray(new_weight, values.dtype).tobytes()
    if bias_blob is not None and new_bias is not None:
        data[bias_blob.offset : bias_blob.offset + bias.nbytes] = np.ascontiguousarray(new_bias, np.float32).tobytes()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, out)
    bin_path(Path(out)).write_bytes(bytes(data))
    return Planted(Path(out), defect, target.name, {**details, "dtype": weight.dtype})


def ncnn_scale_channel(path: Path, out: Path, layer: str | int = "last", channel: int = 0, factor: float = 1.5) -> Planted:
    """Output channel ``channel`` of the layer computes ``factor`` x its value (weights and bias)."""
    def change(weight, bias):
        weight[channel] *= weight.dtype.type(factor)
        if bias is not None:
            bias[channel] *= factor
        return weight, bias

    return _ncnn_edit(path, out, layer, change, "scale_channel", {"channel": channel, "factor": factor})


def ncnn_swap_channels(path: Path, out: Path, layer: str | int = "middle", a: int = 0, b: int = 1) -> Planted:
    """Output channels ``a`` and ``b`` of the layer swapped (weights and bias)."""
    return _ncnn_edit(path, out, layer, lambda w, bias: (_swapped(w, 0, a, b), None if bias is None else _swapped(bias, 0, a, b)),
                      "swap_channels", {"channels": (a, b)})


def ncnn_shift_bias(path: Path, out: Path, layer: str | int = "middle", channel: int | None = None, shift: float = 1.0) -> Planted:
    """``shift`` x the spread of the layer's bias added to channel ``channel`` (every channel when None)."""
    found: dict[str, float] = {}

    def change(weight, bias):
        if bias is None:
            raise ValueError("the layer has no bias")
        shifted, found["delta"] = _shifted(bias, channel, shift)
        return weight, shifted.astype(np.float32)

    planted = _ncnn_edit(path, out, layer, change, "shift_bias", {"channel": channel, "shift": shift})
    planted.details["delta"] = found["delta"]
    return planted
