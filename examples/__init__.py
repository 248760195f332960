"""Models shipped with edgex, addressed as ``examples:NAME``.

``digits`` is a small CNN trained on the scikit-learn digits data set (its weights ship in the
package, its data comes from scikit-learn's own copy: nothing is downloaded). The others are
seeded, untrained architectures from ``torch.nn`` in the shapes edge users ship (ResNet,
MobileNet, a transformer encoder, an LSTM, a keyword-spotting DS-CNN): right for parity and
speed checks, not for accuracy.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from edgex.core.errors import ModelLoadError

#: name -> (module, function, one-line description)
EXAMPLES: dict[str, tuple[str, str, str]] = {
    "digits": ("edgex.examples.digits", "example", "CNN trained on scikit-learn's 8x8 digits, 1x1x8x8 input, ~98% test accuracy"),
    "resnet18": ("edgex.examples.zoo", "resnet18", "ResNet-18 (11.7 M params), 1x3x224x224, seeded weights"),
    "resnet-small": ("edgex.examples.zoo", "resnet_small", "ResNet-style net, 1x3x64x64, seeded weights"),
    "mobilenet": ("edgex.examples.zoo", "mobilenet", "MobileNetV2-style net (depthwise convs, ReLU6), 1x3x96x96"),
    "transformer": ("edgex.examples.zoo", "transformer", "2-layer transformer encoder classifier, 1x16x64 tokens"),
    "lstm": ("edgex.examples.zoo", "lstm", "LSTM sequence classifier, 1x20x16"),
    "dscnn": ("edgex.examples.zoo", "dscnn", "DS-CNN keyword spotting, 1x1x49x10 MFCC input, 12 classes"),
}


@dataclass(frozen=True)
class Example:
    """A shipped model with the data it comes with."""

    module: Any
    example_inputs: tuple[Any, ...]
    calibration: tuple[Any, ...] | None = None
    eval_data: tuple[Any, Any] | None = None


def load_example(name: str) -> Example:
    if name not in EXAMPLES:
        known = ", ".join(sorted(EXAMPLES))
        raise ModelLoadError(f"unknown example {name!r}; shipped examples: {known}")
    module_name, func, _ = EXAMPLES[name]
    made = getattr(importlib.import_module(module_name), func)()
    if isinstance(made, Example):
        return made
    module, example_inputs = made
    return Example(module, example_inputs)
