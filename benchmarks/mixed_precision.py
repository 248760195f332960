"""Mixed precision (issue 29): the full-int8 cells that fail because even edgex's ideal simulation
misses the floor, converted again with ``--mixed-precision auto``; and the CNNs, unchanged.

    python benchmarks/mixed_precision.py [--families mobilevit,vit,deit,swin,offset] [--targets coral,mcu,tflite]
        [--cnns digits,resnet-small,mobilenet,dscnn] [--before CHECKOUT] [--json rows.json]

The attention zoo: four families of transformers' tiny configs (MobileViT, ViT, DeiT, Swin) and
the tests' OffsetAttention, weights re-drawn (N(0, gain^2 / fan_in), so the outputs are not vacuous).
MobileViT as the issue's cells were: its BatchNorm statistics measured on random images, full int8
about 10 dB in simulation. ViT, DeiT and Swin: one attention block's values given large
per-channel offsets (40 x their spread, 200 x in Swin, whose shifted windows dilute one block:
the systematic outlier channels trained transformers grow), taken
back out of its output projection's bias, so the float function is unchanged and no converter
can fold the offsets away.

Each cell is one ``edgex convert`` in a fresh process (wall time from outside), first with the
default ``--mixed-precision auto``, then ``off`` (full int8 only). ``--before CHECKOUT`` also times
the same command on another checkout of edgex (the code before this change: ``git worktree add
/tmp/before <rev>``), run on this environment. The raw tool the conversion wraps is timed in the
same run: litert-torch's conversion and one ai-edge-quantizer full-int8 recipe (min/max), by hand
in a fresh process; the ratio is edgex's time over it. Printed per cell: status, the layers kept,
their share of MACs, the simulation's SQNR at full int8 and with them kept, the artifact's SQNR,
the gap (simulation minus artifact), the accuracy drop where labels exist (digits), the times.
Then the CNNs at int8 with ``auto``: no layer kept where full int8 meets its floor.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve()
FAMILIES = ("mobilevit", "vit", "deit", "swin", "offset")
TARGETS = ("coral", "mcu", "tflite")
CNNS = ("digits", "resnet-small", "mobilenet", "dscnn")
#: the offset given to one attention block's values, in units of their own spread: per family,
#: what makes full int8 fail in simulation (Swin's shifted windows dilute one block's values)
OFFSETS = {"vit": 40.0, "deit": 40.0, "swin": 200.0}


# --------------------------------------------------------------------------- the models (MODEL factories)


def _hf(name: str, gain: float):
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    if name == "mobilevit":
        config = transformers.MobileViTConfig(image_size=32, hidden_sizes=(16, 24, 32), neck_hidden_sizes=(8, 8, 16, 16, 24, 24, 48), num_attention_heads=2, num_labels=10)
        model = transformers.MobileViTForImageClassification(config)
    elif name == "vit":
        config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, num_labels=10)
        model = transformers.ViTForImageClassification(config)
    elif name == "swin":
        config = transformers.SwinConfig(image_size=32, patch_size=2, embed_dim=16, depths=(1, 1), num_heads=(2, 2), window_size=4, num_labels=10)
        model = transformers.SwinForImageClassification(config)
    else:
        config = transformers.DeiTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, num_labels=10)
        model = transformers.DeiTForImageClassification(config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter_name, parameter in model.named_parameters():
            if parameter.ndim >= 2:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * gain / math.sqrt(parameter[0].numel()))
            elif parameter_name.endswith("bias"):
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
        example = torch.randn(1, 3, 32, 32, generator=generator)
        norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        if norms:  # MobileViT: its BatchNorm statistics measured on random images, as the issue's cells were
            for norm in norms:
                norm.reset_running_stats()
                norm.momentum = None
                norm.weight.fill_(1.0)
                norm.train()
            for _ in range(8):
                model(pixel_values=torch.randn(8, 3, 32, 32, generator=generator))
        else:  # ViT, DeiT, Swin: one attention block's values given large offsets
            _plant_offsets(model.eval(), OFFSETS[name], example)

    class Logits(torch.nn.Module):
        def __init__(self, wrapped):
            super().__init__()
            self.model = wrapped

        def forward(self, pixel_values):
            return self.model(pixel_values=pixel_values).logits

    return Logits(model.eval()).eval(), (example,)


def _plant_offsets(model: Any, offset: float, example: Any) -> str:
    """Per-channel offsets of +-``offset`` x the values' own spread (their standard deviation on
    ``example``) on the values of one attention block, taken back out of its output projection's
    bias (the float function is unchanged): the middle one, of those attending over more than one
    token (MobileViT's later stages, at 32x32 pixels, attend over one)."""
    import torch

    blocks = []
    for name, module in model.named_modules():
        if hasattr(module, "v_proj") and hasattr(module, "o_proj"):  # transformers' ViT / DeiT
            blocks.append((name, module.v_proj, module.o_proj))
        elif hasattr(module, "attention") and hasattr(module.attention, "value") and hasattr(module, "output") and hasattr(module.output, "dense"):  # MobileViT
            blocks.append((name, module.attention.value, module.output.dense))
    seen: dict[Any, Any] = {}
    hooks = [v.register_forward_hook(lambda module, inputs, result: seen.setdefault(module, result)) for _, v, _ in blocks]
    model(pixel_values=example)
    for hook in hooks:
        hook.remove()
    blocks = [b for b in blocks if seen[b[1]].shape[-2] > 1]
    name, value, output = blocks[len(blocks) // 2]
    shift = offset * float(seen[value].std()) * torch.where(torch.arange(value.out_features) % 2 == 0, 1.0, -1.0)
    value.bias += shift
    output.bias -= output.weight @ shift
    return name


def mobilevit():
    return _hf("mobilevit", 1.0)


def vit():
    return _hf("vit", 1.0)


def deit():
    return _hf("deit", 1.0)


def swin():
    return _hf("swin", 1.0)





def offset():
    sys.path.insert(0, str(HERE.parent.parent / "tests"))
    import models

    return models.offset_attention()


# --------------------------------------------------------------------------- measuring


def _edgex(spec: str, targets: list[str], out: Path, calibration: Path, extra: list[str], checkout: Path | None = None) -> tuple[float, dict[str, Any]]:
    """One ``edgex convert`` in a fresh process (on ``checkout``'s code when given): seconds, report."""
    argv = ["convert", spec, *sum((["-t", t] for t in targets), []), "--quantize", "int8", "--calibration", str(calibration), "--samples", "16", "--out", str(out), "--overwrite", *extra]
    if checkout is None:
        command = [sys.executable, "-m", "edgex.core.cli", *argv]
    else:  # the editable install's finder, pointed at the other checkout for this process
        remap = (
            "import sys, importlib\n"
            "finder = next(m for m in list(sys.modules) if m.startswith('__editable___edgex_0') and m.endswith('_finder'))\n"
            f"sys.modules[finder].MAPPING.update({{k: v.replace({str(HERE.parent.parent)!r}, {str(checkout)!r}) for k, v in sys.modules[finder].MAPPING.items()}})\n"
            "from edgex.core.cli import main\n"
            f"sys.argv = ['edgex'] + {argv!r}\n"
            "sys.exit(main())\n"
        )
        command = [sys.executable, "-c", remap]
    start = time.perf_counter()
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(HERE.parent)})
    seconds = time.perf_counter() - start
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else {"targets": {}}
    return seconds, report


RAW = """
import sys, time, numpy as np, torch
sys.path.insert(0, {folder!r})
import litert_torch
from ai_edge_quantizer import calibrator, quantizer, recipe, recipe_manager
from ai_edge_quantizer.utils import qsv_utils
from ai_edge_litert.interpreter import Interpreter
import mixed_precision
module, example = getattr(mixed_precision, {factory!r})()
calibration = np.load({calibration!r})
start = time.perf_counter()
litert_torch.convert(module.eval(), example).export({work!r} + "/float.tflite")
recipes = recipe_manager.RecipeManager()
recipes.load_quantization_recipe(recipe.static_wi8_ai8())
key = next(iter(Interpreter(model_path={work!r} + "/float.tflite").get_signature_list()))
name = Interpreter(model_path={work!r} + "/float.tflite").get_signature_list()[key]["inputs"][0]
ranges = calibrator.Calibrator({work!r} + "/float.tflite", num_threads=1, qsv_update_func=qsv_utils.min_max_update)
ranges.calibrate({{key: [{{name: x[None]}} for x in calibration]}}, recipes)
engine = quantizer.Quantizer({work!r} + "/float.tflite", recipes.get_quantization_recipe())
open({work!r} + "/int8.tflite", "wb").write(bytes(engine.quantize(ranges.get_model_qsvs(), enable_progress_report=False).quantized_model))
"""


def _raw(factory: str, calibration: Path, work: Path) -> float:
    """litert-torch's conversion and one full-int8 recipe by hand, in a fresh process: seconds."""
    script = RAW.format(folder=str(HERE.parent), factory=factory, calibration=str(calibration), work=str(work))
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def _cell(report: dict[str, Any], target: str) -> dict[str, Any]:
    row = report["targets"].get(target, {})
    mixed = row.get("mixed_precision") or {}
    simulated = min((o["sqnr_sim_db"] for o in row.get("int8_reference", {}).get("outputs", [])), default=None)
    artifact = (row.get("parity") or {}).get("sqnr_db")
    return {
        "status": row.get("status", "missing"),
        "kept": mixed.get("modules", []),
        "as": mixed.get("as"),
        "macs_share": mixed.get("macs_share"),
        "full_int8_db": mixed.get("full_int8_db"),
        "simulated_db": simulated,
        "artifact_db": artifact,
        "gap_db": round(simulated - artifact, 2) if simulated is not None and artifact is not None else None,
        "accuracy_drop": (row.get("accuracy") or {}).get("drop_points"),
    }


def _fmt(value: Any, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--cnns", default=",".join(CNNS), help="comma-separated zoo CNNs (examples:NAME) checked unchanged; '' for none")
    parser.add_argument("--before", type=Path, help="another edgex checkout to time the same commands on")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--keep", type=Path, help="write the runs' folders (report.json, artifacts) here instead of a temporary folder")
    args = parser.parse_args()
    targets = args.targets.split(",")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="edgex-mixed-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for family in args.families.split(","):
            module, example = globals()[family]()
            calibration = work / f"{family}.npy"
            np.save(calibration, np.random.default_rng(0).standard_normal((64, *example[0].shape[1:])).astype(np.float32))
            spec = f"{HERE}:{family}"
            raw = min(_raw(family, calibration, work) for _ in range(2))
            for target in targets:  # one command per target: its whole int8 conversion against one raw recipe
                auto_s, auto = _edgex(spec, [target], work / f"{family}-{target}-auto", calibration, [])
                off_s, off = _edgex(spec, [target], work / f"{family}-{target}-off", calibration, ["--mixed-precision", "off"])
                before_s, before = (None, None)
                if args.before:
                    before_s, before = _edgex(spec, [target], work / f"{family}-{target}-before", calibration, [], args.before)
                row = {"model": family, "target": target, **_cell(auto, target), "off": _cell(off, target)["status"],
                       "before": _cell(before, target)["status"] if before else None, "seconds": round(auto_s, 1), "off_seconds": round(off_s, 1),
                       "before_seconds": round(before_s, 1) if before_s else None, "raw_seconds": round(raw, 1), "ratio": round(auto_s / raw, 2)}
                rows.append(row)
                print(f"{family:10} {target:7} {row['status']:8} off {row['off']:8} before {row['before'] or '-':8} kept {','.join(row['kept']) or '-'} "
                      f"({_fmt(100 * row['macs_share'] if row['macs_share'] is not None else None)}% MACs, {row['as'] or '-'}) full int8 sim {_fmt(row['full_int8_db'])} dB, "
                      f"sim {_fmt(row['simulated_db'])} dB, artifact {_fmt(row['artifact_db'])} dB, gap {_fmt(row['gap_db'])} dB; "
                      f"{row['seconds']} s (off {row['off_seconds']} s, before {row['before_seconds'] or '-'} s), raw one recipe {row['raw_seconds']} s: {row['ratio']}x", flush=True)
        cells = [r for r in rows if r["model"] in FAMILIES]
        failing = [r for r in cells if r["off"] != "passed"]
        if failing:
            passed = [r for r in failing if r["status"] == "passed" and (r["macs_share"] or 0) <= 0.15]
            print(f"\nfailing at full int8: {len(failing)} cells; with mixed precision {len(passed)} pass with at most 15% of MACs kept wider: {100 * len(passed) / len(failing):.0f}%")
        gaps = [r["gap_db"] for r in cells if r["gap_db"] is not None]
        if gaps:
            print(f"gap between the artifact and its simulation: at most {max(gaps):.1f} dB over {len(gaps)} rows")
        ratios = [r["ratio"] for r in cells]
        if ratios:
            print(f"whole int8 conversion against one raw recipe: at most {max(ratios):.2f}x")
        for name in [c for c in args.cnns.split(",") if c]:
            calibration = work / f"{name}.npy"
            from edgex.core import api

            model = api.load_model(f"examples:{name}")
            data = model.calibration[0][:64] if model.calibration is not None else np.random.default_rng(0).standard_normal((64, *model.example_inputs[0].shape[1:])).astype(np.float32)
            np.save(calibration, data)
            _, report = _edgex(f"examples:{name}", targets, work / f"cnn-{name}", calibration, [])
            for target in targets:
                cell = _cell(report, target)
                rows.append({"model": name, "target": target, **cell})
                print(f"{name:12} {target:7} {cell['status']:8} kept {','.join(cell['kept']) or 'nothing'}; artifact {_fmt(cell['artifact_db'])} dB"
                      + (f", accuracy drop {cell['accuracy_drop']:.2f} points" if cell["accuracy_drop"] is not None else ""), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
