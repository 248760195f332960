"""Target ``ncnn``: Tencent ncnn's ``.ncnn.param`` + ``.ncnn.bin``, converted by pnnx and validated on
ncnn's own runtime (its Python bindings, the same C++ library a phone links).

The model is traced (``torch.jit.trace``, as ``pnnx.export`` does) at batch 1 and handed to the
pnnx program, the route Ultralytics takes; pnnx runs in a scratch folder inside the workdir, and
of what it writes (its own ``.pnnx.*`` graph, generated Python, ONNX) only the two ncnn files are
kept. fp16: pnnx's ``fp16=1`` stores the weights as float16 and ncnn runs with its fp16 options on;
fp32: ``fp16=0`` and every fp16 option off (they default to on, so an fp32 model otherwise runs
with fp16 storage where the CPU has it, ncnn#4816). int8 is refused: ncnn's quantizers
(``ncnn2table``, ``ncnn2int8``) are C++ programs of ncnn's source tree that neither the wheel nor the
sdist ships.

An ncnn Mat has no batch axis: the runtime feeds one sample at a time and stacks the results, so
the artifact's bindings keep the reference's batched shapes.
"""

from __future__ import annotations

import importlib.util
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from edgex.plugins import (
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
    ReferenceModel,
    TargetError,
    TargetSpec,
    TensorBinding,
    TracedTensor,
    UnsupportedModel,
    UsageError,
    hookimpl,
)
from edgex.targets.ncnn.model import ParamError, bin_path, load_ncnn, read_param, weight_blobs

INT8_REFUSED = (
    "ncnn's int8 quantizers (ncnn2table, ncnn2int8) are C++ programs of ncnn's source tree that neither the ncnn "
    "wheel nor its sdist ships; quantize with another target (tflite, onnx, executorch, openvino)"
)

TARGET = TargetSpec(
    name="ncnn",
    description="Tencent ncnn (.ncnn.param + .ncnn.bin) by pnnx, validated on the ncnn runtime (CPU)",
    artifact_kinds=(".ncnn.param", ".param"),  # pnnx writes model.ncnn.param; ncnn's own tools write model.param
    precisions=("fp32", "fp16"),
    default_precision="fp32",
    accepts=("torch",),
    refuses=(("int8", INT8_REFUSED), ("dynamic-int8", INT8_REFUSED)),
)

#: seconds pnnx may take (it converts a ResNet-18 in a few)
PNNX_TIMEOUT = 600
_FP16_OPTIONS = ("use_fp16_packed", "use_fp16_storage", "use_fp16_arithmetic")


@hookimpl
def edgex_targets():
    return (TARGET,)


@hookimpl
def edgex_backend_status(target: str) -> BackendStatus:
    missing = [p for p in ("pnnx", "ncnn", "torch") if importlib.util.find_spec(p) is None]
    if missing:
        return BackendStatus(False, "pnnx + ncnn", "pip install 'edgex[ncnn]'", f"{', '.join(missing)} not installed")
    return BackendStatus(True, f"pnnx {package_version('pnnx')} -> ncnn {package_version('ncnn')} runtime (Python bindings, CPU)")


# --------------------------------------------------------------------------- converting


def _pnnx_executable() -> Path:
    spec = importlib.util.find_spec("pnnx")
    if spec is None or spec.origin is None:
        raise TargetError("pnnx is not installed: pip install 'edgex[ncnn]'", stage="convert")
    return Path(spec.origin).parent / ("pnnx.exe" if sys.platform == "win32" else "pnnx")


_PNNX_TYPES = {"float32": "f32", "float16": "f16"}


def _run_pnnx(model: ReferenceModel, scratch: Path, fp16: bool) -> None:
    """torch.jit.trace at batch 1, then the pnnx program on it in ``scratch``; its output goes to
    this process's stdout (the run's log: conversion runs in an isolated child)."""
    import torch

    for spec in model.inputs:
        if spec.dtype not in _PNNX_TYPES:
            raise UnsupportedModel(f"ncnn takes float inputs only (an ncnn Mat holds floats); input {spec.name!r} is {spec.dtype}")
    example = tuple(torch.from_numpy(np.array(a[:1], copy=True, order="C")) for a in model.example_inputs)
    try:
        # not under no_grad: there nn.TransformerEncoderLayer takes its fused fast path, which
        # pnnx leaves as unconvertible pnnx.Expression layers (as pnnx.export traces, with grad)
        traced = torch.jit.trace(model.module, example, check_trace=False)
        traced.save(str(scratch / "model.pt"))
    except Exception as exc:
        raise TargetError(f"torch.jit.trace (pnnx's input) failed: {one_line(exc)}", stage="convert") from exc
    shapes = ",".join(f"[{','.join(str(d) for d in t.shape)}]{_PNNX_TYPES[str(t.dtype).removeprefix('torch.')]}" for t in example)
    command = [str(_pnnx_executable()), "model.pt", f"inputshape={shapes}", f"fp16={int(fp16)}"]
    try:
        done = subprocess.run(command, cwd=scratch, capture_output=True, text=True, timeout=PNNX_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        raise TargetError(f"pnnx did not finish within {PNNX_TIMEOUT} s", stage="convert") from exc
    sys.stdout.write(f"$ {' '.join(command)}\n{done.stdout}{done.stderr}\n")
    sys.stdout.flush()
    if done.returncode < 0:
        try:
            name = signal.Signals(-done.returncode).name
        except ValueError:
            name = f"signal {-done.returncode}"
        raise TargetError(f"pnnx crashed ({name}) converting the traced model (its output is in the run's log)", stage="convert")
    if done.returncode != 0 or not (scratch / "model.ncnn.param").is_file():
        last = next((line for line in reversed((done.stderr or done.stdout).splitlines()) if line.strip()), "no message")
        raise TargetError(f"pnnx failed (exit {done.returncode}): {last.strip()}", stage="convert")


def _unknown_layers(param: Path) -> list[str]:
    """Layers of the .param ncnn has no implementation for, as ``name (type)``."""
    ncnn, _ = load_ncnn()
    return [f"{layer.name} ({layer.type})" for layer in read_param(param) if ncnn.layer_to_index(layer.type) < 0]


@hookimpl
def edgex_convert(request: ConversionRequest) -> ConversionResult:
    model = request.model
    if model.module is None:
        raise UsageError("ncnn converts from a torch model (pnnx traces it); an ONNX reference has none")
    fp16 = request.precision == "fp16"
    scratch = request.workdir / "pnnx"
    scratch.mkdir()
    _run_pnnx(model, scratch, fp16)
    unknown = _unknown_layers(scratch / "model.ncnn.param")
    if unknown:
        # pnnx keeps an op it has no ncnn conversion for as a layer of its torch name
        raise UnsupportedModel(
            f"pnnx has no ncnn layer for {', '.join(unknown[:3])}{' ...' if len(unknown) > 3 else ''}: "
            "ncnn cannot run it; write the op from supported ones or choose another target"
        )
    param = request.workdir / "model.ncnn.param"
    (scratch / "model.ncnn.param").replace(param)
    (scratch / "model.ncnn.bin").replace(bin_path(param))
    # pnnx's own graph, generated Python, ONNX and the TorchScript are no part of the artifact
    for leftover in scratch.iterdir():
        leftover.unlink()
    scratch.rmdir()
    io = describe_ncnn(param, model, request.precision)
    converter = f"torch.jit.trace -> pnnx {package_version('pnnx')} (fp16={int(fp16)}: {'float16' if fp16 else 'float32'} weights)"
    return ConversionResult((Artifact(param, "ncnn-param"), Artifact(bin_path(param), "ncnn-bin")), io, converter)


# --------------------------------------------------------------------------- describing


def read_pair(path: Path) -> tuple[list[Any], list[Any]]:
    """The .param's layers and the .bin's weight blobs; a one-line UsageError for anything else."""
    path = Path(path)
    if path.suffix == ".bin":
        raise UsageError(f"{path.name} is an ncnn weights file: pass its .param (the .bin is found beside it)")
    try:
        layers = read_param(path)
    except ParamError as exc:
        raise UsageError(f"{path.name} is not an ncnn .param: {exc}") from exc
    weights = bin_path(path)
    if not weights.is_file():
        raise UsageError(f"{path.name} has no {weights.name} beside it: ncnn needs both files; copy the .bin next to the .param")
    try:
        blobs, _ = weight_blobs(layers, weights.read_bytes())
    except ParamError as exc:
        raise UsageError(f"{weights.name} does not hold {path.name}'s weights: {exc}") from exc
    return layers, blobs


def _names(layers: Sequence[Any], kind: str) -> list[str]:
    """The graph's input blobs (``Input`` layers' tops), or its output blobs (consumed by no layer)."""
    if kind == "input":
        return [top for layer in layers if layer.type == "Input" for top in layer.tops]
    consumed = {b for layer in layers for b in layer.bottoms}
    found = [top for layer in layers for top in layer.tops if top not in consumed]
    # pnnx names the model's outputs out0, out1, ... in torch's order, which layer order need not keep
    return sorted(found, key=lambda n: int(n[3:])) if all(re.fullmatch(r"out\d+", n) for n in found) else found


def describe_ncnn(path: Path, reference: ReferenceModel, precision: str | None = None) -> ArtifactIO:
    """Inputs and outputs of an ncnn pair: its input blobs take the reference's inputs in order,
    its output blobs' shapes come from one run on zeros (the .param holds no shapes); the precision
    is read from the weights' storage tags (float16 -> fp16) unless the conversion says it."""
    layers, blobs = read_pair(path)
    inputs, outputs = _names(layers, "input"), _names(layers, "output")
    if len(inputs) != len(reference.inputs):
        raise UsageError(f"{Path(path).name} has {len(inputs)} input(s) and the reference {len(reference.inputs)}: is it this model's artifact?")
    stored = {b.dtype for b in blobs}
    if "int8" in stored:
        raise UsageError(f"{Path(path).name} stores int8 weights (ncnn2int8): edgex validates ncnn at fp32 and fp16 only")
    found = "fp16" if "float16" in stored else "fp32"
    precision = precision or found
    batch = reference.inputs[0].shape[0] if reference.inputs[0].shape else 1
    zeros = [np.zeros((1, *s.shape[1:]), np.float32) for s in reference.inputs]
    net = NcnnNet(Path(path), inputs, outputs, precision)
    shapes = [o.shape[1:] for o in net.run(zeros)]
    names = list(reference.output_names) if len(reference.output_names) == len(outputs) else outputs
    return ArtifactIO(
        path=Path(path),
        precision=precision,
        inputs=tuple(TensorBinding(s.name, tuple(s.shape), "float32", perm=tuple(range(len(s.shape)))) for s in reference.inputs),
        outputs=tuple(TensorBinding(n, (batch, *shape), "float32", perm=tuple(range(len(shape) + 1))) for n, shape in zip(names, shapes)),
    )


@hookimpl
def edgex_describe_artifact(target: str, path: Path, reference: ReferenceModel) -> ArtifactIO:
    if not str(path).endswith((".param", ".bin")):
        raise UsageError(f"{Path(path).name} is not an ncnn .param file")
    return describe_ncnn(Path(path), reference)


# --------------------------------------------------------------------------- running


class NcnnNet:
    """An ncnn pair loaded with the fp16 options the precision means, run one sample at a time."""

    def __init__(self, param: Path, inputs: Sequence[str], outputs: Sequence[str], precision: str):
        ncnn, threaded = load_ncnn()
        self.inputs, self.outputs = list(inputs), list(outputs)
        self.net = ncnn.Net()
        fp16 = precision == "fp16"
        for option in _FP16_OPTIONS:
            setattr(self.net.opt, option, fp16)
        # bf16 is a storage format of its own: off, so fp32 means float32 throughout
        self.net.opt.use_bf16_storage = False
        # edgex runs artifacts in a forked child: ncnn's default threads where it runs on its own
        # OpenMP, else one (on torch's, its team never returns there: see load_ncnn)
        if not threaded:
            self.net.opt.num_threads = 1
        threads = self.net.opt.num_threads
        if self.net.load_param(str(param)) != 0:
            raise TargetError(f"ncnn cannot load {param.name} (a layer type this ncnn build lacks?)", stage="validate")
        if self.net.load_model(str(bin_path(param))) != 0:
            raise TargetError(f"ncnn cannot load {bin_path(param).name}: it is shorter than {param.name}'s layers need", stage="validate")
        state = "on" if fp16 else "off"
        self.backend = (
            f"ncnn {package_version('ncnn')} CPU (Python bindings, {threads} thread{'s' if threads != 1 else ''}), {'+'.join(_FP16_OPTIONS)} {state}"
            + (" (fp16 where this CPU's kernels have it)" if fp16 else "")
        )

    def extract(self, sample: Sequence[np.ndarray], names: Sequence[str], keep_all: bool = False) -> list[np.ndarray]:
        """One sample (no batch axis) in, the named blobs out; ``keep_all``: light mode off, so
        that every intermediate blob stays readable (ncnn frees a blob once it is consumed)."""
        ncnn, _ = load_ncnn()

        extractor = self.net.create_extractor()
        if keep_all:
            extractor.set_light_mode(False)
        # ncnn.Mat(array) borrows the array's memory: keep each one alive until extraction ends
        kept = [np.ascontiguousarray(a, dtype=np.float32) for a in sample]
        for name, array in zip(self.inputs, kept):
            extractor.input(name, ncnn.Mat(array))
        values = []
        for name in names:
            code, mat = extractor.extract(name)
            if code != 0:
                raise TargetError(f"ncnn failed to compute blob {name!r} (code {code})", stage="validate")
            values.append(np.array(mat, copy=True))
        del kept
        return values

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        count = len(inputs[0])
        samples = [self.extract([a[i] for a in inputs], self.outputs) for i in range(count)]
        return [np.stack([s[k] for s in samples]) for k in range(len(self.outputs))]


class NcnnRuntime:
    """The artifact on ncnn, batch restored (ncnn runs one sample at a time)."""

    def __init__(self, io: ArtifactIO):
        layers, _ = read_pair(io.path)
        self.io = io
        self.net = NcnnNet(Path(io.path), _names(layers, "input"), _names(layers, "output"), io.precision)
        self.backend = self.net.backend + ", one sample per extractor (ncnn has no batch axis)"

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        return _batched(self.net.run(inputs), self.io)


def _batched(outputs: Sequence[np.ndarray], io: ArtifactIO) -> list[np.ndarray]:
    """Stacked per-sample outputs in the bindings' shapes (ncnn drops a size-1 axis torch keeps)."""
    return [o.reshape((len(o), *b.shape[1:])) if o[0].size == int(np.prod(b.shape[1:])) else o for o, b in zip(outputs, io.outputs)]


@hookimpl
def edgex_load_runtime(target: str, io: ArtifactIO, options: Mapping[str, Any]) -> NcnnRuntime:
    return NcnnRuntime(io)


# --------------------------------------------------------------------------- explaining


#: ncnn layer types with weights -> the torch module classes they convert
_WEIGHT_LAYERS = {
    "Convolution": ("Conv2d",), "ConvolutionDepthWise": ("Conv2d",), "Convolution1D": ("Conv1d",),
    "Deconvolution": ("ConvTranspose2d",), "DeconvolutionDepthWise": ("ConvTranspose2d",), "InnerProduct": ("Linear",),
}
_NORMS = ("BatchNorm1d", "BatchNorm2d")
#: ncnn layers without weights -> the module classes one of them computes alone
_SIMPLE_LAYERS = {
    "Pooling": ("MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "AdaptiveMaxPool2d"), "ReLU": ("ReLU", "LeakyReLU"),
    "Sigmoid": ("Sigmoid",), "TanH": ("Tanh",), "HardSwish": ("Hardswish",), "HardSigmoid": ("Hardsigmoid",), "Clip": ("ReLU6", "Hardtanh"),
    "Softmax": ("Softmax",), "GELU": ("GELU",), "Swish": ("SiLU",), "Flatten": ("Flatten",),
}
_ACTIVATIONS = ("ReLU", "ReLU6", "LeakyReLU", "Sigmoid", "Hardswish", "Hardsigmoid", "Mish", "SiLU", "Tanh", "ELU", "GELU")


def _execution_order(module: Any, example_inputs: Sequence[np.ndarray]) -> list[tuple[str, Any]]:
    """The reference's leaf modules in the order one forward pass calls them."""
    import torch

    order: list[tuple[str, Any]] = []
    hooks = []
    for path, mod in module.named_modules():
        if path and not any(True for _ in mod.children()):
            hooks.append(mod.register_forward_hook(lambda m, a, o, path=path: order.append((path, m))))
    try:
        with torch.no_grad():
            module(*(torch.from_numpy(np.array(a[:1], copy=True)) for a in example_inputs))
    finally:
        for hook in hooks:
            hook.remove()
    return order


def layer_modules(layers: Sequence[Any], reference: ReferenceModel) -> dict[str, tuple[str, ...]]:
    """Torch modules of ncnn layers, by aligning the layers in order with the reference's modules
    in the order they run: a layer with weights takes the next module of the class pnnx converts
    it from, checked by its weight count, and a convolution also names the batch norm pnnx folds
    into it and the activation ncnn fuses (``9=``) when they are the modules run next; a pooling
    or activation layer takes the module run right after the last one taken, if it is of its
    kind. Modules called more than once (a ReLU reused in a block) are never named: which call a
    layer holds is unknown. The alignment stops at the first weight layer that does not match:
    later layers name no module rather than a wrong one."""
    if reference.module is None:
        return {}
    order = _execution_order(reference.module, reference.example_inputs)
    calls: dict[str, int] = {}
    for path, _ in order:
        calls[path] = calls.get(path, 0) + 1
    kind = [type(m).__name__ for _, m in order]
    mapped: dict[str, tuple[str, ...]] = {}
    cursor = 0  # the first module not yet passed
    for layer in layers:
        classes = _WEIGHT_LAYERS.get(layer.type)
        if classes is None:
            simple = _SIMPLE_LAYERS.get(layer.type, ())
            if cursor < len(order) and kind[cursor] in simple and calls[order[cursor][0]] == 1:
                mapped[layer.name] = (order[cursor][0],)
                cursor += 1
            continue
        count = layer.int(6 if layer.type != "InnerProduct" else 2)
        index = next((i for i in range(cursor, len(order)) if kind[i] in classes), None)
        if index is None or order[index][1].weight.numel() != count or calls[order[index][0]] != 1:
            break
        names, cursor = [order[index][0]], index + 1
        if cursor < len(order) and kind[cursor] in _NORMS:
            names.append(order[cursor][0])
            cursor += 1
        if layer.int(9):
            if cursor < len(order) and kind[cursor] in _ACTIVATIONS and calls[order[cursor][0]] == 1:
                names.append(order[cursor][0])
                cursor += 1
            else:
                # the fused activation is a module run more than once (or none): the tensor holds
                # its output, which no module path names; the layer stays in its scope, unmatched
                names = [f"{scope(names[0])}{layer.name}"]
        mapped[layer.name] = tuple(names)
    return mapped


def scope(path: str) -> str:
    """The parent module's path with a trailing dot ("layers.6.conv1" -> "layers.6."), "" at the top."""
    return path.rpartition(".")[0] + "." if "." in path else ""


def scoped(layers: Sequence[Any], mapped: Mapping[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
    """Every layer named: aligned layers by their modules, the others by a name in the scope of
    the last aligned module before them ("layers.6.add_3"), a path the reference lacks. explain
    takes a block's output from the last tensor inside the block, so the add and ReLU that end a
    residual block must be inside it, not left unnamed."""
    named: dict[str, tuple[str, ...]] = {}
    where = ""
    for layer in layers:
        if layer.name in mapped:
            named[layer.name] = mapped[layer.name]
            where = scope(mapped[layer.name][0])
        else:
            named[layer.name] = (f"{where}{layer.name}",) if where else ()
    return named


class NcnnTracer:
    """Every blob of the graph extracted by name (ncnn computes what the extracted blob needs and
    keeps what it computed), each named by its layer and the torch modules aligned with it."""

    def __init__(self, io: ArtifactIO, reference: ReferenceModel):
        layers, _ = read_pair(io.path)
        self.io = io
        self.outputs = _names(layers, "output")
        self.net = NcnnNet(Path(io.path), _names(layers, "input"), self.outputs, io.precision)
        modules = scoped(layers, layer_modules(layers, reference))
        self.steps = [(top, layer, modules.get(layer.name, ())) for layer in layers if layer.type != "Input" for top in layer.tops]
        self.backend = self.net.backend + ", every blob extracted by name"
        self.notes = (
            "ncnn's .param names no torch module: its layers are aligned in order with the reference's modules as they run "
            "(weight layers checked by their weight counts; modules called more than once are not named)",
        )

    def trace(self, inputs: Sequence[np.ndarray]) -> ArtifactTrace:
        names = [top for top, _, _ in self.steps]
        values = self.net.extract([a[0] for a in inputs], self.outputs + names, keep_all=True)
        outputs, blobs = values[: len(self.outputs)], values[len(self.outputs) :]
        tensors = tuple(
            TracedTensor(f"{layer.name}:{top}", value[None], mods, tuple(range(value.ndim + 1)), None, layer.type)
            for (top, layer, mods), value in zip(self.steps, blobs)
        )
        return ArtifactTrace(tensors, tuple(_batched([o[None] for o in outputs], self.io)))


@hookimpl
def edgex_load_tracer(target: str, io: ArtifactIO, reference: ReferenceModel, options: Mapping[str, Any]) -> NcnnTracer:
    return NcnnTracer(io, reference)


# --------------------------------------------------------------------------- edgex check


@hookimpl
def edgex_check_operators(target: str, operators: ModelOperators, precision: str) -> OperatorCheck:
    from edgex.targets.ncnn.ops import check_operators

    return check_operators(operators)
