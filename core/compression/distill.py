"""Built-in recovery method ``distill``, a plugin like any other.

After pruning, the unpruned model (the teacher) teaches the pruned one (the student) on
unlabelled data: the student learns the teacher's temperature-softened class scores
(Hinton et al. 2015: KL divergence at temperature T, scaled by T^2) and the teacher's values
for outputs that are not class scores (mean squared error). With labels (an ``.npz`` holding
``x`` and ``y``) the class output is fine-tuned on the labels instead (cross-entropy).

Weights that are exactly zero when recovery starts stay zero (pruning must survive recovery),
training runs under the request's seed (same data, options and seed: same weights), and progress
with the running loss goes to ``request.progress``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from edgex.core.errors import UsageError
from edgex.plugins import CompressionRequest, CompressionResult, CompressorSpec, hookimpl

DISTILL = "distill"

METHODS = (
    CompressorSpec(
        DISTILL,
        "recover accuracy after pruning: distillation from the unpruned model on unlabelled data, "
        "or supervised fine-tuning when the data has labels",
        kind="recover",
    ),
)

#: teacher outputs are computed once, in chunks of this many samples
TEACHER_CHUNK = 256


@hookimpl
def edgex_compressors():
    return METHODS


@hookimpl
def edgex_compress(request: CompressionRequest) -> CompressionResult | None:
    if request.method == DISTILL:
        return distill(request)
    return None


@dataclass(frozen=True)
class DistillOptions:
    #: measured on the digits CNN (structured 50%, 1,347 unlabelled images, 5 seeds): T=1 for 20
    #: epochs ended 0.2-0.7 points below the dense accuracy, T=1 for 10 epochs 0.2-0.9, T=2
    #: 0.7-1.3, T=4 0.9-1.3. A small, confident teacher with few classes needs no softening.
    epochs: int = 20
    lr: float = 1e-3
    temperature: float = 1.0
    batch_size: int = 32

    @classmethod
    def parse(cls, options: Mapping[str, Any]) -> "DistillOptions":
        values = {k: options[k] for k in ("epochs", "lr", "temperature", "batch_size") if options.get(k) is not None}
        try:
            parsed = cls(**{k: type(getattr(cls, k))(v) for k, v in values.items()})
        except (TypeError, ValueError) as exc:
            raise UsageError(f"distillation options: {exc}") from None
        if parsed.epochs < 1:
            raise UsageError(f"--distill-epochs {parsed.epochs} must be at least 1")
        if not parsed.lr > 0:
            raise UsageError(f"--distill-lr {parsed.lr:g} must be positive")
        if not parsed.temperature > 0:
            raise UsageError(f"--distill-temperature {parsed.temperature:g} must be positive")
        if parsed.batch_size < 1:
            raise UsageError(f"--distill-batch {parsed.batch_size} must be at least 1")
        return parsed


def _is_class_scores(tensor: Any) -> bool:
    return tensor.dim() == 2 and tensor.shape[1] >= 2 and tensor.is_floating_point()


def _teacher_outputs(teacher: Any, inputs: Sequence[Any], model_batch: int) -> list[Any]:
    """The teacher's outputs for every sample, in chunks; at the model's own batch size when it
    takes no other (a program exported for batch 1)."""
    import torch

    from edgex.core.loading import flatten_outputs

    def run(chunk: int) -> list[Any]:
        chunks: list[list[Any]] = []
        with torch.no_grad():
            for start in range(0, len(inputs[0]), chunk):
                chunks.append(flatten_outputs(teacher(*[x[start : start + chunk] for x in inputs]))[1])
        return [torch.cat(parts) for parts in zip(*chunks)]

    try:
        return run(TEACHER_CHUNK)
    except Exception:
        if model_batch == TEACHER_CHUNK or len(inputs[0]) % model_batch:
            raise
        return run(model_batch)


def _check_labels(labels: np.ndarray | None, targets: Sequence[Any], samples: int) -> tuple[Any, int | None]:
    """Labels as a tensor and the index of the class-score output they belong to."""
    import torch

    if labels is None:
        return None, None
    labels = np.asarray(labels)
    classes = next((i for i, t in enumerate(targets) if _is_class_scores(t)), None)
    if classes is None:
        raise UsageError("the distillation data has labels (y) but the model outputs no class scores to fine-tune them on")
    count = targets[classes].shape[1]
    if labels.shape != (samples,) or not np.issubdtype(labels.dtype, np.integer):
        raise UsageError(f"labels y must be {samples} integers (one class index per sample), got {labels.dtype} {labels.shape}")
    if labels.min() < 0 or labels.max() >= count:
        raise UsageError(f"labels y range over [{labels.min()}, {labels.max()}] but the model scores {count} classes (0..{count - 1})")
    return torch.from_numpy(labels.astype(np.int64)), classes


def _loss(outputs: Sequence[Any], targets: Sequence[Any], labels: Any, labelled: int | None, temperature: float) -> Any:
    import torch.nn.functional as F

    total = 0.0
    for index, (student, teacher) in enumerate(zip(outputs, targets)):
        if index == labelled:
            total = total + F.cross_entropy(student, labels)
        elif _is_class_scores(teacher):
            total = total + F.kl_div(
                F.log_softmax(student / temperature, dim=1),
                F.log_softmax(teacher / temperature, dim=1),
                log_target=True,
                reduction="batchmean",
            ) * temperature**2
        else:
            total = total + F.mse_loss(student, teacher)
    return total


def distill(request: CompressionRequest) -> CompressionResult:
    import torch

    from edgex.core.compression import set_training
    from edgex.core.compression.layers import weight_parameters
    from edgex.core.loading import flatten_outputs

    options = DistillOptions.parse(request.options)
    if request.data is None:
        raise UsageError("distillation needs data: pass --distill-data FILE (.npy, or .npz with x and optional y) or --calibration")
    if request.teacher is None:
        raise UsageError("distillation needs the unpruned model as its teacher")
    # a fresh C-order copy: numpy calls an array with odd strides on a size-1 axis contiguous,
    # torch then takes another convolution path, and the same data would train differently
    inputs = [torch.from_numpy(np.array(a, order="C", copy=True)) for a in request.data]
    samples = len(inputs[0])
    student, teacher = request.module, set_training(request.teacher, False)
    model_batch = int(request.example_inputs[0].shape[0]) if request.example_inputs else 1
    targets = _teacher_outputs(teacher, inputs, model_batch)
    labels, labelled = _check_labels(request.labels, targets, samples)
    batch = min(options.batch_size, samples)
    messages: list[str] = []
    with torch.no_grad():
        masks = [(p, p != 0) for _, p in weight_parameters(student) if bool((p == 0).any())]

    start = time.perf_counter()
    losses: list[float] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(request.seed)
        order_rng = torch.Generator().manual_seed(request.seed)
        optimizer = torch.optim.Adam(student.parameters(), lr=options.lr)
        set_training(student, True)
        epoch = 0
        while epoch < options.epochs:
            # full batches only: a ragged batch of one sample breaks batch norm in training mode
            steps = max(1, samples // batch)
            order = torch.randperm(samples, generator=order_rng)
            running = 0.0
            try:
                for step in range(steps):
                    index = order[step * batch : (step + 1) * batch]
                    outputs = flatten_outputs(student(*[x[index] for x in inputs]))[1]
                    loss = _loss(outputs, [t[index] for t in targets], labels[index] if labels is not None else None, labelled, options.temperature)
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    with torch.no_grad():
                        for parameter, mask in masks:
                            parameter.mul_(mask)  # pruned weights stay pruned
                    running += loss.item()
                    if request.progress is not None:
                        done = (epoch * steps + step + 1) / (options.epochs * steps)
                        request.progress(done, f"distill epoch {epoch + 1}/{options.epochs} loss {running / (step + 1):.4g}")
            except Exception as exc:
                if epoch == 0 and not losses and batch != model_batch and step == 0:
                    # a model written for one batch size (x.view(1, -1), ...) trains at that size
                    messages.append(f"the model rejected a batch of {batch} ({type(exc).__name__}): trained {model_batch} at a time")
                    batch = model_batch
                    continue
                raise UsageError(f"distillation failed: the model raised {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from exc
            losses.append(running / steps)
            epoch += 1
    set_training(student, False)
    if samples < 64:
        messages.append(f"only {samples} samples to recover on: pass more with --distill-data")
    summary = {
        "mode": "supervised (cross-entropy on labels y)" if labels is not None else f"distillation (KL at temperature {options.temperature:g})",
        "samples": samples,
        "epochs": options.epochs,
        "lr": options.lr,
        "temperature": options.temperature,
        "batch_size": batch,
        "loss_first_epoch": round(losses[0], 6),
        "loss_last_epoch": round(losses[-1], 6),
        "sparse_tensors_kept": len(masks),
        "seconds": round(time.perf_counter() - start, 3),
    }
    return CompressionResult(student, DISTILL, summary, tuple(messages))
