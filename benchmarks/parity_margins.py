"""How close honest conversions come to their parity tolerance, per target, precision and model.

The tolerances (core/parity.py) must pass every honest artifact and fail planted defects. This
prints, for each cell, max |error| / tolerance (the 'margin': below 1 passes; an honest fp32
conversion should sit far below 1) and the same ratio for a planted defect (the first layer's
first filter negated, validated against the honest artifact: must sit far above 1).

Run: .venv/bin/python benchmarks/parity_margins.py [--targets onnx,jetson] [--models digits,resnet-small,...]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from edgex.core import api
from edgex.core.loading import load_model
from edgex.plugins.testing import perturbed

MODELS = ("digits", "resnet-small", "mobilenet", "transformer", "lstm", "dscnn")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", default="all")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--samples", type=int, default=16)
    args = parser.parse_args()
    manager = api.plugin_manager()
    names = [t for t in manager.targets() if manager.backend_status(t).available] if args.targets == "all" else args.targets.split(",")
    print(f"{'model':14} {'target':8} {'precision':13} {'status':8} {'max_abs':>10} {'tolerance':>10} {'margin':>8} {'defect margin':>14}")
    with tempfile.TemporaryDirectory() as tmp:
        for model_name in args.models.split(","):
            model = load_model(f"examples:{model_name}")
            for target in names:
                spec = manager.resolve_target(target).spec
                for precision in spec.precisions:
                    out = Path(tmp) / f"{model_name}-{target}-{precision}"
                    report = api.convert(model, [target], out=out, precision=precision, samples=args.samples, plugins=manager)
                    row = report.targets[spec.name]
                    if row.parity is None:
                        print(f"{model_name:14} {target:8} {precision:13} {row.status:8} {'':>10} {'':>10} {'':>8} {'':>14}  {'; '.join(row.messages)[:100]}")
                        continue
                    margin = row.parity.max_abs / max(row.parity.tolerance.atol, 1e-30)
                    bad = api.validate(out / row.artifacts[0], perturbed(model.module), target=spec.name, example_inputs=tuple(model.example_inputs), out=out / "defect", precision=precision, samples=args.samples, plugins=manager)
                    bad_row = bad.targets[spec.name]
                    defect = bad_row.parity.max_abs / max(bad_row.parity.tolerance.atol, 1e-30) if bad_row.parity else float("nan")
                    print(f"{model_name:14} {target:8} {precision:13} {row.status:8} {row.parity.max_abs:10.3g} {row.parity.tolerance.atol:10.3g} {margin:8.3f} {defect:14.1f}", flush=True)


if __name__ == "__main__":
    main()
