"""compress -> convert -> validate for the chosen targets.

The pipeline never discovers plugins: it is handed a :class:`PluginManager`-like object (the
command line and the Python API build one). For every target it runs the conversion and the
artifact's own runtime in an isolated child (``edgex.core.isolation``), then judges the outputs
with the one parity implementation (``edgex.core.parity``). Artifacts are written to a
temporary folder inside ``out`` and moved into ``out/<target>/`` only when the target
converted; nothing is written outside ``out``.
"""

from __future__ import annotations

import os
import shutil
import statistics
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from edgex.core import data, layout, parity
from edgex.core.errors import EdgexError, TargetError, UsageError
from edgex.core.isolation import RemoteError, start_isolated
from edgex.core.loading import count_macs
from edgex.core.sandbox import contained, offline
from edgex.core.report import Report, TargetReport, model_json, write_json_atomic
from edgex.core.types import (
    PRECISIONS,
    ArtifactIO,
    ConversionRequest,
    ConversionResult,
    ReferenceModel,
    StageEvent,
)


Outputs = parity.Outputs


@dataclass(frozen=True)
class ConvertSettings:
    """Options shared by ``edgex convert`` and ``edgex validate`` (and the matrix cells)."""

    targets: tuple[str, ...] = ("onnx",)
    #: None: each target's default precision; else one of ``PRECISIONS``
    precision: str | None = None
    samples: int = 32
    seed: int = 0
    #: a sample set or a path (.npy/.npz/image folder); None: the model's own, if it ships one
    calibration: Any = None
    #: parity inputs (a sample set or a path); None: calibration samples, else seeded random
    parity_inputs: Any = None
    #: labelled data for task accuracy ((samples, labels) or an .npz path with x, y)
    eval_data: Any = None
    atol: float | None = None
    rtol: float | None = None
    #: target options by option name (``--opset 17`` -> {"opset": 17})
    options: Mapping[str, Any] = field(default_factory=dict)
    timeout_s: float | None = None
    #: compression steps (``edgex.core.compression.CompressionStep``) applied before converting
    compression: tuple[Any, ...] = ()
    #: for recovery: unlabelled (or labelled .npz) data; None: the calibration data
    distill_data: Any = None


@dataclass(frozen=True)
class _Plan:
    target: str
    precision: str
    requested: bool
    plugin: str
    skip: str = ""  # why the target does not run (backend missing, precision unsupported)


# --------------------------------------------------------------------------- planning


def plan_targets(manager: Any, names: Sequence[str], precision: str | None, model: ReferenceModel) -> list[_Plan]:
    """Which targets run, at which precision; bad requests are usage errors before any work."""
    if precision is not None and precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    wants_all = "all" in names
    chosen: dict[str, bool] = {}
    if wants_all:
        chosen.update({name: False for name in manager.targets()})
    for name in names:
        if name != "all":
            chosen[manager.resolve_target(name).name] = True
    if not chosen:
        raise UsageError("no target given: pass --target NAME (see `edgex targets`) or --target all")
    plans = []
    for name, requested in chosen.items():
        registered = manager.resolve_target(name)
        spec = registered.spec
        wanted = precision or spec.default_precision
        reason = ""
        if wanted not in spec.precisions:
            reason = f"{name} offers {', '.join(spec.precisions)}, not {wanted}"
        elif model.kind not in spec.accepts:
            reason = f"{name} converts from a {' or '.join(spec.accepts)} model, and MODEL is {model.kind}"
        if reason and requested:
            raise UsageError(reason + " (choose another --quantize or target)")
        if not reason:
            status = manager.backend_status(name)
            if not status.available:
                reason = f"backend missing: {status.detail or status.backend}" + (f"; {status.install_hint}" if status.install_hint else "")
        plans.append(_Plan(name, wanted, requested, registered.plugin, reason))
    return plans


# --------------------------------------------------------------------------- sample data


def _resolve_samples(value: Any, model: ReferenceModel, what: str) -> data.SampleSet | None:
    if value is None:
        return None
    if isinstance(value, (str, Path)):
        return data.load_samples(Path(value), model.inputs, what)
    arrays = [np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v) for v in (value if isinstance(value, (tuple, list)) else (value,))]
    return data.check_samples(arrays, model.inputs, what)


def _resolve_eval(value: Any, model: ReferenceModel) -> tuple[data.SampleSet, np.ndarray] | None:
    if value is None:
        return None
    if isinstance(value, (str, Path)):
        samples, labels = data.load_labelled(Path(value), model.inputs, "--eval-data")
        if labels is None:
            raise UsageError(f"--eval-data {value} holds no labels: save it as .npz with arrays x and y")
        return samples, labels
    x, y = value
    return data.check_samples([np.asarray(x)], model.inputs, "eval data"), np.asarray(y)


@dataclass(frozen=True)
class _Inputs:
    batches: list[tuple[np.ndarray, ...]]
    source: str
    calibration: data.SampleSet | None
    eval_batches: list[tuple[np.ndarray, ...]]
    eval_labels: np.ndarray | None
    warnings: tuple[str, ...]


def prepare_inputs(model: ReferenceModel, settings: ConvertSettings, needs_calibration: bool) -> _Inputs:
    """Parity inputs, calibration and evaluation data, all validated against the model's inputs."""
    calibration = _resolve_samples(settings.calibration, model, "--calibration")
    calibration_source = "--calibration"
    if calibration is None and model.calibration is not None:
        calibration = data.check_samples(model.calibration, model.inputs, "the model's shipped calibration data")
        calibration_source = "the example's shipped data"
    provided = _resolve_samples(settings.parity_inputs, model, "--example-inputs")
    if provided is not None and data.count(provided) > 1:
        samples, source = data.take(provided, settings.samples, settings.seed), f"--example-inputs ({min(settings.samples, data.count(provided))} samples)"
    elif calibration is not None:
        samples = data.take(calibration, settings.samples, settings.seed)
        source = f"{data.count(samples)} samples of {calibration_source} (seed {settings.seed})"
    else:
        samples = data.synthetic_samples(model.inputs, settings.samples, settings.seed)
        source = f"{settings.samples} seeded standard-normal samples (seed {settings.seed})"
    warnings: list[str] = []
    if needs_calibration:
        if calibration is None:
            calibration = data.synthetic_samples(model.inputs, 128, settings.seed + 1)
            warnings.append("no --calibration data: int8 ranges come from 128 random normal samples and may not fit real inputs")
        else:
            warnings += data.calibration_warnings(calibration, samples, model.inputs)
    evaluation = _resolve_eval(settings.eval_data, model)
    if evaluation is None and model.eval_data is not None:
        evaluation = (data.check_samples([model.eval_data[0]], model.inputs, "shipped eval data"), np.asarray(model.eval_data[1]))
    eval_batches = data.batches(evaluation[0], model.inputs) if evaluation else []
    return _Inputs(
        batches=data.batches(samples, model.inputs),
        source=source,
        calibration=calibration,
        eval_batches=eval_batches,
        eval_labels=evaluation[1] if evaluation else None,
        warnings=tuple(warnings),
    )


# --------------------------------------------------------------------------- running one target


@dataclass(frozen=True)
class _RunOutcome:
    conversion: ConversionResult | None
    io: ArtifactIO
    backend: str
    outputs: list[list[np.ndarray]]
    eval_outputs: list[np.ndarray]
    seconds: list[float]
    convert_seconds: float
    details: Mapping[str, Any]


def _run_batches(runtime: Any, io: ArtifactIO, batches: Sequence[tuple[np.ndarray, ...]]) -> tuple[list[list[np.ndarray]], list[float]]:
    outputs, seconds = [], []
    for batch in batches:
        native = [layout.to_artifact(x, binding) for x, binding in zip(batch, io.inputs)]
        start = time.perf_counter()
        raw = runtime.run(native)
        seconds.append(time.perf_counter() - start)
        outputs.append([np.array(r) for r in raw])
    return outputs, seconds


def match_outputs(reference_names: Sequence[str], io: ArtifactIO) -> list[int]:
    """For each reference output, the index of the artifact output it corresponds to."""
    names = [b.name for b in io.outputs]
    if len(names) != len(reference_names):
        raise TargetError(f"the artifact has {len(names)} outputs but the reference model has {len(reference_names)}")
    if sorted(names) == sorted(reference_names):
        return [names.index(n) for n in reference_names]
    return list(range(len(names)))


def _undo(outputs: list[list[np.ndarray]], io: ArtifactIO, order: Sequence[int]) -> list[list[np.ndarray]]:
    return [[layout.from_artifact(sample[i], io.outputs[i]) for i in order] for sample in outputs]


def _latency(seconds: Sequence[float]) -> dict[str, float] | None:
    timed = list(seconds[1:] if len(seconds) > 1 else seconds)  # the first run warms caches up
    if not timed:
        return None
    ms = sorted(s * 1000 for s in timed)
    return {"median": round(statistics.median(ms), 4), "p90": round(ms[min(len(ms) - 1, int(0.9 * len(ms)))], 4), "runs": len(ms)}


def _accuracy(reference_eval: list[np.ndarray], artifact_eval: list[np.ndarray], labels: np.ndarray) -> dict[str, Any]:
    ref = np.concatenate(reference_eval)
    got = np.concatenate(artifact_eval)
    y = labels[: len(ref)]
    ref_acc = float(np.mean(ref.argmax(axis=1) == y))
    got_acc = float(np.mean(got.argmax(axis=1) == y))
    return {
        "samples": int(len(y)),
        "reference": ref_acc,
        "artifact": got_acc,
        "drop_points": round((ref_acc - got_acc) * 100, 4),
        "top1_agreement": float(np.mean(ref.argmax(axis=1) == got.argmax(axis=1))),
    }


def _relocate(result: ConversionResult, workdir: Path, final: Path) -> ConversionResult:
    def move(path: Path) -> Path:
        path = Path(path)
        return final / path.relative_to(workdir) if path.is_relative_to(workdir) else path

    artifacts = tuple(replace(a, path=move(a.path)) for a in result.artifacts)
    return replace(result, artifacts=artifacts, io=replace(result.io, path=move(result.io.path)))


def _install(workdir: Path, final: Path) -> None:
    """Move a finished target folder into place, replacing an older one atomically enough."""
    old = None
    if final.exists():
        old = final.with_name(f".edgex-old-{final.name}-{uuid.uuid4().hex[:8]}")
        os.replace(final, old)
    os.replace(workdir, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _size(paths: Sequence[Path]) -> int:
    total = 0
    for path in paths:
        path = Path(path)
        if path.is_dir():
            total += sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        elif path.exists():
            total += path.stat().st_size
    return total


@contextmanager
def observed(manager: Any, stage: str, target: str | None = None) -> Iterator[dict[str, str]]:
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


class _TargetRun:
    """One target converted (or described) and run on its own backend in a child process.

    Started before the reference outputs are computed, so that the parent's torch work
    overlaps the child's conversion; ``finish`` collects the outputs and judges them.
    """

    def __init__(
        self,
        manager: Any,
        target: str,
        plugin: str,
        model: ReferenceModel,
        make_io: Callable[[], tuple[ConversionResult | None, ArtifactIO]],
        inputs: _Inputs,
        settings: ConvertSettings,
        log_path: Path | None,
    ) -> None:
        self.manager, self.target, self.plugin, self.model = manager, target, plugin, model
        self.inputs, self.settings = inputs, settings

        def work(send: Callable[[str, Any], None]) -> _RunOutcome:
            start = time.perf_counter()
            conversion, io = make_io()
            convert_seconds = time.perf_counter() - start
            send("converted", convert_seconds)
            runtime = manager.load_runtime(target, io, settings.options)
            outputs, seconds = _run_batches(runtime, io, inputs.batches)
            eval_outputs: list[np.ndarray] = []
            if inputs.eval_batches:
                first = match_outputs(model.output_names, io)[0]
                raw_eval, _ = _run_batches(runtime, io, inputs.eval_batches)
                eval_outputs = [layout.from_artifact(sample[first], io.outputs[first]) for sample in raw_eval]
            details = dict(runtime.details()) if hasattr(runtime, "details") else {}
            return _RunOutcome(conversion, io, runtime.backend, outputs, eval_outputs, seconds, convert_seconds, details)

        manager.stage_started(StageEvent("convert", target))
        self.stage, self.stage_start = "convert", time.perf_counter()
        self.job = start_isolated(work, what=f"target {target}", timeout=settings.timeout_s, log_path=str(log_path) if log_path else None)

    def _end_stage(self, outcome: str, seconds: float | None = None) -> None:
        elapsed = time.perf_counter() - self.stage_start if seconds is None else seconds
        self.manager.stage_finished(StageEvent(self.stage, self.target, outcome, elapsed))

    def _on_event(self, kind: str, payload: Any) -> None:
        if kind == "converted":
            self._end_stage("ok", payload)
            self.stage, self.stage_start = "validate", time.perf_counter()
            self.manager.stage_started(StageEvent("validate", self.target))

    def finish(self, reference: Outputs, reference_eval: list[np.ndarray], noise: parity.NoiseFloor) -> tuple[TargetReport, _RunOutcome | None]:
        row = TargetReport(name=self.target, status="error", plugin=self.plugin)
        try:
            outcome: _RunOutcome = self.job.wait(self._on_event)
        except EdgexError as exc:
            self._end_stage("error")
            row.messages.append(exc.message)
            row.traceback = getattr(exc, "remote_traceback", "")
            if isinstance(exc, UsageError) or (isinstance(exc, RemoteError) and exc.exit_code == 2):
                raise UsageError(exc.message) from exc
            return row, None

        io = outcome.io
        row.precision, row.backend = io.precision, outcome.backend
        row.convert_seconds, row.latency_ms = outcome.convert_seconds, _latency(outcome.seconds)
        row.io = {"inputs": [b.to_json() for b in io.inputs], "outputs": [b.to_json() for b in io.outputs]}
        row.details.update(outcome.details)
        if outcome.conversion is not None:
            row.converter = outcome.conversion.converter
            row.messages.extend(outcome.conversion.messages)
            row.details.update(outcome.conversion.details)
        try:
            order = match_outputs(self.model.output_names, io)
            actual = _undo(outcome.outputs, io, order)
            tolerances = [
                parity.tolerance_for(io.precision, i, reference, noise, io.outputs[j].quant, self.settings.atol, self.settings.rtol)
                for i, j in enumerate(order)
            ]
            judged = parity.compare(reference, actual, self.model.output_names, tolerances, self.inputs.source)
        except (TargetError, ValueError) as exc:
            row.messages.append(f"cannot compare outputs: {exc}")
            self._end_stage("error")
            return row, outcome
        row.parity = judged
        row.status = "passed" if judged.passed else "failed"
        row.messages.extend(judged.messages)
        if outcome.eval_outputs and self.inputs.eval_labels is not None:
            row.accuracy = _accuracy(reference_eval, outcome.eval_outputs, self.inputs.eval_labels)
        self._end_stage(row.status)
        return row, outcome


# --------------------------------------------------------------------------- the commands


def _reference(manager: Any, model: ReferenceModel, inputs: _Inputs) -> tuple[Outputs, list[np.ndarray], parity.NoiseFloor]:
    with observed(manager, "reference"):
        reference = parity.reference_outputs(model, inputs.batches)
        noise = parity.noise_floor(model, inputs.batches, reference)
        reference_eval: list[np.ndarray] = []
        if inputs.eval_batches:
            reference_eval = [sample[0] for sample in parity.reference_outputs(model, inputs.eval_batches)]
    return reference, reference_eval, noise


@contextmanager
def sandboxed(out: Path) -> Iterator[None]:
    """Run offline, with temporary files and library caches in ``out`` (removed afterwards)."""
    scratch = out / ".edgex-scratch"
    try:
        with offline(), contained(scratch):
            yield
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _prepare_out(out: Path) -> Path:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    return out.resolve()  # converters may change directory: every path handed on is absolute


def compress(manager: Any, model: ReferenceModel, settings: ConvertSettings) -> tuple[ReferenceModel, dict[str, Any]]:
    """The compress stage alone (also ``edgex compress``): the compressed reference and its summary."""
    from edgex.core.compression import compress_reference

    with observed(manager, "compress"):
        return compress_reference(manager, model, settings)


def convert(manager: Any, model: ReferenceModel, settings: ConvertSettings, out: Path, *, command: str = "convert") -> Report:
    """Compress (if asked), convert to every planned target, validate each, write report.json."""
    from edgex.core import __version__

    plans = plan_targets(manager, settings.targets, settings.precision, model)
    original = model
    compression_summary = None
    if settings.compression:
        model, compression_summary = compress(manager, model, settings)
    needs_calibration = any(p.precision == "int8" and not p.skip for p in plans)
    inputs = prepare_inputs(model, settings, needs_calibration)
    out = _prepare_out(out)
    with sandboxed(out):
        calibration_batches = tuple(data.batches(inputs.calibration, model.inputs)) if inputs.calibration is not None else None

        report = Report(edgex_version=__version__, command=command, model=model_json(model, {"parity_inputs": inputs.source}), compression=compression_summary)
        report.messages.extend(inputs.warnings)
        logs = out / "logs"

        def start(plan: _Plan) -> tuple[_TargetRun, Path]:
            workdir = out / f".edgex-tmp-{plan.target}-{uuid.uuid4().hex[:8]}"
            workdir.mkdir()
            logs.mkdir(exist_ok=True)
            request = ConversionRequest(
                target=plan.target,
                precision=plan.precision,
                model=model,
                workdir=workdir,
                calibration=calibration_batches if plan.precision == "int8" else None,
                options=dict(settings.options),
                seed=settings.seed,
            )

            def make_io() -> tuple[ConversionResult, ArtifactIO]:
                result = manager.convert(request)
                return result, result.io

            return _TargetRun(manager, plan.target, plan.plugin, model, make_io, inputs, settings, logs / f"{plan.target}.log"), workdir

        runnable = [p for p in plans if not p.skip]
        # the first target converts in its child while the parent computes the reference outputs
        started = start(runnable[0]) if runnable else None
        try:
            reference, reference_eval, noise = _reference(manager, model, inputs)
        except BaseException:
            if started is not None:
                started[0].job.cancel()
                shutil.rmtree(started[1], ignore_errors=True)
            raise
        if compression_summary is not None and original is not model:
            from edgex.core.compression import drift

            compression_summary["drift_from_original"] = drift(original, model, inputs.batches)
        if model.macs is None and model.module is not None:
            report.model["macs"] = count_macs(model.module, model.example_inputs)

        for plan in plans:
            if plan.skip:
                report.targets[plan.target] = TargetReport(plan.target, "skipped", plan.plugin, plan.precision, messages=[plan.skip], requested=plan.requested)
                continue
            run, workdir = started if started is not None and started[0].target == plan.target else start(plan)
            started = None
            try:
                row, outcome = run.finish(reference, reference_eval, noise)
            except BaseException:
                shutil.rmtree(workdir, ignore_errors=True)
                raise
            row.requested = plan.requested
            if outcome is not None and outcome.conversion is not None and row.status != "error":
                conversion = _relocate(outcome.conversion, workdir, out / plan.target)
                _install(workdir, out / plan.target)
                row.artifacts = [str(Path(a.path).relative_to(out)) for a in conversion.artifacts]
                row.size_bytes = _size([conversion.io.path])
            else:
                shutil.rmtree(workdir, ignore_errors=True)
            row.precision = row.precision or plan.precision
            report.targets[plan.target] = row

        with observed(manager, "report"):
            write_json_atomic(out / "report.json", report.to_json())
        return report


def guess_target(manager: Any, artifact: Path) -> str:
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


def resolve_artifact(manager: Any, artifact: Path, target: str | None) -> tuple[Path, Any]:
    """An existing artifact and the registered target it belongs to (``target``, else its file name)."""
    artifact = Path(artifact)
    if not artifact.exists():
        raise UsageError(f"artifact not found: {artifact}")
    return artifact, manager.resolve_target(target or guess_target(manager, artifact))


def validate(manager: Any, artifact: Path, model: ReferenceModel, settings: ConvertSettings, out: Path, *, target: str | None = None) -> Report:
    """Validate an existing artifact against the reference model and write report.json."""
    from edgex.core import __version__

    artifact, registered = resolve_artifact(manager, artifact, target)
    name = registered.name
    status = manager.backend_status(name)
    report = Report(edgex_version=__version__, command="validate", model=model_json(model))
    if not status.available:
        report.targets[name] = TargetReport(name, "skipped", registered.plugin, messages=[f"backend missing: {status.detail or status.backend}; {status.install_hint}"])
        write_json_atomic(_prepare_out(out) / "report.json", report.to_json())
        return report
    inputs = prepare_inputs(model, settings, needs_calibration=False)
    out = _prepare_out(out)
    report.model["parity_inputs"] = inputs.source

    def make_io() -> tuple[None, ArtifactIO]:
        io = manager.describe_artifact(name, artifact.resolve(), model)
        return None, replace(io, precision=settings.precision) if settings.precision else io

    with sandboxed(out):
        (out / "logs").mkdir(exist_ok=True)
        run = _TargetRun(manager, name, registered.plugin, model, make_io, inputs, settings, out / "logs" / f"{name}.log")
        reference, reference_eval, noise = _reference(manager, model, inputs)
        if model.macs is None and model.module is not None:
            report.model["macs"] = count_macs(model.module, model.example_inputs)
        row, _ = run.finish(reference, reference_eval, noise)
    row.artifacts = [str(artifact)]
    row.size_bytes = _size([artifact])
    report.targets[name] = row
    write_json_atomic(out / "report.json", report.to_json())
    return report
