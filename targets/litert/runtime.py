"""LiteRT's interpreter, shared by the ``tflite``, ``coral`` and ``mcu`` targets: :class:`LiteRTRuntime`
runs a ``.tflite`` for parity, :class:`LiteRTTracer` reads every tensor for ``edgex explain``, and
:func:`tensor_modules` reads the torch modules a tensor name records."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgex.plugins import (
    one_line,
    package_version,
    ArtifactIO,
    ArtifactTrace,
    QuantParams,
    TargetError,
    TracedTensor,
)


def quant_params(tensor: Any) -> QuantParams | None:
    """A LiteRT tensor's int8/int16 scale and zero point (its first channel's), or None for a float tensor."""
    if tensor.dtype in ("int8", "uint8", "int16") and tensor.scales:
        return QuantParams(float(tensor.scales[0]), int(tensor.zero_points[0]) if tensor.zero_points else 0, tensor.dtype)
    return None


# --------------------------------------------------------------------------- running


def _interpreter_module() -> tuple[Any, str]:
    """The LiteRT Interpreter class and a name for it: ai-edge-litert, else tflite-runtime, else tf.lite."""
    try:
        from ai_edge_litert import interpreter as litert

        return litert, f"LiteRT {package_version('ai-edge-litert')}"
    except ImportError:
        pass
    try:
        from tflite_runtime import interpreter as tflite_runtime  # type: ignore

        return tflite_runtime, f"tflite-runtime {package_version('tflite-runtime')}"
    except ImportError:
        import tensorflow as tf

        return tf.lite, f"tf.lite (TensorFlow {tf.__version__})"


class LiteRTRuntime:
    """A .tflite on the LiteRT interpreter.

    The default op resolver applies the XNNPACK delegate; when XNNPACK declines a valid model
    (it refuses some int8 graphs), the builtin kernels run it instead and ``backend`` says so.
    ``run`` takes the model's native inputs in ``input_names`` order (default: the model's own
    input order) and returns its native outputs in ``output_names`` order.
    """

    def __init__(self, path: Path, input_names: Sequence[str] | None = None, output_names: Sequence[str] | None = None):
        module, name = _interpreter_module()
        self.path = Path(path)
        resolver = getattr(module, "OpResolverType", None)
        try:
            self.interpreter = self._prepare(module.Interpreter(model_path=str(self.path)))
            self.backend = f"{name} CPU, default kernels (XNNPACK delegate where it applies)"
        except Exception as exc:
            if resolver is None:
                raise TargetError(f"LiteRT cannot run {self.path.name}: {one_line(exc)}", stage="validate") from exc
            declined = one_line(exc)
            try:
                self.interpreter = self._prepare(
                    module.Interpreter(model_path=str(self.path), experimental_op_resolver_type=resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
                )
            except Exception as again:
                raise TargetError(f"LiteRT cannot run {self.path.name}: {one_line(again)} (XNNPACK: {declined})", stage="validate") from again
            self.backend = f"{name} CPU, builtin kernels (the XNNPACK delegate declined the model: {declined[:160]})"
        details = {d["name"]: d["index"] for d in self.interpreter.get_input_details()}
        outputs = {d["name"]: d["index"] for d in self.interpreter.get_output_details()}
        self.inputs = [details[n] for n in input_names] if input_names else [d["index"] for d in self.interpreter.get_input_details()]
        self.outputs = [outputs[n] for n in output_names] if output_names else [d["index"] for d in self.interpreter.get_output_details()]

    @staticmethod
    def _prepare(interpreter: Any) -> Any:
        interpreter.allocate_tensors()
        # a delegate may accept allocation and still fail on the first invoke: try one now
        for detail in interpreter.get_input_details():
            interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], dtype=detail["dtype"]))
        interpreter.invoke()
        return interpreter

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        for index, value in zip(self.inputs, inputs):
            self.interpreter.set_tensor(index, np.ascontiguousarray(value))
        self.interpreter.invoke()
        return [np.array(self.interpreter.get_tensor(index)) for index in self.outputs]


# --------------------------------------------------------------------------- explaining

#: ops that compute channels-last whatever the model's layout: a 4-D output is NHWC
_CHANNELS_LAST_OPS = frozenset({
    "CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "MAX_POOL_2D", "AVERAGE_POOL_2D", "L2_POOL_2D",
    "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "SPACE_TO_DEPTH", "DEPTH_TO_SPACE",
})
#: ops whose output keeps the layout of their input (elementwise ops, padding, kept-dims reductions)
_LAYOUT_KEEPING_OPS = frozenset({
    "ADD", "SUB", "MUL", "DIV", "SQUARED_DIFFERENCE", "MAXIMUM", "MINIMUM", "RELU", "RELU6", "RELU_N1_TO_1",
    "RELU_0_TO_1", "LEAKY_RELU", "PRELU", "LOGISTIC", "TANH", "HARD_SWISH", "GELU", "ELU", "ABS", "NEG", "EXP",
    "SQRT", "RSQRT", "SQUARE", "QUANTIZE", "DEQUANTIZE", "PAD", "PADV2", "MIRROR_PAD", "CONCATENATION",
    "MEAN", "SUM", "REDUCE_MAX", "REDUCE_MIN",
})
#: one piece of a compacted litert-torch tensor name: "features.3(Conv2d)"
_MODULE_PIECE = re.compile(r"^([A-Za-z0-9_.]+)\(([A-Za-z0-9_]+)\)$")


def tensor_modules(name: str) -> tuple[str, ...]:
    """The torch module paths a litert-torch tensor name records.

    ``features.5(ReLU);features.4(BatchNorm2d);features.3(Conv2d);1``: the op fused three modules
    (``tflite_graph.compact_name`` has shortened the fully qualified form; names of other
    converters hold no module path and give none).
    """
    from edgex.targets.litert.graph import compact_name

    found = []
    for piece in compact_name(name).split(";"):
        match = _MODULE_PIECE.match(piece.strip())
        if match:
            found.append(match.group(1))
    return tuple(dict.fromkeys(found))


def _tensor_layouts(graph: Any, io: ArtifactIO) -> dict[int, tuple[int, ...] | None]:
    """Each operator output's layout relative to torch, where the graph says it.

    Channels-last ops define NHWC, layout-keeping ops pass their input's on; every other op
    (reshapes, transposes, fully connected) leaves it unknown, and core accepts such a tensor
    only when its shape fits one layout.
    """
    names = {t.name: t.index for t in graph.tensors}
    perms: dict[int, tuple[int, ...] | None] = {}
    for binding in io.inputs:
        if binding.name in names:
            perms[names[binding.name]] = binding.perm or tuple(range(len(binding.shape)))
    for op in graph.operators:
        sources = [perms.get(i) for i in op.inputs if i >= 0 and perms.get(i) is not None]
        for out in op.outputs:
            rank = len(graph.tensor(out).shape)
            if op.name in _CHANNELS_LAST_OPS and rank == 4:
                perms[out] = (0, 2, 3, 1)
            elif op.name in _LAYOUT_KEEPING_OPS and sources and len(sources[0]) == rank:
                perms[out] = sources[0]
            else:
                perms[out] = None
    return perms


class LiteRTTracer:
    """A .tflite on LiteRT with every tensor preserved (``experimental_preserve_all_tensors``).

    A delegate (XNNPACK) computes whole partitions whose intermediate tensors cannot be read, so
    the builtin kernels run it -- or, with ``reference_kernels``, LiteRT's reference kernels
    (``BUILTIN_REF``, the ones TFLite Micro's kernels are ported from).
    """

    def __init__(self, io: ArtifactIO, *, reference_kernels: bool = False, notes: Sequence[str] = ()):
        from edgex.targets.litert.graph import read_graph

        module, name = _interpreter_module()
        resolver = getattr(module, "OpResolverType", None)
        options: dict[str, Any] = {"experimental_preserve_all_tensors": True}
        if resolver is not None:
            options["experimental_op_resolver_type"] = resolver.BUILTIN_REF if reference_kernels else resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        try:
            self.interpreter = module.Interpreter(model_path=str(io.path), **options)
            self.interpreter.allocate_tensors()
        except Exception as exc:
            raise TargetError(f"LiteRT cannot load {Path(io.path).name} for tracing: {one_line(exc)}", stage="validate") from exc
        graph = read_graph(Path(io.path))
        layouts = _tensor_layouts(graph, io)
        self.steps = []
        for op in graph.operators:
            for index in op.outputs:
                tensor = graph.tensor(index)
                self.steps.append((index, tensor.name, tensor_modules(tensor.name), layouts.get(index), quant_params(tensor), op.name))
        by_name = {d["name"]: d["index"] for d in self.interpreter.get_input_details()}
        outputs = {d["name"]: d["index"] for d in self.interpreter.get_output_details()}
        self.inputs = [by_name[b.name] for b in io.inputs]
        self.outputs = [outputs[b.name] for b in io.outputs]
        kernels = "reference kernels (BUILTIN_REF)" if reference_kernels else "builtin kernels without delegates"
        self.backend = f"{name} CPU, {kernels}, every tensor preserved"
        self.notes = tuple(notes)

    def trace(self, inputs: Sequence[np.ndarray]) -> ArtifactTrace:
        for index, value in zip(self.inputs, inputs):
            self.interpreter.set_tensor(index, np.ascontiguousarray(value))
        self.interpreter.invoke()
        tensors = tuple(
            TracedTensor(name, np.array(self.interpreter.get_tensor(index)), modules, perm, quant, op)
            for index, name, modules, perm, quant, op in self.steps
        )
        return ArtifactTrace(tensors, tuple(np.array(self.interpreter.get_tensor(i)) for i in self.outputs))
