"""The figure of issue 13 item 3 (`edgex check`), measured in one run and printed.

    python benchmarks/check.py [--models a,b,...] [--json]

For every test model (tests/models.py) and every built-in target: what `edgex check` predicts,
what `edgex convert` then reports, whether they agree (a prediction "converts" agrees with a row
that wrote an artifact -- passed, failed or inconclusive: parity is convert's to judge, and the
verdict is printed beside it -- and "error" with an error row), and the time check took as a share of the
time the conversions took (each model's check of all targets, then its conversion for all
targets, in this one process, one after the other). Nothing is asserted; every number comes
from edgex's own runs here.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ("onnx", "jetson", "tflite", "coral", "mcu", "coreml", "executorch")
MODELS = ("resnet_tiny", "mobilenet_tiny", "transformer_tiny", "vit_tiny", "token_classifier", "lstm_tiny", "lstm_long", "magnitude")


def _test_models():
    spec = importlib.util.spec_from_file_location("edgex_test_models", ROOT / "tests" / "models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def measure(names: list[str], out: Path) -> dict[str, object]:
    from edgex.core import api

    models = _test_models()
    rows, check_s, convert_s = [], 0.0, 0.0
    for name in names:
        module, example = getattr(models, name)()
        started = time.perf_counter()
        predicted = api.check(module, TARGETS, example_inputs=example)
        checked = time.perf_counter() - started
        module, example = getattr(models, name)()
        started = time.perf_counter()
        report = api.convert(module, TARGETS, out=out / name, example_inputs=example, samples=8)
        converted = time.perf_counter() - started
        check_s, convert_s = check_s + checked, convert_s + converted
        for p in predicted.targets:
            real = report.targets[p.target]
            outcome = "error" if real.status in ("error", "skipped") else "converts"
            rows.append({
                "model": name, "target": p.target, "predicted": p.outcome, "real": real.status,
                "agree": p.outcome == outcome, "reason": p.reason, "real_message": "; ".join(real.messages)[-200:] if p.outcome != real.status else "",
            })
        print(f"  {name}: check {checked:.1f} s, convert {converted:.1f} s", file=sys.stderr, flush=True)
    return {"rows": rows, "check_s": round(check_s, 1), "convert_s": round(convert_s, 1), "share": round(check_s / convert_s, 4) if convert_s else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated test model factories (default: all)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        figure = {"machine": platform.platform(), **measure(args.models.split(","), Path(scratch))}
    if args.json:
        print(json.dumps(figure, indent=2))
        return 0
    rows = figure["rows"]
    agree = sum(r["agree"] for r in rows)
    print(f"edgex check vs edgex convert, {len(rows)} cells ({figure['machine']}):")
    for r in rows:
        mark = "agree" if r["agree"] else "DISAGREE"
        print(f"  {r['model']:<17} {r['target']:<11} predicted {r['predicted']:<8} real {r['real']:<8} {mark}" + (f"  ({r['real_message']})" if not r["agree"] else ""))
    print(f"agreement: {agree}/{len(rows)} cells")
    print(f"time: check {figure['check_s']} s, convert {figure['convert_s']} s: check takes {100 * figure['share']:.1f}% of the conversions' time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
