"""Target ``tflite`` (alias ``litert``): a ``.tflite`` validated on the LiteRT interpreter.

fp32, fp16 (fp16 weights), dynamic-int8 (int8 weights, float activations) or full int8 (int8
inputs, outputs and activations, per-channel int8 weights, calibrated on the user's data).
Image inputs and outputs are NHWC in the artifact and the bindings say so. The conversion, its
checks and the runtime are shared with ``coral`` and ``mcu`` and live in ``edgex.targets.litert.convert``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from edgex.plugins import (
    package_version,
    ArtifactIO,
    BackendStatus,
    ConversionRequest,
    ConversionResult,
    ReferenceModel,
    TargetSpec,
    hookimpl,
    ModelOperators,
    OperatorCheck,
)
from edgex.targets.litert import convert as litert
from edgex.targets.litert.runtime import LiteRTRuntime, LiteRTTracer

TARGETS = (
    TargetSpec(
        name="tflite",
        aliases=("litert",),
        description="TensorFlow Lite / LiteRT .tflite (NHWC images), validated on the LiteRT interpreter",
        artifact_kinds=(".tflite",),
        precisions=("fp32", "fp16", "dynamic-int8", "int8"),
        default_precision="fp32",
        options=litert.CONVERTER_OPTIONS,
        accepts=("torch", "onnx"),
        lacks=("int64-inputs", "fused-transformer", "oversized-pool"),
        # mixed precision: the kept layers' ops run float on the CPU kernels (docs/mixed_precision.md)
        keeps_wider=("float",),
    ),
)


@hookimpl
def edgex_targets():
    return TARGETS


@hookimpl
def edgex_backend_status(target: str) -> BackendStatus:
    if not litert.interpreter_installed():
        return BackendStatus(False, "LiteRT", "pip install 'edgex[tflite]'", "no LiteRT interpreter (ai-edge-litert) installed")
    paths = litert.converter_paths()
    if not paths:
        return BackendStatus(False, "LiteRT", "pip install 'edgex[tflite]'", "no converter installed (litert-torch or onnx2tf + tensorflow)")
    converters = ", ".join(f"{p} {package_version(p) or ''}".strip() for p in paths)
    return BackendStatus(True, f"{litert.interpreter_name()} (converters: {converters})")


@hookimpl
def edgex_convert(request: ConversionRequest) -> ConversionResult:
    return litert.convert_tflite(request)


@hookimpl
def edgex_describe_artifact(target: str, path: Path, reference: ReferenceModel) -> ArtifactIO:
    return litert.describe_artifact(path, reference)


@hookimpl
def edgex_load_runtime(target: str, io: ArtifactIO, options: Mapping[str, Any]) -> LiteRTRuntime:
    return LiteRTRuntime(io.path, [b.name for b in io.inputs], [b.name for b in io.outputs])


@hookimpl
def edgex_load_tracer(target: str, io: ArtifactIO, reference: ReferenceModel, options: Mapping[str, Any]) -> LiteRTTracer:
    return LiteRTTracer(io, notes=[litert.XNNPACK_TRACE_NOTE])


@hookimpl
def edgex_check_operators(target: str, operators: ModelOperators, precision: str) -> OperatorCheck:
    from edgex.targets.litert.ops import check_tflite

    return check_tflite(operators, precision, "litert", TARGETS[0].lacks)
