"""LiteRT conversion, shared by the ``tflite``, ``coral`` and ``mcu`` targets: conversion, checks, bindings.

- conversion: :func:`convert_tflite` (fp32, fp16, dynamic-int8, int8) tries the converter paths
  of ``edgex.targets.litert.converters`` in order, the next one when a path fails or its result
  does not pass edgex's own checks, and says which produced the artifact and why the others were
  not used. :func:`full_int8` is the one full-int8 conversion behind ``tflite --quantize int8``,
  ``coral`` and ``mcu``; :func:`check_full_int8` its check (:class:`RejectedArtifact`).
- describing: :func:`describe_tflite` and :func:`bindings` relate a ``.tflite``'s tensors to the
  reference (image tensors NHWC, int8 scales).
- running: ``runtime.py`` beside it (:class:`LiteRTRuntime`, :class:`LiteRTTracer`).

No target is declared here: ``tflite.py``, ``coral.py`` and ``mcu.py`` declare theirs.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import re
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from edgex.plugins import (
    AVERAGE_POOLS,
    __version__,
    infer_permutation,
    layout_name,
    match_names,
    one_line,
    package_version,
    reference_outputs,
    simulated_floor,
    start_isolated,
    RemoteError,
    Artifact,
    ArtifactIO,
    ConversionRequest,
    ConversionResult,
    EdgexError,
    ReferenceModel,
    TargetError,
    TargetOption,
    TensorBinding,
    UsageError,
    WiderLayers,
)
from edgex.targets.litert.runtime import LiteRTRuntime, quant_params

CONVERTER_ORDER = ("litert-torch", "onnx2tf")
#: calibration beyond this many samples adds time, not accuracy: the rest is left out (and said)
MAX_CALIBRATION_SAMPLES = 1000
#: an activation scale above this means calibration saw an infinity (e.g. a -inf max-pool pad)
MAX_SANE_SCALE = 1e6
#: below this an activation's range collapsed in calibration: XNNPACK refuses such models
MIN_SANE_SCALE = 1e-7

#: a full-int8 artifact measuring below this SQNR against the torch model (on calibration samples)
#: makes the conversion try every other recipe and keep the best (docs/int8_recipes.md)
RECIPE_SEARCH_BELOW_DB = 30.0
#: calibration samples each full-int8 recipe is measured on
RECIPE_CHECK_SAMPLES = 8
#: 16x8 doubles activation memory and runs TFLM's slower int16 kernels: kept over the best int8
#: recipe only for at least this gain (one bit of signal) or where int8 cannot meet its floor
INT16_MIN_GAIN_DB = 6.0

#: the options of every target converting with :func:`convert_tflite` (tflite, coral)
CONVERTER_OPTIONS = (
    TargetOption(
        "tflite_converter",
        "TFLite converter path: auto (litert-torch, then onnx2tf), litert-torch or onnx2tf",
        str, "auto", ("auto", *CONVERTER_ORDER),
    ),
)
#: why ``edgex explain`` does not trace the way ``edgex validate`` runs (LiteRTTracer's note)
XNNPACK_TRACE_NOTE = (
    "the XNNPACK delegate, which edgex validate uses where it applies, hides the tensors inside its partitions: "
    "explain runs LiteRT's builtin kernels"
)


def _installed(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)



# --------------------------------------------------------------------------- availability


def interpreter_installed() -> bool:
    """Whether a LiteRT interpreter is installed (ai-edge-litert, tflite-runtime or TensorFlow)."""
    return _installed("ai_edge_litert") or _installed("tflite_runtime") or _installed("tensorflow")


def interpreter_name() -> str:
    """The interpreter :class:`LiteRTRuntime` would use, named without importing it."""
    return f"LiteRT {package_version('ai-edge-litert')}" if _installed("ai_edge_litert") else "tflite-runtime / tf.lite"


def converter_paths() -> list[str]:
    """The converter paths installed here, in :data:`CONVERTER_ORDER`."""
    paths = []
    if _installed("litert_torch", "ai_edge_quantizer"):
        paths.append("litert-torch")
    if _installed("onnx2tf", "tensorflow", "tf_keras", "onnx"):
        paths.append("onnx2tf")
    return paths


# --------------------------------------------------------------------------- bindings


def _binding(tensor: Any, perm: tuple[int, ...] | None) -> TensorBinding:
    rank = len(tensor.shape)
    perm = tuple(perm) if perm is not None and tuple(perm) != tuple(range(rank)) else None
    return TensorBinding(tensor.name, tensor.shape, tensor.dtype, layout_name(rank, perm), perm, quant_params(tensor))


def _ordered(names_and_indices: Sequence[tuple[str, int]], reference: Sequence[str], prefix: str) -> list[int] | None:
    """Tensor indices in the reference's order, from signature names (by name, or args_N / output_N)."""
    positions = match_names(reference, [n for n, _ in names_and_indices], numbered_prefix=prefix)
    return None if positions is None else [names_and_indices[p][1] for p in positions]


def _io_tensors(graph: Any, reference: ReferenceModel) -> tuple[list[int], list[int]]:
    """The model's input and output tensors, in the reference's input and output order."""
    inputs = _ordered(graph.signature_inputs, [s.name for s in reference.inputs], "args") if graph.signature_inputs else None
    outputs = _ordered(graph.signature_outputs, list(reference.output_names), "output") if graph.signature_outputs else None
    return inputs or list(graph.inputs), outputs or list(graph.outputs)


def _perm_for(reference_shape: Sequence[int], tensor: Any, expected: tuple[int, ...] | None, what: str, path: Path) -> tuple[int, ...] | None:
    """The layout permutation of one tensor: the expected one when the shapes agree, else inferred."""
    reference_shape = tuple(int(d) for d in reference_shape)
    if expected is not None and tuple(reference_shape[p] for p in expected) == tensor.shape:
        return expected
    if expected is None and len(reference_shape) == 4:
        nhwc = tuple(reference_shape[p] for p in (0, 2, 3, 1))
        if nhwc == tensor.shape and reference_shape != tensor.shape:
            return (0, 2, 3, 1)
    perm = infer_permutation(reference_shape, tensor.shape)
    if perm is None:
        raise TargetError(f"{what} {tensor.name!r} of {Path(path).name} has shape {list(tensor.shape)}, which no layout maps to the reference's {list(reference_shape)}")
    return perm


def bindings(
    graph: Any,
    reference: ReferenceModel,
    output_shapes: Sequence[Sequence[int]],
    input_perms: Sequence[tuple[int, ...] | None] | None = None,
    output_perms: Sequence[tuple[int, ...] | None] | None = None,
) -> tuple[tuple[TensorBinding, ...], tuple[TensorBinding, ...]]:
    """Input and output bindings of a .tflite, in the reference's order, layouts checked by shape."""
    input_indices, output_indices = _io_tensors(graph, reference)
    if len(input_indices) != len(reference.inputs):
        raise UsageError(f"{graph.path.name} takes {len(input_indices)} inputs but the reference model takes {len(reference.inputs)}")
    if len(output_indices) != len(output_shapes):
        raise UsageError(f"{graph.path.name} has {len(output_indices)} outputs but the reference model has {len(output_shapes)}")
    inputs = []
    for i, (index, spec) in enumerate(zip(input_indices, reference.inputs)):
        expected = input_perms[i] if input_perms else None
        tensor = graph.tensor(index)
        inputs.append(_binding(tensor, _perm_for(spec.shape, tensor, expected, "input", graph.path)))
    outputs = []
    for i, (index, shape) in enumerate(zip(output_indices, output_shapes)):
        expected = output_perms[i] if output_perms else None
        tensor = graph.tensor(index)
        outputs.append(_binding(tensor, _perm_for(shape, tensor, expected, "output", graph.path)))
    return tuple(inputs), tuple(outputs)


def layout_metadata(precision: str, inputs: Sequence[TensorBinding], outputs: Sequence[TensorBinding], reference: ReferenceModel, converter: str,
                    kept: WiderLayers | None = None, recorded: Mapping[str, str] | None = None) -> bytes:
    """What edgex writes into the .tflite so that ``edgex validate`` needs no guessing (``kept``:
    a mixed-precision artifact's layers kept wider, which its simulated reference keeps too)."""
    def entry(name: str, binding: TensorBinding) -> dict[str, Any]:
        return {"reference": name, "tensor": binding.name, "perm": list(binding.perm) if binding.perm else None}

    data = {
        "edgex_version": __version__,
        "precision": precision,
        "converter": converter,
        "inputs": [entry(s.name, b) for s, b in zip(reference.inputs, inputs)],
        "outputs": [entry(n, b) for n, b in zip(reference.output_names, outputs)],
    }
    if kept is not None:
        data.update(kept.quantization())
        if recorded is not None:  # the same modules as the file's tensor names record them (check_kept reads those)
            data["kept_wider"]["recorded"] = [recorded.get(m, m) for m in kept.modules]
    return json.dumps(data, sort_keys=True).encode("utf-8")


def _infer_precision(graph: Any, inputs: Sequence[TensorBinding]) -> str:
    if any(b.quant is not None for b in inputs):
        return "int8"
    constants = [t for t in graph.tensors if t.constant]
    if any(t.dtype == "int8" for t in constants):
        return "dynamic-int8"
    if any(t.dtype == "float16" for t in constants):
        return "fp16"
    return "fp32"


def _reference_output_shapes(reference: ReferenceModel) -> list[tuple[int, ...]]:
    sample = reference_outputs(reference, [tuple(reference.example_inputs)])[0]
    return [tuple(int(d) for d in np.shape(o)) for o in sample]


def describe_tflite(path: Path, reference: ReferenceModel) -> ArtifactIO:
    """Inputs and outputs of a .tflite related to ``reference`` (layouts from edgex's metadata,
    else inferred from shapes), with the artifact's int8 scales."""
    from edgex.targets.litert.graph import read_graph

    path = Path(path)
    try:
        graph = read_graph(path)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read {path} as a .tflite model: {one_line(exc)}") from exc
    output_shapes = _reference_output_shapes(reference)
    stamp = graph.edgex_metadata()
    input_perms = output_perms = None
    if stamp and len(stamp.get("inputs", ())) == len(reference.inputs) and len(stamp.get("outputs", ())) == len(output_shapes):
        names = {t.name: t.index for t in graph.tensors}
        if all(e["tensor"] in names for e in stamp["inputs"] + stamp["outputs"]):
            graph.signature_inputs = [(e["reference"], names[e["tensor"]]) for e in stamp["inputs"]]
            graph.signature_outputs = [(e["reference"], names[e["tensor"]]) for e in stamp["outputs"]]
            input_perms = [tuple(e["perm"]) if e["perm"] else tuple(range(len(s.shape))) for e, s in zip(stamp["inputs"], reference.inputs)]
            output_perms = [tuple(e["perm"]) if e["perm"] else tuple(range(len(s))) for e, s in zip(stamp["outputs"], output_shapes)]
    try:
        inputs, outputs = bindings(graph, reference, output_shapes, input_perms, output_perms)
    except TargetError as exc:
        raise UsageError(exc.message) from exc
    precision = (stamp or {}).get("precision") or _infer_precision(graph, inputs)
    return ArtifactIO(path, precision, inputs, outputs, _quantization(graph, precision, (stamp or {}).get("kept_wider")))


# --------------------------------------------------------------------------- int8 checks


class RejectedArtifact(Exception):
    """A converter produced a file, but not one edgex can hand on (float islands, broken scales)."""


def _tensor_label(graph: Any, tensor: Any) -> str:
    producer = graph.producer(tensor.index)
    return f"{producer.name} #{producer.index} -> {tensor.name!r}" if producer is not None else repr(tensor.name)


#: operand positions that read integers as indices: (op, operand) -> the op's table is what is int8
_INDEX_OPERANDS = frozenset({("EMBEDDING_LOOKUP", 0), ("GATHER", 1), ("GATHER_ND", 1)})
#: ops that move integers without computing on them (shape only)
_SHAPE_OPS = frozenset({"RESHAPE", "SQUEEZE", "EXPAND_DIMS"})


def _only_indices(graph: Any, index: int) -> bool:
    """Whether tensor ``index`` is read only as lookup indices (token ids), through reshapes."""
    uses = [(op, position) for op in graph.operators for position, i in enumerate(op.inputs) if i == index]
    if not uses:
        return False
    for op, position in uses:
        if (op.name, position) in _INDEX_OPERANDS:
            continue
        if op.name in _SHAPE_OPS and position == 0 and all(_only_indices(graph, out) for out in op.outputs):
            continue
        return False
    return True


def activation_bits_of(graph: Any) -> int:
    """16 for a 16x8 model (int16 inputs or outputs: TFLite's int16-activation mode), else 8."""
    edges = [graph.tensor(i) for i in (*graph.inputs, *graph.outputs)]
    return 16 if any(t.dtype == "int16" and t.quantized for t in edges) else 8


def check_full_int8(graph: Any, activation_bits: int = 8, kept: WiderLayers | None = None) -> tuple[dict[str, Any], list[str]]:
    """Every tensor int8 (int32 only for biases and shape parameters, and for inputs that are only
    read as lookup indices: token ids; bool for masks), int8 inputs and outputs, sane activation
    scales; returns (summary, warnings) or raises :class:`RejectedArtifact`.

    ``activation_bits=16``: TFLite's 16x8 mode, all-integer too: int16 activations, inputs and
    outputs, int8 weights, int64 biases. bool tensors (masks from comparisons, e.g. a
    transformer's attention mask) carry no values to quantize and are allowed, and counted.

    ``kept``: a mixed-precision model's layers kept wider, whose tensors are float32 or int16
    (with int64 biases): :func:`check_kept` checks they lie in those layers (its summary under
    ``kept_wider``)."""
    act = "int16" if activation_bits == 16 else "int8"
    allowed = ("int8", "int16", "int32", "int64", "bool") if activation_bits == 16 else ("int8", "int32", "bool")
    allowed += {"float": ("float32",), "int16": ("int16", "int64", "float32")}.get(kept.wider_as, ()) if kept is not None else ()
    mode = "16x8" if activation_bits == 16 else "full int8"
    not_int = [(sub, t) for sub, t in graph.all_tensors if t.dtype not in allowed]
    if not_int:
        shown = ", ".join(f"{t.dtype} {_tensor_label(graph, t) if sub == 0 else repr(t.name)}" for sub, t in not_int[:3])
        more = f" and {len(not_int) - 3} more" if len(not_int) > 3 else ""
        raise RejectedArtifact(f"not {mode}: {len(not_int)} tensors are not {'/'.join(allowed)} ({shown}{more})")
    index_inputs = []
    for kind, indices in (("input", graph.inputs), ("output", graph.outputs)):
        for index in indices:
            tensor = graph.tensor(index)
            if kind == "input" and tensor.dtype == "int32" and _only_indices(graph, index):
                index_inputs.append(tensor.name)
                continue
            if tensor.dtype != act or not tensor.quantized:
                raise RejectedArtifact(f"model {kind} {tensor.name!r} is {tensor.dtype}, not quantized {act}")
    warnings, collapsed = [], []
    for tensor in graph.tensors:
        if tensor.constant or tensor.dtype != act:
            continue
        if not tensor.quantized:
            raise RejectedArtifact(f"{act} tensor {_tensor_label(graph, tensor)} carries no scale")
        scale = tensor.scales[0]
        if not math.isfinite(scale) or scale <= 0 or scale > MAX_SANE_SCALE:
            raise RejectedArtifact(
                f"calibration gave tensor {_tensor_label(graph, tensor)} the scale {scale:.3g}: an infinite or NaN value "
                "reached it during calibration (e.g. -inf padding before a max-pool), so its int8 values carry no signal"
            )
        if scale < MIN_SANE_SCALE:
            collapsed.append(f"{_tensor_label(graph, tensor)} (scale {scale:.3g})")
    if collapsed:
        warnings.append(
            f"{len(collapsed)} {act} tensors have a near-zero calibration range, e.g. {collapsed[0]}: fine where the "
            "tensor is zero by construction, noise otherwise (unrepresentative calibration data?); XNNPACK may refuse such models"
        )
    weighted = [
        op for op in graph.operators
        if op.name in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "CONV_3D") and len(op.inputs) > 1 and op.inputs[1] >= 0
    ]
    per_tensor = [f"{op.name} #{op.index}" for op in weighted if not graph.tensor(op.inputs[1]).per_channel]
    summary: dict[str, Any] = {
        **({"all_tensors_integer": True, "activation_bits": 16} if activation_bits == 16 else {"all_tensors_int8_or_int32": True}),
        "weight_tensors": len(weighted),
        "per_channel_weight_tensors": len(weighted) - len(per_tensor),
    }
    if per_tensor:
        summary["per_tensor_weights"] = per_tensor
    if index_inputs:
        summary["int32_index_inputs"] = index_inputs
    if masks := sum(1 for _, t in graph.all_tensors if t.dtype == "bool"):
        summary["bool_tensors"] = masks
    if kept is not None:
        summary["kept_wider"] = check_kept(graph, kept)
    return summary, warnings


class StrayWider(RejectedArtifact):
    """A mixed-precision model computes wider outside the kept layers: ``modules`` (as the
    file's tensor names record them) hold operators the quantizer had no int8 form for."""

    def __init__(self, message: str, modules: Sequence[str], ops: Sequence[str]):
        super().__init__(message)
        self.modules = tuple(dict.fromkeys(m for m in modules if m))
        self.ops = tuple(dict.fromkeys(ops))


def kept_layers(graph: Any) -> WiderLayers | None:
    """The layers a mixed-precision .tflite of edgex's keeps wider, as its metadata says; None for another."""
    kept = (graph.edgex_metadata() or {}).get("kept_wider") or {}
    return WiderLayers(tuple(kept.get("recorded") or kept["modules"]), kept.get("as", "float"), "") if kept.get("modules") else None


def check_kept(graph: Any, kept: WiderLayers) -> dict[str, Any]:
    """The operators a mixed-precision model computes wider (float32, or int16 activations), each
    of a kept layer (:func:`edgex.targets.litert.converters.op_module`); raises
    :class:`RejectedArtifact` for a wider operator outside them, or none at all."""
    from edgex.targets.litert.converters import op_module

    dtype = ("float32",) if kept.wider_as == "float" else ("int16", "float32")  # int16: activation products stay float
    wider = [op for op in graph.operators if op.name not in ("QUANTIZE", "DEQUANTIZE") and any(graph.tensor(i).dtype in dtype for i in op.outputs if i >= 0)]
    stray = [op for op in wider if not kept.holds(op_module(graph, op))]
    if stray:
        shown = ", ".join(f"{op.name} #{op.index} ({op_module(graph, op) or 'no module'})" for op in stray[:3])
        raise StrayWider(f"mixed precision: {len(stray)} {' or '.join(dtype)} operators outside the layers kept wider ({shown})",
                         [op_module(graph, op) or "" for op in stray], [op.name for op in stray])
    if not wider:
        raise RejectedArtifact(f"mixed precision: no operator of {', '.join(kept.modules)} was found to keep {kept.wider_as}")
    return {"modules": list(kept.modules), "as": kept.wider_as, "operators": len(wider),
            "conversions": sum(1 for op in graph.operators if op.name in ("QUANTIZE", "DEQUANTIZE"))}


#: (operator, input position) -> the axis on which that input's int8 kernel takes one scale per
#: channel, in LiteRT and TFLite Micro alike: convolution filters per output channel (axis 0,
#: depthwise axis 3, the kernels' ``kConvQuantizedDimension`` / ``kDepthwiseConvQuantizedDimension``),
#: fully-connected weights per row, and the int32 biases that go with them. Every other input of
#: every operator (BATCH_MATMUL's operands, MUL/ADD constants, ...) is read with one scale
#: (``tensor->params.scale``, which LiteRT leaves 0 for a per-channel tensor). docs/int8_recipes.md
PER_CHANNEL_INPUTS = {
    ("CONV_2D", 1): 0, ("CONV_2D", 2): 0,
    ("DEPTHWISE_CONV_2D", 1): 3, ("DEPTHWISE_CONV_2D", 2): 0,
    ("FULLY_CONNECTED", 1): 0, ("FULLY_CONNECTED", 2): 0,
    ("TRANSPOSE_CONV", 1): 0, ("TRANSPOSE_CONV", 3): 0,
}


class PerChannelRejected(RejectedArtifact):
    """A tensor carries per-channel scales that a kernel (or LiteRT's loader) takes as one:
    ``ops`` names the operators to quantize with per-tensor weights instead."""

    def __init__(self, message: str, ops: Sequence[str], findings: Sequence[dict[str, Any]]):
        super().__init__(message)
        self.ops = tuple(dict.fromkeys(ops))
        self.findings = list(findings)


def per_channel_misuse(graph: Any) -> list[dict[str, Any]]:
    """Tensors with more than one scale where no kernel takes more than one.

    Two kinds: scales that fit neither one scale nor the quantized dimension (LiteRT's
    InterpreterBuilder refuses the file: "num_scales must be 1 for per-layer quantization, or N
    for per-axis quantization, but got M"); and per-channel scales on an input that
    :data:`PER_CHANNEL_INPUTS` does not list (or on another axis), which the kernel reads as one
    scale. Each finding names the operator (``op``, ``op_index``, ``input``) and the tensor."""
    consumers: dict[int, list[tuple[Any, int]]] = {}
    for op in graph.operators:
        for position, index in enumerate(op.inputs):
            if index >= 0:
                consumers.setdefault(index, []).append((op, position))
    findings = []
    for tensor in graph.tensors:
        if not tensor.per_channel:
            continue
        n, axis, shape = len(tensor.scales), tensor.quantized_dimension, tensor.shape
        base = {"tensor": tensor.name, "scales": n, "axis": axis, "shape": list(shape)}
        if shape and not (0 <= axis < len(shape) and shape[axis] == n):
            size = shape[axis] if 0 <= axis < len(shape) else "out of range"
            why = (f"{n} scales on axis {axis} of shape {list(shape)} (size {size}): LiteRT refuses to load the file "
                   "(num_scales must be 1 for per-layer quantization or the axis' size for per-axis)")
            for op, position in consumers.get(tensor.index, []) or [(graph.producer(tensor.index), -1)]:
                findings.append({**base, "op": op.name if op else None, "op_index": op.index if op else None, "input": position, "why": why})
            continue
        for op, position in consumers.get(tensor.index, []):
            wanted = PER_CHANNEL_INPUTS.get((op.name, position))
            if wanted == axis:
                continue
            why = (f"the {op.name} int8 kernel takes one scale for input {position}" if wanted is None
                   else f"the {op.name} int8 kernel takes per-channel scales for input {position} on axis {wanted}, not {axis}")
            findings.append({**base, "op": op.name, "op_index": op.index, "input": position, "why": why})
    return findings


def check_per_channel(graph: Any) -> None:
    """Raise :class:`PerChannelRejected` when :func:`per_channel_misuse` finds anything."""
    findings = per_channel_misuse(graph)
    if not findings:
        return
    first = findings[0]
    more = f" and {len(findings) - 1} more" if len(findings) > 1 else ""
    raise PerChannelRejected(
        f"per-channel scales where the kernel takes one: {first['op']} #{first['op_index']} input {first['input']} "
        f"{first['tensor']!r} has {first['scales']} scales ({first['why']}){more}",
        [f["op"] for f in findings if f["op"]], findings,
    )


# --------------------------------------------------------------------------- converting


@dataclass(frozen=True)
class _Attempt:
    path: str
    outcome: str  # "used", "failed", "rejected", "not tried"
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "outcome": self.outcome, **({"reason": self.reason} if self.reason else {})}


def _path_order(request: ConversionRequest) -> tuple[list[str], str]:
    """Which converter paths to try, in order, and why that order."""
    wanted = (request.options.get("tflite_converter") or "auto").lower()
    available = converter_paths()
    if request.model.module is None:
        order, why = ["onnx2tf"], "the reference is an ONNX file: only onnx2tf converts from ONNX"
    elif wanted != "auto":
        order, why = [wanted], f"--tflite-converter {wanted}"
    else:
        order = list(CONVERTER_ORDER)
        why = (
            "litert-torch first: it converts straight from torch.export (no ONNX hop), keeps images NHWC without "
            "transposes and its int8 path calibrates max-pool padding correctly; onnx2tf when litert-torch cannot "
            "(ops it cannot lower, models torch.export cannot trace that the TorchScript ONNX exporter can)"
        )
    missing = [p for p in order if p not in available]
    order = [p for p in order if p in available]
    if not order:
        raise TargetError(f"no TFLite converter for this model is installed ({', '.join(missing)} missing): pip install 'edgex[tflite]'", stage="convert")
    return order, why


def _calibration(request: ConversionRequest, precision: str, messages: list[str]) -> tuple[tuple[np.ndarray, ...], ...] | None:
    if precision != "int8":
        return None
    if not request.calibration:
        raise UsageError("full int8 needs calibration data: pass --calibration FILE|DIR")
    batches = tuple(request.calibration)
    if len(batches) > MAX_CALIBRATION_SAMPLES:
        messages.append(f"calibrated on the first {MAX_CALIBRATION_SAMPLES} of {len(batches)} calibration samples")
        batches = batches[:MAX_CALIBRATION_SAMPLES]
    return batches


def _digest(batches: Sequence[tuple[np.ndarray, ...]] | None) -> str:
    """sha256 of calibration batches (dtype, shape and bytes of every array)."""
    digest = hashlib.sha256()
    for batch in batches or ():
        for array in batch:
            array = np.ascontiguousarray(array)
            digest.update(f"{array.dtype}{array.shape}".encode())
            digest.update(array.tobytes())
    return digest.hexdigest()


def _perms(perms: Sequence[Sequence[int] | None]) -> tuple[tuple[int, ...] | None, ...]:
    return tuple(tuple(p) if p is not None else None for p in perms)


def _aten_ops(text: str) -> list[str]:
    found = []
    for name in re.findall(r"aten(?:\.|::)([A-Za-z0-9_]+)", text):
        if name not in found and name not in ("default", "Tensor"):
            found.append(name)
    return found


def _module_of_op(model: ReferenceModel, op: str) -> str | None:
    """The torch module (path and type) whose forward calls aten ``op``, from torch.export's
    ``nn_module_stack`` (before and after decompositions, since converters see the latter)."""
    import torch

    try:
        args = tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in model.example_inputs)
        program = torch.export.export(model.module, args, strict=False)
    except Exception:
        return None

    def search(graph: Any) -> str | None:
        for node in graph.nodes:
            name = getattr(node.target, "_opname", None) if node.op == "call_function" else None
            if name and (name == op or name.endswith("_" + op) or op.endswith("_" + name)):
                stack = list((node.meta.get("nn_module_stack") or {}).values())
                if stack:
                    path, kind = stack[-1]
                    return f"{kind.rsplit('.', 1)[-1]} at {path or '(root)'!r}"
                return "the model's own forward (no submodule)"
        return None

    found = search(program.graph)
    if found is None:
        try:
            found = search(program.run_decompositions().graph)
        except Exception:
            found = None
    return found


def _no_path_error(model: ReferenceModel, attempts: Sequence[_Attempt]) -> TargetError:
    """One line: which op no path could convert and which torch module it came from."""
    summary = "; ".join(f"{a.path}: {a.reason}" for a in attempts)
    ops = _aten_ops(" ".join(a.reason for a in attempts))
    if ops and model.module is not None:
        op = ops[0]
        where = _module_of_op(model, op)
        origin = f" in torch module {where}" if where else ""
        return TargetError(f"no converter path can convert op aten.{op}{origin} ({summary})", stage="convert")
    onnx_ops = re.findall(r"onnx2tf\.ops\.([A-Za-z0-9_]+)", summary)
    if onnx_ops:
        return TargetError(f"no converter path can convert ONNX op {onnx_ops[0]} ({summary})", stage="convert")
    if any(a.outcome == "rejected" for a in attempts):
        return TargetError(f"no converter path produced a usable model ({summary})", stage="convert")
    return TargetError(f"every TFLite converter path failed ({summary})", stage="convert")


def recorded_module_names(module: Any) -> dict[str, str]:
    """Each torch module path -> the path litert-torch's tensor names record for it: the modules
    that were called, so without the name of an nn.ModuleList / nn.ModuleDict holding it
    (``encoder.layer.3`` is recorded ``encoder.3``)."""
    import torch

    containers = (torch.nn.ModuleList, torch.nn.ModuleDict)
    found = {}
    for path, held in module.named_modules():
        if isinstance(held, containers):  # never called, no op of its own: its name would shadow its parent's
            continue
        parts = path.split(".") if path else []
        found[path] = ".".join(p for i, p in enumerate(parts) if not isinstance(module.get_submodule(".".join(parts[: i + 1])), containers))
    return found


def _precision_tag(precision: str) -> str:
    return precision.replace("-", "_")


def convert_tflite(request: ConversionRequest, precision: str | None = None, int16_activations: bool = False) -> ConversionResult:
    """The ``tflite`` conversion: try each converter path, check, stamp and keep the first good one.

    ``int16_activations``: the target runs TFLite's 16x8 mode, which the int8 recipe search may
    then choose (``_search_recipes``)."""
    from edgex.targets.litert.converters import KEEPS_WIDER, ONNX2TF_OPSET, PathResult, activation_bits, convert_with
    from edgex.targets.litert.graph import rewrite

    precision = precision or request.precision
    model = request.model
    messages: list[str] = []
    calibration = _calibration(request, precision, messages)
    calibration_digest = _digest(calibration)
    # onnx2tf's ONNX: the run's export, shared with the onnx target (outside a run, one of its own)
    export = (lambda dest: request.onnx_export(dest, opset=ONNX2TF_OPSET)) if request.exports is not None else None
    order, why = _path_order(request)
    output_shapes = _reference_output_shapes(model)
    ranks = [len(s) for s in output_shapes]
    scratch = request.workdir / ".converting"
    attempts: list[_Attempt] = []
    chosen = None
    recipe: dict[str, Any] | None = None
    #: per path, the ops an artifact of it needed per-tensor weights for: later recipes start there
    learned: dict[str, tuple[str, ...]] = {}
    refused: dict[str, tuple[str, list[dict[str, Any]]]] = {}
    #: per path, the layers a mixed conversion kept float beyond the chosen ones, and their ops
    absorbed: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}

    def convert(name: str, recipe_name: str | None = None, per_tensor: tuple[str, ...] | None = None, kept: WiderLayers | None = None) -> tuple[Any, _Attempt]:
        if per_tensor is None:
            per_tensor = learned.get(name, ())
        folder = scratch / ((name if recipe_name is None else f"{name}.{recipe_name}") + (".per-tensor" if per_tensor else "") + (".mixed" if kept else ""))

        def run_path(into: Path) -> dict[str, Any]:
            # each path in its own process: converters segfault, and a crash must fall back, not end the target
            made = start_isolated(
                lambda send: convert_with(name, model, precision, calibration, into, ranks, recipe_name, per_tensor, export, kept),
                what=f"the {name} converter",
            ).wait()
            return {**asdict(made), "path": Path(made.path).relative_to(into).as_posix()}

        try:
            # the same path, recipe and data make the same file for tflite, coral and mcu: made once per run
            made = request.shared(f"litert {name} {precision} recipe={recipe_name} per-tensor={','.join(per_tensor)} ranks={ranks} calibration={calibration_digest} kept={(kept.modules, kept.wider_as) if kept is not None else None}", run_path, folder)
        except Exception as exc:
            return None, _Attempt(name, "failed", one_line(exc))
        result = PathResult(**{**made, "path": str(folder / made["path"]), "messages": tuple(made["messages"]),
                               "input_perms": _perms(made["input_perms"]), "output_perms": _perms(made["output_perms"])})
        try:
            accepted = _accept(request, precision, result, output_shapes, activation_bits(recipe_name), kept)
        except PerChannelRejected as exc:
            # per-channel scales on an op whose kernel takes one: the same path again, with per-tensor
            # weights for those ops (a converter setting, not a lossy rewrite of the file's int8 weights)
            ops = tuple(dict.fromkeys(per_tensor + exc.ops))
            if per_tensor and set(ops) == set(per_tensor):
                return None, _Attempt(name, "rejected", one_line(exc))
            refused[name] = (one_line(exc), exc.findings[:8])
            again, attempt = convert(name, recipe_name, ops, kept)
            if again is None:
                return None, _Attempt(name, "rejected", f"{one_line(exc)}; converted again with per-tensor weights for {', '.join(ops)}: {attempt.reason}")
            learned[name] = ops
            return again, attempt
        except StrayWider as exc:
            # ops the quantizer has no int8 form for (litert-torch's softmax: REDUCE_MAX, EXP), in
            # layers not kept: a mixed model keeps those layers float too, and says so (once)
            extended = tuple(dict.fromkeys((*kept.modules, *exc.modules)))
            if not exc.modules or len(extended) == len(kept.modules) or "" in exc.modules or not (kept.wider_as == "float" or set(exc.ops) <= {"FULLY_CONNECTED", "BATCH_MATMUL"}):
                return None, _Attempt(name, "rejected", one_line(exc))
            absorbed[name] = (exc.modules, exc.ops)
            return convert(name, recipe_name, per_tensor, replace(kept, modules=extended))
        except (RejectedArtifact, EdgexError, ValueError) as exc:  # unreadable, wrong layout, not full int8
            return None, _Attempt(name, "rejected", one_line(exc))
        if per_tensor:  # what was done, in the row: the artifact that was refused, and the setting that fixed it
            reason, findings = refused.get(name, ("", []))
            _, _, _, _, checks, warnings = accepted
            checks["per_tensor_weights_for"] = list(per_tensor)
            checks["per_channel_refused"] = findings
            warnings.insert(0, f"{name} converted with per-tensor weights for {', '.join(per_tensor)}: its first artifact was refused ({reason})")
        return accepted, _Attempt(name, "used")

    # mixed precision: where full int8 misses its floor in edgex's simulation (so no full-int8
    # recipe can meet it: none is tried), the layers the run's parent chose, kept wider
    kept = None
    if precision == "int8" and model.module is not None and calibration:
        # int16 kernels where the target has them (mcu: TFLM), float where it falls back to the CPU
        kept = request.layers_kept_wider(("int16", "float") if int16_activations else "float", {"on_input_grid": list(AVERAGE_POOLS), "recurrent": "unrolled"})
    try:
        if kept is not None:
            path = next((name for name in order if name in KEEPS_WIDER), None)
            # litert-torch's tensor names record the modules that were called: an nn.ModuleList's own name is not among them
            recorded = recorded_module_names(model.module)
            as_recorded = replace(kept, modules=tuple(recorded.get(m, m) for m in kept.modules))
            chosen, attempt = convert(path, kept=as_recorded) if path else (None, _Attempt("litert-torch", "not tried", "the converter option leaves it out"))
            if chosen is None:
                messages.append(f"mixed precision ({', '.join(kept.modules)} kept {kept.wider_as}) not converted: {attempt.path} {attempt.reason or attempt.outcome}; converted full int8 instead")
                kept = None
            else:
                attempts.append(attempt)
                real = {name: module for module, name in recorded.items()}
                kept = replace(kept, modules=tuple(real.get(m, m) for m in chosen[4]["kept_wider"]["modules"]))
                chosen[4]["kept_wider"]["modules"] = list(kept.modules)
                if path in absorbed:
                    modules, ops = absorbed[path]
                    messages.append(f"mixed precision: {', '.join(real.get(m, m) for m in modules)} kept float too: ai-edge-quantizer has no int8 form for their {', '.join(ops)}")
        for name in order if chosen is None else ():
            chosen, attempt = convert(name)
            attempts.append(attempt)
            if chosen is not None:
                break
        if chosen is None:
            raise _no_path_error(model, attempts)
        if precision == "int8" and model.module is not None and calibration and kept is None:
            def floor_of(check: Sequence[tuple[np.ndarray, ...]], reference: Any, bits: int) -> tuple[float, float] | None:
                # the run's one calibration (the parent's), unless only the first MAX_CALIBRATION_SAMPLES were used
                if len(calibration) == len(request.calibration or ()) and request.floors is not None:
                    return request.simulated_floor(check, reference, bits, on_input_grid=AVERAGE_POOLS, recurrent="unrolled")
                return simulated_floor(model.module, tuple(model.example_inputs), calibration, check, reference, bits, on_input_grid=AVERAGE_POOLS, recurrent="unrolled")

            # a path whose default artifact kept float ops its quantizer has no int8 form for keeps
            # them under every recipe: its other recipes are ruled out without converting them
            structural = {a.path for a in attempts if a.outcome == "rejected" and "not full int8" in a.reason}
            chosen, recipe = _search_recipes(model, calibration, attempts[-1].path, chosen, [p for p in order if p not in structural], convert, floor_of, int16_activations)
        result, graph, inputs, outputs, checks, warnings = chosen
        final = request.workdir / f"model_{_precision_tag(precision)}.tflite"
        shutil.move(result.path, final)
        rewrite(final, {"edgex": layout_metadata(precision, inputs, outputs, model, result.converter, kept, recorded if kept is not None else None)})
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    attempts += [_Attempt(p, "not tried") for p in order[len(attempts):]]
    for attempt in attempts:
        if attempt.outcome in ("failed", "rejected"):
            messages.append(f"converter {attempt.path} {attempt.outcome}: {attempt.reason}")
    messages += list(result.messages) + warnings
    used = next(a.path for a in attempts if a.outcome == "used")
    details: dict[str, Any] = {"conversion": {"path": used, "order": why, "tried": [a.to_json() for a in attempts]}}
    if recipe is not None:
        details["conversion"]["path"] = recipe["chosen"]["path"]
        details["int8_recipe"] = recipe
        messages.append(recipe["message"])
    if checks:
        details["int8_checks"] = checks
    io = ArtifactIO(final, precision, inputs, outputs, _quantization(graph, precision, kept.quantization()["kept_wider"] if kept is not None else None))
    return ConversionResult((Artifact(final, "tflite"),), io, result.converter, tuple(messages), details)


def measure_sqnr(model: ReferenceModel, path: Path, inputs: Sequence[TensorBinding], outputs: Sequence[TensorBinding], batches: Sequence[tuple[np.ndarray, ...]], reference: Any) -> float:
    """The artifact's SQNR against the torch model's ``reference`` outputs on ``batches`` (LiteRT):
    the worst output's."""
    from edgex.plugins import from_artifact, output_error, to_artifact

    runtime = LiteRTRuntime(path, [b.name for b in inputs], [b.name for b in outputs])
    got = []
    for batch in batches:
        raw = runtime.run([to_artifact(np.asarray(x), b) for x, b in zip(batch, inputs)])
        got.append([from_artifact(y, b) for y, b in zip(raw, outputs)])
    return min(output_error(reference, got, index)[1] for index in range(len(outputs)))


def _search_recipes(
    model: ReferenceModel,
    calibration: Sequence[tuple[np.ndarray, ...]],
    first_path: str,
    first: tuple[Any, ...],
    order: Sequence[str],
    convert: Any,
    floor_of: Callable[[Sequence[tuple[np.ndarray, ...]], Any, int], tuple[float, float] | None],
    int16_activations: bool = False,
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Measure the first full-int8 artifact on LiteRT against the torch model, and aim it at what
    edgex's independent simulated reference says an honest int8 conversion reaches on the same
    samples (its parity floor, ``simulated_floor``) and at RECIPE_SEARCH_BELOW_DB. Short of
    either: convert with every other int8 recipe of the allowed paths (``order``) and keep the
    best by measured SQNR. Still short, where the target runs int16 activations
    (``int16_activations``): the 16x8 recipe too, kept when it beats the best int8 recipe by
    INT16_MIN_GAIN_DB or alone reaches its own simulated floor. Every candidate is all-integer
    (``_accept`` rejected any other), so the choice never leaves integers. ``floor_of(check,
    reference, activation_bits)``: the floor (``ConversionRequest.simulated_floor``, which a run's
    parent answers once for coral and mcu alike)."""
    from edgex.plugins import reference_outputs
    from edgex.targets.litert.converters import INT16_RECIPES, RECIPES, activation_bits

    check = list(calibration[-RECIPE_CHECK_SAMPLES:])
    reference = reference_outputs(model, check)
    floors: dict[int, tuple[float, float] | None] = {}

    def floor(bits: int) -> tuple[float, float] | None:  # (parity floor, simulated SQNR), once per scheme
        if bits not in floors:
            try:
                floors[bits] = floor_of(check, reference, bits)
            except Exception:  # an aid to the choice: without it the search aims at 30 dB, the verdict says why
                floors[bits] = None
        return floors[bits]

    def measured(path_name: str, recipe_name: str, accepted: tuple[Any, ...]) -> dict[str, Any]:
        result, _, inputs, outputs, _, _ = accepted
        row: dict[str, Any] = {"path": path_name, "recipe": recipe_name}
        try:
            # in a process of its own: LiteRT aborts on some candidates ("free(): double free
            # detected" in allocate_tensors), and that must cost the candidate, not the target
            sqnr = start_isolated(
                lambda send: measure_sqnr(model, Path(result.path), inputs, outputs, check, reference),
                what="LiteRT",
            ).wait()
        except RemoteError as exc:  # a candidate LiteRT cannot run is not one to choose
            return {**row, "outcome": "failed", "reason": f"LiteRT could not run it: {one_line(exc)}"}
        except TargetError as exc:  # nor one it crashes on
            return {**row, "outcome": "failed", "reason": one_line(exc)}
        row.update(outcome="measured", sqnr_db=round(float(sqnr), 2) if math.isfinite(sqnr) else float(sqnr))
        if (bound := floor(activation_bits(recipe_name))) is not None:
            row.update(reference_sqnr_db=round(bound[1], 2), reference_floor_db=round(bound[0], 2), meets_reference=bool(sqnr >= bound[0]))
        return row

    def sqnr(index: int) -> float:
        return rows[index].get("sqnr_db", -math.inf)

    def short(index: int) -> bool:  # below the aim: 30 dB, and the independent reference's floor
        return sqnr(index) < aim or not rows[index].get("meets_reference", True)

    def tried(path_name: str, recipe_name: str) -> None:
        accepted, attempt = convert(path_name, recipe_name)
        if accepted is None:
            rows.append({"path": path_name, "recipe": recipe_name, "outcome": attempt.outcome, "reason": attempt.reason})
            return
        rows.append(measured(path_name, recipe_name, accepted))
        artifacts[len(rows) - 1] = accepted

    first_recipe = RECIPES[first_path][0]
    rows = [measured(first_path, first_recipe, first)]
    artifacts = {0: first}
    # the aim stays 30 dB even where the simulation reaches less: it calibrates on min/max, and
    # a clipping recipe beats it where the calibration data holds outliers (docs/int8_recipes.md)
    bound = floor(8)
    aim = RECIPE_SEARCH_BELOW_DB
    best = 0
    searched = short(0)
    # the simulation rules the int8 recipes out where even it stays below the floor: none can
    # meet it (mixed precision, or 16x8 below, is what can)
    ruled_out = bound is not None and bound[1] < bound[0]
    if searched and not ruled_out:
        for path_name in order:
            for recipe_name in RECIPES.get(path_name, ()):
                if (path_name, recipe_name) != (first_path, first_recipe) and short(max(artifacts, key=sqnr)):
                    tried(path_name, recipe_name)  # in order, until one is no longer short
        best = max(artifacts, key=sqnr)
    if searched and int16_activations and short(best):
        for path_name in order:
            for recipe_name in INT16_RECIPES.get(path_name, ()):
                tried(path_name, recipe_name)
        int16 = [i for i in artifacts if activation_bits(rows[i]["recipe"]) == 16 and "sqnr_db" in rows[i]]
        if int16:
            top = max(int16, key=sqnr)
            if sqnr(top) >= sqnr(best) + INT16_MIN_GAIN_DB or (rows[top].get("meets_reference") and not rows[best].get("meets_reference", True)):
                best = top
    chosen = rows[best]

    def described(row: dict[str, Any]) -> str:  # a candidate LiteRT could not run has no SQNR
        return f"{row['path']} {row['recipe']} " + (f"{row['sqnr_db']:.1f} dB" if "sqnr_db" in row else row["outcome"])

    where = f"{len(check)} calibration samples, against the torch model"
    bound = floor(activation_bits(chosen["recipe"]))
    against = (
        f"; edgex's simulated {'16x8' if activation_bits(chosen['recipe']) == 16 else 'int8'} reference reaches {bound[1]:.1f} dB there, its parity floor {bound[0]:.1f} dB"
        if bound is not None else "; no simulated int8 reference for this model: aimed at 30 dB alone"
    )
    if searched and ruled_out and len(rows) == 1:
        message = f"int8 recipe: {described(chosen)} ({where}{against}); no other int8 recipe tried: edgex's simulation, quantizing ideally, stays below the floor"
    elif searched:
        others = ", ".join(described(r) for i, r in enumerate(rows) if i != best)
        message = (
            f"int8 recipe: {described(chosen)} ({where}{against}); the default measured below "
            f"{'its floor' if not rows[0].get('meets_reference', True) else f'{aim:g} dB'}, so the other recipes were tried in order until one was not: "
            f"{others or 'no other recipe to try (a path whose default kept float ops keeps them under every recipe)'}"
        )
    else:
        message = f"int8 recipe: {described(chosen)} ({where}{against}); at or above {aim:g} dB and the floor, no other recipe tried"
    details = {
        "chosen": {"path": chosen["path"], "recipe": chosen["recipe"], "sqnr_db": chosen.get("sqnr_db"), "activation_bits": activation_bits(chosen["recipe"])},
        "rule": (
            f"the first path's default recipe, unless it measures below {aim:g} dB or below the parity floor of edgex's simulated "
            "int8 reference on the same samples: then the other int8 recipes in order until one is neither, keeping the highest SQNR "
            "(none where the simulation itself stays below the floor)"
            + (f"; where that one is still short, 16x8 when it gains {INT16_MIN_GAIN_DB:g} dB or alone meets its own simulated floor" if int16_activations else "")
            + " (every candidate all-integer)"
        ),
        "measured_on": where,
        "searched": searched,
        "ruled_out_by_simulation": ruled_out,
        "candidates": rows,
        "message": message,
    }
    if (ref8 := floors.get(8)) is not None:
        details["int8_reference"] = {"sqnr_db": round(ref8[1], 2), "floor_db": round(ref8[0], 2)}
    return artifacts[best], details


def _quantization(graph: Any, precision: str, kept: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``ArtifactIO.quantization`` of a .tflite, which its simulated reference quantizes likewise
    (``pipeline.Reference.simulated``): a 16x8 model's int16 activations; AVERAGE_POOL_2D's
    output on its input's grid (LiteRT's SAME_AS_INPUT_SCALE); a recurrent op written out per
    step, int8 throughout (litert-torch lowers aten.lstm / aten.gru by PyTorch's decomposition
    into FULLY_CONNECTED, LOGISTIC, TANH, MUL, ADD), unless the file holds a fused recurrent
    kernel (another converter's UNIDIRECTIONAL_SEQUENCE_LSTM, whose int16 cell state edgex does
    not simulate); at dynamic-int8, the hybrid kernels' int8 inputs, quantized as they run; a
    mixed-precision model's layers ``kept`` wider (``WiderLayers.quantization``)."""
    fused = any(op.name in FUSED_RECURRENT for op in graph.operators)
    return {**({"kept_wider": dict(kept)} if kept else {}), "on_input_grid": list(AVERAGE_POOLS), **({"dynamic_inputs": True} if precision == "dynamic-int8" else {}), **({} if fused else {"recurrent": "unrolled"}), **({"activation_bits": 16} if activation_bits_of(graph) == 16 else {})}


#: LiteRT's fused recurrent kernels (not what litert-torch writes)
FUSED_RECURRENT = frozenset({"LSTM", "UNIDIRECTIONAL_SEQUENCE_LSTM", "BIDIRECTIONAL_SEQUENCE_LSTM", "UNIDIRECTIONAL_SEQUENCE_RNN", "BIDIRECTIONAL_SEQUENCE_RNN", "RNN"})


def _accept(request: ConversionRequest, precision: str, result: Any, output_shapes: Sequence[Sequence[int]], bits: int = 8, kept: WiderLayers | None = None) -> tuple[Any, ...]:
    """Read a path's .tflite back and check it: layout by shape, full int8 where asked (but for
    the ops of the layers ``kept`` wider: :func:`check_kept`)."""
    from edgex.targets.litert.graph import read_graph, rewrite

    # int64 index constants as int32 for int8 consumers; never in 16x8, whose int64 biases LiteRT's
    # and TFLM's int16 conv kernels require (DEPTHWISE_CONV_2D: "bias->type != kTfLiteInt64")
    narrowed = rewrite(Path(result.path), narrow_int64=precision == "int8" and bits == 8, compact_names=True)
    graph = read_graph(Path(result.path))
    inputs, outputs = bindings(graph, request.model, output_shapes, result.input_perms, result.output_perms)
    checks: dict[str, Any] = {}
    warnings: list[str] = []
    if precision == "int8":
        checks, warnings = check_full_int8(graph, bits, kept)
        check_per_channel(graph)
        if narrowed:
            checks["int64_constants_narrowed_to_int32"] = narrowed
    return result, graph, inputs, outputs, checks, warnings


def full_int8(request: ConversionRequest, int16_activations: bool = False) -> ConversionResult:
    """A full-int8 ``.tflite`` in ``request.workdir``: int8 inputs, outputs and activations,
    per-channel int8 weights, calibrated on ``request.calibration``; every tensor checked to be
    int8/int32. Bindings carry NHWC perms for image tensors and the int8 scales.

    ``int16_activations`` (``mcu``): where no int8 recipe reaches what int8 should, the search may
    keep a 16x8 model instead (int16 activations, inputs and outputs; int8 weights), all-integer too.

    The one implementation behind ``tflite --quantize int8``, ``coral`` and ``mcu``.
    """
    return convert_tflite(request, "int8", int16_activations)


def describe_artifact(path: Path, reference: ReferenceModel) -> ArtifactIO:
    """:func:`describe_tflite` for a file a user hands the tflite or coral target, checked to be one."""
    path = Path(path)
    if path.name.endswith("_edgetpu.tflite"):
        raise UsageError(f"{path.name} is compiled for the Edge TPU (edgetpu-custom-op) and needs an Edge TPU to run; validate the int8 .tflite it was compiled from")
    if path.suffix != ".tflite":
        raise UsageError(f"{path} is not a .tflite file")
    return describe_tflite(path, reference)
