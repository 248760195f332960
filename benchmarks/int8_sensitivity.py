"""Which per-layer sensitivity ranking picks the layers worth keeping wider (issue 29, part 1).

For each model: calibrate edgex's simulated int8 reference, rank its layers by ``leave-out``
(the SQNR gained by keeping one layer float, all others int8) and by ``alone`` (the SQNR with
that layer the only one quantized), then keep each ranking's top k layers float together and
measure the SQNR the simulation reaches. The ranking whose top k reach more is the more faithful
guide for a greedy mixed-precision choice. Also prints each measurement's time. Nothing is
asserted.

    PYTHONPATH=... python benchmarks/int8_sensitivity.py [--k 3] [--samples 4]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def _models():
    import models

    from edgex.examples import zoo

    digits = models.digits_vectors()
    wide, _ = models.wide_range_features()
    yield "wide-range features (tests/models.py)", wide, [(digits[i : i + 1],) for i in range(64)], [(digits[600 + i : 601 + i],) for i in range(8)]
    rng = np.random.default_rng(0)
    for name in ("transformer", "dscnn", "mobilenet"):
        module, example = getattr(zoo, name)()
        module.eval()
        shape = tuple(example[0].shape)
        draw = (lambda: (rng.integers(0, 50, shape).astype(np.int64),)) if not example[0].is_floating_point() else (lambda: (rng.standard_normal(shape).astype(np.float32),))
        yield f"zoo {name}", module, [draw() for _ in range(32)], [draw() for _ in range(8)]


def main() -> None:
    from edgex.core.parity import torch_outputs
    from edgex.core.quant_reference import LayerSimulation, calibrate, layer_sensitivity

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--samples", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name, module, calibration, batches in _models():
        batches = batches[: args.samples]
        reference = torch_outputs(module, batches)
        calibrated = calibrate(module, tuple(np.asarray(x) for x in calibration[0]), calibration)
        simulation = LayerSimulation(calibrated, batches, reference)
        rankings = {}
        for method in ("leave-out", "alone"):
            start = time.perf_counter()
            found = layer_sensitivity(calibrated, batches, reference, method=method)
            rankings[method] = ([layer["module"] for layer in found["layers"]], time.perf_counter() - start)
        print(f"{name}: {len(simulation.layers)} layers, full int8 {simulation.sqnr():.1f} dB")
        for method, (order, seconds) in rankings.items():
            reached = ", ".join(f"top {k}: {simulation.sqnr(order[:k]):.1f} dB" for k in range(1, args.k + 1))
            print(f"   {method:9s} ({seconds:.2f} s): {', '.join(order[: args.k])} -> {reached}")


if __name__ == "__main__":
    main()
