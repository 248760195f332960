"""Which int8 defects planted in an artifact file does the parity verdict catch? (issue 15)

    python benchmarks/int8_defects.py [--models digits,resnet_tiny] [--targets tflite,mcu,onnx,coral,coreml]
                                      [--samples 32] [--json results.json]

Each model is converted once per artifact kind (full-int8 .tflite, shared by tflite, coral and mcu,
which all validate that file; ONNX int8 QDQ; Core ML dynamic-int8; MNN full int8), then every defect of
``tests/defects.py`` (``tests/defects_mnn.py`` for .mnn) is planted in a copy and ``edgex.core.api.validate`` judges it against the
torch reference on the target's runtime. Caught = status "failed"; the honest artifact's row must
pass (anything else is a false alarm). Nothing is asserted: the same script measures the
criterion before and after issue 15's fix.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

HERE = Path(__file__).resolve().parent
MODELS = {"digits": "examples:digits", "resnet_tiny": f"{HERE.parent / 'tests' / 'models.py'}:resnet_tiny"}
#: target -> (artifact kind converted for it, precision)
TARGETS = {"tflite": ("tflite", "int8"), "coral": ("tflite", "int8"), "mcu": ("tflite", "int8"),
           "onnx": ("onnx", "int8"), "coreml": ("coreml", "dynamic-int8"), "mnn": ("mnn", "int8")}


def _load_defects(name: str = "defects") -> Any:
    """tests/defects.py (or tests/defects_mnn.py, the .mnn planters, with the same defects),
    loaded by path as the tests do (the tests folder is not a package)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, HERE.parent / "tests" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def defect_kinds(defects: Any, channel: int = 1) -> dict[str, Callable[[Path, Path], Any]]:
    """The issue's defect list: name -> plant(artifact, out)."""

    def combined(path: Path, out: Path) -> Any:
        middle = out.with_name("x4-" + out.name)
        defects.scale_output(path, middle, factor=4.0)
        return defects.scale_channel(middle, out, layer="last", channel=channel, factor=1.5)

    return {
        "scale-last-x1.5": lambda p, o: defects.scale_channel(p, o, layer="last", channel=channel, factor=1.5),
        "scale-middle-x1.5": lambda p, o: defects.scale_channel(p, o, layer="middle", channel=channel, factor=1.5),
        "swap-middle": lambda p, o: defects.swap_channels(p, o, layer="middle", a=0, b=channel),
        "output-scale-x4": lambda p, o: defects.scale_output(p, o, factor=4.0),
        "output-scale-x16": lambda p, o: defects.scale_output(p, o, factor=16.0),
        "x4+scale-last": combined,
        "drop-bias-last": lambda p, o: defects.drop_bias(p, o, layer="last"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="digits,resnet_tiny", help=f"comma-separated, of {sorted(MODELS)}")
    parser.add_argument("--targets", default="tflite,mcu,onnx,mnn", help=f"comma-separated, of {sorted(TARGETS)}")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--json", type=Path, help="write the rows here too")
    args = parser.parse_args()

    from edgex.core import api

    defects = _load_defects()
    manager = api.plugin_manager()
    rows: list[dict[str, Any]] = []
    header = f"{'model':12} {'target':7} {'defect':18} {'status':8} {'SQNR dB':>8} {'max_abs':>9} {'tolerance':>9} {'ratio':>7}"
    print(header)
    print("-" * len(header), flush=True)
    with tempfile.TemporaryDirectory(prefix="edgex-int8-defects-") as tmp:
        for model_name in args.models.split(","):
            reference = api.load_model(MODELS[model_name])
            # the data the artifacts are quantized with, and validate calibrates edgex's reference on
            calibration = None
            if reference.calibration is None:
                calibration = np.random.default_rng(1).standard_normal((256, *reference.inputs[0].shape[1:])).astype(np.float32)
            converted: dict[str, Path] = {}
            for target in args.targets.split(","):
                kind, precision = TARGETS[target]
                if kind not in converted:
                    out = Path(tmp) / model_name / kind
                    report = api.convert(reference, [kind], out=out, precision=precision, samples=args.samples, calibration=calibration, plugins=manager)
                    converted[kind] = out / report.targets[kind].artifacts[0]
                artifact = converted[kind]
                planters = _load_defects("defects_mnn") if kind == "mnn" else defects
                plants: dict[str, Callable[[Path, Path], Any] | None] = {"honest": None, **defect_kinds(planters)}
                for defect, plant in plants.items():
                    planted = artifact
                    if plant is not None:
                        planted = Path(tmp) / model_name / f"{target}-{defect}" / artifact.name
                        planted.parent.mkdir(parents=True, exist_ok=True)
                        try:
                            plant(artifact, planted)
                        except ValueError as exc:  # a defect the format cannot hold (Core ML's float outputs)
                            rows.append({"model": model_name, "target": target, "defect": defect, "status": "n/a", "why": str(exc)})
                            print(f"{model_name:12} {target:7} {defect:18} {'n/a':8}  {exc}", flush=True)
                            continue
                    report = api.validate(planted, reference, target=target, out=planted.parent / "validate", precision=precision,
                                          samples=args.samples, calibration=calibration, plugins=manager)
                    rows.append(_row(model_name, target, defect, report.targets[target]))
                    _print(rows[-1])
    honest = [r for r in rows if r["defect"] == "honest"]
    planted_rows = [r for r in rows if r["defect"] != "honest" and r["status"] != "n/a"]
    caught = sum(r["status"] == "failed" for r in planted_rows)
    alarms = sum(r["status"] != "passed" for r in honest)
    print(f"\ncaught {caught}/{len(planted_rows)}, false alarms {alarms}/{len(honest)}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


def _row(model: str, target: str, defect: str, row: Any) -> dict[str, Any]:
    data = {"model": model, "target": target, "defect": defect, "status": row.status, "messages": list(row.messages)}
    if row.parity is not None:
        p = row.parity
        data.update(sqnr_db=p.sqnr_db, max_abs=p.max_abs, atol=p.tolerance.atol, top1=p.top1_agreement)
    return data


def _print(row: dict[str, Any]) -> None:
    if "max_abs" not in row:
        print(f"{row['model']:12} {row['target']:7} {row['defect']:18} {row['status']:8}  {'; '.join(row['messages'])[:100]}", flush=True)
        return
    ratio = row["max_abs"] / max(row["atol"], 1e-30)
    print(f"{row['model']:12} {row['target']:7} {row['defect']:18} {row['status']:8} {row['sqnr_db']:8.1f} {row['max_abs']:9.3g} "
          f"{row['atol']:9.3g} {ratio:7.2f}", flush=True)


if __name__ == "__main__":
    main()
