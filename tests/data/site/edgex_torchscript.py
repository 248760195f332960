"""A third-party target plugin, installed only for edgex's tests: TorchScript via torch.jit.trace,
validated by running the saved file with torch.jit.load. It uses nothing but the public
contract (edgex.plugins), exactly as an outside package would."""

import importlib.util
from pathlib import Path

import numpy as np

from edgex.plugins import (
    Artifact, ArtifactIO, BackendStatus, ConversionResult, TargetSpec, TensorBinding, UsageError, hookimpl,
    infer_permutation, layout_name,
)


@hookimpl
def edgex_targets():
    return [TargetSpec("torchscript", "TorchScript module (torch.jit.trace)", (".ts",), ("fp32",), aliases=("jit",))]


@hookimpl
def edgex_backend_status(target):
    found = importlib.util.find_spec("torch") is not None
    return BackendStatus(found, "torch.jit", "" if found else "pip install torch")


def _io(path, reference):
    inputs = tuple(TensorBinding(s.name, s.shape, s.dtype, layout_name(len(s.shape), None), infer_permutation(s.shape, s.shape)) for s in reference.inputs)
    outputs = tuple(TensorBinding(n, (), "float32") for n in reference.output_names)
    return ArtifactIO(Path(path), "fp32", inputs, outputs)


@hookimpl
def edgex_convert(request):
    import torch

    example = tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in request.model.example_inputs)
    traced = torch.jit.trace(request.model.module, example)
    path = request.workdir / "model.ts"
    traced.save(str(path))
    return ConversionResult((Artifact(path, "torchscript"),), _io(path, request.model), "torch.jit.trace")


@hookimpl
def edgex_describe_artifact(target, path, reference):
    if Path(path).suffix != ".ts":
        raise UsageError(f"{path} is not a .ts file")
    return _io(path, reference)


class _Runtime:
    backend = "torch.jit"

    def __init__(self, path):
        import torch

        self.torch = torch
        self.module = torch.jit.load(str(path))

    def run(self, inputs):
        with self.torch.no_grad():
            out = self.module(*[self.torch.from_numpy(np.ascontiguousarray(x)) for x in inputs])
        outs = out if isinstance(out, (tuple, list)) else (out,)
        return [o.numpy() for o in outs]


@hookimpl
def edgex_load_runtime(target, io, options):
    return _Runtime(io.path)
