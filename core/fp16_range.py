"""Whether an honest fp16 execution of the reference overflows.

fp16's largest finite value is 65504; a model whose intermediate activations pass it computes
inf (and then nan) in fp16, even when its outputs are small. Several fp16 backends hide this:
onnxruntime's CPU provider runs most ops of an fp16 graph in fp32 and removes the Casts
between them, and LiteRT's CPU interpreter dequantizes fp16 weights and computes in fp32
(``FP16_ARITHMETIC``). A passing parity check on such a backend says nothing about a device
that really computes in fp16, so every fp16 verdict also checks the reference's own
activations against fp16's range::

    reason = fp16_overflow(reference.module, batches)
    if reason is not None:
        ...  # the fp16 row fails with ``reason``

One forward pass over the parity batches: forward hooks on every module, or, for a program
without modules (a ``.pt2`` ``GraphModule``), its graph run node by node.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

#: fp16's largest finite value: anything above rounds to inf
FP16_MAX = 65504.0

#: What each built-in backend computes in when it validates an fp16 artifact (target -> sentence).
#: Established on this repository's runtimes; the report can quote it next to an fp16 verdict.
FP16_ARITHMETIC = {
    "onnx": (
        "onnxruntime's CPU provider runs ops without an fp16 CPU kernel (Gemm, Conv, Relu, ... on x86) "
        "in fp32 between Casts it inserts, and removes the Casts between consecutive such ops: "
        "those chains compute in fp32"
    ),
    "jetson": (
        "without TensorRT: the fp32 ONNX on onnxruntime with weights, inputs and every op's output "
        "rounded to fp16 (fp32 arithmetic inside each op, as TensorRT's fp16 kernels accumulate)"
    ),
    "tflite": "LiteRT's CPU interpreter dequantizes fp16-stored weights to fp32 and computes in fp32",
    "coreml": "the Core ML interpreter rounds every op's output to fp16",
}


def _magnitude(value: Any) -> float:
    """The largest finite magnitude among the floating tensors in ``value`` (0 when none).

    Values that are already inf in the fp32 reference are no fp16 matter: they are skipped.
    """
    import torch
    from torch.utils._pytree import tree_leaves

    peak = 0.0
    for leaf in tree_leaves(value):
        if isinstance(leaf, torch.Tensor) and leaf.is_floating_point() and leaf.numel():
            low, high = (float(v) for v in torch.aminmax(leaf.detach()))
            extreme = max(-low, high)
            if not math.isfinite(extreme):  # rare: mask the inf and nan out (a copy) only then
                finite = leaf.detach()[torch.isfinite(leaf.detach())]
                extreme = float(finite.abs().max()) if finite.numel() else 0.0
            peak = max(peak, extreme)
    return peak


class _Peaks:
    """Each place's largest magnitude over every batch, kept in first-execution order."""

    def __init__(self) -> None:
        self.peaks: dict[str, float] = {}  # dicts keep insertion order: the order places first ran

    def see(self, place: str, magnitude: float) -> None:
        self.peaks[place] = max(self.peaks.get(place, 0.0), magnitude)

    def first_overflow(self) -> str | None:
        for place, peak in self.peaks.items():
            if peak > FP16_MAX:
                return f"{place} reaches {peak:.2g}, above fp16's largest value {FP16_MAX:g}: an fp16 execution overflows to inf"
        return None


def _describe(name: str, module: Any) -> str:
    return f"module {name!r} ({type(module).__name__})" if name else f"the model's output ({type(module).__name__})"


def _hooked_pass(module: Any, batches: Sequence[Sequence[Any]], peaks: _Peaks) -> None:
    """Forward hooks on every module: the first to finish with an out-of-range output is named.

    An input that is already out of range when a module receives it came from an operation
    outside any module (``x * 1e5`` in a ``forward``): that module's input is named instead.
    """
    handles = []

    def hook_for(name: str, child: Any):
        def hook(_module: Any, args: Any, output: Any) -> None:
            received = _magnitude(args)
            if received > FP16_MAX and not any(p > FP16_MAX for p in peaks.peaks.values()):
                peaks.see(f"the input of {_describe(name, child)}", received)
            peaks.see(_describe(name, child), _magnitude(output))

        return hook

    try:
        for name, child in module.named_modules():
            handles.append(child.register_forward_hook(hook_for(name, child)))
        for batch in batches:
            module(*batch)
    finally:
        for handle in handles:
            handle.remove()


def _graph_pass(module: Any, batches: Sequence[Sequence[Any]], peaks: _Peaks) -> None:
    """A ``GraphModule`` run node by node; an op is named by the source module torch.export
    recorded for it (``nn_module_stack``), else by its own name."""
    import torch.fx

    class Watcher(torch.fx.Interpreter):
        def run_node(self, node: Any) -> Any:
            result = super().run_node(node)
            if node.op == "call_module":  # a symbolically traced graph keeps its leaf modules
                peaks.see(_describe(str(node.target), self.fetch_attr(node.target)), _magnitude(result))
            elif node.op == "call_function":
                stack = node.meta.get("nn_module_stack") or {}
                if stack:
                    path, kind = list(stack.values())[-1]
                    kind_name = kind.rsplit(".", 1)[-1] if isinstance(kind, str) else getattr(kind, "__name__", str(kind))
                    place = f"module {path!r} ({kind_name})" if path else f"node {node.name!r} ({node.target})"
                else:
                    place = f"node {node.name!r} ({getattr(node.target, '__name__', node.target)})"
                peaks.see(place, _magnitude(result))
            return result

    watcher = Watcher(module)
    for batch in batches:
        watcher.run(*batch)


def fp16_overflow(module: Any, batches: Sequence[Sequence[Any]]) -> str | None:
    """Why an fp16 execution of ``module`` overflows on ``batches``, or None when it stays in range.

    ``module`` is the torch reference (``ReferenceModel.module``); ``batches`` are the parity
    batches, each a tuple of the model's inputs (numpy arrays or tensors). Returns one line
    naming the first module, in execution order, whose output exceeds 65504 in magnitude:
    "module 'fc1' (Linear) reaches 1.3e+05, above fp16's largest value 65504: an fp16
    execution overflows to inf". The reference runs once per batch in its own precision.
    """
    import torch
    import torch.fx

    tensors = [tuple(torch.from_numpy(np.ascontiguousarray(a)) if isinstance(a, np.ndarray) else a for a in batch) for batch in batches]
    peaks = _Peaks()
    with torch.no_grad():
        # a torch.export program has no leaf modules to hook: its graph is run node by node
        if isinstance(module, torch.fx.GraphModule):
            _graph_pass(module, tensors, peaks)
        else:
            _hooked_pass(module, tensors, peaks)
    return peaks.first_overflow()
