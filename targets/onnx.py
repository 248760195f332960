"""Targets ``onnx`` and ``jetson`` (alias ``tensorrt``).

``onnx``: ``torch.onnx.export`` (the dynamo exporter, falling back to the TorchScript exporter
when it fails, the fallback recorded), ``onnx.checker``, then fp16 (onnxruntime's float16
converter, float32 I/O kept) or int8 (QDQ static quantization, per-channel weights, from the
calibration data; 7-bit weights where this x86 CPU lacks VNNI, see ``int8_saturating_cpu``).
Validated on onnxruntime's CPU provider.

``jetson``: the same ONNX prepared the way TensorRT takes it: static shapes, opset 17,
constants folded, QDQ with symmetric (zero-point 0) int8 scales. Where ``tensorrt`` imports,
an engine is built and validated; elsewhere onnxruntime runs the ONNX in the precision
TensorRT would use (fp16 by rounding a copy in memory, int8 by running the QDQ graph unfused),
and ``backend`` says so.

``export_onnx`` is also the first step of the tflite target's onnx2tf path.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import io as _io
import re
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from edgex.plugins import (
    infer_permutation,
    layout_name,
    one_line,
    package_version,
    Artifact,
    ArtifactIO,
    BackendStatus,
    ConversionRequest,
    ConversionResult,
    ModelOperators,
    OperatorCheck,
    OperatorFinding,
    QuantParams,
    ReferenceModel,
    TargetError,
    TargetOption,
    TargetSpec,
    TensorBinding,
    TracedTensor,
    ArtifactTrace,
    UsageError,
    hookimpl,
)

DEFAULT_OPSET = 18
TENSORRT_OPSET = 17  # parsed by TensorRT 8.5 (JetPack 5) and 10.x alike
DYNAMO_MIN_OPSET = 18  # the dynamo exporter has no implementations below it

_OPTIONS = (
    TargetOption("opset", "ONNX opset to export (onnx: default 18; jetson: 17)", int, None),
    TargetOption("dynamic_batch", "export the batch dimension as dynamic (onnx only)", bool, False),
    TargetOption("exporter", "ONNX exporter: auto (dynamo, then TorchScript), dynamo or torchscript", str, "auto", ("auto", "dynamo", "torchscript")),
    TargetOption(
        "reduce_range",
        "int8: quantize weights to 7 bits (auto: on where this CPU lacks VNNI, whose onnxruntime int8 kernels saturate 8-bit weights; onnx only)",
        str, "auto", ("auto", "on", "off"),
    ),
)

TARGETS = (
    TargetSpec(
        name="onnx",
        description="ONNX model, validated on onnxruntime (CPU)",
        artifact_kinds=(".onnx",),
        precisions=("fp32", "fp16", "int8"),
        default_precision="fp32",
        options=_OPTIONS,
        accepts=("torch", "onnx"),
    ),
    TargetSpec(
        name="jetson",
        aliases=("tensorrt",),
        description="ONNX prepared for TensorRT (+ .engine where TensorRT is installed)",
        artifact_kinds=(".engine", ".trt.onnx"),
        precisions=("fp32", "fp16", "int8"),
        default_precision="fp16",
        options=(_OPTIONS[0], _OPTIONS[2]),  # TensorRT takes static shapes and 8-bit symmetric int8 only
        accepts=("torch", "onnx"),
    ),
)



def _tensorrt_available() -> bool:
    return importlib.util.find_spec("tensorrt") is not None


# --------------------------------------------------------------------------- declaring


@hookimpl
def edgex_targets():
    return TARGETS


@hookimpl
def edgex_backend_status(target: str) -> BackendStatus:
    missing = [p for p in ("onnx", "onnxruntime", "onnxscript") if importlib.util.find_spec(p) is None]
    if missing:
        return BackendStatus(False, "onnxruntime", "pip install 'edgex[onnx]'", f"{', '.join(missing)} not installed")
    ort = f"onnxruntime {package_version('onnxruntime')}"
    if target == "jetson":
        if _tensorrt_available():
            return BackendStatus(True, f"TensorRT {package_version('tensorrt') or ''}".strip())
        return BackendStatus(True, f"{ort} (TensorRT not installed: its precision is emulated, TensorRT not run)", emulated=True)
    return BackendStatus(True, ort)


# --------------------------------------------------------------------------- export



def export_onnx(
    model: ReferenceModel,
    path: Path,
    *,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = False,
    exporter: str = "auto",
) -> tuple[str, list[str]]:
    """Export the torch reference to ``path``; returns (converter description, messages).

    Tries the dynamo exporter first and the TorchScript exporter when it fails (or as told by
    ``exporter``), so that a model one exporter cannot handle still converts, and says which.
    Below opset 18 the dynamo exporter's graph is taken down by ``convert_opset``: a
    ``torch.export`` program (``.pt2``) has no TorchScript route (its module refuses ``train()``).
    """
    import torch

    args = tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in model.example_inputs)
    names = [s.name for s in model.inputs]
    messages: list[str] = []
    order = {"auto": ("dynamo", "torchscript"), "dynamo": ("dynamo",), "torchscript": ("torchscript",)}[exporter]
    failures = []
    for kind in order:
        try:
            with contextlib.redirect_stdout(_io.StringIO()):
                if kind == "dynamo":
                    dynamic = None
                    if dynamic_batch:
                        batch = torch.export.Dim("batch")
                        dynamic = {n: {0: batch} for n in names}
                    # asked below 18, the exporter converts down itself, before folding constants,
                    # and fails on ReduceMean's axes input; convert_opset does it after
                    torch.onnx.export(
                        model.module, args, str(path), dynamo=True, external_data=False, opset_version=max(opset, DYNAMO_MIN_OPSET),
                        input_names=names, output_names=list(model.output_names), dynamic_shapes=dynamic,
                        verbose=False, report=False,
                    )
                else:
                    axes = {n: {0: "batch"} for n in [*names, *model.output_names]} if dynamic_batch else None
                    torch.onnx.export(
                        model.module, args, str(path), dynamo=False, opset_version=opset,
                        input_names=names, output_names=list(model.output_names), dynamic_axes=axes,
                    )
        except Exception as exc:
            failures.append(f"{kind} exporter failed: {one_line(exc)}")
            path.unlink(missing_ok=True)
            continue
        produced = _opset_of(path)
        converter = f"torch.onnx.export ({kind}, opset {produced})"
        if produced > opset:
            try:
                convert_opset(path, opset)
            except Exception as exc:
                failures.append(f"{kind} exporter produced opset {produced} and onnx's version converter could not take it to {opset}: {one_line(exc)}")
                path.unlink(missing_ok=True)
                continue
            converter += f" -> onnx.version_converter (opset {opset})"
        elif produced != opset:
            failures.append(f"{kind} exporter produced opset {produced}, not the requested {opset}")
            path.unlink(missing_ok=True)
            continue
        if failures:
            messages.append(f"used the {kind} exporter because the " + "; ".join(failures))
        return converter, messages
    raise TargetError("ONNX export failed: " + "; ".join(failures), stage="convert")


def onnx_save(model: Any, path: Path) -> None:
    import onnx

    onnx.save(model, str(path))


def convert_opset(path: Path, opset: int) -> None:
    """Rewrite the ONNX at ``path`` down to ``opset`` with onnx's version converter, checked.

    onnx's adapters keep attributes the older operator does not know (ReduceMean 18 -> 13 keeps
    ``noop_with_empty_axes``): one left at its default changes nothing and is dropped; any other
    value has no older equivalent and fails the conversion. The converter also drops each
    node's metadata, which holds the module scopes ``explain`` attributes ops by: it is copied
    back by node name. Parity of the result is proven by the target's validation like any other
    artifact's.
    """
    import onnx
    from onnx import defs, helper, version_converter

    model = onnx.load(str(path))
    source = _opset_of_model(model)
    metadata = {node.name: list(node.metadata_props) for node in model.graph.node if node.name}
    converted = version_converter.convert_version(model, opset)
    for node in converted.graph.node:
        if not node.metadata_props and node.name in metadata:
            node.metadata_props.extend(metadata[node.name])
        if node.domain not in ("", "ai.onnx"):
            continue
        known = defs.get_schema(node.op_type, opset).attributes
        newer = defs.get_schema(node.op_type, source).attributes
        for attr in list(node.attribute):
            if attr.name in known:
                continue
            default = newer[attr.name].default_value if attr.name in newer else None
            if default is None or not default.name or helper.get_attribute_value(attr) != helper.get_attribute_value(default):
                raise ValueError(f"{node.op_type} attribute {attr.name} has no opset {opset} equivalent")
            node.attribute.remove(attr)
    onnx.checker.check_model(converted, full_check=True)
    onnx.save(converted, str(path))


def _opset_of_model(model: Any) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _opset_of(path: Path) -> int:
    import onnx

    return _opset_of_model(onnx.load(str(path), load_external_data=False))


def check_onnx(path: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise TargetError(f"the exported ONNX does not pass onnx.checker: {one_line(exc)}", stage="convert") from exc


def _fp32_onnx(request: ConversionRequest, path: Path, opset: int, dynamic_batch: bool) -> tuple[str, list[str]]:
    """The float ONNX of the reference: exported from torch, or the user's ONNX copied."""
    if request.model.onnx_path is not None:
        shutil.copyfile(request.model.onnx_path, path)
        return "the reference ONNX, copied", []
    return export_onnx(request.model, path, opset=opset, dynamic_batch=dynamic_batch, exporter=request.options.get("exporter") or "auto")


def _topologically_sorted(model: Any) -> Any:
    """Reorder the graph's nodes so each comes after its inputs' producers.

    onnxruntime's float16 converter appends its boundary Cast nodes at the end of the node
    list, which onnx.checker (rightly) rejects.
    """
    graph = model.graph
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        still = [n for n in pending if not all(i in ready for i in n.input)]
        done = [n for n in pending if all(i in ready for i in n.input)]
        if not done:
            raise TargetError("the fp16 graph has a cycle or a dangling input", stage="convert")
        for node in done:
            ordered.append(node)
            ready.update(node.output)
        pending = still
    del graph.node[:]
    graph.node.extend(ordered)
    return model


def fp16_model(source: Path) -> Any:
    """fp16 weights and compute, float32 inputs and outputs (onnxruntime's converter)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return _topologically_sorted(convert_float_to_float16(onnx.load(str(source)), keep_io_types=True))


#: fp16's largest finite value; larger weights are clamped to it (as TensorRT's builder does)
_FP16_MAX = 65504.0


def fp16_rounded_model(source: Path) -> Any:
    """The float ONNX with fp16's rounding spelled out, for onnxruntime to emulate an fp16 device.

    Weights and float inputs are rounded to fp16, and every float op output goes through a Cast
    to fp16 and back: values overflow to inf and lose precision between ops as on fp16 hardware,
    while each op computes in fp32 inside (as TensorRT's fp16 kernels accumulate). An fp16 graph
    cannot do this on onnxruntime's CPU provider: it runs the ops that lack fp16 CPU kernels
    (nearly all, on x86) in fp32 and removes the Casts between them, so the graph computes fp32.
    Casts an fp32 graph spells out itself are kept at every optimization level.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(source))
    graph = model.graph
    inferred = onnx.shape_inference.infer_shapes(model).graph
    floats = {
        v.name for v in (*inferred.value_info, *inferred.input, *inferred.output) if v.type.tensor_type.elem_type == TensorProto.FLOAT
    }
    for init in graph.initializer:
        if init.data_type == TensorProto.FLOAT:
            values = np.clip(numpy_helper.to_array(init), -_FP16_MAX, _FP16_MAX).astype(np.float16).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(values, init.name))
    initializers = {i.name for i in graph.initializer}

    def rounded(name: str, produced_as: str) -> list[Any]:
        return [
            helper.make_node("Cast", [produced_as], [f"{name}/fp16"], to=TensorProto.FLOAT16, name=f"{name}/to_fp16"),
            helper.make_node("Cast", [f"{name}/fp16"], [name], to=TensorProto.FLOAT, name=f"{name}/from_fp16"),
        ]

    nodes: list[Any] = []
    renamed: dict[str, str] = {}
    for value in graph.input:  # the input keeps its name for callers; its consumers read it rounded
        if value.name in floats and value.name not in initializers:
            renamed[value.name] = f"{value.name}/rounded"
            nodes.extend(rounded(renamed[value.name], value.name))
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name in renamed:
                node.input[index] = renamed[name]
        nodes.append(node)
        for index, name in enumerate(node.output):
            if name in floats:  # the op writes fp32; the graph reads the fp16-rounded value under the old name
                node.output[index] = f"{name}/fp32"
                nodes.extend(rounded(name, f"{name}/fp32"))
    del graph.node[:]
    graph.node.extend(nodes)
    return model


#: /proc/cpuinfo flags of x86 int8 dot-product instructions, which accumulate u8*s8 products in
#: int32; without them onnxruntime's int8 kernels use VPMADDUBSW, whose int16 pair sums saturate
_VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
_X86_64 = frozenset({"x86_64", "amd64"})


def int8_saturating_cpu(cpuinfo: str, machine: str) -> str | None:
    """The CPU, in words, when onnxruntime's int8 kernels on it saturate 8-bit weights; else None.

    ``cpuinfo`` is the text of /proc/cpuinfo ("" when unreadable), ``machine`` platform.machine().
    Only x86-64 without VNNI saturates (u8*s8 pairs summed in int16 overflow past 32767; 7-bit
    weights keep every pair in range, as onnxruntime's docs advise). Unknown CPUs are assumed
    not to: 8-bit weights are what every other runtime expects.
    """
    if machine.lower() not in _X86_64:
        return None
    flags_line = next((line for line in cpuinfo.splitlines() if line.startswith("flags")), None)
    if flags_line is None:
        return None
    flags = set(flags_line.partition(":")[2].split())
    if flags & _VNNI_FLAGS:
        return None
    return f"{'AVX2' if 'avx2' in flags else 'x86-64'} without VNNI"


def this_cpu_saturates_int8() -> str | None:
    """Why onnxruntime's int8 kernels saturate 8-bit weights on this machine, or None."""
    import platform

    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    return int8_saturating_cpu(cpuinfo, platform.machine())


def choose_reduce_range(option: str, saturating_cpu: str | None) -> tuple[bool, str]:
    """Whether the onnx target quantizes weights to 7 bits, and the message saying why."""
    if option == "on":
        return True, "weights quantized to 7 bits (reduce_range), as --reduce-range on asked"
    if option == "off":
        if saturating_cpu:
            return False, (
                f"weights quantized to 8 bits, as --reduce-range off asked: onnxruntime's int8 kernels on this CPU "
                f"({saturating_cpu}) saturate them, so parity measured here is worse than on a VNNI deployment target"
            )
        return False, "weights quantized to 8 bits, as --reduce-range off asked"
    if saturating_cpu:
        return True, (
            f"weights quantized to 7 bits (reduce_range): onnxruntime's int8 kernels on this CPU ({saturating_cpu}) "
            "saturate 8-bit weights; pass --reduce-range off for a VNNI deployment target"
        )
    return False, "weights quantized to 8 bits: onnxruntime's int8 kernels on this CPU do not saturate them"


class _CalibrationReader:
    def __init__(self, names: Sequence[str], batches: Sequence[tuple[np.ndarray, ...]]):
        self._feeds = iter([dict(zip(names, b)) for b in batches])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def to_int8_qdq(source: Path, dest: Path, request: ConversionRequest, *, symmetric: bool, reduce_range: bool = False) -> None:
    """QDQ static quantization (int8 weights per channel, int8 activations) from calibration data.

    ``symmetric``: activations with zero point 0 (TensorRT); ``reduce_range``: 7-bit weights.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not request.calibration:
        raise UsageError("int8 needs calibration data: pass --calibration FILE|DIR")
    prepared = dest.with_name(dest.stem + ".preprocessed.onnx")
    quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
    names = [i.name for i in onnx.load(str(prepared)).graph.input]
    try:
        with contextlib.redirect_stdout(_io.StringIO()):
            quantize_static(
                str(prepared),
                str(dest),
                _CalibrationReader(names, request.calibration),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                reduce_range=reduce_range,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True},
            )
    finally:
        prepared.unlink(missing_ok=True)


def fold_static(source: Path, dest: Path, inputs: Sequence[Any]) -> None:
    """Static input shapes and folded constants: what TensorRT's parser likes best."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(source))
    shapes = {spec.name: spec.shape for spec in inputs}
    for value in model.graph.input:
        if value.name in shapes:
            for dim, size in zip(value.type.tensor_type.shape.dim, shapes[value.name]):
                dim.ClearField("dim_param")
                dim.dim_value = int(size)
    static = dest.with_name(dest.stem + ".static.onnx")
    onnx.save(onnx.shape_inference.infer_shapes(model), str(static))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(dest)
    ort.InferenceSession(str(static), options, providers=["CPUExecutionProvider"])
    static.unlink(missing_ok=True)


# --------------------------------------------------------------------------- describing


def _elem_dtype(value_info: Any) -> str:
    import onnx

    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(value_info.type.tensor_type.elem_type)).name


def _output_quant(model: Any) -> dict[str, QuantParams]:
    """For QDQ graphs: the scale of the DequantizeLinear that produces each graph output."""
    from onnx import numpy_helper

    init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    found = {}
    for output in model.graph.output:
        node = producers.get(output.name)
        while node is not None and node.op_type not in ("DequantizeLinear",) and node.op_type in ("Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze"):
            node = producers.get(node.input[0])
        if node is not None and node.op_type == "DequantizeLinear" and node.input[1] in init:
            scale = init[node.input[1]]
            zero = init.get(node.input[2]) if len(node.input) > 2 else None
            if scale.size == 1:
                found[output.name] = QuantParams(float(scale.reshape(())), int(zero.reshape(())) if zero is not None else 0, "int8")
    return found


def precision_of(model: Any) -> str:
    import onnx

    ops = {n.op_type for n in model.graph.node}
    if "QuantizeLinear" in ops or "QLinearConv" in ops:
        return "int8"
    halves = sum(1 for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16)
    floats = sum(1 for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT)
    return "fp16" if halves > floats else "fp32"


def describe_onnx(path: Path, reference: ReferenceModel, precision: str | None = None) -> ArtifactIO:
    """Inputs/outputs of an ONNX file related to the reference model."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise UsageError(f"cannot read {path} as ONNX: {one_line(exc)}") from exc
    initializers = {i.name for i in model.graph.initializer}
    graph_inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(graph_inputs) != len(reference.inputs):
        raise UsageError(f"{path} takes {len(graph_inputs)} inputs but the reference model takes {len(reference.inputs)}")
    inputs = []
    for value, spec in zip(graph_inputs, reference.inputs):
        dims = [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]
        shape = tuple(ref if d is None else d for d, ref in zip(dims, spec.shape)) if len(dims) == len(spec.shape) else tuple(d or 1 for d in dims)
        perm = infer_permutation(spec.shape, shape)
        if perm is None:
            raise UsageError(f"input {value.name!r} of {path} has shape {shape}, which no layout maps to the reference's {spec.shape}")
        inputs.append(TensorBinding(value.name, shape, _elem_dtype(value), layout_name(len(shape), perm), perm))
    quant = _output_quant(model)
    outputs = []
    for value in model.graph.output:
        dims = tuple(d.dim_value if d.HasField("dim_value") else 1 for d in value.type.tensor_type.shape.dim)
        outputs.append(TensorBinding(value.name, dims, _elem_dtype(value), None, None, None))
    precision = precision or precision_of(model)
    scheme: dict[str, Any] = {}
    if precision == "int8":
        outputs = [TensorBinding(o.name, o.shape, o.dtype, None, None, quant.get(o.name)) for o in outputs]
        scheme = {"weight_bits": weight_bits(model), "symmetric_activations": symmetric_activations(model)}
    return ArtifactIO(Path(path), precision, tuple(inputs), tuple(outputs), scheme)


def symmetric_activations(model: Any) -> bool:
    """Whether every QuantizeLinear has zero point 0 (the symmetric activations TensorRT needs)."""
    from onnx import numpy_helper

    initializers = {i.name: i for i in model.graph.initializer}
    zero_points = [initializers.get(n.input[2]) for n in model.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2]
    return bool(zero_points) and all(z is not None and not np.any(numpy_helper.to_array(z)) for z in zero_points)


def weight_bits(model: Any) -> int:
    """7 when every int8 weight a DequantizeLinear reads lies in [-64, 64] (onnxruntime's
    reduce_range), else 8: the scheme is read from the file, so that edgex's simulated reference
    quantizes weights the same way (never a tolerance)."""
    from onnx import numpy_helper

    initializers = {i.name: i for i in model.graph.initializer}
    peaks = []
    for node in model.graph.node:
        source = initializers.get(node.input[0]) if node.op_type == "DequantizeLinear" and node.input else None
        if source is not None and source.data_type == 3 and len(source.dims) >= 2:  # INT8 weights, not a bias or scalar
            peaks.append(int(np.abs(numpy_helper.to_array(source).astype(np.int32)).max(initial=0)))
    return 7 if peaks and max(peaks) <= 64 else 8


# --------------------------------------------------------------------------- converting


@hookimpl
def edgex_convert(request: ConversionRequest) -> ConversionResult:
    work = request.workdir
    jetson = request.target == "jetson"
    opset = request.options.get("opset") or (TENSORRT_OPSET if jetson else DEFAULT_OPSET)
    dynamic = bool(request.options.get("dynamic_batch")) and not jetson
    fp32 = work / "model.fp32.onnx"
    converter, messages = _fp32_onnx(request, fp32, opset, dynamic)
    check_onnx(fp32)
    if jetson:
        folded = work / "model.folded.onnx"
        fold_static(fp32, folded, request.model.inputs)
        fold_static_note = "static shapes, constants folded"
        folded.replace(fp32)
        converter += f"; {fold_static_note}"

    final = work / ("model.trt.onnx" if jetson else "model.onnx")
    details: dict[str, Any] = {}
    if request.precision == "fp16" and not jetson:
        onnx_save(fp16_model(fp32), final)
        converter += "; fp16 by onnxruntime.transformers.float16 (float32 I/O kept)"
    elif request.precision == "int8" and jetson:
        to_int8_qdq(fp32, final, request, symmetric=True)
        converter += "; int8 QDQ by onnxruntime.quantization (8-bit symmetric, as TensorRT requires)"
        details["quantization"] = {"reduce_range": False, "weight_bits": 8, "symmetric": True}
    elif request.precision == "int8":
        saturating_cpu = this_cpu_saturates_int8()
        asked = request.options.get("reduce_range") or "auto"
        reduce_range, why = choose_reduce_range(asked, saturating_cpu)
        to_int8_qdq(fp32, final, request, symmetric=False, reduce_range=reduce_range)
        chosen = f"reduce_range {'on' if reduce_range else 'off'}"
        if asked == "auto":
            chosen += f" (auto: this CPU is {saturating_cpu})" if saturating_cpu else " (auto: this CPU's int8 kernels do not saturate)"
        converter += f"; int8 QDQ by onnxruntime.quantization (per-channel {7 if reduce_range else 8}-bit weights, {chosen})"
        messages.append(why)
        details["quantization"] = {"reduce_range": reduce_range, "weight_bits": 7 if reduce_range else 8, "saturating_cpu": saturating_cpu}
    else:
        # jetson fp16 keeps an fp32 ONNX: TensorRT lowers it to fp16 with its FP16 builder flag
        shutil.copyfile(fp32, final)
    fp32.unlink(missing_ok=True)
    check_onnx(final)
    artifacts = [Artifact(final, "onnx")]
    io = describe_onnx(final, request.model, request.precision)
    if jetson:
        details["tensorrt"] = {"opset": opset, "static_shapes": True}
        if _tensorrt_available():
            engine = work / "model.engine"
            _build_engine(final, engine, request.precision)
            artifacts.append(Artifact(engine, "engine"))
            io = ArtifactIO(engine, io.precision, io.inputs, io.outputs)
            details["tensorrt"]["engine"] = engine.name
        else:
            messages.append("TensorRT is not installed here: no .engine was built; parity ran on onnxruntime emulating the precision TensorRT would use (TensorRT not run)")
    return ConversionResult(tuple(artifacts), io, converter, tuple(messages), details)


@hookimpl
def edgex_describe_artifact(target: str, path: Path, reference: ReferenceModel) -> ArtifactIO:
    if path.suffix == ".engine":
        if not _tensorrt_available():
            raise UsageError(f"validating {path} needs TensorRT, which is not installed here; validate the .onnx it was built from")
        io = describe_onnx(path.with_suffix(".onnx") if path.with_suffix(".onnx").exists() else path.with_name("model.trt.onnx"), reference)
        return ArtifactIO(path, io.precision, io.inputs, io.outputs)
    if path.suffix != ".onnx":
        raise UsageError(f"{path} is not an .onnx file")
    return describe_onnx(path, reference)


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


class TensorRTRuntime:
    """A serialized TensorRT engine, run through TensorRT's Python API on the GPU."""

    def __init__(self, engine_path: Path):
        import tensorrt as trt
        import torch

        logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(logger).deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise TargetError(f"TensorRT could not deserialize {engine_path}", stage="validate")
        self.context = self.engine.create_execution_context()
        self.names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.torch = torch
        self.backend = f"TensorRT {trt.__version__} on {torch.cuda.get_device_name()}"

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        import tensorrt as trt

        torch = self.torch
        feeds = iter(inputs)
        buffers, outputs = [], []  # every buffer stays referenced until the engine has run
        for name in self.names:
            if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                tensor = torch.from_numpy(np.ascontiguousarray(next(feeds))).cuda()
            else:
                shape = tuple(self.context.get_tensor_shape(name))
                dtype = torch.from_numpy(np.zeros(0, trt.nptype(self.engine.get_tensor_dtype(name)))).dtype
                tensor = torch.empty(shape, dtype=dtype, device="cuda")
                outputs.append(tensor)
            buffers.append(tensor)
            self.context.set_tensor_address(name, tensor.data_ptr())
        stream = torch.cuda.Stream()
        self.context.execute_async_v3(stream.cuda_stream)
        stream.synchronize()
        return [t.cpu().numpy() for t in outputs]


def _build_engine(onnx_path: Path, engine_path: Path, precision: str) -> None:
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise TargetError(f"TensorRT cannot parse {onnx_path.name}: {errors}", stage="convert")
    config = builder.create_builder_config()
    # TF32 is on by default on Ampere and later: an fp32 engine would round matmul inputs to 10 mantissa bits
    config.clear_flag(trt.BuilderFlag.TF32)
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)  # explicit quantization: scales come from the QDQ nodes
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TargetError("TensorRT failed to build an engine (see the log)", stage="convert")
    engine_path.write_bytes(bytes(serialized))


#: what the onnx target's fp16 artifact computes in on onnxruntime's CPU provider
_ORT_FP16_ARITHMETIC = ", fp16 graph: ops without an fp16 CPU kernel run in fp32 between Casts onnxruntime removes (fp16 weights, fp32 arithmetic)"


#: how the jetson target's int8 artifact runs without TensorRT
_TENSORRT_INT8 = (
    "emulating TensorRT int8: QDQ run unfused (int8 values, float arithmetic), "
    "not onnxruntime's fused int8 kernels, which saturate 8-bit weights on CPUs without VNNI where TensorRT does not"
)


@hookimpl
def edgex_load_runtime(target: str, io: ArtifactIO, options: Mapping[str, Any]):
    if target == "jetson":
        if io.path.suffix == ".engine":
            return TensorRTRuntime(io.path)
        if io.precision == "fp16":
            return OnnxRuntime(io.path, emulate_fp16=True, note=", emulating TensorRT fp16: weights and every op's output rounded to fp16 (TensorRT not run: not installed)")
        if io.precision == "int8":
            return OnnxRuntime(io.path, unfused_qdq=True, emulated=True, note=f", {_TENSORRT_INT8} (TensorRT not run: not installed)")
        return OnnxRuntime(io.path, emulated=True, note=f", emulating TensorRT {io.precision} (TensorRT not run: not installed)")
    return OnnxRuntime(io.path, note=_ORT_FP16_ARITHMETIC if io.precision == "fp16" else "")


# --------------------------------------------------------------------------- explaining

#: a torch parameter's name as exporters keep it on an initializer ("features.3.weight"; QDQ adds "_quantized")
_PARAMETER = re.compile(r"^(.+)\.(weight|bias)(?:_quantized)?$")
_FOLDABLE = ("Conv", "ConvTranspose")


def _dynamo_scope(node: Any) -> str | None:
    """The module the dynamo exporter recorded for a node: its innermost name scope.

    ``pkg.torch.onnx.name_scopes`` lists full module paths outermost first and ends with the fx
    node's own name: ``['', 'features', 'features.1', '_native_batch_norm_legit_no_training']``.
    Its rewriter keeps the metadata of the op a fusion ends with (a Conv with batch norm folded
    in carries the batch norm's scope), so the scope names the module whose output the node holds.
    """
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return None
            return scopes[-2] if isinstance(scopes, list) and len(scopes) >= 2 and scopes[-2] else None
    return None


def _torchscript_scope(node_name: str) -> str | None:
    """The module path in a TorchScript-exporter node name.

    ``/layers/layers.1/downsample/downsample.0/Conv`` -> ``layers.1.downsample.0``: a component is
    an attribute of the one before, except that a container's child repeats the container's
    name (``layers.1`` inside ``layers``).
    """
    if not node_name.startswith("/"):
        return None
    parts = [p for p in node_name.split("/")[1:-1] if p]
    paths: list[str] = []
    for index, part in enumerate(parts):
        if index and part.startswith(parts[index - 1] + "."):
            parent = paths[-2] if len(paths) >= 2 else ""
        else:
            parent = paths[-1] if paths else ""
        paths.append(f"{parent}.{part}" if parent else part)
    return paths[-1] if paths else None


def _node_modules(node: Any, producers: Mapping[str, Any], initializers: Mapping[str, Any]) -> tuple[str, ...]:
    """The torch modules an ONNX node belongs to, from what the exporter wrote into the file:
    its scope metadata (dynamo) or its name (TorchScript exporter), and the parameters it consumes."""

    def source(name: str) -> str:  # a QDQ weight: the initializer behind its DequantizeLinear
        producer = producers.get(name)
        return producer.input[0] if producer is not None and producer.op_type == "DequantizeLinear" else name

    sources = [source(name) for name in node.input]
    parameters = [m.group(1) for m in (_PARAMETER.match(s) for s in sources if s in initializers) if m]
    scope = _dynamo_scope(node)
    if scope is None:
        weights = sources[1] if len(sources) > 1 else ""
        if node.op_type in _FOLDABLE and weights in initializers and not _PARAMETER.match(weights):
            # weights the TorchScript exporter computed (batch norm folded into the conv): the
            # op holds more than the module its name says, so the name is not used
            return tuple(dict.fromkeys(parameters))
        scope = _torchscript_scope(node.name)
    return tuple(dict.fromkeys(([scope] if scope else []) + parameters))


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
            modules = _node_modules(node, producers, initializers)
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


@hookimpl
def edgex_load_tracer(target: str, io: ArtifactIO, reference: ReferenceModel, options: Mapping[str, Any]):
    if io.path.suffix == ".engine":
        raise UsageError(f"a TensorRT engine keeps its intermediate tensors inside the engine: explain the .onnx {io.path.name} was built from")
    if target == "jetson":
        int8 = io.precision == "int8"
        note = f", {_TENSORRT_INT8}" if int8 else f", {io.precision} as TensorRT would compute"
        tracer = OnnxTracer(io, as_fp16=io.precision == "fp16", unfused_qdq=int8, note=note)
        tracer.notes = ("TensorRT does not expose intermediate tensors: the ONNX was traced on onnxruntime in the precision TensorRT would use",)
        return tracer
    return OnnxTracer(io)


# --------------------------------------------------------------------------- edgex check


@hookimpl
def edgex_check_operators(target: str, operators: ModelOperators, precision: str) -> OperatorCheck:
    """An ATen operator exports when the dynamo exporter can take it to core ATen (which
    torchlib implements) or the TorchScript exporter, tried second, has a symbolic for it at the
    target's opset; one that neither covers fails both, as edgex convert then reports. An ONNX
    reference is taken as it is (operators outside the standard domains are not vouched for)."""
    if operators.kind == "onnx":
        custom = tuple(op.name for op in operators.operators if not op.name.startswith("onnx."))
        return OperatorCheck(source="the ONNX reference's own nodes (copied as they are)", unknown=custom)
    from edgex.plugins import aten_reach

    with contextlib.redirect_stderr(_io.StringIO()):
        from torch.onnx._internal.torchscript_exporter import registration, utils  # noqa: F401  (utils registers the symbolics)
    opset = TENSORRT_OPSET if target == "jetson" else DEFAULT_OPSET
    findings, unknown = [], []
    for op in operators.operators:
        reach = aten_reach(op.name)
        if reach in ("core", "decomposes") or registration.registry.is_registered_op(op.name.replace(".", "::", 1), opset):
            continue
        if reach == "unknown":
            unknown.append(op.name)
            continue
        findings.append(OperatorFinding(
            op.name, f"neither ONNX exporter has it: it is outside core ATen with no decomposition (dynamo), and the TorchScript exporter has no symbolic for it at opset {opset}",
            fix="write it from core ATen operators in the model, or register a custom ONNX symbolic (torch.onnx.register_custom_op_symbolic)",
            modules=op.modules,
        ))
    notes = ("TensorRT's own parser is checked when the engine is built: edgex has no TensorRT here to ask",) if target == "jetson" else ()
    torch_version = package_version("torch") or "?"
    return OperatorCheck(tuple(findings), f"core ATen and its decompositions, and the TorchScript exporter's symbolics at opset {opset} (torch {torch_version})", tuple(unknown), notes)
