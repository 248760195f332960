"""Reading and rewriting ``.tflite`` flatbuffers without TensorFlow.

The int8 checks, the Edge TPU analysis and ``describe_tflite`` need more than an interpreter
shows: operator options (strides, dilations, fused activations), which tensors are constants,
per-channel scales, the model's metadata. This module reads all of that with the flatbuffer
schema module that ships inside ai-edge-litert (tflite-micro's or TensorFlow's copy where
ai-edge-litert is absent), which imports in a fraction of a second.

``rewrite`` re-serialises a model with edgex's layout metadata and with every weight stored
inside the flatbuffer: ai-edge-quantizer appends weights after the flatbuffer ("offset
buffers"), which LiteRT reads but TFLite Micro and the Edge TPU compiler do not.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

#: schema TensorType value -> numpy-style dtype name
_TENSOR_TYPES = {
    0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 5: "string", 6: "bool", 7: "int16",
    8: "complex64", 9: "int8", 10: "float64", 11: "complex128", 12: "uint64", 13: "resource", 14: "variant",
    15: "uint32", 16: "uint16", 17: "int4", 18: "bfloat16",
}
_ACTIVATIONS = {0: "NONE", 1: "RELU", 2: "RELU_N1_TO_1", 3: "RELU6", 4: "TANH", 5: "SIGN_BIT"}

#: the metadata entry edgex writes into every .tflite it makes (JSON: layouts, precision)
EDGEX_METADATA = "edgex"


def schema() -> Any:
    """The generated flatbuffer schema module (``ModelT`` and friends)."""
    try:
        from ai_edge_litert import schema_py_generated as module
    except ImportError:
        try:
            from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as module  # type: ignore
        except ImportError:
            from tensorflow.lite.python import schema_py_generated as module  # type: ignore
    return module


def _builtin_names() -> dict[int, str]:
    operators = schema().BuiltinOperator
    return {value: name for name, value in vars(operators).items() if not name.startswith("_") and isinstance(value, int)}


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, (bytes, bytearray)) else str(value or "")


@dataclass(frozen=True)
class Tensor:
    index: int
    name: str
    shape: tuple[int, ...]
    #: the shape with -1 where a dimension is dynamic
    shape_signature: tuple[int, ...]
    dtype: str
    scales: tuple[float, ...] = ()
    zero_points: tuple[int, ...] = ()
    quantized_dimension: int = 0
    constant: bool = False
    #: the data lives after the flatbuffer (an "offset buffer"), which TFLite Micro reads as zeros
    offset_buffer: bool = False

    @property
    def quantized(self) -> bool:
        return bool(self.scales)

    @property
    def per_channel(self) -> bool:
        return len(self.scales) > 1

    @property
    def dynamic(self) -> bool:
        return any(d < 0 for d in self.shape_signature)

    @property
    def elements(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1


@dataclass(frozen=True)
class Operator:
    index: int
    #: the builtin name (``CONV_2D``) or the custom op's code
    name: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    #: the schema's ``*OptionsT`` object, or None
    options: Any = None
    custom: bool = False

    def option(self, name: str, default: Any = None) -> Any:
        return getattr(self.options, name, default) if self.options is not None else default

    @property
    def fused_activation(self) -> str | None:
        value = self.option("fusedActivationFunction")
        return None if value is None else _ACTIVATIONS.get(int(value), str(value))


@dataclass
class Graph:
    """The main subgraph of a .tflite model, plus what the whole file says about itself."""

    path: Path
    tensors: list[Tensor]
    operators: list[Operator]
    inputs: list[int]
    outputs: list[int]
    #: signature input/output names -> tensor index, in the signature's order
    signature_inputs: list[tuple[str, int]] = field(default_factory=list)
    signature_outputs: list[tuple[str, int]] = field(default_factory=list)
    metadata: dict[str, bytes] = field(default_factory=dict)
    subgraphs: int = 1
    _values: dict[int, np.ndarray] = field(default_factory=dict, repr=False)
    #: every tensor of every subgraph: (subgraph index, Tensor), for whole-model checks
    all_tensors: list[tuple[int, Tensor]] = field(default_factory=list, repr=False)
    #: every operator of every subgraph: (subgraph index, Operator), e.g. the kernels a runtime must register
    all_operators: list[tuple[int, Operator]] = field(default_factory=list, repr=False)

    def tensor(self, index: int) -> Tensor:
        return self.tensors[index]

    def value(self, index: int) -> np.ndarray | None:
        """A constant tensor's contents, or None for activations."""
        return self._values.get(index)

    def producer(self, tensor_index: int) -> Operator | None:
        for op in self.operators:
            if tensor_index in op.outputs:
                return op
        return None

    def edgex_metadata(self) -> dict[str, Any] | None:
        raw = self.metadata.get(EDGEX_METADATA)
        if raw is None:
            return None
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return None


def _buffer_bytes(buffer: Any, data: bytes | bytearray) -> np.ndarray | None:
    if buffer is None:
        return None
    if buffer.data is not None and len(buffer.data):
        return np.asarray(buffer.data, dtype=np.uint8)
    offset, size = int(buffer.offset or 0), int(buffer.size or 0)
    if offset > 1 and size > 0:  # weights stored after the flatbuffer (ai-edge-quantizer)
        return np.frombuffer(data, dtype=np.uint8, count=size, offset=offset)
    return None


def _tensor_value(tensor: Any, raw: np.ndarray) -> np.ndarray | None:
    dtype = _TENSOR_TYPES.get(tensor.type)
    if dtype is None or dtype in ("string", "resource", "variant", "int4", "bfloat16"):
        return None
    try:
        values = raw.view(np.dtype(dtype))
        shape = [int(d) for d in (tensor.shape if tensor.shape is not None else [])]
        return values.reshape(shape) if int(np.prod(shape)) == values.size else values
    except ValueError:
        return None


def _load_model(path: Path) -> tuple[Any, bytearray]:
    data = bytearray(Path(path).read_bytes())
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ValueError(f"{path} is not a TFLite flatbuffer (no TFL3 identifier)")
    return schema().ModelT.InitFromPackedBuf(data, 0), data


def read_graph(path: Path) -> Graph:
    """Parse ``path``; raises ``ValueError`` when it is not a .tflite flatbuffer, truncated or corrupt."""
    try:
        return _read_graph(path)
    except (OSError, ValueError):
        raise
    except Exception as exc:  # flatbuffers reads past the end of a truncated file: struct.error, IndexError
        raise ValueError(f"truncated or corrupt flatbuffer ({type(exc).__module__}.{type(exc).__name__}: {exc})") from exc


def _read_graph(path: Path) -> Graph:
    model, data = _load_model(path)
    names = _builtin_names()
    if not model.subgraphs:
        raise ValueError(f"{path} holds no subgraph")
    buffers = model.buffers or []

    def tensors_of(subgraph: Any, keep_values: dict[int, np.ndarray] | None) -> list[Tensor]:
        out = []
        for index, t in enumerate(subgraph.tensors or []):
            raw = _buffer_bytes(buffers[t.buffer], data) if 0 < t.buffer < len(buffers) else None
            q = t.quantization
            scales = tuple(float(s) for s in (q.scale if q is not None and q.scale is not None else []))
            zeros = tuple(int(z) for z in (q.zeroPoint if q is not None and q.zeroPoint is not None else []))
            shape = tuple(int(d) for d in (t.shape if t.shape is not None else []))
            signature = tuple(int(d) for d in t.shapeSignature) if t.shapeSignature is not None and len(t.shapeSignature) else shape
            buffer = buffers[t.buffer] if 0 < t.buffer < len(buffers) else None
            external = buffer is not None and (buffer.data is None or not len(buffer.data)) and int(buffer.offset or 0) > 1
            out.append(
                Tensor(index, _text(t.name), shape, signature, _TENSOR_TYPES.get(t.type, f"type{t.type}"), scales, zeros,
                       int(q.quantizedDimension) if q is not None else 0, raw is not None, external)
            )
            if keep_values is not None and raw is not None:
                value = _tensor_value(t, raw)
                if value is not None:
                    keep_values[index] = value
        return out

    def operators_of(subgraph: Any) -> list[Operator]:
        out = []
        for index, op in enumerate(subgraph.operators or []):
            code = model.operatorCodes[op.opcodeIndex]
            builtin = max(int(code.builtinCode), int(code.deprecatedBuiltinCode))
            custom = names.get(builtin) == "CUSTOM"
            name = _text(code.customCode) if custom else names.get(builtin, f"BUILTIN_{builtin}")
            out.append(
                Operator(index, name, tuple(int(i) for i in (op.inputs if op.inputs is not None else [])),
                         tuple(int(o) for o in (op.outputs if op.outputs is not None else [])), op.builtinOptions, custom)
            )
        return out

    values: dict[int, np.ndarray] = {}
    main = model.subgraphs[0]
    tensors = tensors_of(main, values)
    operators = operators_of(main)
    graph = Graph(
        path=Path(path),
        tensors=tensors,
        operators=operators,
        inputs=[int(i) for i in (main.inputs if main.inputs is not None else [])],
        outputs=[int(o) for o in (main.outputs if main.outputs is not None else [])],
        subgraphs=len(model.subgraphs),
        _values=values,
    )
    for signature in model.signatureDefs or []:
        if int(signature.subgraphIndex) == 0:
            graph.signature_inputs = [(_text(m.name), int(m.tensorIndex)) for m in signature.inputs or []]
            graph.signature_outputs = [(_text(m.name), int(m.tensorIndex)) for m in signature.outputs or []]
            break
    for entry in model.metadata or []:
        raw = _buffer_bytes(buffers[entry.buffer], data) if 0 <= entry.buffer < len(buffers) else None
        graph.metadata[_text(entry.name)] = bytes(raw) if raw is not None else b""
    graph.all_tensors = [(0, t) for t in tensors]
    graph.all_operators = [(0, op) for op in operators]
    for number, subgraph in enumerate(model.subgraphs[1:], start=1):
        graph.all_tensors += [(number, t) for t in tensors_of(subgraph, None)]
        graph.all_operators += [(number, op) for op in operators_of(subgraph)]
    return graph


def _narrow_int64_constants(model: Any) -> int:
    """int64 constants (gather indices, shapes) -> int32 where the values fit; returns how many.

    onnx2tf emits int64 index constants (ONNX indexes in int64); every TFLite kernel that takes
    such a parameter also takes int32, and full-int8 consumers (TFLM, the Edge TPU) want int32.
    """
    narrowed = 0
    int64, int32 = 4, 2
    for subgraph in model.subgraphs or []:
        for tensor in subgraph.tensors or []:
            buffer = model.buffers[tensor.buffer] if 0 < tensor.buffer < len(model.buffers) else None
            if tensor.type != int64 or buffer is None or buffer.data is None or not len(buffer.data):
                continue
            values = np.asarray(buffer.data, dtype=np.uint8).view(np.int64)
            if values.size and (values.min() < np.iinfo(np.int32).min or values.max() > np.iinfo(np.int32).max):
                continue
            buffer.data = values.astype(np.int32).view(np.uint8)
            tensor.type = int32
            narrowed += 1
    return narrowed


#: one component of a litert-torch tensor name: "torch.nn.modules.conv.Conv2d_0" (type, attribute)
_MODULE_COMPONENT = re.compile(r"^(?:.*\.)?(_*[A-Za-z][A-Za-z0-9]*)_([A-Za-z0-9_]+)$")


def compact_name(name: str) -> str:
    """A litert-torch tensor name shortened to module paths and types.

    litert-torch names a tensor by the fully qualified class of every module it passed through
    ("litert_torch._convert.to_channel_last_io.ChannelLastIOWrapper/...Sequential_features/
    torch.nn.modules.conv.Conv2d_0;"), hundreds of bytes each: a sixth of a small int8 model,
    which an MCU stores in flash. "features.0(Conv2d)" says the same. Other names are kept.
    """
    if "/" not in name or ("torch.nn." not in name and "_wrapped" not in name):
        return name
    pieces = []
    for piece in name.split(";"):
        parts = piece.split("/")
        if len(parts) < 2:
            if piece:
                pieces.append(piece)  # a suffix such as "1" that keeps names apart
            continue
        attrs, kind = [], ""
        for part in parts:
            match = _MODULE_COMPONENT.match(part)
            if match and match.group(2) != "wrapped":  # the wrapper's attribute holding the user's model
                kind = match.group(1)
                attrs.append(match.group(2))
        pieces.append(f"{'.'.join(attrs)}({kind})" if attrs else piece)
    return ";".join(dict.fromkeys(pieces)) or name


def rewrite(
    path: Path, metadata: Mapping[str, bytes] | None = None, *, narrow_int64: bool = False, compact_names: bool = False
) -> int:
    """Rewrite ``path`` in place: ``metadata`` entries set, every buffer stored inline; with
    ``narrow_int64`` int64 constants narrowed to int32 (returns how many were); with
    ``compact_names`` litert-torch's tensor names shortened (model inputs and outputs keep theirs).

    The file is replaced atomically, so a crash leaves the old model, never half a new one.
    """
    import flatbuffers

    module = schema()
    model, data = _load_model(path)
    metadata = metadata or {}
    for buffer in model.buffers or []:
        raw = _buffer_bytes(buffer, data)
        if buffer.data is None and raw is not None:
            buffer.data = np.array(raw, dtype=np.uint8)
        buffer.offset, buffer.size = 0, 0
    narrowed = _narrow_int64_constants(model) if narrow_int64 else 0
    if compact_names:
        for subgraph in model.subgraphs or []:
            keep = {int(i) for i in (subgraph.inputs if subgraph.inputs is not None else [])}
            keep |= {int(o) for o in (subgraph.outputs if subgraph.outputs is not None else [])}
            for index, tensor in enumerate(subgraph.tensors or []):
                if index not in keep and tensor.name:
                    tensor.name = compact_name(_text(tensor.name)).encode("utf-8")
    model.metadata = [m for m in (model.metadata or []) if _text(m.name) not in metadata]
    for name, content in metadata.items():
        buffer = module.BufferT()
        buffer.data = np.frombuffer(bytes(content), dtype=np.uint8)
        model.buffers.append(buffer)
        entry = module.MetadataT()
        entry.name, entry.buffer = name, len(model.buffers) - 1
        model.metadata.append(entry)
    builder = flatbuffers.Builder(max(1024, len(data)))
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    temporary = Path(path).with_name(Path(path).name + ".tmp")
    temporary.write_bytes(builder.Output())
    os.replace(temporary, path)
    return narrowed


# --------------------------------------------------------------------------- MACs


def op_macs(graph: Graph, op: Operator) -> int:
    """Multiply-accumulates of one operator (0 for ops without a weight contraction)."""

    def shape(position: int) -> tuple[int, ...]:
        if position >= len(op.inputs) or op.inputs[position] < 0:
            return ()
        return graph.tensor(op.inputs[position]).shape

    out_elements = graph.tensor(op.outputs[0]).elements if op.outputs else 0
    if op.name == "CONV_2D" and len(shape(1)) == 4:  # filter [Cout, kh, kw, Cin]
        _, kh, kw, cin = shape(1)
        return out_elements * kh * kw * cin
    if op.name == "DEPTHWISE_CONV_2D" and len(shape(1)) == 4:  # filter [1, kh, kw, Cout]
        return out_elements * shape(1)[1] * shape(1)[2]
    if op.name == "CONV_3D" and len(shape(1)) == 5:  # filter [kd, kh, kw, Cin, Cout]
        kd, kh, kw, cin, _ = shape(1)
        return out_elements * kd * kh * kw * cin
    if op.name == "FULLY_CONNECTED" and len(shape(1)) == 2:  # weights [units, in]
        return out_elements * shape(1)[1]
    if op.name == "TRANSPOSE_CONV" and len(shape(1)) == 4 and shape(2):  # (output shape, filter, input, bias)
        cout, kh, kw, _ = shape(1)
        return int(np.prod(shape(2))) * kh * kw * cout
    if op.name == "BATCH_MATMUL" and len(shape(0)) >= 2:
        adjoint = bool(op.option("adjX", False))
        inner = shape(0)[-2] if adjoint else shape(0)[-1]
        return out_elements * inner
    return 0
