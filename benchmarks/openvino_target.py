"""Issue 12's figures for the outside target edgex-openvino, measured in one run, printed as ratios.

(Not named benchmarks/openvino.py: run as a script, that file would be `import openvino`.)

- fp32 on a ResNet-18-sized model (``edgex.examples.zoo:resnet18``, 224x224): ``edgex convert
  --target openvino`` (``api.convert``: reference outputs, conversion in a child process, parity on
  OpenVINO's CPU plugin, report) against the raw calls it wraps, in this process:
  ``openvino.convert_model`` + ``save_model`` + ``compile_model`` + one inference per parity
  sample. Limit 1.2x.
- int8 by NNCF on ``examples:digits``: the accuracy drop against torch on the example's labelled
  data (limit 0.5 points) and the int8 IR's size against the fp32 IR's (.xml + .bin; limit 0.35x).
  The same size ratio on the ResNet-18, whose weights outweigh its graph's description (on the
  digits model's 24 k parameters the .xml dominates): int8 calibrated on 32 seeded random images.

Needs edgex-openvino installed. Run: .venv/bin/python benchmarks/openvino_target.py [--samples 32] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ["EDGEX_LOAD_PLUGINS"] = "openvino"  # this outside plugin only, whatever else is installed

from edgex.core import api  # noqa: E402


def edgex_fp32(model, samples: int) -> tuple[float, str]:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        report = api.convert(model, ["openvino"], out=out, samples=samples)
        seconds = time.perf_counter() - start
    row = report.targets["openvino"]
    return seconds, f"{row.status}, SQNR {row.parity.sqnr_db:.1f} dB" if row.parity else row.status


def raw_fp32(model, samples: int) -> float:
    """What edgex wraps, called directly: convert, save, compile for CPU, infer ``samples`` times."""
    import numpy as np
    import torch

    from edgex_openvino.plugin import _CPU_CONFIG, _openvino, _telemetry_off

    ov = _openvino()
    inputs = np.random.default_rng(0).standard_normal((samples, *model.inputs[0].shape[1:])).astype("float32")
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        with _telemetry_off():
            converted = ov.convert_model(model.module, example_input=(torch.from_numpy(model.example_inputs[0]),), input=[list(model.inputs[0].shape)])
        ov.save_model(converted, str(Path(out) / "model.xml"), compress_to_fp16=False)
        compiled = ov.Core().compile_model(str(Path(out) / "model.xml"), "CPU", _CPU_CONFIG)
        request = compiled.create_infer_request()
        for sample in inputs:
            request.infer([sample[None]])
        return time.perf_counter() - start


def reference_alone(model, samples: int) -> float:
    """edgex's own side of the verdict with nothing beside it: the torch reference's outputs on
    the parity samples and its float64 noise floor (parity.py, as convert computes them)."""
    import numpy as np

    from edgex.core import parity

    rng = np.random.default_rng(0)
    batches = [(rng.standard_normal(model.inputs[0].shape).astype("float32"),) for _ in range(samples)]
    start = time.perf_counter()
    outputs = parity.reference_outputs(model, batches)
    parity.noise_floor(model, batches, outputs)
    return time.perf_counter() - start


def ir_bytes(folder: Path, suffixes: tuple[str, ...] = (".xml", ".bin")) -> int:
    return sum(p.stat().st_size for p in folder.rglob("model.*") if p.suffix in suffixes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="edgex.examples.zoo:resnet18")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    model = api.load_model(args.model)
    edgex_fp32(model, 2)  # warm-up: framework imports, first torch trace
    raw_fp32(model, 2)
    wrapped, raw, alone = [], [], []
    for _ in range(args.repeats):
        seconds, status = edgex_fp32(model, args.samples)
        wrapped.append(seconds)
        raw.append(raw_fp32(model, args.samples))
        alone.append(reference_alone(model, args.samples))
        print(f"edgex convert --target openvino: {seconds:6.1f} s ({status}); raw convert_model+compile+infer: {raw[-1]:6.1f} s; "
              f"the torch reference alone: {alone[-1]:6.1f} s")
    ratio = statistics.median(wrapped) / statistics.median(raw)
    print(f"\n{args.model} fp32, {args.samples} parity samples, median of {args.repeats}: "
          f"edgex / raw = {statistics.median(wrapped):.1f} s / {statistics.median(raw):.1f} s = {ratio:.2f}x (limit 1.2x)")
    print(f"  the torch reference edgex judges by, computed alone (no conversion beside it): {statistics.median(alone):.1f} s = "
          f"{statistics.median(alone) / statistics.median(raw):.2f}x the raw run -- the floor of any convert+validate of this model here")

    with tempfile.TemporaryDirectory() as out:
        fp32 = api.convert("examples:digits", ["openvino"], out=Path(out) / "fp32")
        int8 = api.convert("examples:digits", ["openvino"], out=Path(out) / "int8", precision="int8")
        row = int8.targets["openvino"]
        accuracy = row.to_json()["accuracy"]
        size = ir_bytes(Path(out) / "int8") / ir_bytes(Path(out) / "fp32")
        print(f"\nexamples:digits int8 by NNCF: {row.status}, SQNR {row.parity.sqnr_db:.1f} dB; accuracy {accuracy['reference']:.4f} (torch) -> "
              f"{accuracy['artifact']:.4f} on {accuracy['samples']} labelled samples: drop {accuracy['drop_points']:.2f} points (limit 0.5)")
        print(f"IR size int8 / fp32 (.xml + .bin) = {ir_bytes(Path(out) / 'int8')} / {ir_bytes(Path(out) / 'fp32')} B = {size:.2f}x (limit 0.35x); "
              f"fp32 status {fp32.targets['openvino'].status}")
        weights = ir_bytes(Path(out) / "int8", (".bin",)) / ir_bytes(Path(out) / "fp32", (".bin",))
        print(f"  the weights alone (.bin): {weights:.2f}x; the int8 .xml grows with NNCF's FakeQuantize nodes "
              f"({ir_bytes(Path(out) / 'int8', ('.xml',))} B against {ir_bytes(Path(out) / 'fp32', ('.xml',))} B)")
        large_model_sizes(model, Path(out))


def large_model_sizes(model, out: Path) -> None:
    """int8 / fp32 IR size where the weights dominate: the fp32 figure's model, calibrated on seeded random images."""
    import numpy as np

    calibration = out / "calibration.npz"
    np.savez(calibration, np.random.default_rng(0).standard_normal((32, *model.inputs[0].shape[1:])).astype("float32"))
    fp32 = api.convert(model, ["openvino"], out=out / "large-fp32", samples=4)
    int8 = api.convert(model, ["openvino"], out=out / "large-int8", precision="int8", samples=4, calibration=calibration)
    int8_bytes, fp32_bytes = ir_bytes(out / "large-int8"), ir_bytes(out / "large-fp32")
    print(f"the same on {model.spec}: IR size int8 / fp32 = {int8_bytes} / {fp32_bytes} B = {int8_bytes / fp32_bytes:.3f}x "
          f"(int8 {int8.targets['openvino'].status}, fp32 {fp32.targets['openvino'].status}; the int8 .xml "
          f"{ir_bytes(out / 'large-int8', ('.xml',))} B)")


if __name__ == "__main__":
    main()
