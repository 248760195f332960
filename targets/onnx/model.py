"""ONNX files, shared by the ``onnx`` and ``jetson`` targets: the float export of the reference
(``fp32_onnx``), opset conversion and checks, fp16 and int8 (QDQ) versions, static folding, and
how a file's tensors bind to the reference (``describe_onnx``). ``check_operators`` is both
targets' ``edgex check`` answer at their opset.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io as _io
import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from edgex.plugins import (
    AVERAGE_POOLS,
    infer_permutation,
    layout_name,
    onnx_node_scope,
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
    WiderLayers,
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


def to_int8_qdq(
    source: Path,
    dest: Path,
    request: ConversionRequest,
    *,
    symmetric: bool,
    reduce_range: bool = False,
    scopes: Mapping[str, str] | None = None,
    guard_float_weights: bool = False,
) -> dict[str, Any] | None:
    """QDQ static quantization (int8 weights per channel, int8 activations) from calibration data.

    ``symmetric``: activations with zero point 0 (TensorRT); ``reduce_range``: 7-bit weights.
    Softmax outputs are quantized over their calibrated range, as every other activation (and
    edgex's simulated reference) is, not over onnxruntime's fixed [0, 1] (:func:`_softmax_ranges`).
    Mixed precision: the layers ``request.layers_kept_wider("float")`` names stay float (their
    nodes excluded from quantization: float weights, float values inside; what crosses into an
    int8 node or an output is still quantized there), recorded in the file's ``KEPT_WIDER_KEY``
    metadata; returns what was kept (:func:`kept_float_nodes`), or None for full int8.
    ``scopes`` maps the float export's node names to torch modules (:func:`node_scopes`; default:
    ``source``'s): pass it where ``source`` went through onnxruntime's optimizer already, which
    drops the exporter's scope metadata. ``guard_float_weights``: the file runs on onnxruntime
    with its QDQ fusions, which quantize a kept Conv/Gemm's float weights themselves where it
    reads a DequantizeLinear and feeds a QuantizeLinear (:func:`guard_float_weights_of`).
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not request.calibration:
        raise UsageError("int8 needs calibration data: pass --calibration FILE|DIR")
    scopes = node_scopes(source) if scopes is None else scopes
    prepared = dest.with_name(dest.stem + ".preprocessed.onnx")
    quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
    try:
        graph = onnx.load(str(prepared)).graph
        names = [i.name for i in graph.input]
        # the layers kept float, asked with the scheme the artifact will report (describe_onnx)
        layers = request.layers_kept_wider("float", quantization=int8_scheme(7 if reduce_range else 8, symmetric, float_recurrent_graph(graph)))
        kept = kept_float_nodes(graph, scopes, layers) if layers is not None else None
        excluded = set(kept["nodes"]) if kept else set()
        overrides = {
            tensor: [{"rmin": np.float32(low), "rmax": np.float32(high)}]
            for tensor, (low, high) in _softmax_ranges(prepared, graph, excluded, names, request.calibration).items()
        }
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
                nodes_to_exclude=sorted(excluded) or None,
                extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True, **({"TensorQuantOverrides": overrides} if overrides else {})},
            )
    finally:
        prepared.unlink(missing_ok=True)
    if kept and kept["modules"]:
        model = onnx.load(str(dest))
        kept["guarded"] = guard_float_weights_of(model, kept["nodes"]) if guard_float_weights else []
        entry = model.metadata_props.add()
        entry.key, entry.value = KEPT_WIDER_KEY, json.dumps({"modules": kept["modules"], "as": "float", "chosen_by": kept["chosen_by"], "nodes": kept["nodes"]})
        onnx.save(model, str(dest))
    return kept


def _softmax_ranges(prepared: Path, graph: Any, excluded: set[str], names: Sequence[str], calibration: Sequence[tuple[np.ndarray, ...]]) -> dict[str, tuple[float, float]]:
    """The calibrated (0, max) of each quantized Softmax's output: onnxruntime's quantizer sets a
    Softmax output's range to [0, 1] whatever the calibration saw, where an attention's
    probabilities over many tokens span a tenth of it (3 of the 8 bits lost, which a value
    carrying large offsets multiplies). Quantized over its calibrated range, as edgex's simulated
    reference quantizes it, the int8 artifact keeps them (a float pass over the calibration data)."""
    import onnx
    import onnxruntime as ort

    outputs = [n.output[0] for n in graph.node if n.op_type == "Softmax" and n.name not in excluded and n.output]
    if not outputs:
        return {}
    model = onnx.load(str(prepared))
    existing = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.ValueInfoProto(name=name) for name in outputs if name not in existing)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    highest = dict.fromkeys(outputs, 0.0)
    for batch in calibration:
        for name, value in zip(outputs, session.run(outputs, dict(zip(names, batch)))):
            if np.size(value):
                highest[name] = max(highest[name], float(np.max(value)))
    return {name: (0.0, high) for name, high in highest.items() if high > 0.0}


# --------------------------------------------------------------------------- mixed precision

#: the metadata_props entry of an int8 .onnx that keeps layers float (mixed precision): JSON with
#: the torch ``modules`` kept, ``as`` ("float") and the ONNX ``nodes`` left unquantized.
#: describe_onnx reads it back into ``ArtifactIO.quantization["kept_wider"]``, so that ``edgex
#: validate`` of the file simulates the same mixed scheme as the conversion did
KEPT_WIDER_KEY = "edgex.kept_wider"

#: ops that only move values: one without a scope of its own (onnxruntime's optimizer inserts
#: Reshapes around a 3-D Gemm) whose input comes from a kept node and whose every reader is
#: kept lies inside the kept layers and stays float with them
_MOVES_VALUES = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity"})
#: the suffix onnxruntime's GenerateNodeName adds to keep a node name unique
_NAME_TOKEN = re.compile(r"_token_\d+$")


def node_scopes(path: Path) -> dict[str, str]:
    """Each node of an ONNX export (by name) -> the torch module it belongs to (``onnx_node_scope``:
    the dynamo exporter's metadata, the TorchScript exporter's node name); read from the export
    before onnxruntime's optimizer (``quant_pre_process``, ``fold_static``) drops the metadata."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return {node.name: scope for node in graph.node if node.name and (scope := onnx_node_scope(node))}


def _scope_of(node: Any, scopes: Mapping[str, str]) -> str | None:
    """The torch module of a node of an optimized graph: its own scope metadata, else the export's
    node of the same name (onnxruntime's fusions name a fused node ``<first node>/<Name>Fusion``,
    its new nodes ``<name>_token_<n>``); None where neither says (those stay int8)."""
    own = onnx_node_scope(node, by_name=False)
    if own:
        return own
    name = node.name
    while name:
        if name in scopes:
            return scopes[name]
        head, sep, tail = name.rpartition("/")
        if _NAME_TOKEN.search(name):
            name = _NAME_TOKEN.sub("", name)
        elif sep and head and tail.endswith("Fusion"):
            name = head
        else:
            return None
    return None


def kept_float_nodes(graph: Any, scopes: Mapping[str, str], layers: WiderLayers) -> dict[str, Any]:
    """The nodes of ``graph`` (the graph handed to the quantizer) that ``layers`` keeps float: each
    whose torch module (:func:`_scope_of`) ``layers.holds``, and each scope-less value-moving
    node between kept ones. Returns ``modules`` (those of ``layers.modules`` some node belongs to:
    what the artifact really keeps float), ``missing`` (the others), ``nodes`` (their names) and
    ``chosen_by``, ``macs_share``, ``sqnr_before_db``, ``sqnr_db`` as ``layers`` says them."""
    held: dict[str, str] = {}
    for node in graph.node:
        scope = _scope_of(node, scopes)
        if node.name and layers.holds(scope):
            held[node.name] = scope or ""
    producers = {out: node for node in graph.node for out in node.output}
    readers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    grown = True
    while grown:
        grown = False
        for node in graph.node:
            if not node.name or node.name in held or node.op_type not in _MOVES_VALUES or not node.input or _scope_of(node, scopes) is not None:
                continue
            source = producers.get(node.input[0])
            after = [r for out in node.output for r in readers.get(out, ())]
            if source is not None and source.name in held and after and all(r.name in held for r in after) and not outputs.intersection(node.output):
                held[node.name] = held[source.name]
                grown = True
    # a module is kept where some node it holds (as ``layers.holds`` reads a scope) was found
    modules = [m for m in layers.modules if any(replace(layers, modules=(m,)).holds(scope) for scope in held.values())]
    return {
        "modules": modules,
        "missing": [m for m in layers.modules if m not in modules],
        "nodes": [node.name for node in graph.node if node.name in held],
        "chosen_by": layers.chosen_by,
        "macs_share": layers.macs_share,
        "sqnr_before_db": layers.sqnr_before_db,
        "sqnr_db": layers.sqnr_db,
    }


def guard_float_weights_of(model: Any, kept: Sequence[str]) -> list[str]:
    """Keep the float weights of the kept Conv/ConvTranspose/Gemm nodes float on onnxruntime.

    onnxruntime's QDQ optimizer (``WeightBiasQuantization``, on by default with its QDQ fusions)
    quantizes the float weights of a Conv, ConvTranspose or Gemm that reads a DequantizeLinear
    and feeds a QuantizeLinear (directly, or through ReLU / Clip, or ops its QDQ propagation
    moves the QuantizeLinear over), per tensor, when the session loads: a layer kept float alone
    between int8 layers would run int8 with coarser weights than the quantizer's. A one-input
    Sum (an identity no optimizer removes) after each such node keeps it float as written, the
    same values the file means. Returns the guarded nodes' names (``model`` is changed)."""
    from onnx import helper

    kept_names = set(kept)
    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}

    readers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)

    def reads_dequantized(node: Any) -> bool:
        source = producers.get(node.input[0]) if node.input else None
        while source is not None and source.op_type in _MOVES_VALUES:  # DequantizeLinear propagates down these
            source = producers.get(source.input[0]) if source.input else None
        return source is not None and source.op_type == "DequantizeLinear"

    def feeds_quantize(node: Any) -> bool:
        while len(node.output) == 1 and len(after := readers.get(node.output[0], [])) == 1:
            node = after[0]
            if node.op_type == "QuantizeLinear":
                return True
            if node.op_type not in _MOVES_VALUES and node.op_type not in ("Relu", "Clip"):  # QuantizeLinear propagates up _MOVES_VALUES
                return False
        return False

    guarded, nodes = [], []
    for node in graph.node:
        nodes.append(node)
        if node.name in kept_names and node.op_type in ("Conv", "ConvTranspose", "Gemm") and len(node.output) == 1 and reads_dequantized(node) and feeds_quantize(node):
            value = node.output[0]
            node.output[0] = f"{value}/float"
            # named apart from the exporter's module paths ("/blocks/...") that onnx_node_scope reads
            nodes.append(helper.make_node("Sum", [node.output[0]], [value], name=f"keeps_float({node.name})"))
            guarded.append(node.name)
    del graph.node[:]
    graph.node.extend(nodes)
    return guarded


def kept_float_messages(kept: dict[str, Any] | None) -> tuple[list[str], dict[str, Any]]:
    """The conversion's messages and details entry for what :func:`to_int8_qdq` kept float."""
    if not kept:
        return [], {}
    messages = []
    if kept["modules"]:
        shown = ", ".join(kept["nodes"][:8]) + (f", ... ({len(kept['nodes'])} in all)" if len(kept["nodes"]) > 8 else "")
        messages.append(f"kept float: {len(kept['nodes'])} ONNX nodes of {', '.join(kept['modules'])} (left out of quantization: {shown})")
        if kept.get("guarded"):
            messages.append(f"{', '.join(kept['guarded'])}: a one-input Sum after each keeps its weights float on onnxruntime, whose QDQ optimizer would quantize them per tensor at load")
    if kept["missing"]:
        messages.append(f"not kept float: no ONNX node carries the scope of {', '.join(kept['missing'])} (the exporter or onnxruntime's optimizer lost it); those layers stay int8")
    return messages, {"kept_float": {"modules": kept["modules"], "missing": kept["missing"], "onnx_nodes": kept["nodes"], "guarded": kept.get("guarded", []), "chosen_by": kept["chosen_by"]}}


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
        scheme = int8_scheme(weight_bits(model), symmetric_activations(model), float_recurrent(model))
        kept = kept_wider(model)
        if kept is not None:
            scheme.update(kept.quantization())
    return ArtifactIO(Path(path), precision, tuple(inputs), tuple(outputs), scheme)


def int8_scheme(weight_bits: int, symmetric: bool, recurrent_float: bool) -> dict[str, Any]:
    """``ArtifactIO.quantization`` of a QDQ int8 artifact (mixed precision aside)."""
    # AveragePool's output keeps its input's scale (onnxruntime's QDQDirect8BitOp)
    scheme: dict[str, Any] = {"weight_bits": weight_bits, "symmetric_activations": symmetric, "on_input_grid": list(AVERAGE_POOLS)}
    if recurrent_float:  # onnxruntime's static QDQ quantizer leaves LSTM / GRU / RNN float
        scheme["recurrent"] = "float"
    return scheme


def kept_wider(model: Any) -> WiderLayers | None:
    """The layers an int8 .onnx of edgex keeps float, as its ``KEPT_WIDER_KEY`` metadata says; None
    where it has none (full int8). Metadata edgex did not write is a UsageError: the verdict's
    simulation must quantize as the file does."""
    entry = next((p.value for p in model.metadata_props if p.key == KEPT_WIDER_KEY), None)
    if entry is None:
        return None
    try:
        found = json.loads(entry)
        modules = tuple(str(m) for m in found["modules"])
    except (ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"the ONNX file's {KEPT_WIDER_KEY} metadata is not what edgex writes: {one_line(exc)}") from exc
    return WiderLayers(modules, str(found.get("as", "float")), str(found.get("chosen_by", "target"))) if modules else None


def float_recurrent(model: Any) -> bool:
    """Whether the graph holds a recurrent op (LSTM, GRU, RNN) and every one reads its weights as
    float initializers: onnxruntime's static quantizer has no QDQ form for them (LSTM is only in
    its dynamic IntegerOps registry), so they run float32 and what reads them is quantized."""
    return float_recurrent_graph(model.graph)


def float_recurrent_graph(graph: Any) -> bool:
    """:func:`float_recurrent` of a graph (a float graph's: whether it holds recurrent ops, which
    its int8 QDQ version keeps float)."""
    initializers = {i.name: i for i in graph.initializer}
    recurrent = [n for n in graph.node if n.op_type in ("LSTM", "GRU", "RNN")]
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
