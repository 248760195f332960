"""The template target through edgex's conformance kit: keep this test when you copy the template."""

from edgex.plugins.testing import check_target_conformance, tiny_mlp


def test_conformance(tmp_path):
    model, example = tiny_mlp()
    result = check_target_conformance("numpy-mlp", tmp_path / "out", model=model, example_inputs=example)
    assert set(result.precisions) == {"fp32"} and result.defect_caught
    assert result.precisions["fp32"].backend.startswith("numpy ")
