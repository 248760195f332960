"""The compress stage itself (``edgex.core.compression`` re-exports it on first use): runs the
chosen steps in order on a copy of the reference and reports what they changed.

The schedule: a prune step with ``steps: N`` is applied in N calls, each removing the same share
of what is left (so that N calls together remove ``amount``), and the recovery steps that follow
it in the plan also run between those calls: prune, recover, prune, recover, ... The teacher of
every recovery is the original, unpruned model.
"""

from __future__ import annotations

import copy
import os
import time
import uuid
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from edgex.core.data import RunInputs
from edgex.core.errors import PluginError, UsageError
from edgex.core.loading import count_macs, module_sha256
from edgex.core.types import CompressionRequest, CompressionStep, ReferenceModel, StageEvent

if TYPE_CHECKING:  # pragma: no cover
    from edgex.core.plugin_manager import PluginManager

#: inputs for the teacher-student drift when the model ships no evaluation data
DRIFT_SAMPLES = 256


# --------------------------------------------------------------------------- measuring


def count_params(module: Any) -> tuple[int, int]:
    """(parameters, nonzero parameters)."""
    total = nonzero = 0
    for parameter in module.parameters():
        total += parameter.numel()
        nonzero += int((parameter != 0).sum())
    return total, nonzero


def weight_bytes(module: Any) -> dict[str, int]:
    """Size of the model's tensors (parameters and buffers) stored densely in fp32, and that
    stream deflated as zip does: what the unstructured zeros buy on disk and over the air."""
    import torch

    raw = b"".join(
        t.detach().to(torch.float32).contiguous().numpy().tobytes() if t.is_floating_point() else t.detach().contiguous().numpy().tobytes()
        for t in module.state_dict().values()
    )
    return {"fp32": len(raw), "zip": len(zlib.compress(raw, 6))}


def _stats(module: Any, example_inputs: Sequence[np.ndarray]) -> dict[str, Any]:
    params, nonzero = count_params(module)
    return {
        "params": params,
        "nonzero_params": nonzero,
        "macs": count_macs(module, example_inputs),
        "size_bytes": weight_bytes(module),
    }


def _ratio(after: Any, before: Any) -> float | None:
    return round(after / before, 4) if isinstance(after, (int, float)) and isinstance(before, (int, float)) and before else None


# --------------------------------------------------------------------------- drift


@dataclass
class _DriftProbe:
    """Teacher outputs on fixed inputs, to measure how far the student has moved."""

    batches: list[tuple[np.ndarray, ...]]
    teacher: list[list[np.ndarray]]
    output_names: tuple[str, ...]
    labels: np.ndarray | None
    source: str

    @property
    def teacher_accuracy(self) -> float | None:
        if self.labels is None:
            return None
        predictions = np.concatenate([sample[0] for sample in self.teacher]).argmax(axis=1)
        return round(float(np.mean(predictions == self.labels[: len(predictions)])), 6)

    def measure(self, module: Any) -> dict[str, Any]:
        from edgex.core import parity

        student = parity.torch_outputs(module, self.batches)
        tolerances = [parity.Tolerance(float("inf"), 0.0, "drift is measured, not judged")] * len(self.output_names)
        report = parity.compare(self.teacher, student, self.output_names, tolerances)
        result: dict[str, Any] = {
            "max_abs": report.max_abs,
            "mean_abs": report.mean_abs,
            "cosine": report.cosine,
            "sqnr_db": report.sqnr_db,
            "top1_agreement": report.top1_agreement,
        }
        if self.labels is not None:
            predictions = np.concatenate([sample[0] for sample in student]).argmax(axis=1)
            result["accuracy"] = round(float(np.mean(predictions == self.labels[: len(predictions)])), 6)
        return result


def _drift_probe(model: ReferenceModel, inputs: RunInputs, seed: int) -> _DriftProbe:
    """Held-out labelled data when there is some (the model's or ``eval_data``), else up to
    DRIFT_SAMPLES of the recovery data, else seeded random inputs."""
    from edgex.core import data, parity

    labels = None
    if inputs.evaluation is not None:
        samples, labels = inputs.evaluation.samples, inputs.evaluation.labels
        source = f"{data.count(samples)} held-out labelled samples"
    elif inputs.recovery is not None:
        samples = data.take(inputs.recovery.samples, DRIFT_SAMPLES, seed)
        source = f"{data.count(samples)} samples of the recovery data (seed {seed})"
    else:
        samples = data.synthetic_samples(model.inputs, 64, seed)
        source = f"64 seeded standard-normal samples (seed {seed})"
    batches = data.batches(samples, model.inputs)
    teacher = parity.torch_outputs(model.module, batches)
    if labels is not None and not (teacher and teacher[0][0].ndim == 2 and teacher[0][0].shape[1] >= 2):
        labels = None  # accuracy only means something for class scores
    return _DriftProbe(batches, teacher, model.output_names, labels, source)


def drift(original: ReferenceModel, compressed: ReferenceModel, batches: Sequence[tuple[np.ndarray, ...]]) -> dict[str, Any]:
    """How far the compressed model moved from the original on the parity inputs."""
    from edgex.core import parity

    teacher = parity.reference_outputs(original, batches)
    probe = _DriftProbe(list(batches), teacher, original.output_names, None, "parity inputs")
    return probe.measure(compressed.module)


# --------------------------------------------------------------------------- running the steps


def _schedule(steps: Sequence[CompressionStep], kinds: Mapping[str, str]) -> list[tuple[CompressionStep, int, int]]:
    """Expand iterative prune steps: (step with its per-call amount, round, rounds)."""
    plan: list[tuple[CompressionStep, int, int]] = []
    rounds = 1  # of the prune step the current recovery steps follow
    for index, step in enumerate(steps):
        if kinds[step.method] != "prune":
            plan.append((step, rounds, rounds))
            continue
        rounds = int(step.options.get("steps") or 1)
        if rounds < 1:
            raise UsageError(f"--prune-steps {rounds} must be at least 1")
        if rounds == 1:
            plan.append((step, 1, 1))
            continue
        amount = float(step.options["amount"])
        # the same share of what is left at each call: (1 - share)^N = 1 - amount
        share = 1.0 - (1.0 - amount) ** (1.0 / rounds)
        recoveries = []
        for later in steps[index + 1 :]:
            if kinds[later.method] != "recover":
                break
            recoveries.append(later)
        for round_ in range(1, rounds + 1):
            plan.append((replace(step, options={**step.options, "amount": share}), round_, rounds))
            if round_ < rounds:
                plan.extend((recovery, round_, rounds) for recovery in recoveries)
    return plan


def _progress(manager: PluginManager) -> Callable[[float, str], None]:
    return lambda fraction, detail: manager.stage_progress(StageEvent("compress", detail=detail, progress=fraction))


def set_training(module: Any, training: bool) -> Any:
    """``module.train(training)``; a module loaded from a .pt2 program refuses it and keeps the
    mode it was exported in (edgex exports in eval mode)."""
    try:
        module.train(training)
    except NotImplementedError:
        pass
    return module


def _output_shapes(module: Any, example: Sequence[Any]) -> list[tuple[int, ...]]:
    import torch

    from edgex.core.loading import flatten_outputs

    with torch.no_grad():
        return [tuple(t.shape) for t in flatten_outputs(module(*example))[1]]


def compress_reference(manager: PluginManager, model: ReferenceModel, steps: Sequence[CompressionStep], inputs: RunInputs, seed: int = 0) -> tuple[ReferenceModel, dict[str, Any]]:
    """Apply ``steps`` to a copy of the reference; returns it and the summary. Recovery
    methods train on ``inputs.recovery``; drift is measured on ``inputs.evaluation``."""
    import torch

    from edgex.core.compression.layers import layer_table

    if model.module is None:
        raise UsageError("compression needs a torch model; MODEL is ONNX (compress the torch model, then export)")
    registered = {step.method: manager.resolve_compressor(step.method) for step in steps}
    kinds = {name: r.spec.kind for name, r in registered.items()}
    plan = _schedule(steps, kinds)
    recovery = inputs.recovery
    data, labels, data_source = (recovery.samples, recovery.labels, recovery.source) if recovery else (None, None, "")
    if data is None and "recover" in kinds.values():
        raise UsageError("recovery (--distill) needs data: pass --distill-data FILE (.npy, or .npz with x and y) or --calibration")

    module = copy.deepcopy(model.module)
    example = tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in model.example_inputs)
    shapes = _output_shapes(model.module, example)
    before = _stats(module, model.example_inputs)
    probe = _drift_probe(model, inputs, seed)
    progress = _progress(manager)
    records: list[dict[str, Any]] = []
    recoveries: list[dict[str, Any]] = []
    kept: dict[str, str] = {}
    drift_before_recovery = None
    start = time.perf_counter()
    for step, round_, rounds in plan:
        compressor = registered[step.method]
        request = CompressionRequest(
            method=compressor.spec.name,
            module=module,
            example_inputs=example,
            options=dict(step.options),
            data=data,
            labels=labels,
            teacher=model.module,
            seed=seed + round_ - 1,
            progress=progress,
        )
        result = manager.compress(request)
        module = set_training(result.module, False)
        try:
            changed = _output_shapes(module, example) != shapes
        except Exception as exc:
            raise PluginError(f"compression method {result.method!r} ({compressor.plugin}) left a model that no longer runs: {type(exc).__name__}: {str(exc).strip()[:200]}") from exc
        if changed:
            raise PluginError(f"compression method {result.method!r} ({compressor.plugin}) changed the model's output shapes")
        kept.update(result.summary.get("kept", {}))
        record = {"method": result.method, "plugin": compressor.plugin, **{k: v for k, v in result.summary.items() if k != "kept"}}
        if rounds > 1:
            record["round"] = f"{round_}/{rounds}"
        record["drift"] = probe.measure(module)
        record["messages"] = list(result.messages)
        records.append(record)
        if compressor.spec.kind == "prune":
            drift_before_recovery = record["drift"]
        else:
            recoveries.append(record)
    after = _stats(module, model.example_inputs)

    summary: dict[str, Any] = {"method": " + ".join(dict.fromkeys(r["method"] for r in records))}
    prune_steps = [s for s in steps if kinds[s.method] == "prune"]
    if prune_steps:
        summary["amount"] = prune_steps[0].options.get("amount")
        summary["scope"] = prune_steps[0].options.get("scope")
        summary["prune_steps"] = int(prune_steps[0].options.get("steps") or 1)
    summary.update(
        {
            "before": before,
            "after": after,
            "ratios": {
                "params": _ratio(after["params"], before["params"]),
                "nonzero_params": _ratio(after["nonzero_params"], before["nonzero_params"]),
                "macs": _ratio(after["macs"], before["macs"]),
                "size_fp32": _ratio(after["size_bytes"]["fp32"], before["size_bytes"]["fp32"]),
                "size_zip": _ratio(after["size_bytes"]["zip"], before["size_bytes"]["zip"]),
            },
            "drift": {
                "inputs": probe.source,
                "original_accuracy": probe.teacher_accuracy,
                "before_recovery": drift_before_recovery,
                "after_recovery": recoveries[-1]["drift"] if recoveries else None,
            },
            "recovery": ({**{k: v for k, v in recoveries[-1].items() if k not in ("drift", "messages")}, "data": data_source, "rounds": len(recoveries)} if recoveries else None),
            "layers": layer_table(model.module, module, kept),
            "steps": records,
            "seconds": round(time.perf_counter() - start, 3),
        }
    )
    compressed = replace(
        model,
        module=module,
        params=after["params"],
        macs=after["macs"],
        sha256=module_sha256(module, model.spec + "#compressed"),
    )
    return compressed, summary


# --------------------------------------------------------------------------- saving and describing


def check_program_path(path: Path) -> Path:
    """``path`` if a compressed model can be saved there (a file name ending in .pt2), else a
    usage error: checked before any work, and again by :func:`save_program`."""
    path = Path(path)
    if path.suffix != ".pt2":
        raise UsageError(f"--out {path} must be a file name ending in .pt2 (a torch.export program)")
    if path.is_dir():
        raise UsageError(f"--out {path} is a directory; give a file name ending in .pt2")
    return path


def save_program(model: ReferenceModel, path: Path) -> Path:
    """Save the (compressed) model as a ``torch.export`` program (``.pt2``), which every MODEL
    argument accepts. Written to a temporary file beside ``path`` and moved into place, so a
    failure leaves nothing behind."""
    import torch

    path = check_program_path(path)
    example = tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in model.example_inputs)
    try:
        program = torch.export.export(set_training(model.module, False), example)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise UsageError(f"torch.export cannot capture the compressed model ({type(exc).__name__}: {first[:200]}); use edgex.core.api.compress in Python and keep the module") from exc
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.tmp-{uuid.uuid4().hex[:8]}.pt2")
    try:
        torch.export.save(program, str(temporary))
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path
