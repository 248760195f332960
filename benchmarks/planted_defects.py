"""Planted defects on every target and precision: does the parity verdict catch them? (issue 28)

    python benchmarks/planted_defects.py [--cells onnx:fp16,jetson:int8,...] [--samples 32] [--json rows.json]

For each (target, precision) edgex offers here, the digits CNN is converted once (the honest
artifact), then each defect kind is planted in a copy *of the file* (tests/defects.py for
.tflite, .onnx, .mlpackage, .pte and ncnn's .bin; tests/defects_openvino.py for OpenVINO IR;
tests/defects_mnn.py for .mnn) and
``edgex.core.api.validate`` judges it on the target's runtime:

- kinds: one output channel's weights scaled x1.5, two output channels swapped (weights, bias,
  scales), a bias shifted, and below fp32 a quantization scale written wrong (x4) or coarsened (x16);
- **material**: a defect counts only if it costs at least 6 dB of SQNR against the honest
  artifact (``MATERIAL_DB``); immaterial ones are listed apart, not counted;
- **caught** = status ``failed``; the honest artifact must pass (else a false alarm), and below
  fp32 its gap to edgex's simulated reference (simulated minus artifact SQNR) is printed.

It prints caught / planted material defects and false alarms per (target, precision), and the
totals. Nothing is asserted here: tests/test_int8_defects.py, tests/test_defects_float.py,
tests/test_defects_openvino.py and tests/test_defects_pte.py run the same planters as tests.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent / "tests"
MODEL = "examples:digits"
#: a defect must cost at least this much SQNR (dB) on the honest artifact to be counted
MATERIAL_DB = 6.0
#: (target, precision) -> the planters' module ("defects", "defects_openvino" or "defects_mnn"), or "pte" / "ncnn" (defects.py's pte_* / ncnn_*)
CELLS = {
    ("tflite", "fp32"): "defects", ("tflite", "fp16"): "defects", ("tflite", "dynamic-int8"): "defects", ("tflite", "int8"): "defects",
    ("coral", "int8"): "defects", ("mcu", "int8"): "defects",
    ("onnx", "fp32"): "defects", ("onnx", "fp16"): "defects", ("onnx", "int8"): "defects",
    ("jetson", "fp32"): "defects", ("jetson", "fp16"): "defects", ("jetson", "int8"): "defects",
    ("coreml", "fp32"): "defects", ("coreml", "fp16"): "defects", ("coreml", "dynamic-int8"): "defects",
    ("executorch", "fp32"): "pte", ("executorch", "fp16"): "pte", ("executorch", "int8"): "pte",
    ("ncnn", "fp32"): "ncnn", ("ncnn", "fp16"): "ncnn",
    ("openvino", "fp32"): "defects_openvino", ("openvino", "fp16"): "defects_openvino", ("openvino", "int8"): "defects_openvino",
    ("mnn", "fp32"): "defects_mnn", ("mnn", "fp16"): "defects_mnn", ("mnn", "dynamic-int8"): "defects_mnn", ("mnn", "int8"): "defects_mnn",
}


def _load(name: str) -> Any:
    """A tests/ module by path, as the tests load it (the tests folder is not a package)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, TESTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


Plant = Callable[[Path, Path], Any]


def plants(kind: str, precision: str, row: Any) -> dict[str, Plant]:
    """The defect kinds for one artifact format, each plant(artifact, out)."""
    quantized = precision in ("int8", "dynamic-int8")
    if kind == "pte":
        d = _load("defects")
        from edgex.core import api

        module = api.load_model(MODEL).module
        weight = module.classifier.weight.detach().numpy().astype("float32")
        bias = module.classifier.bias.detach().numpy().astype("float32")
        found = {
            "scale-ch-x1.5": (lambda p, o: d.pte_scale_int8_channel(p, o, weight, channel=3, factor=1.5)) if quantized
            else (lambda p, o: d.pte_scale_weight(p, o, weight, channel=3, factor=1.5)),
            "swap-ch": lambda p, o: d.pte_swap_channels(p, o, weight, bias, a=3, b=5),
            "shift-bias-last": lambda p, o: d.pte_shift_bias(p, o, weight, bias, channel=3, shift=0.5),
        }
        if quantized:
            scale = row.io["outputs"][0]["quantization"]["scale"]
            found["coarsen-output-x16"] = lambda p, o: d.pte_coarsen_output(p, o, scale, factor=16.0)
        return found
    if kind == "ncnn":  # the .bin's weights and biases, in their stored dtype (tests/defects.py ncnn_*)
        d = _load("defects")
        return {
            "scale-ch-x1.5": lambda p, o: d.ncnn_scale_channel(p, o, layer="middle", channel=1, factor=1.5),
            "swap-ch": lambda p, o: d.ncnn_swap_channels(p, o, layer="middle", a=0, b=1),
            "shift-bias": lambda p, o: d.ncnn_shift_bias(p, o, layer="middle", channel=1),
            "shift-bias-last": lambda p, o: d.ncnn_shift_bias(p, o, layer="last", channel=1),
        }
    _load("defects")  # first: defects_openvino and defects_mnn build on its Planted
    d = _load(kind)
    found = {
        "scale-ch-x1.5": lambda p, o: d.scale_channel(p, o, layer="middle", channel=1, factor=1.5),
        "swap-ch": lambda p, o: d.swap_channels(p, o, layer="middle", a=0, b=1),
        "shift-bias": lambda p, o: d.shift_bias(p, o, layer="middle", channel=1),
        # one logit moved: inside 8 fp16 steps, caught at fp16 by the simulated reference's SQNR floor
        "shift-bias-last": lambda p, o: d.shift_bias(p, o, layer="last", channel=1),
    }
    if precision == "int8":
        found["output-scale-x4"] = lambda p, o: d.scale_output(p, o, factor=4.0)
        if kind == "defects_openvino":
            found["coarsen-x16"] = lambda p, o: d.coarsen_scale(p, o, factor=16.0)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", help="comma-separated target:precision (default: every cell installed here)")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--json", type=Path, help="write the rows here too")
    args = parser.parse_args()
    os.environ.setdefault("EDGEX_LOAD_PLUGINS", "openvino")  # the outside target, where installed

    from edgex.core import api

    manager = api.plugin_manager()
    wanted = [tuple(c.split(":")) for c in args.cells.split(",")] if args.cells else list(CELLS)
    rows: list[dict[str, Any]] = []
    print(f"{'target':10} {'precision':12} {'defect':18} {'status':8} {'SQNR dB':>8} {'cost dB':>8}  material")
    with tempfile.TemporaryDirectory(prefix="edgex-planted-") as tmp:
        for target, precision in wanted:
            if target not in manager.targets() or not manager.backend_status(target).available:
                print(f"{target:10} {precision:12} (not installed here: skipped)")
                continue
            cell = Path(tmp) / f"{target}-{precision}"
            report = api.convert(MODEL, [target], out=cell / "honest", precision=precision, samples=args.samples, plugins=manager)
            honest = report.targets[target]
            artifact = cell / "honest" / honest.artifacts[0]
            base = honest.parity.sqnr_db if honest.parity else None
            reference = honest.details.get("int8_reference") or honest.details.get("fp16_reference") or {}
            sim = min((o["sqnr_sim_db"] for o in reference.get("outputs", ()) if o.get("sqnr_sim_db") is not None), default=None)
            rows.append({"target": target, "precision": precision, "defect": "honest", "status": honest.status, "sqnr_db": base,
                         "sqnr_sim_db": sim, "gap_db": (sim - base) if sim is not None and base is not None else None})
            _print(rows[-1])
            for defect, plant in plants(CELLS[(target, precision)], precision, honest).items():
                planted = cell / defect / artifact.name
                planted.parent.mkdir(parents=True)
                try:
                    plant(artifact, planted)
                except ValueError as exc:  # a defect this file cannot hold
                    rows.append({"target": target, "precision": precision, "defect": defect, "status": "n/a", "why": str(exc)})
                    _print(rows[-1])
                    continue
                judged = api.validate(planted, MODEL, target=target, out=cell / defect / "validate", precision=precision, samples=args.samples, plugins=manager).targets[target]
                sqnr = judged.parity.sqnr_db if judged.parity else None
                cost = (base - sqnr) if base is not None and sqnr is not None else None
                rows.append({"target": target, "precision": precision, "defect": defect, "status": judged.status, "sqnr_db": sqnr,
                             "cost_db": cost, "material": cost is None or cost >= MATERIAL_DB})
                _print(rows[-1])
    print()
    total_caught = total = alarms = 0
    for target, precision in wanted:
        mine = [r for r in rows if (r["target"], r["precision"]) == (target, precision)]
        if not mine:
            continue
        material = [r for r in mine if r["defect"] != "honest" and r["status"] != "n/a" and r["material"]]
        caught = sum(r["status"] == "failed" for r in material)
        alarm = sum(r["status"] != "passed" for r in mine if r["defect"] == "honest")
        immaterial = [r["defect"] for r in mine if r["defect"] != "honest" and r["status"] != "n/a" and not r["material"]]
        total_caught, total, alarms = total_caught + caught, total + len(material), alarms + alarm
        print(f"{target}:{precision}: caught {caught}/{len(material)} material, false alarms {alarm}" + (f"; immaterial (not counted): {', '.join(immaterial)}" if immaterial else ""))
    print(f"\nall: caught {total_caught}/{total} material planted defects, false alarms {alarms}")
    gaps = sorted((r["gap_db"], f"{r['target']}:{r['precision']}") for r in rows if r.get("gap_db") is not None)
    if gaps:
        print("honest rows below fp32, simulation minus artifact SQNR (dB): " + ", ".join(f"{name} {gap:+.1f}" for gap, name in gaps))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2, default=str))


def _print(row: dict[str, Any]) -> None:
    sqnr = f"{row['sqnr_db']:8.1f}" if isinstance(row.get("sqnr_db"), float) else f"{'-':>8}"
    cost = f"{row['cost_db']:8.1f}" if isinstance(row.get("cost_db"), float) else f"{'-':>8}"
    if row.get("gap_db") is not None:  # an honest row below fp32: how far under edgex's simulation it lands
        row = {**row, "why": f"simulated {row['sqnr_sim_db']:.1f} dB, gap {row['gap_db']:+.1f} dB"}
    material = "" if row["defect"] == "honest" else ("yes" if row.get("material") else ("n/a" if row["status"] == "n/a" else "no"))
    print(f"{row['target']:10} {row['precision']:12} {row['defect']:18} {row['status']:8} {sqnr} {cost}  {material} {row.get('why', '')[:80]}", flush=True)


if __name__ == "__main__":
    main()
