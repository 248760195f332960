"""Target ``jetson`` (alias ``tensorrt``): the ONNX of the reference prepared the way TensorRT
takes it: static shapes, opset 17, constants folded, QDQ with symmetric (zero-point 0) int8
scales. Where ``tensorrt`` imports, an engine is built and validated; elsewhere onnxruntime runs
the ONNX in the precision TensorRT would use (fp16 by rounding a copy in memory, int8 by running
the QDQ graph unfused), and ``backend`` says so.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

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
    TargetError,
    TargetSpec,
    UsageError,
    hookimpl,
)
from edgex.targets.onnx.model import (
    EXPORTER_OPTION,
    OPSET_OPTION,
    check_onnx,
    check_operators,
    describe_onnx,
    fold_static,
    fp32_onnx,
    kept_float_messages,
    node_scopes,
    onnx_status,
    to_int8_qdq,
)
from edgex.targets.onnx.runtime import OnnxRuntime, OnnxTracer

TENSORRT_OPSET = 17  # parsed by TensorRT 8.5 (JetPack 5) and 10.x alike

TARGET = TargetSpec(
    name="jetson",
    aliases=("tensorrt",),
    description="ONNX prepared for TensorRT (+ .engine where TensorRT is installed)",
    artifact_kinds=(".engine", ".trt.onnx"),
    precisions=("fp32", "fp16", "int8"),
    default_precision="fp16",
    options=(OPSET_OPTION, EXPORTER_OPTION),  # TensorRT takes static shapes and 8-bit symmetric int8 only
    accepts=("torch", "onnx"),
    # int8: nodes left out of QDQ quantization carry no Q/DQ, which TensorRT's explicit
    # quantization runs in fp32 (no FP16 flag on an int8 build)
    keeps_wider=("float",),
)

#: how the jetson target's int8 artifact runs without TensorRT
_TENSORRT_INT8 = (
    "emulating TensorRT int8: QDQ run unfused (int8 values, float arithmetic), "
    "not onnxruntime's fused int8 kernels, which saturate 8-bit weights on CPUs without VNNI where TensorRT does not"
)


def _tensorrt_available() -> bool:
    return importlib.util.find_spec("tensorrt") is not None


@hookimpl
def edgex_targets():
    return (TARGET,)


@hookimpl
def edgex_backend_status(target: str) -> BackendStatus:
    missing = onnx_status()
    if missing is not None:
        return missing
    if _tensorrt_available():
        return BackendStatus(True, f"TensorRT {package_version('tensorrt') or ''}".strip())
    return BackendStatus(True, f"onnxruntime {package_version('onnxruntime')} (TensorRT not installed: its precision is emulated, TensorRT not run)", emulated=True)


# --------------------------------------------------------------------------- converting


@hookimpl
def edgex_convert(request: ConversionRequest) -> ConversionResult:
    work = request.workdir
    opset = request.options.get("opset") or TENSORRT_OPSET
    fp32 = work / "model.fp32.onnx"
    converter, messages = fp32_onnx(request, fp32, opset, dynamic_batch=False)
    check_onnx(fp32)
    # the export's torch modules per node, before onnxruntime's folding drops their metadata
    scopes = node_scopes(fp32) if request.precision == "int8" else {}
    folded = work / "model.folded.onnx"
    fold_static(fp32, folded, request.model.inputs)
    folded.replace(fp32)
    converter += "; static shapes, constants folded"

    final = work / "model.trt.onnx"
    details: dict[str, Any] = {}
    if request.precision == "int8":
        kept = to_int8_qdq(fp32, final, request, symmetric=True, scopes=scopes)
        converter += "; int8 QDQ by onnxruntime.quantization (8-bit symmetric, as TensorRT requires)"
        details["quantization"] = {"reduce_range": False, "weight_bits": 8, "symmetric": True}
        kept_messages, kept_details = kept_float_messages(kept)
        messages.extend(kept_messages)
        details["quantization"].update(kept_details)
    else:
        # fp16 keeps an fp32 ONNX: TensorRT lowers it to fp16 with its FP16 builder flag
        shutil.copyfile(fp32, final)
    fp32.unlink(missing_ok=True)
    check_onnx(final)
    artifacts = [Artifact(final, "onnx")]
    io = describe_onnx(final, request.model, request.precision)
    details["tensorrt"] = {"opset": opset, "static_shapes": True}
    if _tensorrt_available():
        engine = work / "model.engine"
        _build_engine(final, engine, request.precision)
        artifacts.append(Artifact(engine, "engine"))
        io = ArtifactIO(engine, io.precision, io.inputs, io.outputs, io.quantization)
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
        return ArtifactIO(path, io.precision, io.inputs, io.outputs, io.quantization)
    if path.suffix != ".onnx":
        raise UsageError(f"{path} is not an .onnx file")
    return describe_onnx(path, reference)


# --------------------------------------------------------------------------- TensorRT


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


# --------------------------------------------------------------------------- running and explaining


@hookimpl
def edgex_load_runtime(target: str, io: ArtifactIO, options: Mapping[str, Any]):
    if io.path.suffix == ".engine":
        return TensorRTRuntime(io.path)
    if io.precision == "fp16":
        return OnnxRuntime(io.path, emulate_fp16=True, note=", emulating TensorRT fp16: weights and every op's output rounded to fp16 (TensorRT not run: not installed)")
    if io.precision == "int8":
        return OnnxRuntime(io.path, unfused_qdq=True, emulated=True, note=f", {_TENSORRT_INT8} (TensorRT not run: not installed)")
    return OnnxRuntime(io.path, emulated=True, note=f", emulating TensorRT {io.precision} (TensorRT not run: not installed)")


@hookimpl
def edgex_load_tracer(target: str, io: ArtifactIO, reference: ReferenceModel, options: Mapping[str, Any]):
    if io.path.suffix == ".engine":
        raise UsageError(f"a TensorRT engine keeps its intermediate tensors inside the engine: explain the .onnx {io.path.name} was built from")
    int8 = io.precision == "int8"
    note = f", {_TENSORRT_INT8}" if int8 else f", {io.precision} as TensorRT would compute"
    tracer = OnnxTracer(io, as_fp16=io.precision == "fp16", unfused_qdq=int8, note=note)
    tracer.notes = ("TensorRT does not expose intermediate tensors: the ONNX was traced on onnxruntime in the precision TensorRT would use",)
    return tracer


@hookimpl
def edgex_check_operators(target: str, operators: ModelOperators, precision: str) -> OperatorCheck:
    return check_operators(operators, TENSORRT_OPSET, ("TensorRT's own parser is checked when the engine is built: edgex has no TensorRT here to ask",))
