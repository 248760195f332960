"""Target mnn: (a) every shipped model at every precision on MNN, (b) edgex against the raw tool.

    python benchmarks/mnn_target.py [--models digits,resnet18,...] [--precisions fp32,...] [--samples 8] [--rounds 3] [--timing-model resnet-small]

(a) For each shipped model (examples:digits and the zoo) and each precision, one ``edgex
convert --target mnn`` run: its status, SQNR against torch, the simulated reference's SQNR below
fp32 (int8 and dynamic-int8), and for anything but a pass the row's first message (the reason).
Calibration: the model's own data where it ships some (digits), else 64 seeded standard-normal
samples shaped like its example input.

(b) Wall time of ``edgex convert --target mnn --samples N`` (export, convert, validate: the
reference run, parity, report) against the raw tool doing the same work by hand in one Python
process (torch.onnx.export at opset 17, ``_tools.mnnconvert``, an MNN module run on the same N
inputs, compared with torch), both as fresh processes, alternating, ``--rounds`` each; the
ratio of the medians (target <= 1.2x) is printed.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

MODELS = ("digits", "resnet18", "resnet-small", "mobilenet", "transformer", "lstm", "dscnn")
PRECISIONS = ("fp32", "fp16", "dynamic-int8", "int8")

RAW = textwrap.dedent('''
    import sys, numpy as np, torch
    from edgex.core import api
    import _tools, MNN
    spec, work, samples = sys.argv[1], sys.argv[2], int(sys.argv[3])
    model = api.load_model(spec)
    example = tuple(torch.from_numpy(a) for a in model.example_inputs)
    torch.onnx.export(model.module, example, work + "/m.onnx", opset_version=17, input_names=[s.name for s in model.inputs])
    _tools.mnnconvert(["mnnconvert", "-f", "ONNX", "--modelFile", work + "/m.onnx", "--MNNModel", work + "/m.mnn", "--bizCode", "raw"])
    F = MNN.expr
    rt = MNN.nn.create_runtime_manager(({"backend": "CPU", "precision": 1, "numThread": 1},))
    module = MNN.nn.load_module_from_file(work + "/m.mnn", [s.name for s in model.inputs], [], runtime_manager=rt)
    rng = np.random.default_rng(0)
    worst = 0.0
    for _ in range(samples):
        xs = [rng.standard_normal(a.shape).astype(np.float32) for a in model.example_inputs]
        with torch.no_grad():
            want = model.module(*[torch.from_numpy(x) for x in xs])
        out = module.forward([F.const(x, list(x.shape), F.NCHW) for x in xs])
        got = F.convert(out[0] if isinstance(out, list) else out, F.NCHW).read()
        worst = max(worst, float(np.abs(got - want.numpy()).max()))
    print("max |error|", worst)
''')


def table(models: list[str], precisions: list[str], samples: int, tmp: Path) -> None:
    from edgex.core import api

    print(f"{'model':13} {'precision':13} {'status':8} {'sqnr_db':>8} {'sim_db':>8}  reason / backend")
    for name in models:
        spec = f"examples:{name}"
        model = api.load_model(spec)
        calibration = tmp / f"{name}.npy"
        data = model.calibration[0][:64] if model.calibration is not None else np.random.default_rng(0).standard_normal((64, *model.example_inputs[0].shape[1:])).astype(np.float32)
        np.save(calibration, data)
        for precision in precisions:
            started = time.perf_counter()
            report = api.convert(spec, ["mnn"], out=tmp / name / precision, precision=precision, samples=samples, calibration=str(calibration) if precision == "int8" else None)
            row = report.targets["mnn"]
            sqnr = row.parity.sqnr_db if row.parity else None
            sims = [o["sqnr_sim_db"] for o in (row.details.get("int8_reference") or {}).get("outputs", ()) if o.get("sqnr_sim_db") is not None]
            reason = row.messages[0] if row.status != "passed" and row.messages else f"({time.perf_counter() - started:.1f} s)"
            print(f"{name:13} {precision:13} {row.status:8} {sqnr if sqnr is not None else float('nan'):8.1f} {min(sims) if sims else float('nan'):8.1f}  {reason[:160]}", flush=True)


def timing(model: str, samples: int, rounds: int, tmp: Path) -> None:
    raw_script = tmp / "raw.py"
    raw_script.write_text(RAW)
    edgex_times, raw_times = [], []
    for i in range(rounds):
        order = ("edgex", "raw") if i % 2 == 0 else ("raw", "edgex")
        for which in order:
            work = tmp / f"timing-{which}-{i}"
            work.mkdir()
            if which == "edgex":
                command = [sys.executable, "-m", "edgex.core.cli", "convert", f"examples:{model}", "--target", "mnn", "--samples", str(samples), "--out", str(work / "out")]
            else:
                command = [sys.executable, str(raw_script), f"examples:{model}", str(work), str(samples)]
            started = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True)
            took = time.perf_counter() - started
            if done.returncode != 0:
                raise SystemExit(f"{which} failed ({done.returncode}): {done.stdout[-500:]} {done.stderr[-1500:]}")
            (edgex_times if which == "edgex" else raw_times).append(took)
            print(f"round {i + 1} {which:5}: {took:6.2f} s", flush=True)
    e, r = statistics.median(edgex_times), statistics.median(raw_times)
    print(f"\nexamples:{model}, {samples} samples: edgex convert+validate {e:.2f} s, raw tool {r:.2f} s (medians of {rounds}): ratio {e / r:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--precisions", default=",".join(PRECISIONS))
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timing-model", default="resnet-small")
    parser.add_argument("--skip-table", action="store_true")
    parser.add_argument("--skip-timing", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgex-mnn-") as tmp:
        if not args.skip_table:
            table(args.models.split(","), args.precisions.split(","), args.samples, Path(tmp))
        if not args.skip_timing:
            timing(args.timing_model, args.samples, args.rounds, Path(tmp))


if __name__ == "__main__":
    main()
