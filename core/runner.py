"""Opening an artifact, running it isolated, and comparing what it computed: the steps
``convert``, ``validate`` and ``explain`` share.

An artifact runs in a child process (``edgex.core.isolation``) while the parent computes the
reference outputs; its outputs come back in the artifact's form and :func:`judge_outputs` turns
them into the reference's form (``edgex.core.layout``) and judges them with the one parity
implementation (``edgex.core.parity``). Everything runs offline, with temporary files inside
``--out`` (:func:`sandboxed`).
"""

from __future__ import annotations

import shutil
import statistics
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from edgex.core import layout, parity
from edgex.core.errors import UsageError
from edgex.core.isolation import Isolated, RemoteError, start_isolated
from edgex.core.plugin_manager import PluginManager, RegisteredTarget
from edgex.core.sandbox import contained, offline
from edgex.core.settings import ConvertSettings
from edgex.core.types import ArtifactIO, ReferenceModel, Runtime, StageEvent

Outputs = parity.Outputs


# --------------------------------------------------------------------------- the output folder


def prepare_out(out: Path) -> Path:
    """``--out`` created if needed, as an absolute path (converters may change directory)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    return out.resolve()


@contextmanager
def sandboxed(out: Path) -> Iterator[None]:
    """Run offline, with temporary files and library caches in ``out`` (removed afterwards)."""
    scratch = out / ".edgex-scratch"
    try:
        with offline(), contained(scratch):
            yield
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@contextmanager
def observed(manager: PluginManager, stage: str, target: str | None = None) -> Iterator[dict[str, str]]:
    """Bracket a stage with observer events; set ``box["outcome"]`` to report more than "ok"."""
    start = time.perf_counter()
    manager.stage_started(StageEvent(stage, target))
    box = {"outcome": "ok"}
    try:
        yield box
    except BaseException:
        manager.stage_finished(StageEvent(stage, target, "error", time.perf_counter() - start))
        raise
    manager.stage_finished(StageEvent(stage, target, box["outcome"], time.perf_counter() - start))


# --------------------------------------------------------------------------- opening an artifact


def guess_target(manager: PluginManager, artifact: Path) -> str:
    """The target whose artifact kind matches the file's name most specifically."""
    name = artifact.name
    matches = [
        (len(kind), -index, target.name)
        for index, target in enumerate(manager.targets().values())
        for kind in target.spec.artifact_kinds
        if name.endswith(kind)
    ]
    if not matches:
        raise UsageError(f"cannot tell which target {artifact} belongs to from its name; pass --target")
    return max(matches)[2]


def resolve_artifact(manager: PluginManager, artifact: Path, target: str | None) -> tuple[Path, RegisteredTarget]:
    """An existing artifact and the registered target it belongs to (``target``, else its file name)."""
    artifact = Path(artifact)
    if not artifact.exists():
        raise UsageError(f"artifact not found: {artifact}")
    return artifact, manager.resolve_target(target or guess_target(manager, artifact))


def describe_artifact(manager: PluginManager, target: str, artifact: Path, model: ReferenceModel, precision: str | None) -> ArtifactIO:
    """The artifact's bindings as its target reads them; ``precision`` (``--quantize``)
    overrides the precision the target infers from the file."""
    io = manager.describe_artifact(target, artifact.resolve(), model)
    return replace(io, precision=precision) if precision else io


# --------------------------------------------------------------------------- running it isolated


class IsolatedRun:
    """``work`` in a child process (see ``edgex.core.isolation``); ``wait`` returns its result.

    A usage error inside the child (exit code 2: the artifact is not what the user said) stays
    a usage error in the parent; any other failure is a :class:`edgex.core.errors.TargetError`.
    """

    def __init__(self, work: Callable[[Callable[[str, Any], None]], Any], target: str, settings: ConvertSettings, log_path: Path | None):
        self.job: Isolated = start_isolated(work, what=f"target {target}", timeout=settings.timeout_s, log_path=str(log_path) if log_path else None)

    def wait(self, on_event: Callable[[str, Any], None] | None = None) -> Any:
        try:
            return self.job.wait(on_event)
        except RemoteError as exc:
            if exc.exit_code == 2:
                raise UsageError(exc.message) from exc
            raise

    def cancel(self) -> None:
        self.job.cancel()


def run_batches(runtime: Runtime, io: ArtifactIO, batches: Sequence[tuple[np.ndarray, ...]]) -> tuple[list[list[np.ndarray]], list[float]]:
    """The artifact's native outputs for each batch (inputs permuted and quantized as ``io``
    says), and the seconds each run took."""
    outputs, seconds = [], []
    for batch in batches:
        native = [layout.to_artifact(x, binding) for x, binding in zip(batch, io.inputs)]
        start = time.perf_counter()
        raw = runtime.run(native)
        seconds.append(time.perf_counter() - start)
        outputs.append([np.array(r) for r in raw])
    return outputs, seconds


def latency(seconds: Sequence[float]) -> dict[str, float] | None:
    """Median and p90 milliseconds, the first (cache-warming) run left out."""
    timed = list(seconds[1:] if len(seconds) > 1 else seconds)
    if not timed:
        return None
    ms = sorted(s * 1000 for s in timed)
    return {"median": round(statistics.median(ms), 4), "p90": round(ms[min(len(ms) - 1, int(0.9 * len(ms)))], 4), "runs": len(ms)}


# --------------------------------------------------------------------------- comparing


def reference_form(outputs: Sequence[Sequence[np.ndarray]], io: ArtifactIO, order: Sequence[int]) -> Outputs:
    """Native artifact outputs per sample, reordered to the reference's outputs, dequantized
    and permuted back to the reference's layout."""
    return [[layout.from_artifact(np.asarray(sample[i]), io.outputs[i]) for i in order] for sample in outputs]


def judge_outputs(
    model: ReferenceModel,
    io: ArtifactIO,
    native: Sequence[Sequence[np.ndarray]],
    reference: Outputs,
    noise: parity.NoiseFloor,
    settings: ConvertSettings,
    inputs_source: str,
    simulated: Any = None,
) -> parity.ParityReport:
    """The parity verdict on the artifact's native outputs: matched to the reference's outputs,
    undone to their form, judged against each output's tolerance at ``io.precision``
    (``simulated``: edgex's simulated-quantized reference, for int8 and dynamic-int8)."""
    order = layout.match_outputs(model.output_names, io)
    actual = reference_form(native, io, order)
    tolerances = [
        parity.tolerance_for(io.precision, i, reference, noise, io.outputs[j].quant, settings.atol, settings.rtol, simulated)
        for i, j in enumerate(order)
    ]
    return parity.compare(reference, actual, model.output_names, tolerances, inputs_source)
