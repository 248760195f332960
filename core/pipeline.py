"""compress -> convert -> validate for the chosen targets.

The pipeline never discovers plugins: it is handed a :class:`PluginManager` (the command line,
the Python API and the matrix build one with ``make_manager``). A run's data is resolved once
(``edgex.core.data.resolve_inputs``) and handed to each stage. For every target the conversion
and the artifact's own runtime run in an isolated child (``edgex.core.runner``), and the outputs
are judged with the one parity implementation (``edgex.core.parity``). A target converts the
model with what it lacks rewritten (``edgex.core.rewrites``, each rewrite proven first); its
outputs are still judged against the un-rewritten reference. Artifacts are written to
a temporary folder inside ``out`` and moved into ``out/<target>/`` only when the target
converted; nothing is written outside ``out``.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import shutil
import time
import uuid
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np

from edgex.core import layout, parity, resources
from edgex.core.cache import CachedResult, ResultCache, array_digest, cache_key, restore, row_from_json, run_identity
from edgex.core.compression import compress_reference, drift
from edgex.core.data import RunInputs, resolve_inputs
from edgex.core.errors import EdgexError, TargetError, UsageError, is_unsupported_model, one_line
from edgex.core.exports import ExportStore
from edgex.core.fp16_range import FP16_ARITHMETIC, fp16_overflow
from edgex.core.isolation import a_core_for_the_child, interruption, isolation_mode
from edgex.core.loading import count_macs
from edgex.core.plugin_manager import PluginManager
from edgex.core.quant_reference import SCHEMES, Calibration, CannotSimulate, RecurrentOp, INT8_CARRIES_DB, MIXED_PRECISION_AIM_DB, MIXED_PRECISION_BELOW_DB, SENSITIVITY_SAMPLES, SimulatedReference, calibrate, choose_wider, describe_flags, describe_sensitivity, layer_sensitivity, quantization_options, simulate, simulated_floor, vacuous_reference
from edgex.core.report import Report, TargetReport, model_json, write_json_atomic, write_text_atomic
from edgex.core.report_html import report_page
from edgex.core.rewrites import Rewriter, Rewritten
from edgex.core.runner import (
    IsolatedRun,
    describe_artifact,
    judge_outputs,
    latency,
    observed,
    owned_out,
    OwnedOut,
    reference_form,
    resolve_artifact,
    run_batches,
    sandboxed,
    SCRATCH,
)
from edgex.core.settings import ConvertSettings
from edgex.core.types import ArtifactIO, ConversionRequest, ConversionResult, ReferenceModel, StageEvent, WiderLayers
from edgex.core.version import __version__

Outputs = parity.Outputs


@dataclass(frozen=True)
class TargetPlan:
    """One target a run will convert for, at which precision, or why it will not run."""

    target: str
    precision: str
    #: the user named it (a skip then counts as a failure of the run), rather than ``all``
    requested: bool
    plugin: str
    #: why the target does not run (backend missing, precision unsupported); "" when it runs
    skip: str = ""


# --------------------------------------------------------------------------- planning


def plan_targets(manager: PluginManager, names: Sequence[str], precision: str | None, model: ReferenceModel) -> list[TargetPlan]:
    """Which targets run, at which precision; bad requests are usage errors before any work."""
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
        refused = dict(spec.refuses).get(wanted)
        if wanted not in spec.precisions:
            reason = f"{name} offers {', '.join(spec.precisions)}, not {wanted}" + (f": {refused}" if refused else "")
        elif model.kind not in spec.accepts:
            reason = f"{name} converts from a {' or '.join(spec.accepts)} model, and MODEL is {model.kind}"
        if reason and requested:
            raise UsageError(reason + " (choose another --quantize or target)")
        if not reason:
            status = manager.backend_status(name)
            if not status.available:
                reason = status.missing_message()
        plans.append(TargetPlan(name, wanted, requested, registered.plugin, reason))
    return plans


# --------------------------------------------------------------------------- the reference side


#: what a user does about a reference that cannot judge anything
VACUOUS_HINT = "load trained weights (--weights) and give real inputs (--example-inputs or --calibration)"


#: what a verdict without a simulated reference falls back to, and what it cannot see
_WEAKER = {
    "int8": "judged by output steps alone, which cannot catch a wrong scale",
    "dynamic-int8": "judged by output steps alone, which cannot catch a wrong scale",
    "fp16": "judged by fp16 steps at the output's peak alone, which cannot catch a small shift of one output",
}


#: report.json keeps this many layers of a row's ``int8_sensitivity``
SENSITIVITY_LAYERS_KEPT = 20


class Reference:
    """The reference's side of every verdict in a run, computed once and shared by its targets:
    its outputs on the parity and eval inputs, its float noise floor, whether it can judge at
    all, and -- on first use -- edgex's simulated-quantized reference per scheme and its fp16
    range check."""

    def __init__(self, manager: PluginManager, model: ReferenceModel, inputs: RunInputs, limit: float | None = None) -> None:
        self.model, self.inputs = model, inputs
        # the model's own forward passes: --timeout covers them as it covers a target
        with observed(manager, "reference", limit=limit):
            self.outputs = parity.reference_outputs(model, inputs.parity)
            self.noise = parity.noise_floor(model, inputs.parity, self.outputs)
            self.eval_outputs: list[np.ndarray] = []
            if inputs.eval_batches:
                self.eval_outputs = [sample[0] for sample in parity.reference_outputs(model, inputs.eval_batches)]
        self.vacuous = vacuous_reference(self.outputs, inputs.parity, model.output_names)
        self._simulated: dict[tuple[Any, ...], tuple[SimulatedReference | None, str]] = {}
        self._calibrated: dict[tuple[Any, ...], tuple[Calibration | str, str]] = {}
        self._floors: dict[tuple[Any, ...], tuple[float, float] | None] = {}
        self._sensitivity: dict[tuple[Any, ...], dict[str, Any]] = {}
        self._wider: dict[tuple[Any, ...], dict[str, Any] | None] = {}

    def simulated(self, scheme: str, quantization: Mapping[str, Any] | None = None, rewritten: Rewritten | None = None) -> tuple[SimulatedReference | None, str]:
        """edgex's own ``scheme`` reference, quantizing as the artifact says it does
        (``ArtifactIO.quantization``), or None and the reason the verdict is weaker without one.

        ``rewritten``: what the target converted (``Rewriter.for_target``). With a rewrite applied,
        the simulation quantizes that model, the one the artifact is a quantization of: its ops
        are the artifact's (an nn.LSTM written out per step into linear, sigmoid, tanh, mul, add,
        cat has a quantization point after each, each step's input projection its own range; a hardswish written as add, relu6 and mul has two more than the one
        op). Only the tolerance comes from it: e_sim and sqnr_sim still measure the simulation
        against the un-rewritten model's outputs, which every artifact is compared with. So the
        rewrite's own fp32 drift counts in e_sim, and it is proven small before it is used:
        exact rewrites <= 1e-4 of the outputs' peak (fp32 reordering), the bounded gelu-tanh <=
        1e-3, a quarter of one int8 output step (1/255 of the range) -- it can widen the tolerance
        by at most that, far below the 3 x e_sim / 2-step bound. Without an applied rewrite it is
        the reference itself, as before.

        One simulation per scheme and run: the export and calibration (:meth:`calibrated`) are
        shared by every target of the scheme, and each way of quantizing weights the artifacts
        use (``onnx``'s 7-bit, ``jetson``'s symmetric activations) is one more pass over the
        parity inputs, made once.
        """
        scheme_options = {
            "weight_bits": int((quantization or {}).get("weight_bits", 8)),
            "symmetric_activations": bool((quantization or {}).get("symmetric_activations", False)),
            "palettize_bits": (quantization or {}).get("palettize_bits"),
            "activation_bits": int((quantization or {}).get("activation_bits", 8)),
            "on_input_grid": tuple(sorted((quantization or {}).get("on_input_grid", ()))),
            "float_weights_up_to": int((quantization or {}).get("float_weights_up_to", 0)),
            "bias_correction": bool((quantization or {}).get("bias_correction", False)),
            "float_outputs": bool((quantization or {}).get("float_outputs", False)),
            "dynamic_inputs": bool((quantization or {}).get("dynamic_inputs", False)),
            # a mixed-precision artifact's layers kept wider (WiderLayers.quantization)
            "kept_wider": tuple(((quantization or {}).get("kept_wider") or {}).get("modules", ())),
            "wider_as": str(((quantization or {}).get("kept_wider") or {}).get("as", "float")),
        }
        applied = rewritten.applied() if rewritten is not None else ()
        # how the artifact quantizes a recurrent op changes the graph simulated, so the calibration too
        calibrated, how = self.calibrated(scheme, rewritten, (quantization or {}).get("recurrent"))
        scheme_options["recurrent"] = None if isinstance(calibrated, str) else calibrated.recurrent
        key = (scheme, *scheme_options.values(), applied, calibrated if isinstance(calibrated, str) else "")
        if key not in self._simulated:
            if isinstance(calibrated, str):
                self._simulated[key] = (None, calibrated)
            else:
                model, module = self._simulated_model(rewritten)
                parity_inputs = list(rewritten.cast(self.inputs.parity) or ()) if applied else list(self.inputs.parity)
                try:
                    sim = simulate(module, model.example_inputs, (), parity_inputs, scheme, **scheme_options, calibrated=calibrated)
                    self._simulated[key] = (sim, how)
                except CannotSimulate as exc:
                    self._simulated[key] = (None, f"no simulated {scheme} reference ({exc.message}); {_WEAKER[scheme]}")
        return self._simulated[key]

    def _simulated_model(self, rewritten: Rewritten | None) -> tuple[ReferenceModel, Any]:
        """The model a simulation quantizes, and its torch module: the one a target converted
        (``rewritten``, when a rewrite was applied), else the reference's own (an ONNX reference
        written out as torch ops: :attr:`simulated_module`, possibly why there is none)."""
        if rewritten is not None and rewritten.applied():
            return rewritten.model, rewritten.model.module
        return self.model, self.simulated_module

    def floor(self, batches: Sequence[tuple[np.ndarray, ...]], reference: Any, activation_bits: int, on_input_grid: Sequence[str], recurrent: str | None, rewritten: Rewritten | None) -> tuple[float, float] | None:
        """``simulated_floor`` on a converter's own check ``batches`` (``ConversionRequest.simulated_floor``,
        asked by a target's child), from the int8 calibration of the model as ``rewritten`` that the
        verdict's simulated reference uses: one calibration per run, and one simulation per question."""
        applied = rewritten.applied() if rewritten is not None else ()
        key = (tuple(array_digest(x) for batch in batches for x in batch), activation_bits, tuple(sorted(on_input_grid)), recurrent, applied)
        if key not in self._floors:
            calibrated, _ = self.calibrated("int8", rewritten, recurrent)
            found = None
            if not isinstance(calibrated, str):
                model, module = self._simulated_model(rewritten)
                found = simulated_floor(module, model.example_inputs, (), batches, reference, activation_bits, on_input_grid, calibrated.recurrent, calibrated=calibrated)
            self._floors[key] = found
        return self._floors[key]

    def sensitivity(self, quantization: Mapping[str, Any] | None, rewritten: Rewritten | None) -> dict[str, Any] | None:
        """Per-layer int8 sensitivity (``layer_sensitivity``, leave-out) in the simulation of the
        model as ``rewritten``, quantizing as the artifact says, on the first
        SENSITIVITY_SAMPLES parity inputs; None where there is no simulation. Once per key."""
        applied = rewritten.applied() if rewritten is not None else ()
        calibrated, _ = self.calibrated("int8", rewritten, (quantization or {}).get("recurrent"))
        if isinstance(calibrated, str):
            return None
        options = quantization_options(quantization)
        key = (applied, calibrated.recurrent, *options.values())
        if key not in self._sensitivity:
            batches = list(self.inputs.parity[:SENSITIVITY_SAMPLES])
            reference = self.outputs[:SENSITIVITY_SAMPLES]
            if applied:
                batches = list(rewritten.cast(batches) or ())
            self._sensitivity[key] = layer_sensitivity(calibrated, batches, reference, aim_db=INT8_CARRIES_DB, **options)
        return self._sensitivity[key]

    def wider(self, types: Sequence[str], quantization: Mapping[str, Any] | None, modules: Sequence[str], rewritten: Rewritten | None) -> dict[str, Any] | None:
        """The layers an int8 artifact quantized as ``quantization`` says keeps wider, at one of
        ``types`` (``ConversionRequest.layers_kept_wider``, asked by a target's child): the
        user's ``modules``, measured at the first type, or ``choose_wider``'s where full int8's
        simulation (the verdict's, on every parity input) misses its floor, at the first type
        whose choice reaches the aim, else the one that comes closest; None where full int8 meets
        its floor, or there is no simulation to choose by. Measured on the first
        SENSITIVITY_SAMPLES parity inputs. Once per key."""
        applied = rewritten.applied() if rewritten is not None else ()
        quantization = {k: v for k, v in (quantization or {}).items() if k != "kept_wider"}
        options = quantization_options(quantization)
        key = (tuple(types), applied, quantization.get("recurrent"), *options.values(), tuple(modules))
        if key not in self._wider:
            calibrated, _ = self.calibrated("int8", rewritten, quantization.get("recurrent"))
            full, _ = self.simulated("int8", quantization, rewritten)
            found = None
            if isinstance(calibrated, str) or full is None:
                found = {"modules": list(modules), "chosen_by": "user", "as": types[0]} if modules else None
            else:
                full_db = parity.worst_sqnr(self.outputs, full.outputs)
                batches = list(self.inputs.parity[:SENSITIVITY_SAMPLES])
                if applied:
                    batches = list(rewritten.cast(batches) or ())
                measured: dict[str, dict[str, Any] | None] = {}

                def measure(wider_as: str) -> dict[str, Any] | None:
                    choice = choose_wider(calibrated, batches, self.outputs[:SENSITIVITY_SAMPLES], full_db, wider_as=wider_as, modules=modules, **options)
                    if choice is not None:
                        # measured again on every parity input, as the verdict will: a choice made on 4 can fit those 4
                        kept, _ = self.simulated("int8", {**quantization, "kept_wider": {"modules": choice["modules"], "as": wider_as}}, rewritten)
                        kept_db = parity.worst_sqnr(self.outputs, kept.outputs) if kept is not None else -math.inf
                        choice = {**choice, "as": wider_as, "full_int8_db": round(full_db, 2), "parity_db": round(kept_db, 2)}
                    measured[wider_as] = choice
                    return choice

                if modules:
                    found = measure(types[0])
                else:
                    # float carries the most of any wider type: where even its choice cannot let an
                    # artifact meet the floor, no other type's can, and they are not measured
                    hopeless = "float" in types[1:] and ((upper := measure("float")) is None or upper["parity_db"] < MIXED_PRECISION_BELOW_DB)
                    for wider_as in () if hopeless else types:  # the target's preference first
                        choice = measured[wider_as] if wider_as in measured else measure(wider_as)
                        if choice is not None and choice["parity_db"] >= MIXED_PRECISION_AIM_DB:
                            break
                    # the automatic choice is kept only where it lets an artifact meet the floor: the
                    # first type reaching the aim, else the one that comes closest
                    usable = [measured[t] for t in types if measured.get(t) is not None and measured[t]["parity_db"] >= MIXED_PRECISION_BELOW_DB]
                    found = next((c for c in usable if c["parity_db"] >= MIXED_PRECISION_AIM_DB), None) or (max(usable, key=lambda c: c["parity_db"]) if usable else None)
            self._wider[key] = found
        return self._wider[key]

    def calibrated(self, scheme: str, rewritten: Rewritten | None = None, recurrent: str | None = None) -> tuple[Calibration | str, str]:
        """The export and activation ranges every ``scheme`` simulation of the model (as
        ``rewritten`` for a target, its recurrent ops as the artifact quantizes them) shares,
        made on first use, and what it was calibrated on; or, in its place, why there is no
        simulated reference. A model without a recurrent op has one calibration whatever the
        target's ``recurrent`` says."""
        plain, how = self._calibrate(scheme, rewritten, None)
        if isinstance(plain, str) and how == RecurrentOp.__name__:  # it holds a recurrent op
            return (plain, "") if recurrent is None else self._calibrate(scheme, rewritten, recurrent)
        return plain, how

    def _calibrate(self, scheme: str, rewritten: Rewritten | None, recurrent: str | None) -> tuple[Calibration | str, str]:
        applied = rewritten.applied() if rewritten is not None else ()
        key = (scheme, applied, recurrent)
        if key not in self._calibrated:
            model, module = self._simulated_model(rewritten)
            if isinstance(module, str):
                self._calibrated[key] = (f"no simulated {scheme} reference ({module}); {_WEAKER[scheme]}", "")
            else:
                calibration, how = self.inputs.simulation_calibration() if scheme == "int8" else ([], "no calibration" if scheme == "fp16" else "weights only")
                if model.module is None:
                    how += "; the ONNX reference written out as torch ops (edgex.core.onnx_module), which reproduce onnxruntime's outputs"
                if applied:  # the rewritten model's input dtypes (int64 ids as int32)
                    calibration = list(rewritten.cast(calibration) or ())
                    how += f"; simulated on the model as rewritten for this target ({', '.join(applied)}), compared with the un-rewritten one"
                try:
                    self._calibrated[key] = (calibrate(module, model.example_inputs, calibration, scheme, recurrent), how)
                except CannotSimulate as exc:  # (why, and for a recurrent op the target may say how to simulate: RecurrentOp)
                    self._calibrated[key] = (f"no simulated {scheme} reference ({exc.message}); {_WEAKER[scheme]}", type(exc).__name__ if isinstance(exc, RecurrentOp) else "")
        return self._calibrated[key]

    @cached_property
    def simulated_module(self) -> Any:
        """The torch module the simulations quantize: the reference's own, or an ONNX reference
        written out as torch ops (:mod:`edgex.core.onnx_module`) once it reproduces onnxruntime's
        outputs on the parity inputs; in its place, why there is none (a str)."""
        if self.model.module is not None:
            return self.model.module
        from edgex.core.onnx_module import check_translation, onnx_module

        try:
            module = onnx_module(self.model.onnx_path)
            check_translation(module, self.outputs, self.inputs.parity)
        except CannotSimulate as exc:
            return f"an ONNX reference: {exc.message}"
        except Exception as exc:  # an op written out wrongly for these shapes: the translation's fault, named
            return f"an ONNX reference whose graph edgex cannot write out as torch ops ({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''})"
        return module

    @cached_property
    def fp16_overflow(self) -> str | None:
        """Why an honest fp16 execution of the reference overflows, or None (one forward pass, on first use)."""
        module = self.simulated_module
        return None if isinstance(module, str) else fp16_overflow(module, self.inputs.parity)


def simulated_details(sim: SimulatedReference, how: str, reference: Outputs, names: Sequence[str]) -> dict[str, Any]:
    """The report's account of the simulated reference a verdict was judged against."""
    outputs = []
    for index, name in enumerate(names):
        e_sim, sqnr_sim = parity.output_error(reference, sim.outputs, index)
        outputs.append({"name": name, "e_sim": e_sim, "sqnr_sim_db": round(sqnr_sim, 3), "step": sim.output_step(index)})
    return {"scheme": sim.scheme, "description": sim.describe(), "calibration": how, "seconds": round(sim.seconds, 4), "outputs": outputs, "ranges": list(sim.ranges)}


# --------------------------------------------------------------------------- running one target


@dataclass(frozen=True)
class RunOutcome:
    """What a target's child sends back: its conversion (None when validating an existing
    artifact), the artifact's bindings and its native outputs on the parity and eval inputs."""

    conversion: ConversionResult | None
    io: ArtifactIO
    backend: str
    outputs: list[list[np.ndarray]]
    eval_outputs: list[list[np.ndarray]]
    seconds: list[float]
    convert_seconds: float
    details: Mapping[str, Any]


#: report.json carries confusion matrices for classifiers with at most this many classes (it stays small)
CONFUSION_MAX_CLASSES = 20


def _confusion(labels: np.ndarray, predicted: np.ndarray, classes: int) -> list[list[int]]:
    """counts[true label][predicted class]"""
    counts = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(counts, (labels.astype(np.int64), predicted.astype(np.int64)), 1)
    return counts.tolist()


def _accuracy(reference_eval: list[np.ndarray], artifact_eval: list[np.ndarray], labels: np.ndarray) -> dict[str, Any]:
    ref = np.concatenate(reference_eval)
    got = np.concatenate(artifact_eval)
    y = labels[: len(ref)]
    ref_acc = float(np.mean(ref.argmax(axis=1) == y))
    got_acc = float(np.mean(got.argmax(axis=1) == y))
    result = {
        "samples": int(len(y)),
        "reference": ref_acc,
        "artifact": got_acc,
        "drop_points": round((ref_acc - got_acc) * 100, 4),
        "top1_agreement": float(np.mean(ref.argmax(axis=1) == got.argmax(axis=1))),
    }
    classes = int(max(ref.shape[1], int(y.max(initial=0)) + 1))
    if classes <= CONFUSION_MAX_CLASSES:
        result["confusion"] = {"reference": _confusion(y, ref.argmax(axis=1), classes), "artifact": _confusion(y, got.argmax(axis=1), classes)}
    return result


class TargetRun:
    """One target converted (or its artifact opened) and run on its own backend in a child.

    Started before the reference outputs are computed, so that the parent's torch work
    overlaps the child's conversion; ``finish`` collects the outputs and judges them.
    """

    def __init__(
        self,
        manager: PluginManager,
        target: str,
        plugin: str,
        model: ReferenceModel,
        make_io: Callable[[], tuple[ConversionResult | None, ArtifactIO]],
        inputs: RunInputs,
        settings: ConvertSettings,
        log_path: Path | None,
        rewritten: Rewritten | None = None,
        requested: bool = True,
        simulated_from: Callable[[], Rewritten | None] | None = None,
    ) -> None:
        # ``model`` is the reference the outputs are judged against: never the rewritten model
        self.manager, self.target, self.plugin, self.model = manager, target, plugin, model
        self.inputs, self.settings, self.rewritten = inputs, settings, rewritten
        #: the model the simulated int8 reference quantizes (Reference.simulated), asked for only
        #: when the artifact is int8: what was converted, else (validate) what this target converts
        self.simulated_from = simulated_from or (lambda: rewritten)
        #: named by the user, rather than by ``all`` (a model the target does not take is then an error)
        self.requested = requested
        #: the parent's answer to the child's question which layers to keep wider (``_answer_wider``)
        self.wider: dict[str, Any] | None = None

        def work(send: Callable[[str, Any], None]) -> RunOutcome:
            start = time.perf_counter()
            conversion, io = make_io(send)
            convert_seconds = time.perf_counter() - start
            send("converted", convert_seconds)
            runtime = manager.load_runtime(target, io, settings.options)
            outputs, seconds = run_batches(runtime, io, inputs.parity)
            eval_outputs: list[list[np.ndarray]] = []
            if inputs.eval_batches:
                eval_outputs, _ = run_batches(runtime, io, inputs.eval_batches)
            details = dict(runtime.details()) if hasattr(runtime, "details") else {}
            return RunOutcome(conversion, io, runtime.backend, outputs, eval_outputs, seconds, convert_seconds, details)

        manager.stage_started(StageEvent("convert", target))
        self.stage, self.stage_start = "convert", time.perf_counter()
        self.job = IsolatedRun(work, target, settings, log_path)
        #: what the child returned, or the EdgexError it raised (``wait``)
        self._done: RunOutcome | EdgexError | None = None

    def _end_stage(self, outcome: str, seconds: float | None = None) -> None:
        elapsed = time.perf_counter() - self.stage_start if seconds is None else seconds
        self.manager.stage_finished(StageEvent(self.stage, self.target, outcome, elapsed))

    def _on_event(self, kind: str, payload: Any, reference: Reference | None) -> None:
        if kind == "converted":
            self._end_stage("ok", payload)
            self.stage, self.stage_start = "validate", time.perf_counter()
            self.manager.stage_started(StageEvent("validate", self.target))
        elif kind == "simulated-floor":
            _answer_floor(payload, reference, self.rewritten)
        elif kind == "wider-layers":
            self.wider = _answer_wider(payload, reference, self.simulated_from())

    def wait(self, reference: Reference | None = None) -> None:
        """Wait for the child (its conversion and its runs on the backend); what it returned or
        raised is judged by :meth:`finish`. Apart, so the next target's child can start converting
        while the parent judges this one. The child's questions for ``reference`` (its simulated
        floors) are answered on the way."""
        if self._done is None:
            try:
                self._done = self.job.wait(lambda kind, payload: self._on_event(kind, payload, reference))
            except EdgexError as exc:
                self._done = exc

    def finish(self, reference: Reference) -> tuple[TargetReport, RunOutcome | None]:
        row = TargetReport(name=self.target, status="error", plugin=self.plugin)
        if self.rewritten is not None and self.rewritten.entries:
            # first, and in an error's row too: a rewrite not applied often explains the error
            row.details["rewrites"] = self.rewritten.entries
            row.messages.extend(self.rewritten.messages())
        self.wait(reference)
        try:
            if isinstance(self._done, EdgexError):
                raise self._done
            outcome: RunOutcome = self._done
        except UsageError:
            self._end_stage("error")
            raise
        except EdgexError as exc:
            if is_unsupported_model(exc) and not self.requested:
                row.status = "skipped"  # --target all: this target does not take this model
                self._end_stage("skipped")
                row.messages.append(exc.message)
                return row, None
            self._end_stage("error")
            row.messages.append(exc.message)
            row.traceback = getattr(exc, "remote_traceback", "")
            return row, None

        io = outcome.io
        row.precision, row.backend = io.precision, outcome.backend
        row.convert_seconds, row.latency_ms = outcome.convert_seconds, latency(outcome.seconds)
        row.io = {"inputs": [b.to_json() for b in io.inputs], "outputs": [b.to_json() for b in io.outputs]}
        row.details.update(outcome.details)
        if outcome.conversion is not None:
            row.converter = outcome.conversion.converter
            row.messages.extend(outcome.conversion.messages)
            row.details.update(outcome.conversion.details)
        simulated = None
        try:
            if io.precision in SCHEMES:
                simulated, how = reference.simulated(io.precision, io.quantization, self.simulated_from())
                if simulated is None:
                    row.messages.append(how)
                else:
                    row.details["fp16_reference" if io.precision == "fp16" else "int8_reference"] = simulated_details(simulated, how, reference.outputs, self.model.output_names)
                    if flags := describe_flags(simulated.ranges):
                        row.messages.append(flags)
                    self._int8_sensitivity(row, reference, io)
                    self._mixed_precision(row, io)
            judged = judge_outputs(self.model, io, outcome.outputs, reference.outputs, reference.noise, self.settings, self.inputs.parity_source, simulated)
        except UsageError:
            self._end_stage("error")
            raise
        except (TargetError, ValueError) as exc:
            row.messages.append(f"cannot compare outputs: {exc}")
            self._end_stage("error")
            return row, outcome
        row.parity = judged
        row.status = "passed" if judged.passed else "failed"
        row.messages.extend(judged.messages)
        if io.precision == "fp16":
            self._judge_fp16(row, reference)
        if outcome.eval_outputs and self.inputs.eval_labels is not None:
            first = layout.match_outputs(self.model.output_names, io)[:1]
            artifact_eval = [sample[0] for sample in reference_form(outcome.eval_outputs, io, first)]
            row.accuracy = _accuracy(reference.eval_outputs, artifact_eval, self.inputs.eval_labels)
            self._judge_accuracy(row)
        if reference.vacuous:
            row.status = "inconclusive"
            row.messages.append(f"inconclusive: {reference.vacuous}; {VACUOUS_HINT}")
        self._end_stage(row.status)
        return row, outcome

    def _mixed_precision(self, row: TargetReport, io: ArtifactIO) -> None:
        """The layers a mixed-precision int8 artifact kept wider, with their share of MACs and the
        simulation's SQNR at full int8 and with them kept (the verdict's simulated reference
        already quantizes as the artifact did); or why ``--keep-wider`` was not followed."""
        kept = (io.quantization or {}).get("kept_wider") or {}
        if kept.get("modules"):
            advice = self.wider or {}
            found = {"modules": list(kept["modules"]), "as": kept.get("as", "float"), "chosen_by": advice.get("chosen_by", "artifact")}
            for name in ("macs_share", "full_int8_db", "sqnr_before_db", "sqnr_db", "parity_db", "aim_db", "reached", "seconds", "why_unmeasured"):
                if advice.get(name) is not None:
                    found[name] = advice[name]
            if advice and set(advice["modules"]) != set(found["modules"]):
                # the target kept other layers than chosen (more: ops its quantizer has no int8 form
                # for; fewer: modules it found no op of): the choice's figures are the chosen set's
                found["chosen"] = list(advice["modules"])
            if "int8_reference" in row.details:
                found["simulated_db"] = min(output["sqnr_sim_db"] for output in row.details["int8_reference"]["outputs"])
                if "mixed precision:" not in row.details["int8_reference"].get("description", ""):
                    row.messages.append(f"the layers the artifact keeps wider ({', '.join(found['modules'])}) are no modules of this reference: "
                                        "it is judged against edgex's full-int8 simulation (is it this model's artifact?)")
            row.details["mixed_precision"] = found
            share = f", {100 * found['macs_share']:.1f}% of MACs" if found.get("macs_share") is not None else ""
            who = {"user": "chosen by --keep-wider", "auto": "chosen by edgex: full int8 misses its floor in edgex's simulation"}.get(found["chosen_by"], "as the artifact records them")
            measured = (f"; edgex's simulation {found['full_int8_db']:.1f} dB at full int8, {found['simulated_db']:.1f} dB as kept"
                        if "full_int8_db" in found and "simulated_db" in found else "")
            if "chosen" in found:
                measured += f" (chosen: {', '.join(found['chosen'])}; the target kept {len(found['modules'])} layers)"
            row.messages.append(f"mixed precision: {', '.join(found['modules'])} kept {found['as']} ({who}{share}){measured}")
        elif self.settings.keep_wider and not self.manager.resolve_target(self.target).spec.keeps_wider and io.precision == "int8":
            row.messages.append(f"--keep-wider not followed: {self.target} keeps no layer wider (full int8 only)")

    def _int8_sensitivity(self, row: TargetReport, reference: Reference, io: ArtifactIO) -> None:
        """Where int8 itself barely carries the model (its simulation, the row's ``int8_reference``,
        below INT8_CARRIES_DB), which layers cost it most: the report lists them, by module, with
        their share of MACs."""
        if io.precision != "int8" or (io.quantization or {}).get("activation_bits", 8) != 8 or (io.quantization or {}).get("kept_wider"):
            return
        sqnr_sim = min(output["sqnr_sim_db"] for output in row.details["int8_reference"]["outputs"])
        if not sqnr_sim < INT8_CARRIES_DB:
            return
        try:
            found = reference.sensitivity(io.quantization, self.simulated_from())
        except Exception as exc:  # a diagnosis, not the verdict: say why it is missing
            row.messages.append(f"no per-layer int8 sensitivity: {one_line(exc)}")
            return
        if found is not None:
            row.details["int8_sensitivity"] = {**found, "layers": found["layers"][:SENSITIVITY_LAYERS_KEPT]}
            cannot = "" if self.manager.resolve_target(self.target).spec.keeps_wider else f"; {self.target} keeps no layer wider (full int8 only)"
            row.messages.append(f"int8 reaches only {sqnr_sim:.1f} dB even in edgex's simulation; {describe_sensitivity(found)}{cannot}")

    def _judge_fp16(self, row: TargetReport, reference: Reference) -> None:
        """An fp16 pass also needs the reference's activations inside fp16's range: a backend
        that computes in fp32 (most CPU runtimes) cannot show the overflow a device would hit."""
        arithmetic = FP16_ARITHMETIC.get(self.target)
        if arithmetic:
            row.details["fp16_arithmetic"] = arithmetic
        overflow = reference.fp16_overflow
        if overflow:
            row.status = "failed"
            row.messages.append(f"fp16 overflow: {overflow}")

    def _judge_accuracy(self, row: TargetReport) -> None:
        """With labelled data a pass also needs the task's answers: top-1 agreement and accuracy."""
        accuracy, settings = row.accuracy or {}, self.settings
        accuracy["max_accuracy_drop"], accuracy["min_top1_agreement"] = settings.max_accuracy_drop, settings.min_top1_agreement
        if accuracy["top1_agreement"] < settings.min_top1_agreement:
            row.status = "failed" if row.status == "passed" else row.status
            row.messages.append(
                f"top-1 agreement with the reference {accuracy['top1_agreement']:.4f} on {accuracy['samples']} labelled samples is below "
                f"{settings.min_top1_agreement:g} (--min-top1-agreement)"
            )
        if accuracy["drop_points"] > settings.max_accuracy_drop:
            row.status = "failed" if row.status == "passed" else row.status
            row.messages.append(
                f"accuracy drops {accuracy['drop_points']:.2f} points ({accuracy['reference']:.4f} -> {accuracy['artifact']:.4f}), "
                f"more than the {settings.max_accuracy_drop:g} allowed (--max-accuracy-drop)"
            )


# --------------------------------------------------------------------------- the commands


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


def artifact_files(main: Path, candidates: Sequence[Path], kinds: Sequence[str]) -> list[Path]:
    """The files of the artifact parity runs (``main``), which its size counts: ``main`` and the
    ``candidates`` beside it that it loads with it (OpenVINO's ``model.bin``, ONNX external data):
    the same name up to the first dot, in the same folder, and no artifact kind the target
    declares of its own -- a C rendering, an Edge TPU compile or a log is not the model twice."""
    main = Path(main)
    companions = [
        path for path in map(Path, candidates)
        if path != main and path.parent == main.parent and path.name.split(".")[0] == main.name.split(".")[0]
        and not any(path.name.endswith(kind) for kind in kinds)
    ]
    return [main, *sorted(companions)]


def keep_printed(model: ReferenceModel, logs: Path, report: Report) -> None:
    """What the model's code printed while loading, in logs/model.log (never on the terminal)."""
    if not model.printed:
        return
    logs.mkdir(exist_ok=True)
    (logs / "model.log").write_text(model.printed)
    lines = len(model.printed.splitlines())
    report.messages.append(f"the model's code printed {lines} line{'s' if lines != 1 else ''} while loading: logs/model.log")


def _write_report(manager: PluginManager, claim: OwnedOut, report: Report, *, remove_stale: bool = True) -> None:
    """report.json and report.html, after removing the target folders an earlier run left that it
    does not describe (``remove_stale``: convert; validate keeps the same model's other artifacts
    it was not asked about)."""
    with observed(manager, "report"):
        if remove_stale:
            claim.remove_stale([a for row in report.targets.values() for a in row.artifacts], report.targets, manager.targets())
        data = report.to_json()
        write_json_atomic(claim.path / "report.json", data)
        write_text_atomic(claim.path / "report.html", report_page(data))


def _interrupted(report: Report, plans: Sequence[TargetPlan], exc: BaseException) -> None:
    """Rows for the targets an interrupted run did not finish (the finished keep theirs)."""
    name = interruption(exc).signal_name
    for plan in plans:
        if plan.target not in report.targets:
            report.targets[plan.target] = TargetReport(plan.target, "error", plan.plugin, plan.precision, messages=["interrupted"], requested=plan.requested)
    report.messages.append(f"interrupted by {name}: the targets that had not finished are errors")


def compress(manager: PluginManager, model: ReferenceModel, settings: ConvertSettings, inputs: RunInputs | None = None) -> tuple[ReferenceModel, dict[str, Any]]:
    """The compress stage alone (also ``edgex compress``): the compressed reference and its summary."""
    inputs = inputs or resolve_inputs(model, settings)
    with observed(manager, "compress"):
        return compress_reference(manager, model, settings.compression, inputs, settings.seed)


def convert(
    manager: PluginManager,
    model: ReferenceModel,
    settings: ConvertSettings,
    out: Path,
    *,
    command: str = "convert",
    overwrite: bool = False,
    cache: ResultCache | None = None,
    slots: JobSlots | None = None,
) -> Report:
    """Compress (if asked), convert to every planned target, validate each, write report.json.

    The run owns ``out`` (``runner.owned_out``: locked, refused when it holds another model's
    results unless ``overwrite``); on SIGINT/SIGTERM the finished targets are still reported.
    With a ``cache``, a target whose key (``edgex.core.cache.cache_key``) has an intact entry is
    served from it (artifacts copied, row marked ``cached``), and fresh results are stored.
    Targets convert one at a time, or, given ``slots`` (a matrix's), several at once while
    slots are free."""
    plans = plan_targets(manager, settings.targets, settings.precision, model)
    needs_calibration = any(p.precision == "int8" and not p.skip for p in plans)
    inputs = resolve_inputs(model, settings, needs_calibration)
    original = model
    compression_summary = None
    if settings.compression:
        model, compression_summary = compress(manager, model, settings, inputs)
    # the disk is checked once the folder is ours: clearly too small is refused before any work
    disk = resources.disk_needed(model, [p.precision for p in plans if not p.skip])
    with owned_out(out, model, overwrite=overwrite, disk=disk) as claim, sandboxed(claim.path):
        out = claim.path
        calibration_batches = inputs.calibration_batches
        report = Report(edgex_version=__version__, command=command, model=model_json(model, {"parity_inputs": inputs.parity_source}), compression=compression_summary)
        report.messages.extend(inputs.warnings)
        logs = out / "logs"
        keep_printed(model, logs, report)
        rewriter = Rewriter(model, inputs.parity, settings.rewrite)
        # one ONNX export per opset and exporter, shared by the targets (in the run's scratch folder)
        exports = ExportStore(out / SCRATCH / "exports")

        def start(plan: TargetPlan) -> tuple[TargetRun, Path]:
            # what this target lacks rewritten (each rewrite proven on the parity inputs first)
            rewritten = rewriter.for_target(manager.resolve_target(plan.target).spec.lacks)
            workdir = out / f".edgex-tmp-{plan.target}-{uuid.uuid4().hex[:8]}"
            workdir.mkdir()
            logs.mkdir(exist_ok=True)
            (logs / f"{plan.target}.log").unlink(missing_ok=True)  # this run's log, not appended to an old one
            request = ConversionRequest(
                target=plan.target,
                precision=plan.precision,
                model=rewritten.model,
                workdir=workdir,
                calibration=rewritten.cast(calibration_batches) if plan.precision == "int8" else None,
                options=dict(settings.options),
                seed=settings.seed,
                calibration_labels=inputs.calibration_label_batches if plan.precision == "int8" else None,
                max_accuracy_drop=settings.max_accuracy_drop,
                exports=exports,
                mixed_precision=settings.mixed_precision,
                keep_wider=settings.keep_wider,
            )

            def make_io(send: Callable[[str, Any], None]) -> tuple[ConversionResult, ArtifactIO]:
                # the recipe searches' simulated floors and the layers kept wider come from the
                # parent's one calibration
                parent = _AskParent(send, out / SCRATCH / "questions")
                result = manager.convert(replace(request, floors=parent.floor, wider_advice=parent.wider))
                return result, result.io

            return TargetRun(manager, plan.target, plan.plugin, model, make_io, inputs, settings, logs / f"{plan.target}.log", rewritten, requested=plan.requested), workdir

        try:
            with a_core_for_the_child():
                _convert_each(manager, original, model, plans, _Starter(start, slots), inputs, report, out, _CacheLookup(cache, manager, model, settings, inputs, report), settings.timeout_s)
        except KeyboardInterrupt as exc:  # SIGINT/SIGTERM: children ended by now; keep what finished
            _interrupted(report, plans, exc)
            report.model["exports"] = exports.records()
            _write_report(manager, claim, report)
            raise
        report.model["exports"] = exports.records()
        _write_report(manager, claim, report)
        return report


class _CacheLookup:
    """A run's view of the result cache: each planned target's key and intact entry, if any."""

    def __init__(self, cache: ResultCache | None, manager: PluginManager, model: ReferenceModel, settings: ConvertSettings, inputs: RunInputs, report: Report) -> None:
        self.cache, self.manager = cache, manager
        self.run: dict[str, Any] | None = None
        if cache is not None:
            try:
                self.run = run_identity(model, settings, inputs)
            except TypeError as exc:  # data edgex cannot hash by content: run without the cache
                report.messages.append(f"results not cached: {exc}")
        self.keys: dict[str, str] = {}
        self.hits: dict[str, CachedResult] = {}

    def look_up(self, plans: Sequence[TargetPlan]) -> None:
        if self.cache is None or self.run is None:
            return
        for plan in plans:
            key = self.keys[plan.target] = cache_key(self.manager, self.run, plan.target, plan.precision)
            hit = self.cache.load(key)
            if hit is not None:
                self.hits[plan.target] = hit

    def serve(self, plan: TargetPlan, out: Path) -> TargetReport:
        """The cached row, its artifacts copied into ``out/<target>``."""
        hit = self.hits[plan.target]
        workdir = out / f".edgex-tmp-{plan.target}-{uuid.uuid4().hex[:8]}"
        restore(hit, workdir)
        _install(workdir, out / plan.target)
        row = row_from_json(plan.target, hit.row)
        row.requested = plan.requested
        row.details["cached"] = True
        row.messages.append(f"from cache {hit.key[:12]}")
        return row

    def store(self, plan: TargetPlan, row: TargetReport, out: Path, macs: int | None) -> None:
        """Keep a fresh verdict; errors are not kept (a timeout or a crash may not happen again)."""
        key = self.keys.get(plan.target)
        if self.cache is not None and key is not None and row.status != "error":
            self.cache.store(key, row.to_json(), out / plan.target if row.artifacts else None, macs)
        note = self.cache.damage_note(key) if self.cache is not None else None
        if note:  # after storing: the fresh entry must not carry it
            row.messages.append(note)

    def cached_macs(self) -> int | None:
        """The model's MAC count as a cached run counted it (counting imports torch's compiler: seconds)."""
        return next((hit.macs for hit in self.hits.values() if hit.macs is not None), None)


class JobSlots(Protocol):
    """How many target children may convert at once, shared by a matrix's workers: ``take``
    waits for a slot, ``try_take`` takes one only if it is free, ``give`` returns one."""

    def take(self) -> None: ...

    def try_take(self) -> bool: ...

    def give(self) -> None: ...


class _AskParent:
    """A target's child asking the run's parent what the parent's simulation knows: its recipe
    search's simulated floors (``ConversionRequest.floors``) and the layers to keep wider
    (``ConversionRequest.wider_advice``). The parent calibrates the int8 reference once for the
    verdict anyway (an export and a pass over the calibration set: seconds on a ResNet, on the
    core the converter needs). The question goes up the child's event pipe; the answer comes back
    as a file the parent writes whole (:func:`_answer_floor`, :func:`_answer_wider`), while it
    waits for this child."""

    def __init__(self, send: Callable[[str, Any], None], folder: Path) -> None:
        self.send, self.folder = send, folder

    def _ask(self, kind: str, question: dict[str, Any]) -> Any:
        self.folder.mkdir(parents=True, exist_ok=True)
        answer = self.folder / f"{uuid.uuid4().hex}.json"
        self.send(kind, {**question, "answer": str(answer)})
        while not answer.exists():  # the parent answers every question (its end ends this child)
            time.sleep(0.02)
        found = json.loads(answer.read_text())["answer"]
        answer.unlink()
        return found

    def floor(self, batches: Sequence[tuple[np.ndarray, ...]], reference: Any, activation_bits: int, on_input_grid: Sequence[str], recurrent: str | None) -> tuple[float, float] | None:
        found = self._ask("simulated-floor", {"batches": [tuple(np.asarray(x) for x in batch) for batch in batches], "reference": reference,
                                              "activation_bits": activation_bits, "on_input_grid": tuple(on_input_grid), "recurrent": recurrent})
        return None if found is None else (float(found[0]), float(found[1]))

    def wider(self, types: Sequence[str], quantization: Mapping[str, Any], modules: Sequence[str]) -> WiderLayers | None:
        found = self._ask("wider-layers", {"types": list(types), "quantization": dict(quantization), "modules": tuple(modules)})
        if found is None:
            return None
        if "error" in found:
            raise UsageError(found["error"])
        return WiderLayers(tuple(found["modules"]), found["as"], found["chosen_by"], found.get("macs_share"), found.get("sqnr_before_db"), found.get("sqnr_db"))


def _answer_floor(question: Mapping[str, Any], reference: Reference | None, rewritten: Rewritten | None) -> None:
    """The parent's side of :meth:`_AskParent.floor`: always an answer, None where there is no floor."""
    found = None
    if reference is not None:
        try:
            found = reference.floor(question["batches"], question["reference"], question["activation_bits"], question["on_input_grid"], question["recurrent"], rewritten)
        except Exception:  # an aid to the child's recipe choice: without it the child aims at its own bound
            found = None
    write_text_atomic(Path(question["answer"]), json.dumps({"answer": found}))


def _answer_wider(question: Mapping[str, Any], reference: Reference | None, rewritten: Rewritten | None) -> dict[str, Any] | None:
    """The parent's side of :meth:`_AskParent.wider`: always an answer (the user's modules
    unmeasured, or None, where the simulation cannot say); returns it for the row."""
    modules = tuple(question["modules"])
    found = {"modules": list(modules), "chosen_by": "user", "as": question["types"][0]} if modules else None
    if reference is not None:
        try:
            found = reference.wider(question["types"], question["quantization"], modules, rewritten)
        except UsageError as exc:  # a --keep-wider module the model does not have: the child's error
            write_text_atomic(Path(question["answer"]), json.dumps({"answer": {"error": exc.message}}))
            return None
        except Exception as exc:  # without a measured choice: the user's modules as asked, else full int8
            if found is not None:
                found["why_unmeasured"] = one_line(exc)
    write_text_atomic(Path(question["answer"]), json.dumps({"answer": found}))
    return found


class _Starter:
    """Starts convert's targets in plan order and hands them out in that order: one at a time,
    or with ``slots``, as many at once as there are free slots (always at least one)."""

    def __init__(self, start: Callable[[TargetPlan], tuple[TargetRun, Path]], slots: JobSlots | None) -> None:
        self.start, self.slots = start, slots
        self.waiting: list[TargetPlan] = []
        self.running: dict[str, tuple[TargetRun, Path]] = {}

    def top_up(self) -> None:
        while self.waiting:
            if self.running and (self.slots is None or not self.slots.try_take()):
                return
            if not self.running and self.slots is not None:
                self.slots.take()
            plan = self.waiting.pop(0)
            try:
                self.running[plan.target] = self.start(plan)
            except BaseException:
                self.release()
                raise

    def take(self, plan: TargetPlan) -> tuple[TargetRun, Path]:
        if plan.target not in self.running:
            self.top_up()
        return self.running.pop(plan.target)

    def finished(self) -> None:
        """One handed-out target is done: its slot is free, and the next targets start."""
        self.release()
        self.top_up()

    def cancel(self) -> None:
        """End every started target (an interrupted or failed run), its work folder removed."""
        for run, workdir in self.running.values():
            run.job.cancel()
            shutil.rmtree(workdir, ignore_errors=True)
            self.release()
        self.running.clear()

    def release(self) -> None:
        if self.slots is not None:
            self.slots.give()


def _convert_each(
    manager: PluginManager,
    original: ReferenceModel,
    model: ReferenceModel,
    plans: Sequence[TargetPlan],
    starter: _Starter,
    inputs: RunInputs,
    report: Report,
    out: Path,
    cached: _CacheLookup,
    limit: float | None = None,
) -> None:
    """convert's targets, each row added to ``report`` in plan order as it finishes (an
    interrupted run keeps the rows added so far)."""
    runnable = [p for p in plans if not p.skip]
    cached.look_up(runnable)
    starter.waiting = [p for p in runnable if p.target not in cached.hits]
    if len(starter.waiting) > 1 and model.module is not None and isolation_mode() == "fork":
        # torch.export and the dynamo ONNX exporter import torch._dynamo on first use (1.3 s):
        # once here, before the children fork, rather than once in each child that exports; a
        # single target imports it in its own child, beside the reference work here (or never:
        # ncnn traces with TorchScript)
        importlib.import_module("torch._dynamo")
    compression_summary = report.compression
    try:
        # the first targets convert in their children while the parent computes the reference outputs
        starter.top_up()
        reference = None
        if starter.running:  # served from the cache, the targets need no reference outputs
            reference = Reference(manager, model, inputs, limit)
        first_int8 = next((p for p in runnable if p.precision == "int8" and p.target not in cached.hits), None)
        if first_int8 is not None:  # while the first target converts; of the model it converts, if it is running
            started = starter.running.get(first_int8.target)
            reference.calibrated("int8", started[0].rewritten if started else None)
        if compression_summary is not None and original is not model:
            compression_summary["drift_from_original"] = drift(original, model, inputs.parity)
        if model.macs is None and model.module is not None:
            report.model["macs"] = cached.cached_macs() if not starter.running and cached.cached_macs() is not None else count_macs(model.module, model.example_inputs)

        for plan in plans:
            if plan.skip:
                report.targets[plan.target] = TargetReport(plan.target, "skipped", plan.plugin, plan.precision, messages=[plan.skip], requested=plan.requested)
                continue
            if plan.target in cached.hits:
                report.targets[plan.target] = cached.serve(plan, out)
                continue
            run, workdir = starter.take(plan)
            try:
                run.wait(reference)
            except BaseException:
                shutil.rmtree(workdir, ignore_errors=True)
                starter.release()
                raise
            starter.finished()  # the next target converts while the parent judges this one
            try:
                row, outcome = run.finish(reference)
            except BaseException:
                shutil.rmtree(workdir, ignore_errors=True)
                raise
            row.requested = plan.requested
            if outcome is not None and outcome.conversion is not None and row.status != "error":
                conversion = _relocate(outcome.conversion, workdir, out / plan.target)
                _install(workdir, out / plan.target)
                row.artifacts = [str(Path(a.path).relative_to(out)) for a in conversion.artifacts]
                files = artifact_files(conversion.io.path, [a.path for a in conversion.artifacts], manager.resolve_target(plan.target).spec.artifact_kinds)
                row.size_bytes = _size(files)
            else:
                shutil.rmtree(workdir, ignore_errors=True)
            row.precision = row.precision or plan.precision
            cached.store(plan, row, out, report.model.get("macs"))
            report.targets[plan.target] = row
    except BaseException:
        starter.cancel()
        raise


def validate(manager: PluginManager, artifact: Path, model: ReferenceModel, settings: ConvertSettings, out: Path, *, target: str | None = None, overwrite: bool = False) -> Report:
    """Validate an existing artifact against the reference model and write report.json (``out``
    is held as ``convert`` holds it, but the same model's other target folders stay: validating
    ``edgex-out/onnx/model.onnx`` into the default ``edgex-out`` must not delete its siblings)."""
    artifact, registered = resolve_artifact(manager, artifact, target)
    name = registered.name
    status = manager.backend_status(name)
    report = Report(edgex_version=__version__, command="validate", model=model_json(model))
    if not status.available:
        report.targets[name] = TargetReport(name, "skipped", registered.plugin, messages=[status.missing_message()])
        with owned_out(out, model, overwrite=overwrite) as claim:
            _write_report(manager, claim, report, remove_stale=False)
        return report
    inputs = resolve_inputs(model, settings)
    report.model["parity_inputs"] = inputs.parity_source

    def make_io(send: Callable[[str, Any], None]) -> tuple[None, ArtifactIO]:
        return None, describe_artifact(manager, name, artifact, model, settings.precision)

    with owned_out(out, model, overwrite=overwrite) as claim, sandboxed(claim.path):
        out = claim.path
        (out / "logs").mkdir(exist_ok=True)
        (out / "logs" / f"{name}.log").unlink(missing_ok=True)  # this run's log, not appended to an old one
        keep_printed(model, out / "logs", report)
        try:
            # an int8 artifact's tolerance is simulated on the model as this target converts it
            # (its rewrites proven first), as convert's is; the row lists no rewrites: none was made here
            lacks = manager.resolve_target(name).spec.lacks
            run = TargetRun(manager, name, registered.plugin, model, make_io, inputs, settings, out / "logs" / f"{name}.log",
                            simulated_from=lambda: Rewriter(model, inputs.parity, settings.rewrite).for_target(lacks))
            try:
                reference = Reference(manager, model, inputs, settings.timeout_s)
            except BaseException:
                run.job.cancel()
                raise
            if model.macs is None and model.module is not None:
                report.model["macs"] = count_macs(model.module, model.example_inputs)
            row, _ = run.finish(reference)
        except KeyboardInterrupt as exc:
            row = TargetReport(name, "error", registered.plugin, messages=["interrupted"])
            report.messages.append(f"interrupted by {interruption(exc).signal_name}")
            report.targets[name] = row
            _write_report(manager, claim, report, remove_stale=False)
            raise
        row.artifacts = [str(artifact)]
        # the artifact file alone: the files beside it may be anything (model.py, model.pt), so an
        # IR's .bin is not counted here as convert counts it
        row.size_bytes = _size([artifact])
        report.targets[name] = row
        _write_report(manager, claim, report, remove_stale=False)
    return report
