"""SQNR of full-int8 EfficientNet and MobileViT (transformers' classes, tiny configs, random
weights with BatchNorm statistics) on coral and mcu: before (the old recipe: litert-torch +
ai-edge-quantizer min/max ranges, no rewrite, no recipe search) and after (the pipeline as it is:
rewrites, then the recipe search of docs/int8_recipes.md). One run:

    PYTHONPATH=... python benchmarks/int8_recipes.py [--calibration 32] [--models efficientnet,mobilevit]

Without transformers, the plain-torch EfficientNet-like reproduction of tests/test_int8_recipes.py."""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from edgex.core import api  # noqa: E402
from edgex.targets import litert  # noqa: E402
from test_int8_recipes import _hf_logits, efficientnet_like  # noqa: E402


def hf_efficientnet():
    import transformers

    torch.manual_seed(0)
    config = transformers.EfficientNetConfig(
        image_size=32, width_coefficient=0.25, depth_coefficient=0.5, kernel_sizes=(3, 3, 5), in_channels=(32, 16, 24),
        out_channels=(16, 24, 40), strides=(1, 2, 2), num_block_repeats=(1, 1, 1), expand_ratios=(1, 6, 6), hidden_dim=320, num_labels=10,
    )
    return _hf_logits(transformers.EfficientNetForImageClassification(config))


def hf_mobilevit():
    import transformers

    torch.manual_seed(0)
    config = transformers.MobileViTConfig(
        image_size=32, hidden_sizes=(16, 24, 32), neck_hidden_sizes=(8, 8, 16, 16, 24, 24, 48), num_attention_heads=2, num_labels=10,
    )
    return _hf_logits(transformers.MobileViTForImageClassification(config))


def models(wanted: list[str]):
    try:
        import transformers  # noqa: F401
    except ImportError:
        yield "efficientnet-like (torch.nn)", efficientnet_like()[0]
        return
    if "efficientnet" in wanted:
        yield "EfficientNet (transformers)", hf_efficientnet()
    if "mobilevit" in wanted:
        yield "MobileViT (transformers)", hf_mobilevit()


def run(model, calibration: np.ndarray, before: bool) -> dict[str, tuple[float, str, str]]:
    saved = litert.RECIPE_SEARCH_BELOW_DB
    if before:
        litert.RECIPE_SEARCH_BELOW_DB = -math.inf
    try:
        with tempfile.TemporaryDirectory() as tmp:
            report = api.convert(
                model, ["coral", "mcu"], out=Path(tmp) / "x", example_inputs=(torch.randn(1, 3, 32, 32),), calibration=calibration,
                samples=16, rewrite="none" if before else "auto",
            )
    finally:
        litert.RECIPE_SEARCH_BELOW_DB = saved
    rows = {}
    for target, row in report.targets.items():
        recipe = row.details.get("int8_recipe") or {}
        chosen = recipe.get("chosen") or {}
        rewrites = ",".join(e["name"] for e in row.details.get("rewrites", []) if e.get("status") == "applied") or "-"
        line = next((m for m in row.messages if m.startswith("int8 recipe:")), "")
        rows[target] = (row.parity.sqnr_db if row.parity else float("nan"), row.status, f"{chosen.get('path')} {chosen.get('recipe')}; rewrites {rewrites}", line)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calibration", type=int, default=32)
    parser.add_argument("--models", default="efficientnet,mobilevit")
    args = parser.parse_args()
    calibration = np.random.default_rng(3).standard_normal((args.calibration, 3, 32, 32)).astype(np.float32)
    print(f"{'model':30} {'target':6} {'before':>16} {'after':>16}  recipe after")
    for name, model in models(args.models.split(",")):
        start = time.perf_counter()
        old = run(model, calibration, before=True)
        new = run(model, calibration, before=False)
        for target in ("coral", "mcu"):
            b, a = old[target], new[target]
            print(f"{name:30} {target:6} {b[0]:7.1f} dB {b[1]:6} {a[0]:7.1f} dB {a[1]:6}  {a[2]}")
            if a[3]:
                print(f"{'':38}{a[3]}")
        print(f"{'':38}({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
