"""Planting defects directly in OpenVINO IR files (issue 28), as tests/defects.py does for .tflite,
.onnx, .mlpackage and .pte artifacts.

Each planter takes an IR's ``.xml`` (its ``.bin`` beside it) and writes a modified copy -- ``out``
(an ``.xml``) and ``out.with_suffix(".bin")`` -- returning a :class:`defects.Planted` (the same
dataclass tests/defects.py returns; this module loads it from there by path, as the tests do). The
IR is never read through OpenVINO: the ``.xml`` names, per ``Const`` layer, where its data lie in
the ``.bin`` (``<data element_type= shape= offset= size=>``), and the planters patch those bytes.
The graph edges of the ``.xml`` say which constants a layer reads.

OpenVINO deduplicates constants when it saves an IR: equal constants share one region of the
``.bin`` (NNCF's FakeQuantize ranges all read ``output_low`` 0.0 from offset 0, a quantizer's
``input_high`` and ``output_high`` share their bytes). A constant whose region another constant
also reads is therefore not patched in place: its new bytes are appended to the ``.bin`` and its
``offset`` in the ``.xml`` pointed there, so nothing but the named constant changes. An unshared
constant is patched in place and the ``.xml`` copied byte for byte.

What edgex's ``openvino`` target (packages/edgex-openvino) writes, and where the defects go:

- fp32: a weight op (``Convolution``, ``GroupConvolution``, ``ConvolutionBackpropData``,
  ``MatMul``) reads an f32 ``Const``; the bias (a BatchNorm folded in, or a linear's) is an f32
  ``Const`` read by the ``Add`` after it.
- fp16 (``save_model(compress_to_fp16=True)``): the same, each constant an f16 ``Const`` followed
  by a ``Convert`` to f32. Patched values are written back in f16.
- int8 (``nncf.quantize``): a weight is an i8 ``Const`` -> ``Convert`` -> (``Subtract`` of a zero
  point, none with NNCF's symmetric weights) -> ``Multiply`` by an f32 per-channel scale ``Const``
  (shape ``[C, 1, ...]``); the bias stays an f32 ``Const``; activations are per-tensor
  ``FakeQuantize`` ops (ranges ``input_low/high``, ``output_low/high`` as scalar f32 ``Const``s,
  ``levels`` 256).

Defects (``layer`` is "last", "middle" or an index into the weight ops, in graph order; an op
counts when its weight input leads, through Convert/Subtract/Multiply/Reshape/Transpose, to a
``Const``):

- ``scale_channel``: output channel ``channel`` of the layer computes ``factor`` x its value before
  the activation. Float IRs: that channel's weights and bias are ``factor`` x; int8: its weight
  *scale* is ``factor`` x (the i8 values kept) and its bias too.
- ``swap_channels``: output channels ``a`` and ``b`` swapped -- weights (i8 values at int8), the
  weight scale and zero point where per channel, and the bias -- so the next layer reads them in
  each other's place.
- ``shift_bias``: every output channel's bias (or channel ``channel``'s alone) moved by ``shift`` x
  the largest |bias| of the layer (default 0.5: half the layer's largest bias, added to each
  channel -- a material shift in the layer's own units, whatever its scale). Refused when the
  layer's biases are all zero (nothing to measure the shift by).
- ``drop_bias``: the layer's bias is all zeros.
- int8 only (a float IR stores no quantization scale):

  - ``scale_output``: the last activation quantizer's (the FakeQuantize nearest the output)
    ``output_low``/``output_high`` written ``factor`` x while ``input_low``/``input_high`` stay:
    the grid points it maps to are ``factor`` x, so the tensor it quantizes reaches the next layer
    ``factor`` x (the same defect as the package's own ``edgex_openvino.defects.scale_output``).
    NNCF leaves the model output float, so this is the scale nearest to it.
  - ``coarsen_scale``: a quantizer's scale written ``factor`` x -- all four ranges ``factor`` x,
    ``levels`` kept: its step is ``factor`` x coarser (``log2(factor)`` bits lost) over a range
    ``factor`` x wider, so the tensor keeps its size but is rounded to a coarser grid. Default:
    the last quantizer.
"""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from defects import Planted  # tests/defects.py, loaded first by tests/conftest.py or the benchmark

#: ops whose second input is a layer's weights
WEIGHT_OPS = ("Convolution", "GroupConvolution", "ConvolutionBackpropData", "MatMul")
#: ops between a weight op and its stored constant (decompression, layout)
_THROUGH = ("Convert", "Subtract", "Multiply", "Reshape", "Transpose", "Unsqueeze", "Squeeze")
#: IR element types -> numpy
_DTYPES = {"f32": np.float32, "f16": np.float16, "f64": np.float64, "i8": np.int8, "u8": np.uint8,
           "i32": np.int32, "i64": np.int64, "u32": np.uint32, "u64": np.uint64}


# --------------------------------------------------------------------------- the IR


@dataclass
class _IR:
    """An IR's .xml parsed and its .bin in memory; constants read and written by layer id."""

    xml: Path
    tree: ET.ElementTree
    data: bytearray
    layers: dict[str, ET.Element] = field(default_factory=dict)
    #: (to layer, to input index) -> (from layer, from port)
    sources: dict[tuple[str, int], tuple[str, str]] = field(default_factory=dict)
    #: from layer -> [to layer, ...]
    consumers: dict[str, list[str]] = field(default_factory=dict)
    relocated: bool = False

    @classmethod
    def read(cls, xml: Path) -> "_IR":
        xml = Path(xml)
        if xml.suffix != ".xml" or not xml.with_suffix(".bin").exists():
            raise ValueError(f"{xml}: not an OpenVINO IR .xml with its .bin beside it")
        tree = ET.parse(xml)
        ir = cls(xml, tree, bytearray(xml.with_suffix(".bin").read_bytes()))
        root = tree.getroot()
        ir.layers = {layer.get("id"): layer for layer in root.iter("layer")}
        for edge in root.iter("edge"):
            to, port = edge.get("to-layer"), edge.get("to-port")
            inputs = [p.get("id") for p in ir.layers[to].findall("input/port")]
            ir.sources[(to, inputs.index(port))] = (edge.get("from-layer"), edge.get("from-port"))
            ir.consumers.setdefault(edge.get("from-layer"), []).append(to)
        return ir

    def type(self, layer: str) -> str:
        return self.layers[layer].get("type")

    def name(self, layer: str) -> str:
        return self.layers[layer].get("name")

    def source(self, layer: str, index: int) -> str | None:
        found = self.sources.get((layer, index))
        return found[0] if found else None

    def const_behind(self, layer: str | None, through=("Convert",)) -> str | None:
        """The Const a value comes from through ``through`` ops (first inputs); else None."""
        while layer is not None and self.type(layer) in through:
            layer = self.source(layer, 0)
        return layer if layer is not None and self.type(layer) == "Const" else None

    def output_rank(self, layer: str) -> int:
        port = self.layers[layer].find("output/port")
        return len(port.findall("dim")) if port is not None else 0

    # ------------------------------------------------------------------ constants

    def _where(self, const: str) -> tuple[int, int, Any, tuple[int, ...]]:
        data = self.layers[const].find("data")
        kind = data.get("element_type")
        if kind not in _DTYPES:
            raise ValueError(f"{self.name(const)}: element type {kind} is not one this planter patches")
        shape = tuple(int(d) for d in data.get("shape").replace(" ", "").split(",") if d) if data.get("shape") else ()
        return int(data.get("offset")), int(data.get("size")), _DTYPES[kind], shape

    def get(self, const: str) -> np.ndarray:
        offset, size, dtype, shape = self._where(const)
        return np.frombuffer(bytes(self.data[offset : offset + size]), dtype=dtype).reshape(shape).copy()

    def _shared(self, const: str) -> bool:
        offset, size, _, _ = self._where(const)
        for other, layer in self.layers.items():
            if other == const or layer.get("type") != "Const":
                continue
            data = layer.find("data")
            start, length = int(data.get("offset")), int(data.get("size"))
            if start < offset + size and offset < start + length:
                return True
        return False

    def put(self, const: str, values: np.ndarray) -> None:
        """Write ``values`` as ``const``'s data: in place when no other Const reads its bytes,
        else appended to the .bin with the Const's offset pointed there."""
        offset, size, dtype, shape = self._where(const)
        raw = np.ascontiguousarray(np.asarray(values).reshape(shape), dtype=dtype).tobytes()
        if len(raw) != size:
            raise AssertionError("a patched constant keeps its size")
        if self._shared(const):
            offset = len(self.data)
            self.data += raw
            self.layers[const].find("data").set("offset", str(offset))
            self.relocated = True
        else:
            self.data[offset : offset + size] = raw

    def write(self, out: Path) -> Path:
        out = Path(out)
        if out.suffix != ".xml":
            raise ValueError(f"{out}: an IR copy is written as .xml (+ .bin)")
        out.parent.mkdir(parents=True, exist_ok=True)
        if self.relocated:
            self.tree.write(out, encoding="utf-8", xml_declaration=True)
        else:
            shutil.copyfile(self.xml, out)
        out.with_suffix(".bin").write_bytes(bytes(self.data))
        return out


# --------------------------------------------------------------------------- weight layers


@dataclass
class _Layer:
    """A weight op and the constants that make its output channels."""

    op: str
    weight: str  # the stored weight Const (f32, f16 or i8)
    axis: int  # its output-channel axis
    scale: str | None = None  # int8: the per-channel scale Const of the Multiply
    zero_point: str | None = None  # int8: the zero point Const of a Subtract
    bias: str | None = None
    bias_axis: int | None = None


def _weight_layers(ir: _IR) -> list[_Layer]:
    layers = []
    for op, element in ir.layers.items():
        if element.get("type") not in WEIGHT_OPS:
            continue
        node, scale, zero_point = ir.source(op, 1), None, None
        while node is not None and ir.type(node) in _THROUGH:
            if ir.type(node) == "Multiply" and scale is None:
                scale = ir.const_behind(ir.source(node, 1))
            if ir.type(node) == "Subtract" and zero_point is None:
                zero_point = ir.const_behind(ir.source(node, 1))
            node = ir.source(node, 0)
        if node is None or ir.type(node) != "Const":
            continue  # a MatMul of two activations
        axis = 0
        if element.get("type") == "MatMul":
            data = element.find("data")
            axis = -2 if data is not None and data.get("transpose_b") == "true" else -1
        elif element.get("type") == "ConvolutionBackpropData":
            axis = 1  # [C_in, C_out, ...]
        layer = _Layer(op, node, axis, scale, zero_point)
        adds = [c for c in ir.consumers.get(op, []) if ir.type(c) == "Add"]
        if len(adds) == 1:
            other = ir.source(adds[0], 1) if ir.source(adds[0], 0) == op else ir.source(adds[0], 0)
            bias = ir.const_behind(other)
            if bias is not None:
                out_axis = 1 if element.get("type") != "MatMul" else ir.output_rank(op) - 1
                layer.bias, layer.bias_axis = bias, out_axis - (ir.output_rank(op) - len(ir.get(bias).shape))
        layers.append(layer)
    order = list(ir.layers)
    return sorted(layers, key=lambda layer: order.index(layer.op))


def _pick(layers: list[_Layer], layer: str | int) -> _Layer:
    if not layers:
        raise ValueError("the IR has no weight op reading a stored constant to plant a defect in")
    if layer == "last":
        return layers[-1]
    if layer == "middle":
        return layers[(len(layers) - 1) // 2]
    return layers[int(layer)]


def _channels(ir: _IR, layer: _Layer) -> int:
    return ir.get(layer.weight).shape[layer.axis]


def _per_channel(ir: _IR, const: str | None, channels: int, axis: int) -> tuple[np.ndarray, int] | None:
    """(values, channel axis) of a scale/zero-point Const that holds one value per channel."""
    if const is None:
        return None
    values = ir.get(const)
    if values.ndim == 0 or values.size == 1:
        return None
    axis = axis % values.ndim
    if values.shape[axis] != channels:
        return None
    return values, axis


def _scaled(values: np.ndarray, axis: int, channel: int, factor: float) -> np.ndarray:
    values = np.array(values, copy=True)
    index = [slice(None)] * values.ndim
    index[axis] = channel
    values[tuple(index)] = (values[tuple(index)].astype(np.float64) * factor).astype(values.dtype)
    return values


def _swapped(values: np.ndarray, axis: int, a: int, b: int) -> np.ndarray:
    order = np.arange(values.shape[axis])
    order[[a, b]] = order[[b, a]]
    return np.take(values, order, axis=axis)


def _xml(out: Path) -> Path:
    return Path(out).with_suffix(".xml") if Path(out).suffix != ".xml" else Path(out)


# --------------------------------------------------------------------------- the defects


def scale_channel(path: Path, out: Path, layer: str | int = "middle", channel: int = 0, factor: float = 1.5) -> Planted:
    """Output channel ``channel`` of ``layer`` computes ``factor`` x its value (bias included)."""
    ir = _IR.read(path)
    picked = _pick(_weight_layers(ir), layer)
    channels = _channels(ir, picked)
    if ir.get(picked.weight).dtype in (np.int8, np.uint8):
        scale = _per_channel(ir, picked.scale, channels, picked.axis)
        if scale is None:
            raise ValueError(f"{ir.name(picked.op)}: its int8 weights have no per-channel scale to write {factor} x")
        ir.put(picked.scale, _scaled(scale[0], scale[1], channel, factor))
        where = "weight scale"
    else:
        ir.put(picked.weight, _scaled(ir.get(picked.weight), picked.axis % ir.get(picked.weight).ndim, channel, factor))
        where = "weights"
    if picked.bias is not None:
        ir.put(picked.bias, _scaled(ir.get(picked.bias), picked.bias_axis, channel, factor))
        where += " and bias"
    ir.write(_xml(out))
    return Planted(_xml(out), "scale_channel", ir.name(picked.op), {"channel": channel, "factor": factor, "written": where})


def swap_channels(path: Path, out: Path, layer: str | int = "middle", a: int = 0, b: int = 1) -> Planted:
    """Output channels ``a`` and ``b`` of ``layer`` swapped: weights, scales, zero points, bias."""
    ir = _IR.read(path)
    picked = _pick(_weight_layers(ir), layer)
    channels = _channels(ir, picked)
    weight = ir.get(picked.weight)
    ir.put(picked.weight, _swapped(weight, picked.axis % weight.ndim, a, b))
    for const in (picked.scale, picked.zero_point):
        found = _per_channel(ir, const, channels, picked.axis)
        if found is not None:
            ir.put(const, _swapped(found[0], found[1], a, b))
    if picked.bias is not None:
        ir.put(picked.bias, _swapped(ir.get(picked.bias), picked.bias_axis, a, b))
    ir.write(_xml(out))
    return Planted(_xml(out), "swap_channels", ir.name(picked.op), {"channels": (a, b)})


def _bias(ir: _IR, picked: _Layer) -> np.ndarray:
    if picked.bias is None:
        raise ValueError(f"{ir.name(picked.op)}: the layer has no constant bias (an Add of a Const after it)")
    return ir.get(picked.bias)


def shift_bias(path: Path, out: Path, layer: str | int = "middle", shift: float = 0.5, channel: int | None = None) -> Planted:
    """Every output channel's bias of ``layer`` (or channel ``channel``'s) moved by ``shift`` x the
    layer's largest |bias| (see the module doc)."""
    ir = _IR.read(path)
    picked = _pick(_weight_layers(ir), layer)
    bias = _bias(ir, picked)
    peak = float(np.abs(bias.astype(np.float64)).max())
    if peak == 0:
        raise ValueError(f"{ir.name(picked.op)}: its biases are all zero, nothing to measure a shift by")
    amount = shift * peak
    moved = bias.astype(np.float64)
    if channel is None:
        moved += amount
    else:
        index = [slice(None)] * moved.ndim
        index[picked.bias_axis] = channel
        moved[tuple(index)] += amount
    ir.put(picked.bias, moved.astype(bias.dtype))
    ir.write(_xml(out))
    return Planted(_xml(out), "shift_bias", ir.name(picked.bias), {"shift": shift, "amount": amount, "channel": channel})


def drop_bias(path: Path, out: Path, layer: str | int = "last") -> Planted:
    """The bias of ``layer`` zeroed."""
    ir = _IR.read(path)
    picked = _pick(_weight_layers(ir), layer)
    ir.put(picked.bias, np.zeros_like(_bias(ir, picked)))
    ir.write(_xml(out))
    return Planted(_xml(out), "drop_bias", ir.name(picked.bias), {})


def fake_quantizes(ir: _IR) -> list[str]:
    return [layer for layer in ir.layers if ir.type(layer) == "FakeQuantize"]


def _quantizer(ir: _IR, path: Path, which: str | int) -> str:
    quantizers = fake_quantizes(ir)
    if not quantizers:
        raise ValueError(f"{path}: no FakeQuantize -- a float IR stores no quantization scale to write wrong")
    return quantizers[-1] if which == "last" else quantizers[int(which)]


def scale_output(path: Path, out: Path, factor: float = 4.0, quantizer: str | int = "last") -> Planted:
    """The last quantizer's output range written ``factor`` x, its input range kept: the tensor it
    quantizes reaches the next layer ``factor`` x."""
    ir = _IR.read(path)
    fq = _quantizer(ir, path, quantizer)
    for index in (3, 4):  # output_low, output_high
        const = ir.const_behind(ir.source(fq, index))
        ir.put(const, ir.get(const).astype(np.float64) * factor)
    ir.write(_xml(out))
    return Planted(_xml(out), "scale_output", ir.name(fq), {"factor": factor})


def coarsen_scale(path: Path, out: Path, factor: float = 16.0, quantizer: str | int = "last") -> Planted:
    """A quantizer's scale written ``factor`` x: its four ranges ``factor`` x with ``levels`` kept,
    so its step is ``factor`` x coarser (``log2(factor)`` bits lost)."""
    ir = _IR.read(path)
    fq = _quantizer(ir, path, quantizer)
    for index in (1, 2, 3, 4):
        const = ir.const_behind(ir.source(fq, index))
        ir.put(const, ir.get(const).astype(np.float64) * factor)
    ir.write(_xml(out))
    levels = int(ir.layers[fq].find("data").get("levels"))
    return Planted(_xml(out), "coarsen_scale", ir.name(fq), {"factor": factor, "levels": levels})


def weight_layer_names(path: Path) -> list[str]:
    """The names of the IR's weight ops, in graph order (what ``layer`` indexes)."""
    ir = _IR.read(path)
    return [ir.name(layer.op) for layer in _weight_layers(ir)]


def constants(path: Path, layer: str | int = "middle") -> dict[str, np.ndarray]:
    """The stored constants of a weight op as the planters see them (for tests reading a copy back):
    ``weight``, and ``scale``, ``zero_point``, ``bias`` where it has them."""
    ir = _IR.read(path)
    picked = _pick(_weight_layers(ir), layer)
    found = {"weight": ir.get(picked.weight)}
    for key in ("scale", "zero_point", "bias"):
        const = getattr(picked, key)
        if const is not None:
            found[key] = ir.get(const)
    return found


def quantizer_ranges(path: Path, quantizer: str | int = "last") -> np.ndarray:
    """input_low, input_high, output_low, output_high of a FakeQuantize, as stored."""
    ir = _IR.read(path)
    fq = _quantizer(ir, path, quantizer)
    return np.array([float(ir.get(ir.const_behind(ir.source(fq, i))).ravel()[0]) for i in (1, 2, 3, 4)])
