"""core/layout.py directly: quantization, layouts, and matching artifact tensors to the reference's."""

import numpy as np
import pytest

from edgex.core.errors import TargetError
from edgex.core.layout import (
    dequantize,
    from_artifact,
    infer_permutation,
    layout_name,
    match_names,
    match_outputs,
    quantize,
    to_artifact,
)
from edgex.core.types import ArtifactIO, QuantParams, TensorBinding


def test_quantize_rounds_half_away_from_zero():
    q = QuantParams(scale=1.0, zero_point=0, dtype="int8")
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49, -0.49])
    assert quantize(x, q).tolist() == [1, 2, 3, -1, -2, -3, 0, 0]  # numpy's round() would give 0, 2, 2, ...


def test_quantize_applies_scale_and_zero_point_and_clamps():
    q = QuantParams(scale=0.5, zero_point=10, dtype="int8")
    assert quantize(np.array([0.0, 1.0, -1.0, 1000.0, -1000.0]), q).tolist() == [10, 12, 8, 127, -128]
    u = QuantParams(scale=0.1, zero_point=0, dtype="uint8")
    assert quantize(np.array([-5.0, 30.0]), u).tolist() == [0, 255]
    assert quantize(np.array([1.0]), q).dtype == np.int8 and quantize(np.array([1.0]), u).dtype == np.uint8


def test_dequantize_inverts_quantize_within_half_a_step():
    q = QuantParams(scale=0.05, zero_point=-3, dtype="int8")
    x = np.linspace(-6.0, 6.0, 101)
    back = dequantize(quantize(x, q), q)
    assert back.dtype == np.float32
    assert np.max(np.abs(back - x)) <= 0.05 / 2 + 1e-6
    assert dequantize(np.array([-3, -1], np.int8), q).tolist() == pytest.approx([0.0, 0.1])


def test_to_and_from_artifact_round_trip_through_nhwc_int8():
    q = QuantParams(scale=0.02, zero_point=5, dtype="int8")
    binding = TensorBinding("x", (1, 4, 5, 3), "int8", "NHWC", perm=(0, 2, 3, 1), quant=q)
    x = np.random.default_rng(0).uniform(-2, 2, (1, 3, 4, 5)).astype(np.float32)
    native = to_artifact(x, binding)
    assert native.shape == (1, 4, 5, 3) and native.dtype == np.int8
    assert native[0, 1, 2, 0] == quantize(x[0, 0, 1, 2], q)  # channel moved last
    back = from_artifact(native, binding)
    assert back.shape == x.shape and back.dtype == np.float32
    assert np.max(np.abs(back - x)) <= 0.01 + 1e-6


def test_to_and_from_artifact_float_layouts():
    x = np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4)
    nhwc = TensorBinding("x", (1, 3, 4, 2), "float16", "NHWC", perm=(0, 2, 3, 1))
    native = to_artifact(x, nhwc)
    assert native.dtype == np.float16 and native.flags.c_contiguous and native.shape == (1, 3, 4, 2)
    assert np.array_equal(from_artifact(native, nhwc), x)
    plain = TensorBinding("x", (1, 2, 3, 4), "float32")
    assert np.array_equal(from_artifact(to_artifact(x, plain), plain), x)
    ncw = TensorBinding("x", (1, 5, 2), "float32", "NWC", perm=(0, 2, 1))
    y = np.arange(10, dtype=np.float32).reshape(1, 2, 5)
    assert np.array_equal(from_artifact(to_artifact(y, ncw), ncw), y)


def test_infer_permutation():
    assert infer_permutation((1, 3, 32, 32), (1, 3, 32, 32)) == (0, 1, 2, 3)
    assert infer_permutation((1, 3, 32, 16), (1, 32, 16, 3)) == (0, 2, 3, 1)
    assert infer_permutation((1, 8, 10), (1, 10, 8)) == (0, 2, 1)
    assert infer_permutation((1, 2, 3, 4, 5), (1, 3, 4, 5, 2)) == (0, 2, 3, 4, 1)
    # ambiguous: every permutation gives the same shape, so identity (the artifact's metadata must say otherwise)
    assert infer_permutation((1, 3, 3, 3), (1, 3, 3, 3)) == (0, 1, 2, 3)
    assert infer_permutation((1, 3, 32, 32), (1, 32, 3, 32)) is None
    assert infer_permutation((1, 3, 32), (1, 3, 32, 1)) is None


def test_layout_name():
    assert layout_name(4, None) == "NCHW" and layout_name(4, (0, 1, 2, 3)) == "NCHW"
    assert layout_name(4, (0, 2, 3, 1)) == "NHWC" and layout_name(3, (0, 2, 1)) == "NWC"
    assert layout_name(5, (0, 2, 3, 4, 1)) == "NDHWC"
    assert layout_name(4, (0, 3, 1, 2)) == "permuted(0, 3, 1, 2)"
    assert layout_name(2, None) is None


def test_match_names_by_name_prefix_or_position():
    assert match_names(["logits", "boxes"], ["boxes", "logits"]) == [1, 0]
    assert match_names(["logits", "boxes"], ["output_1", "output_0"], numbered_prefix="output") == [1, 0]
    # numbers that do not cover 0..n-1 fall back to position
    assert match_names(["a", "b"], ["output_1", "output_2"], numbered_prefix="output") == [0, 1]
    assert match_names(["a", "b"], ["Identity", "Identity_1"]) == [0, 1]
    assert match_names(["a", "b"], ["x"]) is None


def test_match_outputs_raises_on_a_count_mismatch():
    io = ArtifactIO("m", "fp32", (), (TensorBinding("b", (1,), "float32"), TensorBinding("a", (1,), "float32")))
    assert match_outputs(["a", "b"], io) == [1, 0]
    with pytest.raises(TargetError, match="the artifact has 2 outputs but the reference model has 1"):
        match_outputs(["a"], io)
