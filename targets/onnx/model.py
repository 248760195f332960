"""ONNX files, shared by the ``onnx`` and ``jetson`` targets: the float export of the reference
(``fp32_onnx``), opset conversion and checks, fp16 and int8 (QDQ) versions, static folding, and
how a file's tensors bind to the reference (``describe_onnx``). ``check_operators`` is both
targets' ``edgex check`` answer at their opset.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io as _io
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgex.plugins import (
    AVERAGE_POOLS,
    infer_permutation,
    layout_name,
    one_line,
    package_version,
    ArtifactIO,
    BackendStatus,
    ConversionRequest,
    ModelOperators,
    OperatorCheck,
    OperatorFinding,
    QuantParams,
    ReferenceModel,
    TargetError,
    TargetOption,
    TensorBinding,
    UsageError,
)

DEFAULT_OPSET = 18


#: the options both targets take (declared once: the command line shows each flag once)
OPSET_OPTION = TargetOption("opset", "ONNX opset to export (onnx: default 18; jetson: 17)", int, None)
EXPORTER_OPTION = TargetOption("exporter", "ONNX exporter: auto (dynamo, then TorchScript), dynamo or torchscript", str, "auto", ("auto", "dynamo", "torchscript"))


def onnx_status() -> BackendStatus | None:
    """Why onnxruntime cannot run here (a BackendStatus saying what to install), or None."""
    missing = [p for p in ("onnx", "onnxruntime", "onnxscript") if importlib.util.find_spec(p) is None]
    if missing:
        return BackendStatus(False, "onnxruntime", "pip install 'edgex[onnx]'", f"{', '.join(missing)} not installed")
    return None


# --------------------------------------------------------------------------- export


def onnx_save(model: Any, path: Path) -> None:
    import onnx

    onnx.save(model, str(path))


def check_onnx(path: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise TargetError(f"the exported ONNX does not pass onnx.checker: {one_line(exc)}", stage="convert") from exc


def fp32_onnx(request: ConversionRequest, path: Path, opset: int, dynamic_batch: bool) -> tuple[str, list[str]]:
    """The float ONNX of the reference at ``path``: the run's shared export (or the user's ONNX), copied."""
    return request.onnx_export(path, opset=opset, dynamic_batch=dynamic_batch, exporter=request.options.get("exporter") or "auto")


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
        # AveragePool's output keeps its input's scale (onnxruntime's QDQDirect8BitOp)
        scheme = {"weight_bits": weight_bits(model), "symmetric_activations": symmetric_activations(model), "on_input_grid": list(AVERAGE_POOLS)}
        if float_recurrent(model):  # onnxruntime's static QDQ quantizer leaves LSTM / GRU / RNN float
            scheme["recurrent"] = "float"
    return ArtifactIO(Path(path), precision, tuple(inputs), tuple(outputs), scheme)


def float_recurrent(model: Any) -> bool:
    """Whether the graph holds a recurrent op (LSTM, GRU, RNN) and every one reads its weights as
    float initializers: onnxruntime's static quantizer has no QDQ form for them (LSTM is only in
    its dynamic IntegerOps registry), so they run float32 and what reads them is quantized."""
    initializers = {i.name: i for i in model.graph.initializer}
    recurrent = [n for n in model.graph.node if n.op_type in ("LSTM", "GRU", "RNN")]
    return bool(recurrent) and all(
        n.input[1] in initializers and initializers[n.input[1]].data_type == 1 for n in recurrent  # FLOAT W
    )


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


# --------------------------------------------------------------------------- edgex check


def check_operators(operators: ModelOperators, opset: int, notes: tuple[str, ...] = ()) -> OperatorCheck:
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
    torch_version = package_version("torch") or "?"
    return OperatorCheck(tuple(findings), f"core ATen and its decompositions, and the TorchScript exporter's symbolics at opset {opset} (torch {torch_version})", tuple(unknown), notes)
