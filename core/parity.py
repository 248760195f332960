"""The one parity implementation every target goes through.

Reference outputs come from the torch model (or onnxruntime for an ONNX reference) on seeded
inputs; artifact outputs come back from the target's runtime with layout and quantization
already undone (``edgex.core.layout``). This module measures the difference and judges it
against a tolerance that follows the precision:

- fp32: a multiple of the model's own float noise floor, measured by running the reference in
  float64 on the same inputs (``|fp32 - fp64|``): converters reorder float arithmetic, so an
  honest fp32 artifact differs from torch by about that much, and a real defect by far more.
- fp16: the error of edgex's simulated fp16 reference (the torch model with its weights, inputs
  and every op's output rounded to fp16), judged by the same rule as int8 below with a 6 dB
  margin and 2 fp16 steps at the output's peak. Without a simulation (an ONNX reference with an
  op edgex cannot write out, an export that fails): the fp32 noise floor scaled by the fp16/fp32 machine-epsilon ratio (2**13),
  and never below a few fp16 steps at the output's peak.
- int8 and dynamic-int8 (int8 weights): the error honest quantization gives, measured on
  edgex's own simulated-quantized reference (``edgex.core.quant_reference``: built from the torch
  model -- or an ONNX reference written out as torch ops, ``edgex.core.onnx_module`` -- and the
  calibration data, never read from the artifact). An output passes when its max
  |error| is within max(3 x e_sim, 2 steps) -- a step being the smaller of the artifact's output
  scale and the reference output range / 255 -- *and* its SQNR is at least sqnr_sim - 6 dB.
  Where no simulated reference can be built (an ONNX op edgex cannot write out, a recurrent op the
  target does not say how it quantizes), the bound falls back to a number of output steps and the report says the
  verdict is weaker.

Below fp32, an output whose SQNR is under ``MIN_SQNR_DB`` never passes, whatever the per-element
bound says: the error is then as large as the signal. Every tolerance carries a ``source``
sentence saying where it came from; ``--atol``/``--rtol`` replace it.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from edgex.core.errors import ModelError, UsageError, one_line
from edgex.core.types import QuantParams, ReferenceModel

#: fp32 tolerance = FP32_NOISE_FACTOR x the measured fp32-vs-fp64 noise floor
FP32_NOISE_FACTOR = 100.0
#: fp16 tolerance = FP16_NOISE_FACTOR x noise floor x (eps16 / eps32) ...
FP16_NOISE_FACTOR = 4.0
#: ... but never below FP16_PEAK_STEPS fp16 steps at the output's peak magnitude
FP16_PEAK_STEPS = 8.0
EPS32, EPS16 = 2.0**-23, 2.0**-10
#: fp16 against the simulated fp16 reference (every stored value rounded to fp16): SQNR >= sqnr_sim
#: minus this; backends that compute in fp32 land above the simulation, ones that round every op
#: land on it (docs/planted_defects.md has the measurements)
FP16_SIM_MARGIN_DB = 6.0
#: int8 / dynamic-int8 against the simulated reference (docs/int8_reference.md has the measurements):
#: max |error| <= max(SIM_ERROR_FACTOR x e_sim, SIM_MIN_STEPS steps) ...
SIM_ERROR_FACTOR = 3.0
SIM_MIN_STEPS = 2.0
#: ... and SQNR >= sqnr_sim - SIM_SQNR_MARGIN_DB[precision]: full int8 artifacts land within 1 dB
#: of the simulation (the same scheme exactly); dynamic-range kernels differ more (LiteRT's hybrid
#: ops quantize activations on the fly: 0.5-3 dB below a weights-only simulation)
SIM_SQNR_MARGIN_DB = {"int8": 3.0, "dynamic-int8": 6.0, "fp16": FP16_SIM_MARGIN_DB}
#: an artifact output scale coarser than this many reference steps (range / 255) is a calibration problem
MAX_OUTPUT_SCALE_STEPS = 2.0
#: fallback without a simulated reference: int8 tolerance in output quantization steps (LSB)
INT8_STEPS = 8.0
#: fallback without a simulated reference: int8-weights tolerance in steps of the reference range / 255
DYNAMIC_INT8_STEPS = 8.0
#: below fp32, an SQNR under this never passes
MIN_SQNR_DB = 10.0
#: the float64 noise-floor run: at most this many samples, added while under the time budget
NOISE_FLOOR_SAMPLES = 4
NOISE_FLOOR_BUDGET_S = 0.5
SQNR_CAP_DB = 300.0
#: the report's error histogram: bin edges of |error| in units of the element's tolerance (1 is the
#: bound); log-spaced below the bound, where honest artifacts land, linear around it
ERROR_HISTOGRAM_EDGES = (0.0, 0.001, 0.01, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0, 10.0)

Outputs = list[list[np.ndarray]]  # [sample][output]


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float
    source: str
    #: the output's SQNR must reach this too (None: no SQNR requirement, as at fp32)
    min_sqnr_db: float | None = None
    #: a reason the output fails whatever its errors (an output scale coarser than its range needs)
    problem: str = ""

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"atol": self.atol, "rtol": self.rtol, "source": self.source}
        if self.min_sqnr_db is not None:
            data["min_sqnr_db"] = self.min_sqnr_db
        if self.problem:
            data["problem"] = self.problem
        return data


@dataclass(frozen=True)
class OutputParity:
    name: str
    max_abs: float
    mean_abs: float
    max_rel: float
    tolerance: Tolerance
    within_tolerance: float  # fraction of elements inside the tolerance
    passed: bool
    sqnr_db: float = SQNR_CAP_DB

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["tolerance"] = self.tolerance.to_json()
        return data


@dataclass(frozen=True)
class ParityReport:
    """The parity block of report.json (see docs/contract.md)."""

    samples: int
    max_abs: float
    mean_abs: float
    max_rel: float
    cosine: float
    sqnr_db: float
    top1_agreement: float | None
    tolerance: Tolerance
    passed: bool
    inputs: str = ""
    outputs: tuple[OutputParity, ...] = ()
    messages: tuple[str, ...] = field(default_factory=tuple)
    #: per-element |error| / tolerance over every output, binned (:func:`error_histogram`)
    error_histogram: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "max_abs": self.max_abs,
            "mean_abs": self.mean_abs,
            "max_rel": self.max_rel,
            "cosine": self.cosine,
            "sqnr_db": self.sqnr_db,
            "top1_agreement": self.top1_agreement,
            "tolerance": self.tolerance.to_json(),
            "passed": self.passed,
            "inputs": self.inputs,
            "outputs": [o.to_json() for o in self.outputs],
            "error_histogram": self.error_histogram,
        }


@dataclass(frozen=True)
class NoiseFloor:
    """Per-output relative noise (max |fp32 - fp64| / max |fp64|), ``None`` where unmeasured."""

    per_output: tuple[float, ...] | None
    source: str


# --------------------------------------------------------------------------- reference runs


def torch_outputs(module: Any, batches: Sequence[tuple[np.ndarray, ...]], dtype: Any = None) -> Outputs:
    """Run ``module`` on each batch; batched into one call when the model allows it."""
    import torch

    from edgex.core.loading import flatten_outputs

    def tensors(arrays: Sequence[np.ndarray]) -> list[Any]:
        out = [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]
        return [t.to(dtype) if dtype is not None and t.is_floating_point() else t for t in out]

    def as_numpy(result: Any) -> list[np.ndarray]:
        return [t.detach().cpu().numpy() for t in flatten_outputs(result)[1]]

    with torch.no_grad():
        if len(batches) > 1:
            stacked = [np.concatenate(parts) for parts in zip(*batches)]
            size = len(batches[0][0])
            try:
                outputs = as_numpy(module(*tensors(stacked)))
            except Exception:
                outputs = None
            if outputs is not None and all(o.ndim > 0 and o.shape[0] == size * len(batches) for o in outputs):
                return [[o[i * size : (i + 1) * size] for o in outputs] for i in range(len(batches))]
        outputs = []
        for index, batch in enumerate(batches):
            try:
                outputs.append(as_numpy(module(*tensors(batch))))
            except Exception as exc:  # the model's own forward: its failure is named, not an internal error
                shapes = ", ".join(str(tuple(a.shape)) for a in batch)
                raise ModelError(
                    f"the model's forward raised on input {index + 1} of {len(batches)} (shape {shapes}): {one_line(exc)}; "
                    "every parity input must run through the model: fix the model, or give inputs it accepts (--example-inputs, --calibration)"
                ) from exc
        return outputs


def _onnx_run(path: Any, batches: Sequence[tuple[np.ndarray, ...]]) -> Outputs:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return [list(session.run(None, dict(zip(names, b)))) for b in batches]


def reference_outputs(model: ReferenceModel, batches: Sequence[tuple[np.ndarray, ...]]) -> Outputs:
    """The reference's outputs for each batch; NaN or inf in them is a usage error."""
    outputs = _onnx_run(model.onnx_path, batches) if model.module is None else torch_outputs(model.module, batches)
    for index, sample in enumerate(outputs):
        for name, value in zip(model.output_names, sample):
            if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
                raise UsageError(
                    f"the reference model's output {name!r} is NaN or infinite on parity sample {index}; "
                    "fix the model (or its inputs) first: no artifact can be judged against it"
                )
    return outputs


def noise_floor(model: ReferenceModel, batches: Sequence[tuple[np.ndarray, ...]], reference: Outputs) -> NoiseFloor:
    """Measure the reference's fp32 rounding noise by float64 runs of a few samples.

    The floor is relative (max |fp32 - fp64| / max |fp64| per output), so that tolerances scale
    with each output's peak over all samples. float64 convolutions are slow on CPUs: samples
    are added one at a time while they take under ``NOISE_FLOOR_BUDGET_S`` in all.
    """
    if model.module is None:
        return NoiseFloor(None, "an ONNX reference has no float64 run")
    import time

    import torch

    try:
        with warnings.catch_warnings():
            # a module from a .pt2 carries FakeTensors in its graph's metadata; copying them
            # makes torch warn about their data pointers, which nothing here reads
            warnings.filterwarnings("ignore", message="Accessing the data pointer of FakeTensor")
            double = copy.deepcopy(model.module).to(torch.float64)
        start, exact = time.perf_counter(), []
        while len(exact) < min(NOISE_FLOOR_SAMPLES, len(batches)) and (not exact or time.perf_counter() - start < NOISE_FLOOR_BUDGET_S):
            exact += torch_outputs(double, batches[len(exact) : len(exact) + 1], dtype=torch.float64)
    except Exception as exc:
        return NoiseFloor(None, f"the float64 reference run failed ({type(exc).__name__})")
    per_output = []
    for index in range(len(model.output_names)):
        diffs = [np.abs(reference[i][index].astype(np.float64) - exact[i][index].astype(np.float64)) for i in range(len(exact))]
        peaks = [np.abs(exact[i][index].astype(np.float64)) for i in range(len(exact))]
        peak = max(float(np.max(p, initial=0.0)) for p in peaks)
        per_output.append(max(float(np.max(d, initial=0.0)) for d in diffs) / peak if peak > 0 else 0.0)
    return NoiseFloor(tuple(per_output), f"relative max|fp32 - fp64| of the torch reference over {len(exact)} samples")


# --------------------------------------------------------------------------- tolerances


def _peak(reference: Outputs, index: int) -> float:
    return max(float(np.max(np.abs(sample[index]), initial=0.0)) for sample in reference)


def range_step(reference: Outputs, index: int) -> float:
    """One int8 step of output ``index`` as the reference spans it: (max - min, 0 included) / 255."""
    low = min(float(np.min(sample[index], initial=0.0)) for sample in reference)
    high = max(float(np.max(sample[index], initial=0.0)) for sample in reference)
    return max(high - low, 1e-12) / 255.0


def _sqnr(signal: float, noise: float) -> float:
    if noise == 0.0:
        return SQNR_CAP_DB
    if math.isinf(noise) or signal == 0.0:
        return -SQNR_CAP_DB
    return float(np.clip(10.0 * math.log10(signal / noise), -SQNR_CAP_DB, SQNR_CAP_DB))


def output_error(reference: Outputs, other: Outputs, index: int) -> tuple[float, float]:
    """(max |error|, SQNR in dB) of output ``index`` of ``other`` against ``reference``."""
    r = np.concatenate([np.asarray(s[index], dtype=np.float64).ravel() for s in reference])
    o = np.concatenate([np.asarray(s[index], dtype=np.float64).ravel() for s in other])
    diff = o - r
    return float(np.max(np.abs(diff), initial=0.0)), _sqnr(float(np.sum(r**2)), float(np.sum(diff**2)))


def worst_sqnr(reference: Outputs, other: Outputs) -> float:
    """The lowest SQNR over the outputs of ``other`` against ``reference`` (:func:`output_error`)."""
    return min(output_error(reference, other, index)[1] for index in range(len(reference[0])))


def simulated_sqnr_floor(precision: str, sqnr_sim: float) -> float:
    """The SQNR an artifact at ``precision`` must reach, given its simulated reference's
    ``sqnr_sim`` (both against the torch model): what its verdict asks, and what a converter's
    int8 recipe search aims at (targets/litert/convert.py)."""
    return max(sqnr_sim - SIM_SQNR_MARGIN_DB[precision], MIN_SQNR_DB)


def _simulated_tolerance(precision: str, index: int, reference: Outputs, simulated: Any, output_quant: QuantParams | None) -> Tolerance:
    e_sim, sqnr_sim = output_error(reference, simulated.outputs, index)
    if precision == "fp16":
        step = EPS16 * _peak(reference, index)
        step_source = f"fp16 at the output peak = {step:.4g}"
    else:
        step = range_step(reference, index)
        step_source = f"reference range/255 = {step:.4g}"
    problem = ""
    if output_quant is not None:
        if output_quant.scale > MAX_OUTPUT_SCALE_STEPS * step:
            problem = (
                f"calibration problem: the artifact's output scale {output_quant.scale:.4g} is {output_quant.scale / step:.1f}x "
                f"the reference range/255 ({step:.4g}); an honest calibration gives about 1x"
            )
        if output_quant.scale < step:
            step, step_source = output_quant.scale, f"the artifact's output scale {output_quant.scale:.4g}"
    atol = max(SIM_ERROR_FACTOR * e_sim, SIM_MIN_STEPS * step)
    margin = SIM_SQNR_MARGIN_DB[precision]
    min_sqnr = simulated_sqnr_floor(precision, sqnr_sim)
    source = (
        f"{precision} against edgex's simulated {simulated.scheme} reference: e_sim {e_sim:.4g}, sqnr_sim {sqnr_sim:.1f} dB; "
        f"max |error| <= max({SIM_ERROR_FACTOR:g} x e_sim, {SIM_MIN_STEPS:g} steps of {step_source}) and "
        f"SQNR >= max(sqnr_sim - {margin:g} dB, {MIN_SQNR_DB:g} dB)"
    )
    return Tolerance(atol, 0.0, source, min_sqnr, problem)


def tolerance_for(
    precision: str,
    index: int,
    reference: Outputs,
    noise: NoiseFloor,
    output_quant: QuantParams | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    simulated: Any = None,
) -> Tolerance:
    """The tolerance of output ``index`` at ``precision``, with where it came from.

    ``simulated`` is edgex's simulated reference (``edgex.core.quant_reference``) for int8,
    dynamic-int8 and fp16; without one the bound falls back to output steps.
    """
    if atol is not None or rtol is not None:
        return Tolerance(atol or 0.0, rtol or 0.0, "user (--atol/--rtol)")
    if simulated is not None and precision in SIM_SQNR_MARGIN_DB:
        return _simulated_tolerance(precision, index, reference, simulated, output_quant if precision == "int8" else None)
    peak = _peak(reference, index)
    floor = noise.per_output[index] if noise.per_output is not None else None
    if precision == "fp32":
        if floor is None:
            return Tolerance(max(1e-5 * peak, 1e-7), 0.0, f"fp32 default 1e-5 x output peak ({noise.source})")
        value = max(FP32_NOISE_FACTOR * floor * peak, 1e-6 * peak, 1e-9)
        return Tolerance(value, 0.0, f"fp32 noise floor: {FP32_NOISE_FACTOR:g} x {floor:.3g} (relative) x output peak {peak:.3g}; {noise.source}")
    if precision == "fp16":
        steps = FP16_PEAK_STEPS * EPS16 * peak
        if floor is None:
            return Tolerance(max(steps, 1e-6), 0.0, f"fp16: {FP16_PEAK_STEPS:g} fp16 steps at the output peak {peak:.3g} ({noise.source})", MIN_SQNR_DB)
        scaled = FP16_NOISE_FACTOR * floor * (EPS16 / EPS32) * peak
        if scaled >= steps:
            return Tolerance(scaled, 0.0, f"fp16: {FP16_NOISE_FACTOR:g} x relative fp32 noise floor {floor:.3g} x 2^13 (fp16/fp32 epsilon) x output peak {peak:.3g}", MIN_SQNR_DB)
        return Tolerance(max(steps, 1e-6), 0.0, f"fp16: {FP16_PEAK_STEPS:g} fp16 steps at the output peak {peak:.3g}", MIN_SQNR_DB)
    if precision == "int8":
        if output_quant is not None:
            return Tolerance(INT8_STEPS * output_quant.scale, 0.0, f"int8 without a simulated reference: {INT8_STEPS:g} x the artifact's output scale {output_quant.scale:.4g}", MIN_SQNR_DB)
        scale = range_step(reference, index)
        return Tolerance(INT8_STEPS * scale, 0.0, f"int8 without a simulated reference: {INT8_STEPS:g} x output step {scale:.4g} (reference output range / 255)", MIN_SQNR_DB)
    if precision == "dynamic-int8":
        scale = range_step(reference, index)
        return Tolerance(DYNAMIC_INT8_STEPS * scale, 0.0, f"int8 weights without a simulated reference: {DYNAMIC_INT8_STEPS:g} x output step {scale:.4g} (reference output range / 255)", MIN_SQNR_DB)
    raise UsageError(f"no parity tolerance is defined for precision {precision!r}")


# --------------------------------------------------------------------------- comparison


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 and nb == 0.0:
        return 1.0
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def _is_class_scores(sample_outputs: Sequence[np.ndarray]) -> bool:
    first = sample_outputs[0]
    return first.ndim == 2 and first.shape[1] >= 2


def error_histogram(ratios: Sequence[np.ndarray]) -> dict[str, Any]:
    """Per-element |error| in units of its tolerance, binned on ``ERROR_HISTOGRAM_EDGES``: a few
    dozen numbers for report.json however large the outputs (``above``: past the last edge,
    NaN/inf included)."""
    values = np.concatenate([np.asarray(r, dtype=np.float64).ravel() for r in ratios]) if ratios else np.zeros(0)
    values = np.where(np.isnan(values), np.inf, values)
    edges = np.asarray(ERROR_HISTOGRAM_EDGES)
    counts, _ = np.histogram(np.clip(values, 0.0, edges[-1]), bins=edges)
    above = int(np.sum(values > edges[-1]))
    counts[-1] -= above  # clipped into the last bin above; counted on their own
    return {"edges": list(ERROR_HISTOGRAM_EDGES), "counts": [int(c) for c in counts], "above": above, "unit": "tolerance"}


def _in_tolerance_units(diff: np.ndarray, bound: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(diff == 0, 0.0, diff / bound)  # a zero bound: any error is infinitely far


def compare(
    reference: Outputs,
    actual: Outputs,
    output_names: Sequence[str],
    tolerances: Sequence[Tolerance],
    inputs: str = "",
) -> ParityReport:
    """Judge ``actual`` against ``reference``, sample by sample and output by output."""
    if len(reference) != len(actual):
        raise ValueError(f"{len(actual)} artifact results for {len(reference)} reference samples")
    messages: list[str] = []
    per_output: list[OutputParity] = []
    total_signal = total_noise = 0.0
    abs_sum, elements, max_abs, worst_rel = 0.0, 0, 0.0, 0.0
    ratios: list[np.ndarray] = []
    for index, name in enumerate(output_names):
        ref = [np.asarray(s[index], dtype=np.float64) for s in reference]
        got = [np.asarray(s[index], dtype=np.float64) for s in actual]
        for r, g in zip(ref, got):
            if r.shape != g.shape:
                raise ValueError(f"output {name!r} has shape {g.shape} in the artifact but {r.shape} in the reference")
        r_all = np.concatenate([r.ravel() for r in ref])
        g_all = np.concatenate([g.ravel() for g in got])
        finite = np.isfinite(g_all)
        if not finite.all():
            messages.append(f"output {name!r}: the artifact produced {int((~finite).sum())} NaN/inf values")
        diff = np.where(finite, np.abs(g_all - r_all), np.inf)
        tol = tolerances[index]
        bound = tol.atol + tol.rtol * np.abs(r_all)
        inside = diff <= bound
        ratios.append(_in_tolerance_units(diff, bound))
        peak = float(np.max(np.abs(r_all), initial=0.0))
        out_max = float(np.max(diff, initial=0.0))
        finite_diff = np.where(finite, g_all - r_all, 0.0)
        signal, noise = float(np.sum(r_all**2)), (float(np.sum(finite_diff**2)) if finite.all() else math.inf)
        out_sqnr = _sqnr(signal, noise)
        within = bool(inside.all())
        if within and tol.min_sqnr_db is not None and out_sqnr < tol.min_sqnr_db:
            messages.append(f"output {name!r}: SQNR {out_sqnr:.1f} dB is below the {tol.min_sqnr_db:.1f} dB this precision reaches honestly")
        if tol.problem:
            messages.append(f"output {name!r}: {tol.problem}")
        per_output.append(
            OutputParity(
                name=name,
                max_abs=out_max,
                mean_abs=float(np.mean(diff)) if diff.size else 0.0,
                max_rel=out_max / peak if peak > 0 else (0.0 if out_max == 0 else math.inf),
                tolerance=tol,
                within_tolerance=float(np.mean(inside)) if inside.size else 1.0,
                passed=within and not tol.problem and (tol.min_sqnr_db is None or out_sqnr >= tol.min_sqnr_db),
                sqnr_db=out_sqnr,
            )
        )
        total_signal += signal
        total_noise += noise
        abs_sum += float(np.sum(diff))
        elements += diff.size
        max_abs = max(max_abs, out_max)
        worst_rel = max(worst_rel, per_output[-1].max_rel)

    cosine = 1.0
    for r_sample, g_sample in zip(reference, actual):
        r_flat = np.concatenate([np.asarray(o, dtype=np.float64).ravel() for o in r_sample])
        g_flat = np.nan_to_num(np.concatenate([np.asarray(o, dtype=np.float64).ravel() for o in g_sample]), nan=0.0, posinf=0.0, neginf=0.0)
        cosine = min(cosine, _cosine(r_flat, g_flat))
    sqnr = _sqnr(total_signal, total_noise)

    top1 = None
    if reference and _is_class_scores(reference[0]):
        agree = [
            np.argmax(np.nan_to_num(g[0], nan=-np.inf), axis=1) == np.argmax(r[0], axis=1) for r, g in zip(reference, actual)
        ]
        top1 = float(np.mean(np.concatenate(agree)))

    worst = max(per_output, key=lambda o: o.max_abs / max(o.tolerance.atol, 1e-30))
    passed = all(o.passed for o in per_output)
    if worst.max_abs > worst.tolerance.atol and worst.within_tolerance < 1.0:
        messages.append(
            f"output {worst.name!r}: max |error| {worst.max_abs:.3g} exceeds the tolerance {worst.tolerance.atol:.3g} "
            f"({(1 - worst.within_tolerance) * 100:.2f}% of values outside)"
        )
    return ParityReport(
        samples=len(reference),
        max_abs=max_abs,
        mean_abs=abs_sum / elements if elements else 0.0,
        max_rel=worst_rel,
        cosine=cosine,
        sqnr_db=sqnr,
        top1_agreement=top1,
        tolerance=worst.tolerance,
        passed=passed,
        inputs=inputs,
        outputs=tuple(per_output),
        messages=tuple(messages),
        error_histogram=error_histogram(ratios),
    )
