"""Target ``executorch`` (aliases ``pte``, ``pytorch-mobile``): an ExecuTorch program (``.pte``).

``torch.export`` -> ``to_edge_transform_and_lower`` -> ``to_executorch``. With the default
``--executorch-backend xnnpack`` every op the XNNPACK partitioner takes is lowered to the XNNPACK
delegate and the rest runs on ExecuTorch's portable kernels; ``portable`` lowers nothing (for
devices built without XNNPACK, such as MCUs). ``fp16``: the model and its inputs in half
precision, lowered the same way. ``int8``: PT2E static quantization with ExecuTorch's XNNPACK
quantizer on the calibration data (per-channel symmetric int8 weights, per-tensor affine int8
activations with min/max ranges: the scheme edgex's own int8 reference simulates), inputs and
outputs float with the quantize/dequantize inside the program.

Mixed precision (``keeps_wider=("float",)``): where edgex's simulation says full int8 misses its
floor (or with ``--keep-wider``), the quantizer annotates no op of the layers it names (their
innermost module; a filter function, as executorch 1.5's ``set_module_name`` takes no None): they
stay float32 ops on float32 weights, which XNNPACK delegates as such, and an int8 op reading their
values quantizes them at its own input. The stamp's quantization records them (``kept_wider``).

Validated on the ExecuTorch runtime's Python bindings (``executorch.runtime``), which run the same
C++ runtime, portable kernels and XNNPACK delegate a device links. The report says which ops were
delegated and which fell back to portable kernels, and the program's planned memory.

A ``.pte`` holds no tensor names: edgex stamps a constant method ``edgex_metadata`` (a JSON
string: precision, names, quantization) into the program so that ``edgex validate`` reads an
artifact back as it was converted. ExecuTorch ignores methods it is not asked to run.

``edgex explain`` runs the .pte on the same runtime with ETDump recording each instruction's
output; an ETRecord (the edge program and its debug handles) lets ExecuTorch's Inspector map
every event back to torch modules. Convert writes one beside the .pte only with
``--executorch-etrecord`` (it costs a copy of the edge program, and a device needs none);
without it, explain rebuilds one by lowering the reference again. Portable kernels show every
op's output; an XNNPACK delegate call shows only its own outputs.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from edgex.plugins import (
    __version__,
    one_line,
    package_version,
    Artifact,
    ArtifactIO,
    ArtifactTrace,
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
    UsageError,
    WiderLayers,
    hookimpl,
)

#: the constant method edgex writes into every .pte it converts (a JSON string)
METADATA_METHOD = "edgex_metadata"
BACKENDS = ("xnnpack", "portable")

TARGETS = (
    TargetSpec(
        name="executorch",
        aliases=("pte", "pytorch-mobile"),
        description="ExecuTorch program (.pte): XNNPACK delegate + portable kernels, validated on the ExecuTorch runtime",
        artifact_kinds=(".pte",),
        precisions=("fp32", "fp16", "int8"),
        default_precision="fp32",
        options=(
            TargetOption(
                "executorch_backend",
                "executorch: xnnpack (lower every op XNNPACK takes to its delegate) or portable (portable kernels only, for devices without XNNPACK)",
                str, "xnnpack", BACKENDS,
            ),
            TargetOption(
                "executorch_etrecord",
                "executorch: also write the ETRecord beside the .pte (model.etrecord), for ExecuTorch's Inspector on ETDumps "
                "recorded on a device; edgex explain rebuilds one from the reference when none is there",
                bool, False,
            ),
        ),
        accepts=("torch",),
        # mixed precision: the XNNPACK quantizer leaves the kept modules' ops unannotated, so they
        # stay float32 ops (float weights) that XNNPACK delegates as such; what an int8 op reads
        # from them is quantized at its input as before
        keeps_wider=("float",),
    ),
)

#: nodes get_delegation_info counts that are no kernel: reading one result of a delegate call
_NOT_KERNELS = frozenset({"getitem"})


@hookimpl
def edgex_targets():
    return TARGETS


@hookimpl
def edgex_backend_status(target: str) -> BackendStatus:
    missing = [p for p in ("executorch", "torchao") if importlib.util.find_spec(p) is None]
    if missing:
        return BackendStatus(False, "ExecuTorch", "pip install 'edgex[executorch]'", f"{', '.join(missing)} not installed")
    return BackendStatus(True, f"ExecuTorch {package_version('executorch')} runtime (Python bindings): XNNPACK delegate + portable kernels")


# --------------------------------------------------------------------------- converting


def _torch_inputs(arrays: Sequence[np.ndarray], dtype: Any = None) -> tuple[Any, ...]:
    import torch

    # a fresh copy has the standard strides: a numpy view such as x[:, None] of shape (1, 1, 8, 8)
    # keeps strides torch.export reads as a channels-last dim order, which the program then demands
    tensors = tuple(torch.from_numpy(np.array(a, copy=True, order="C")) for a in arrays)
    return tuple(t.to(dtype) if dtype is not None and t.is_floating_point() else t for t in tensors)


def _export(module: Any, args: tuple[Any, ...], what: str) -> Any:
    import torch

    try:
        return torch.export.export(module, args)
    except Exception as exc:
        raise TargetError(f"torch.export failed on the {what} model: {one_line(exc)}", stage="convert") from exc


def _calibration_batches(model: ReferenceModel, calibration: Sequence[tuple[np.ndarray, ...]] | None) -> list[tuple[np.ndarray, ...]]:
    """The calibration data cut into batches of the example input's batch size (the exported
    graph's shapes are static)."""
    size = int(model.example_inputs[0].shape[0]) if model.example_inputs[0].ndim else 1
    batches = []
    for batch in calibration or ():
        count = len(batch[0])
        batches.extend(tuple(a[start : start + size] for a in batch) for start in range(0, count - size + 1, size))
    if not batches:
        raise UsageError("executorch int8 needs calibration data (--calibration or --example-inputs)")
    return batches


def xnnpack_quantizer(layers: WiderLayers | None = None) -> Any:
    """ExecuTorch's XNNPACK quantizer, per-channel symmetric int8 weights and per-tensor affine int8
    activations; activations calibrated by min/max (its default histogram observer clips
    outliers by an L2 search, a scheme edgex's independent int8 reference does not simulate).
    With ``layers`` (mixed precision) it annotates no op of the modules they hold: those stay
    float32 ops with float weights, and an int8 op reading one of their values quantizes it at its
    own input, as edgex's simulation keeps a kept layer's boundary int8."""
    from dataclasses import replace

    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer, get_symmetric_quantization_config
    from torchao.quantization.pt2e.observer import MinMaxObserver

    config = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False)
    activation = replace(config.input_activation, observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=2**-12))
    quantizer = XNNPACKQuantizer().set_global(replace(config, input_activation=activation, output_activation=activation))
    if layers is not None and layers.modules:
        # XNNPACKQuantizer.set_module_name(name, None) is refused in executorch 1.5 ("quantization_config
        # == None is not supported yet"); its filter function, applied to every pattern, leaves them out
        quantizer.set_filter_function(lambda node: not held(node, layers))
    return quantizer


def module_paths(node: Any) -> list[str]:
    """The torch module paths a graph node lies in (torch.export's ``nn_module_stack``), outermost first."""
    return [str(path).removeprefix("L['self'].") for path, _ in (node.meta.get("nn_module_stack") or {}).values()]


def held(node: Any, layers: WiderLayers) -> bool:
    """Whether the graph node is an op of a module the mixed-precision artifact keeps float (its
    innermost module, as ``WiderLayers.holds`` reads an op)."""
    paths = module_paths(node)
    return bool(paths) and layers.holds(paths[-1])


#: the ops whose weights the XNNPACK quantizer makes int8: what a kept layer keeps float
_WEIGHTED_OPS = ("linear", "conv1d", "conv2d", "convolution", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d")


def _kept_float(graph: Any, layers: WiderLayers) -> dict[str, Any]:
    """What the PT2E-converted graph keeps float of ``layers``: each held op by kind, and the
    weighted ops among them whose weight is read without a dequantize (float32 weights). Raises a
    usage error where no op of the model is held (modules the model lacks: nothing kept float)."""
    ops: Counter[str] = Counter()
    float_weights: list[str] = []
    for node in graph.nodes:
        if node.op != "call_function" or not held(node, layers):
            continue
        kind = getattr(node.target, "__name__", str(node.target)).split(".")[0]
        if "quantize" in kind:  # the boundary quantize / dequantize pairs PT2E inserts around them
            continue
        ops[kind] += 1
        if kind in _WEIGHTED_OPS and len(node.args) > 1:
            weight = node.args[1]
            if "dequantize" not in str(getattr(weight, "target", "")):
                float_weights.append(module_paths(node)[-1])
    if not ops:
        raise UsageError(
            f"mixed precision: no op of the model belongs to {', '.join(layers.modules)} (torch module paths as the model names them, "
            "e.g. blocks.0.attn): nothing to keep float"
        )
    return {"modules": list(layers.modules), "as": layers.wider_as, "chosen_by": layers.chosen_by, "float_ops": dict(sorted(ops.items())), "float_weight_ops": float_weights}


def _quantized_program(model: ReferenceModel, batches: Sequence[tuple[np.ndarray, ...]], exported: Any,
                       layers: WiderLayers | None = None) -> tuple[Any, list[QuantParams | None], dict[str, Any] | None]:
    """The PT2E int8 program, the grid each output's float value lies on (its last dequantize),
    and what it keeps float of ``layers`` (:func:`_kept_float`; None without them)."""
    import torch
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    args = _torch_inputs(model.example_inputs)
    try:
        prepared = prepare_pt2e(exported.module(), xnnpack_quantizer(layers))
        with torch.no_grad():
            for batch in batches:
                prepared(*_torch_inputs(batch))
        converted = convert_pt2e(prepared)
        kept = _kept_float(converted.graph, layers) if layers is not None and layers.modules else None
    except UsageError:
        raise
    except Exception as exc:
        raise TargetError(f"PT2E quantization with the XNNPACK quantizer failed: {one_line(exc)}", stage="convert") from exc
    program = _export(converted, args, "quantized")
    output = next(n for n in program.graph.nodes if n.op == "output")
    grids: list[QuantParams | None] = []
    for node in output.args[0]:
        target = str(getattr(node, "target", ""))
        if "dequantize_per_tensor" in target and len(node.args) >= 3 and isinstance(node.args[1], float):
            grids.append(QuantParams(float(node.args[1]), int(node.args[2]), "int8"))
        else:
            grids.append(None)
    return program, grids, kept


def _delegation(edge_graph: Any) -> dict[str, Any]:
    """Which ops the delegate took and which run on portable kernels (counts by op), from the
    lowered graph (ExecuTorch's ``get_delegation_info``)."""
    from executorch.devtools.backend_debug import get_delegation_info

    info = get_delegation_info(edge_graph)
    delegated: dict[str, int] = {}
    portable: dict[str, int] = {}
    for name, row in sorted(info.delegation_by_operator.items()):
        if name in _NOT_KERNELS:
            continue
        if row.delegated:
            delegated[name] = row.delegated
        if row.non_delegated:
            portable[name] = row.non_delegated
    return {
        "delegated_subgraphs": info.num_delegated_subgraphs,
        "ops_total": sum(delegated.values()) + sum(portable.values()),
        "ops_delegated": sum(delegated.values()),
        "delegated_ops": delegated,
        "portable_ops": portable,
    }


def delegation_summary(delegation: Mapping[str, Any], backend: str) -> str:
    """One sentence: how many ops the delegate runs and which fell back to portable kernels."""
    portable = delegation["portable_ops"]
    fallback = ", ".join(f"{name} x{count}" for name, count in portable.items())
    if backend == "portable":
        return f"portable kernels only (--executorch-backend portable): {delegation['ops_total']} ops ({fallback or 'none'})"
    head = f"XNNPACK delegate: {delegation['ops_delegated']} of {delegation['ops_total']} ops in {delegation['delegated_subgraphs']} delegated subgraph(s)"
    if not portable:
        return head + "; none fell back to portable kernels"
    return head + f"; {sum(portable.values())} fell back to portable kernels: {fallback}"


@dataclass(frozen=True)
class Lowered:
    """One lowering of a torch model to an ExecuTorch program, and what it says about itself."""

    program: Any
    delegation: dict[str, Any]
    grids: list[QuantParams | None]
    record: Any  # the ETRecord, when asked for
    #: what a mixed-precision int8 program keeps float (``_kept_float``); None for full int8
    kept_float: dict[str, Any] | None = None


def _backend(name: str | None, precision: str) -> str:
    backend = name or "xnnpack"
    if backend not in BACKENDS:
        raise UsageError(f"--executorch-backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if precision == "int8" and backend != "xnnpack":
        raise UsageError("executorch int8 runs on the XNNPACK delegate: use --executorch-backend xnnpack (without a delegate the quantized program computes its convolutions in float between quantize/dequantize ops)")
    return backend


def lower(model: ReferenceModel, precision: str, backend: str, calibration: Sequence[tuple[np.ndarray, ...]] | None,
          stamp: Mapping[str, Any], etrecord: bool, layers: WiderLayers | None = None) -> Lowered:
    """torch.export (PT2E-quantized at int8, ``layers`` left float) -> to_edge_transform_and_lower
    -> to_executorch, with edgex's stamp as a constant method. The ETRecord costs a copy of the
    edge program (about a tenth of ResNet-18's lowering), so it is made only when asked for."""
    import torch
    from executorch.exir import to_edge_transform_and_lower

    grids: list[QuantParams | None] = [None] * len(model.output_names)
    kept = None
    if precision == "fp16":
        module = copy.deepcopy(model.module).half()
        exported = _export(module, _torch_inputs(model.example_inputs, torch.float16), "fp16")
    else:
        exported = _export(model.module, _torch_inputs(model.example_inputs), "float")
    if precision == "int8":
        exported, grids, kept = _quantized_program(model, _calibration_batches(model, calibration), exported, layers)
    partitioners = []
    if backend == "xnnpack":
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

        partitioners.append(XnnpackPartitioner())
    stamp = {**stamp, "output_grids": [g.to_json() if g else None for g in grids]}
    try:
        edge = to_edge_transform_and_lower(
            exported, partitioner=partitioners, constant_methods={METADATA_METHOD: json.dumps(stamp)}, generate_etrecord=etrecord
        )
        delegation = _delegation(edge.exported_program().graph_module)
        program = edge.to_executorch()
        record = program.get_etrecord() if etrecord else None
    except Exception as exc:
        raise TargetError(f"ExecuTorch lowering ({backend}) failed: {one_line(exc)}", stage="convert") from exc
    if record is not None:
        # explain maps events through the edge program; the aten program would only double the file
        record.exported_program = None
    return Lowered(program, delegation, grids, record, kept)


@hookimpl
def edgex_convert(request: ConversionRequest) -> ConversionResult:
    model = request.model
    if model.module is None:
        raise UsageError("executorch converts from a torch model (torch.export); an ONNX reference has none")
    backend = _backend(request.options.get("executorch_backend"), request.precision)
    # edgex's plain int8 scheme, said explicitly: 8-bit weights ([-127, 127]), affine activations;
    # XNNPACK's quantizer shares adaptive_avg_pool2d's output grid with its input (SharedQuantizationSpec)
    # XNNPACKQuantizer annotates no recurrent op: aten.lstm stays float32 (weights too), decomposed
    # and delegated to XNNPACK as fp32 ops; only what reads its output quantizes it
    quantization = {"weight_bits": 8, "symmetric_activations": False, "on_input_grid": ["adaptive_avg_pool2d"], "recurrent": "float"} if request.precision == "int8" else {}
    # mixed precision: the layers edgex's simulation (or --keep-wider) keeps float, recorded in the
    # stamp's quantization so that a .pte described again (edgex validate) says it too
    layers = request.layers_kept_wider("float", quantization=quantization) if request.precision == "int8" else None
    if layers is not None and layers.modules:
        quantization = {**quantization, **layers.quantization()}
    else:
        layers = None
    stamp = {"edgex": __version__, "precision": request.precision, "backend": backend,
             "inputs": [s.name for s in model.inputs], "outputs": list(model.output_names), "quantization": quantization}
    lowered = lower(model, request.precision, backend, request.calibration, stamp, bool(request.options.get("executorch_etrecord")), layers)
    program = lowered.program
    path = request.workdir / ("model.pte" if request.precision == "fp32" else f"model_{request.precision}.pte")
    path.write_bytes(program.buffer)

    planned = [int(s) for s in _forward(program.executorch_program).non_const_buffer_sizes]  # entry 0 is reserved by ExecuTorch (always 0)
    io = describe_pte(path, model)
    converter = f"torch.export -> executorch {package_version('executorch')} to_edge_transform_and_lower ({'XnnpackPartitioner' if backend == 'xnnpack' else 'no partitioner'}) -> to_executorch"
    if request.precision == "int8":
        converter = "PT2E (XNNPACKQuantizer, min/max calibration) -> " + converter
    messages = [delegation_summary(lowered.delegation, backend), f"planned memory (activations): {sum(planned)} bytes"]
    details = {"executorch": {"backend": backend, "delegation": lowered.delegation, "planned_memory_bytes": sum(planned), "planned_buffers": planned[1:]}}
    if lowered.kept_float is not None:
        kept = lowered.kept_float
        details["executorch"]["kept_float"] = kept
        ops = ", ".join(f"{name} x{count}" for name, count in kept["float_ops"].items())
        messages.append(
            f"kept float (not annotated by the XNNPACK quantizer; float32 ops, {len(kept['float_weight_ops'])} with float32 weights): "
            f"{', '.join(kept['modules'])} ({ops})"
        )
    artifacts = [Artifact(path, "pte")]
    if lowered.record is not None:
        try:
            lowered.record.save(str(etrecord_path(path)))
            artifacts.append(Artifact(etrecord_path(path), "etrecord"))
        except Exception as exc:  # the .pte is sound without it
            etrecord_path(path).unlink(missing_ok=True)
            messages.append(f"no ETRecord written ({one_line(exc)}): edgex explain rebuilds one from the reference; ExecuTorch's Inspector needs it for a device's ETDump")
    return ConversionResult(tuple(artifacts), io, converter, tuple(messages), details)


# --------------------------------------------------------------------------- reading a .pte


def _load_program(path: Path) -> Any:
    """The program on the ExecuTorch runtime; a corrupt or foreign file is a one-line usage error."""
    from executorch.runtime import Runtime

    try:
        return Runtime.get().load_program(str(path))
    except Exception as exc:
        raise UsageError(f"{path.name} is not a readable ExecuTorch program ({one_line(exc)}): convert it again or check the file") from exc


def _metadata(program: Any, path: Path) -> dict[str, Any]:
    if METADATA_METHOD not in program.method_names:
        return {}
    try:
        (text,) = program.load_method(METADATA_METHOD).execute([])
        return json.loads(text)
    except Exception as exc:
        raise UsageError(f"{path.name}: its {METADATA_METHOD} method is not edgex's JSON ({one_line(exc)})") from exc


#: c10 ScalarType codes, as the runtime's TensorInfo.dtype() returns them
_DTYPES = {0: "uint8", 1: "int8", 2: "int16", 3: "int32", 4: "int64", 5: "float16", 6: "float32", 7: "float64", 11: "bool"}


def _tensor_meta(info: Any, path: Path) -> tuple[tuple[int, ...], str]:
    """(shape, numpy dtype name) of a runtime TensorInfo."""
    code = int(info.dtype())
    if code not in _DTYPES:
        raise UsageError(f"{path.name}: a forward input or output has dtype code {code}, which edgex cannot feed or compare")
    return tuple(int(d) for d in info.sizes()), _DTYPES[code]


def describe_pte(path: Path, reference: ReferenceModel) -> ArtifactIO:
    """The forward method's inputs and outputs, named by edgex's stamp (else the reference's
    names in order), and the precision the stamp records (else read from the I/O dtype)."""
    program = _load_program(path)
    if "forward" not in program.method_names:
        raise UsageError(f"{path.name} has no 'forward' method (it has {', '.join(sorted(program.method_names))})")
    stamp = _metadata(program, path)
    meta = program.metadata("forward")
    inputs = [_tensor_meta(meta.input_tensor_meta(i), path) for i in range(meta.num_inputs())]
    outputs = [_tensor_meta(meta.output_tensor_meta(i), path) for i in range(meta.num_outputs())]

    def names(key: str, fallback: Sequence[str], count: int, prefix: str) -> list[str]:
        given = list(stamp.get(key) or fallback)
        return given if len(given) == count else [f"{prefix}_{i}" for i in range(count)]

    input_names = names("inputs", [s.name for s in reference.inputs], len(inputs), "input")
    output_names = names("outputs", reference.output_names, len(outputs), "output")
    grids = list(stamp.get("output_grids") or [None] * len(outputs))
    grids += [None] * (len(outputs) - len(grids))
    precision = stamp.get("precision") or ("fp16" if any(d == "float16" for _, d in inputs) else "fp32")
    return ArtifactIO(
        path=Path(path),
        precision=precision,
        quantization=dict(stamp.get("quantization") or {}),
        inputs=tuple(TensorBinding(n, shape, dtype, perm=tuple(range(len(shape)))) for n, (shape, dtype) in zip(input_names, inputs)),
        outputs=tuple(
            TensorBinding(n, shape, dtype, perm=tuple(range(len(shape))), quant=QuantParams(g["scale"], g["zero_point"], g["dtype"]) if g else None)
            for n, (shape, dtype), g in zip(output_names, outputs, grids)
        ),
    )


@hookimpl
def edgex_describe_artifact(target: str, path: Path, reference: ReferenceModel) -> ArtifactIO:
    return describe_pte(Path(path), reference)


def _forward(program: Any) -> Any:
    """The forward method's execution plan in an ExecuTorch program (its flatbuffer schema)."""
    return next(p for p in program.execution_plan if p.name == "forward")


def _forward_plan(path: Path) -> Any:
    """The forward method's execution plan, as the file holds it."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    return _forward(deserialize_pte_binary(Path(path).read_bytes()).program)


def _instructions(plan: Any) -> list[str]:
    """Each instruction of an execution plan, as its kind and what it calls."""
    named = []
    for chain in plan.chains:
        for instruction in chain.instructions:
            args = instruction.instr_args
            kind = type(args).__name__
            if kind == "DelegateCall":
                kind += ":" + plan.delegates[args.delegate_index].id
            elif kind == "KernelCall":
                op = plan.operators[args.op_index]
                kind += f":{op.name}.{op.overload}" if op.overload else f":{op.name}"
            named.append(kind)
    return named


def program_layout(path: Path) -> dict[str, Any]:
    """What the file itself says runs where: delegate calls by backend, kernel calls by operator
    (the portable kernels), and the memory planned for activations."""
    return _layout(_forward_plan(path))


def _layout(plan: Any) -> dict[str, Any]:
    delegates: Counter[str] = Counter()
    kernels: Counter[str] = Counter()
    for instruction in _instructions(plan):
        kind, _, called = instruction.partition(":")
        if kind == "DelegateCall":
            delegates[called] += 1
        elif kind == "KernelCall":
            kernels[called] += 1
    planned = [int(s) for s in plan.non_const_buffer_sizes]
    return {"delegate_calls": dict(delegates), "portable_kernel_calls": dict(sorted(kernels.items())), "planned_memory_bytes": sum(planned)}


# --------------------------------------------------------------------------- running


def _to_numpy(value: Any) -> np.ndarray:
    return value.detach().numpy().copy() if hasattr(value, "numpy") else np.asarray(value)


def _execute(method: Any, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    try:
        outputs = method.execute(list(_torch_inputs(inputs)))
    except Exception as exc:
        raise TargetError(f"the ExecuTorch runtime failed to run forward: {one_line(exc)}", stage="validate") from exc
    return [_to_numpy(o) for o in outputs]


class ExecuTorchRuntime:
    """A .pte's forward method on the ExecuTorch runtime's Python bindings."""

    def __init__(self, path: Path):
        import torch  # noqa: F401  (the bindings take and return torch tensors)

        program = _load_program(path)
        try:
            self.method = program.load_method("forward")
        except Exception as exc:
            raise TargetError(f"the ExecuTorch runtime cannot load {Path(path).name}'s forward method: {one_line(exc)}", stage="validate") from exc
        self.layout = program_layout(path)
        delegates = ", ".join(sorted(self.layout["delegate_calls"])) or "no delegate"
        self.backend = f"ExecuTorch {package_version('executorch')} runtime (Python bindings): {delegates} + portable kernels, CPU"

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        return _execute(self.method, inputs)

    def details(self) -> dict[str, Any]:
        return {"executorch_program": self.layout}


@hookimpl
def edgex_load_runtime(target: str, io: ArtifactIO, options: Mapping[str, Any]) -> ExecuTorchRuntime:
    return ExecuTorchRuntime(io.path)


# --------------------------------------------------------------------------- explaining


def etrecord_path(pte: Path) -> Path:
    """The ETRecord convert writes beside a .pte (``model.pte`` -> ``model.etrecord``)."""
    return Path(pte).with_suffix(".etrecord")


#: bytes per element of the c10 ScalarType codes (_DTYPES), to size the ETDump debug buffer
_ELEMENT_BYTES = {0: 1, 1: 1, 2: 2, 3: 4, 4: 8, 5: 2, 6: 4, 7: 8, 11: 1, 15: 2}


def _debug_buffer_bytes(plan: Any) -> int:
    """Room for every intermediate tensor ETDump copies out of one run: the program's non-constant
    tensors, each padded, twice over (a delegate call logs its inputs as well as its outputs)."""
    total = 0
    for value in plan.values:
        tensor = value.val
        if type(tensor).__name__ == "Tensor" and tensor.data_buffer_idx == 0:
            count = int(np.prod([int(d) for d in tensor.sizes])) if tensor.sizes else 1
            total += count * _ELEMENT_BYTES.get(int(getattr(tensor.scalar_type, "value", tensor.scalar_type)), 8) + 64
    return 2 * total + (1 << 20)


def _record_fits(etrecord: Any, plan: Any) -> bool:
    """Whether the ETRecord's debug handles name this program's instructions: its delegate calls
    are the program's, and every instruction it maps is a kernel or delegate call. (The Inspector
    maps events by instruction index; weights do not enter the mapping.)"""
    kinds = [instruction.partition(":")[0] for instruction in _instructions(plan)]
    # the maps the Inspector itself reads, keyed by method, then by instruction index
    handles = (etrecord._debug_handle_map or {}).get("forward") or {}
    delegated = (etrecord._delegate_map or {}).get("forward") or {}
    calls = {str(i) for i, kind in enumerate(kinds) if kind == "DelegateCall"}
    mapped = all(str(i).isdigit() and int(i) < len(kinds) and kinds[int(i)] in ("KernelCall", "DelegateCall") for i in handles)
    return bool(handles) and mapped and set(delegated) == calls


def _event_modules(event: Any) -> tuple[str, ...]:
    """The innermost torch module of each graph node an Inspector event covers, in graph order."""
    modules = []
    for stack in event.module_hierarchy.values():
        if stack:
            modules.append(list(stack.values())[-1][0])
    return tuple(dict.fromkeys(modules))


class ExecuTorchTracer:
    """A .pte on the ExecuTorch runtime with ETDump recording every instruction's output, mapped to
    torch modules by ExecuTorch's Inspector through an ETRecord: the one beside the .pte, else one
    rebuilt from the reference.

    A portable kernel call logs its op's output; a delegate call logs only its own inputs and
    outputs (XNNPACK keeps the ops inside it to itself), so the modules a delegate computes share
    its output tensor, which holds the last of them (core reports the others as fused into it).
    """

    def __init__(self, io: ArtifactIO, reference: ReferenceModel):
        from executorch.devtools.etrecord import parse_etrecord

        self.path = Path(io.path)
        if any(b.dtype == "float16" for b in io.inputs) or io.precision == "fp16":
            # measured on executorch 1.5.1: flatc rejects the ETDump ("string contains non-utf8 bytes")
            raise UsageError(
                f"{self.path.name} is float16: ExecuTorch {package_version('executorch')}'s Inspector cannot read the ETDump of a "
                "float16 program with its intermediate tensors; explain the fp32 .pte of the same model"
            )
        program = _load_program(self.path)  # a corrupt or foreign .pte: one line
        plan = _forward_plan(self.path)
        layout = _layout(plan)
        record = etrecord_path(self.path)
        self.notes: tuple[str, ...] = ()
        if record.is_file():
            try:
                self.etrecord = parse_etrecord(str(record))
            except Exception as exc:
                raise UsageError(f"{record.name} is not a readable ETRecord ({one_line(exc)}): convert the model again") from exc
            if not _record_fits(self.etrecord, plan):
                raise UsageError(
                    f"{record.name} does not describe {self.path.name}'s instructions (an ETRecord from another conversion?): "
                    "remove it (explain then rebuilds one from the reference), or copy the ETRecord from the same conversion beside it"
                )
        else:
            self.etrecord = self._rebuilt_record(io, reference, _metadata(program, self.path), plan, layout)
            self.notes = (f"no {record.name} beside {self.path.name}: its ETRecord was rebuilt by lowering the reference again (the op-to-module map, not the weights)",)
        self.buffer_bytes = _debug_buffer_bytes(plan)
        delegates = layout["delegate_calls"]
        where = ", ".join(sorted(delegates)) or "no delegate"
        self.backend = f"ExecuTorch {package_version('executorch')} runtime (Python bindings): {where} + portable kernels, CPU, ETDump of every instruction's output"
        if delegates:
            calls = sum(delegates.values())
            portable = (
                "int8 needs XNNPACK, so no int8 program shows every layer" if io.precision == "int8"
                else "convert with --executorch-backend portable to see every layer"
            )
            self.notes += (
                f"{calls} delegate call(s) ({where}) record only their outputs: the layers inside a delegate are not exposed, "
                f"so they are compared where the delegate's output is; {portable}",
            )

    def _rebuilt_record(self, io: ArtifactIO, reference: ReferenceModel, stamp: Mapping[str, Any], plan: Any, layout: Mapping[str, Any]) -> Any:
        """The ETRecord of lowering ``reference`` as the .pte's stamp says it was lowered. The
        Inspector maps events by instruction index and debug handle, which the graph's structure
        decides, not its weights or calibration: a program with weights planted in it keeps them."""
        from executorch.devtools.etrecord import parse_etrecord

        if reference.module is None:
            raise UsageError(f"{self.path.name} has no ETRecord beside it, and an ONNX reference cannot be lowered to rebuild one: pass the torch model as --reference")
        backend = stamp.get("backend") or ("xnnpack" if layout["delegate_calls"] else "portable")
        refused = f"{self.path.name} has no ETRecord beside it ({etrecord_path(self.path).name})"
        kept = (stamp.get("quantization") or {}).get("kept_wider") or {}
        layers = WiderLayers(tuple(kept["modules"]), kept.get("as", "float"), "artifact") if kept.get("modules") else None
        try:
            lowered = lower(reference, io.precision, _backend(backend, io.precision), [tuple(reference.example_inputs)], dict(stamp), etrecord=True, layers=layers)
        except (TargetError, UsageError) as exc:
            raise UsageError(f"{refused}, and lowering the reference to rebuild one failed ({exc.message}): convert with --executorch-etrecord") from exc
        if _instructions(_forward(lowered.program.executorch_program)) != _instructions(plan):
            raise UsageError(
                f"{refused}, and the reference lowered again does not give its instructions (another model, or another "
                f"edgex or ExecuTorch version?): convert with --executorch-etrecord and keep the ETRecord beside the .pte"
            )
        with tempfile.TemporaryDirectory(prefix="etrecord-") as folder:
            saved = Path(folder) / "rebuilt.etrecord"
            lowered.record.save(str(saved))
            return parse_etrecord(str(saved))

    def trace(self, inputs: Sequence[np.ndarray]) -> ArtifactTrace:
        from executorch.devtools import Inspector
        from executorch.runtime import Runtime

        # a fresh load per sample: one ETDump per run, which the Inspector reads as one block
        program = Runtime.get().load_program(str(self.path), enable_etdump=True, debug_buffer_size=self.buffer_bytes)
        outputs = _execute(program.load_method("forward"), inputs)
        with tempfile.TemporaryDirectory(prefix="etdump-") as folder:
            etdump, debug = Path(folder) / "run.etdp", Path(folder) / "run.bin"
            program.write_etdump_result_to_file(str(etdump), str(debug))
            try:
                inspector = Inspector(etdump_path=str(etdump), etrecord=self.etrecord, debug_buffer_path=str(debug))
            except Exception as exc:
                raise TargetError(
                    f"ExecuTorch's Inspector cannot read this run's ETDump with {etrecord_path(self.path).name}: {one_line(exc)}", stage="validate"
                ) from exc
            tensors = []
            for block in inspector.event_blocks:
                for event in block.events:
                    # OPERATOR_CALL repeats a kernel call's event as a profiling event; framework events have no op
                    if event.name == "OPERATOR_CALL" or not event.op_types or not event.debug_data:
                        continue
                    tensors.extend(self._tensors(event, len(tensors)))
        return ArtifactTrace(tuple(tensors), tuple(outputs))

    @staticmethod
    def _tensors(event: Any, step: int) -> list[TracedTensor]:
        """The tensors one event logged (named by their position in the trace and their kernel)."""
        import torch

        modules = _event_modules(event)
        if event.name == "DELEGATE_CALL":
            # its inputs are logged first, then its num_outputs outputs
            values = [v for v in event.debug_data if isinstance(v, torch.Tensor)][-event.num_outputs :]
            op = f"{event.delegate_backend_name} delegate call ({len(event.op_types)} ops)"
            count = len(values)
            return [
                TracedTensor(
                    f"{step}:{event.delegate_backend_name}" + (f":{i}" if count > 1 else ""), _to_numpy(v), modules, tuple(range(v.dim())), None, op,
                    f"output {i + 1} of {count} of a delegate call: the ETRecord does not say which of its ops computes it" if count > 1 else "",
                )
                for i, v in enumerate(values)
            ]
        value = next((v for v in event.debug_data if isinstance(v, torch.Tensor)), None)
        if value is None:
            return []
        op = event.name.removeprefix("native_call_")  # the kernel, e.g. "convolution.out"
        # int8 values between a quantize and a dequantize outside a delegate: their grid is in the op's arguments, not the trace
        unreadable = "int8 values whose quantization grid the trace does not carry" if value.dtype in (torch.int8, torch.uint8) else ""
        return [TracedTensor(f"{step}:{op}", _to_numpy(value), modules, tuple(range(value.dim())), None, op, unreadable)]


@hookimpl
def edgex_load_tracer(target: str, io: ArtifactIO, reference: ReferenceModel, options: Mapping[str, Any]) -> ExecuTorchTracer:
    return ExecuTorchTracer(io, reference)


# --------------------------------------------------------------------------- edgex check


@hookimpl
def edgex_check_operators(target: str, operators: ModelOperators, precision: str) -> OperatorCheck:
    """ExecuTorch lowers the same torch.export graph to core ATen (its edge dialect) and refuses
    an operator outside it that no decomposition takes there; its portable kernels cover core
    ATen, so whatever XNNPACK does not delegate still runs."""
    if operators.kind != "torch":
        return OperatorCheck(source="executorch converts torch models only")
    from edgex.plugins import aten_reach

    findings, unknown = [], []
    for op in operators.operators:
        reach = aten_reach(op.name)
        if reach == "unknown":
            unknown.append(op.name)
        elif reach == "outside":
            findings.append(OperatorFinding(
                op.name, "not in the core ATen opset and no decomposition takes it there: the edge dialect refuses it",
                fix="write it from core ATen operators in the model", modules=op.modules,
            ))
    return OperatorCheck(
        tuple(findings),
        f"core ATen and torch.export's decompositions (torch {package_version('torch') or '?'}); ExecuTorch {package_version('executorch') or '?'}'s portable kernels cover core ATen",
        tuple(unknown),
        ("which operators XNNPACK delegates is decided when lowering; the report of edgex convert lists them",),
    )
