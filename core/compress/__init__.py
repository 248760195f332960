"""The compress stage: compression methods are plugins (``edgex_compressors`` /
``edgex_compress``); this module runs the chosen steps in order on a copy of the reference and
reports what they changed. The compressed model then becomes the parity reference.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

import numpy as np

from edgex.core.errors import UsageError
from edgex.core.loading import count_macs
from edgex.core.types import CompressionRequest, ReferenceModel


@dataclass(frozen=True)
class CompressionStep:
    """One method with its options, e.g. ``CompressionStep("l1-structured", {"amount": 0.5})``."""

    method: str
    options: Mapping[str, Any] = field(default_factory=dict)


def count_params(module: Any) -> tuple[int, int]:
    """(parameters, nonzero parameters)."""
    total = nonzero = 0
    for parameter in module.parameters():
        total += parameter.numel()
        nonzero += int((parameter != 0).sum())
    return total, nonzero


def _stats(module: Any, model: ReferenceModel) -> dict[str, Any]:
    params, nonzero = count_params(module)
    return {"params": params, "nonzero_params": nonzero, "macs": count_macs(module, model.example_inputs)}


def compress_reference(manager: Any, model: ReferenceModel, settings: Any) -> tuple[ReferenceModel, dict[str, Any]]:
    """Apply ``settings.compression`` to a copy of the reference; returns it and the summary."""
    import torch

    from edgex.core.loading import _sha256_module

    if model.module is None:
        raise UsageError("compression needs a torch model; MODEL is ONNX (compress the torch model, then export)")
    module = copy.deepcopy(model.module)
    example = tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in model.example_inputs)
    data, labels = _distill_data(model, settings)
    before = _stats(module, model)
    steps = []
    for step in settings.compression:
        registered = manager.resolve_compressor(step.method)
        request = CompressionRequest(
            method=registered.spec.name,
            module=module,
            example_inputs=example,
            options=dict(step.options),
            data=data,
            labels=labels,
            teacher=model.module,
            seed=settings.seed,
        )
        result = manager.compress(request)
        module = result.module.eval()
        steps.append({"method": result.method, "plugin": registered.plugin, **dict(result.summary), "messages": list(result.messages)})
    after = _stats(module, model)
    summary = {
        "method": " + ".join(s["method"] for s in steps),
        "steps": steps,
        "before": before,
        "after": after,
    }
    compressed = replace(
        model,
        module=module,
        params=after["params"],
        macs=after["macs"],
        sha256=_sha256_module(module, model.spec + "#compressed"),
    )
    return compressed, summary


def _distill_data(model: ReferenceModel, settings: Any) -> tuple[tuple[np.ndarray, ...] | None, np.ndarray | None]:
    from pathlib import Path

    from edgex.core import data

    source = getattr(settings, "distill_data", None)
    if source is not None:
        if isinstance(source, (str, Path)):
            return data.load_labelled(Path(source), model.inputs, "--distill-data")
        return data.check_samples(list(source), model.inputs, "distillation data"), None
    calibration = settings.calibration
    if isinstance(calibration, (str, Path)):
        return data.load_samples(Path(calibration), model.inputs, "--calibration"), None
    if calibration is not None:
        return data.check_samples(list(calibration), model.inputs, "calibration data"), None
    if model.calibration is not None:
        return tuple(model.calibration), None
    return None, None


def drift(original: ReferenceModel, compressed: ReferenceModel, batches: Sequence[tuple[np.ndarray, ...]]) -> dict[str, Any]:
    """How far the compressed model moved from the original on the parity inputs."""
    from edgex.core import parity

    before = parity.reference_outputs(original, batches)
    after = parity.reference_outputs(compressed, batches)
    tolerances = [parity.Tolerance(float("inf"), 0.0, "drift is measured, not judged")] * len(original.output_names)
    report = parity.compare(before, after, original.output_names, tolerances)
    return {
        "max_abs": report.max_abs,
        "mean_abs": report.mean_abs,
        "cosine": report.cosine,
        "sqnr_db": report.sqnr_db,
        "top1_agreement": report.top1_agreement,
    }
