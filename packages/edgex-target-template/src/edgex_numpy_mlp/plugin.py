"""Target ``numpy-mlp``: a torch ``nn.Sequential`` of Linear, ReLU and Tanh layers written as an
``.npz`` of its weights and run by plain numpy -- the smallest real target, to copy.

Every hook of a target is here: declare, report the backend, convert, describe an existing
artifact, run it, and judge a model's operators before converting (``edgex check``). Only ``edgex.plugins`` is imported from edgex; torch only inside ``edgex_convert``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Mapping, Sequence

from edgex.plugins import (
    Artifact,
    ArtifactIO,
    BackendStatus,
    ConversionRequest,
    ConversionResult,
    ModelOperators,
    OperatorCheck,
    OperatorFinding,
    ReferenceModel,
    TargetSpec,
    TensorBinding,
    UnsupportedModel,
    UsageError,
    hookimpl,
    one_line,
    package_version,
)

TARGET = TargetSpec(
    name="numpy-mlp",
    description="Linear/ReLU/Tanh MLP as .npz weights, run by plain numpy (the template target)",
    artifact_kinds=(".npz",),
    precisions=("fp32",),
)

#: the layers numpy can run, by torch class name; an artifact stores them as "kinds"
_ACTIVATIONS = {"ReLU": lambda x: x.clip(min=0), "Tanh": lambda x: __import__("numpy").tanh(x)}


@hookimpl
def edgex_targets():
    return (TARGET,)


@hookimpl
def edgex_backend_status(target: str) -> BackendStatus:
    # fast: find_spec and metadata only, never an import of the framework
    if importlib.util.find_spec("numpy") is None:
        return BackendStatus(False, "numpy", "pip install numpy", "numpy not installed")
    return BackendStatus(True, f"numpy {package_version('numpy')}")


@hookimpl
def edgex_convert(request: ConversionRequest) -> ConversionResult:
    import numpy as np
    import torch

    module = request.model.module
    if not isinstance(module, torch.nn.Sequential):
        # not a failure: a model this target does not take (--target all skips it, saying why)
        raise UnsupportedModel("numpy-mlp converts an nn.Sequential of Linear, ReLU and Tanh layers only", stage="convert")
    kinds, arrays = [], {}
    for index, layer in enumerate(module):
        kind = type(layer).__name__
        if kind == "Linear":
            arrays[f"w{index}"] = layer.weight.detach().numpy().astype(np.float32)
            arrays[f"b{index}"] = (layer.bias.detach().numpy() if layer.bias is not None else np.zeros(layer.out_features)).astype(np.float32)
        elif kind not in _ACTIVATIONS:
            raise UnsupportedModel(f"numpy-mlp cannot run layer {index} ({kind}): only Linear, ReLU and Tanh", stage="convert")
        kinds.append(kind)
    path = request.workdir / "model.npz"  # write only inside the work folder
    np.savez(path, kinds=np.array(kinds), **arrays)
    return ConversionResult((Artifact(path, "npz"),), describe(path, request.model), "numpy-mlp (weights copied to .npz)")


def describe(path: Path, reference: ReferenceModel) -> ArtifactIO:
    """The artifact's inputs and outputs: the reference's, in float32 and the same layout."""
    import numpy as np

    try:
        with np.load(path) as data:
            kinds = [str(k) for k in data["kinds"]]
            last = max(i for i, k in enumerate(kinds) if k == "Linear") if "Linear" in kinds else None
            features = int(data[f"w{last}"].shape[0]) if last is not None else 0
    except Exception as exc:
        raise UsageError(f"{path} is not a numpy-mlp .npz: {one_line(exc)}") from exc
    if "Linear" not in kinds or len(reference.inputs) != 1:
        raise UsageError(f"{path}: a numpy-mlp artifact holds at least one Linear layer and takes one input")
    inputs = tuple(TensorBinding(s.name, s.shape, "float32") for s in reference.inputs)
    outputs = tuple(TensorBinding(name, (reference.inputs[0].shape[0], features), "float32") for name in reference.output_names)
    return ArtifactIO(Path(path), "fp32", inputs, outputs)


@hookimpl
def edgex_describe_artifact(target: str, path: Path, reference: ReferenceModel) -> ArtifactIO:
    return describe(Path(path), reference)


class NumpyRuntime:
    """The .npz run layer by layer with numpy; ``backend`` names what really runs."""

    def __init__(self, path: Path):
        import numpy as np

        with np.load(path) as data:
            self.kinds = [str(k) for k in data["kinds"]]
            self.arrays = {name: data[name] for name in data.files if name != "kinds"}
        self.backend = f"numpy {np.__version__}"

    def run(self, inputs: Sequence[Any]) -> list[Any]:
        (x,) = inputs
        for index, kind in enumerate(self.kinds):
            x = x @ self.arrays[f"w{index}"].T + self.arrays[f"b{index}"] if kind == "Linear" else _ACTIVATIONS[kind](x)
        return [x]


@hookimpl
def edgex_load_runtime(target: str, io: ArtifactIO, options: Mapping[str, Any]):
    return NumpyRuntime(io.path)


#: the ATen operators (torch.export) an nn.Sequential of Linear, ReLU and Tanh layers is made of
_OPERATORS = {"aten.linear", "aten.relu", "aten.tanh"}


@hookimpl
def edgex_check_operators(target: str, operators: ModelOperators, precision: str) -> OperatorCheck:
    # fast and without converting: every operator the model uses must be one numpy-mlp runs
    findings = tuple(
        OperatorFinding(op.name, "numpy-mlp runs Linear, ReLU and Tanh layers only", fix="convert this model for another target", modules=op.modules)
        for op in operators.operators
        if op.name not in _OPERATORS
    )
    return OperatorCheck(findings, "numpy-mlp's three layer kinds")
