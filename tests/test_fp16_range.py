"""The fp16 range check: the reference's own activations against fp16's largest value."""

import sys
from pathlib import Path

import numpy as np
import torch

from edgex.core.fp16_range import FP16_MAX, fp16_overflow

sys.path.insert(0, str(Path(__file__).parent))
import models  # noqa: E402  (tests/models.py: the shared test models)


def _batches(n=8, shape=(1, 8), seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(shape).astype("float32"),) for _ in range(n)]


def test_overflowing_hidden_layer_is_named():
    net, _ = models.fp16_overflow_mlp()
    batches = _batches()
    with torch.no_grad():
        outputs = [net(torch.from_numpy(b[0])) for b in batches]
    assert max(float(o.abs().max()) for o in outputs) < 1000  # the outputs alone look harmless
    reason = fp16_overflow(net, batches)
    assert reason is not None and reason.startswith("module 'fc1' (Linear) reaches 1.")
    assert "e+05" in reason and "65504" in reason


def test_ordinary_model_is_in_range():
    net, _ = models.lstm_tiny()
    assert fp16_overflow(net, _batches(4, (1, 10, 8))) is None


def test_overflow_outside_any_module_names_the_receiving_module():
    class ScaledInside(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = torch.nn.Linear(8, 8), torch.nn.Linear(8, 2)

        def forward(self, x):
            return self.fc2(self.fc1(x) * 1e6) / 1e6  # the product is no module's output

    torch.manual_seed(0)
    reason = fp16_overflow(ScaledInside().eval(), _batches(2))
    assert reason is not None and reason.startswith("the input of module 'fc2' (Linear)")


def test_exported_program_without_modules_is_run_node_by_node():
    net, example = models.fp16_overflow_mlp()
    program = torch.export.export(net, example).module()
    reason = fp16_overflow(program, _batches(4))
    assert reason is not None and reason.startswith("module 'fc1' (Linear)") and f"{FP16_MAX:g}" in reason
    ordinary, example = models.lstm_tiny()
    assert fp16_overflow(torch.export.export(ordinary, example).module(), _batches(2, (1, 10, 8))) is None
