"""onnxruntime, shared by the ``onnx`` and ``jetson`` targets: :class:`OnnxRuntime` runs an ONNX
file for parity (fp16 rounding or unfused QDQ where it stands in for TensorRT), and
:class:`OnnxTracer` reads every intermediate tensor for ``edgex explain``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgex.plugins import (
    onnx_node_modules,
    one_line,
    ArtifactIO,
    QuantParams,
    TargetError,
    TracedTensor,
    ArtifactTrace,
)
from edgex.targets.onnx.model import fp16_model, fp16_rounded_model


# --------------------------------------------------------------------------- running


def session_options(*, unfused_qdq: bool = False) -> Any:
    """onnxruntime session options; ``unfused_qdq`` keeps QDQ graphs unfused.

    Unfused, each DequantizeLinear -> op -> QuantizeLinear group runs as written: int8 values,
    float arithmetic, requantized per tensor, which is what an int8 engine that does not saturate
    (TensorRT's) computes. Fused, onnxruntime runs its own int8 kernels, which on x86 CPUs
    without VNNI saturate 8-bit weights (see ``int8_saturating_cpu``). Only QDQ fusion is turned
    off; onnxruntime's float optimizations still run.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    if unfused_qdq:
        options.add_session_config_entry("session.disable_quant_qdq", "1")
    return options


class OnnxRuntime:
    """An ONNX file on onnxruntime's CPU provider.

    ``emulate_fp16``: run the float ONNX with fp16 rounding after every op (``fp16_rounded_model``),
    standing in for a device that computes in fp16; ``details()`` then reports ``emulated``.
    ``unfused_qdq``: see ``session_options``.
    """

    def __init__(self, path: Path, *, emulate_fp16: bool = False, unfused_qdq: bool = False, emulated: bool = False, note: str = ""):
        import onnxruntime as ort

        source: Any = fp16_rounded_model(path).SerializeToString() if emulate_fp16 else str(path)
        try:
            self.session = ort.InferenceSession(source, session_options(unfused_qdq=unfused_qdq), providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise TargetError(f"onnxruntime cannot load {Path(path).name}: {one_line(exc)}", stage="validate") from exc
        self.names = [i.name for i in self.session.get_inputs()]
        self.backend = f"onnxruntime {ort.__version__} CPUExecutionProvider{note}"
        self.emulated = emulated or emulate_fp16

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        return self.session.run(None, dict(zip(self.names, inputs)))

    def details(self) -> dict[str, Any]:
        return {"emulated": True} if self.emulated else {}


# --------------------------------------------------------------------------- explaining

#: ops whose output can be negative whatever their inputs: an int8 range starting at zero after
#: one of them is an activation ORT's QDQ quantizer removed (it drops a Relu or Clip after a
#: Conv, Gemm, Add... and lets the quantization clip instead)
_SIGNED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "Sum", "BatchNormalization", "Einsum"})
_FOLDED_ACTIVATION = "its int8 range clips in place of an activation the QDQ quantizer removed: no tensor holds this op's own output"


def _range_starts_at_zero(q: QuantParams) -> bool:
    """Whether the int8 grid's lowest value is 0.0: it clips every negative value, like a ReLU."""
    return q.zero_point == {"int8": -128, "uint8": 0, "int16": -32768, "uint16": 0}.get(q.dtype)


class OnnxTracer:
    """An ONNX file on onnxruntime with every intermediate tensor made a graph output (on a copy)."""

    def __init__(self, io: ArtifactIO, *, as_fp16: bool = False, unfused_qdq: bool = False, note: str = ""):
        import onnx
        import onnxruntime as ort
        from onnx import numpy_helper

        model = fp16_model(io.path) if as_fp16 else onnx.load(str(io.path))
        graph = model.graph
        initializers = {i.name: i for i in graph.initializer}
        producers = {out: node for node in graph.node for out in node.output}
        quant: dict[str, QuantParams] = {}
        for node in graph.node:  # the grid a QDQ graph puts each float tensor on: its int8 tolerance
            if node.op_type == "QuantizeLinear" and node.input[1] in initializers:
                scale = numpy_helper.to_array(initializers[node.input[1]])
                zero = numpy_helper.to_array(initializers[node.input[2]]) if len(node.input) > 2 and node.input[2] in initializers else None
                if scale.size == 1:
                    dtype = zero.dtype.name if zero is not None else "uint8"
                    quant[node.input[0]] = QuantParams(float(scale.reshape(())), int(zero.reshape(())) if zero is not None else 0, dtype)
        folded = {name for name, q in quant.items() if name in producers and producers[name].op_type in _SIGNED_OPS and _range_starts_at_zero(q)}
        # a float tensor's value as the int8 model carries it: after its QuantizeLinear ->
        # DequantizeLinear pair. ORT's QDQ quantizer drops a ReLU that follows a Conv or Add and
        # lets the quantization range clip instead, so the float tensor itself is unclipped.
        dequantized: dict[str, str] = {}
        for node in graph.node:
            if node.op_type == "DequantizeLinear":
                quantizer = producers.get(node.input[0])
                if quantizer is not None and quantizer.op_type == "QuantizeLinear":
                    dequantized.setdefault(quantizer.input[0], node.output[0])
        existing = {o.name for o in graph.output}
        #: (tensor name, name to read its value from, modules, op, its int8 grid, why it cannot be compared)
        self.steps: list[tuple[str, str, tuple[str, ...], str, QuantParams | None, str]] = []
        for node in graph.node:
            # QDQ pairs only move values on and off the int8 grid: each is read with the tensor it quantizes
            if node.op_type in ("QuantizeLinear", "DequantizeLinear", "Constant"):
                continue
            modules = onnx_node_modules(node, producers, initializers)
            for out in node.output:
                if out and out not in initializers:
                    read = dequantized.get(out, out)
                    self.steps.append((out, read, modules, node.op_type, quant.get(out), _FOLDED_ACTIVATION if out in folded else ""))
                    if read not in existing:
                        graph.output.append(onnx.ValueInfoProto(name=read))
                        existing.add(read)
        try:
            self.session = ort.InferenceSession(model.SerializeToString(), session_options(unfused_qdq=unfused_qdq), providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise TargetError(f"onnxruntime cannot load {Path(io.path).name} with its intermediate tensors as outputs: {one_line(exc)}", stage="validate") from exc
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [b.name for b in io.outputs]
        self.backend = f"onnxruntime {ort.__version__} CPUExecutionProvider{note}, every intermediate tensor made a graph output"
        self.notes: tuple[str, ...] = ()

    def trace(self, inputs: Sequence[np.ndarray]) -> ArtifactTrace:
        names = [step[1] for step in self.steps]
        values = self.session.run(self.outputs + names, dict(zip(self.inputs, inputs)))
        outputs, intermediates = values[: len(self.outputs)], values[len(self.outputs) :]
        tensors = tuple(
            TracedTensor(name, np.asarray(value), modules, tuple(range(np.ndim(value))), q, op, unreadable)
            for (name, _, modules, op, q, unreadable), value in zip(self.steps, intermediates)
        )
        return ArtifactTrace(tensors, tuple(np.asarray(o) for o in outputs))
