"""Honest int8 artifacts against edgex's own simulated-quantized reference (core/quant_reference.py).

For each model: converts with the real converter (tflite, full int8 by default), runs the
artifact on LiteRT on the pipeline's own parity inputs, and prints

- sqnr_sim / e_sim: the simulated reference against the float torch model (the honest error),
- the artifact against float (SQNR, max |error|, as report.json's parity block has them),
- the artifact against the simulated reference,
- the candidate rule: SQNR_art >= sqnr_sim - 6 dB and max_art <= max(3 e_sim, 2 steps), a step
  being the smaller of the artifact's output scale and the reference range / 255, with the
  margins by which the artifact passes it,
- planted defects judged by the same rule: the artifact's outputs requantized to a 4x / 16x
  coarser output scale, and (--defects) a real conversion with one first-layer filter x1.5,
- the time of simulate() against api.convert()'s total time.

Run: PYTHONPATH=... python benchmarks/int8_reference.py [--models digits,resnet-small]
     [--precision int8|dynamic-int8] [--target tflite] [--defects]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import numpy as np

from edgex.core import api, parity, runner
from edgex.core.data import resolve_inputs
from edgex.core.layout import match_outputs
from edgex.core.settings import ConvertSettings
from edgex.core.quant_reference import simulate

SAMPLES = 32


def _errors(reference: parity.Outputs, actual: parity.Outputs) -> tuple[float, float]:
    """(SQNR dB, max |error|) over all outputs, as parity.compare measures them."""
    r = np.concatenate([np.asarray(o, np.float64).ravel() for s in reference for o in s])
    a = np.concatenate([np.asarray(o, np.float64).ravel() for s in actual for o in s])
    noise = float(np.sum((r - a) ** 2))
    sqnr = parity.SQNR_CAP_DB if noise == 0 else float(10 * np.log10(float(np.sum(r**2)) / noise))
    return sqnr, float(np.max(np.abs(r - a)))


def _artifact_outputs(manager, target: str, path: Path, model, batches) -> tuple[parity.Outputs, list]:
    io = manager.describe_artifact(target, path, model)
    runtime = manager.load_runtime(target, io, {})
    raw, _ = runner.run_batches(runtime, io, batches)
    order = match_outputs(model.output_names, io)
    return runner.reference_form(raw, io, order), [io.outputs[i].quant for i in order]


def _requantized(outputs: parity.Outputs, scale: float) -> parity.Outputs:
    return [[np.round(o / scale) * scale for o in sample] for sample in outputs]


def _judge(name: str, sqnr: float, max_err: float, sqnr_sim: float, e_sim: float, step: float) -> str:
    bound = max(3 * e_sim, 2 * step)
    passed = sqnr >= sqnr_sim - 6 and max_err <= bound
    return (
        f"  {name:38s} SQNR {sqnr:6.1f} dB (floor {sqnr_sim - 6:5.1f}, margin {sqnr - (sqnr_sim - 6):+5.1f} dB)  "
        f"max {max_err:.4g} (bound {bound:.4g}, {max_err / bound:4.2f}x)  -> {'PASS' if passed else 'FAIL'}"
    )


def _first_filter_scaled(module, factor: float = 1.5):
    import torch

    bad = copy.deepcopy(module)
    with torch.no_grad():
        for parameter in bad.parameters():
            if parameter.dim() >= 2:
                parameter[0].mul_(factor)
                break
    return bad


def measure(spec: str, target: str, precision: str, defects: bool) -> None:
    manager = api.plugin_manager()
    model = api.load_model(spec)
    settings = ConvertSettings(targets=(target,), precision=precision, samples=SAMPLES)
    inputs = resolve_inputs(model, settings, needs_calibration=precision == "int8")
    calibration = inputs.calibration_batches or []
    reference = parity.reference_outputs(model, inputs.parity)

    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        report = api.convert(model, [target], precision=precision, out=out, samples=SAMPLES)
        convert_seconds = time.perf_counter() - start
        row = report.targets[target]
        if row.status not in ("passed", "failed"):
            print(f"{spec}: {target} {precision} {row.status}: {row.messages}")
            return
        artifact, output_quant = _artifact_outputs(manager, target, Path(out) / row.artifacts[0], model, inputs.parity)

    sim = simulate(model.module, model.example_inputs, calibration, inputs.parity, precision)
    sqnr_sim, e_sim = _errors(reference, sim.outputs)
    sqnr_art, max_art = _errors(reference, artifact)
    sqnr_vs_sim, max_vs_sim = _errors(sim.outputs, artifact)
    range_step = parity._range_scale(reference, 0)
    artifact_scale = output_quant[0].scale if output_quant and output_quant[0] is not None else None
    step = min(artifact_scale, range_step) if artifact_scale else range_step

    print(f"\n{spec} ({target} {precision}, {len(inputs.parity)} parity samples: {inputs.parity_source})")
    print(f"  {sim.describe()}")
    print(f"  simulate() {sim.seconds:.2f} s vs api.convert() {convert_seconds:.2f} s: ratio {sim.seconds / convert_seconds:.2f}")
    print(f"  sim vs float:      sqnr_sim {sqnr_sim:6.1f} dB  e_sim {e_sim:.4g}")
    print(f"  artifact vs float: SQNR {sqnr_art:6.1f} dB  max {max_art:.4g}   (report: SQNR {row.parity.sqnr_db:.1f} dB, max {row.parity.max_abs:.4g}, {row.status})")
    print(f"  artifact vs sim:   SQNR {sqnr_vs_sim:6.1f} dB  max {max_vs_sim:.4g}")
    sim_step = sim.output_step(0)
    scale_text = f"{artifact_scale:.4g}" if artifact_scale else "none (float outputs)"
    print(f"  output step: artifact scale {scale_text}, reference range/255 {range_step:.4g}, sim step {sim_step if sim_step is None else f'{sim_step:.4g}'}")
    if artifact_scale:
        ratio = artifact_scale / range_step
        print(f"  artifact output scale / (range/255) = {ratio:.2f}  ({'flag: calibration problem' if ratio > 2 else 'ok'}, flagged above 2)")
    print(_judge("honest artifact", sqnr_art, max_art, sqnr_sim, e_sim, step))
    if artifact_scale:
        for factor in (4, 16):
            coarse = _requantized(artifact, artifact_scale * factor)
            print(_judge(f"defect: output scale x{factor}", *_errors(reference, coarse), sqnr_sim, e_sim, min(artifact_scale * factor, range_step)))
    if defects:
        with tempfile.TemporaryDirectory() as out:
            bad_model = api.load_model(_first_filter_scaled(model.module), example_inputs=model.example_inputs)
            bad_report = api.convert(bad_model, [target], precision=precision, out=out, samples=SAMPLES, calibration=inputs.calibration)
            bad_row = bad_report.targets[target]
            bad, _ = _artifact_outputs(manager, target, Path(out) / bad_row.artifacts[0], model, inputs.parity)
        print(_judge("defect: first filter x1.5 (real convert)", *_errors(reference, bad), sqnr_sim, e_sim, step) + f"   today's check: {bad_row.status}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="digits,resnet-small")
    parser.add_argument("--target", default="tflite")
    parser.add_argument("--precision", default="int8", choices=("int8", "dynamic-int8"))
    parser.add_argument("--defects", action="store_true", help="also convert a model with one first-layer filter x1.5")
    args = parser.parse_args()
    for name in args.models.split(","):
        measure(f"examples:{name}", args.target, args.precision, args.defects)


if __name__ == "__main__":
    main()
