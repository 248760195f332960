"""Target ``executorch`` (aliases ``pte``, ``pytorch-mobile``): an ExecuTorch program (``.pte``).

``torch.export`` -> ``to_edge_transform_and_lower`` -> ``to_executorch``. With the default
``--executorch-backend xnnpack`` every op the XNNPACK partitioner takes is lowered to the XNNPACK
delegate and the rest runs on ExecuTorch's portable kernels; ``portable`` lowers nothing (for
devices built without XNNPACK, such as MCUs). ``fp16``: the model and its inputs in half
precision, lowered the same way. ``int8``: PT2E static quantization with ExecuTorch's XNNPACK
quantizer on the calibration data (per-channel symmetric int8 weights, per-tensor affine int8
activations with min/max ranges: the scheme edgex's own int8 reference simulates), inputs and
outputs float with the quantize/dequantize inside the program.

Validated on the ExecuTorch runtime's Python bindings (``executorch.runtime``), which run the same
C++ runtime, portable kernels and XNNPACK delegate a device links. The report says which ops were
delegated and which fell back to portable kernels, and the program's planned memory.

A ``.pte`` holds no tensor names: edgex stamps a constant method ``edgex_metadata`` (a JSON
string: precision, names, quantization) into the program so that ``edgex validate`` reads an
artifact back as it was converted. ExecuTorch ignores methods it is not asked to run.
"""

from __future__ import annotations

import copy
import importlib.util
import json
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from edgex.plugins import (
    __version__,
    one_line,
    package_version,
    Artifact,
    ArtifactIO,
    BackendStatus,
    ConversionRequest,
    ConversionResult,
    QuantParams,
    ReferenceModel,
    TargetError,
    TargetOption,
    TargetSpec,
    TensorBinding,
    UsageError,
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
        ),
        accepts=("torch",),
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


def _calibration_batches(request: ConversionRequest) -> list[tuple[np.ndarray, ...]]:
    """The calibration data cut into batches of the example input's batch size (the exported
    graph's shapes are static)."""
    size = int(request.model.example_inputs[0].shape[0]) if request.model.example_inputs[0].ndim else 1
    batches = []
    for batch in request.calibration or ():
        count = len(batch[0])
        batches.extend(tuple(a[start : start + size] for a in batch) for start in range(0, count - size + 1, size))
    if not batches:
        raise UsageError("executorch int8 needs calibration data (--calibration or --example-inputs)")
    return batches


def xnnpack_quantizer() -> Any:
    """ExecuTorch's XNNPACK quantizer, per-channel symmetric int8 weights and per-tensor affine int8
    activations; activations calibrated by min/max (its default histogram observer clips
    outliers by an L2 search, a scheme edgex's independent int8 reference does not simulate)."""
    from dataclasses import replace

    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer, get_symmetric_quantization_config
    from torchao.quantization.pt2e.observer import MinMaxObserver

    config = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False)
    activation = replace(config.input_activation, observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=2**-12))
    return XNNPACKQuantizer().set_global(replace(config, input_activation=activation, output_activation=activation))


def _quantized_program(request: ConversionRequest, exported: Any) -> tuple[Any, list[QuantParams | None]]:
    """The PT2E int8 program, and the grid each output's float value lies on (its last dequantize)."""
    import torch
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    args = _torch_inputs(request.model.example_inputs)
    try:
        prepared = prepare_pt2e(exported.module(), xnnpack_quantizer())
        with torch.no_grad():
            for batch in _calibration_batches(request):
                prepared(*_torch_inputs(batch))
        converted = convert_pt2e(prepared)
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
    return program, grids


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


@hookimpl
def edgex_convert(request: ConversionRequest) -> ConversionResult:
    import torch
    from executorch.exir import to_edge_transform_and_lower

    model = request.model
    if model.module is None:
        raise UsageError("executorch converts from a torch model (torch.export); an ONNX reference has none")
    backend = request.options.get("executorch_backend") or "xnnpack"
    if backend not in BACKENDS:
        raise UsageError(f"--executorch-backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if request.precision == "int8" and backend != "xnnpack":
        raise UsageError("executorch int8 runs on the XNNPACK delegate: use --executorch-backend xnnpack (without a delegate the quantized program computes its convolutions in float between quantize/dequantize ops)")

    grids: list[QuantParams | None] = [None] * len(model.output_names)
    quantization: dict[str, Any] = {}
    if request.precision == "fp16":
        module = copy.deepcopy(model.module).half()
        exported = _export(module, _torch_inputs(model.example_inputs, torch.float16), "fp16")
    else:
        exported = _export(model.module, _torch_inputs(model.example_inputs), "float")
    if request.precision == "int8":
        exported, grids = _quantized_program(request, exported)
        # edgex's plain int8 scheme, said explicitly: 8-bit weights ([-127, 127]), affine activations
        quantization = {"weight_bits": 8, "symmetric_activations": False}

    partitioners = []
    if backend == "xnnpack":
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

        partitioners.append(XnnpackPartitioner())
    names = {"inputs": [s.name for s in model.inputs], "outputs": list(model.output_names)}
    stamp = {"edgex": __version__, "precision": request.precision, "backend": backend, **names,
             "output_grids": [g.to_json() if g else None for g in grids], "quantization": quantization}
    try:
        edge = to_edge_transform_and_lower(exported, partitioner=partitioners, constant_methods={METADATA_METHOD: json.dumps(stamp)})
        delegation = _delegation(edge.exported_program().graph_module)
        program = edge.to_executorch()
    except Exception as exc:
        raise TargetError(f"ExecuTorch lowering ({backend}) failed: {one_line(exc)}", stage="convert") from exc
    path = request.workdir / ("model.pte" if request.precision == "fp32" else f"model_{request.precision}.pte")
    path.write_bytes(program.buffer)

    plan = next(p for p in program.executorch_program.execution_plan if p.name == "forward")
    planned = [int(s) for s in plan.non_const_buffer_sizes]  # entry 0 is reserved by ExecuTorch (always 0)
    io = describe_pte(path, model)
    converter = f"torch.export -> executorch {package_version('executorch')} to_edge_transform_and_lower ({'XnnpackPartitioner' if backend == 'xnnpack' else 'no partitioner'}) -> to_executorch"
    if request.precision == "int8":
        converter = "PT2E (XNNPACKQuantizer, min/max calibration) -> " + converter
    messages = [delegation_summary(delegation, backend), f"planned memory (activations): {sum(planned)} bytes"]
    details = {"executorch": {"backend": backend, "delegation": delegation, "planned_memory_bytes": sum(planned), "planned_buffers": planned[1:]}}
    return ConversionResult((Artifact(path, "pte"),), io, converter, tuple(messages), details)


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


def program_layout(path: Path) -> dict[str, Any]:
    """What the file itself says runs where: delegate calls by backend, kernel calls by operator
    (the portable kernels), and the memory planned for activations."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    pte = deserialize_pte_binary(Path(path).read_bytes())
    plan = next(p for p in pte.program.execution_plan if p.name == "forward")
    delegates: Counter[str] = Counter()
    kernels: Counter[str] = Counter()
    for chain in plan.chains:
        for instruction in chain.instructions:
            kind = type(instruction.instr_args).__name__
            if kind == "DelegateCall":
                delegates[plan.delegates[instruction.instr_args.delegate_index].id] += 1
            elif kind == "KernelCall":
                op = plan.operators[instruction.instr_args.op_index]
                kernels[f"{op.name}.{op.overload}" if op.overload else op.name] += 1
    planned = [int(s) for s in plan.non_const_buffer_sizes]
    return {"delegate_calls": dict(delegates), "portable_kernel_calls": dict(sorted(kernels.items())), "planned_memory_bytes": sum(planned)}


# --------------------------------------------------------------------------- running


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
        try:
            outputs = self.method.execute(list(_torch_inputs(inputs)))
        except Exception as exc:
            raise TargetError(f"the ExecuTorch runtime failed to run forward: {one_line(exc)}", stage="validate") from exc
        return [o.detach().numpy() if hasattr(o, "numpy") else np.asarray(o) for o in outputs]

    def details(self) -> dict[str, Any]:
        return {"executorch_program": self.layout}


@hookimpl
def edgex_load_runtime(target: str, io: ArtifactIO, options: Mapping[str, Any]) -> ExecuTorchRuntime:
    return ExecuTorchRuntime(io.path)
