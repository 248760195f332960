"""Figures of the rknn target (packages/edgex-rknn), measured in one run and printed (nothing
here is asserted). Needs the rknn toolchain: ``edgex toolchains build rknn``.

1. ``edgex toolchains build rknn`` when it is built: the command's wall time (goal <= 1 s).
2. Digits at int8 on rknn: the task accuracy drop on its 450 test images (goal <= 0.5 points),
   and fp16's.
3. ``edgex convert MODEL -t rknn --quantize int8`` on the command line against the raw steps a
   user scripts by hand: ``torch.onnx.export`` in their own environment, then, in the toolkit's
   environment, ``RKNN.config / load_onnx / build(do_quantization=True) / export_rknn /
   init_runtime() / inference`` on the same calibration samples and the same number of parity
   samples. Each side as fresh processes, alternating, best of ``--repeats``. Goal: <= 1.3x.

    PYTHONPATH=... python benchmarks/rknn_target.py [--model edgex.examples.zoo:resnet18] [--calibration 32] [--samples 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: the user's own export, in their environment (torch 2.13 here)
EXPORT = """
import importlib, sys, torch
module_name, _, factory = sys.argv[1].partition(":")
model, example = getattr(importlib.import_module(module_name), factory)()
torch.onnx.export(model.eval(), tuple(example), sys.argv[2], opset_version=17, input_names=["x"], dynamo=False)
"""

#: the toolkit's documented flow, in the toolchain's interpreter
TOOLKIT = """
import sys, numpy as np
from rknn.api import RKNN
onnx, dataset, samples = sys.argv[1], sys.argv[2], int(sys.argv[3])
first = np.load(open(dataset).readline().split()[0])
rng = np.random.default_rng(0)
inputs = [rng.standard_normal(first.shape).astype(np.float32) for _ in range(samples)]
rknn = RKNN(verbose=False)
assert rknn.config(target_platform="rk3588") == 0
assert rknn.load_onnx(model=onnx) == 0
assert rknn.build(do_quantization=True, dataset=dataset) == 0
assert rknn.export_rknn(onnx.replace(".onnx", ".rknn")) == 0
assert rknn.init_runtime() == 0
for x in inputs:
    assert rknn.inference(inputs=[x], data_format="nchw") is not None
rknn.release()
"""


def _seconds(argv: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **(env or {})})
    seconds = time.perf_counter() - start
    assert done.returncode == 0, (argv, done.stdout[-2000:], done.stderr[-2000:])
    return seconds


def _edgex(*argv: str) -> list[str]:
    return [sys.executable, "-m", "edgex.core.cli", *argv]


def built_check(repeats: int) -> None:
    times = [_seconds(_edgex("toolchains", "build", "rknn")) for _ in range(repeats)]
    print(f"1. `edgex toolchains build rknn` when built: best {min(times):.2f} s of {repeats} (goal <= 1 s)\n")


def digits(tmp: Path) -> None:
    print("2. digits on rknn (its 450 test images)")
    for precision in ("fp16", "int8"):
        out = tmp / f"digits-{precision}"
        subprocess.run(_edgex("convert", "examples:digits", "-t", "rknn", "--quantize", precision, "--out", str(out)), capture_output=True, text=True)
        row = json.loads((out / "report.json").read_text())["targets"]["rknn"]
        accuracy = row.get("accuracy") or {}
        print(f"   {precision}: {row['status']}, SQNR {row['parity']['sqnr_db']:.1f} dB, accuracy {accuracy.get('artifact', float('nan')):.4f} against "
              f"{accuracy.get('reference', float('nan')):.4f}: drop {accuracy.get('drop_points', float('nan')):.2f} points (goal <= 0.5 at int8)")
    print()


def timing(model: str, calibration: int, samples: int, repeats: int, tmp: Path) -> None:
    import importlib

    import numpy as np

    from edgex.core.toolchains import locate
    from edgex_rknn.plugin import TOOLCHAIN

    python = str(locate(TOOLCHAIN).require().python)
    module_name, _, factory = model.partition(":")
    _, example = getattr(importlib.import_module(module_name), factory)()
    shape = tuple(example[0].shape)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((calibration, *shape[1:])).astype(np.float32)
    np.savez(tmp / "calibration.npz", x=x)
    raw_dir = tmp / "raw"
    raw_dir.mkdir()
    lines = []
    for index in range(calibration):
        np.save(raw_dir / f"c{index}.npy", x[index : index + 1])
        lines.append(str(raw_dir / f"c{index}.npy"))
    (raw_dir / "dataset.txt").write_text("\n".join(lines) + "\n")
    (tmp / "export.py").write_text(EXPORT)
    (tmp / "toolkit.py").write_text(TOOLKIT)
    times: dict[str, list[float]] = {"edgex": [], "edgex normal": [], "raw": []}
    for round_ in range(repeats):
        onnx = str(raw_dir / f"model{round_}.onnx")
        times["raw"].append(_seconds([sys.executable, str(tmp / "export.py"), model, onnx]) + _seconds([python, "-I", str(tmp / "toolkit.py"), onnx, str(raw_dir / "dataset.txt"), str(samples)]))
        common = ("convert", model, "-t", "rknn", "--quantize", "int8", "--calibration", str(tmp / "calibration.npz"), "--samples", str(samples))
        times["edgex"].append(_seconds(_edgex(*common, "--out", str(tmp / f"edgex{round_}"))))
        # the raw script's own algorithm named: no choice to make, so no simulated floor to aim at
        times["edgex normal"].append(_seconds(_edgex(*common, "--rknn-algorithm", "normal", "--out", str(tmp / f"normal{round_}"))))
        print("   " + ", ".join(f"{side} {values[-1]:.2f} s" for side, values in times.items()), flush=True)
    best_raw = min(times["raw"])
    for side, label in (("edgex", "edgex convert (--rknn-algorithm auto, the default)"), ("edgex normal", "edgex convert --rknn-algorithm normal (the raw script's)")):
        print(f"3. {model} int8, {calibration} calibration and {samples} parity samples, fresh processes, best of {repeats}: "
              f"{label} {min(times[side]):.2f} s / raw export + toolkit {best_raw:.2f} s = {min(times[side]) / best_raw:.2f}x (goal <= 1.3x)")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="edgex.examples.zoo:resnet18")
    parser.add_argument("--calibration", type=int, default=32)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.environ.pop("EDGEX_DISABLE_PLUGIN_AUTOLOAD", None)  # the rknn target is an outside distribution
    with tempfile.TemporaryDirectory(prefix="edgex-rknn-bench-") as tmp:
        built_check(args.repeats)
        digits(Path(tmp))
        timing(args.model, args.calibration, args.samples, args.repeats, Path(tmp))


if __name__ == "__main__":
    main()
