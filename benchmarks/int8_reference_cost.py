"""Issue 15's cost figure: edgex's independent int8 reference costs at most 1.3x the
convert+validate that judged int8 by output steps alone, on a ResNet-18-sized model.

Both are measured in this one run, alternating, on the same model, target, precision and data:

- with: ``edgex.core.api.convert`` as it is (the simulated-quantized reference is built from the
  torch model and the calibration data, in the parent, while the target converts in its child);
- without: the same call with the simulated reference switched off (``Reference.simulated``
  answering "none", the old criterion's path) -- only this script does that.

Run: .venv/bin/python benchmarks/int8_reference_cost.py [--target tflite] [--repeats 2] [--samples 32]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from edgex.core import api, pipeline
from edgex.core.plugin_manager import PluginManager


def run_once(model, target: str, samples: int, with_reference: bool) -> tuple[float, dict]:
    original = pipeline.Reference.simulated
    if not with_reference:
        pipeline.Reference.simulated = lambda self, scheme, quantization=None: (None, "switched off for the benchmark")
    try:
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            report = api.convert(model, [target], precision="int8", out=out, samples=samples, plugins=PluginManager(load_entry_points=False))
            seconds = time.perf_counter() - start
    finally:
        pipeline.Reference.simulated = original
    row = report.targets[target]
    return seconds, {"status": row.status, "sqnr_db": row.parity.sqnr_db if row.parity else None, "reference": row.details.get("int8_reference", {})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="edgex.examples.zoo:resnet18")
    parser.add_argument("--target", default="tflite")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    model = api.load_model(args.model)
    run_once(model, args.target, 2, True)  # warm-up: first torch.export and converter imports
    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(args.repeats):
        for with_reference in (False, True):
            seconds, row = run_once(model, args.target, args.samples, with_reference)
            times[with_reference].append(seconds)
            reference = row["reference"]
            print(
                f"{'with' if with_reference else 'without'} the simulated reference: {seconds:6.1f} s, {row['status']}, "
                f"SQNR {row['sqnr_db']:.1f} dB" + (f", the reference itself {reference.get('seconds', 0):.1f} s" if reference else "")
            )
    with_s, without_s = statistics.median(times[True]), statistics.median(times[False])
    print(f"\n{args.model} -> {args.target} int8, {args.samples} parity samples, median of {args.repeats}:")
    print(f"convert+validate with edgex's independent int8 reference / without it: {with_s:.1f} s / {without_s:.1f} s = {with_s / without_s:.2f}x (limit 1.3x)")


if __name__ == "__main__":
    main()
