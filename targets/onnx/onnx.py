"""Target ``onnx``: ``torch.onnx.export`` (the dynamo exporter, falling back to the TorchScript
exporter when it fails, the fallback recorded), ``onnx.checker``, then fp16 (onnxruntime's float16
converter, float32 I/O kept) or int8 (QDQ static quantization, per-channel weights, from the
calibration data; 7-bit weights where this x86 CPU lacks VNNI, see ``int8_saturating_cpu``).
Validated on onnxruntime's CPU provider. The ONNX machinery it shares with ``jetson`` lives in
``model.py`` and ``runtime.py`` beside it.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Mapping

from edgex.plugins import (
    package_version,
    Artifact,
    ArtifactIO,
    BackendStatus,
    ConversionRequest,
    ConversionResult,
    ModelOperators,
    OperatorCheck,
    ReferenceModel,
    TargetOption,
    TargetSpec,
    UsageError,
    hookimpl,
)
from edgex.targets.onnx.model import (
    DEFAULT_OPSET,
    EXPORTER_OPTION,
    OPSET_OPTION,
    check_onnx,
    check_operators,
    describe_onnx,
    fp16_model,
    fp32_onnx,
    kept_float_messages,
    onnx_save,
    onnx_status,
    to_int8_qdq,
)
from edgex.targets.onnx.runtime import OnnxRuntime, OnnxTracer

TARGET = TargetSpec(
    name="onnx",
    description="ONNX model, validated on onnxruntime (CPU)",
    artifact_kinds=(".onnx",),
    precisions=("fp32", "fp16", "int8"),
    default_precision="fp32",
    options=(
        OPSET_OPTION,
        TargetOption("dynamic_batch", "export the batch dimension as dynamic (onnx only)", bool, False),
        EXPORTER_OPTION,
        TargetOption(
            "reduce_range",
            "int8: quantize weights to 7 bits (auto: on where this CPU lacks VNNI, whose onnxruntime int8 kernels saturate 8-bit weights; onnx only)",
            str, "auto", ("auto", "on", "off"),
        ),
    ),
    accepts=("torch", "onnx"),
    keeps_wider=("float",),  # int8: nodes left out of QDQ quantization run float (to_int8_qdq)
)

#: what the onnx target's fp16 artifact computes in on onnxruntime's CPU provider
_ORT_FP16_ARITHMETIC = ", fp16 graph: ops without an fp16 CPU kernel run in fp32 between Casts onnxruntime removes (fp16 weights, fp32 arithmetic)"


@hookimpl
def edgex_targets():
    return (TARGET,)


@hookimpl
def edgex_backend_status(target: str) -> BackendStatus:
    return onnx_status() or BackendStatus(True, f"onnxruntime {package_version('onnxruntime')}")


# --------------------------------------------------------------------------- int8 on this CPU


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


# --------------------------------------------------------------------------- converting


@hookimpl
def edgex_convert(request: ConversionRequest) -> ConversionResult:
    work = request.workdir
    opset = request.options.get("opset") or DEFAULT_OPSET
    fp32 = work / "model.fp32.onnx"
    converter, messages = fp32_onnx(request, fp32, opset, bool(request.options.get("dynamic_batch")))
    check_onnx(fp32)
    final = work / "model.onnx"
    details: dict[str, Any] = {}
    if request.precision == "fp16":
        onnx_save(fp16_model(fp32), final)
        converter += "; fp16 by onnxruntime.transformers.float16 (float32 I/O kept)"
    elif request.precision == "int8":
        saturating_cpu = this_cpu_saturates_int8()
        asked = request.options.get("reduce_range") or "auto"
        reduce_range, why = choose_reduce_range(asked, saturating_cpu)
        kept = to_int8_qdq(fp32, final, request, symmetric=False, reduce_range=reduce_range, guard_float_weights=True)
        chosen = f"reduce_range {'on' if reduce_range else 'off'}"
        if asked == "auto":
            chosen += f" (auto: this CPU is {saturating_cpu})" if saturating_cpu else " (auto: this CPU's int8 kernels do not saturate)"
        converter += f"; int8 QDQ by onnxruntime.quantization (per-channel {7 if reduce_range else 8}-bit weights, {chosen})"
        messages.append(why)
        details["quantization"] = {"reduce_range": reduce_range, "weight_bits": 7 if reduce_range else 8, "saturating_cpu": saturating_cpu}
        kept_messages, kept_details = kept_float_messages(kept)
        messages.extend(kept_messages)
        details["quantization"].update(kept_details)
    else:
        shutil.copyfile(fp32, final)
    fp32.unlink(missing_ok=True)
    check_onnx(final)
    return ConversionResult((Artifact(final, "onnx"),), describe_onnx(final, request.model, request.precision), converter, tuple(messages), details)


@hookimpl
def edgex_describe_artifact(target: str, path: Path, reference: ReferenceModel) -> ArtifactIO:
    if path.suffix != ".onnx":
        raise UsageError(f"{path} is not an .onnx file")
    return describe_onnx(path, reference)


# --------------------------------------------------------------------------- running and explaining


@hookimpl
def edgex_load_runtime(target: str, io: ArtifactIO, options: Mapping[str, Any]):
    return OnnxRuntime(io.path, note=_ORT_FP16_ARITHMETIC if io.precision == "fp16" else "")


@hookimpl
def edgex_load_tracer(target: str, io: ArtifactIO, reference: ReferenceModel, options: Mapping[str, Any]):
    return OnnxTracer(io)


@hookimpl
def edgex_check_operators(target: str, operators: ModelOperators, precision: str) -> OperatorCheck:
    return check_operators(operators, DEFAULT_OPSET)
