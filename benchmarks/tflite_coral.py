"""The figures of issue 4 (targets tflite and coral), measured in one run and printed.

    python benchmarks/tflite_coral.py [--out DIR] [--json]

- digits CNN, full int8 vs fp32: top-1 agreement on the test split (int8 .tflite vs torch fp32,
  and vs the fp32 .tflite), task accuracy drop;
- ResNet-style (examples:resnet-small), full int8: SQNR against torch;
- full-int8 size / fp32 .tflite size (digits, resnet-small, resnet18);
- ResNet-18 (examples:resnet18): conversion seconds, fp32 and full int8;
- MobileNet-style (examples:mobilenet): share of ops and MACs the static Edge TPU analysis maps.

Every number comes from edgex's own reports (report.json) of conversions made here, on this
machine; nothing is asserted. Targets run in forked children as in `edgex convert`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgex.core import api


def _row(model: str, target: str, precision: str, out: Path, **kwargs):
    started = time.perf_counter()
    report = api.convert(model, [target], out=out, precision=precision, **kwargs)
    row = report.targets[target]
    if row.status != "passed":
        print(f"  ! {model} {target} {precision}: {row.status}: {row.messages}", file=sys.stderr)
    return row, time.perf_counter() - started


def _steps(row) -> float:
    """The largest int8 error in the artifact's own output steps (the int8 tolerance is 8)."""
    return row.parity.max_abs / row.io["outputs"][0]["quantization"]["scale"]


def _agreement_between_artifacts(a: Path, b: Path) -> float:
    """Top-1 agreement of two digits .tflite files on the whole test split (LiteRT, native I/O)."""
    from edgex.core import layout
    from edgex.examples.digits import data
    from edgex.targets.litert.convert import describe_tflite
    from edgex.targets.litert.runtime import LiteRTRuntime
    reference = api.load_model("examples:digits")
    _, _, x_test, _ = data()
    votes = []
    for path in (a, b):
        io = describe_tflite(path, reference)
        runtime = LiteRTRuntime(path, [i.name for i in io.inputs], [o.name for o in io.outputs])
        scores = [layout.from_artifact(runtime.run([layout.to_artifact(x[None], io.inputs[0])])[0], io.outputs[0]) for x in x_test]
        votes.append(np.concatenate(scores).argmax(axis=1))
    return float(np.mean(votes[0] == votes[1]))


def measure(out: Path) -> dict:
    figures: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"}

    fp32, _ = _row("examples:digits", "tflite", "fp32", out / "digits-fp32")
    int8, _ = _row("examples:digits", "tflite", "int8", out / "digits-int8")
    figures["digits"] = {
        "converter_int8": int8.converter,
        "test_samples": int8.accuracy["samples"],
        "accuracy_torch_fp32": int8.accuracy["reference"],
        "accuracy_int8": int8.accuracy["artifact"],
        "accuracy_drop_points": int8.accuracy["drop_points"],
        "top1_agreement_int8_vs_torch_fp32": int8.accuracy["top1_agreement"],
        "top1_agreement_int8_vs_fp32_tflite": _agreement_between_artifacts(out / "digits-int8" / int8.artifacts[0], out / "digits-fp32" / fp32.artifacts[0]),
        "parity_int8": {"sqnr_db": int8.parity.sqnr_db, "max_abs": int8.parity.max_abs, "tolerance": int8.parity.tolerance.atol, "max_error_output_steps": _steps(int8)},
        "size_fp32": fp32.size_bytes,
        "size_int8": int8.size_bytes,
        "size_ratio": int8.size_bytes / fp32.size_bytes,
    }

    rs_fp32, _ = _row("examples:resnet-small", "tflite", "fp32", out / "resnet-small-fp32")
    rs_int8, _ = _row("examples:resnet-small", "tflite", "int8", out / "resnet-small-int8")
    figures["resnet_small"] = {
        "converter_int8": rs_int8.converter,
        "calibration": "128 seeded random-normal samples (the example ships no data)",
        "sqnr_db_int8_vs_torch": rs_int8.parity.sqnr_db,
        "parity_int8_passed": rs_int8.parity.passed,
        "max_abs": rs_int8.parity.max_abs,
        "tolerance": rs_int8.parity.tolerance.atol,
        "max_error_output_steps": _steps(rs_int8),
        "size_fp32": rs_fp32.size_bytes,
        "size_int8": rs_int8.size_bytes,
        "size_ratio": rs_int8.size_bytes / rs_fp32.size_bytes,
    }

    r18_fp32, wall_fp32 = _row("examples:resnet18", "tflite", "fp32", out / "resnet18-fp32", samples=4)
    r18_int8, wall_int8 = _row("examples:resnet18", "tflite", "int8", out / "resnet18-int8", samples=4)
    figures["resnet18"] = {
        "convert_seconds_fp32": r18_fp32.convert_seconds,
        "convert_seconds_int8": r18_int8.convert_seconds,
        "int8_calibration_samples": 128,
        "whole_command_seconds_fp32": wall_fp32,
        "whole_command_seconds_int8": wall_int8,
        "size_fp32": r18_fp32.size_bytes,
        "size_int8": r18_int8.size_bytes,
        "size_ratio": r18_int8.size_bytes / r18_fp32.size_bytes,
        "sqnr_db_int8_vs_torch": r18_int8.parity.sqnr_db,
        "max_error_output_steps": _steps(r18_int8),
    }

    mobilenet, _ = _row("examples:mobilenet", "coral", "int8", out / "mobilenet-coral", samples=8)
    analysis = mobilenet.details["edgetpu"]
    figures["mobilenet_edgetpu"] = {
        "ops_mapped": analysis["ops_mapped"],
        "ops_total": analysis["ops_total"],
        "op_fraction": analysis["op_fraction"],
        "mac_fraction": analysis["mac_fraction"],
        "first_unmapped": analysis["first_unmapped"],
        "source": analysis["source"],
    }
    return figures


def render(f: dict) -> str:
    d, r, r18, m = f["digits"], f["resnet_small"], f["resnet18"], f["mobilenet_edgetpu"]
    lines = [
        f"edgex tflite/coral figures ({f['machine']})",
        "",
        f"digits full int8 ({d['test_samples']} test samples; {d['converter_int8']})",
        f"  top-1 agreement int8 vs torch fp32   {d['top1_agreement_int8_vs_torch_fp32']:.4f}   (target >= 0.99)",
        f"  top-1 agreement int8 vs fp32 .tflite {d['top1_agreement_int8_vs_fp32_tflite']:.4f}",
        f"  accuracy fp32 {d['accuracy_torch_fp32']:.4f} -> int8 {d['accuracy_int8']:.4f}, drop {d['accuracy_drop_points']:+.2f} points (target <= 1)",
        f"  size int8/fp32 {d['size_int8']}/{d['size_fp32']} B = {d['size_ratio']:.3f} (target <= 0.30; a 23k-parameter model: fixed flatbuffer overhead)",
        f"  int8 parity: SQNR {d['parity_int8']['sqnr_db']:.1f} dB, max error {d['parity_int8']['max_error_output_steps']:.2f} output steps (tolerance 8)",
        f"resnet-small full int8: SQNR vs torch {r['sqnr_db_int8_vs_torch']:.1f} dB (target >= 25), parity passed {r['parity_int8_passed']}"
        f" (max error {r['max_error_output_steps']:.2f} output steps, tolerance 8)",
        f"  size int8/fp32 {r['size_int8']}/{r['size_fp32']} B = {r['size_ratio']:.3f} (target <= 0.30)",
        f"resnet18: convert {r18['convert_seconds_fp32']:.1f} s fp32, {r18['convert_seconds_int8']:.1f} s full int8 "
        f"({r18['int8_calibration_samples']} calibration samples) (target < 60 s)",
        f"  size int8/fp32 {r18['size_int8']}/{r18['size_fp32']} B = {r18['size_ratio']:.3f}; int8 SQNR {r18['sqnr_db_int8_vs_torch']:.1f} dB, "
        f"max error {r18['max_error_output_steps']:.2f} output steps",
        f"mobilenet (coral static analysis): {m['ops_mapped']}/{m['ops_total']} ops = {m['op_fraction']:.0%}, "
        f"MACs {m['mac_fraction']:.0%} mapped (target 100%); first unmapped: {m['first_unmapped']}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="where the conversions go (default: a temporary folder)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="edgex-bench-") as temporary:
        figures = measure(args.out or Path(temporary))
    print(json.dumps(figures, indent=2) if args.json else render(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
