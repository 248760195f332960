"""Figures of the ncnn target, measured in one run and printed (nothing here is asserted).

1. Every shipped zoo model (``edgex.examples.zoo``, and digits) on ncnn at fp32 and fp16: the
   row's status and SQNR, or the honest reason it did not pass; and the ATen operators of the
   models that passed (``--ops``: the data ``targets/ncnn/ops.py`` judges ``edgex check`` by).
2. ``edgex convert`` on the command line (trace, pnnx, the ncnn runtime on the parity samples,
   the torch reference and its noise floor, parity, report) against the raw steps it wraps as a
   user's script does them (``pnnx.export(..., fp16=False)``, then ncnn with its fp16 options off
   on the same number of samples), each a fresh process, alternating, best of ``--repeats``.
   Goal: at most 1.2x.

    PYTHONPATH=... python benchmarks/ncnn_target.py [--models digits,resnet18,...] [--samples 8] [--repeats 2] [--ops]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from edgex.core import api
from edgex.core.plugin_manager import PluginManager

MODELS = ("digits", "resnet18", "resnet-small", "mobilenet", "transformer", "lstm", "dscnn")


def _manager() -> PluginManager:
    return PluginManager(load_entry_points=False)


def zoo(models: list[str], samples: int, ops: bool) -> None:
    print(f"1. the zoo on ncnn ({samples} parity samples)\n")
    print(f"{'model':13} {'precision':9} {'status':8} {'sqnr_db':>8}  reason")
    passed_ops: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="edgex-ncnn-zoo-") as tmp:
        for name in models:
            spec = f"examples:{name}"
            for precision in ("fp32", "fp16"):
                report = api.convert(spec, ["ncnn"], out=Path(tmp) / name / precision, precision=precision, samples=samples, plugins=_manager())
                row = report.targets["ncnn"]
                sqnr = f"{row.parity.sqnr_db:8.1f}" if row.parity and row.parity.sqnr_db is not None else "       -"
                reason = "" if row.status == "passed" else "; ".join(row.messages)[:160]
                print(f"{name:13} {precision:9} {row.status:8} {sqnr}  {reason}", flush=True)
                if ops and precision == "fp32" and row.status == "passed":
                    from edgex.core.check import torch_operators

                    passed_ops.update(op.name for op in torch_operators(api.load_model(spec)).operators)
    if ops:
        print("\nATen operators of the models that passed at fp32:\n" + ", ".join(sorted(passed_ops)))


#: what a user's own script does, run as its own process: pnnx.export (its output swallowed), then
#: ncnn with its fp16 options off on the samples (ncnn's default thread count)
RAW_SCRIPT = """
import contextlib, io, sys, tempfile
from pathlib import Path
import importlib
import numpy as np, ncnn, pnnx
module_name, _, factory = sys.argv[1].partition(":")  # the user's own model code, no edgex
model, example = getattr(importlib.import_module(module_name), factory)()
model.eval(); samples = int(sys.argv[2])
rng = np.random.default_rng(0)
inputs = [rng.standard_normal(tuple(example[0].shape[1:])).astype(np.float32) for _ in range(samples)]
with tempfile.TemporaryDirectory() as out:
    with contextlib.redirect_stdout(io.StringIO()):
        pnnx.export(model, str(Path(out) / "model.pt"), tuple(example), fp16=False)
    net = ncnn.Net()
    net.opt.use_fp16_packed = net.opt.use_fp16_storage = net.opt.use_fp16_arithmetic = False
    net.load_param(str(Path(out) / "model.ncnn.param")); net.load_model(str(Path(out) / "model.ncnn.bin"))
    for x in inputs:
        extractor = net.create_extractor(); extractor.input("in0", ncnn.Mat(x)); extractor.extract("out0")
"""


def _seconds(argv: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    assert done.returncode == 0, done.stderr[-2000:]
    return seconds


def timing(spec: str, samples: int, repeats: int) -> None:
    """Both sides as fresh processes, as a user runs them (``edgex convert`` on the command line,
    a script of their own): neither side's ``import ncnn`` decides the other's threads."""
    times: dict[str, list[float]] = {"edgex": [], "raw": []}
    for _ in range(repeats):
        times["raw"].append(_seconds([sys.executable, "-c", RAW_SCRIPT, spec, str(samples)]))
        with tempfile.TemporaryDirectory() as out:
            times["edgex"].append(_seconds([sys.executable, "-m", "edgex.core.cli", "convert", spec, "-t", "ncnn", "--samples", str(samples), "--out", out]))
        print(f"  raw {times['raw'][-1]:.2f} s, edgex {times['edgex'][-1]:.2f} s", flush=True)
    best_edgex, best_raw = min(times["edgex"]), min(times["raw"])
    print(f"{spec}, {samples} samples, fresh processes, best of {repeats}: edgex convert+validate {best_edgex:.2f} s / "
          f"raw pnnx.export+ncnn {best_raw:.2f} s = {best_edgex / best_raw:.2f}x (goal <= 1.2x)\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--timing", default="edgex.examples.zoo:resnet18,edgex.examples.zoo:resnet_small", help="models for part 2: module:factory returning (model, example inputs)")
    parser.add_argument("--ops", action="store_true")
    parser.add_argument("--skip-zoo", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("EDGEX_DISABLE_PLUGIN_AUTOLOAD", "1")
    if not args.skip_zoo:
        zoo(args.models.split(","), args.samples, args.ops)
    print("\n2. edgex against the raw tool (alternating)\n")
    for spec in args.timing.split(","):
        timing(spec, args.samples, args.repeats)


if __name__ == "__main__":
    main()
