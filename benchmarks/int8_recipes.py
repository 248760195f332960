"""SQNR of full-int8 EfficientNet and MobileViT (transformers' classes, tiny configs, random
weights with BatchNorm statistics) on coral and mcu: before (the old recipe: litert-torch +
ai-edge-quantizer min/max ranges, no rewrite, no recipe search) and after (the pipeline as it is:
rewrites, then the recipe search of docs/int8_recipes.md). Then the two digits models where the
other recipes win (tests/models.py): ``wide-range`` (int8 keeps ~5 dB; 16x8 on mcu) and
``glitch`` (two glitched calibration values; percentile), every candidate's measured SQNR
printed. One run:

    PYTHONPATH=... python benchmarks/int8_recipes.py [--calibration 32] [--models efficientnet,mobilevit,wide-range,glitch]

Without transformers, the plain-torch EfficientNet-like reproduction of tests/test_int8_recipes.py."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from edgex.core import api  # noqa: E402
from edgex.targets.litert import convert as litert  # noqa: E402
import models as test_models  # noqa: E402
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
        if "efficientnet" in wanted:
            yield "efficientnet-like (torch.nn)", efficientnet_like()[0]
        return
    if "efficientnet" in wanted:
        yield "EfficientNet (transformers)", hf_efficientnet()
    if "mobilevit" in wanted:
        yield "MobileViT (transformers)", hf_mobilevit()


def digits_models(wanted: list[str]):
    """(name, model, calibration): the digits models of docs/int8_recipes.md's last section."""
    digits = test_models.digits_vectors()
    if "wide-range" in wanted:
        yield "wide-range features (16x8)", test_models.wide_range_features()[0], digits[:64], digits[600:601]
    if "glitch" in wanted:
        yield "glitched calibration (percentile)", test_models.blank_corner_mlp()[0], test_models.glitched_digits(), digits[600:601]


def run(model, calibration: np.ndarray, before: bool, example: np.ndarray | None = None) -> dict[str, tuple[float, str, str]]:
    """Before: no rewrite and no recipe search (the first path's default recipe, as it converts)."""
    saved = litert._search_recipes
    if before:
        litert._search_recipes = lambda model, calibration, first_path, first, *rest: (first, None)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            report = api.convert(
                model, ["coral", "mcu"], out=Path(tmp) / "x", example_inputs=(torch.from_numpy(example) if example is not None else torch.randn(1, 3, 32, 32),),
                calibration=calibration, samples=16, rewrite="none" if before else "auto",
            )
    finally:
        litert._search_recipes = saved
    rows = {}
    for target, row in report.targets.items():
        recipe = row.details.get("int8_recipe") or {}
        chosen = recipe.get("chosen") or {}
        rewrites = ",".join(e["name"] for e in row.details.get("rewrites", []) if e.get("status") == "applied") or "-"
        line = next((m for m in row.messages if m.startswith("int8 recipe:")), "")
        candidates = ", ".join(f"{c['recipe']} {c['sqnr_db']:.1f}" if "sqnr_db" in c else f"{c['recipe']} {c['outcome']}" for c in recipe.get("candidates", ()))
        floor = (recipe.get("int8_reference") or {}).get("floor_db")
        # the worst output's SQNR (the row's sqnr_db pools every output: a large one hides a crushed one)
        rows[target] = (
            min(o.sqnr_db for o in row.parity.outputs) if row.parity else float("nan"), row.status, f"{chosen.get('path')} {chosen.get('recipe')}; rewrites {rewrites}", line,
            f"measured dB: {candidates}" + (f" (simulated int8 floor {floor:.1f})" if floor is not None else ""),
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calibration", type=int, default=32)
    parser.add_argument("--models", default="efficientnet,mobilevit,wide-range,glitch")
    args = parser.parse_args()
    wanted = args.models.split(",")
    calibration = np.random.default_rng(3).standard_normal((args.calibration, 3, 32, 32)).astype(np.float32)
    print(f"{'model':34} {'target':6} {'before':>16} {'after':>16}  recipe after")
    cases = [(name, model, calibration, None) for name, model in models(wanted)] + list(digits_models(wanted))
    for name, model, data, example in cases:
        start = time.perf_counter()
        old = run(model, data, before=True, example=example)
        new = run(model, data, before=False, example=example)
        for target in ("coral", "mcu"):
            b, a = old[target], new[target]
            print(f"{name:34} {target:6} {b[0]:7.1f} dB {b[1]:6} {a[0]:7.1f} dB {a[1]:6}  {a[2]}")
            print(f"{'':42}{a[4]}")
        print(f"{'':42}({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
