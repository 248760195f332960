"""Figures of the executorch target, measured in one run and printed (nothing here is asserted).

1. ResNet-18 (``edgex.examples.zoo:resnet18``, 224x224) at fp32: ``edgex convert`` (export,
   XNNPACK lowering, the ExecuTorch runtime on the parity samples, the torch reference and its
   noise floor, parity, report) against the raw steps it wraps, as a user's script does them
   (torch.export, to_edge_transform_and_lower with XnnpackPartitioner, to_executorch, write the
   .pte, load it on the runtime and run the same samples). Alternating, best of ``--repeats``
   each (the machine is shared and noisy). Goal: at most 1.2x.
2. int8 on the CNN test models (digits, tests/models.py resnet_tiny and mobilenet_tiny): SQNR
   of the .pte against the float model (goal >= 35 dB), with edgex's simulated int8 reference
   beside it; the .pte size int8/fp32 (goal <= 0.30, ResNet-18 included, where the weights
   dominate the file); the digits accuracy drop at int8 (goal <= 0.5 points).

    .venv/bin/python benchmarks/executorch_target.py [--samples 8] [--repeats 2] [--skip-resnet18-int8]

ExecuTorch and torchao are imported before anything is timed; the forked target runs inherit
them, as the raw script has them.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgex.core import api
from edgex.core.plugin_manager import PluginManager
from edgex.plugins import hookimpl

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "tests" / "models.py"


class StageClock:
    """An observer plugin: seconds per pipeline stage (the parent's reference overlaps the child's convert)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @hookimpl
    def edgex_stage_finished(self, event) -> None:
        self.seconds[event.stage] = self.seconds.get(event.stage, 0.0) + (event.seconds or 0.0)


def _manager(*observers) -> PluginManager:
    manager = PluginManager(load_entry_points=False)
    for observer in observers:
        manager.register_observer(observer, f"clock-{id(observer)}")
    return manager


def edgex_fp32(model, samples: int) -> tuple[float, dict[str, float]]:
    clock = StageClock()
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        report = api.convert(model, ["executorch"], out=out, samples=samples, plugins=_manager(clock))
        seconds = time.perf_counter() - start
    row = report.targets["executorch"]
    assert row.status == "passed", row.messages
    return seconds, clock.seconds


def raw_fp32(model, samples: int) -> float:
    """What a user's own script does: export, lower, serialize, load, run the samples."""
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from executorch.runtime import Runtime

    rng = np.random.default_rng(0)
    inputs = [torch.from_numpy(rng.standard_normal(model.inputs[0].shape).astype(np.float32)) for _ in range(samples)]
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        example = tuple(torch.from_numpy(np.array(a, copy=True)) for a in model.example_inputs)
        program = to_edge_transform_and_lower(torch.export.export(model.module, example), partitioner=[XnnpackPartitioner()]).to_executorch()
        path = Path(out) / "model.pte"
        path.write_bytes(program.buffer)
        method = Runtime.get().load_program(str(path)).load_method("forward")
        for x in inputs:
            method.execute([x])
        return time.perf_counter() - start


def convert_row(model, precision: str, out: Path, samples: int, **kwargs):
    report = api.convert(model, ["executorch"], out=out, precision=precision, samples=samples, plugins=_manager(), **kwargs)
    row = report.targets["executorch"]
    size = (out / row.artifacts[0]).stat().st_size if row.artifacts else None
    return row, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip-resnet18-int8", action="store_true")
    parser.add_argument("--fp32-only", action="store_true", help="only the ResNet-18 fp32 timing (1)")
    args = parser.parse_args()

    start = time.perf_counter()
    import executorch.exir  # noqa: F401
    import torchao.quantization.pt2e  # noqa: F401
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner  # noqa: F401
    from executorch.runtime import Runtime

    Runtime.get()
    print(f"importing executorch + torchao: {time.perf_counter() - start:.1f} s (paid once per process by either way)")

    resnet18 = api.load_model("edgex.examples.zoo:resnet18")
    raw_fp32(resnet18, 1)  # warm-up: the first torch.export in a process
    times: dict[str, list[float]] = {"edgex": [], "raw": []}
    for _ in range(args.repeats):
        times["raw"].append(raw_fp32(resnet18, args.samples))
        seconds, stages = edgex_fp32(resnet18, args.samples)
        times["edgex"].append(seconds)
        print(f"  raw {times['raw'][-1]:.1f} s, edgex {seconds:.1f} s (stages: " + ", ".join(f"{k} {v:.1f} s" for k, v in stages.items()) + ")")
    best_edgex, best_raw = min(times["edgex"]), min(times["raw"])
    print(f"\n1. ResNet-18 fp32, {args.samples} samples, best of {args.repeats}: edgex convert+validate {best_edgex:.1f} s / "
          f"raw export+lower+runtime {best_raw:.1f} s = {best_edgex / best_raw:.2f}x (goal <= 1.2x)")

    if args.fp32_only:
        return
    print("\n2. int8 (XNNPACK quantizer, min/max calibration) against fp32:")
    sizes: dict[str, dict[str, int | None]] = {}
    models = {"digits": ("examples:digits", {}), "resnet_tiny": (f"{MODELS}:resnet_tiny", None), "mobilenet_tiny": (f"{MODELS}:mobilenet_tiny", None)}
    with tempfile.TemporaryDirectory() as scratch:
        for name, (spec, kwargs) in models.items():
            model = api.load_model(spec)
            if kwargs is None:  # no shipped data: 256 seeded samples, as the tests calibrate
                data = np.random.default_rng(0).standard_normal((256, *model.inputs[0].shape[1:])).astype(np.float32)
                kwargs = {"calibration": (data,)}
            sizes[name] = {}
            for precision in ("fp32", "int8"):
                row, size = convert_row(model, precision, Path(scratch) / name / precision, 32, **kwargs)
                sizes[name][precision] = size
                if precision == "int8":
                    sim = row.details.get("int8_reference", {}).get("outputs", [{}])[0]
                    accuracy = f", accuracy {row.accuracy['reference']:.4f} -> {row.accuracy['artifact']:.4f} (drop {row.accuracy['drop_points']:.2f} points)" if row.accuracy else ""
                    print(f"  {name}: {row.status}, SQNR {row.parity.sqnr_db:.1f} dB (edgex's simulated int8: {sim.get('sqnr_sim_db', float('nan')):.1f} dB){accuracy}")
        if not args.skip_resnet18_int8:
            data = np.random.default_rng(0).standard_normal((16, 3, 224, 224)).astype(np.float32)
            sizes["resnet18"] = {}
            for precision in ("fp32", "int8"):
                _, sizes["resnet18"][precision] = convert_row(resnet18, precision, Path(scratch) / "resnet18" / precision, 4, calibration=(data,))
    print("\n   .pte size int8 / fp32 (goal <= 0.30):")
    for name, pair in sizes.items():
        if pair.get("fp32") and pair.get("int8"):
            print(f"  {name}: {pair['int8']} / {pair['fp32']} bytes = {pair['int8'] / pair['fp32']:.3f}")


if __name__ == "__main__":
    main()
