"""The shipped zoo at int8 on every target: how far each honest artifact lands from edgex's
simulated reference, and which rows are judged by output steps alone (issue 28, part 4).

    python benchmarks/zoo_int8.py [--models digits,resnet18,...] [--targets openvino,...] [--samples 16] [--json rows.json]

For each zoo model (examples/zoo.py, and digits) every int8 target converts it in one run (one
export, one simulation per scheme, shared), and the dynamic-int8 targets in a second run. The
calibration data is the model's own where it ships some (digits), else 64 seeded standard-normal
samples shaped like its example input (the zoo's untrained models have no data of their own).
Printed per row: status, the artifact's SQNR, the simulation's, the gap (simulation minus
artifact) and, where there is no simulation, the reason the row gives. Then per target the
gap's distribution over the models, and the count of rows judged by output steps alone.
Nothing is asserted here: the tests judge fast subsets (tests/test_quant_reference.py and the
planted-defect tests).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

MODELS = ("digits", "resnet18", "resnet-small", "mobilenet", "transformer", "lstm", "dscnn")
#: precision -> the targets that offer it here
RUNS = {
    "int8": ("tflite", "coral", "mcu", "onnx", "jetson", "executorch", "openvino"),
    "dynamic-int8": ("tflite", "coreml"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--targets", help="comma-separated: only these targets (default: every one installed here)")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("EDGEX_LOAD_PLUGINS", "openvino")

    from edgex.core import api

    manager = api.plugin_manager()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="edgex-zoo-int8-") as tmp:
        for name in args.models.split(","):
            spec = f"examples:{name}"
            model = api.load_model(spec)
            calibration = Path(tmp) / f"{name}.npy"
            data = model.calibration[0][:64] if model.calibration is not None else np.random.default_rng(0).standard_normal((64, *model.example_inputs[0].shape[1:])).astype(np.float32)
            np.save(calibration, data)
            for precision, targets in RUNS.items():
                wanted = [t for t in targets if t in manager.targets() and manager.backend_status(t).available and (not args.targets or t in args.targets.split(","))]
                if not wanted:
                    continue
                report = api.convert(spec, wanted, out=Path(tmp) / name / precision, precision=precision, samples=args.samples, calibration=str(calibration), plugins=manager)
                for target, row in report.targets.items():
                    reference = row.details.get("int8_reference") or {}
                    sims = [o["sqnr_sim_db"] for o in reference.get("outputs", ()) if o.get("sqnr_sim_db") is not None]
                    sqnr = row.parity.sqnr_db if row.parity else None
                    sim = min(sims) if sims else None
                    why = next((m for m in row.messages if "no simulated" in m), "")
                    rows.append({"model": name, "target": target, "precision": precision, "status": row.status, "sqnr_db": sqnr, "sqnr_sim_db": sim,
                                 "gap_db": (sim - sqnr) if sim is not None and sqnr is not None else None, "steps_alone": sim is None, "why": why})
                    gap = f"{rows[-1]['gap_db']:+6.1f}" if rows[-1]["gap_db"] is not None else "     -"
                    print(f"{name:13} {target:11} {precision:13} {row.status:8} {sqnr if sqnr is not None else float('nan'):7.1f} {sim if sim is not None else float('nan'):7.1f} {gap}  {why[:110]}", flush=True)
    print()
    for target in sorted({(r["target"], r["precision"]) for r in rows}):
        mine = [r for r in rows if (r["target"], r["precision"]) == target]
        gaps = [r["gap_db"] for r in mine if r["gap_db"] is not None]
        alone = [r["model"] for r in mine if r["steps_alone"]]
        spread = f"gap min {min(gaps):+.1f}, median {statistics.median(gaps):+.1f}, max {max(gaps):+.1f} dB over {len(gaps)} models" if gaps else "no simulated row"
        print(f"{target[0]}:{target[1]}: {spread}; passed {sum(r['status'] == 'passed' for r in mine)}/{len(mine)}" + (f"; judged by output steps alone: {', '.join(alone)}" if alone else ""))
    alone = [r for r in rows if r["steps_alone"]]
    print(f"\nrows judged by output steps alone: {len(alone)} of {len(rows)}")
    for r in alone:
        print(f"  {r['model']} on {r['target']} ({r['precision']}): {r['why']}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
