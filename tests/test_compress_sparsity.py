"""Sparsity survives conversion: the exact zeros of an unstructured-pruned model are still exact
zeros in the weights of each target's artifact (read back from the artifact file itself)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgex.core import api
from edgex.core.compress import CompressionStep
from edgex.core.compress.layers import weight_parameters
from edgex.plugins.manager import PluginManager
from edgex.plugins.testing import tiny_cnn

AMOUNT = 0.5


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pruned_cnn():
    """A small CNN pruned 50% unstructured: (model, example, {weight name: zero count})."""
    model, example = tiny_cnn()
    compressed, _ = api.compress(model, [CompressionStep("l1-unstructured", {"amount": AMOUNT, "scope": "layer"})], example_inputs=example)
    zeros = {name: int((p == 0).sum()) for name, p in weight_parameters(compressed.module) if name != "7.weight"}
    assert all(z > 0 for z in zeros.values())
    return model, example, zeros, compressed


def convert(model, example, target: str, out: Path, precision: str | None = None):
    manager = PluginManager(load_entry_points=False)
    if target not in manager.targets():
        pytest.skip(f"target {target} is not registered on this branch")
    if not manager.backend_status(target).available:
        pytest.skip(f"{target} backend unavailable here")
    report = api.convert(
        model, [target], out=out, example_inputs=example, precision=precision, samples=4, plugins=manager,
        compression=[CompressionStep("l1-unstructured", {"amount": AMOUNT, "scope": "layer"})],
    )
    row = report.targets[target]
    assert row.status == "passed", row.messages
    return [out / artifact for artifact in row.artifacts]


def assert_zeros_kept(expected: dict[str, int], weights: list[np.ndarray], at_least: bool = False):
    """Every pruned torch weight has an artifact weight of the same size with as many zeros
    (layouts differ between formats, so tensors are matched by size and zero count)."""
    found = [(w.size, int(np.sum(w == 0))) for w in weights]
    for name, zeros in expected.items():
        size = next(int(p.numel()) for n, p in weight_parameters(tiny_cnn()[0]) if n == name)
        matches = [z for s, z in found if s == size and (z >= zeros if at_least else z == zeros)]
        assert matches, f"{name}: no artifact weight of {size} values with {zeros} zeros (artifact has {found})"


def test_onnx_artifact_keeps_the_zeros(pruned_cnn, tmp_path):
    import onnx
    from onnx import numpy_helper

    model, example, zeros, compressed = pruned_cnn
    (artifact,) = convert(model, example, "onnx", tmp_path / "out")
    graph = onnx.load(str(artifact)).graph
    weights = [numpy_helper.to_array(t) for t in graph.initializer]
    assert_zeros_kept(zeros, weights)
    # and they are the same positions: the first conv's kernel matches the pruned one exactly
    by_shape = {tuple(w.shape): w for w in weights}
    first = compressed.module[0].weight.detach().numpy()
    assert np.array_equal(by_shape[first.shape] == 0, first == 0)


def test_pruning_is_what_makes_the_artifact_zip_smaller(pruned_cnn, tmp_path):
    """A control for the test above: the dense model's artifact has (almost) no zeros."""
    import onnx
    from onnx import numpy_helper

    model, example, zeros, _ = pruned_cnn
    report = api.convert(model, ["onnx"], out=tmp_path / "dense", example_inputs=example, samples=4, plugins=PluginManager(load_entry_points=False))
    artifact = tmp_path / "dense" / report.targets["onnx"].artifacts[0]
    weights = [numpy_helper.to_array(t) for t in onnx.load(str(artifact)).graph.initializer]
    with pytest.raises(AssertionError, match="no artifact weight"):
        assert_zeros_kept(zeros, weights)


def test_tflite_artifact_keeps_the_zeros(pruned_cnn, tmp_path):
    model, example, zeros, _ = pruned_cnn
    artifacts = convert(model, example, "tflite", tmp_path / "out", precision="fp32")
    path = next(p for p in artifacts if p.suffix == ".tflite")
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # pragma: no cover - the tflite target's fallbacks
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    assert_zeros_kept(zeros, _tflite_constants(Interpreter(model_path=str(path))))


def _tflite_constants(interpreter, dtype=None) -> list[np.ndarray]:
    """The multi-dimensional tensors of a .tflite that hold data: its weights."""
    interpreter.allocate_tensors()
    io = {d["index"] for d in [*interpreter.get_input_details(), *interpreter.get_output_details()]}
    weights = []
    for detail in interpreter.get_tensor_details():
        if detail["index"] in io or len(detail["shape"]) < 2 or (dtype is not None and detail["dtype"] != dtype):
            continue
        try:
            weights.append(interpreter.get_tensor(detail["index"]))
        except ValueError:
            continue  # an activation: no data
    return weights


def test_tflite_int8_artifact_keeps_the_zeros(pruned_cnn, tmp_path):
    """int8 weights are symmetric (zero point 0): a pruned zero stays 0 (small weights may join it)."""
    model, example, zeros, _ = pruned_cnn
    manager = PluginManager(load_entry_points=False)
    if "tflite" not in manager.targets() or "int8" not in manager.resolve_target("tflite").spec.precisions:
        pytest.skip("no int8 tflite target on this branch")
    artifacts = convert(model, example, "tflite", tmp_path / "out", precision="int8")
    path = next(p for p in artifacts if p.suffix == ".tflite")
    from ai_edge_litert.interpreter import Interpreter

    assert_zeros_kept(zeros, _tflite_constants(Interpreter(model_path=str(path)), np.int8), at_least=True)


def _coreml_weights(path: Path) -> tuple[list[np.ndarray], list[str]]:
    """Dense weight values of an .mlpackage, sparse ones expanded, and the op types that hold them."""
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto.load import load as load_mil

    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    weights_dir = next(Path(path).rglob("weights"), None)
    program = load_mil(spec, spec.specificationVersion, file_weights_dir=str(weights_dir) if weights_dir else "")
    weights, kinds = [], []
    for function in program.functions.values():
        for op in function.operations:
            if op.op_type == "const" and op.outputs[0].val is not None and np.ndim(op.outputs[0].val) >= 2:
                weights.append(np.asarray(op.outputs[0].val, dtype=np.float32))
                kinds.append("const")
            elif op.op_type.startswith("constexpr_sparse"):
                value = op.materialized_val_inference()  # decompresses bit mask + nonzero values
                weights.append(np.asarray(value[0] if isinstance(value, tuple) else value, dtype=np.float32))
                kinds.append(op.op_type)
    return weights, kinds


def test_coreml_artifact_keeps_the_zeros_and_stores_them_sparse(pruned_cnn, tmp_path):
    model, example, zeros, _ = pruned_cnn
    artifacts = convert(model, example, "coreml", tmp_path / "out")
    path = next(p for p in artifacts if p.suffix == ".mlpackage")
    weights, kinds = _coreml_weights(path)
    assert_zeros_kept(zeros, weights)
    # coremltools stores a weight sparse (bit mask + nonzero values) from iOS 16 on
    assert any(kind.startswith("constexpr_sparse") for kind in kinds), f"weights stored as {sorted(set(kinds))}"
