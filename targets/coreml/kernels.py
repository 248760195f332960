"""The numerics of the MIL reference interpreter: one kernel per MIL op.

Semantics follow coremltools' op definitions (``coremltools/converters/mil/mil/ops/defs/iOS15``
to ``iOS18``): pad types, pooling output sizes, gate orders, reshape's ``0``/``-1``, slice masks,
the packed bit layouts of compressed weights. Kernels compute with torch on CPU, always in
float32 for floating-point data; the interpreter (``edgex.targets.coreml.interpreter``) hands them
values already rounded to the dtype the program declares and rounds what they return to the
dtype the program declares for each output. That is where fp16 is emulated: between ops,
never inside one.

A kernel takes an :class:`OpArgs` and returns a tensor, or a tuple of tensors for ops with
several outputs. A parameter combination it does not implement raises :class:`Unsupported`,
which becomes a "cannot validate" error, never a guess.

This module imports torch at its top: it is imported only by the interpreter, when a coreml
runtime is loaded, never when plugins load (``edgex targets`` stays fast; a test keeps it so).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F


class Unsupported(Exception):
    """An op, or a parameter of it, the interpreter does not implement."""


class OpArgs:
    """The inputs of one op, resolved to values (tensors, lists of tensors, or strings)."""

    def __init__(self, op: Any, values: dict[str, Any]):
        self.op = op
        self.values = values

    def __getitem__(self, name: str) -> Any:
        if name not in self.values:
            raise Unsupported(f"{self.op.op_type} without its required input {name!r}")
        return self.values[name]

    def has(self, name: str) -> bool:
        return self.values.get(name) is not None

    def get(self, name: str, default: Any = None) -> Any:
        value = self.values.get(name)
        return default if value is None else value

    def ints(self, name: str, default: Sequence[int] | None = None) -> list[int] | None:
        value = self.values.get(name)
        if value is None:
            return None if default is None else list(default)
        return [int(v) for v in _flat(value)]

    def int(self, name: str, default: int = 0) -> int:
        value = self.values.get(name)
        return default if value is None else int(_flat(value)[0])

    def float(self, name: str, default: float = 0.0) -> float:
        value = self.values.get(name)
        return default if value is None else float(_flat(value)[0])

    def bool(self, name: str, default: bool = False) -> bool:
        value = self.values.get(name)
        return default if value is None else bool(_flat(value)[0])

    def str(self, name: str, default: str = "") -> str:
        value = self.values.get(name)
        return default if value is None else str(value)

    @property
    def output_shapes(self) -> list[tuple[int, ...] | None]:
        shapes = []
        for var in self.op.outputs:
            shape = getattr(var, "shape", None)
            shapes.append(tuple(int(d) for d in shape) if shape is not None and all(isinstance(d, (int, np.integer)) for d in shape) else None)
        return shapes


def _flat(value: Any) -> list[Any]:
    if isinstance(value, torch.Tensor):
        return value.reshape(-1).tolist()
    if isinstance(value, np.ndarray):
        return value.reshape(-1).tolist()
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


Kernel = Callable[[OpArgs], Any]
KERNELS: dict[str, Kernel] = {}


def kernel(*names: str) -> Callable[[Kernel], Kernel]:
    def register(fn: Kernel) -> Kernel:
        for name in names:
            KERNELS[name] = fn
        return fn

    return register


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _index(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.int64)


# --------------------------------------------------------------------------- elementwise


_BINARY: dict[str, Callable[[Any, Any], Any]] = {
    "add": torch.add,
    "sub": torch.sub,
    "mul": torch.mul,
    "real_div": lambda x, y: torch.true_divide(x, y),
    "floor_div": lambda x, y: torch.floor_divide(x, y),
    "mod": torch.remainder,  # Python's (and numpy's) sign convention, as coremltools' operator.mod
    "pow": torch.pow,
    "maximum": torch.maximum,
    "minimum": torch.minimum,
    "equal": torch.eq,
    "not_equal": torch.ne,
    "greater": torch.gt,
    "greater_equal": torch.ge,
    "less": torch.lt,
    "less_equal": torch.le,
    "logical_and": torch.logical_and,
    "logical_or": torch.logical_or,
    "logical_xor": torch.logical_xor,
}

for _name, _fn in _BINARY.items():
    KERNELS[_name] = (lambda fn: lambda a: fn(a["x"], a["y"]))(_fn)

_UNARY: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "abs": torch.abs,
    "acos": torch.acos,
    "asin": torch.asin,
    "atan": torch.atan,
    "atanh": torch.atanh,
    "ceil": torch.ceil,
    "cos": torch.cos,
    "cosh": torch.cosh,
    "erf": torch.erf,
    "exp": torch.exp,
    "exp2": torch.exp2,
    "floor": torch.floor,
    "logical_not": torch.logical_not,
    "round": torch.round,  # half to even, as numpy's round in coremltools' value_inference
    "sign": torch.sign,
    "sin": torch.sin,
    "sinh": torch.sinh,
    "sqrt": torch.sqrt,
    "square": torch.square,
    "tan": torch.tan,
    "tanh": torch.tanh,
    "identity": lambda x: x,
    "relu": torch.relu,
    "relu6": lambda x: torch.clamp(x, 0.0, 6.0),
    "sigmoid": torch.sigmoid,
    "silu": F.silu,
    "softplus": F.softplus,
    "softsign": F.softsign,
}

for _name, _fn in _UNARY.items():
    KERNELS[_name] = (lambda fn: lambda a: fn(a["x"]))(_fn)


@kernel("cast")
def _cast(a: OpArgs) -> torch.Tensor:
    # the interpreter casts every result to its declared dtype (truncating floats to ints as
    # numpy's astype does), so the cast op itself passes its input through
    return a["x"]


@kernel("log")
def _log(a: OpArgs) -> torch.Tensor:
    return torch.log(a["x"] + a.float("epsilon", 1e-45))


@kernel("rsqrt")
def _rsqrt(a: OpArgs) -> torch.Tensor:
    return torch.rsqrt(a["x"] + a.float("epsilon", 1e-12))


@kernel("inverse")
def _inverse(a: OpArgs) -> torch.Tensor:
    return torch.reciprocal(a["x"] + a.float("epsilon", 1e-4))


@kernel("clip")
def _clip(a: OpArgs) -> torch.Tensor:
    return torch.minimum(torch.maximum(a["x"], a["alpha"]), a["beta"])


@kernel("threshold")
def _threshold(a: OpArgs) -> torch.Tensor:
    return torch.maximum(a["x"], a["alpha"])


# --------------------------------------------------------------------------- activations


@kernel("clamped_relu")
def _clamped_relu(a: OpArgs) -> torch.Tensor:
    x, alpha, beta = a["x"], a.float("alpha"), a.float("beta")
    return torch.clamp(torch.where(x >= 0, x, alpha * x), max=beta)


@kernel("elu")
def _elu(a: OpArgs) -> torch.Tensor:
    x, alpha = a["x"], a.float("alpha", 1.0)
    return torch.where(x > 0, x, alpha * torch.expm1(x))


@kernel("gelu")
def _gelu(a: OpArgs) -> torch.Tensor:
    x, mode = a["x"], a.str("mode", "EXACT")
    if mode == "EXACT":
        return F.gelu(x)
    if mode == "TANH_APPROXIMATION":
        return F.gelu(x, approximate="tanh")
    if mode == "SIGMOID_APPROXIMATION":
        return x * torch.sigmoid(1.702 * x)
    raise Unsupported(f"gelu mode {mode}")


@kernel("leaky_relu")
def _leaky_relu(a: OpArgs) -> torch.Tensor:
    x = a["x"]
    return torch.where(x >= 0, x, a.float("alpha", 0.01) * x)


@kernel("linear_activation")
def _linear_activation(a: OpArgs) -> torch.Tensor:
    return a.float("alpha") * a["x"] + a.float("beta", 0.0)


def _per_channel(param: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A [C] parameter shaped to broadcast along axis 1 of ``x``."""
    return param.reshape([1, -1] + [1] * (x.dim() - 2))


@kernel("prelu")
def _prelu(a: OpArgs) -> torch.Tensor:
    x = a["x"]
    return torch.where(x > 0, x, _per_channel(a["alpha"], x) * x)


@kernel("scaled_tanh")
def _scaled_tanh(a: OpArgs) -> torch.Tensor:
    return a.float("alpha", 1.0) * torch.tanh(a.float("beta", 1.0) * a["x"])


@kernel("sigmoid_hard")
def _sigmoid_hard(a: OpArgs) -> torch.Tensor:
    return torch.clamp(a.float("alpha", 0.2) * a["x"] + a.float("beta", 0.5), 0.0, 1.0)


@kernel("softplus_parametric")
def _softplus_parametric(a: OpArgs) -> torch.Tensor:
    x = a["x"]
    return _per_channel(a["alpha"], x) * torch.log1p(torch.exp(_per_channel(a["beta"], x) * x))


@kernel("thresholded_relu")
def _thresholded_relu(a: OpArgs) -> torch.Tensor:
    x = a["x"]
    return torch.where(x >= a.float("alpha", 1.0), x, torch.zeros_like(x))


@kernel("softmax")
def _softmax(a: OpArgs) -> torch.Tensor:
    return torch.softmax(a["x"], dim=a.int("axis", -1))


# --------------------------------------------------------------------------- linear algebra


@kernel("linear")
def _linear(a: OpArgs) -> torch.Tensor:
    return F.linear(a["x"], a["weight"], a.get("bias"))


@kernel("matmul")
def _matmul(a: OpArgs) -> torch.Tensor:
    x, y = a["x"], a["y"]
    if a.bool("transpose_x") and x.dim() >= 2:
        x = x.transpose(-1, -2)
    if a.bool("transpose_y") and y.dim() >= 2:
        y = y.transpose(-1, -2)
    return torch.matmul(x, y)


@kernel("einsum")
def _einsum(a: OpArgs) -> torch.Tensor:
    return torch.einsum(a.str("equation"), *a["values"])


@kernel("scaled_dot_product_attention")
def _sdpa(a: OpArgs) -> torch.Tensor:
    q, k, v = a["query"], a["key"], a["value"]
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    mask = a.get("attn_mask")
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    return torch.matmul(torch.softmax(scores, dim=-1), v)


# --------------------------------------------------------------------------- convolution


def _same_padding(size: int, kernel_size: int, stride: int, lower: bool) -> tuple[int, int]:
    """TF-style "same" padding as coremltools' ``aggregated_pad``: the odd pixel goes after
    (``same``) or before (``same_lower``)."""
    total = max(0, stride * math.ceil(size / stride) - size + kernel_size - stride)
    small, large = total // 2, total - total // 2
    return (large, small) if lower else (small, large)


def _spatial_pads(a: OpArgs, spatial: Sequence[int], kernel_sizes: Sequence[int], strides: Sequence[int], dilations: Sequence[int]) -> list[tuple[int, int]]:
    """(before, after) padding per spatial dimension from ``pad_type`` and ``pad``."""
    pad_type = a.str("pad_type", "valid").lower()
    effective = [(k - 1) * d + 1 for k, d in zip(kernel_sizes, dilations)]
    if pad_type == "valid":
        return [(0, 0)] * len(spatial)
    if pad_type == "custom":
        pad = a.ints("pad", [0] * 2 * len(spatial))
        return [(pad[2 * i], pad[2 * i + 1]) for i in range(len(spatial))]
    if pad_type in ("same", "same_lower"):
        return [_same_padding(n, k, s, pad_type == "same_lower") for n, k, s in zip(spatial, effective, strides)]
    raise Unsupported(f"pad_type {pad_type!r}")


def _torch_pad_arg(pads: Sequence[tuple[int, int]]) -> list[int]:
    """F.pad's argument (last dimension first) for (before, after) pairs of trailing dims."""
    flat: list[int] = []
    for before, after in reversed(pads):
        flat += [before, after]
    return flat


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


@kernel("conv")
def _conv(a: OpArgs) -> torch.Tensor:
    x, weight = a["x"], a["weight"]
    nd = x.dim() - 2
    if nd not in _CONV:
        raise Unsupported(f"conv with {nd} spatial dimensions")
    strides = a.ints("strides", [1] * nd)
    dilations = a.ints("dilations", [1] * nd)
    pads = _spatial_pads(a, x.shape[2:], weight.shape[2:], strides, dilations)
    if all(before == after for before, after in pads):
        padding = [before for before, _ in pads]
    else:
        x = F.pad(x, _torch_pad_arg(pads))
        padding = [0] * nd
    return _CONV[nd](x, weight, a.get("bias"), strides, padding, dilations, a.int("groups", 1))


@kernel("conv_transpose")
def _conv_transpose(a: OpArgs) -> torch.Tensor:
    x, weight = a["x"], a["weight"]
    nd = x.dim() - 2
    if nd not in _CONV_T:
        raise Unsupported(f"conv_transpose with {nd} spatial dimensions")
    strides = a.ints("strides", [1] * nd)
    dilations = a.ints("dilations", [1] * nd)
    groups = a.int("groups", 1)
    # the full ("valid") result, then cropped to what pad_type/pad/output_shape ask for
    full = _CONV_T[nd](x, weight, None, strides, 0, 0, groups, dilations)
    pad_type = a.str("pad_type", "valid").lower()
    sizes = list(full.shape[2:])
    if pad_type == "custom":
        pad = a.ints("pad", [0] * 2 * nd)
        starts = [pad[2 * i] for i in range(nd)]
        lengths = [sizes[i] - pad[2 * i] - pad[2 * i + 1] for i in range(nd)]
    elif pad_type == "same":
        lengths = [x.shape[2 + i] * strides[i] for i in range(nd)]
        starts = [(sizes[i] - lengths[i]) // 2 for i in range(nd)]
    elif pad_type == "valid":
        starts, lengths = [0] * nd, sizes
    else:
        raise Unsupported(f"conv_transpose pad_type {pad_type!r}")
    output_shape = a.ints("output_shape")
    if output_shape is not None:
        lengths = list(output_shape[2:])
    out = full
    for i in range(nd):
        start, length = starts[i], lengths[i]
        if start + length > sizes[i]:  # output_shape asks for more: zeros after, as PyTorch's output_padding
            extra = [0, 0] * (nd - 1 - i) + [0, start + length - sizes[i]]
            out = F.pad(out, extra)
        out = out.narrow(2 + i, start, length)
    bias = a.get("bias")
    return out if bias is None else out + _per_channel(bias, out)


# --------------------------------------------------------------------------- pooling


def _pool_geometry(a: OpArgs, x: torch.Tensor) -> tuple[list[int], list[int], list[tuple[int, int]], list[int]]:
    """Kernel sizes, strides, (before, after) pads and output sizes, as coremltools computes them."""
    nd = x.dim() - 2
    kernel_sizes = a.ints("kernel_sizes")
    strides = a.ints("strides", [1] * nd)
    spatial = list(x.shape[2:])
    pads = _spatial_pads(a, spatial, kernel_sizes, strides, [1] * nd)
    ceil_mode = a.bool("ceil_mode")
    outs = []
    for n, k, s, (before, after) in zip(spatial, kernel_sizes, strides, pads):
        total = before + after
        if ceil_mode:
            out = (n + total - k + s - 1) // s + 1
            if (out - 1) * s >= n + total / 2 and total > 0:
                out -= 1
        else:
            out = (n + total - k) // s + 1
        outs.append(out)
    return kernel_sizes, strides, pads, outs


def _pool_windows(x: torch.Tensor, kernel_sizes: Sequence[int], strides: Sequence[int], pads: Sequence[tuple[int, int]], outs: Sequence[int], fill: float) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """``x`` padded with ``fill`` so that exactly ``outs`` windows fit: declared padding, then
    as much extra as ceil mode's last window reaches past it."""
    extra = []
    for n, k, s, (before, after), out in zip(x.shape[2:], kernel_sizes, strides, pads, outs):
        reach = (out - 1) * s + k
        extra.append((before, max(after, reach - n - before)))
    return F.pad(x, _torch_pad_arg(extra), value=fill), extra


def _as_3d(t: torch.Tensor) -> torch.Tensor:
    while t.dim() < 5:
        t = t.unsqueeze(-1)
    return t


def _window_sum(t: torch.Tensor, kernel_sizes: Sequence[int], strides: Sequence[int], nd: int) -> torch.Tensor:
    ks = list(kernel_sizes) + [1] * (3 - nd)
    ss = list(strides) + [1] * (3 - nd)
    out = F.avg_pool3d(_as_3d(t), ks, ss, 0, divisor_override=1)
    return out.reshape(out.shape[: 2 + nd])


def _crop_outputs(t: torch.Tensor, outs: Sequence[int]) -> torch.Tensor:
    for i, out in enumerate(outs):
        t = t.narrow(2 + i, 0, out)
    return t


@kernel("max_pool")
def _max_pool(a: OpArgs) -> torch.Tensor:
    x = a["x"]
    nd = x.dim() - 2
    kernel_sizes, strides, pads, outs = _pool_geometry(a, x)
    padded, _ = _pool_windows(x, kernel_sizes, strides, pads, outs, float("-inf"))
    pool = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[nd]
    return _crop_outputs(pool(padded, kernel_sizes, strides), outs)


@kernel("avg_pool")
def _avg_pool(a: OpArgs) -> torch.Tensor:
    x = a["x"]
    nd = x.dim() - 2
    kernel_sizes, strides, pads, outs = _pool_geometry(a, x)
    padded, extra = _pool_windows(x, kernel_sizes, strides, pads, outs, 0.0)
    # the divisor counts the real elements, plus the declared padding unless excluded; never
    # the extra room a ceil-mode window reaches into (PyTorch's rule, which Core ML follows)
    ones = torch.ones((1, 1, *x.shape[2:]), dtype=x.dtype)
    counted = F.pad(ones, _torch_pad_arg(pads), value=0.0 if a.bool("exclude_padding_from_average") else 1.0)
    trailing = [(0, e_after - p_after) for (_, e_after), (_, p_after) in zip(extra, pads)]
    counted = F.pad(counted, _torch_pad_arg(trailing), value=0.0)
    total = _window_sum(padded, kernel_sizes, strides, nd)
    count = _window_sum(counted, kernel_sizes, strides, nd)
    return _crop_outputs(total / count, outs)


@kernel("l2_pool")
def _l2_pool(a: OpArgs) -> torch.Tensor:
    x = a["x"]
    nd = x.dim() - 2
    kernel_sizes, strides, pads, outs = _pool_geometry(a, x)
    padded, _ = _pool_windows(x * x, kernel_sizes, strides, pads, outs, 0.0)
    return _crop_outputs(torch.sqrt(_window_sum(padded, kernel_sizes, strides, nd)), outs)


# --------------------------------------------------------------------------- normalization


@kernel("batch_norm")
def _batch_norm(a: OpArgs) -> torch.Tensor:
    x = a["x"]
    mean, variance = _per_channel(a["mean"], x), _per_channel(a["variance"], x)
    y = (x - mean) / torch.sqrt(variance + a.float("epsilon", 1e-5))
    if a.has("gamma"):
        y = y * _per_channel(a["gamma"], x)
    if a.has("beta"):
        y = y + _per_channel(a["beta"], x)
    return y


def _normalize(x: torch.Tensor, dims: Sequence[int], epsilon: float) -> torch.Tensor:
    mean = x.mean(dim=list(dims), keepdim=True)
    centered = x - mean
    variance = (centered * centered).mean(dim=list(dims), keepdim=True)
    return centered / torch.sqrt(variance + epsilon)


@kernel("instance_norm")
def _instance_norm(a: OpArgs) -> torch.Tensor:
    x = a["x"]
    y = _normalize(x, range(2, x.dim()), a.float("epsilon", 1e-5))
    if a.has("gamma"):
        y = y * _per_channel(a["gamma"], x)
    if a.has("beta"):
        y = y + _per_channel(a["beta"], x)
    return y


@kernel("layer_norm")
def _layer_norm(a: OpArgs) -> torch.Tensor:
    x = a["x"]
    axes = a.ints("axes")
    axes = list(range(x.dim())) if axes is None else [_axis(d, x.dim()) for d in axes]
    y = _normalize(x, axes, a.float("epsilon", 1e-5))
    # gamma and beta hold the normalized dimensions in the input's order, whatever the order of ``axes``
    view = [x.shape[d] if d in axes else 1 for d in range(x.dim())]
    if a.has("gamma"):
        y = y * a["gamma"].reshape(view)
    if a.has("beta"):
        y = y + a["beta"].reshape(view)
    return y


@kernel("l2_norm")
def _l2_norm(a: OpArgs) -> torch.Tensor:
    x = a["x"]
    dims = list(range(max(0, x.dim() - 3), x.dim()))  # the last three dimensions; the rest is batch
    return x / torch.sqrt((x * x).sum(dim=dims, keepdim=True) + a.float("epsilon", 1e-6))


@kernel("local_response_norm")
def _local_response_norm(a: OpArgs) -> torch.Tensor:
    return F.local_response_norm(a["x"], a.int("size"), a.float("alpha", 1e-4), a.float("beta", 0.75), a.float("k", 1.0))


# --------------------------------------------------------------------------- reductions


def _reduce(fn: Callable[[torch.Tensor, list[int], bool], torch.Tensor]) -> Kernel:
    def run(a: OpArgs) -> torch.Tensor:
        x = a["x"]
        axes = a.ints("axes")
        dims = list(range(x.dim())) if axes is None else [_axis(d, x.dim()) for d in axes]
        return fn(x, dims, a.bool("keep_dims"))

    return run


KERNELS.update(
    {
        "reduce_sum": _reduce(lambda x, d, k: x.sum(dim=d, keepdim=k)),
        "reduce_mean": _reduce(lambda x, d, k: x.mean(dim=d, keepdim=k)),
        "reduce_prod": _reduce(lambda x, d, k: _prod(x, d, k)),
        "reduce_max": _reduce(lambda x, d, k: x.amax(dim=d, keepdim=k)),
        "reduce_min": _reduce(lambda x, d, k: x.amin(dim=d, keepdim=k)),
        "reduce_l1_norm": _reduce(lambda x, d, k: x.abs().sum(dim=d, keepdim=k)),
        "reduce_l2_norm": _reduce(lambda x, d, k: torch.sqrt((x * x).sum(dim=d, keepdim=k))),
        "reduce_sum_square": _reduce(lambda x, d, k: (x * x).sum(dim=d, keepdim=k)),
        "reduce_log_sum": _reduce(lambda x, d, k: torch.log(x.sum(dim=d, keepdim=k))),
        "reduce_log_sum_exp": _reduce(lambda x, d, k: torch.logsumexp(x, dim=d, keepdim=k)),
    }
)


def _prod(x: torch.Tensor, dims: Sequence[int], keep: bool) -> torch.Tensor:
    for d in sorted(dims, reverse=True):
        x = x.prod(dim=d, keepdim=keep)
    return x


@kernel("reduce_argmax", "reduce_argmin")
def _reduce_arg(a: OpArgs) -> torch.Tensor:
    x = a["x"]
    fn = torch.argmax if a.op.op_type == "reduce_argmax" else torch.argmin
    return fn(x, dim=a.int("axis", -1), keepdim=a.bool("keep_dims"))


# --------------------------------------------------------------------------- shape and layout


@kernel("reshape")
def _reshape(a: OpArgs) -> torch.Tensor:
    x = a["x"]
    shape = a.ints("shape")
    rank = x.dim()
    resolved = []
    for i, size in enumerate(shape):
        if size == 0:
            # iOS17: each 0 copies the input dimension it is aligned with from the right (1 past
            # the input's rank); iOS15 allowed 0 only with len(shape) == rank, which is the same
            j = rank - (len(shape) - i)
            size = x.shape[j] if j >= 0 else 1
        resolved.append(size)
    return x.reshape(resolved)


@kernel("reshape_like")
def _reshape_like(a: OpArgs) -> torch.Tensor:
    shape = a.output_shapes[0]
    if shape is None:
        raise Unsupported("reshape_like to a shape unknown before running")
    return a["x"].reshape(shape)


@kernel("transpose")
def _transpose(a: OpArgs) -> torch.Tensor:
    x = a["x"]
    return x.permute([_axis(p, x.dim()) for p in a.ints("perm")])


@kernel("expand_dims")
def _expand_dims(a: OpArgs) -> torch.Tensor:
    x = a["x"]
    axes = a.ints("axes")
    rank = x.dim() + len(axes)
    for axis in sorted(_axis(d, rank) for d in axes):
        x = x.unsqueeze(axis)
    return x


@kernel("squeeze")
def _squeeze(a: OpArgs) -> torch.Tensor:
    x = a["x"]
    axes = a.ints("axes")
    if axes is None:
        return x.squeeze() if x.dim() > 0 else x
    dims = sorted({_axis(d, x.dim()) for d in axes}, reverse=True)
    for d in dims:
        if x.shape[d] == 1:  # non-single dimensions are ignored, as PyTorch does
            x = x.squeeze(d)
    return x


@kernel("flatten2d")
def _flatten2d(a: OpArgs) -> torch.Tensor:
    x = a["x"]
    axis = _axis(a.int("axis", 1), x.dim())
    before = int(np.prod(x.shape[:axis], dtype=np.int64))
    return x.reshape(before, -1)


@kernel("concat")
def _concat(a: OpArgs) -> torch.Tensor:
    values = list(a["values"])
    axis = _axis(a.int("axis"), values[0].dim())
    if a.bool("interleave"):
        stacked = torch.stack(values, dim=axis + 1)
        shape = list(values[0].shape)
        shape[axis] *= len(values)
        return stacked.reshape(shape)
    return torch.cat(values, dim=axis)


@kernel("stack")
def _stack(a: OpArgs) -> torch.Tensor:
    values = list(a["values"])
    return torch.stack(values, dim=_axis(a.int("axis"), values[0].dim() + 1))


@kernel("split")
def _split(a: OpArgs) -> tuple[torch.Tensor, ...]:
    x = a["x"]
    axis = _axis(a.int("axis"), x.dim())
    sizes = a.ints("split_sizes")
    if sizes is None:
        parts = a.int("num_splits")
        sizes = [x.shape[axis] // parts] * parts
    return tuple(torch.split(x, sizes, dim=axis))


@kernel("tile")
def _tile(a: OpArgs) -> torch.Tensor:
    return a["x"].repeat(a.ints("reps"))


@kernel("reverse")
def _reverse(a: OpArgs) -> torch.Tensor:
    x = a["x"]
    axes = a.ints("axes")
    return torch.flip(x, dims=list(range(x.dim())) if axes is None else [_axis(d, x.dim()) for d in axes])


def _slice_dim(x: torch.Tensor, dim: int, begin: int | None, end: int | None, stride: int) -> torch.Tensor:
    start, stop, step = slice(begin, end, stride).indices(x.shape[dim])
    if step > 0:
        return x[(slice(None),) * dim + (slice(start, stop, step),)]
    # torch slicing has no negative steps
    return x.index_select(dim, torch.arange(start, stop, step, dtype=torch.int64))


@kernel("slice_by_index")
def _slice_by_index(a: OpArgs) -> torch.Tensor:
    x = a["x"]
    rank = x.dim()
    begin = a.ints("begin", [0] * rank)
    end = a.ints("end", list(x.shape))
    stride = a.ints("stride", [1] * rank)
    begin_mask = [bool(v) for v in a.ints("begin_mask", [0] * rank)]
    end_mask = [bool(v) for v in a.ints("end_mask", [0] * rank)]
    squeeze_mask = [bool(v) for v in a.ints("squeeze_mask", [0] * rank)]
    squeezed = []
    for dim in range(rank):
        if squeeze_mask[dim]:  # one element at ``begin``, then the dimension goes
            index = begin[dim] + x.shape[dim] if begin[dim] < 0 else begin[dim]
            x = x.narrow(dim, index, 1)
            squeezed.append(dim)
            continue
        x = _slice_dim(x, dim, None if begin_mask[dim] else begin[dim], None if end_mask[dim] else end[dim], stride[dim])
    for dim in reversed(squeezed):
        x = x.squeeze(dim)
    return x


@kernel("slice_by_size")
def _slice_by_size(a: OpArgs) -> torch.Tensor:
    x = a["x"]
    for dim, (start, size) in enumerate(zip(a.ints("begin"), a.ints("size"))):
        start = start + x.shape[dim] if start < 0 else start
        x = x.narrow(dim, start, x.shape[dim] - start if size == -1 else size)
    return x


@kernel("crop")
def _crop(a: OpArgs) -> torch.Tensor:
    x = a["x"]
    top, bottom = a.ints("crop_height", [0, 0])
    left, right = a.ints("crop_width", [0, 0])
    return x[..., top : x.shape[-2] - bottom, left : x.shape[-1] - right]


@kernel("pad")
def _pad(a: OpArgs) -> torch.Tensor:
    x = a["x"]
    pad = a.ints("pad")
    pairs = [(pad[2 * i], pad[2 * i + 1]) for i in range(len(pad) // 2)]
    mode = a.str("mode", "constant")
    if mode == "constant":
        return F.pad(x, _torch_pad_arg(pairs), value=a.float("constant_val", 0.0))
    first = x.dim() - len(pairs)
    for offset, (before, after) in enumerate(pairs):
        if before == 0 and after == 0:
            continue
        dim, n = first + offset, x.shape[first + offset]
        index = torch.arange(-before, n + after, dtype=torch.int64)
        if mode == "replicate":
            index = index.clamp(0, n - 1)
        elif mode == "reflect":
            index = index.abs()
            index = torch.where(index > n - 1, 2 * (n - 1) - index, index)
        else:
            raise Unsupported(f"pad mode {mode!r}")
        x = x.index_select(dim, index)
    return x


@kernel("depth_to_space")
def _depth_to_space(a: OpArgs) -> torch.Tensor:
    # TensorFlow's DCR order (the op comes from TF's depth_to_space); PyTorch's CRD order is
    # the separate pixel_shuffle op
    x = a["x"]
    b = a.int("block_size")
    n, c, h, w = x.shape
    y = x.reshape(n, b, b, c // (b * b), h, w).permute(0, 3, 4, 1, 5, 2)
    return y.reshape(n, c // (b * b), h * b, w * b)


@kernel("space_to_depth")
def _space_to_depth(a: OpArgs) -> torch.Tensor:
    x = a["x"]
    b = a.int("block_size")
    n, c, h, w = x.shape
    y = x.reshape(n, c, h // b, b, w // b, b).permute(0, 3, 5, 1, 2, 4)
    return y.reshape(n, c * b * b, h // b, w // b)


@kernel("pixel_shuffle")
def _pixel_shuffle(a: OpArgs) -> torch.Tensor:
    return F.pixel_shuffle(a["x"], a.int("upscale_factor"))


@kernel("pixel_unshuffle")
def _pixel_unshuffle(a: OpArgs) -> torch.Tensor:
    return F.pixel_unshuffle(a["x"], a.int("downscale_factor"))


# --------------------------------------------------------------------------- gather and friends


def _wrap_indices(indices: torch.Tensor, size: int) -> torch.Tensor:
    indices = _index(indices)
    return torch.where(indices < 0, indices + size, indices)


@kernel("gather")
def _gather(a: OpArgs) -> torch.Tensor:
    x = a["x"]
    axis = _axis(a.int("axis", 0), x.dim())
    batch_dims = a.int("batch_dims", 0)
    indices = _wrap_indices(a["indices"], x.shape[axis])
    if batch_dims == 0:
        picked = x.index_select(axis, indices.reshape(-1))
        return picked.reshape(*x.shape[:axis], *indices.shape, *x.shape[axis + 1 :])
    batch = x.shape[:batch_dims]
    flat_x = x.reshape(-1, *x.shape[batch_dims:])
    flat_i = indices.reshape(-1, *indices.shape[batch_dims:])
    parts = [
        p.index_select(axis - batch_dims, i.reshape(-1)).reshape(*p.shape[: axis - batch_dims], *i.shape, *p.shape[axis - batch_dims + 1 :])
        for p, i in zip(flat_x, flat_i)
    ]
    return torch.stack(parts).reshape(*batch, *parts[0].shape)


@kernel("gather_along_axis")
def _gather_along_axis(a: OpArgs) -> torch.Tensor:
    x = a["x"]
    axis = _axis(a.int("axis", 0), x.dim())
    return torch.gather(x, axis, _wrap_indices(a["indices"], x.shape[axis]))


@kernel("gather_nd")
def _gather_nd(a: OpArgs) -> torch.Tensor:
    x = a["x"]
    indices = _index(a["indices"])
    batch_dims = a.int("batch_dims", 0)
    depth = indices.shape[-1]

    def pick(data: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        columns = tuple(_wrap_indices(idx[..., k], data.shape[k]) for k in range(depth))
        return data[columns]

    if batch_dims == 0:
        return pick(x, indices)
    batch = x.shape[:batch_dims]
    flat_x = x.reshape(-1, *x.shape[batch_dims:])
    flat_i = indices.reshape(-1, *indices.shape[batch_dims:])
    parts = [pick(p, i) for p, i in zip(flat_x, flat_i)]
    return torch.stack(parts).reshape(*batch, *parts[0].shape)


@kernel("select")
def _select(a: OpArgs) -> torch.Tensor:
    return torch.where(a["cond"].to(torch.bool), a["a"], a["b"])


@kernel("fill")
def _fill(a: OpArgs) -> torch.Tensor:
    return torch.full(a.ints("shape"), a.float("value", 0.0))


@kernel("fill_like")
def _fill_like(a: OpArgs) -> torch.Tensor:
    return torch.full(tuple(a["ref_tensor"].shape), a.float("value", 0.0))


@kernel("shape")
def _shape(a: OpArgs) -> torch.Tensor:
    return torch.tensor(list(a["x"].shape), dtype=torch.int32)


@kernel("range_1d")
def _range_1d(a: OpArgs) -> torch.Tensor:
    values = [a[n] for n in ("start", "end", "step")]
    if all(not torch.is_floating_point(v) for v in values):
        return torch.arange(*(int(v) for v in values), dtype=torch.int32)
    return torch.arange(*(float(v) for v in values), dtype=torch.float32)


@kernel("band_part")
def _band_part(a: OpArgs) -> torch.Tensor:
    x = a["x"]
    lower, upper = a.int("lower", -1), a.int("upper", -1)
    m, n = x.shape[-2:]
    rows = torch.arange(m).reshape(-1, 1)
    cols = torch.arange(n).reshape(1, -1)
    keep = ((lower < 0) | (rows - cols <= lower)) & ((upper < 0) | (cols - rows <= upper))
    return x * keep.to(x.dtype)


@kernel("cumsum")
def _cumsum(a: OpArgs) -> torch.Tensor:
    x = a["x"]
    axis = _axis(a.int("axis", 0), x.dim())
    if a.bool("reverse"):
        x = torch.flip(x, [axis])
    y = torch.cumsum(x, dim=axis)
    if a.bool("exclusive"):
        y = y - x
    return torch.flip(y, [axis]) if a.bool("reverse") else y


@kernel("topk")
def _topk(a: OpArgs) -> Any:
    x = a["x"]
    axis = _axis(a.int("axis", -1), x.dim())
    k = a.int("k", 1)
    k = x.shape[axis] if k == -1 else k
    values, indices = torch.topk(x, k, dim=axis, largest=not a.bool("ascending"), sorted=True)
    if len(a.op.outputs) == 1:
        return values
    return values, indices


@kernel("argsort")
def _argsort(a: OpArgs) -> torch.Tensor:
    x = a["x"]
    return torch.argsort(x, dim=a.int("axis", -1), descending=not a.bool("ascending"), stable=True)


@kernel("one_hot")
def _one_hot(a: OpArgs) -> torch.Tensor:
    indices = _index(a["indices"])
    depth = a.int("one_hot_vector_size")
    hot = F.one_hot(indices.clamp(0, depth - 1), depth) * (indices >= 0).unsqueeze(-1)
    on, off = a.float("on_value", 1.0), a.float("off_value", 0.0)
    out = hot.to(torch.float32) * (on - off) + off
    axis = a.int("axis", -1)
    return out if axis == -1 else torch.movedim(out, -1, _axis(axis, out.dim()))


# --------------------------------------------------------------------------- resizing


def _sample_linear(x: torch.Tensor, dim: int, grid: torch.Tensor) -> torch.Tensor:
    """Linear interpolation of ``x`` along ``dim`` at fractional source positions ``grid``."""
    size = x.shape[dim]
    grid = grid.clamp(0, size - 1)
    low = torch.floor(grid).to(torch.int64)
    high = torch.clamp(low + 1, max=size - 1)
    frac = (grid - low.to(grid.dtype)).reshape([-1 if d == dim else 1 for d in range(x.dim())])
    return x.index_select(dim, low) * (1 - frac) + x.index_select(dim, high) * frac


def _grid(mode: str, size_in: int, size_out: int) -> torch.Tensor:
    """Source positions of each output pixel, as coremltools documents each sampling mode."""
    i = torch.arange(size_out, dtype=torch.float64)
    if mode in ("STRICT_ALIGN_CORNERS", "ALIGN_CORNERS"):
        if size_out == 1:
            return torch.full((1,), (size_in - 1) / 2 if mode == "ALIGN_CORNERS" else 0.0, dtype=torch.float64)
        return i * (size_in - 1) / (size_out - 1)
    if mode == "DEFAULT":
        return i * size_in / size_out
    if mode == "OFFSET_CORNERS":
        delta = max(1, size_in - 1) / size_out
        return 0.5 * delta + i * delta
    if mode == "UNALIGN_CORNERS":
        spacing = size_in / size_out
        return i * spacing + 0.5 * spacing - 0.5
    raise Unsupported(f"sampling_mode {mode!r}")


def _resize_linear(x: torch.Tensor, sizes: Sequence[int], mode: str) -> torch.Tensor:
    first = x.dim() - len(sizes)
    for offset, size_out in enumerate(sizes):
        dim = first + offset
        x = _sample_linear(x, dim, _grid(mode, x.shape[dim], size_out).to(torch.float32))
    return x


def _resize_nearest(x: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    first = x.dim() - len(sizes)
    for offset, size_out in enumerate(sizes):
        dim = first + offset
        size_in = x.shape[dim]
        index = torch.clamp(torch.floor(torch.arange(size_out, dtype=torch.float64) * size_in / size_out).to(torch.int64), max=size_in - 1)
        x = x.index_select(dim, index)
    return x


@kernel("upsample_nearest_neighbor")
def _upsample_nearest(a: OpArgs) -> torch.Tensor:
    x = a["x"]
    out = []
    for name, size in (("scale_factor_height", x.shape[-2]), ("scale_factor_width", x.shape[-1])):
        scale = a.float(name, 1.0)
        out.append((size, int(math.floor(size * scale)), scale))
    for offset, (size_in, size_out, scale) in enumerate(out):
        dim = x.dim() - 2 + offset
        # PyTorch's nearest with a given scale factor: source = floor(destination / scale)
        index = torch.clamp(torch.floor(torch.arange(size_out, dtype=torch.float64) / scale).to(torch.int64), max=size_in - 1)
        x = x.index_select(dim, index)
    return x


@kernel("upsample_bilinear")
def _upsample_bilinear(a: OpArgs) -> torch.Tensor:
    x = a["x"]
    align = a.bool("align_corners", True)
    half_pixel = a.bool("half_pixel_centers", not align)
    sizes = [int(math.floor(x.shape[-2] * a.float("scale_factor_height", 1.0))), int(math.floor(x.shape[-1] * a.float("scale_factor_width", 1.0)))]
    if align:
        mode = "STRICT_ALIGN_CORNERS"
    else:
        mode = "UNALIGN_CORNERS" if half_pixel else "DEFAULT"
    return _resize_linear(x, sizes, mode)


@kernel("resize_bilinear")
def _resize_bilinear(a: OpArgs) -> torch.Tensor:
    sizes = [a.int("target_size_height", 1), a.int("target_size_width", 1)]
    return _resize_linear(a["x"], sizes, a.str("sampling_mode", "DEFAULT"))


@kernel("resize_nearest_neighbor")
def _resize_nearest_neighbor(a: OpArgs) -> torch.Tensor:
    return _resize_nearest(a["x"], [a.int("target_size_height"), a.int("target_size_width")])


@kernel("resize")
def _resize(a: OpArgs) -> torch.Tensor:
    x = a["x"]
    shape = a.ints("shape")
    dims = a.int("resized_dims")
    first = x.dim() - dims
    sizes = []
    for offset in range(dims):
        size = shape[len(shape) - dims + offset]
        sizes.append(x.shape[first + offset] if size == 0 else size)
    mode = a.str("interpolation_mode", "LINEAR")
    sampling = a.str("sampling_mode", "DEFAULT")
    if mode == "LINEAR":
        return _resize_linear(x, sizes, sampling)
    if mode == "NEAREST_NEIGHBOR" and sampling == "DEFAULT":
        return _resize_nearest(x, sizes)
    raise Unsupported(f"resize with interpolation_mode {mode} and sampling_mode {sampling}")


# --------------------------------------------------------------------------- recurrent


_RNN_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "relu": torch.relu,
    "linear": lambda t: t,
}


def _rnn_activation(a: OpArgs, name: str, default: str) -> Callable[[torch.Tensor], torch.Tensor]:
    value = a.str(name, default).lower()
    if value not in _RNN_ACTIVATIONS:
        raise Unsupported(f"{a.op.op_type} with {name} {value}")
    return _RNN_ACTIVATIONS[value]


def _lstm_direction(x: torch.Tensor, h: torch.Tensor, c: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor, bias: torch.Tensor | None, reverse: bool, acts: tuple) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    recurrent, cell, output = acts
    hidden = h.shape[-1]
    # the input projection of every step at once; the recurrence must go step by step
    projected = torch.matmul(x, w_ih.T)
    if bias is not None:
        projected = projected + bias
    steps = range(x.shape[0] - 1, -1, -1) if reverse else range(x.shape[0])
    outputs = [None] * x.shape[0]
    for t in steps:
        gates = projected[t] + torch.matmul(h, w_hh.T)
        # MIL's gate order: input, forget, output, cell (PyTorch's is input, forget, cell, output)
        i, f, o, z = (gates[:, k * hidden : (k + 1) * hidden] for k in range(4))
        c = recurrent(f) * c + recurrent(i) * cell(z)
        h = recurrent(o) * output(c)
        outputs[t] = h
    return torch.stack(outputs), h, c


@kernel("lstm")
def _lstm(a: OpArgs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if a.has("clip"):
        raise Unsupported("lstm with clip")
    for name in ("peephole", "peephole_back"):
        if a.has(name) and bool(torch.any(a[name] != 0)):
            raise Unsupported("lstm with peephole connections")
    acts = (
        _rnn_activation(a, "recurrent_activation", "sigmoid"),
        _rnn_activation(a, "cell_activation", "tanh"),
        _rnn_activation(a, "activation", "tanh"),
    )
    x = a["x"]
    direction = a.str("direction", "forward")
    h0, c0 = a["initial_h"], a["initial_c"]
    if direction in ("forward", "reverse"):
        ys, h, c = _lstm_direction(x, h0, c0, a["weight_ih"], a["weight_hh"], a.get("bias"), direction == "reverse", acts)
        # a reverse LSTM's final state is the one after the first time step
    elif direction == "bidirectional":
        hidden = h0.shape[-1] // 2
        yf, hf, cf = _lstm_direction(x, h0[:, :hidden], c0[:, :hidden], a["weight_ih"], a["weight_hh"], a.get("bias"), False, acts)
        yb, hb, cb = _lstm_direction(x, h0[:, hidden:], c0[:, hidden:], a["weight_ih_back"], a["weight_hh_back"], a.get("bias_back"), True, acts)
        ys, h, c = torch.cat([yf, yb], dim=-1), torch.cat([hf, hb], dim=-1), torch.cat([cf, cb], dim=-1)
    else:
        raise Unsupported(f"lstm direction {direction!r}")
    if not a.bool("output_sequence"):
        ys = h.unsqueeze(0)
    return ys, h, c


# --------------------------------------------------------------------------- quantization


def _along_axis(param: torch.Tensor, rank: int, axis: int) -> torch.Tensor:
    """A scalar or [C] parameter shaped to broadcast along ``axis`` of a rank-``rank`` tensor."""
    if param.dim() == 0 or param.numel() == 1:
        return param.reshape(())
    return param.reshape([-1 if d == axis else 1 for d in range(rank)])


@kernel("dequantize")
def _dequantize(a: OpArgs) -> torch.Tensor:
    x = a["input"]
    axis = _axis(a.int("axis", 0), x.dim()) if a.has("axis") else 0
    scale = _along_axis(a["scale"], x.dim(), axis)
    zero = _along_axis(a["zero_point"], x.dim(), axis).to(torch.float32) if a.has("zero_point") else 0.0
    return (x.to(torch.float32) - zero) * scale


@kernel("quantize")
def _quantize(a: OpArgs) -> torch.Tensor:
    x = a["input"]
    axis = _axis(a.int("axis", 0), x.dim()) if a.has("axis") else 0
    scale = _along_axis(a["scale"], x.dim(), axis)
    zero = _along_axis(a["zero_point"], x.dim(), axis).to(torch.float32) if a.has("zero_point") else 0.0
    low, high = (-128, 127) if a.str("output_dtype", "int8") == "int8" else (0, 255)
    return torch.clamp(torch.round(x / scale) + zero, low, high)


# --------------------------------------------------------------------------- compressed weights
#
# constexpr_* ops hold compressed constant weights; Core ML decompresses them when it loads
# the model. The interpreter does the same, once, before the first sample.


def _unpack_bits(packed: torch.Tensor, nbits: int, count: int) -> torch.Tensor:
    """iOS16 packing: ``nbits``-bit fields filled from each byte's least significant bit up,
    a field split across bytes continuing in the next byte's low bits."""
    bits = np.unpackbits(packed.numpy().astype(np.uint8), bitorder="little")[: nbits * count]
    weights = (1 << np.arange(nbits)).astype(np.int64)
    return torch.from_numpy(bits.reshape(count, nbits).astype(np.int64) @ weights)


@kernel("constexpr_affine_dequantize")
def _constexpr_affine_dequantize(a: OpArgs) -> torch.Tensor:
    data = a["quantized_data"]
    axis = _axis(a.int("axis", 0), data.dim())
    scale = _along_axis(a["scale"], data.dim(), axis)
    zero = _along_axis(a["zero_point"], data.dim(), axis).to(torch.float32)
    return (data.to(torch.float32) - zero) * scale


@kernel("constexpr_cast")
def _constexpr_cast(a: OpArgs) -> torch.Tensor:
    return a["source_val"]


def _blockwise(param: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Repeat a per-block parameter (same rank as the data, each dimension dividing it) to ``shape``."""
    for dim, (size, blocks) in enumerate(zip(shape, param.shape)):
        if blocks != size:
            param = param.repeat_interleave(size // blocks, dim=dim)
    return param


def _shift_scale(data: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor | None) -> torch.Tensor:
    values = data.to(torch.float32)
    if offset is not None:
        values = values - _blockwise(offset.to(torch.float32), data.shape)
    return values * _blockwise(scale, data.shape)


@kernel("constexpr_blockwise_shift_scale")
def _constexpr_blockwise_shift_scale(a: OpArgs) -> torch.Tensor:
    return _shift_scale(a["data"], a["scale"], a.get("offset"))


def _lut_lookup(indices: torch.Tensor, lut: torch.Tensor, vector_axis: int | None) -> torch.Tensor:
    """iOS18 palettes: ``lut`` is [*blocks, palette, vector]; each block of ``indices`` (same
    rank, each dimension dividing it) reads its own palette; vectors unroll along ``vector_axis``."""
    rank = indices.dim()
    palette, vector = lut.shape[-2], lut.shape[-1]
    blocks = lut.shape[:rank]
    # for every element, the flat number of the palette its block uses
    block_id = torch.zeros(indices.shape, dtype=torch.int64)
    for dim in range(rank):
        position = torch.arange(indices.shape[dim]) // (indices.shape[dim] // blocks[dim])
        block_id = block_id * blocks[dim] + position.reshape([-1 if d == dim else 1 for d in range(rank)])
    flat = lut.reshape(-1, palette, vector)
    values = flat[block_id, _index(indices)]  # [*indices.shape, vector]
    if vector == 1:
        return values.squeeze(-1)
    axis = _axis(vector_axis if vector_axis is not None else 0, rank)
    values = torch.movedim(values, -1, axis + 1)  # vector right after the axis it unrolls along
    shape = list(indices.shape)
    shape[axis] *= vector
    return values.reshape(shape)


@kernel("constexpr_lut_to_dense")
def _constexpr_lut_to_dense(a: OpArgs) -> torch.Tensor:
    lut = a["lut"]
    if a.has("shape"):  # iOS16: packed indices, one palette, an explicit shape
        shape = a.ints("shape")
        count = int(np.prod(shape, dtype=np.int64))
        nbits = int(round(math.log2(lut.shape[0])))
        return lut[_unpack_bits(a["indices"], nbits, count)].reshape(shape)
    vector_axis = a.int("vector_axis") if a.has("vector_axis") else None
    return _lut_lookup(a["indices"], lut, vector_axis)


def _scatter_nonzero(nonzero: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    dense = torch.zeros(mask.shape, dtype=nonzero.dtype)
    dense[mask.to(torch.bool)] = nonzero
    return dense


@kernel("constexpr_sparse_to_dense")
def _constexpr_sparse_to_dense(a: OpArgs) -> torch.Tensor:
    nonzero = a["nonzero_data"]
    if a.has("shape"):  # iOS16: a packed bit mask and an explicit shape
        shape = a.ints("shape")
        count = int(np.prod(shape, dtype=np.int64))
        mask = _unpack_bits(a["mask"], 1, count).reshape(shape)
        return _scatter_nonzero(nonzero, mask)
    return _scatter_nonzero(nonzero, a["mask"])


@kernel("constexpr_lut_to_sparse")
def _constexpr_lut_to_sparse(a: OpArgs) -> tuple[torch.Tensor, torch.Tensor]:
    mask = a["indices_mask"].to(torch.bool)
    vector_axis = a.int("vector_axis") if a.has("vector_axis") else None
    indices = _scatter_nonzero(_index(a["indices_nonzero_data"]), mask)
    dense = _lut_lookup(indices, a["lut"], vector_axis)
    vector = a["lut"].shape[-1]
    if vector > 1:
        mask = mask.repeat_interleave(vector, dim=_axis(vector_axis or 0, mask.dim()))
    return mask, dense[mask]


@kernel("constexpr_sparse_blockwise_shift_scale")
def _constexpr_sparse_blockwise_shift_scale(a: OpArgs) -> tuple[torch.Tensor, torch.Tensor]:
    mask = a["data_mask"].to(torch.bool)
    dense = _scatter_nonzero(a["nonzero_data"].to(torch.float32), mask)
    offset = a.get("offset")
    if offset is not None:
        # the offset applies to stored values only: shift them on the dense layout, then re-mask
        dense = torch.where(mask, dense - _blockwise(offset.to(torch.float32), mask.shape), dense)
    values = dense * _blockwise(a["scale"], mask.shape)
    return mask, values[mask]
