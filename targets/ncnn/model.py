"""ncnn's two files, read and written without ncnn: the ``.param`` text (layers, their types and
``k=v`` parameters, blob names) and the weights each layer keeps in the ``.bin``.

Format (ncnn's ``Net::load_param`` / ``ModelBinFromDataReader``): the ``.param`` starts with the
magic 7767517, then ``layer_count blob_count``, then one line per layer: ``type name
bottom_count top_count bottoms... tops... k=v...`` (``-23300=n,a,b...`` for arrays). The ``.bin``
holds the weight blobs of the layers in order. A blob loaded with a flag tag (convolution and
inner-product weights) starts with 4 bytes saying how it is stored: 0 float32, 0x01306B47 float16,
0x000D4B38 int8; blobs loaded raw (biases, batch-norm statistics) are float32 without a tag.
Every blob is padded to 4 bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgex.plugins import import_native

MAGIC = "7767517"
FLAG_FP32 = 0
FLAG_FP16 = 0x01306B47
FLAG_INT8 = 0x000D4B38
FLAG_NAMES = {FLAG_FP32: "float32", FLAG_FP16: "float16", FLAG_INT8: "int8"}


class ParamError(ValueError):
    """The file is not an ncnn .param / .bin pair edgex can read."""


@dataclass
class Layer:
    type: str
    name: str
    bottoms: list[str]
    tops: list[str]
    params: dict[int, str] = field(default_factory=dict)

    def int(self, key: int, default: int = 0) -> int:
        return int(float(self.params.get(key, default)))


def read_param(path: Path) -> list[Layer]:
    """The layers of an ncnn .param text file; ParamError when it is not one."""
    try:
        lines = Path(path).read_text().split("\n")
    except UnicodeDecodeError as exc:
        raise ParamError("it is not text (a binary .param.bin is not read by edgex)") from exc
    lines = [line for line in lines if line.strip()]
    if not lines or lines[0].strip() != MAGIC:
        raise ParamError(f"it does not start with ncnn's magic number {MAGIC}")
    try:
        count = int(lines[1].split()[0])
        layers = []
        for line in lines[2 : 2 + count]:
            parts = line.split()
            kind, name, nb, nt = parts[0], parts[1], int(parts[2]), int(parts[3])
            bottoms, tops = parts[4 : 4 + nb], parts[4 + nb : 4 + nb + nt]
            params = dict(p.split("=", 1) for p in parts[4 + nb + nt :])
            layers.append(Layer(kind, name, bottoms, tops, {int(k): v for k, v in params.items()}))
    except (IndexError, ValueError) as exc:
        raise ParamError(f"a layer line cannot be read ({exc})") from exc
    if len(layers) != count:
        raise ParamError(f"it declares {count} layers and has {len(layers)}")
    return layers


@dataclass(frozen=True)
class Blob:
    """One weight blob of a layer in the .bin: where its values start, how many, and their dtype."""

    layer: str
    role: str  # "weight", "bias", ...
    offset: int  # of the first value (after the flag tag, if any)
    count: int
    dtype: str


def _weights(layer: Layer) -> list[tuple[str, int, bool]] | None:
    """(role, value count, flag-tagged) of each blob the layer reads, in ncnn's load_model order;
    None for a type edgex does not know."""
    t = layer.type
    if t in ("Convolution", "ConvolutionDepthWise", "Convolution1D", "Convolution3D", "Deconvolution",
             "DeconvolutionDepthWise", "Deconvolution1D", "Deconvolution3D"):
        blobs = [("weight", layer.int(6), True)]
        if layer.int(5):
            blobs.append(("bias", layer.int(0), False))
        return blobs
    if t == "InnerProduct":
        blobs = [("weight", layer.int(2), True)]
        if layer.int(1):
            blobs.append(("bias", layer.int(0), False))
        return blobs
    if t == "LSTM":  # 0=num_output, 1=weight_data_size, 2=direction (2: both), 3=hidden_size; every blob tagged
        directions = 2 if layer.int(2) == 2 else 1
        out, hidden = layer.int(0), layer.int(3, layer.int(0))
        blobs = [("weight_xc", layer.int(1), True), ("bias_c", hidden * 4 * directions, True), ("weight_hc", out * hidden * 4 * directions, True)]
        return blobs + ([("weight_hr", hidden * out * directions, True)] if out != hidden else [])
    if t == "MultiHeadAttention":  # 0=embed_dim, 2=weight_data_size, 3=kdim, 4=vdim
        embed = layer.int(0)
        qdim = layer.int(2) // max(embed, 1)
        return [("q_weight", layer.int(2), True), ("q_bias", embed, False), ("k_weight", embed * layer.int(3, embed), True), ("k_bias", embed, False),
                ("v_weight", embed * layer.int(4, embed), True), ("v_bias", embed, False), ("out_weight", qdim * embed, True), ("out_bias", qdim, False)]
    if t == "Gemm":  # 4/5/6=constant A/B/C, 7/8/9=M/N/K, 10=C's broadcast (0 scalar, 1-2 M, 3 MxN, 4 N)
        m, n, k = layer.int(7), layer.int(8), layer.int(9)
        blobs = [("A", m * k, True)] if layer.int(4) else []
        blobs += [("B", n * k, True)] if layer.int(5) else []
        broadcast = layer.int(10)
        if layer.int(6) and broadcast != -1:
            blobs.append(("C", {0: 1, 1: m, 2: m, 3: m * n, 4: n}.get(broadcast, 0), True))
        return blobs
    if t == "BatchNorm":
        return [(r, layer.int(0), False) for r in ("slope", "mean", "var", "bias")]
    if t == "PReLU":
        return [("slope", layer.int(0), False)]
    if t == "Scale":
        blobs = [("scale", layer.int(0), False)] if layer.int(0) != -233 else []
        return blobs + ([("bias", layer.int(0), False)] if layer.int(1) else [])
    if t == "MemoryData":
        return [("data", max(layer.int(0), 1) * max(layer.int(1), 1) * max(layer.int(2), 1) * max(layer.int(11), 1), False)]
    if t in ("LayerNorm", "InstanceNorm"):  # 0=affine size / channels, 2=affine
        return [("gamma", layer.int(0), False), ("beta", layer.int(0), False)] if layer.int(2, 1) else []
    if t == "GroupNorm":  # 1=channels, 3=affine
        return [("gamma", layer.int(1), False), ("beta", layer.int(1), False)] if layer.int(3, 1) else []
    return None


#: layer types that read nothing from the .bin (the common ones; an unknown type stops the walk)
NO_WEIGHTS = frozenset({
    "Input", "ReLU", "Sigmoid", "TanH", "Pooling", "Pooling1D", "Pooling3D", "Split", "Concat", "Eltwise", "BinaryOp",
    "UnaryOp", "Flatten", "Reshape", "Permute", "Softmax", "Clip", "HardSigmoid", "HardSwish", "Swish", "Mish", "GELU",
    "ELU", "SELU", "Dropout", "Interp", "Crop", "Slice", "Padding", "ExpandDims", "Squeeze", "Noop", "Reduction",
    "ShuffleChannel", "PixelShuffle", "Reorg", "Erf", "Exp", "Log", "Power", "AbsVal", "Bias", "Tile", "Shrink",
    "CopyTo", "MatMul", "CumulativeSum", "Flip", "Yolov3DetectionOutput", "Threshold",
})


def weight_blobs(layers: list[Layer], data: bytes) -> tuple[list[Blob], str | None]:
    """The .bin's weight blobs, walked layer by layer; and the first layer whose weights edgex
    cannot size (the walk stops there), or None."""
    blobs: list[Blob] = []
    offset = 0
    for layer in layers:
        spec = _weights(layer)
        if spec is None:
            if layer.type in NO_WEIGHTS:
                continue
            return blobs, f"{layer.name} ({layer.type})"
        for role, count, tagged in spec:
            dtype = "float32"
            if tagged:
                if offset + 4 > len(data):
                    raise ParamError(f"the .bin ends inside layer {layer.name}'s {role}")
                flag = int(np.frombuffer(data, "<u4", 1, offset)[0])
                if flag not in FLAG_NAMES:
                    raise ParamError(f"layer {layer.name}'s {role} has the unknown storage tag {flag:#x} at byte {offset}")
                dtype = FLAG_NAMES[flag]
                offset += 4
            size = count * np.dtype(dtype).itemsize
            if offset + size > len(data):
                raise ParamError(f"the .bin ends inside layer {layer.name}'s {role} (needs {offset + size} bytes, has {len(data)})")
            blobs.append(Blob(layer.name, role, offset, count, dtype))
            if dtype == "int8":  # ncnn2int8's layers add scales edgex does not size: stop here
                return blobs, f"{layer.name} ({layer.type}, int8)"
            offset += (size + 3) // 4 * 4
    if offset != len(data):
        raise ParamError(f"the .bin has {len(data)} bytes and its layers read {offset}: it is not this .param's weights")
    return blobs, None


def bin_path(param: Path) -> Path:
    """``model.ncnn.param`` -> ``model.ncnn.bin``."""
    return Path(param).with_suffix(".bin")


#: whether this process's ncnn is bound to its own OpenMP (``load_ncnn``)
_OWN_OPENMP: list[bool] = []


def load_ncnn() -> tuple[object, bool]:
    """ncnn's module, and whether it may run several threads in a forked child.

    ncnn's wheel bundles its own libgomp, but torch loads libgomp with RTLD_GLOBAL first, so a
    plainly imported ncnn runs its OpenMP team on torch's, whose thread pool does not survive
    fork: in a child forked after torch started its threads, two ncnn threads never return (one
    does). Imported by ``import_native``, ncnn binds its own libgomp and runs threaded in such a
    child. An ncnn this process imported before edgex did (a user's own ``import ncnn``) keeps
    one thread.
    """
    ncnn, bound_here = import_native("ncnn")
    if not _OWN_OPENMP:
        _OWN_OPENMP.append(bound_here)
    return ncnn, _OWN_OPENMP[0]


def is_unknown_layer(kind: str) -> bool:
    """Whether ncnn has no layer of this type (pnnx leaves an op it cannot convert as
    ``aten::erfinv``, ``torch.xxx``, ``pnnx.Expression``...)."""
    ncnn, _ = load_ncnn()
    return ncnn.layer_to_index(kind) < 0
