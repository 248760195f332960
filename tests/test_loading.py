"""Every MODEL form of docs/contract.md, safe by default, with one-line errors for bad input."""

import textwrap

import numpy as np
import pytest
import torch

from edgex.core.errors import ModelLoadError, UsageError
from edgex.core.loading import count_macs, load_model, parse_shape
from edgex.plugins.testing import tiny_cnn

FACTORIES = textwrap.dedent(
    """
    import torch
    import torch.nn as nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 3)

        def forward(self, features):
            return self.fc(features)

    class TwoHeads(nn.Module):
        def forward(self, left, right):
            return {"sum": left + right, "diff": left - right}

    def plain():
        return Net()

    def with_example():
        return Net(), (torch.randn(2, 6),)

    def two_inputs():
        return TwoHeads(), (torch.randn(1, 4), torch.randn(1, 4))

    def raises():
        raise ValueError("weights server unreachable")

    def not_a_module():
        return 42
    """
)


@pytest.fixture
def factory_file(tmp_path):
    path = tmp_path / "models.py"
    path.write_text(FACTORIES)
    return path


def test_file_factory_with_input_shape(factory_file):
    model = load_model(f"{factory_file}:plain", input_shapes=[(1, 6)])
    assert [s.name for s in model.inputs] == ["features"] and model.inputs[0].shape == (1, 6)
    assert model.output_names == ("output",) and model.params == 21
    assert count_macs(model.module, model.example_inputs) == 18
    assert len(model.sha256) == 64


def test_factory_example_inputs_fix_the_shape(factory_file):
    model = load_model(f"{factory_file}:with_example")
    assert model.inputs[0].shape == (2, 6)


def test_multiple_inputs_and_dict_outputs(factory_file):
    model = load_model(f"{factory_file}:two_inputs")
    assert [s.name for s in model.inputs] == ["left", "right"]
    assert model.output_names == ("sum", "diff")


def test_module_factory():
    model = load_model("edgex.examples.zoo:lstm")
    assert model.inputs[0].shape == (1, 20, 16)


def test_example_spec_carries_its_data():
    model = load_model("examples:digits")
    assert model.inputs[0].shape == (1, 1, 8, 8) and model.calibration[0].shape[1:] == (1, 8, 8)
    assert model.eval_data[0].shape[0] == len(model.eval_data[1]) > 400


def test_unknown_example_lists_the_shipped_ones():
    with pytest.raises(ModelLoadError, match="unknown example 'resnet99'.*digits"):
        load_model("examples:resnet99")


def test_exported_program(tmp_path):
    net, example = tiny_cnn()
    path = tmp_path / "net.pt2"
    torch.export.save(torch.export.export(net, example), str(path))
    model = load_model(str(path))
    assert model.inputs[0].shape == (1, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(model.module(*example), net(*example), atol=1e-6)


@pytest.mark.parametrize("suffix", [".ts", ".pt"])
def test_torchscript(tmp_path, suffix):
    net, example = tiny_cnn()
    path = tmp_path / f"net{suffix}"
    torch.jit.trace(net, example).save(str(path))
    model = load_model(str(path), input_shapes=[(1, 3, 16, 16)])
    assert model.module is not None and model.output_names == ("output",)


def test_onnx_reference(tmp_path):
    net, example = tiny_cnn()
    path = tmp_path / "net.onnx"
    torch.onnx.export(net, example, str(path), dynamo=False, input_names=["image"], output_names=["logits"], dynamic_axes={"image": {0: "n"}})
    with pytest.raises(UsageError, match="dynamic dimensions.*--input-shape"):
        load_model(str(path))
    model = load_model(str(path), input_shapes=[(1, 3, 16, 16)])
    assert model.kind == "onnx" and model.module is None and model.output_names == ("logits",)


def test_pickled_module_needs_trust(tmp_path):
    net, _ = tiny_cnn()
    path = tmp_path / "whole.pt"
    torch.save(net, str(path))
    with pytest.raises(ModelLoadError, match="pickled.*--trust-pickle"):
        load_model(str(path), input_shapes=[(1, 3, 16, 16)])
    model = load_model(str(path), input_shapes=[(1, 3, 16, 16)], trust_pickle=True)
    assert model.params == sum(p.numel() for p in net.parameters())


def test_state_dict_points_to_weights_option(tmp_path, factory_file):
    from edgex.core.loading import _load_factory_file

    net, _, _ = _load_factory_file(str(factory_file), "plain")
    path = tmp_path / "weights.pt"
    torch.save(net.state_dict(), str(path))
    with pytest.raises(ModelLoadError, match="state dict.*--weights"):
        load_model(str(path))
    model = load_model(f"{factory_file}:plain", input_shapes=[(1, 6)], weights=path)
    assert torch.equal(model.module.fc.weight, net.fc.weight)


def test_weights_that_do_not_fit(tmp_path, factory_file):
    path = tmp_path / "other.pt"
    torch.save(torch.nn.Linear(2, 2).state_dict(), str(path))
    with pytest.raises(ModelLoadError, match="do not fit the model"):
        load_model(f"{factory_file}:plain", input_shapes=[(1, 6)], weights=path)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("missing.pt2", "model file not found"),
        ("{dir}/models.py:raises", "raised ValueError: weights server unreachable"),
        ("{dir}/models.py:not_a_module", "returned int, not a torch.nn.Module"),
        ("{dir}/models.py:absent", "defines no 'absent'"),
        ("no_such_package.mod:make", "cannot import module 'no_such_package.mod'"),
        ("just-a-word", "neither a file nor a factory"),
    ],
)
def test_bad_specs_are_one_line(spec, message, factory_file):
    with pytest.raises(ModelLoadError, match=message) as info:
        load_model(spec.format(dir=factory_file.parent), input_shapes=[(1, 6)])
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["model.pt", "model.pt2", "model.onnx", "model.ts"])
def test_text_file_as_model(tmp_path, name):
    path = tmp_path / name
    path.write_text("this is not a model\n")
    with pytest.raises(ModelLoadError, match="text file|cannot read") as info:
        load_model(str(path), input_shapes=[(1, 3)])
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["model.pt", "model.pt2", "model.onnx"])
def test_corrupt_binary_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)))
    with pytest.raises(ModelLoadError, match="cannot read|corrupt"):
        load_model(str(path), input_shapes=[(1, 3)])


def test_rejected_input_shape_quotes_the_model(factory_file):
    with pytest.raises(ModelLoadError, match=r"rejected input shape \(1, 5\).*mat1 and mat2"):
        load_model(f"{factory_file}:plain", input_shapes=[(1, 5)])


def test_missing_shape_says_what_to_pass(factory_file):
    with pytest.raises(UsageError, match="--input-shape"):
        load_model(f"{factory_file}:plain")


def test_example_inputs_file_fixes_shape_and_rows(tmp_path, factory_file):
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((10, 6), np.float32))
    model = load_model(f"{factory_file}:plain", example_inputs=path)
    assert model.inputs[0].shape == (1, 6)


@pytest.mark.parametrize("text", ["1,3,a", "0,3", ""])
def test_parse_shape_rejects_nonsense(text):
    with pytest.raises(UsageError):
        parse_shape(text)


def test_loading_and_counting_macs_leave_torch_dynamo_unimported():
    """The memory probe and the MAC count are torch dispatch modes: unless a mode says it
    compiles nothing, torch's first call into it imports torch._dynamo, 1.3 s of every run."""
    import subprocess
    import sys

    script = (
        "import sys; from edgex.core.loading import load_model, count_macs\n"
        "m = load_model('examples:resnet-small'); macs = count_macs(m.module, m.example_inputs)\n"
        "print(macs, 'torch._dynamo' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    macs, dynamo = done.stdout.split()
    assert int(macs) > 10**8 and dynamo == "False"
