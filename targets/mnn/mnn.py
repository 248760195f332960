"""Target ``mnn``: Alibaba MNN (``.mnn``), validated on MNN's own CPU runtime.

Converted from the run's shared ONNX export (opset 17, the one ``jetson`` and ``openvino``'s ONNX
route read) by MNN's converter through its C extension (``_tools.mnnconvert``): fp32, fp16
(``--fp16``: fp16 weights), dynamic-int8 (``--weightQuantBits 8``, symmetric per-channel int8
weights, float activations) and int8 (the fp32 ``.mnn`` through MNN's quantization tool,
``_tools.mnnquant``, on the user's calibration data). Runs on ``MNN.nn`` modules with a
RuntimeManager whose backend (CPU) and precision mode (high) are explicit.

**No telemetry.** MNN's Python wrappers under ``MNN.tools`` (``mnnconvert``, ``mnnquant``) import
``MNN.tools.utils.log``, which runs ``pip install -U aliyun-log-python-sdk`` through ``os.system``
when that package is missing and posts usage logs to a remote service. This module never imports
anything under ``MNN.tools``: it calls the C extension ``_tools`` those wrappers call
(tests/test_target_mnn.py proves a conversion starts no process and opens no socket;
tests/test_architecture.py that no edgex module imports ``MNN.tools``).

Imports only ``edgex.plugins`` at module level; MNN, onnx and numpy inside the hooks.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from edgex.plugins import (
    Artifact,
    ArtifactIO,
    BackendStatus,
    ConversionRequest,
    ConversionResult,
    ModelOperators,
    OperatorCheck,
    ReferenceModel,
    TargetError,
    TargetOption,
    TargetSpec,
    TensorBinding,
    UnsupportedModel,
    UsageError,
    hookimpl,
    import_native,
    infer_permutation,
    layout_name,
    one_line,
    package_version,
    start_isolated,
    target_check,
)

#: the run's shared ONNX export at this opset (jetson's and openvino's ONNX route's too)
ONNX_OPSET = 17

#: int8 activation ranges: max (edgex sets max|x|/127 in mnnquant's file), or mnnquant's own KL
#: or ADMM thresholds (tools/quantization/calibration.cpp), see _quantize
INT8_METHODS = ("max", "KL", "ADMM")

TARGET = TargetSpec(
    name="mnn",
    description="Alibaba MNN (.mnn), validated on MNN's CPU runtime",
    artifact_kinds=(".mnn",),
    precisions=("fp32", "fp16", "dynamic-int8", "int8"),
    default_precision="fp32",
    options=(
        TargetOption(
            "mnn_int8_method",
            "int8 activation scales: max (max|x|/127 on the calibration data, in mnnquant's file; the scheme edgex simulates) or mnnquant's own clipped KL or ADMM thresholds",
            str, "max", INT8_METHODS,
        ),
    ),
    accepts=("torch", "onnx"),
)

#: MNN's RuntimeManager settings (BackendConfig enums as ints: the strings make MNN print)
_PRECISION_HIGH, _MEMORY_NORMAL = 1, 0
_RUNTIME_CONFIG = {"backend": "CPU", "precision": _PRECISION_HIGH, "memory": _MEMORY_NORMAL, "numThread": 1}


# --------------------------------------------------------------------------- MNN's output


@contextlib.contextmanager
def _captured() -> Iterator[list[str]]:
    """Everything written to file descriptors 1 and 2 inside (MNN's C++ prints there, past
    Python's streams), kept out of the user's terminal: put in ``text[0]`` at the end, and passed
    on to the process's stderr when that is not a terminal (a target's log, where the supervisor's
    conversion child writes both streams); never to stdout, which may carry ``--json``."""
    text = [""]
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield text
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            sink.seek(0)
            text[0] = sink.read().decode("utf-8", "replace")
            if text[0] and not os.isatty(2):  # stderr: stdout may carry --json
                os.write(2, text[0].encode())


_DEVICE: dict[str, str] = {}


def _mnn() -> Any:
    """MNN's Python package, imported quietly (it prints the CPU's features on import: kept, as
    what the report says the device supports). Never ``MNN.tools``."""
    if "MNN" not in sys.modules:
        with _captured() as text:
            importlib.import_module("MNN")
        found = re.search(r"The device supports: ([^\n]*)", text[0])
        _DEVICE["supports"] = found.group(1).strip() if found else ""
    return sys.modules["MNN"]


def _tools() -> Any:
    """MNN's converter and quantizer, the C extension (never the MNN.tools wrappers).

    It links its own protobuf: in a process that already holds TensorFlow's or coremltools' (a
    conversion child forked from a run that imported them) a plain import binds to theirs and
    aborts, so it is imported by ``import_native``.
    """
    return import_native("_tools")[0]


# --------------------------------------------------------------------------- declaring


@hookimpl
def edgex_targets():
    return (TARGET,)


@hookimpl
def edgex_backend_status(target: str) -> BackendStatus:
    if importlib.util.find_spec("MNN") is None or importlib.util.find_spec("_tools") is None:
        return BackendStatus(False, "MNN", "pip install 'edgex[mnn]'", "MNN not installed")
    missing = [p for p in ("onnx", "onnxscript") if importlib.util.find_spec(p) is None]
    if missing:
        return BackendStatus(False, "MNN", "pip install 'edgex[mnn]'", f"{', '.join(missing)} not installed (the ONNX export MNN converts)")
    return BackendStatus(True, f"MNN {package_version('MNN')} (CPU)")


# --------------------------------------------------------------------------- converting


def _isolated(call: Any, what: str) -> str:
    """Run MNN's ``call()`` in a child process (its converter and quantizer abort the process on
    input they cannot take): its output text, or TargetError naming ``what`` when it crashed."""

    def work(send: Any) -> str:
        with _captured() as text:
            call()
        return text[0]

    # a crash comes back as one line naming ``what``; an exception as RemoteError
    return start_isolated(work, what=what).wait()


def _onnx_nodes(path: Path) -> dict[str, list[str]]:
    """ONNX op type -> the names of the nodes of that type (to name what MNN cannot convert)."""
    import onnx

    nodes: dict[str, list[str]] = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        nodes.setdefault(node.op_type, []).append(node.name or node.output[0])
    return nodes


def _convert(onnx_path: Path, dest: Path, extra: Sequence[str]) -> str:
    """mnnconvert from ONNX; its output text. An op it lacks is UnsupportedModel naming the
    nodes (it prints "These Op Not Support: ONNX::Op" and writes nothing, returning True)."""
    argv = ["mnnconvert", "-f", "ONNX", "--modelFile", str(onnx_path), "--MNNModel", str(dest), "--bizCode", "edgex", *extra]
    text = _isolated(lambda: _tools().mnnconvert(argv), "MNN's converter (mnnconvert)")
    if dest.exists() and "Converted Success" in text:
        return text
    lacking = re.search(r"These Op Not Support:\s*([^\n]*)", text)
    if lacking:
        ops = [op.split("::", 1)[-1] for op in lacking.group(1).split()]
        nodes = _onnx_nodes(onnx_path)
        named = "; ".join(f"{op} ({', '.join(nodes.get(op, [])[:3]) or 'node unknown'})" for op in ops)
        raise UnsupportedModel(f"MNN's converter has no conversion for ONNX op {named}: rewrite that layer from supported ops or use another target")
    last = [line.strip() for line in text.splitlines() if line.strip()][-1:] or ["no output"]
    raise TargetError(f"mnnconvert wrote no .mnn file (it said: {last[0]})", stage="convert")


def _calibration_folder(calibration: Sequence[Sequence[Any]], folder: Path, names: Sequence[str]) -> int:
    """The calibration data as mnnquant's ``input_type: sequence`` reads it: one folder per
    sample holding ``input.json`` (each input's name and shape) and ``<name>.txt`` (its values,
    whitespace-separated, read as doubles). Returns the sample count."""
    import numpy as np

    for i, sample in enumerate(calibration):
        here = folder / f"{i:05d}"
        here.mkdir(parents=True)
        inputs = []
        for name, array in zip(names, sample):
            array = np.asarray(array, dtype=np.float32)
            inputs.append({"name": name, "shape": list(array.shape)})
            flat = array.ravel()
            # %.9g keeps every float32 exactly (read back as a double, then stored as float32)
            (here / f"{name}.txt").write_text(("%.9g\n" * flat.size) % tuple(flat.tolist()))
        (here / "input.json").write_text(json.dumps({"inputs": inputs, "outputs": []}))
    return len(calibration)


def _quantize(request: ConversionRequest, fp32: Path, dest: Path, names: Sequence[str]) -> tuple[str, str]:
    """Full int8 by MNN's quantization tool on the calibration data; (converter words, method).

    What mnnquant does (tools/quantization/calibration.cpp, MNN 3.6.1): every convolution (and
    the Gemm/MatMul the converter made one) gets int8 weights, symmetric per output channel on
    [-127, 127] (MAX_ABS: scale = max|w| / 127), and int8 input and output grids, symmetric
    (zero point 0, [-127, 127]) with KL or ADMM; other ops run float between them. Its activation
    thresholds are clipped (KL divergence of a histogram, or ADMM), and measured on the digits
    CNN against torch they cost 5-8 dB below edgex's min/max simulation (KL 31.6 dB, ADMM 29.1,
    simulated 37-39.6); EMA, its third method, gave 3.9-19.8 dB there (one output grid it wrote
    covered [-4.1, 0] for logits reaching +10; the cause was not pursued). So the default,
    ``max``, runs mnnquant (on a few samples: its file, weights and which tensors are int8; ADMM, see below) and then sets each int8
    tensor's scale to max|x| / 127 over all the calibration data, measured by MNN itself on the fp32 model (37.1 dB on
    digits): the symmetric max-abs grid edgex simulates (``symmetric_activations``). ADMM makes
    that file: KL segfaults on the dynamo export's graph of the digits CNN.
    ``--mnn-int8-method KL`` / ``ADMM`` keep mnnquant's own thresholds.
    """
    if not request.calibration:
        raise UsageError("int8 needs calibration data: pass --calibration FILE|DIR")
    method = request.options.get("mnn_int8_method") or "max"
    if method not in INT8_METHODS:
        raise UsageError(f"--mnn-int8-method {method}: choose one of {', '.join(INT8_METHODS)}")
    work = request.workdir / "mnnquant"
    # max: mnnquant's thresholds are replaced, so a few samples make its file fast
    calibration = request.calibration[:_MNNQUANT_SAMPLES] if method == "max" else request.calibration
    samples = _calibration_folder(calibration, work / "calibration", names)
    config = {
        "format": "RGB", "mean": [0.0, 0.0, 0.0], "normal": [1.0, 1.0, 1.0],  # image settings, unused by sequence input
        "path": str(work / "calibration"), "used_sample_num": samples, "input_type": "sequence",
        "inputs": [{"name": name, "shape": list(array.shape)} for name, array in zip(names, calibration[0])],
        "feature_quantize_method": "ADMM" if method == "max" else method, "weight_quantize_method": "MAX_ABS",
    }
    config_path = work / "config.json"
    config_path.write_text(json.dumps(config))
    # mnnquant writes DEST.json (its scale dump) beside DEST: both inside the scratch folder
    scratch = work / "model.int8.mnn"
    # the C function takes argv as a list (its Python wrapper's three strings crash it)
    text = _isolated(lambda: _tools().mnnquant(["mnnquant", str(fp32), str(scratch), str(config_path)]), "MNN's quantization tool (mnnquant)")
    if not scratch.exists() or "Quantize model done" not in text:
        last = [line.strip() for line in text.splitlines() if line.strip()][-1:] or ["no output"]
        raise TargetError(f"mnnquant wrote no int8 model (it said: {last[0]})", stage="convert")
    if "use EMA quantize method instead" in text:  # a BatchNorm op left after conversion
        raise TargetError("mnnquant switched to its EMA ranges (the model keeps a BatchNorm op MNN did not fold), which edgex cannot reproduce", stage="convert")
    # mnnquant can write a model MNN's runtime computes nothing for (the zoo's LSTM: "Compute
    # Shape Error for Convolution"), and reading that nothing segfaults: one checked run first.
    # In this process: MNN's runtime in a child forked after MNN ran here spins forever
    with _captured():
        _trial_run(scratch, names, calibration[0])
    if method == "max":
        _max_abs_scales(scratch, fp32, request.calibration, names)
        how = f"int8 by mnnquant (ADMM on {samples} samples, MAX_ABS per-channel weights), activation scales set to max|x|/127 over {len(request.calibration)} calibration samples"
    else:
        how = f"int8 by mnnquant ({method} activation thresholds, MAX_ABS per-channel weights; {samples} calibration samples)"
    os.replace(scratch, dest)
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    return how, method


def _trial_run(path: Path, names: Sequence[str], sample: Sequence[Any]) -> None:
    import numpy as np

    MNN = _mnn()
    F = MNN.expr
    module = MNN.nn.load_module_from_file(str(path), list(names), [])
    outputs = module.forward([F.const(np.ascontiguousarray(x, dtype=np.float32), list(np.shape(x)), F.NCHW) for x in sample])
    if not outputs:  # MNN printed why (a shape error in a quantized layer) and computed nothing
        raise TargetError("MNN's runtime cannot run mnnquant's int8 model: it computes no output (a shape error in a layer mnnquant quantized; see the target's log)", stage="convert")
    for out in outputs:
        F.convert(out, F.NCHW).read()


#: samples mnnquant itself sees under ``max`` (its thresholds are then replaced)
_MNNQUANT_SAMPLES = 16


def _max_abs_scales(int8: Path, fp32: Path, calibration: Sequence[Sequence[Any]], names: Sequence[str]) -> None:
    """Set every int8 tensor's scale in ``int8`` (its TensorQuantInfo, and the scaleIn/scaleOut
    of the convolutions reading and writing it) to max|x| / 127 on the calibration data, x as
    MNN's fp32 model computes it: mnnquant's grids are symmetric (zero point 0), so this is the
    max-abs symmetric calibration edgex simulates. The file is patched in place (same size)."""
    import struct

    import numpy as np

    from edgex.targets.mnn import mnnfile

    model = mnnfile.read(int8)
    indexes = sorted({grid.index for grid in model.grids})
    tensors = [model.tensor_names[i] for i in indexes]
    MNN = _mnn()
    F = MNN.expr
    with _captured():
        module = MNN.nn.load_module_from_file(str(fp32), list(names), tensors)
    if module is None:
        raise TargetError("MNN cannot read the int8 tensors back from the fp32 model to set their scales (try --mnn-int8-method KL)", stage="convert")
    peak = np.zeros(len(tensors))
    with _captured():
        for sample in calibration:
            values = [F.const(np.ascontiguousarray(x, dtype=np.float32), list(np.shape(x)), F.NCHW) for x in sample]
            outputs = module.forward(values)
            peak = np.maximum(peak, [float(np.abs(F.convert(out, F.NCHW).read()).max()) for out in outputs])
    scale = {index: max(value, 1e-8) / 127.0 for index, value in zip(indexes, peak)}
    buf = bytearray(model.buf)
    for grid in model.grids:
        if grid.scale_at is None:
            raise TargetError(f"the int8 grid of tensor {model.tensor_names[grid.index]!r} stores no scale to set", stage="convert")
        struct.pack_into("<f", buf, grid.scale_at, scale[grid.index])
    for conv in model.convolutions:
        for at, index in ((conv.scale_in_at, conv.input_index), (conv.scale_out_at, conv.output_index)):
            if at is not None and index in scale:
                struct.pack_into("<f", buf, at, scale[index])
    int8.write_bytes(bytes(buf))


@hookimpl
def edgex_convert(request: ConversionRequest) -> ConversionResult:
    work = request.workdir
    onnx_path = work / "model.export.onnx"
    mnn_version = package_version("MNN") or "?"
    final = work / "model.mnn"
    extra = {"fp16": ["--fp16"], "dynamic-int8": ["--weightQuantBits", "8", "--weightQuantAsymmetric=false"]}.get(request.precision, [])
    fp32 = work / "model.fp32.mnn" if request.precision == "int8" else final
    try:
        exporter, messages = request.onnx_export(onnx_path, opset=ONNX_OPSET)
        try:
            _convert(onnx_path, fp32, extra)
        except UnsupportedModel:
            raise
        except TargetError as exc:
            if request.model.onnx_path is not None:
                raise
            # MNN 3.6.1's converter segfaults on the dynamo exporter's LSTM (the zoo's); the
            # TorchScript exporter's ONNX of the same model converts: tried once, and said
            exporter, more = request.onnx_export(onnx_path, opset=ONNX_OPSET, exporter="torchscript")
            _convert(onnx_path, fp32, extra)
            messages = [*messages, *more, f"mnnconvert failed on the first export ({one_line(exc)}); converted the TorchScript exporter's instead"]
        converter = f"{exporter} -> mnnconvert {mnn_version}"
        if request.precision == "int8":
            from edgex.targets.mnn import mnnfile

            # read from the file, not by MNN: MNN loaded here before mnnquant's fork crashes the child
            names = mnnfile.read(fp32).input_names
            how, _ = _quantize(request, fp32, final, names)
            fp32.unlink(missing_ok=True)
            converter += f"; {how}"
        else:
            converter += {"fp16": " --fp16 (fp16 weights)", "dynamic-int8": " --weightQuantBits 8 (symmetric per-channel int8 weights)"}.get(request.precision, "")
    finally:
        onnx_path.unlink(missing_ok=True)
    io = describe_mnn(final, request.model, request.precision)
    details = {"mnn": {"version": mnn_version, "quantization": dict(io.quantization)}} if io.quantization else {"mnn": {"version": mnn_version}}
    return ConversionResult((Artifact(final, "mnn"),), io, converter, tuple(messages), details)


# --------------------------------------------------------------------------- describing


def _mnn_io_names(path: Path) -> tuple[list[str], list[str]]:
    """The file's input and output names, as MNN's module loader reads them."""
    MNN = _mnn()
    with _captured():
        module = MNN.nn.load_module_from_file(str(path), [], [])
        if module is None:
            raise UsageError(f"MNN cannot load {path}")
        info = module.get_info()
    return list(info["inputNames"]), list(info["outputNames"])


def _output_shapes(path: Path, inputs: Sequence[TensorBinding], outputs: Sequence[str]) -> list[tuple[int, ...]]:
    """The outputs' shapes: the file records none, so one run on zeros tells them."""
    import numpy as np

    runtime = MnnRuntime(ArtifactIO(path, "fp32", tuple(inputs), tuple(TensorBinding(n, (), "float32") for n in outputs)))
    return [tuple(o.shape) for o in runtime.run([np.zeros(b.shape, np.float32) for b in inputs])]


def _read(path: Path) -> Any:
    from edgex.targets.mnn import mnnfile

    if path.suffix != ".mnn":
        raise UsageError(f"{path} is not an .mnn file (MNN's model format)")
    try:
        return mnnfile.read(path)
    except mnnfile.NotMnn as exc:
        raise UsageError(f"cannot read {path} as an MNN model (not MNN's flatbuffer: {exc}); give a .mnn file MNN's converter wrote") from exc
    except OSError as exc:
        raise UsageError(f"cannot read {path} as an MNN model: {one_line(exc)}") from exc


def quantization_scheme(model: Any) -> dict[str, Any]:
    """How an int8 .mnn quantizes, read from the file, for edgex's simulated reference.

    Weights: mnnquant stores them symmetric per output channel with ``symmetricQuan``'s clamp
    [-127, 127] -- edgex's default. Activations: zero points 0 on every grid (KL, ADMM) are
    ``symmetric_activations``; EMA's grids carry zero points, edgex's default affine scheme."""
    grids = model.grids
    scheme: dict[str, Any] = {"quantizer": "mnnquant"}
    if grids and all(grid.zero == 0.0 for grid in grids):
        scheme["symmetric_activations"] = True
    clamps = {conv.clamp for conv in model.convolutions if conv.clamp}
    if clamps and max(high for _, high in clamps) <= 63:
        scheme["weight_bits"] = 7
    return scheme


def describe_mnn(path: Path, reference: ReferenceModel, precision: str | None = None) -> ArtifactIO:
    """The .mnn file's inputs and outputs related to the reference (NCHW float I/O: MNN's
    converter keeps the ONNX layout, and an int8 model quantizes inside)."""
    from edgex.targets.mnn import mnnfile

    path = Path(path)
    model = _read(path)
    inputs_named, outputs_named = _mnn_io_names(path)
    if len(inputs_named) != len(reference.inputs):
        raise UsageError(f"{path} takes {len(inputs_named)} inputs but the reference model takes {len(reference.inputs)}")
    shapes = model.input_shapes
    inputs = []
    for name, spec in zip(inputs_named, reference.inputs):
        shape = tuple(shapes.get(name) or spec.shape)
        perm = infer_permutation(spec.shape, shape)
        if perm is None:
            raise UsageError(f"input {name!r} of {path} has shape {shape}, which no layout maps to the reference's {spec.shape}")
        inputs.append(TensorBinding(name, shape, "float32", layout_name(len(shape), perm), perm))
    shapes_out = _output_shapes(path, inputs, outputs_named)
    outputs = tuple(TensorBinding(name, shape, "float32") for name, shape in zip(outputs_named, shapes_out))
    precision = precision or mnnfile.precision_of(model)
    scheme = quantization_scheme(model) if precision == "int8" else {}
    return ArtifactIO(path, precision, tuple(inputs), outputs, scheme)


@hookimpl
def edgex_describe_artifact(target: str, path: Path, reference: ReferenceModel) -> ArtifactIO:
    return describe_mnn(Path(path), reference)


# --------------------------------------------------------------------------- running


def arithmetic(precision: str, supports: str) -> str:
    """What the CPU backend computes in for an artifact of ``precision``, in words."""
    if precision == "fp16":
        return f"fp16 weights decoded to fp32, fp32 arithmetic (precision high; this CPU: {supports or 'features unknown'})"
    if precision == "dynamic-int8":
        return "int8 weights dequantized to fp32 on load (memory normal), fp32 arithmetic"
    if precision == "int8":
        return f"int8 convolution kernels, float ops between them (this CPU: {supports or 'features unknown'})"
    return "fp32 arithmetic"


class MnnRuntime:
    """An .mnn file loaded as an ``MNN.nn`` module on a CPU RuntimeManager, precision high."""

    def __init__(self, io: ArtifactIO):
        MNN = _mnn()
        self.F = MNN.expr
        self.input_names = [b.name for b in io.inputs]
        self.output_names = [b.name for b in io.outputs]
        try:
            with _captured():
                self.manager = MNN.nn.create_runtime_manager((dict(_RUNTIME_CONFIG),))
                self.module = MNN.nn.load_module_from_file(str(io.path), self.input_names, self.output_names, runtime_manager=self.manager)
        except Exception as exc:
            raise TargetError(f"MNN cannot load {Path(io.path).name}: {one_line(exc)}", stage="validate") from exc
        if self.module is None:
            raise TargetError(f"MNN cannot load {Path(io.path).name} (load_module_from_file returned nothing)", stage="validate")
        version = getattr(MNN, "version", lambda: package_version("MNN"))()
        self.backend = f"MNN {version} CPU backend (precision high, memory normal, 1 thread): {arithmetic(io.precision, _DEVICE.get('supports', ''))}"

    def run(self, inputs: Sequence[Any]) -> list[Any]:
        import numpy as np

        F = self.F
        values = [F.const(np.ascontiguousarray(x, dtype=np.float32), list(np.shape(x)), F.NCHW) for x in inputs]
        # not captured: forward prints nothing, and a capture here would swallow a progress
        # display's output in between; each output copied (MNN reuses its memory next run)
        outputs = self.module.forward(values)
        if len(outputs) != len(self.output_names) and self.output_names:
            raise TargetError(f"MNN's runtime computed {len(outputs)} of the model's {len(self.output_names)} outputs (it logs why)", stage="validate")
        return [np.array(F.convert(out, F.NCHW).read(), copy=True) for out in outputs]


@hookimpl
def edgex_load_runtime(target: str, io: ArtifactIO, options: Mapping[str, Any]):
    return MnnRuntime(io)


# --------------------------------------------------------------------------- edgex check


@hookimpl
def edgex_check_operators(target: str, operators: ModelOperators, precision: str) -> OperatorCheck:
    """MNN converts the run's ONNX export, so what edgex can vouch for is that export, as the onnx
    target judges it. MNN's ONNX converter keeps its op table in C++ (tools/converter/source/onnx):
    an exported ONNX op it lacks is not predicted here; ``edgex convert`` names it with its node."""
    answer = target_check("onnx", operators, precision)
    if answer is None:
        return OperatorCheck(source="no ONNX target installed to judge the ONNX export MNN converts", unknown=tuple(op.name for op in operators.operators))
    return OperatorCheck(
        tuple(answer.findings),
        f"the ONNX export MNN converts, as the onnx target judges it ({answer.source})",
        tuple(answer.unknown),
        ("MNN's ONNX converter's own op table is not consulted: an exported ONNX op it lacks fails edgex convert, naming the node",) + tuple(answer.notes),
    )
