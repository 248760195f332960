"""What compression buys, measured in one run and printed as ratios (issue 3's figures).

    python benchmarks/compression.py [--json results.json] [--rounds N]

1. ResNet-style net at 64x64 (examples:resnet-small), l1-structured 50%: onnxruntime median
   latency and parameter count of the pruned artifact against the dense one, both converted and
   validated by edgex and timed in this process, interleaved, on one thread.
2. The digits CNN (examples:digits), l1-structured 50% + distillation: test accuracy of the
   converted ONNX artifact against the dense model's (450 held-out labelled samples).
3. The digits CNN, l1-unstructured 50%: each available target's artifact zipped, against the
   dense artifact zipped.

Every number comes from real conversions on the targets' own runtimes; nothing is asserted.
Thresholds are printed beside the figures with whether this run reached them.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

LATENCY_TARGET = 0.45
PARAMS_TARGET = 0.30
ACCURACY_POINTS = 1.0
ZIP_TARGET = 0.65
ZIP_TARGETS = ("onnx", "tflite", "coreml")


def _manager():
    from edgex.core.plugin_manager import PluginManager

    return PluginManager(load_entry_points=False)


def _convert(spec: str, out: Path, target: str = "onnx", compression: Any = None, **kwargs: Any):
    from edgex.core import api

    report = api.convert(spec, [target], out=out, compression=compression, plugins=_manager(), **kwargs)
    row = report.targets[target]
    if row.status != "passed":
        raise SystemExit(f"{spec} -> {target} did not pass parity: {row.status} {row.messages}")
    return report, [out / a for a in row.artifacts]


def _onnx_params(path: Path) -> int:
    import onnx

    return sum(int(np.prod(t.dims)) for t in onnx.load(str(path)).graph.initializer)


def _interleaved_latency(paths: dict[str, Path], shape: tuple[int, ...], rounds: int, per_round: int = 10) -> dict[str, list[float]]:
    """Median-ready run times (ms) of each model, alternating between them so that load on the
    machine affects both alike; one intra-op thread so that the ratio measures work, not threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    sessions = {name: ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]) for name, p in paths.items()}
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    feeds = {name: {s.get_inputs()[0].name: x} for name, s in sessions.items()}
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for name, session in sessions.items():  # warm up
        for _ in range(20):
            session.run(None, feeds[name])
    for _ in range(rounds):
        for name, session in sessions.items():
            for _ in range(per_round):
                start = time.perf_counter()
                session.run(None, feeds[name])
                times[name].append((time.perf_counter() - start) * 1000)
    return times


def resnet_figures(work: Path, rounds: int) -> dict[str, Any]:
    spec = "examples:resnet-small"
    dense_report, dense = _convert(spec, work / "resnet-dense", samples=8)
    pruned_report, pruned = _convert(spec, work / "resnet-pruned", compression={"prune": 0.5, "prune_method": "l1-structured"}, samples=8)
    # the same without rounding channel counts to multiples of 8, to show what the default buys
    unrounded_report, unrounded = _convert(
        spec, work / "resnet-unrounded", compression={"prune": 0.5, "prune_method": "l1-structured", "prune_round_to": 1}, samples=8
    )
    summary = pruned_report.compression
    shape = tuple(dense_report.model["inputs"][0]["shape"])
    times = _interleaved_latency({"dense": dense[0], "pruned": pruned[0], "unrounded": unrounded[0]}, shape, rounds)
    median = {name: statistics.median(t) for name, t in times.items()}
    return {
        "model": spec,
        "input": list(shape),
        "method": "l1-structured 0.5 (defaults: global ranking, channel counts rounded to multiples of 8)",
        "params_dense": summary["before"]["params"],
        "params_pruned": summary["after"]["params"],
        "params_ratio": summary["ratios"]["params"],
        "onnx_params_ratio": round(_onnx_params(pruned[0]) / _onnx_params(dense[0]), 4),
        "macs_ratio": summary["ratios"]["macs"],
        "latency_ms_dense": round(median["dense"], 4),
        "latency_ms_pruned": round(median["pruned"], 4),
        "latency_ratio": round(median["pruned"] / median["dense"], 4),
        "unrounded_params_ratio": unrounded_report.compression["ratios"]["params"],
        "unrounded_latency_ratio": round(median["unrounded"] / median["dense"], 4),
        "latency_runs_each": len(times["dense"]),
        "latency_how": "onnxruntime CPUExecutionProvider, 1 thread, interleaved rounds, median",
        "parity": {"dense": dense_report.targets["onnx"].parity.passed, "pruned": pruned_report.targets["onnx"].parity.passed},
    }


def digits_accuracy_figures(work: Path, seeds: tuple[int, ...]) -> dict[str, Any]:
    dense_report, _ = _convert("examples:digits", work / "digits-dense", samples=8)
    dense = dense_report.targets["onnx"].accuracy["artifact"]
    runs = []
    # no --distill-data: recovery uses the example's shipped data, its 1,347 training images unlabelled
    for data_name, distill_data in (("the example's shipped data: 1,347 unlabelled training images", None),):
        for seed in seeds:
            report, _ = _convert(
                "examples:digits", work / f"digits-s50-{seed}-{len(runs)}", samples=8, seed=seed, distill_data=distill_data,
                compression={"prune": 0.5, "prune_method": "l1-structured", "distill": True},
            )
            accuracy = report.targets["onnx"].accuracy["artifact"]
            runs.append(
                {
                    "distill_data": data_name,
                    "seed": seed,
                    "params_ratio": report.compression["ratios"]["params"],
                    "accuracy_pruned_before_recovery": report.compression["drift"]["before_recovery"]["accuracy"],
                    "accuracy": accuracy,
                    "drop_points": round((dense - accuracy) * 100, 3),
                }
            )
    return {"model": "examples:digits", "test_samples": dense_report.targets["onnx"].accuracy["samples"], "accuracy_dense": dense, "runs": runs,
            "recovery": "distill with its defaults: 20 epochs, Adam lr 1e-3, temperature 1, batch 32"}


def _zipped(path: Path) -> int:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            archive.write(file, file.relative_to(path.parent))
    return len(buffer.getvalue())


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def digits_zip_figures(work: Path) -> dict[str, Any]:
    manager = _manager()
    rows = []
    for target in ZIP_TARGETS:
        if target not in manager.targets():
            rows.append({"target": target, "skipped": "target not installed on this branch"})
            continue
        if not manager.backend_status(target).available:
            rows.append({"target": target, "skipped": "backend unavailable"})
            continue
        # the target's default storage, and its sparse weight storage where it offers one
        # (Core ML's bit mask + nonzero values), applied to the pruned and the dense model alike
        variants = [("default", {})]
        variants += [(f"{o.name}=sparse", {o.name: "sparse"}) for o in manager.resolve_target(target).spec.options if "sparse" in o.choices]
        for storage, options in variants:
            folder = f"{target}-{len(rows)}"
            _, dense = _convert("examples:digits", work / f"zip-dense-{folder}", target=target, samples=8, options=options)
            report, pruned = _convert("examples:digits", work / f"zip-pruned-{folder}", target=target, samples=8, compression={"prune": 0.5}, options=options)
            artifact_dense, artifact_pruned = dense[0], pruned[0]
            rows.append(
                {
                    "target": target,
                    "storage": storage,
                    "precision": report.targets[target].precision,
                    "artifact": artifact_pruned.name,
                    "bytes_dense": _size(artifact_dense),
                    "bytes_pruned": _size(artifact_pruned),
                    "zip_dense": _zipped(artifact_dense),
                    "zip_pruned": _zipped(artifact_pruned),
                    "zip_ratio": round(_zipped(artifact_pruned) / _zipped(artifact_dense), 4),
                }
            )
    return {"model": "examples:digits", "method": "l1-unstructured 0.5 (global)", "targets": rows}


def _mark(ok: bool) -> str:
    return "reached" if ok else "MISSED"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--rounds", type=int, default=30, help="interleaved latency rounds of 10 runs per model (default 30)")
    parser.add_argument("--seeds", type=int, default=3, help="distillation seeds for the digits accuracy (default 3)")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)  # training the small student: one thread is fastest and repeatable
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgex-bench-") as folder:
        work = Path(folder)
        resnet = resnet_figures(work, args.rounds)
        accuracy = digits_accuracy_figures(work, tuple(range(args.seeds)))
        zipped = digits_zip_figures(work)

    print(f"edgex compression figures (torch {torch.__version__}, {time.perf_counter() - started:.0f} s)\n")
    print(f"1. {resnet['model']} {resnet['input']}, {resnet['method']}")
    print(f"   params   {resnet['params_pruned']:,} / {resnet['params_dense']:,} = {resnet['params_ratio']:.3f}x "
          f"(ONNX initializers {resnet['onnx_params_ratio']:.3f}x)   target <= {PARAMS_TARGET}x: {_mark(resnet['params_ratio'] <= PARAMS_TARGET)}")
    print(f"   latency  {resnet['latency_ms_pruned']:.3f} ms / {resnet['latency_ms_dense']:.3f} ms = {resnet['latency_ratio']:.3f}x "
          f"   target <= {LATENCY_TARGET}x: {_mark(resnet['latency_ratio'] <= LATENCY_TARGET)}")
    print(f"            ({resnet['latency_how']}, {resnet['latency_runs_each']} runs each; MACs {resnet['macs_ratio']:.3f}x)")
    print(f"   for comparison, --prune-round-to 1 (odd channel counts): params {resnet['unrounded_params_ratio']:.3f}x, "
          f"latency {resnet['unrounded_latency_ratio']:.3f}x")
    print(f"\n2. {accuracy['model']}, l1-structured 0.5 + distillation ({accuracy['recovery']}), "
          f"ONNX artifact accuracy on {accuracy['test_samples']} test samples; dense {accuracy['accuracy_dense']:.4f}")
    for run in accuracy["runs"]:
        print(f"   seed {run['seed']}, {run['distill_data']:<34} pruned {run['accuracy_pruned_before_recovery']:.4f} -> recovered "
              f"{run['accuracy']:.4f}, drop {run['drop_points']:+.2f} points   target <= {ACCURACY_POINTS}: {_mark(run['drop_points'] <= ACCURACY_POINTS)}")
    print(f"\n3. {zipped['model']}, {zipped['method']}: artifacts zipped (deflate), pruned / dense")
    for row in zipped["targets"]:
        if "skipped" in row:
            print(f"   {row['target']:<7} skipped: {row['skipped']}")
            continue
        print(f"   {row['target']:<7} {row['precision']:<5} {row['storage']:<26} {row['zip_pruned']:,} / {row['zip_dense']:,} bytes = {row['zip_ratio']:.3f}x "
              f"(unzipped {row['bytes_pruned']:,} / {row['bytes_dense']:,})   target <= {ZIP_TARGET}x: {_mark(row['zip_ratio'] <= ZIP_TARGET)}")
    if args.json:
        args.json.write_text(json.dumps({"resnet_structured": resnet, "digits_distillation": accuracy, "digits_unstructured_zip": zipped}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
