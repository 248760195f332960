"""Target ``coral`` (alias ``edgetpu``): a full-int8 ``.tflite`` for the Coral Edge TPU.

The full-int8 model of ``edgex.targets.litert.convert.full_int8`` (the one shared with ``tflite`` and
``mcu``), statically checked op by op against the Edge TPU's documented operation table
(``edgex.targets.litert.edgetpu``) and compiled with ``edgetpu_compiler`` where it is installed.
Parity is the int8 model on LiteRT: nothing here runs on an Edge TPU, and the report says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from edgex.plugins import (
    one_line,
    target_status,
    Artifact,
    ArtifactIO,
    BackendStatus,
    ConversionRequest,
    ConversionResult,
    ReferenceModel,
    TargetSpec,
    UsageError,
    hookimpl,
    ModelOperators,
    OperatorCheck,
)
from edgex.targets.litert import edgetpu
from edgex.targets.litert import convert as litert
from edgex.targets.litert.runtime import LiteRTRuntime, LiteRTTracer

TARGETS = (
    TargetSpec(
        name="coral",
        aliases=("edgetpu",),
        description="full-int8 .tflite for the Coral Edge TPU (+ _edgetpu.tflite where edgetpu_compiler is installed), "
        "static Edge TPU mapping report, int8 parity on LiteRT",
        artifact_kinds=(".tflite", "_edgetpu.tflite"),
        precisions=("int8",),
        default_precision="int8",
        options=litert.CONVERTER_OPTIONS,
        accepts=("torch", "onnx"),
        lacks=("int64-inputs", "fused-transformer", "oversized-pool", "gelu", "hardswish", "lstm"),
        # mixed precision: the kept layers' ops stay float, which the Edge TPU compiler maps to
        # the host CPU (the mapping says so; docs/mixed_precision.md)
        keeps_wider=("float",),
    ),
)


@hookimpl
def edgex_targets():
    return TARGETS


@hookimpl
def edgex_backend_status(target: str) -> BackendStatus:
    # the conversion and the parity runtime are the tflite target's: its status, plus the compiler
    status = target_status("tflite")
    if not status.available:
        return status
    compiler = "edgetpu_compiler on PATH" if edgetpu.compiler_available() else "edgetpu_compiler not installed: static Edge TPU analysis only"
    return BackendStatus(True, f"{status.backend}; int8 parity on LiteRT, {compiler}")


@hookimpl
def edgex_convert(request: ConversionRequest) -> ConversionResult:
    from edgex.targets.litert.graph import read_graph

    result = litert.full_int8(request)
    graph = read_graph(result.io.path)
    report = edgetpu.analyze(graph)
    artifacts = list(result.artifacts)
    messages = list(result.messages) + report.warnings
    if edgetpu.compiler_available():
        try:
            compiled, fields = edgetpu.compiler_report(result.io.path, request.workdir, graph)
            report.compiler = fields
            if compiled.exists():
                artifacts.append(Artifact(compiled, "edgetpu-tflite"))
            log = compiled.with_suffix(".log")
            if log.exists():
                artifacts.append(Artifact(log, "report"))
            messages.append(
                f"edgetpu_compiler {fields['version']}: {fields['ops_mapped']} of {fields['ops_total']} ops mapped to the Edge TPU "
                "(compiled only: nothing was run on an Edge TPU)"
            )
        except Exception as exc:  # the static report stands; say why the compiler's is missing
            messages.append(f"edgetpu_compiler could not compile the model: {one_line(exc)}")
    else:
        messages.append(
            f"Edge TPU (static analysis of the documented op table; edgetpu_compiler is not installed here): "
            f"{report.ops_mapped} of {report.ops_total} ops"
            + (f" and {report.mac_fraction:.0%} of MACs" if report.mac_fraction is not None else "")
            + " would map"
        )
    details = dict(result.details)
    details["edgetpu"] = report.to_json()
    return ConversionResult(tuple(artifacts), result.io, result.converter, tuple(messages), details)


@hookimpl
def edgex_describe_artifact(target: str, path: Path, reference: ReferenceModel) -> ArtifactIO:
    io = litert.describe_artifact(path, reference)
    if io.quantization.get("activation_bits") == 16:
        raise UsageError(f"{Path(path).name} has int16 activations (TFLite's 16x8 mode), which the Edge TPU has no kernels for: validate it with --target mcu, or convert for coral")
    return io


class EdgeTpuReferenceRuntime(LiteRTRuntime):
    """The coral target's parity: the int8 model on LiteRT, labelled as what it is."""

    def __init__(self, path: Path, input_names: Sequence[str], output_names: Sequence[str]):
        super().__init__(path, input_names, output_names)
        self.backend += "; int8 reference for the Edge TPU (no Edge TPU was run)"


@hookimpl
def edgex_load_runtime(target: str, io: ArtifactIO, options: Mapping[str, Any]) -> EdgeTpuReferenceRuntime:
    return EdgeTpuReferenceRuntime(io.path, [b.name for b in io.inputs], [b.name for b in io.outputs])


@hookimpl
def edgex_load_tracer(target: str, io: ArtifactIO, reference: ReferenceModel, options: Mapping[str, Any]) -> LiteRTTracer:
    notes = [litert.XNNPACK_TRACE_NOTE, "nothing ran on an Edge TPU: the int8 model was traced on LiteRT"]
    return LiteRTTracer(io, notes=notes)


@hookimpl
def edgex_check_operators(target: str, operators: ModelOperators, precision: str) -> OperatorCheck:
    from edgex.targets.litert.ops import check_tflite

    return check_tflite(operators, precision, "edgetpu", TARGETS[0].lacks)
