"""Planting defects directly in ``.mnn`` files (MNN's flatbuffer), as tests/defects.py does for
.tflite, .onnx, .mlpackage and .pte artifacts.

Each planter takes an ``.mnn`` file and writes a modified copy ``out``, returning a
:class:`defects.Planted`. The file is read by edgex's own reader (``edgex.targets.mnn.mnnfile``,
no MNN import), which says where each convolution's numbers lie; the planters patch those bytes in
place (same sizes), so nothing but the named values changes. What each precision stores (see
mnnfile's docstring): fp32 weights (``Convolution2D.weight``), fp16 weights (``IDSTQuan.buffer``
raw float16), int8 weights (IDSTEncoder's 8-bit blob, ``q + 128``) with per-channel scales
(``IDSTQuan.alpha``); the bias is float32 at every precision; full int8 adds the activations'
scales (``scaleIn``/``scaleOut`` of each convolution, and each tensor's ``TensorQuantInfo``).

Defects (``layer`` is "last", "middle" or an index into the file's convolutions, in file order;
MNN makes a Gemm/MatMul with constant weights a convolution too):

- ``scale_channel``: output channel ``channel`` computes ``factor`` x its value: its float weights
  (fp32, fp16) or its int8 scale (the int8 values kept), and its bias, ``factor`` x.
- ``swap_channels``: output channels ``a`` and ``b`` swapped: weights (int8 values), scales, bias.
- ``shift_bias``: every output channel's bias (or channel ``channel``'s) moved by ``shift`` x the
  layer's largest |bias|; ``drop_bias``: the layer's bias all zeros.
- int8 only: ``scale_output``: the int8 grid of the last convolution's output (its tensor's
  ``TensorQuantInfo.scale``, which MNN's CPU runtime quantizes with, and the convolution's
  ``scaleOut``, which it does not read) written ``factor`` x: that tensor is rounded to a grid
  ``factor`` x coarser. (Only ``scaleOut`` x4 changes nothing MNN computes: measured.) A
  dynamic-int8 file has no activation grid: there the last layer's int8 weight scales are
  written ``factor`` x (for the conformance kit, which plants ``scale_output`` at both).
"""

from __future__ import annotations

import importlib.util
import struct
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgex.targets.mnn import mnnfile

if "defects" not in sys.modules:  # loaded on its own (a benchmark): tests/defects.py, by path
    _spec = importlib.util.spec_from_file_location("defects", Path(__file__).with_name("defects.py"))
    _defects = importlib.util.module_from_spec(_spec)
    sys.modules["defects"] = _defects
    _spec.loader.exec_module(_defects)
Planted = sys.modules["defects"].Planted
_swapped = sys.modules["defects"]._swapped  # the channel swap every other format's planter makes


def _pick(count: int, layer: str | int) -> int:
    if layer == "last":
        return count - 1
    if layer == "middle":
        return count // 2
    return int(layer)


def _edit(path: Path, out: Path, layer: str | int, edit: Callable[[mnnfile.MnnModel, mnnfile.Conv, bytearray], dict[str, Any]], defect: str) -> Planted:
    model = mnnfile.read(Path(path))
    if not model.convolutions:
        raise ValueError(f"{path} has no convolution to plant {defect} in")
    conv = model.convolutions[_pick(len(model.convolutions), layer)]
    buf = bytearray(model.buf)
    details = edit(model, conv, buf)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(bytes(buf))
    return Planted(out, defect, conv.name, {"stored": conv.stored, **details})


def _rows(model: mnnfile.MnnModel, conv: mnnfile.Conv) -> tuple[mnnfile.Span, np.ndarray]:
    """The span holding the layer's per-channel weight values, and them as [out, rest]."""
    span = {"fp32": conv.weight, "fp16": conv.buffer, "int8": conv.int8_values}[conv.stored]
    if span is None:
        raise ValueError(f"{conv.name}: its {conv.stored} weights are stored in a form the planters cannot read")
    return span, span.read(model.buf).reshape(conv.out_channels, -1)


def scale_channel(path: Path, out: Path, layer: str | int = "last", channel: int = 0, factor: float = 1.5) -> Planted:
    def edit(model, conv, buf):
        if conv.stored == "int8":
            alpha = conv.alpha.read(model.buf)
            if conv.asymmetric_weights:
                alpha[2 * channel: 2 * channel + 2] *= factor  # min and step: the channel's every value
            else:
                alpha[channel] *= factor
            conv.alpha.write(buf, alpha)
        else:
            span, rows = _rows(model, conv)
            rows = rows.copy()
            rows[channel] = (rows[channel].astype(np.float64) * factor).astype(rows.dtype)
            span.write(buf, rows)
        if conv.bias is not None:
            bias = conv.bias.read(model.buf)
            bias[channel] *= factor
            conv.bias.write(buf, bias)
        return {"channel": channel, "factor": factor}

    return _edit(path, out, layer, edit, "scale_channel")


def swap_channels(path: Path, out: Path, layer: str | int = "middle", a: int = 0, b: int = 1) -> Planted:
    def edit(model, conv, buf):
        span, rows = _rows(model, conv)
        span.write(buf, _swapped(rows, 0, a, b))
        if conv.stored == "int8":
            alpha = conv.alpha.read(model.buf)
            if conv.asymmetric_weights:
                conv.alpha.write(buf, _swapped(alpha.reshape(-1, 2), 0, a, b).ravel())
            else:
                conv.alpha.write(buf, _swapped(alpha, 0, a, b))
        if conv.bias is not None:
            conv.bias.write(buf, _swapped(conv.bias.read(model.buf), 0, a, b))
        return {"channels": [a, b]}

    return _edit(path, out, layer, edit, "swap_channels")


def shift_bias(path: Path, out: Path, layer: str | int = "middle", channel: int | None = None, shift: float = 0.5) -> Planted:
    def edit(model, conv, buf):
        bias = conv.bias.read(model.buf)
        largest = float(np.abs(bias).max())
        if largest == 0.0:
            raise ValueError(f"{conv.name}: its biases are all zero, nothing to measure a shift by")
        amount = shift * largest
        if channel is None:
            bias = bias + np.float32(amount)
        else:
            bias[channel] += np.float32(amount)
        conv.bias.write(buf, bias)
        return {"amount": amount, "channel": channel}

    return _edit(path, out, layer, edit, "shift_bias")


def drop_bias(path: Path, out: Path, layer: str | int = "last") -> Planted:
    def edit(model, conv, buf):
        conv.bias.write(buf, np.zeros(conv.bias.count, np.float32))
        return {}

    return _edit(path, out, layer, edit, "drop_bias")


def scale_output(path: Path, out: Path, factor: float = 4.0) -> Planted:
    def edit(model, conv, buf):
        if conv.scale_out_at is None:
            raise ValueError(f"{conv.name} has no int8 output scale (not a full-int8 .mnn)")
        grid = next((g for g in model.grids if g.index == conv.output_index), None)
        if grid is None and conv.stored == "int8" and not model.grids:
            # dynamic-int8: no activation grid; the scale nearest the output is the last layer's
            # weight scale, every channel's written ``factor`` x (the int8 weights kept)
            conv.alpha.write(buf, conv.alpha.read(model.buf) * np.float32(factor))
            return {"factor": factor, "weight_scales": True}
        if grid is None or grid.scale_at is None:
            raise ValueError(f"{conv.name}: its output tensor has no int8 grid")
        struct.pack_into("<f", buf, grid.scale_at, grid.scale * factor)
        struct.pack_into("<f", buf, conv.scale_out_at, conv.scale_out * factor)
        return {"factor": factor, "scale": grid.scale}

    return _edit(path, out, "last", edit, "scale_output")


def layer_values(path: Path, layer: str | int) -> dict[str, np.ndarray]:
    """A layer's stored numbers, for tests reading a planted copy back."""
    model = mnnfile.read(Path(path))
    conv = model.convolutions[_pick(len(model.convolutions), layer)]
    values = {"weights": mnnfile.conv_weights(model, conv), "bias": conv.bias.read(model.buf)}
    if conv.stored == "int8":
        values["alpha"] = conv.alpha.read(model.buf)
        values["q"] = conv.int8_values.read(model.buf)
    return values


PLANTERS = {
    "scale_channel": lambda artifact, folder: scale_channel(artifact, Path(folder) / Path(artifact).name).path,
    "scale_output": lambda artifact, folder: scale_output(artifact, Path(folder) / Path(artifact).name).path,
}
