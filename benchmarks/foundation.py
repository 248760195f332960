"""Issue 2's figures, measured in one run on this machine (times are wall clock, medians).

1. `edgex --help` and `edgex targets` start in under 1.0 s: torch, tensorflow and coremltools
   are imported only where used. Printed against a bare `python -c pass` for scale.
2. `edgex convert --target onnx` of a ResNet-18-sized model costs at most 1.15x the raw
   `torch.onnx.export` + onnxruntime run it wraps: the same model, the same exporter, the
   same number of samples run through onnxruntime and checked against torch.

Run: .venv/bin/python benchmarks/foundation.py [--samples 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent

RAW = r"""
import sys, numpy as np, torch, onnxruntime as ort
from edgex.examples.zoo import resnet18
samples, path = int(sys.argv[1]), sys.argv[2]
model, example = resnet18()
torch.onnx.export(model, example, path, dynamo=True, external_data=False, input_names=["x"], output_names=["y"], verbose=False)
session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
rng = np.random.default_rng(0)
inputs = rng.standard_normal((samples, 3, 224, 224)).astype(np.float32)
with torch.no_grad():
    expected = model(torch.from_numpy(inputs)).numpy()
got = np.concatenate([session.run(None, {"x": inputs[i:i + 1]})[0] for i in range(samples)])
print("max_abs", float(np.abs(got - expected).max()))
"""


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return seconds


def median_of(cmd: list[str], repeats: int) -> float:
    return statistics.median(timed(cmd) for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    python, edgex = str(BIN / "python"), str(BIN / "edgex")

    bare = median_of([python, "-c", "pass"], 5)
    help_s = median_of([edgex, "--help"], 5)
    targets_s = median_of([edgex, "targets"], 5)
    print("== start-up (limit 1.0 s)")
    print(f"python -c pass      {bare:6.3f} s")
    print(f"edgex --help        {help_s:6.3f} s  ({help_s / bare:.1f}x bare python)  {'OK' if help_s < 1.0 else 'OVER'}")
    print(f"edgex targets       {targets_s:6.3f} s  ({targets_s / bare:.1f}x bare python)  {'OK' if targets_s < 1.0 else 'OVER'}")

    raw_times, edgex_times = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):  # interleaved, so both see the same machine load
            raw_times.append(timed([python, "-c", RAW, str(args.samples), f"{tmp}/raw{i}.onnx"]))
            edgex_times.append(timed([edgex, "convert", "examples:resnet18", "-t", "onnx", "--samples", str(args.samples), "--out", f"{tmp}/out{i}"]))
    raw, ours = statistics.median(raw_times), statistics.median(edgex_times)
    print(f"\n== convert --target onnx, ResNet-18 (11.7 M params) at 224x224, {args.samples} samples, median of {args.repeats} (limit 1.15x)")
    print(f"raw torch.onnx.export + onnxruntime   {raw:7.2f} s   runs {', '.join(f'{t:.1f}' for t in raw_times)}")
    print(f"edgex convert --target onnx           {ours:7.2f} s   runs {', '.join(f'{t:.1f}' for t in edgex_times)}")
    print(f"ratio                                  {ours / raw:6.3f}x  {'OK' if ours / raw <= 1.15 else 'OVER'}")


if __name__ == "__main__":
    main()
