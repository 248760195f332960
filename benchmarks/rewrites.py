"""The figure of issue 13 item 1 (target-aware rewrites), measured in one run and printed.

    python benchmarks/rewrites.py [--out DIR] [--json]

- a ViT-style model (examples/zoo.py VisionTransformer: patch conv, nn.TransformerEncoder with
  GELU) converted for mcu and coral with ``--rewrite auto``: status, parity and the rewrites
  each target's report lists (without them mcu errors: TFLM has no GELU kernel);
- the zoo's LSTM (examples/zoo.py lstm: nn.LSTM 16 -> 32 over 20 steps, linear head) the same way
  (without the rewrite mcu errors: the unrolled LSTM's CONCATENATION joins 20 > 10 tensors, and
  coral maps 0% of its ops: FULLY_CONNECTED over the whole sequence), with the Edge TPU mapping;
- every built-in rewrite's fp32 drift against the un-rewritten model on 32 seeded parity
  samples (relative to the outputs' peak), on a small model that has what it rewrites.

Every number comes from edgex's own code and reports of conversions made here; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _models() -> dict[str, tuple[object, tuple[np.ndarray, ...], tuple[str, ...]]]:
    """Small models with something each rewrite replaces: (module, one example, the gaps to fill)."""
    import torch
    from torch import nn

    from edgex.examples import zoo
    from edgex.examples.zoo import VisionTransformer

    lstm, (sequence,) = zoo.lstm()
    torch.manual_seed(0)
    vit = VisionTransformer().eval()
    hard = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Hardswish(), nn.Conv2d(8, 8, 3), nn.Hardsigmoid(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    tokens = nn.Sequential(nn.EmbeddingBag(50, 16, mode="mean"), nn.Linear(16, 3)).eval()
    return {
        "vit": (vit, (np.zeros((1, 3, 16, 16), np.float32),), ("fused-transformer", "gelu")),
        "hard-activations": (hard, (np.zeros((1, 3, 12, 12), np.float32),), ("hardswish",)),
        "token-ids": (tokens, (np.zeros((1, 8), np.int64),), ("int64-inputs",)),
        "lstm-20-steps": (lstm, (np.zeros(tuple(sequence.shape), np.float32),), ("lstm",)),
    }


def _parity_inputs(example: tuple[np.ndarray, ...], samples: int = 32, seed: int = 0) -> list[tuple[np.ndarray, ...]]:
    rng = np.random.default_rng(seed)
    def one(x: np.ndarray) -> np.ndarray:
        if np.issubdtype(x.dtype, np.integer):
            return rng.integers(0, 50, x.shape).astype(x.dtype)
        return rng.standard_normal(x.shape).astype(x.dtype)
    return [tuple(one(x) for x in example) for _ in range(samples)]


def drifts() -> list[dict[str, object]]:
    """Each rewrite's proof, as the pipeline runs it, on the model that has what it rewrites."""
    from edgex.core.api import load_model
    from edgex.core.rewrites import Rewriter

    rows = []
    for name, (module, example, gaps) in _models().items():
        model = load_model(module, example_inputs=list(example))
        for entry in Rewriter(model, _parity_inputs(example)).for_target(gaps).entries:
            rows.append({"model": name, **{k: entry[k] for k in ("name", "count", "drift", "bound", "status")}})
    return rows


def on_targets(module: object, example: tuple[object, ...], out: Path) -> dict[str, object]:
    """``module`` converted for mcu and coral with ``--rewrite auto``: each row's status, parity,
    rewrites and (coral) the Edge TPU mapping."""
    from edgex.core import api

    started = time.perf_counter()
    report = api.convert(module, ["mcu", "coral"], out=out, example_inputs=example, samples=32, overwrite=True)
    result = {"seconds": round(time.perf_counter() - started, 1), "targets": {}}
    for target, row in report.targets.items():
        edgetpu = row.details.get("edgetpu") or {}
        result["targets"][target] = {
            "status": row.status,
            "sqnr_db": row.parity.sqnr_db if row.parity else None,
            "max_abs": row.parity.max_abs if row.parity else None,
            "rewrites": [{k: e[k] for k in ("name", "count", "drift", "status")} for e in row.details.get("rewrites", [])],
            "edgetpu": {k: edgetpu.get(k) for k in ("ops_mapped", "ops_total", "op_fraction", "mac_fraction", "first_unmapped")} if edgetpu else None,
            "messages": row.messages if row.status != "passed" else [],
        }
    return result


def vit_on_targets(out: Path) -> dict[str, object]:
    import torch

    from edgex.examples.zoo import VisionTransformer

    torch.manual_seed(0)
    return on_targets(VisionTransformer().eval(), (torch.randn(1, 3, 16, 16),), out)


def lstm_on_targets(out: Path) -> dict[str, object]:
    from edgex.examples import zoo

    module, example = zoo.lstm()
    return on_targets(module, example, out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="keep the conversions here (default: a temporary folder)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        out = args.out or Path(scratch)
        figure = {"machine": platform.platform(), "drift": drifts(), "vit": vit_on_targets(out / "vit"), "lstm": lstm_on_targets(out / "lstm")}
    if args.json:
        print(json.dumps(figure, indent=2))
        return 0
    print(f"rewrite drift, fp32, 32 seeded samples, relative to the outputs' peak ({figure['machine']}):")
    for row in figure["drift"]:
        print(f"  {row['name']:<24} {row['model']:<17} x{row['count']:<3} drift {row['drift']:.3g} (bound {row['bound']:g}) {row['status']}")
    for key, title in (("vit", "ViT-style (patch conv, TransformerEncoder with GELU)"), ("lstm", "LSTM (zoo.lstm: nn.LSTM 16 -> 32, 20 steps)")):
        part = figure[key]
        print(f"{title}, --rewrite auto, {part['seconds']} s:")
        for target, row in part["targets"].items():
            applied = ", ".join(f"{e['name']} x{e['count']} ({e['drift']:.3g})" for e in row["rewrites"] if e["status"] == "applied")
            sqnr = f"{row['sqnr_db']:.1f} dB" if row["sqnr_db"] is not None else "-"
            line = f"  {target:<6} {row['status']:<8} SQNR {sqnr}  rewrites: {applied or 'none'}"
            if row["edgetpu"]:
                tpu = row["edgetpu"]
                line += f"  Edge TPU: {tpu['ops_mapped']}/{tpu['ops_total']} ops ({tpu['op_fraction']:.0%}), {tpu['mac_fraction']:.0%} of MACs"
            print(line)
            for message in row["messages"][-1:]:
                print(f"         {message}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
