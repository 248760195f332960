"""Issue 24's figures: one ONNX export per model and opset, one simulation per quantization scheme.

``edgex convert`` of a ResNet-18 (``examples:resnet18``, 224x224) for ``onnx jetson openvino``, at
fp32 and at int8 (calibrated on 32 seeded random images), by this checkout ("after") and by the
commit before issue 24's work ("before", ``--before REV``, unpacked with ``git archive`` into a
temporary folder), each as its own ``python -m edgex.core.cli`` process with the same import
set-up. Rounds alternate which version runs first, so neither always meets a cold file cache;
the figure is the median after / before (limit 0.80 at each precision). It also prints the
ONNX exports the after run's report.json lists (``model.exports``), one per distinct opset.

Needs edgex-openvino installed (``packages/edgex-openvino``). Run:
    .venv/bin/python benchmarks/shared_export.py [--rounds 2] [--before 70bca4b]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ("onnx", "jetson", "openvino")
#: the last commit before issue 24's work (targets by family, shared exports, shared calibration)
BEFORE = "70bca4b"


def shim(tree: Path, site: Path) -> Path:
    """A folder for PYTHONPATH that makes ``edgex`` (and ``edgex_openvino``) import from ``tree``."""
    package = site / "edgex"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    for part in ("core", "plugins", "targets", "examples"):
        (package / part).symlink_to(tree / part)
    (site / "edgex_openvino").symlink_to(tree / "packages" / "edgex-openvino" / "src" / "edgex_openvino")
    return site


def convert(site: Path, out: Path, precision: str, calibration: Path) -> tuple[float, dict]:
    command = [sys.executable, "-m", "edgex.core.cli", "convert", "examples:resnet18", *(a for t in TARGETS for a in ("--target", t)), "--out", str(out)]
    if precision == "int8":
        command += ["--quantize", "int8", "--calibration", str(calibration)]
    env = {**os.environ, "PYTHONPATH": str(site), "EDGEX_LOAD_PLUGINS": "openvino"}
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode not in (0, 1):
        raise SystemExit(f"edgex convert failed ({done.returncode}): {done.stderr[-2000:]}")
    return seconds, json.loads((out / "report.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--before", default=BEFORE, help="the commit to compare with (default: the one before issue 24)")
    args = parser.parse_args()
    import numpy as np

    with tempfile.TemporaryDirectory(prefix="edgex-shared-export-") as tmp:
        work = Path(tmp)
        before_tree = work / "before-tree"
        before_tree.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.before], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(before_tree)], input=archive, check=True)
        sites = {"before": shim(before_tree, work / "site-before"), "after": shim(ROOT, work / "site-after")}
        calibration = work / "calibration.npy"
        np.save(calibration, np.random.default_rng(0).standard_normal((32, 3, 224, 224)).astype("float32"))

        print(f"edgex convert examples:resnet18 --target {' --target '.join(TARGETS)}: after (this checkout) / before ({args.before})")
        for precision in ("fp32", "int8"):
            ratios, last_after = [], {}
            for round_ in range(args.rounds):
                order = ("before", "after") if round_ % 2 == 0 else ("after", "before")
                seconds, reports = {}, {}
                for version in order:
                    seconds[version], reports[version] = convert(sites[version], work / f"{precision}-{version}-{round_}", precision, calibration)
                statuses = {v: {t: r["targets"][t]["status"] for t in TARGETS} for v, r in reports.items()}
                ratios.append(seconds["after"] / seconds["before"])
                last_after = reports["after"]
                print(f"  {precision} round {round_ + 1} ({order[0]} first): before {seconds['before']:.1f} s, after {seconds['after']:.1f} s, "
                      f"ratio {ratios[-1]:.3f}; verdicts before {statuses['before']}, after {statuses['after']}")
            exports = last_after["model"].get("exports", [])
            opsets = sorted({e["opset"] for e in exports})
            print(f"{precision}: after / before = {statistics.median(ratios):.3f} (median of {len(ratios)}; limit 0.80)")
            print(f"{precision}: ONNX exports in model.exports: {len(exports)} for {len(opsets)} distinct opsets {opsets}: "
                  + "; ".join(f"opset {e['opset']} {e['exporter']} {e['seconds']:.2f} s -> {', '.join(e['targets'])}" for e in exports))


if __name__ == "__main__":
    main()
