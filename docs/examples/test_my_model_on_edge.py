"""edgex checks in your own test suite: an example (docs/pytest_plugin.md).

With edgex installed, pytest loads its plugin by itself: the ``edgex_parity`` fixture and the
``edgex_target`` marker need no import and no conftest. Run ``python -m pytest`` as usual.
"""

import pytest

torch = pytest.importorskip("torch")


def my_model():
    """Stands in for your model: any ``nn.Module`` and an example input."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4),
    )
    return net.eval(), (torch.randn(1, 3, 16, 16),)


def test_my_model_computes_the_same_in_onnxruntime(edgex_parity):
    model, example = my_model()
    # fails this test with the verdict's one-line reason when parity is not proven
    report = edgex_parity(model, ["onnx"], example_inputs=example)
    # the report is yours to check further (docs/contract.md describes its fields)
    assert report.targets["onnx"].parity.cosine > 0.999


@pytest.mark.edgex_target("coreml")  # skipped where the Core ML target's backend is not installed
def test_my_model_computes_the_same_as_an_mlpackage(edgex_parity):
    model, example = my_model()
    edgex_parity(model, ["coreml"], example_inputs=example)
