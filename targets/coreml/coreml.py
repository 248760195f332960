"""Target ``coreml`` (alias ``mlpackage``): a Core ML ML Program, validated on Core ML itself on
macOS and on edgex's MIL reference interpreter everywhere else.

Conversion: ``torch.jit.trace`` + ``coremltools.convert`` (``convert_to="mlprogram"``); when
tracing or converting the trace fails (PyTorch's fused transformer path, a trace check that does
not hold), the trace is retried without its check, then ``torch.export`` +
``run_decompositions({})`` is converted instead, and the path taken is recorded. Inputs and
outputs keep the torch model's names and stay float32 whatever the compute precision.

Precisions: ``fp32``; ``fp16`` (Core ML's default compute precision, weights stored in fp16);
``dynamic-int8`` (weights compressed to 8 bits or fewer by ``coremltools.optimize.coreml`` --
int8 linear quantization or 4/6/8-bit palettization, chosen with ``--weight-compression`` --
computing in fp16). ``--weight-compression sparse`` stores a pruned model's zero weights as a
bit mask, which changes no value, so it goes with fp32 or fp16.

Validation: on macOS through ``MLModel.predict`` (``--compute-units`` picks the units core's
parity judges; CPU-only and all units are both run and reported). Elsewhere Core ML cannot run,
so ``edgex.targets.coreml.interpreter`` executes the saved package's MIL program, fp16 emulated
where the program computes in fp16; an op it lacks is an ``error`` naming the op.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io as _io
import math
import re
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from edgex.plugins import (
    __version__,
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

#: ``--weight-compression`` choices; what each stores and with which precision it goes
WEIGHT_COMPRESSIONS = {
    "none": ("fp32", "fp16"),
    "sparse": ("fp32", "fp16"),
    "int8": ("dynamic-int8",),
    "palettize-8": ("dynamic-int8",),
    "palettize-6": ("dynamic-int8",),
    "palettize-4": ("dynamic-int8",),
}
DEPLOYMENT_TARGETS = (
    "iOS15", "iOS16", "iOS17", "iOS18", "macOS12", "macOS13", "macOS14", "macOS15",
    "tvOS15", "tvOS16", "tvOS17", "tvOS18", "watchOS8", "watchOS9", "watchOS10", "watchOS11",
)
COMPUTE_UNITS = ("all", "cpu_only", "cpu_and_gpu", "cpu_and_ne")
PACKAGE_NAME = "model.mlpackage"

TARGETS = (
    TargetSpec(
        name="coreml",
        aliases=("mlpackage",),
        description="Core ML ML Program (.mlpackage); Core ML on macOS, edgex's MIL reference interpreter elsewhere",
        artifact_kinds=(".mlpackage",),
        precisions=("fp32", "fp16", "dynamic-int8"),
        default_precision="fp16",
        options=(
            TargetOption(
                "weight_compression",
                "Core ML weight storage: none, sparse (a pruned model's zeros as a bit mask; fp32/fp16), "
                "or with --quantize dynamic-int8: int8 (linear, default), palettize-8, palettize-6, palettize-4",
                str, None, tuple(WEIGHT_COMPRESSIONS),
            ),
            TargetOption(
                "minimum_deployment_target",
                "oldest OS the Core ML model must run on (default iOS15, or iOS16 when weights are compressed)",
                str, None, DEPLOYMENT_TARGETS,
            ),
            TargetOption(
                "compute_units",
                "macOS only: Core ML compute units parity is judged on (default all; cpu_only is run and reported too)",
                str, None, COMPUTE_UNITS,
            ),
        ),
        accepts=("torch",),
    ),
)




def _on_macos() -> bool:
    return sys.platform == "darwin"


# --------------------------------------------------------------------------- declaring


@hookimpl
def edgex_targets():
    return TARGETS


@hookimpl
def edgex_backend_status(target: str) -> BackendStatus:
    missing = [p for p in ("coremltools", "torch") if importlib.util.find_spec(p) is None]
    if missing:
        return BackendStatus(False, "coremltools", "pip install 'edgex[coreml]'", f"{', '.join(missing)} not installed")
    version = package_version("coremltools") or "?"
    if _on_macos():
        return BackendStatus(True, f"Core ML (coremltools {version})")
    return BackendStatus(True, f"edgex MIL reference interpreter (coremltools {version}; Core ML itself runs only on macOS)")


# --------------------------------------------------------------------------- converting


def _weight_compression(request: ConversionRequest) -> str:
    """The weight compression asked for, checked against the precision."""
    chosen = request.options.get("weight_compression")
    if chosen is None:
        if request.precision == "dynamic-int8":
            return "int8"
        # a pruned model's zeros are stored sparsely by default (lossless), unless the user
        # pinned a deployment target older than the iOS16 that sparse storage needs
        old_target = request.options.get("minimum_deployment_target") in ("iOS15", "macOS12", "tvOS15", "watchOS8")
        return "sparse" if _is_pruned(request.model.module) and not old_target else "none"
    if request.precision not in WEIGHT_COMPRESSIONS[chosen]:
        if chosen in ("none", "sparse"):
            raise UsageError(f"--weight-compression {chosen} goes with --quantize fp32 or fp16, not {request.precision}")
        raise UsageError(f"--weight-compression {chosen} compresses weights lossily: use it with --quantize dynamic-int8")
    return chosen


def _is_pruned(module: Any) -> bool:
    """Whether a weight tensor coremltools would store sparsely is at least half zeros."""
    if module is None:
        return False
    import torch

    with torch.no_grad():
        return any(p.numel() > 2048 and float((p == 0).float().mean()) >= 0.5 for p in module.parameters())


def _deployment_target(request: ConversionRequest, compression: str) -> str:
    chosen = request.options.get("minimum_deployment_target")
    # constexpr (compressed-weight) ops exist from iOS16; plain programs reach back to iOS15
    needed = "iOS16" if compression != "none" else "iOS15"
    if chosen is None:
        return needed
    if compression != "none" and chosen in ("iOS15", "macOS12", "tvOS15", "watchOS8"):
        raise UsageError(f"compressed weights need iOS16 / macOS13 or newer, not --minimum-deployment-target {chosen}")
    return chosen


def _tensor_types(model: ReferenceModel) -> tuple[list[Any], list[Any]]:
    import coremltools as ct

    inputs = []
    for spec in model.inputs:
        dtype = np.float32 if np.dtype(spec.dtype).kind == "f" else np.int32
        inputs.append(ct.TensorType(name=spec.name, shape=tuple(spec.shape), dtype=dtype))
    # float32 outputs whatever the compute precision: the program casts at its end
    outputs = [ct.TensorType(name=name, dtype=np.float32) for name in model.output_names]
    return inputs, outputs


@contextlib.contextmanager
def _transformer_fastpath_disabled():
    """nn.TransformerEncoderLayer's fused fast path is one op coremltools cannot convert."""
    import torch

    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)


def _quiet() -> contextlib.ExitStack:
    """coremltools writes progress bars for every pass; keep them out of the user's terminal."""
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(_io.StringIO()))
    stack.enter_context(contextlib.redirect_stderr(_io.StringIO()))
    return stack


def to_mlprogram(model: ReferenceModel, *, precision: str, deployment_target: str) -> tuple[Any, str, list[str]]:
    """Convert the torch reference to an in-memory ML Program.

    Returns (the coremltools ``MLModel``, the path taken -- ``"torch.jit.trace"``,
    ``"torch.jit.trace (check_trace=False)"`` or ``"torch.export"`` --, messages about the
    paths that failed first).
    """
    import coremltools as ct
    import torch

    module = model.module
    args = tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in model.example_inputs)
    inputs, outputs = _tensor_types(model)
    options = dict(
        inputs=inputs,
        outputs=outputs,
        convert_to="mlprogram",
        compute_precision=ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16,
        minimum_deployment_target=getattr(ct.target, deployment_target),
        skip_model_load=True,  # loading compiles the model, which only macOS can do
    )
    failures: list[str] = []

    def convert(graph: Any) -> Any:
        with _quiet():
            return ct.convert(graph, **options)

    graph, path = None, ""
    for check in (True, False):  # a failed trace check is worth one retry without it
        try:
            with _quiet(), torch.no_grad(), _transformer_fastpath_disabled():
                graph = torch.jit.trace(module, args, check_trace=check)
            path = "torch.jit.trace" if check else "torch.jit.trace (check_trace=False)"
            break
        except Exception as exc:
            failures.append(f"torch.jit.trace{'' if check else ' (check_trace=False)'} failed: {one_line(exc)}")
    if graph is not None:
        try:
            return convert(graph), path, _fallback_note(path, failures)
        except Exception as exc:
            failures.append(f"ct.convert of the {path} graph failed: {one_line(exc)}")
    path = "torch.export"
    try:
        with _quiet(), torch.no_grad(), _transformer_fastpath_disabled():
            graph = torch.export.export(module, args).run_decompositions({})
        return convert(graph), path, _fallback_note(path, failures)
    except Exception as exc:
        failures.append(f"torch.export + ct.convert failed: {one_line(exc)}")
    raise TargetError("Core ML conversion failed: " + "; ".join(failures), stage="convert")


def _fallback_note(path: str, failures: Sequence[str]) -> list[str]:
    return [f"converted through {path} because " + "; ".join(failures)] if failures else []


def compress_weights(mlmodel: Any, method: str) -> Any:
    """Compress the weights of a converted ML Program with ``coremltools.optimize.coreml``.

    coremltools leaves weight tensors of 2048 elements or fewer dense (they cost more to
    decompress than they save), and ``sparse`` only stores tensors at least half zero sparsely.
    """
    import coremltools.optimize.coreml as cto

    if method == "int8":
        config, compress = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel"), cto.linear_quantize_weights
    elif method.startswith("palettize-"):
        config, compress = cto.OpPalettizerConfig(mode="kmeans", nbits=int(method.split("-")[1]), granularity="per_tensor"), cto.palettize_weights
    elif method == "sparse":
        # only the zeros a pruned model already has: a threshold of 1e-12 changes no real weight
        config, compress = cto.OpThresholdPrunerConfig(threshold=1e-12, minimum_sparsity_percentile=0.5), cto.prune_weights
    else:
        raise UsageError(f"unknown --weight-compression {method!r}; choose one of {', '.join(WEIGHT_COMPRESSIONS)}")
    try:
        # palettization runs scikit-learn's k-means on OpenMP: core's forked child limits every
        # OpenMP pool to one thread, as pools inherited through fork deadlock
        with _quiet():
            return compress(mlmodel, cto.OptimizationConfig(global_config=config))
    except Exception as exc:
        raise TargetError(f"coremltools.optimize.coreml could not apply {method}: {one_line(exc)}", stage="convert") from exc


def _stamp(mlmodel: Any, request: ConversionRequest, compression: str, path: str) -> None:
    """Say in the package what it was made from and how (readable by anyone with coremltools).

    ``edgex.conversion_path`` tells ``edgex explain`` how the program's var names relate to the
    torch graph (a trace names them after TorchScript values)."""
    mlmodel.short_description = f"{request.model.spec} converted by edgex {__version__}"
    metadata_ = mlmodel.user_defined_metadata
    metadata_["edgex.version"] = __version__
    metadata_["edgex.precision"] = request.precision
    metadata_["edgex.weight_compression"] = compression
    metadata_["edgex.conversion_path"] = path
    if request.model.sha256:
        metadata_["edgex.reference_sha256"] = request.model.sha256


@hookimpl
def edgex_convert(request: ConversionRequest) -> ConversionResult:
    import coremltools as ct

    from edgex.targets.coreml.interpreter import load_package

    if request.model.module is None:
        raise TargetError("the coreml target converts torch models; MODEL is an ONNX file", stage="convert")
    compression = _weight_compression(request)
    deployment = _deployment_target(request, compression)
    compute = "fp32" if request.precision == "fp32" else "fp16"
    start = time.perf_counter()
    mlmodel, path, messages = to_mlprogram(request.model, precision=compute, deployment_target=deployment)
    convert_seconds = time.perf_counter() - start
    if compression != "none":
        mlmodel = compress_weights(mlmodel, compression)
    _stamp(mlmodel, request, compression, path)
    package = request.workdir / PACKAGE_NAME
    with _quiet():
        mlmodel.save(str(package))

    saved = load_package(package, error=TargetError)
    io = describe_package(saved, request.model)
    ops = [op.op_type for op in saved.program.functions[saved.function].operations]
    compressed = sum(1 for t in ops if t.startswith("constexpr_") and t != "constexpr_cast")
    if compression != "none" and compressed == 0:
        messages.append(
            f"--weight-compression {compression} compressed no weight: coremltools keeps tensors of 2048 elements "
            "or fewer dense" + (", and stores sparsely only tensors at least half zero" if compression == "sparse" else "")
        )
    if compression == "sparse" and request.options.get("weight_compression") is None:
        messages.append(
            f"the model is pruned: {compressed} weight tensors stored sparsely (lossless; needs {deployment}+, "
            "--weight-compression none keeps them dense)"
        )
    if io.precision != request.precision:
        messages.append(f"the saved program computes as {io.precision}, not {request.precision}; parity uses {io.precision}'s tolerance")
    converter = f"{path} + coremltools {ct.__version__} ct.convert (mlprogram, {compute} compute, {deployment})"
    if compression != "none":
        converter += f"; weights {compression} by coremltools.optimize.coreml"
    details = {
        "coreml": {
            "conversion_path": path,
            "compute_precision": compute,
            "minimum_deployment_target": deployment,
            "weight_compression": compression,
            "compressed_weight_tensors": compressed,
            "torch_to_mlprogram_seconds": round(convert_seconds, 4),  # trace or export + ct.convert
            "program_ops": len([t for t in ops if t != "const"]),
        }
    }
    return ConversionResult((Artifact(package, "mlpackage"),), io, converter, tuple(messages), details)


# --------------------------------------------------------------------------- describing


def describe_package(package: Any, reference: ReferenceModel, *, error: type[Exception] = TargetError) -> ArtifactIO:
    """A loaded package's inputs and outputs related to the reference, and its precision."""
    from edgex.targets.coreml.interpreter import program_precision

    path = package.path
    if len(package.inputs) != len(reference.inputs):
        raise error(f"{path} takes {len(package.inputs)} inputs but the reference model takes {len(reference.inputs)}")
    by_name = {f.name: f for f in package.inputs}
    matched = [by_name[s.name] for s in reference.inputs] if all(s.name in by_name for s in reference.inputs) else list(package.inputs)
    inputs = []
    for feature, spec in zip(matched, reference.inputs):
        perm = infer_permutation(spec.shape, feature.shape)
        if perm is None:
            raise error(f"input {feature.name!r} of {path} has shape {feature.shape}, which no layout maps to the reference's {tuple(spec.shape)}")
        inputs.append(TensorBinding(feature.name, feature.shape, feature.dtype, layout_name(len(feature.shape), perm), perm))
    outputs_by_name = {f.name: f for f in package.outputs}
    names = list(reference.output_names)
    ordered = [outputs_by_name[n] for n in names] if sorted(names) == sorted(outputs_by_name) else list(package.outputs)
    outputs = [TensorBinding(f.name, f.shape, f.dtype) for f in ordered]
    precision = program_precision(package.program, package.function)
    return ArtifactIO(Path(path), precision, tuple(inputs), tuple(outputs), weight_scheme(package))


#: MIL ops with weights, and the inputs that hold them
_RECURRENT_OPS = {"lstm": ("weight_ih", "weight_hh", "weight_ih_back", "weight_hh_back"), "gru": ("weight_ih", "weight_hh"), "rnn": ("weight_ih", "weight_hh")}
_WEIGHT_INPUTS = {"conv": ("weight",), "conv_transpose": ("weight",), "linear": ("weight",), **_RECURRENT_OPS}


def weight_scheme(package: Any) -> dict[str, Any]:
    """How the package's weights are compressed, where that is not plain int8: a palette's size
    (the look-up table of ``constexpr_lut_to_dense``, (2**bits,) or (..., 2**bits, 1) from iOS18
    on), and the largest conv/linear weight left dense in a compressed program
    (``float_weights_up_to``): coremltools compresses only tensors of more than 2048 elements
    (its ``weight_threshold``), so a small first convolution or classifier stays fp16, which a
    simulation quantizing every weight does not see (digits' artifact sat 4.4 dB above it); an
    LSTM / GRU / RNN op's weights count (the zoo's LSTM keeps weight_ih, 2048 elements, dense).
    A program holding such an op keeps it whole on its compressed weights (``int8_weights``: the
    zoo's LSTM, weight_hh int8, computed in fp32 between fp16 casts)."""
    from edgex.targets.coreml.interpreter import program_precision

    operations = package.program.functions[package.function].operations
    scheme: dict[str, Any] = {}
    sizes = []
    for op in operations:
        lut = op.inputs.get("lut") if op.op_type.startswith("constexpr_lut") else None
        shape = getattr(getattr(lut, "val", None), "shape", None)
        if shape:
            sizes.append(shape[-2] if len(shape) > 1 and shape[-1] == 1 else shape[-1])
    if sizes:
        scheme["palettize_bits"] = max(int(size).bit_length() - 1 for size in sizes)
    if program_precision(package.program, package.function) == "dynamic-int8":
        weights = [op.inputs.get(name) for op in operations for name in _WEIGHT_INPUTS.get(op.op_type, ())]
        dense = [math.prod(w.shape) for w in weights if w is not None and w.op is not None and w.op.op_type in ("const", "constexpr_cast")]
        if dense:
            scheme["float_weights_up_to"] = max(dense)
        if any(op.op_type in _RECURRENT_OPS for op in operations):
            scheme["recurrent"] = "int8_weights"
    return scheme


@hookimpl
def edgex_describe_artifact(target: str, path: Path, reference: ReferenceModel) -> ArtifactIO:
    from edgex.targets.coreml.interpreter import load_package

    path = Path(path)
    if path.suffix not in (".mlpackage", ".mlmodel"):
        raise UsageError(f"{path} is not a Core ML model (.mlpackage)")
    return describe_package(load_package(path, error=UsageError), reference, error=UsageError)


# --------------------------------------------------------------------------- running


class MILRuntime:
    """The saved package's MIL program on edgex's reference interpreter (any platform)."""

    def __init__(self, io: ArtifactIO):
        from edgex.targets.coreml.interpreter import ENGINE, MILInterpreter, load_package

        package = load_package(io.path, error=TargetError)
        self.interpreter = MILInterpreter(package.program, package.function)
        self.inputs = [b.name for b in io.inputs]
        self.outputs = [b.name for b in io.outputs]
        arithmetic = "fp16 emulated" if self.interpreter.fp16 else "fp32"
        self.backend = f"{ENGINE} (coremltools {package.coremltools_version} program, {arithmetic})"

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        results = self.interpreter.run(dict(zip(self.inputs, inputs)))
        return [results[name] for name in self.outputs]

    def details(self) -> dict[str, Any]:
        return {"mil_interpreter": self.interpreter.describe()}


class CoreMLRuntime:
    """``MLModel.predict`` on this Mac: the judged compute units, and CPU_ONLY beside them.

    Core's parity judges the outputs of ``compute_units``; CPU_ONLY runs on the same samples
    and its latency and largest difference from the judged outputs are reported separately.
    """

    def __init__(self, io: ArtifactIO, compute_units: str):
        import platform

        import coremltools as ct

        self.judged = compute_units.upper()
        units = list(dict.fromkeys([self.judged, "CPU_ONLY"]))
        try:
            self.models = {unit: ct.models.MLModel(str(io.path), compute_units=ct.ComputeUnit[unit]) for unit in units}
        except Exception as exc:
            raise TargetError(f"Core ML cannot load {io.path.name}: {one_line(exc)}", stage="validate") from exc
        self.inputs = [b.name for b in io.inputs]
        self.outputs = [b.name for b in io.outputs]
        self.seconds: dict[str, list[float]] = {unit: [] for unit in units}
        self.max_abs_vs_judged: dict[str, float] = {unit: 0.0 for unit in units}
        self.backend = f"Core ML (macOS {platform.mac_ver()[0]}, coremltools {ct.__version__}) MLModel.predict, compute units {self.judged}"

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        feeds = dict(zip(self.inputs, inputs))
        results = {}
        for unit, model in self.models.items():
            start = time.perf_counter()
            out = model.predict(feeds)
            self.seconds[unit].append(time.perf_counter() - start)
            results[unit] = [np.asarray(out[name]) for name in self.outputs]
        judged = results[self.judged]
        for unit, outs in results.items():
            diff = max(float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)), initial=0.0)) for a, b in zip(outs, judged))
            self.max_abs_vs_judged[unit] = max(self.max_abs_vs_judged[unit], diff)
        return judged

    def details(self) -> dict[str, Any]:
        report = {}
        for unit, seconds in self.seconds.items():
            timed = sorted(seconds[1:] or seconds)
            report[unit] = {
                "judged_by_parity": unit == self.judged,
                "median_ms": round(1000 * timed[len(timed) // 2], 4) if timed else None,
                f"max_abs_vs_{self.judged}": self.max_abs_vs_judged[unit],
            }
        return {"coreml_compute_units": report}


@hookimpl
def edgex_load_runtime(target: str, io: ArtifactIO, options: Mapping[str, Any]):
    if _on_macos():
        return CoreMLRuntime(io, options.get("compute_units") or "all")
    return MILRuntime(io)


# --------------------------------------------------------------------------- explaining


def _mil_name(name: str) -> str:
    """A torch name as coremltools' NameSanitizer writes it into the program (its uniqueness
    suffixes aside: names that collide are left out by the caller)."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


#: what coremltools' passes append to a var's name: fp16 compute casts, weight storage
_PASS_SUFFIXES = ("_cast_fp16", "_to_fp16", "_palettized", "_quantized", "_sparsified")


def _torch_name_of(var_name: str) -> str:
    """A program var's name without the suffixes coremltools' passes added."""
    stripped = True
    while stripped:
        stripped = False
        for suffix in _PASS_SUFFIXES:
            if var_name.endswith(suffix):
                var_name, stripped = var_name[: -len(suffix)], True
    return var_name


def traced_value_modules(reference: ReferenceModel) -> tuple[dict[str, str], dict[str, str]]:
    """(value names, parameter names) of a package converted through ``torch.jit.trace``, each
    as the program writes them, mapped to the torch module that computes or owns them.

    The package keeps no module scopes, but its var names are the TorchScript values' debug
    names (``input.3`` -> ``input_3``) and its weights the parameters' names
    (``classifier.weight`` -> ``classifier_weight``). Tracing the reference again gives the same
    debug names, each with the scope it was computed in, as coremltools' own debugging
    utilities rely on. Left out: names two values share, and numbered ones (``%52``), which
    coremltools' own generated names (``var_52``) would collide with.
    """
    import torch

    args = tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in reference.example_inputs)
    with _quiet(), torch.no_grad(), _transformer_fastpath_disabled():
        graph = torch.jit.trace(reference.module, args, check_trace=False).inlined_graph
    owners: dict[str, set[str]] = {}
    for node in graph.nodes():
        scope = node.scopeName().split("/")[-1]  # "__module.features/__module.features.0"
        module = scope[len("__module."):] if scope.startswith("__module.") else ""
        for value in node.outputs():
            if re.match(r"[A-Za-z_]", value.debugName()):
                owners.setdefault(_mil_name(value.debugName()), set()).add(module)
    values = {name: next(iter(found)) for name, found in owners.items() if len(found) == 1 and next(iter(found))}
    parameters = {_mil_name(name): name.rpartition(".")[0] for name, _ in reference.module.named_parameters() if "." in name}
    return values, parameters


class MILTracer:
    """The package's MIL program on edgex's reference interpreter, every var kept."""

    def __init__(self, io: ArtifactIO, reference: ReferenceModel):
        from edgex.targets.coreml.interpreter import ENGINE, MILInterpreter, load_package

        package = load_package(io.path, error=TargetError)
        self.interpreter = MILInterpreter(package.program, package.function)
        path = package.metadata.get("edgex.conversion_path", "")
        notes = []
        if _on_macos():
            notes.append(f"Core ML does not expose intermediate values: the program was traced on the {ENGINE}")
        values: dict[str, str] = {}
        parameters: dict[str, str] = {}
        if path.startswith("torch.jit.trace"):
            values, parameters = traced_value_modules(reference)
        else:
            how = f"was converted through {path}" if path else "does not say how it was converted (edgex.conversion_path)"
            notes.append(f"the package {how}: only torch.jit.trace conversions name vars after the torch graph, so only outputs are matched")
        self.steps = []
        for op in self.interpreter.function.operations:
            if op.op_type == "const" or op.op_type.startswith("constexpr_"):
                continue
            inputs = [v for value in op.inputs.values() for v in (value if isinstance(value, (list, tuple)) else [value])]
            weights = [parameters[_torch_name_of(v.name)] for v in inputs if _torch_name_of(v.name) in parameters]
            for var in op.outputs:
                own = values.get(_torch_name_of(var.name))
                self.steps.append((var.name, tuple(dict.fromkeys(([own] if own else []) + weights)), op.op_type))
        self.inputs = [b.name for b in io.inputs]
        self.outputs = [b.name for b in io.outputs]
        arithmetic = "fp16 emulated" if self.interpreter.fp16 else "fp32"
        self.backend = f"{ENGINE} (coremltools {package.coremltools_version} program, {arithmetic}), every var kept"
        self.notes = tuple(notes)

    def trace(self, inputs: Sequence[np.ndarray]) -> ArtifactTrace:
        values = self.interpreter.run(dict(zip(self.inputs, inputs)), keep_all=True)
        tensors = tuple(
            TracedTensor(name, values[name], modules, tuple(range(np.ndim(values[name]))), None, op)
            for name, modules, op in self.steps
            if name in values
        )
        return ArtifactTrace(tensors, tuple(values[name] for name in self.outputs))


@hookimpl
def edgex_load_tracer(target: str, io: ArtifactIO, reference: ReferenceModel, options: Mapping[str, Any]):
    return MILTracer(io, reference)


# --------------------------------------------------------------------------- edgex check


@functools.lru_cache(maxsize=1)
def coremltools_torch_ops() -> frozenset[str]:
    """The op names coremltools' torch frontend registers (``@register_torch_op`` and its
    ``torch_alias``), read from its source: importing coremltools takes many seconds (it imports
    TensorFlow's frontend too), and the registry is all ``edgex check`` needs of it."""
    import ast

    spec = importlib.util.find_spec("coremltools")
    if spec is None or spec.origin is None:
        return frozenset()
    frontend = Path(spec.origin).parent / "converters" / "mil" / "frontend" / "torch"
    names: set[str] = set()
    for source in sorted(frontend.glob("*.py")):
        tree = ast.parse(source.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef):
                continue
            for decorator in node.decorator_list:
                call = decorator if isinstance(decorator, ast.Call) else None
                target = call.func if call else decorator
                if getattr(target, "id", getattr(target, "attr", None)) != "register_torch_op":
                    continue
                names.add(node.name)
                for keyword in call.keywords if call else ():
                    if keyword.arg == "torch_alias" and isinstance(keyword.value, (ast.List, ast.Tuple)):
                        names.update(e.value for e in keyword.value.elts if isinstance(e, ast.Constant))
    return frozenset(names)


@hookimpl
def edgex_check_operators(target: str, operators: ModelOperators, precision: str) -> OperatorCheck:
    """Every ATen operator needs a converter in coremltools' torch frontend registry (the one
    ``ct.convert`` looks each graph node up in, for the TorchScript trace and torch.export alike;
    looked up as coremltools does: lower case, no namespace, no in-place underscore)."""
    if operators.kind != "torch":
        return OperatorCheck(source="coreml converts torch models only")
    from edgex.plugins import aten_reach

    registered = coremltools_torch_ops()
    version = package_version("coremltools") or "?"
    findings, unknown = [], []
    for op in operators.operators:
        name = op.name.split(".", 1)[1].lower().rstrip("_")
        if name in registered:
            continue
        if aten_reach(op.name) == "decomposes":
            # the torch.export retry decomposes composite operators; their parts are not known here
            unknown.append(op.name)
            continue
        findings.append(OperatorFinding(
            op.name, f"coremltools {version} has no converter for it",
            fix="rewrite it from operators coremltools converts, or register a composite operator (coremltools' register_torch_op)",
            modules=op.modules,
        ))
    return OperatorCheck(tuple(findings), f"coremltools {version}'s torch op registry ({len(registered)} ops, read from its source)", tuple(unknown))
