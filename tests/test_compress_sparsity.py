"""Sparsity survives conversion: the exact zeros of an unstructured-pruned model are still exact
zeros in the weights of each target's artifact (read back from the artifact file itself)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgex.core import api
from edgex.core.compression import CompressionStep
from edgex.core.compression.layers import weight_parameters
from edgex.core.plugin_manager import PluginManager
from edgex.plugins.testing import tiny_cnn

AMOUNT = 0.5


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pruned_cnn():
    """A small CNN pruned 50% unstructured: (model, example, {weight name: zero count})."""
    model, example = tiny_cnn()
    compressed, _ = api.compress(model, [CompressionStep("l1-unstructured", {"amount": AMOUNT, "scope": "layer"})], example_inputs=example)
    zeros = {name: int((p == 0).sum()) for name, p in weight_parameters(compressed.module) if name != "7.weight"}
    assert all(z > 0 for z in zeros.values())
    return model, example, zeros, compressed


def convert(model, example, target: str, out: Path, precision: str | None = None, options: dict | None = None):
    manager = PluginManager(load_entry_points=False)
    if target not in manager.targets():
        pytest.skip(f"target {target} is not registered on this branch")
    if not manager.backend_status(target).available:
        pytest.skip(f"{target} backend unavailable here")
    report = api.convert(
        model, [target], out=out, example_inputs=example, precision=precision, samples=4, plugins=manager, options=options,
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


def _sparse_storage_option(manager) -> tuple[str, str] | None:
    """The coreml target's option (name, value) that stores weights sparse, if it declares one."""
    for option in manager.resolve_target("coreml").spec.options:
        if "sparse" in option.choices:
            return option.name, "sparse"
    return None


def test_coreml_artifact_keeps_the_zeros(pruned_cnn, tmp_path):
    """Default storage: the zeros are still exact zeros among the weights (fp16 may add a few
    more by flushing tiny values, never fewer)."""
    model, example, zeros, _ = pruned_cnn
    artifacts = convert(model, example, "coreml", tmp_path / "out")
    weights, _ = _coreml_weights(next(p for p in artifacts if p.suffix == ".mlpackage"))
    assert_zeros_kept(zeros, weights, at_least=True)


def test_coreml_stores_pruned_weights_sparse(tmp_path):
    """Where coremltools can (constexpr ops, iOS 16 on; tensors big and sparse enough to gain),
    the pruned weights are stored as a bit mask plus the nonzero values, and expand to the same
    zeros. The digits CNN pruned 75%: its two larger kernels (4,608 and 18,432 weights) qualify."""
    manager = PluginManager(load_entry_points=False)
    if "coreml" not in manager.targets():
        pytest.skip("target coreml is not registered on this branch")
    step = CompressionStep("l1-unstructured", {"amount": 0.75, "scope": "layer"})
    compressed, _ = api.compress("examples:digits", [step])
    zeros = {n: int((p == 0).sum()) for n, p in weight_parameters(compressed.module) if n in ("features.3.weight", "features.7.weight")}
    option = _sparse_storage_option(manager)
    assert option is not None, "the coreml target offers no sparse weight storage for pruned models"
    report = api.convert("examples:digits", ["coreml"], out=tmp_path / "out", compression=[step], samples=4, plugins=manager, options=dict([option]))
    row = report.targets["coreml"]
    assert row.status == "passed", row.messages
    package = next(tmp_path / "out" / a for a in row.artifacts if a.endswith(".mlpackage"))
    weights, kinds = _coreml_weights(package)
    assert kinds.count("constexpr_sparse_to_dense") >= 2, f"weights stored as {kinds}"
    sizes = {name: int(p.numel()) for name, p in weight_parameters(compressed.module)}
    for name, count in zeros.items():
        assert any(w.size == sizes[name] and int(np.sum(w == 0)) >= count for w, kind in zip(weights, kinds) if kind.startswith("constexpr_sparse")), name
