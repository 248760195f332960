"""How a matrix scales with ``--jobs`` and what the result cache saves (issue 11).

    python benchmarks/matrix_scaling.py [--targets onnx,jetson,tflite] [--json results.json]

One matrix -- four cheap models from tests/models.py x three targets (onnx, jetson, tflite by
default), each target at its default precision -- run three times as ``edgex matrix`` processes,
timed from outside, in one sitting:

1. **serial**: ``--jobs 1`` into a fresh ``--out`` (its cache, ``OUT/.edgex-cache``, starts empty
   and is filled as the cells finish);
2. **jobs 2**: ``--jobs 2 --no-cache`` into another fresh ``--out``: the same work, two groups at once;
3. **cached rerun**: the serial run again, unchanged, into the same ``--out``: every cell is
   served from the cache.

It prints both ratios to the serial run: ``jobs 2 / serial`` (issue 11 asks <= 0.65) and
``cached rerun / serial`` (<= 0.10), and every cell's status, so that a ratio of runs that did
different work is visible. Nothing is asserted: the machine's load moves the parallel ratio, and
the figures are what this one run measured. tests/test_cache.py and tests/test_matrix.py test the
behaviour.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODELS = HERE.parent / "tests" / "models.py"
MODEL_NAMES = ("lstm_tiny", "transformer_tiny", "resnet_tiny", "mobilenet_tiny")


def write_config(folder: Path, targets: list[str]) -> Path:
    lines = [f"targets = {json.dumps(targets)}", "samples = 4"]
    for name in MODEL_NAMES:
        lines += ["[[models]]", f'spec = "{MODELS}:{name}"', f'name = "{name}"']
    path = folder / "matrix.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_matrix(config: Path, out: Path, *flags: str) -> tuple[float, list[dict]]:
    """Seconds the ``edgex matrix`` process took, and its cells."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "edgex.core.cli", "matrix", str(config), "--out", str(out), *flags], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode not in (0, 1, 3):
        raise SystemExit(f"edgex matrix {' '.join(flags)} exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    return seconds, json.loads((out / "results.json").read_text())


def statuses(cells: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for cell in cells:
        for row in cell["targets"].values():
            key = row["status"] + (" (cached)" if row.get("cached") else "")
            counts[key] = counts.get(key, 0) + 1
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", default="onnx,jetson,tflite", help="comma-separated targets (default onnx,jetson,tflite)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args()
    targets = args.targets.split(",")
    with tempfile.TemporaryDirectory(prefix="edgex-matrix-scaling-") as scratch:
        folder = Path(scratch)
        config = write_config(folder, targets)
        serial_s, serial = run_matrix(config, folder / "serial")
        jobs_s, parallel = run_matrix(config, folder / "jobs2", "--jobs", "2", "--no-cache")
        cached_s, cached = run_matrix(config, folder / "serial")
    figures = {
        "models": len(MODEL_NAMES),
        "targets": targets,
        "cells": len(serial),
        "serial_s": round(serial_s, 2),
        "jobs2_s": round(jobs_s, 2),
        "cached_rerun_s": round(cached_s, 2),
        "jobs2_over_serial": round(jobs_s / serial_s, 3),
        "cached_over_serial": round(cached_s / serial_s, 3),
        "statuses": {"serial": statuses(serial), "jobs2": statuses(parallel), "cached_rerun": statuses(cached)},
    }
    print(f"matrix: {len(MODEL_NAMES)} models x {len(targets)} targets ({', '.join(targets)}) = {len(serial)} cells")
    print(f"serial (--jobs 1, filling the cache):  {serial_s:7.1f} s   {figures['statuses']['serial']}")
    print(f"--jobs 2 --no-cache:                   {jobs_s:7.1f} s   {figures['statuses']['jobs2']}")
    print(f"unchanged rerun from the cache:        {cached_s:7.1f} s   {figures['statuses']['cached_rerun']}")
    print(f"jobs 2 / serial      = {figures['jobs2_over_serial']:.3f}   (issue 11 asks <= 0.65)")
    print(f"cached rerun / serial = {figures['cached_over_serial']:.3f}   (issue 11 asks <= 0.10)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
