"""An ONNX reference as a torch module, so that edgex's simulated references serve it too.

A reference given as ``model.onnx`` has no torch model, and the simulations
(:mod:`edgex.core.quant_reference`: int8, dynamic-int8, fp16) quantize a ``torch.export`` graph. This
module writes the ONNX graph out as a torch module, node by node, with the torch op that computes
what the ONNX op does (Conv as ``conv2d``, Gemm as ``linear``, BatchNormalization as
``batch_norm``...), its initializers as the module's parameters. The simulation then sees the ops
it knows -- a weight per output channel, a BatchNorm to fold, a ReLU to fuse -- and quantizes the
graph as it quantizes a torch model; there is one simulation, not one per model format.

Two guards keep it honest:

- an op this module does not write out raises :class:`~edgex.core.quant_reference.CannotSimulate`
  naming every such op type, and the row says the verdict falls back to output steps;
- the translation must reproduce onnxruntime's own outputs on the parity inputs (within
  :data:`TRANSLATION_TOLERANCE` of each output's peak, :func:`check_translation`) before any
  simulation is built on it: the simulation's error is measured against onnxruntime's outputs,
  and a translation that computed something else would widen the bound with its own mistake.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from edgex.core.quant_reference import CannotSimulate

#: the translation may differ from onnxruntime by at most this fraction of an output's peak
#: (fp32 reordering between two float engines: measured 1e-7 to 1e-6 on the test models)
TRANSLATION_TOLERANCE = 1e-4


def _attributes(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _ints(value: Any) -> list[int]:
    return [int(v) for v in np.asarray(value).reshape(-1)]


def _conv(torch: Any, F: Any, x: Any, w: Any, b: Any, a: dict[str, Any]) -> Any:
    if _text(a.get("auto_pad", "NOTSET")) != "NOTSET":
        raise CannotSimulate(f"Conv with auto_pad {_text(a['auto_pad'])}")
    dims = w.ndim - 2
    pads = list(a.get("pads", [0] * 2 * dims))
    begin, end = pads[:dims], pads[dims:]
    if begin != end:  # asymmetric padding: pad first, as the ONNX op does
        x = F.pad(x, [p for pair in zip(reversed(begin), reversed(end)) for p in pair])
        begin = [0] * dims
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[dims]
    return conv(x, w, b, list(a.get("strides", [1] * dims)), begin, list(a.get("dilations", [1] * dims)), int(a.get("group", 1)))


def _pool(F: Any, x: Any, a: dict[str, Any], kind: str) -> Any:
    kernel = list(a["kernel_shape"])
    dims = len(kernel)
    pads = list(a.get("pads", [0] * 2 * dims))
    if pads[:dims] != pads[dims:] or _text(a.get("auto_pad", "NOTSET")) != "NOTSET":
        raise CannotSimulate(f"{kind} with asymmetric or automatic padding")
    strides, ceil = list(a.get("strides", [1] * dims)), bool(a.get("ceil_mode", 0))
    if kind == "MaxPool":
        pool = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[dims]
        return pool(x, kernel, strides, pads[:dims], list(a.get("dilations", [1] * dims)), ceil)
    pool = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[dims]
    return pool(x, kernel, strides, pads[:dims], ceil, bool(a.get("count_include_pad", 0)))


def _reshape(x: Any, shape: Sequence[int], allowzero: int) -> Any:
    shape = [x.shape[i] if (s == 0 and not allowzero) else s for i, s in enumerate(shape)]
    return x.reshape(shape)


def _ops(torch: Any) -> dict[str, Callable[..., Any]]:
    """ONNX op type -> f(inputs, attributes, constant) computing it with torch ops. ``constant(i)``
    is input i as numpy when it is an initializer or a Constant, else None."""
    F = torch.nn.functional

    def unary(fn: Callable[[Any], Any]) -> Callable[..., Any]:
        return lambda i, a, c: fn(i[0])

    def gemm(i: list[Any], a: dict[str, Any], c: Any) -> Any:
        x, w = i[0], i[1]
        if a.get("transA", 0):
            x = x.t()
        w = w if a.get("transB", 0) else w.t()  # linear's weight is (out, in)
        b = i[2] if len(i) > 2 and i[2] is not None else None
        alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
        return F.linear(x * alpha if alpha != 1.0 else x, w, None if b is None else (b * beta if beta != 1.0 else b))

    def matmul(i: list[Any], a: dict[str, Any], c: Any) -> Any:
        if c(1) is not None and np.ndim(c(1)) == 2:  # x @ W with a constant W: a linear layer
            return F.linear(i[0], i[1].t())
        return torch.matmul(i[0], i[1])

    def clip(i: list[Any], a: dict[str, Any], c: Any) -> Any:
        low, high = a.get("min", c(1)), a.get("max", c(2))  # attributes before opset 11, constant inputs after
        return torch.clamp(i[0], None if low is None else float(np.asarray(low)), None if high is None else float(np.asarray(high)))

    def reduce_mean(i: list[Any], a: dict[str, Any], c: Any) -> Any:
        axes = a.get("axes", c(1) if len(i) > 1 else None)
        keep = bool(a.get("keepdims", 1))
        if axes is None:
            return i[0].mean()
        axes = [int(v) % i[0].ndim for v in np.asarray(axes).reshape(-1)]
        if i[0].ndim == 4 and sorted(axes) == [2, 3]:  # a global average pool, as torch models write it
            pooled = F.adaptive_avg_pool2d(i[0], 1)
            return pooled if keep else pooled.flatten(2).squeeze(-1)
        return i[0].mean(dim=axes, keepdim=keep)

    def flatten(i: list[Any], a: dict[str, Any], c: Any) -> Any:
        axis = int(a.get("axis", 1)) % max(i[0].ndim, 1)
        return i[0].reshape(int(np.prod(i[0].shape[:axis])), -1)

    def squeeze(i: list[Any], a: dict[str, Any], c: Any) -> Any:
        axes = a.get("axes", c(1) if len(i) > 1 else None)
        if axes is None:
            return i[0].squeeze()
        for axis in sorted((int(v) % i[0].ndim for v in np.asarray(axes).reshape(-1)), reverse=True):
            i[0] = i[0].squeeze(axis)
        return i[0]

    def unsqueeze(i: list[Any], a: dict[str, Any], c: Any) -> Any:
        axes = a.get("axes", c(1) if len(i) > 1 else None)
        x = i[0]
        rank = x.ndim + len(np.asarray(axes).reshape(-1))
        for axis in sorted(int(v) % rank for v in np.asarray(axes).reshape(-1)):
            x = x.unsqueeze(axis)
        return x

    def layer_norm(i: list[Any], a: dict[str, Any], c: Any) -> Any:
        axis = int(a.get("axis", -1)) % i[0].ndim
        shape = list(i[0].shape[axis:])
        return F.layer_norm(i[0], shape, i[1], i[2] if len(i) > 2 else None, float(a.get("epsilon", 1e-5)))

    def gather(i: list[Any], a: dict[str, Any], c: Any) -> Any:
        indices = c(1)
        if indices is None:
            raise CannotSimulate("Gather with computed indices")
        axis = int(a.get("axis", 0)) % i[0].ndim
        index = torch.as_tensor(np.asarray(indices) % i[0].shape[axis], dtype=torch.long)
        picked = torch.index_select(i[0], axis, index.reshape(-1))
        return picked.reshape(*i[0].shape[:axis], *index.shape, *i[0].shape[axis + 1 :])

    def slice_(i: list[Any], a: dict[str, Any], c: Any) -> Any:
        starts, ends = _ints(c(1)), _ints(c(2))
        axes = _ints(c(3)) if len(i) > 3 and i[3] is not None else list(range(len(starts)))
        steps = _ints(c(4)) if len(i) > 4 and i[4] is not None else [1] * len(starts)
        index = [slice(None)] * i[0].ndim
        for start, end, axis, step in zip(starts, ends, axes, steps):
            if step <= 0:
                raise CannotSimulate("Slice with a negative step")
            size = i[0].shape[axis]
            index[axis % i[0].ndim] = slice(max(min(start, size), -size), max(min(end, size), -size - 1), step)
        return i[0][tuple(index)]

    return {
        "Identity": unary(lambda x: x), "Dropout": unary(lambda x: x),
        "Relu": unary(F.relu), "Sigmoid": unary(torch.sigmoid), "Tanh": unary(torch.tanh),
        "Erf": unary(torch.erf), "Sqrt": unary(torch.sqrt), "Exp": unary(torch.exp), "Log": unary(torch.log),
        "Neg": unary(torch.neg), "Abs": unary(torch.abs), "Reciprocal": unary(torch.reciprocal),
        "HardSwish": unary(F.hardswish),
        "HardSigmoid": lambda i, a, c: torch.clamp(i[0] * float(a.get("alpha", 0.2)) + float(a.get("beta", 0.5)), 0.0, 1.0),
        "LeakyRelu": lambda i, a, c: F.leaky_relu(i[0], float(a.get("alpha", 0.01))),
        "Gelu": lambda i, a, c: F.gelu(i[0], approximate=_text(a.get("approximate", "none"))),
        "Softmax": lambda i, a, c: torch.softmax(i[0], int(a.get("axis", -1))),
        "LogSoftmax": lambda i, a, c: torch.log_softmax(i[0], int(a.get("axis", -1))),
        "Add": lambda i, a, c: i[0] + i[1], "Sub": lambda i, a, c: i[0] - i[1],
        "Mul": lambda i, a, c: i[0] * i[1], "Div": lambda i, a, c: i[0] / i[1],
        "Pow": lambda i, a, c: torch.pow(i[0], i[1]),
        "Clip": clip,
        "Conv": lambda i, a, c: _conv(torch, F, i[0], i[1], i[2] if len(i) > 2 else None, a),
        "Gemm": gemm, "MatMul": matmul,
        "BatchNormalization": lambda i, a, c: F.batch_norm(i[0], i[3], i[4], i[1], i[2], False, 0.0, float(a.get("epsilon", 1e-5))),
        "LayerNormalization": layer_norm,
        "MaxPool": lambda i, a, c: _pool(F, i[0], a, "MaxPool"),
        "AveragePool": lambda i, a, c: _pool(F, i[0], a, "AveragePool"),
        "GlobalAveragePool": lambda i, a, c: F.adaptive_avg_pool2d(i[0], 1) if i[0].ndim == 4 else i[0].mean(dim=list(range(2, i[0].ndim)), keepdim=True),
        "ReduceMean": reduce_mean,
        "Flatten": flatten,
        "Reshape": lambda i, a, c: _reshape(i[0], _ints(c(1)), int(a.get("allowzero", 0))),
        "Transpose": lambda i, a, c: i[0].permute(*(a["perm"] if "perm" in a else reversed(range(i[0].ndim)))),
        "Concat": lambda i, a, c: torch.cat(list(i), int(a["axis"])),
        "Squeeze": squeeze, "Unsqueeze": unsqueeze,
        "Gather": gather, "Slice": slice_,
    }


#: ONNX op types whose inputs after the first must be constants (read as numpy, not computed)
_CONSTANT_INPUTS = {"Reshape": (1,), "Slice": (1, 2, 3, 4), "Gather": (1,), "Squeeze": (1,), "Unsqueeze": (1,), "ReduceMean": (1,), "Clip": (1, 2)}


def onnx_module(path: Path | str) -> Any:
    """The ONNX model at ``path`` as a torch ``nn.Module`` in eval mode (float32 graphs, one
    graph without subgraphs). Raises :class:`CannotSimulate` naming the op types it cannot write out."""
    import onnx
    import torch
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    graph = proto.graph
    ops = _ops(torch)
    missing = sorted({n.op_type for n in graph.node if n.op_type not in ops and n.op_type not in ("Constant", "Cast")} | {n.op_type for n in graph.node if n.domain not in ("", "ai.onnx")})
    if missing:
        raise CannotSimulate(f"its ONNX graph holds op types edgex does not write out for a simulation: {', '.join(missing)}")
    constants = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            a = _attributes(node)
            if "value" not in a:
                raise CannotSimulate("a Constant without a tensor value")
            constants[node.output[0]] = numpy_helper.to_array(a["value"])
    if any(np.issubdtype(v.dtype, np.floating) and v.dtype != np.float32 for v in constants.values()):
        raise CannotSimulate("its ONNX graph holds non-float32 constants (an fp16 or quantized graph is not a reference to simulate)")
    inputs = [i.name for i in graph.input if i.name not in constants]
    outputs = [o.name for o in graph.output]
    nodes = [(n.op_type, list(n.input), list(n.output), _attributes(n)) for n in graph.node if n.op_type != "Constant"]

    class OnnxModule(torch.nn.Module):
        """The ONNX graph, op by op; float initializers are parameters (the weights a simulation
        quantizes), the rest constants."""

        def __init__(self) -> None:
            super().__init__()
            self.names: dict[str, str] = {}
            for index, (name, value) in enumerate(constants.items()):
                if np.issubdtype(value.dtype, np.floating):
                    attribute = f"c{index}"
                    self.register_parameter(attribute, torch.nn.Parameter(torch.from_numpy(value.copy()), requires_grad=False))
                    self.names[name] = attribute

        def forward(self, *args: Any) -> Any:
            env: dict[str, Any] = dict(zip(inputs, args))
            for name, attribute in self.names.items():
                env[name] = getattr(self, attribute)
            for op_type, node_inputs, node_outputs, a in nodes:

                def constant(k: int, node_inputs: list[str] = node_inputs) -> Any:
                    return constants.get(node_inputs[k]) if k < len(node_inputs) and node_inputs[k] else None

                if op_type == "Cast":
                    to = onnx.helper.tensor_dtype_to_np_dtype(int(a["to"]))
                    value = env[node_inputs[0]] if node_inputs[0] in env else torch.from_numpy(np.asarray(constants[node_inputs[0]]))
                    env[node_outputs[0]] = value.to(getattr(torch, np.dtype(to).name))
                    continue
                skip = _CONSTANT_INPUTS.get(op_type, ())
                args_in = [None if not n or k in skip else (env[n] if n in env else torch.from_numpy(np.asarray(constants[n]))) for k, n in enumerate(node_inputs)]
                result = ops[op_type](args_in, a, constant)
                env[node_outputs[0]] = result
            found = [env[o] for o in outputs]
            return found[0] if len(found) == 1 else tuple(found)

    return OnnxModule().eval()


def check_translation(module: Any, reference: Sequence[Sequence[np.ndarray]], batches: Sequence[tuple[np.ndarray, ...]]) -> None:
    """Raise :class:`CannotSimulate` unless ``module`` reproduces ``reference`` (onnxruntime's
    outputs on ``batches``) within :data:`TRANSLATION_TOLERANCE` of each output's peak."""
    from edgex.core.parity import torch_outputs

    ours = torch_outputs(module, batches)
    for index in range(len(reference[0])):
        want = np.concatenate([np.asarray(s[index], dtype=np.float64).ravel() for s in reference])
        got = np.concatenate([np.asarray(s[index], dtype=np.float64).ravel() for s in ours])
        peak = float(np.max(np.abs(want), initial=0.0))
        worst = float(np.max(np.abs(got - want), initial=0.0)) if got.shape == want.shape else float("inf")
        if not worst <= TRANSLATION_TOLERANCE * max(peak, 1e-30):
            raise CannotSimulate(f"its ONNX graph written out as torch ops differs from onnxruntime on output {index} by {worst:.3g} (peak {peak:.3g})")
