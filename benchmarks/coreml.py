"""Figures of the coreml target, measured in one run and printed (nothing here is asserted).

1. Parity of every model family the tests convert, fp32 and fp16, against core's tolerances
   (fp32: the float noise floor; fp16: core's fp16 rule), with the headroom left.
2. The MIL reference interpreter on ResNet-18 (``examples:resnet18``, 224x224): seconds per
   sample, as the pipeline runs it (a forked child, torch single-threaded).
3. Conversion plus validation of ResNet-18 through ``edgex convert`` against the bare
   conversion a user's script does (trace, ``ct.convert``, save), timed alternately in this
   process, the best of ``--repeats`` runs of each kept (the machine is shared and noisy).

    .venv/bin/python benchmarks/coreml.py [--samples 32] [--skip-families]

coremltools is imported before anything is timed (its import pulls TensorFlow and torchao in
when they are installed, ~10 s here); forked target runs inherit it. That import is printed
separately: every way of converting pays it once per process.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import tempfile
import time
from pathlib import Path

from edgex.plugins import hookimpl

ROOT = Path(__file__).resolve().parents[1]


class StageClock:
    """An observer plugin: seconds per pipeline stage."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @hookimpl
    def edgex_stage_finished(self, event) -> None:
        self.seconds[event.stage] = self.seconds.get(event.stage, 0.0) + (event.seconds or 0.0)


def _import_coremltools() -> float:
    start = time.perf_counter()
    import coremltools  # noqa: F401

    return time.perf_counter() - start


def _families() -> dict:
    """The families ``tests/test_target_coreml.py`` converts, from that file (one definition)."""
    spec = importlib.util.spec_from_file_location("coreml_test_models", ROOT / "tests" / "test_target_coreml.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.families()


def family_parity(samples: int, out: Path) -> None:
    from edgex.core import api

    print(f"\n## 1. parity per model family ({samples} seeded samples each; headroom = tolerance / max |error|)")
    print(f"{'family':12s} {'precision':9s} {'status':7s} {'path':15s} {'max_abs':>10s} {'tolerance':>10s} {'headroom':>9s} {'sqnr_db':>8s}  tolerance source")
    for name, (model, example) in _families().items():
        for precision in ("fp32", "fp16"):
            report = api.convert(model, ["coreml"], out=out / f"{name}-{precision}", example_inputs=example, precision=precision, samples=samples)
            row = report.targets["coreml"]
            parity = row.parity
            if parity is None:
                print(f"{name:12s} {precision:9s} {row.status:7s} {row.messages}")
                continue
            headroom = parity.tolerance.atol / parity.max_abs if parity.max_abs else float("inf")
            path = row.details.get("coreml", {}).get("conversion_path", "?")
            print(
                f"{name:12s} {precision:9s} {row.status:7s} {path:15s} {parity.max_abs:10.3g} {parity.tolerance.atol:10.3g} "
                f"{headroom:8.1f}x {parity.sqnr_db:8.1f}  {parity.tolerance.source}"
            )


def _bare_conversion(model, example, out: Path) -> dict[str, float]:
    """The conversion a user's own script does, with the options edgex passes: trace, convert, save."""
    import numpy as np
    import torch

    import coremltools as ct

    seconds = {}
    start = time.perf_counter()
    with torch.no_grad():
        traced = torch.jit.trace(model, example)
    seconds["trace"] = time.perf_counter() - start
    start = time.perf_counter()
    mlmodel = ct.convert(
        traced, inputs=[ct.TensorType(name="x", shape=tuple(example[0].shape), dtype=np.float32)],
        outputs=[ct.TensorType(name="output", dtype=np.float32)], convert_to="mlprogram",
        compute_precision=ct.precision.FLOAT16, minimum_deployment_target=ct.target.iOS15, skip_model_load=True,
    )
    seconds["ct.convert"] = time.perf_counter() - start
    start = time.perf_counter()
    mlmodel.save(str(out / "bare.mlpackage"))
    seconds["save"] = time.perf_counter() - start
    return seconds


def resnet18(samples: int, out: Path, repeats: int) -> None:
    from edgex.core import api
    from edgex.examples import zoo
    from edgex.targets.coreml.interpreter import MILInterpreter, load_package

    print(f"\n## 2-3. ResNet-18 (examples:resnet18, 1x3x224x224), fp16 (the target's default), {samples} parity samples, best of {repeats} runs each")
    model, example = zoo.resnet18()
    bare_runs, edgex_runs = [], []
    for index in range(repeats):  # alternated, so that both see the same machine load
        bare_runs.append(_bare_conversion(model, example, out))
        stages = StageClock()
        start = time.perf_counter()
        report = api.convert("examples:resnet18", ["coreml"], out=out / f"resnet18-{index}", samples=samples, plugins=api.plugin_manager([stages]))
        edgex_runs.append((time.perf_counter() - start, stages.seconds, report.targets["coreml"]))
    bare = min(bare_runs, key=lambda s: sum(s.values()))
    bare_total = sum(bare.values())
    total_s, stage_seconds, row = min(edgex_runs, key=lambda r: r[0])
    parity = row.parity
    print("bare conversion: " + " + ".join(f"{k} {v:.2f} s" for k, v in bare.items()) + f" = {bare_total:.2f} s")
    print(
        f"edgex convert --target coreml: {row.status}, {total_s:.2f} s in all; stages: "
        + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in stage_seconds.items())
        + " (the rest: loading the MODEL spec)"
    )
    print(f"parity: max_abs {parity.max_abs:.3g} vs tolerance {parity.tolerance.atol:.3g} ({parity.tolerance.source}), top-1 agreement {parity.top1_agreement}")
    per_sample = row.latency_ms["median"] / 1000
    print(
        f"interpreter, as the pipeline runs it (forked child, torch 1 thread): median {per_sample:.3f} s per sample, "
        f"p90 {row.latency_ms['p90'] / 1000:.3f} s -> {'meets' if per_sample < 2.0 else 'MISSES'} the < 2 s goal"
    )
    target_s = stage_seconds.get("convert", 0.0) + stage_seconds.get("validate", 0.0)
    for what, reference in (("trace + ct.convert + save", bare_total), ("ct.convert alone", bare["ct.convert"])):
        print(
            f"vs bare {what} ({reference:.2f} s): coreml convert + validate stages {target_s / reference:.2f}x (adds {target_s / reference - 1:.2f}x); "
            f"whole edgex convert incl. core's reference stage {total_s / reference:.2f}x (adds {total_s / reference - 1:.2f}x)"
        )
    package = load_package(out / "resnet18-0" / "coreml" / "model.mlpackage")
    interpreter = MILInterpreter(package.program, package.function)
    x = example[0].numpy()
    interpreter.run({"x": x})
    runs = []
    for _ in range(3):
        start = time.perf_counter()
        interpreter.run({"x": x})
        runs.append(time.perf_counter() - start)
    print(f"interpreter in this process: best {min(runs):.3f} s per sample")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=32, help="parity samples per conversion (edgex's default: 32)")
    parser.add_argument("--repeats", type=int, default=2, help="ResNet-18 conversions of each kind; the best is kept (default 2)")
    parser.add_argument("--skip-families", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("EDGEX_DISABLE_PLUGIN_AUTOLOAD", "1")
    print(f"# coreml target figures ({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {platform.system()})")
    print(f"import coremltools: {_import_coremltools():.2f} s (paid once per process; not in the timings below)")
    import torch

    # the forked target runs are single-threaded (edgex.core.isolation); so is everything timed
    # here, so that the bare conversion and edgex's own stages compare like with like
    torch.set_num_threads(1)
    print("torch threads: 1 in this process and in the forked target runs")
    with tempfile.TemporaryDirectory(prefix="edgex-bench-coreml-") as folder:
        out = Path(folder)
        if not args.skip_families:
            family_parity(args.samples, out)
        resnet18(args.samples, out, args.repeats)


if __name__ == "__main__":
    main()
