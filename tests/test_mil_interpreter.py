"""The MIL reference interpreter, kernel by kernel and program by program.

Three independent references judge the kernels:

- coremltools' own ``value_inference`` (numpy implementations of the op definitions): a program
  whose inputs are constants makes coremltools compute every op's value while it builds the
  program; the interpreter then runs the same ops and must agree;
- PyTorch: the torch operation that means the same thing (gate orders, pad conventions and
  sampling grids translated by hand in the test, not by the kernel);
- coremltools' ``decompress`` of every ``constexpr_*`` op, for compressed weights.

Whole programs come from real ``ct.convert`` runs of small torch layers.
"""

from __future__ import annotations

import numpy as np
import pytest

ct = pytest.importorskip("coremltools")
torch = pytest.importorskip("torch")

import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from coremltools.converters.mil import Builder as mb  # noqa: E402
from coremltools.converters.mil.mil import types  # noqa: E402

from edgex.targets.coreml import kernels as mil_kernels  # noqa: E402
from edgex.targets.coreml.interpreter import MILError, MILInterpreter, load_package, program_precision  # noqa: E402

RNG = np.random.default_rng(0)
DUMMY = {"dummy": np.zeros(1, np.float32)}


def rand(*shape, low=-2.0, high=2.0, dtype=np.float32):
    return RNG.uniform(low, high, shape).astype(dtype)


def _flatten(result):
    if isinstance(result, (tuple, list)):
        return tuple(v for item in result for v in _flatten(item))
    return (result,)


def build(fn, arrays, opset):
    """A program computing ``fn`` of constant ``arrays``; returns (program, output vars)."""

    @mb.program(input_specs=[mb.TensorSpec(shape=(1,))], opset_version=opset)
    def program(dummy):
        # copies: some value_inference implementations (thresholded_relu) write into their input
        return _flatten(fn(*[mb.const(val=np.array(a, copy=True)) for a in arrays]))

    return program, list(program.functions["main"].outputs)


def interpret(program):
    return MILInterpreter(program).run(DUMMY)


def assert_close(got, want, *, fp16=False, what=""):
    want = np.asarray(want)
    got = np.asarray(got)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    if want.dtype == np.bool_ or np.issubdtype(want.dtype, np.integer):
        np.testing.assert_array_equal(got.astype(want.dtype), want, err_msg=what)
        return
    want = want.astype(np.float64)
    peak = max(1.0, float(np.max(np.abs(want), initial=0.0)))
    # fp16: coremltools' numpy references round intermediate results to fp16 too, in their own order
    atol, rtol = (4 * 2.0**-10 * peak, 2e-3) if fp16 else (2e-6 * peak, 1e-5)
    np.testing.assert_allclose(got.astype(np.float64), want, rtol=rtol, atol=atol, err_msg=what)


# --------------------------------------------------------------------------- table of kernels
#
# (id, opset, input arrays, MIL builder, torch reference or None). Every op listed here has a
# coremltools value_inference; the torch reference is computed from the same inputs.

T = lambda a: torch.from_numpy(np.asarray(a))  # noqa: E731
POS = rand(2, 3, 4, low=0.1, high=3.0)
X = rand(2, 3, 4)
Y = rand(2, 3, 4)
ROW = rand(4)
UNIT = rand(2, 3, 4, low=-0.9, high=0.9)
IMG = rand(2, 3, 5, 6)
ALPHA3 = rand(3, low=0.1, high=0.9)
BETA3 = rand(3, low=0.5, high=1.5)
BOOLS = RNG.random((2, 3, 4)) > 0.5
BOOLS2 = RNG.random((2, 3, 4)) > 0.5
IOS15, IOS16, IOS17, IOS18 = ct.target.iOS15, ct.target.iOS16, ct.target.iOS17, ct.target.iOS18

VALUE_INFERENCE_CASES = [
    # elementwise unary
    ("abs", IOS17, [X], lambda x: mb.abs(x=x), torch.abs),
    ("acos", IOS17, [UNIT], lambda x: mb.acos(x=x), torch.acos),
    ("asin", IOS17, [UNIT], lambda x: mb.asin(x=x), torch.asin),
    ("atan", IOS17, [X], lambda x: mb.atan(x=x), torch.atan),
    ("atanh", IOS17, [UNIT], lambda x: mb.atanh(x=x), torch.atanh),
    ("ceil", IOS17, [X], lambda x: mb.ceil(x=x), torch.ceil),
    ("cos", IOS17, [X], lambda x: mb.cos(x=x), torch.cos),
    ("cosh", IOS17, [X], lambda x: mb.cosh(x=x), torch.cosh),
    ("erf", IOS17, [X], lambda x: mb.erf(x=x), torch.erf),
    ("exp", IOS17, [X], lambda x: mb.exp(x=x), torch.exp),
    ("exp2", IOS17, [X], lambda x: mb.exp2(x=x), torch.exp2),
    ("floor", IOS17, [X], lambda x: mb.floor(x=x), torch.floor),
    ("round", IOS17, [np.array([0.5, 1.5, 2.5, -0.5, -1.7, 3.2], np.float32)], lambda x: mb.round(x=x), torch.round),
    ("sign", IOS17, [X], lambda x: mb.sign(x=x), torch.sign),
    ("sin", IOS17, [X], lambda x: mb.sin(x=x), torch.sin),
    ("sinh", IOS17, [X], lambda x: mb.sinh(x=x), torch.sinh),
    ("sqrt", IOS17, [POS], lambda x: mb.sqrt(x=x), torch.sqrt),
    ("square", IOS17, [X], lambda x: mb.square(x=x), torch.square),
    ("tan", IOS17, [UNIT], lambda x: mb.tan(x=x), torch.tan),
    ("tanh", IOS17, [X], lambda x: mb.tanh(x=x), torch.tanh),
    ("log", IOS17, [POS], lambda x: mb.log(x=x, epsilon=1e-3), lambda x: torch.log(x + 1e-3)),
    ("rsqrt", IOS17, [POS], lambda x: mb.rsqrt(x=x, epsilon=1e-3), lambda x: torch.rsqrt(x + 1e-3)),
    ("inverse", IOS17, [POS], lambda x: mb.inverse(x=x, epsilon=1e-3), lambda x: 1 / (x + 1e-3)),
    ("clip", IOS17, [X], lambda x: mb.clip(x=x, alpha=-0.5, beta=0.75), lambda x: torch.clamp(x, -0.5, 0.75)),
    ("threshold", IOS17, [X], lambda x: mb.threshold(x=x, alpha=0.3), lambda x: torch.clamp(x, min=0.3)),
    ("cast_int32", IOS17, [X * 3], lambda x: mb.cast(x=x, dtype="int32"), lambda x: x.to(torch.int32)),
    ("cast_fp16", IOS17, [X], lambda x: mb.cast(x=x, dtype="fp16"), lambda x: x.half()),
    ("cast_bool", IOS17, [np.array([0.0, 1.5, -2.0, 0.0], np.float32)], lambda x: mb.cast(x=x, dtype="bool"), lambda x: x != 0),
    # activations
    ("relu", IOS17, [X], lambda x: mb.relu(x=x), torch.relu),
    ("relu6", IOS17, [X * 5], lambda x: mb.relu6(x=x), F.relu6),
    ("sigmoid", IOS17, [X], lambda x: mb.sigmoid(x=x), torch.sigmoid),
    ("softplus", IOS17, [X], lambda x: mb.softplus(x=x), F.softplus),
    ("softsign", IOS17, [X], lambda x: mb.softsign(x=x), F.softsign),
    ("elu", IOS17, [X], lambda x: mb.elu(x=x, alpha=0.7), lambda x: F.elu(x, 0.7)),
    ("gelu_exact", IOS17, [X], lambda x: mb.gelu(x=x, mode="EXACT"), F.gelu),
    ("gelu_tanh", IOS17, [X], lambda x: mb.gelu(x=x, mode="TANH_APPROXIMATION"), lambda x: F.gelu(x, approximate="tanh")),
    ("gelu_sigmoid", IOS17, [X], lambda x: mb.gelu(x=x, mode="SIGMOID_APPROXIMATION"), lambda x: x * torch.sigmoid(1.702 * x)),
    ("leaky_relu", IOS17, [X], lambda x: mb.leaky_relu(x=x, alpha=0.2), lambda x: F.leaky_relu(x, 0.2)),
    ("linear_activation", IOS17, [X], lambda x: mb.linear_activation(x=x, alpha=1.5, beta=-0.5), lambda x: 1.5 * x - 0.5),
    ("prelu", IOS17, [IMG, ALPHA3], lambda x, a: mb.prelu(x=x, alpha=a), lambda x, a: F.prelu(x, a)),
    ("scaled_tanh", IOS17, [X], lambda x: mb.scaled_tanh(x=x, alpha=1.5, beta=0.5), lambda x: 1.5 * torch.tanh(0.5 * x)),
    ("sigmoid_hard", IOS17, [X * 4], lambda x: mb.sigmoid_hard(x=x, alpha=1 / 6, beta=0.5), F.hardsigmoid),
    ("softplus_parametric", IOS17, [IMG, ALPHA3, BETA3], lambda x, a, b: mb.softplus_parametric(x=x, alpha=a, beta=b),
     lambda x, a, b: a.reshape(1, -1, 1, 1) * F.softplus(b.reshape(1, -1, 1, 1) * x)),
    ("thresholded_relu", IOS17, [X], lambda x: mb.thresholded_relu(x=x, alpha=0.5), lambda x: torch.where(x >= 0.5, x, 0 * x)),
    ("clamped_relu", IOS17, [X * 3], lambda x: mb.clamped_relu(x=x, alpha=0.1, beta=2.0), lambda x: torch.clamp(torch.where(x >= 0, x, 0.1 * x), max=2.0)),
    ("softmax", IOS17, [X], lambda x: mb.softmax(x=x, axis=1), lambda x: torch.softmax(x, 1)),
    # binary, with broadcasting
    ("add", IOS17, [X, ROW], lambda x, y: mb.add(x=x, y=y), torch.add),
    ("sub", IOS17, [X, Y], lambda x, y: mb.sub(x=x, y=y), torch.sub),
    ("mul", IOS17, [X, ROW], lambda x, y: mb.mul(x=x, y=y), torch.mul),
    ("real_div", IOS17, [X, POS], lambda x, y: mb.real_div(x=x, y=y), torch.div),
    ("floor_div", IOS17, [X * 3, POS], lambda x, y: mb.floor_div(x=x, y=y), torch.floor_divide),
    ("mod", IOS17, [X * 3, POS], lambda x, y: mb.mod(x=x, y=y), torch.remainder),
    ("pow", IOS17, [POS, Y], lambda x, y: mb.pow(x=x, y=y), torch.pow),
    ("maximum", IOS17, [X, Y], lambda x, y: mb.maximum(x=x, y=y), torch.maximum),
    ("minimum", IOS17, [X, Y], lambda x, y: mb.minimum(x=x, y=y), torch.minimum),
    ("equal", IOS17, [np.round(X), np.round(Y)], lambda x, y: mb.equal(x=x, y=y), torch.eq),
    ("not_equal", IOS17, [np.round(X), np.round(Y)], lambda x, y: mb.not_equal(x=x, y=y), torch.ne),
    ("greater", IOS17, [X, Y], lambda x, y: mb.greater(x=x, y=y), torch.gt),
    ("greater_equal", IOS17, [np.round(X), np.round(Y)], lambda x, y: mb.greater_equal(x=x, y=y), torch.ge),
    ("less", IOS17, [X, Y], lambda x, y: mb.less(x=x, y=y), torch.lt),
    ("less_equal", IOS17, [np.round(X), np.round(Y)], lambda x, y: mb.less_equal(x=x, y=y), torch.le),
    ("logical_and", IOS17, [BOOLS, BOOLS2], lambda x, y: mb.logical_and(x=x, y=y), torch.logical_and),
    ("logical_or", IOS17, [BOOLS, BOOLS2], lambda x, y: mb.logical_or(x=x, y=y), torch.logical_or),
    ("logical_xor", IOS17, [BOOLS, BOOLS2], lambda x, y: mb.logical_xor(x=x, y=y), torch.logical_xor),
    ("logical_not", IOS17, [BOOLS], lambda x: mb.logical_not(x=x), torch.logical_not),
    ("select", IOS17, [BOOLS, X, Y], lambda c, a, b: mb.select(cond=c, a=a, b=b), torch.where),
    # linear algebra
    ("linear", IOS17, [rand(2, 5, 4), rand(3, 4), rand(3)], lambda x, w, b: mb.linear(x=x, weight=w, bias=b), F.linear),
    ("matmul", IOS17, [rand(2, 3, 4), rand(4, 5)], lambda x, y: mb.matmul(x=x, y=y), torch.matmul),
    ("matmul_transposed", IOS17, [rand(2, 4, 3), rand(2, 5, 4)], lambda x, y: mb.matmul(x=x, y=y, transpose_x=True, transpose_y=True),
     lambda x, y: torch.matmul(x.transpose(-1, -2), y.transpose(-1, -2))),
    ("einsum", IOS17, [rand(1, 2, 3, 4), rand(1, 4, 3, 5)], lambda a, b: mb.einsum(values=(a, b), equation="nchw,nwhu->nchu"),
     lambda a, b: torch.einsum("nchw,nwhu->nchu", a, b)),
    ("scaled_dot_product_attention", IOS18, [rand(1, 2, 4, 8), rand(1, 2, 6, 8), rand(1, 2, 6, 3)],
     lambda q, k, v: mb.scaled_dot_product_attention(query=q, key=k, value=v), F.scaled_dot_product_attention),
    ("scaled_dot_product_attention_mask", IOS18, [rand(1, 2, 4, 8), rand(1, 2, 6, 8), rand(1, 2, 6, 3), RNG.random((4, 6)) > 0.3],
     lambda q, k, v, m: mb.scaled_dot_product_attention(query=q, key=k, value=v, attn_mask=m),
     lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m)),
    # reductions
    ("reduce_sum", IOS17, [X], lambda x: mb.reduce_sum(x=x, axes=[0, 2], keep_dims=True), lambda x: x.sum(dim=(0, 2), keepdim=True)),
    ("reduce_mean", IOS17, [X], lambda x: mb.reduce_mean(x=x, axes=[-1]), lambda x: x.mean(-1)),
    ("reduce_mean_all", IOS17, [X], lambda x: mb.reduce_mean(x=x), lambda x: x.mean()),
    ("reduce_prod", IOS17, [X], lambda x: mb.reduce_prod(x=x, axes=[1]), lambda x: x.prod(1)),
    ("reduce_max", IOS17, [X], lambda x: mb.reduce_max(x=x, axes=[1, 2]), lambda x: x.amax((1, 2))),
    ("reduce_min", IOS17, [X], lambda x: mb.reduce_min(x=x, axes=[0]), lambda x: x.amin(0)),
    ("reduce_l1_norm", IOS17, [X], lambda x: mb.reduce_l1_norm(x=x, axes=[2]), lambda x: x.abs().sum(2)),
    ("reduce_l2_norm", IOS17, [X], lambda x: mb.reduce_l2_norm(x=x, axes=[2]), lambda x: x.norm(dim=2)),
    ("reduce_sum_square", IOS17, [X], lambda x: mb.reduce_sum_square(x=x, axes=[1]), lambda x: (x * x).sum(1)),
    ("reduce_log_sum", IOS17, [POS], lambda x: mb.reduce_log_sum(x=x, axes=[2]), lambda x: torch.log(x.sum(2))),
    ("reduce_log_sum_exp", IOS17, [X], lambda x: mb.reduce_log_sum_exp(x=x, axes=[1]), lambda x: torch.logsumexp(x, 1)),
    ("reduce_argmax", IOS17, [X], lambda x: mb.reduce_argmax(x=x, axis=1), lambda x: x.argmax(1)),
    ("reduce_argmin", IOS17, [X], lambda x: mb.reduce_argmin(x=x, axis=-1, keep_dims=True), lambda x: x.argmin(-1, keepdim=True)),
    # normalization
    ("layer_norm", IOS17, [X, rand(3, 4), rand(3, 4)], lambda x, g, b: mb.layer_norm(x=x, axes=[1, 2], gamma=g, beta=b, epsilon=1e-5),
     lambda x, g, b: F.layer_norm(x, (3, 4), g, b, 1e-5)),
    ("layer_norm_unordered_axes", IOS17, [X, rand(3, 4), rand(3, 4)], lambda x, g, b: mb.layer_norm(x=x, axes=[2, 1], gamma=g, beta=b),
     lambda x, g, b: F.layer_norm(x, (3, 4), g, b, 1e-5)),
    ("l2_norm", IOS17, [rand(2, 2, 3, 4)], lambda x: mb.l2_norm(x=x, epsilon=1e-6),
     lambda x: x / torch.sqrt((x * x).sum(dim=(1, 2, 3), keepdim=True) + 1e-6)),
    # layout
    ("reshape", IOS17, [X], lambda x: mb.reshape(x=x, shape=[4, -1]), lambda x: x.reshape(4, -1)),
    ("reshape_zero_ios15", IOS15, [X], lambda x: mb.reshape(x=x, shape=[0, -1, 2]), lambda x: x.reshape(2, -1, 2)),
    ("reshape_zero_ios17", IOS17, [X], lambda x: mb.reshape(x=x, shape=[1, 0, -1, 0]), lambda x: x.reshape(1, 2, 3, 4)),
    ("transpose", IOS17, [X], lambda x: mb.transpose(x=x, perm=[2, 0, 1]), lambda x: x.permute(2, 0, 1)),
    ("expand_dims", IOS17, [X], lambda x: mb.expand_dims(x=x, axes=[0, -1]), lambda x: x.unsqueeze(0).unsqueeze(-1)),
    ("squeeze", IOS17, [rand(1, 3, 1, 4)], lambda x: mb.squeeze(x=x, axes=[2]), lambda x: x.squeeze(2)),
    ("squeeze_all", IOS17, [rand(1, 3, 1, 4)], lambda x: mb.squeeze(x=x), lambda x: x.squeeze()),
    ("flatten2d", IOS17, [X], lambda x: mb.flatten2d(x=x, axis=-1), lambda x: x.reshape(6, 4)),
    ("concat", IOS17, [X, Y], lambda x, y: mb.concat(values=(x, y), axis=1), lambda x, y: torch.cat([x, y], 1)),
    ("stack", IOS17, [X, Y], lambda x, y: mb.stack(values=(x, y), axis=-1), lambda x, y: torch.stack([x, y], -1)),
    ("split_sizes", IOS17, [X], lambda x: mb.split(x=x, split_sizes=[1, 3], axis=2), lambda x: torch.split(x, [1, 3], 2)),
    ("split_even", IOS17, [X], lambda x: mb.split(x=x, num_splits=2, axis=-1), lambda x: torch.split(x, 2, -1)),
    ("tile", IOS17, [X], lambda x: mb.tile(x=x, reps=[1, 2, 3]), lambda x: x.repeat(1, 2, 3)),
    ("reverse", IOS17, [X], lambda x: mb.reverse(x=x, axes=[0, 2]), lambda x: torch.flip(x, (0, 2))),
    ("slice_by_index", IOS17, [rand(4, 5, 6)],
     lambda x: mb.slice_by_index(x=x, begin=[1, 0, 5], end=[3, 5, 0], stride=[1, 2, -2], begin_mask=[False, True, False], end_mask=[False, False, True]),
     lambda x: x.numpy()[1:3, 0:5:2, 5::-2]),
    ("slice_by_index_squeeze", IOS17, [rand(4, 5, 6)],
     lambda x: mb.slice_by_index(x=x, begin=[-1, 1, 0], end=[0, 4, 6], squeeze_mask=[True, False, False]),
     lambda x: x[-1, 1:4, :]),
    ("slice_by_size", IOS17, [rand(4, 5, 6)], lambda x: mb.slice_by_size(x=x, begin=[1, 2, 0], size=[2, -1, 3]), lambda x: x[1:3, 2:, 0:3]),
    ("pad_constant", IOS17, [IMG], lambda x: mb.pad(x=x, pad=[1, 2, 0, 3], mode="constant", constant_val=0.5),
     lambda x: F.pad(x, (0, 3, 1, 2), value=0.5)),
    ("pad_reflect", IOS17, [IMG], lambda x: mb.pad(x=x, pad=[2, 1, 3, 0], mode="reflect"), lambda x: F.pad(x, (3, 0, 2, 1), mode="reflect")),
    ("pad_replicate", IOS17, [IMG], lambda x: mb.pad(x=x, pad=[0, 2, 1, 1], mode="replicate"), lambda x: F.pad(x, (1, 1, 0, 2), mode="replicate")),
    ("gather", IOS17, [X, np.array([[2, 0], [1, 1]], np.int32)], lambda x, i: mb.gather(x=x, indices=i, axis=1),
     lambda x, i: x[:, i.long()]),
    ("gather_negative_ios15", IOS15, [X, np.array([-1, 0, -3], np.int32)], lambda x, i: mb.gather(x=x, indices=i, axis=2),
     lambda x, i: x[:, :, i.long()]),
    ("gather_batch_dims", IOS16, [X, np.array([[0, 2], [1, 1]], np.int32)], lambda x, i: mb.gather(x=x, indices=i, axis=1, batch_dims=1),
     lambda x, i: torch.stack([x[0, i[0].long()], x[1, i[1].long()]])),
    ("gather_along_axis", IOS17, [X, RNG.integers(0, 3, (2, 2, 4)).astype(np.int32)], lambda x, i: mb.gather_along_axis(x=x, indices=i, axis=1),
     lambda x, i: torch.gather(x, 1, i.long())),
    ("band_part", IOS17, [rand(2, 5, 6)], lambda x: mb.band_part(x=x, lower=1, upper=2),
     lambda x: x * torch.ones(5, 6).tril(2).triu(-1)),
    ("cumsum", IOS17, [X], lambda x: mb.cumsum(x=x, axis=2), lambda x: torch.cumsum(x, 2)),
    ("cumsum_reverse", IOS17, [X], lambda x: mb.cumsum(x=x, axis=1, reverse=True), lambda x: torch.flip(torch.cumsum(torch.flip(x, (1,)), 1), (1,))),
    ("topk", IOS17, [X], lambda x: mb.topk(x=x, k=2, axis=-1), lambda x: tuple(torch.topk(x, 2, -1))),
    ("topk_ascending", IOS17, [X], lambda x: mb.topk(x=x, k=3, axis=1, ascending=True), lambda x: tuple(torch.topk(x, 3, 1, largest=False))),
    ("argsort", IOS17, [X], lambda x: mb.argsort(x=x, axis=-1), lambda x: torch.argsort(x, -1, descending=True)),
    ("fill", IOS17, [], lambda: mb.fill(shape=[2, 3], value=1.5), lambda: torch.full((2, 3), 1.5)),
    ("fill_like", IOS17, [X], lambda x: mb.fill_like(ref_tensor=x, value=-2.0), lambda x: torch.full_like(x, -2.0)),
    ("identity", IOS17, [X], lambda x: mb.identity(x=x), lambda x: x),
    ("shape", IOS17, [X], lambda x: mb.shape(x=x), lambda x: torch.tensor(x.shape, dtype=torch.int32)),
    ("range_1d", IOS17, [], lambda: mb.range_1d(start=2, end=11, step=3), lambda: torch.arange(2, 11, 3)),
    ("quantize", IOS17, [X, np.array([0.02, 0.03, 0.05], np.float32)], lambda x, s: mb.quantize(input=x, scale=s, axis=1, output_dtype="int8"),
     lambda x, s: torch.clamp(torch.round(x / s.reshape(1, 3, 1)), -128, 127).to(torch.int8)),
]


#: cases whose scalar parameters are fp32 literals, which MIL requires to match an fp16 input
FP32_ONLY = {"clip", "threshold", "pad_constant", "layer_norm", "layer_norm_unordered_axes", "l2_norm", "quantize"}


@pytest.mark.parametrize("case", VALUE_INFERENCE_CASES, ids=[c[0] for c in VALUE_INFERENCE_CASES])
@pytest.mark.parametrize("half", [False, True], ids=["fp32", "fp16"])
def test_kernel_matches_value_inference_and_torch(case, half):
    name, opset, arrays, make, reference = case
    if half:
        if not any(a.dtype == np.float32 for a in arrays) or name.startswith(("cast", "reduce_arg", "topk", "argsort")):
            pytest.skip("no floating-point data whose precision matters")
        if name in FP32_ONLY:
            pytest.skip("fp32 scalar parameters, which MIL refuses beside fp16 data")
        arrays = [a.astype(np.float16) if a.dtype == np.float32 else a for a in arrays]
    program, outputs = build(make, arrays, opset)
    got = interpret(program)
    for var in outputs:
        assert var.val is not None, f"coremltools computed no value for {name}: not a value_inference op"
        assert_close(got[var.name], var.val, fp16=half, what=f"{name} vs coremltools value_inference")
    if reference is not None and not half:
        expected = reference(*[T(a) for a in arrays])
        expected = expected if isinstance(expected, (tuple, list)) else (expected,)
        for var, want in zip(outputs, expected):
            want = want.numpy() if hasattr(want, "numpy") else np.asarray(want)
            assert_close(got[var.name], np.array(want), what=f"{name} vs torch")


def test_concat_interleave_follows_its_documentation():
    # coremltools' value_inference ignores ``interleave``; the op's docstring is the judge
    first = np.array([[1, 2], [3, 4], [5, 6]], np.float32)
    second = np.array([[7, 8], [9, 10], [11, 12]], np.float32)
    (got,) = run_single(lambda a, b: mb.concat(values=(a, b), axis=0, interleave=True), [first, second])
    assert_close(got, np.array([[1, 2], [7, 8], [3, 4], [9, 10], [5, 6], [11, 12]], np.float32), what="interleave")


# --------------------------------------------------------------------------- kernels without value_inference
#
# coremltools has no numpy reference for these: torch (or the op documentation's own worked
# examples) is the judge.


def run_single(make, arrays, opset=IOS17):
    program, outputs = build(make, arrays, opset)
    got = interpret(program)
    return [got[v.name] for v in outputs]


CONV_CASES = [
    # (weight shape, strides, dilations, groups, pad_type, pad, input shape)
    ((6, 3, 3, 3), [1, 1], [1, 1], 1, "custom", [1, 1, 1, 1], (2, 3, 9, 8)),
    ((6, 3, 3, 3), [2, 2], [1, 1], 1, "valid", None, (1, 3, 9, 8)),
    ((6, 1, 3, 3), [1, 2], [2, 1], 3, "custom", [2, 0, 1, 2], (1, 3, 9, 8)),  # grouped, asymmetric
    ((4, 4, 1, 1), [1, 1], [1, 1], 1, "valid", None, (1, 4, 5, 5)),
    ((8, 1, 3, 3), [1, 1], [1, 1], 8, "same", None, (1, 8, 7, 7)),  # depthwise
    ((4, 2, 4, 4), [2, 2], [1, 1], 1, "same", None, (1, 2, 9, 8)),  # same with stride: odd pixel after
    ((4, 2, 4, 4), [2, 2], [1, 1], 1, "same_lower", None, (1, 2, 9, 8)),  # odd pixel before
    ((5, 3, 3), [2], [1], 1, "custom", [1, 2], (2, 3, 11)),  # 1-D
    ((2, 3, 2, 2, 2), [1, 1, 1], [1, 1, 1], 1, "valid", None, (1, 3, 4, 4, 4)),  # 3-D
]


def _tf_same(size, k, s, lower):
    total = max(0, s * -(-size // s) - size + k - s)
    return (total - total // 2, total // 2) if lower else (total // 2, total - total // 2)


@pytest.mark.parametrize("case", CONV_CASES, ids=[f"{c[4]}-{len(c[0]) - 2}d-g{c[3]}" for c in CONV_CASES])
def test_conv_matches_torch(case):
    wshape, strides, dilations, groups, pad_type, pad, xshape = case
    x, w, b = rand(*xshape), rand(*wshape), rand(wshape[0])
    extra = {"pad": pad} if pad is not None else {}
    (got,) = run_single(lambda x_, w_, b_: mb.conv(x=x_, weight=w_, bias=b_, strides=strides, dilations=dilations, groups=groups, pad_type=pad_type, **extra), [x, w, b])
    nd = len(xshape) - 2
    if pad_type == "custom":
        pairs = [(pad[2 * i], pad[2 * i + 1]) for i in range(nd)]
    elif pad_type == "valid":
        pairs = [(0, 0)] * nd
    else:
        pairs = [_tf_same(xshape[2 + i], (wshape[2 + i] - 1) * dilations[i] + 1, strides[i], pad_type == "same_lower") for i in range(nd)]
    flat = [v for pair in reversed(pairs) for v in pair]
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nd]
    want = conv(F.pad(T(x), flat), T(w), T(b), strides, 0, dilations, groups).numpy()
    assert_close(got, want, what="conv")


@pytest.mark.parametrize(
    "stride,padding,output_padding,groups,dilation",
    [(2, 1, 1, 1, 1), (1, 0, 0, 1, 1), (2, 0, 0, 2, 1), (3, 2, 2, 1, 2)],
)
def test_conv_transpose_matches_torch(stride, padding, output_padding, groups, dilation):
    x, w, b = rand(1, 4, 5, 6), rand(4, 6 // groups, 3, 3), rand(6)
    want = F.conv_transpose2d(T(x), T(w), T(b), stride, padding, output_padding, groups, dilation).numpy()
    (got,) = run_single(
        lambda x_, w_, b_: mb.conv_transpose(x=x_, weight=w_, bias=b_, strides=[stride] * 2, dilations=[dilation] * 2, groups=groups,
                                             pad_type="custom", pad=[padding] * 4, output_shape=list(want.shape)),
        [x, w, b],
    )
    assert_close(got, want, what="conv_transpose")


@pytest.mark.parametrize("kind", ["max", "avg", "avg_exclude"])
@pytest.mark.parametrize("kernel,stride,pad,ceil", [(3, 2, 1, True), (2, 2, 0, False), (3, 1, 1, False), (3, 2, 0, True), (2, 3, 1, True)])
def test_pool_matches_torch(kind, kernel, stride, pad, ceil):
    x = rand(2, 3, 9, 10)
    op = mb.max_pool if kind == "max" else mb.avg_pool
    extra = {} if kind == "max" else {"exclude_padding_from_average": kind == "avg_exclude"}
    (got,) = run_single(lambda x_: op(x=x_, kernel_sizes=[kernel] * 2, strides=[stride] * 2, pad_type="custom", pad=[pad] * 4, ceil_mode=ceil, **extra), [x])
    if kind == "max":
        want = F.max_pool2d(T(x), kernel, stride, pad, ceil_mode=ceil)
    else:
        want = F.avg_pool2d(T(x), kernel, stride, pad, ceil_mode=ceil, count_include_pad=kind == "avg")
    assert_close(got, want.numpy(), what=f"{kind}_pool")


def test_pool_same_padding_and_l2_pool():
    x = rand(1, 2, 7, 8)
    got_max, got_l2 = run_single(
        lambda x_: (mb.max_pool(x=x_, kernel_sizes=[2, 3], strides=[2, 2], pad_type="same"),
                    mb.l2_pool(x=x_, kernel_sizes=[2, 2], strides=[2, 2], pad_type="valid")),
        [x],
    )
    # same: output ceil(in / stride); total padding (out - 1) * s + k - in, the odd pixel after
    padded = F.pad(T(x), (0, 1, 0, 1), value=float("-inf"))
    assert_close(got_max, F.max_pool2d(padded, (2, 3), 2).numpy(), what="max_pool same")
    assert_close(got_l2, F.lp_pool2d(T(x), 2, 2, 2).numpy(), what="l2_pool")


def test_normalization_kernels_match_torch():
    x = rand(2, 4, 5, 6)
    mean, var, gamma, beta = rand(4), rand(4, low=0.5, high=2), rand(4), rand(4)
    got_bn, got_in, got_lrn = run_single(
        lambda x_, m, v, g, b: (mb.batch_norm(x=x_, mean=m, variance=v, gamma=g, beta=b, epsilon=1e-3),
                                mb.instance_norm(x=x_, gamma=g, beta=b, epsilon=1e-5),
                                mb.local_response_norm(x=x_, size=3, alpha=1e-2, beta=0.6, k=1.5)),
        [x, mean, var, gamma, beta],
    )
    assert_close(got_bn, F.batch_norm(T(x), T(mean), T(var), T(gamma), T(beta), False, 0.0, 1e-3).numpy(), what="batch_norm")
    assert_close(got_in, F.instance_norm(T(x), weight=T(gamma), bias=T(beta), eps=1e-5).numpy(), what="instance_norm")
    assert_close(got_lrn, F.local_response_norm(T(x), 3, 1e-2, 0.6, 1.5).numpy(), what="local_response_norm")


def test_silu_crop_pixel_shuffle_gather_nd():
    x = rand(1, 8, 4, 5)
    idx = np.array([[[0, 1], [0, 7]], [[0, 3], [0, 0]]], np.int32)
    got_silu, got_crop, got_shuffle, got_unshuffle, got_nd = run_single(
        lambda x_, i: (mb.silu(x=x_), mb.crop(x=x_, crop_height=[1, 2], crop_width=[0, 3]),
                       mb.pixel_shuffle(x=x_, upscale_factor=2), mb.pixel_unshuffle(x=mb.pixel_shuffle(x=x_, upscale_factor=2), downscale_factor=np.uint32(2)),
                       mb.gather_nd(x=x_, indices=i)),
        [x, idx],
        opset=IOS16,
    )
    assert_close(got_silu, F.silu(T(x)).numpy(), what="silu")
    assert_close(got_crop, x[:, :, 1:2, 0:2], what="crop")
    assert_close(got_shuffle, F.pixel_shuffle(T(x), 2).numpy(), what="pixel_shuffle")
    assert_close(got_unshuffle, x, what="pixel_unshuffle")
    assert_close(got_nd, x[idx[..., 0], idx[..., 1]], what="gather_nd")


def test_one_hot_dequantize_resize_nearest_reshape_like():
    x = rand(1, 2, 4, 5)
    labels = np.array([[0, 3], [2, 1]], np.int32)
    data = RNG.integers(-128, 128, (2, 3, 4)).astype(np.int8)
    scale, zero = rand(3, low=0.01, high=0.1), np.array([3, -4, 0], np.int8)
    got_hot, got_deq, got_nearest, got_like = run_single(
        lambda x_, i, q, s, z: (
            mb.one_hot(indices=i, one_hot_vector_size=4, axis=1, on_value=2.0, off_value=-1.0),
            mb.dequantize(input=q, scale=s, zero_point=z, axis=1),
            mb.resize_nearest_neighbor(x=x_, target_size_height=7, target_size_width=3),
            mb.reshape_like(x=x_, ref_tensors=(x_,), begins=[0], ends=[2], end_masks=[True]),
        ),
        [x, labels, data, scale, zero],
    )
    hot = F.one_hot(T(labels).long(), 4).numpy() * 3.0 - 1.0
    assert_close(got_hot, np.moveaxis(hot, -1, 1), what="one_hot")
    assert_close(got_deq, (data.astype(np.float32) - zero.reshape(1, 3, 1)) * scale.reshape(1, 3, 1), what="dequantize")
    assert_close(got_nearest, F.interpolate(T(x), size=(7, 3), mode="nearest").numpy(), what="resize_nearest_neighbor")
    assert_close(got_like, x, what="reshape_like")


def test_depth_to_space_is_tensorflows_dcr_order():
    x = np.arange(48, dtype=np.float32).reshape(1, 8, 2, 3)
    got, back = run_single(lambda x_: (mb.depth_to_space(x=x_, block_size=2), mb.space_to_depth(x=mb.depth_to_space(x=x_, block_size=2), block_size=2)), [x])
    # TF / ONNX DCR: output[n, c, h*b + i, w*b + j] = input[n, (i*b + j)*C + c, h, w]
    want = np.empty((1, 2, 4, 6), np.float32)
    for c in range(2):
        for i in range(2):
            for j in range(2):
                want[0, c, i::2, j::2] = x[0, (i * 2 + j) * 2 + c]
    assert_close(got, want, what="depth_to_space")
    assert_close(back, x, what="space_to_depth inverts depth_to_space")


# coremltools' documented grids for an input of 2 samples (resize_bilinear's docstring): an
# input [0, 1] interpolates to exactly the source positions
RESIZE_GRIDS = {
    ("UNALIGN_CORNERS", 5): [0.0, 0.1, 0.5, 0.9, 1.0],
    ("STRICT_ALIGN_CORNERS", 5): [0.0, 0.25, 0.5, 0.75, 1.0],
    ("ALIGN_CORNERS", 5): [0.0, 0.25, 0.5, 0.75, 1.0],
    ("DEFAULT", 5): [0.0, 0.4, 0.8, 1.0, 1.0],
    ("OFFSET_CORNERS", 5): [0.1, 0.3, 0.5, 0.7, 0.9],
    ("UNALIGN_CORNERS", 6): [0.0, 0.0, 1 / 3, 2 / 3, 1.0, 1.0],
    ("STRICT_ALIGN_CORNERS", 6): [0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
    ("DEFAULT", 6): [0.0, 1 / 3, 2 / 3, 1.0, 1.0, 1.0],
    ("OFFSET_CORNERS", 6): [1 / 12, 0.25, 5 / 12, 7 / 12, 0.75, 11 / 12],
}


@pytest.mark.parametrize("mode,size", list(RESIZE_GRIDS), ids=[f"{m}-{s}" for m, s in RESIZE_GRIDS])
def test_resize_bilinear_follows_documented_grids(mode, size):
    ramp = np.array([0.0, 1.0], np.float32).reshape(1, 1, 1, 2)
    (got,) = run_single(lambda x_: mb.resize_bilinear(x=x_, target_size_height=1, target_size_width=size, sampling_mode=mode), [ramp])
    assert_close(got.reshape(-1), np.array(RESIZE_GRIDS[(mode, size)], np.float32), what=mode)


@pytest.mark.parametrize("align", [True, False])
def test_upsample_kernels_match_torch(align):
    x = rand(1, 2, 4, 5)
    got_bilinear, got_nearest, got_resize = run_single(
        lambda x_: (mb.upsample_bilinear(x=x_, scale_factor_height=2.0, scale_factor_width=3.0, align_corners=align),
                    mb.upsample_nearest_neighbor(x=x_, scale_factor_height=2.0, scale_factor_width=3.0),
                    mb.resize(x=x_, shape=[7, 9], resized_dims=np.uint32(2), interpolation_mode="LINEAR",
                              sampling_mode="STRICT_ALIGN_CORNERS" if align else "UNALIGN_CORNERS")),
        [x],
    )
    assert_close(got_bilinear, F.interpolate(T(x), size=(8, 15), mode="bilinear", align_corners=align).numpy(), what="upsample_bilinear")
    assert_close(got_nearest, F.interpolate(T(x), scale_factor=(2, 3), mode="nearest").numpy(), what="upsample_nearest_neighbor")
    assert_close(got_resize, F.interpolate(T(x), size=(7, 9), mode="bilinear", align_corners=align).numpy(), what="resize")


def _torch_lstm_weights(lstm: nn.LSTM, suffix: str = "") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PyTorch's (i, f, g, o) gate blocks reordered to MIL's (i, f, o, g), biases summed."""
    def reorder(t):
        i, f, g, o = t.detach().chunk(4)
        return torch.cat([i, f, o, g]).numpy()

    w_ih = getattr(lstm, f"weight_ih_l0{suffix}")
    w_hh = getattr(lstm, f"weight_hh_l0{suffix}")
    bias = getattr(lstm, f"bias_ih_l0{suffix}") + getattr(lstm, f"bias_hh_l0{suffix}")
    return reorder(w_ih), reorder(w_hh), reorder(bias)


@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
@pytest.mark.parametrize("output_sequence", [True, False])
def test_lstm_matches_torch(direction, output_sequence):
    torch.manual_seed(0)
    bidirectional = direction == "bidirectional"
    lstm = nn.LSTM(5, 6, bidirectional=bidirectional).eval()
    x = rand(7, 2, 5)
    dirs = 2 if bidirectional else 1
    h0, c0 = rand(dirs, 2, 6), rand(dirs, 2, 6)
    with torch.no_grad():
        y, (hn, cn) = lstm(T(x), (T(h0), T(c0)))
    w_ih, w_hh, b = _torch_lstm_weights(lstm)
    arrays = [x, np.concatenate(list(h0), -1), np.concatenate(list(c0), -1), w_ih, w_hh, b]
    extra_names = []
    if bidirectional:
        arrays += list(_torch_lstm_weights(lstm, "_reverse"))
        extra_names = ["weight_ih_back", "weight_hh_back", "bias_back"]

    def make(x_, h_, c_, wi, wh, bb, *back):
        return mb.lstm(x=x_, initial_h=h_, initial_c=c_, weight_ih=wi, weight_hh=wh, bias=bb, direction=direction,
                       output_sequence=output_sequence, **dict(zip(extra_names, back)))

    got_y, got_h, got_c = run_single(make, arrays)
    want_h = torch.cat(list(hn), -1).numpy()
    assert_close(got_h, want_h, what="lstm h")
    assert_close(got_c, torch.cat(list(cn), -1).numpy(), what="lstm c")
    if output_sequence:
        assert_close(got_y, y.numpy(), what="lstm sequence")
    else:
        assert_close(got_y, want_h[None], what="lstm last")


# --------------------------------------------------------------------------- compressed weights


def _materialized(program):
    """coremltools' own decompression of every constexpr op, by output var name."""
    found = {}
    for op in program.functions["main"].operations:
        if op.op_type.startswith("constexpr_"):
            value = op.materialized_val_inference()
            values = value if isinstance(value, tuple) else (value,)
            for var, val in zip(op.outputs, values):
                found[var.name] = val
    return found


def _interpret_constexpr(program):
    interpreter = MILInterpreter(program)
    return {name: value.numpy() for name, value in interpreter._constants.items() if isinstance(value, torch.Tensor)}


def _check_decompression(make, arrays, opset):
    program, _ = build(make, arrays, opset)
    theirs = _materialized(program)
    ours = _interpret_constexpr(program)
    assert theirs, "no constexpr op in the program"
    for name, want in theirs.items():
        got = ours[name]
        want = np.asarray(want)
        if want.dtype == np.bool_ or np.issubdtype(want.dtype, np.integer):
            np.testing.assert_array_equal(got.astype(want.dtype), want, err_msg=name)
        else:
            np.testing.assert_array_equal(got.astype(np.float32), want.astype(np.float32), err_msg=name)


def _packed(values: np.ndarray, nbits: int) -> np.ndarray:
    bits = ((values.reshape(-1, 1) >> np.arange(nbits)) & 1).astype(np.uint8).reshape(-1)
    return np.packbits(bits, bitorder="little")


@pytest.mark.parametrize("nbits", [1, 2, 4, 6, 8])
def test_ios16_palette_decompresses_like_coremltools(nbits):
    shape = (5, 3, 7)
    indices = RNG.integers(0, 2**nbits, size=shape)
    lut = rand(2**nbits).astype(np.float16)
    _check_decompression(
        lambda i, l, s: mb.constexpr_lut_to_dense(indices=i, lut=l, shape=s),
        [_packed(indices, nbits), lut, np.array(shape, np.uint32)], IOS16,
    )


def test_ios16_quantized_sparse_and_cast_decompress_like_coremltools():
    data = RNG.integers(-128, 128, (4, 3, 5)).astype(np.int8)
    dense = rand(6, 7).astype(np.float16)
    dense[RNG.random((6, 7)) < 0.6] = 0
    mask = dense.reshape(-1) != 0
    _check_decompression(
        lambda q, z, s, a, nz, m, sh, hv: (
            mb.constexpr_affine_dequantize(quantized_data=q, zero_point=z, scale=s, axis=a),
            mb.constexpr_sparse_to_dense(nonzero_data=nz, mask=m, shape=sh),
            mb.constexpr_cast(source_val=hv, output_dtype="fp32"),
        ),
        [data, np.array([1, -2, 3], np.int8), rand(3, low=0.01, high=0.1), np.int32(1),
         dense.reshape(-1)[mask], np.packbits(mask.astype(np.uint8), bitorder="little"), np.array((6, 7), np.uint32), rand(3, 4).astype(np.float16)],
        IOS16,
    )


def test_ios18_compressed_weights_decompress_like_coremltools():
    uint4 = types.np_uint4_dtype
    indices = RNG.integers(0, 16, (8, 6)).astype(uint4)
    grouped_lut = rand(2, 1, 16, 1).astype(np.float16)  # a palette per half of the rows
    vector_lut = rand(1, 1, 16, 2).astype(np.float16)  # palettes of 2-vectors along axis 0
    data = RNG.integers(-8, 8, (8, 6)).astype(np.int8)
    scale = rand(4, 2, low=0.01, high=0.1)  # blocks of 2 x 3
    offset = RNG.integers(-2, 3, (4, 2)).astype(np.int8)
    mask = (RNG.random((8, 6)) < 0.5).astype(types.np_uint1_dtype)
    count = int(mask.sum())
    _check_decompression(
        lambda i, gl, vl, d, s, o, m, nz, nzi, nzq: (
            mb.constexpr_lut_to_dense(indices=i, lut=gl),
            mb.constexpr_lut_to_dense(indices=i, lut=vl, vector_axis=0),
            mb.constexpr_blockwise_shift_scale(data=d, scale=s, offset=o),
            mb.constexpr_sparse_to_dense(nonzero_data=nz, mask=m),
            mb.constexpr_lut_to_sparse(indices_mask=m, indices_nonzero_data=nzi, lut=gl),
            mb.constexpr_sparse_blockwise_shift_scale(data_mask=m, nonzero_data=nzq, scale=s, offset=o),
        ),
        [indices, grouped_lut, vector_lut, data, scale, offset, mask, rand(count), RNG.integers(0, 16, count).astype(uint4),
         RNG.integers(-8, 8, count).astype(np.int8)],
        IOS18,
    )


# --------------------------------------------------------------------------- what the interpreter refuses


def test_an_op_without_kernel_is_an_error_naming_it():
    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 4, 6))], opset_version=IOS17)
    def program(x):
        return mb.sliding_windows(x=x, axis=1, size=2, stride=1)

    with pytest.raises(MILError, match="cannot validate: MIL op sliding_windows not implemented"):
        MILInterpreter(program)


def test_control_flow_is_an_error_not_a_skip():
    @mb.program(input_specs=[mb.TensorSpec(shape=(2,))], opset_version=IOS17)
    def program(x):
        return mb.cond(pred=mb.greater(x=mb.reduce_sum(x=x), y=0.0),
                       _true_fn=lambda: mb.mul(x=x, y=2.0), _false_fn=lambda: mb.mul(x=x, y=-1.0))

    with pytest.raises(MILError, match="cannot validate: MIL op cond"):
        MILInterpreter(program)


def test_an_unsupported_parameter_is_an_error_naming_it():
    @mb.program(input_specs=[mb.TensorSpec(shape=(3, 1, 2))], opset_version=IOS17)
    def program(x):
        state = np.zeros((1, 4), np.float32)
        return mb.lstm(x=x, initial_h=state, initial_c=state, weight_ih=rand(16, 2), weight_hh=rand(16, 4), clip=1.0)[0]

    interpreter = MILInterpreter(program)
    with pytest.raises(MILError, match="cannot validate: MIL op lstm with lstm with clip not implemented"):
        interpreter.run({"x": rand(3, 1, 2)})


def test_a_kernel_giving_the_wrong_shape_is_caught(monkeypatch):
    program, _ = build(lambda x: mb.relu(x=x), [X], IOS17)
    monkeypatch.setitem(mil_kernels.KERNELS, "relu", lambda a: a["x"][:1])
    with pytest.raises(MILError, match="produced shape"):
        interpret(program)


# --------------------------------------------------------------------------- whole programs from ct.convert


class Layers(nn.Module):
    """One of each layer family coremltools' torch frontend lowers to its own MIL ops."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=8)
        self.up = nn.ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1)
        self.inorm = nn.InstanceNorm2d(4, affine=True)
        self.gn = nn.GroupNorm(2, 4)
        self.bn = nn.BatchNorm2d(4)
        self.prelu = nn.PReLU(4)
        self.ln = nn.LayerNorm(16)
        self.fc = nn.Linear(16, 5)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.3, 0.3)
            self.bn.running_var.uniform_(0.5, 1.5)
            self.inorm.weight.uniform_(0.5, 1.5)

    def forward(self, image):
        y = F.hardswish(self.conv(image))
        y = F.hardsigmoid(self.dw(y)) * y + F.gelu(y) - torch.tanh(y) + F.silu(y) * F.relu6(y) * torch.sigmoid(y)
        y = F.max_pool2d(y, 3, 2, 1, ceil_mode=True)
        y = F.avg_pool2d(y, 2, 1)
        y = self.prelu(self.bn(self.gn(self.inorm(self.up(y)))))
        y = F.elu(F.leaky_relu(y, 0.1))
        y = F.interpolate(y, scale_factor=2, mode="nearest")
        y = F.interpolate(y, size=(16, 16), mode="bilinear", align_corners=False)
        y = F.pad(F.pad(y, (1, 1, 2, 0), mode="reflect"), (0, 1, 1, 0), value=0.5)[:, :, 1:17, 1:17]
        a, b = torch.split(y, 2, dim=1)
        y = torch.cat([b, a * b], dim=1).reshape(1, 4, 256).permute(0, 2, 1)
        y = torch.softmax(y, -1) + torch.log_softmax(y, 1)
        pooled = y.mean(1) + y.amax(1) + torch.sqrt(y.abs() + 1).amin(1)
        z = self.fc(self.ln(y[:, :16, :].transpose(1, 2)))
        return z.flatten(1)[:, :4] + pooled + torch.exp(-pooled) * torch.erf(pooled) + torch.clamp(pooled, -0.5, 0.5)


def _convert(module, example, precision, target=ct.target.iOS15):
    traced = torch.jit.trace(module, example)
    return ct.convert(
        traced, inputs=[ct.TensorType(name="image", shape=example[0].shape, dtype=np.float32)],
        outputs=[ct.TensorType(name="scores", dtype=np.float32)], convert_to="mlprogram",
        compute_precision=ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16,
        minimum_deployment_target=target, skip_model_load=True,
    )


@pytest.fixture(scope="module")
def layers_packages(tmp_path_factory):
    torch.manual_seed(0)
    module = Layers().eval()
    example = (torch.randn(1, 3, 16, 16),)
    folder = tmp_path_factory.mktemp("layers")
    paths = {}
    for precision in ("fp32", "fp16"):
        path = folder / f"layers_{precision}.mlpackage"
        _convert(module, example, precision, ct.target.iOS17).save(str(path))
        paths[precision] = path
    return module, paths


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_converted_layer_zoo_matches_torch(layers_packages, precision):
    module, paths = layers_packages
    package = load_package(paths[precision])
    interpreter = MILInterpreter(package.program, package.function)
    assert interpreter.fp16 == (precision == "fp16")
    assert program_precision(package.program) == precision
    for op in ("conv", "conv_transpose", "instance_norm", "layer_norm", "upsample_bilinear", "upsample_nearest_neighbor", "pad", "sigmoid_hard"):
        assert op in interpreter.op_counts, f"coremltools no longer emits {op}; the test lost its coverage"
    rng = np.random.default_rng(1)
    worst = 0.0
    for _ in range(3):
        x = rng.standard_normal((1, 3, 16, 16)).astype(np.float32)
        got = interpreter.run({"image": x})["scores"]
        with torch.no_grad():
            want = module(T(x)).numpy()
        worst = max(worst, float(np.max(np.abs(got - want))))
    peak = float(np.max(np.abs(want)))
    if precision == "fp32":
        assert worst < 1e-4 * max(1.0, peak)
    else:
        assert worst < 0.05 * max(1.0, peak)  # fp16 storage through ~60 ops
        assert worst > 0.0  # fp16 emulation really rounds


def test_keep_all_returns_every_intermediate(layers_packages):
    _, paths = layers_packages
    package = load_package(paths["fp32"])
    interpreter = MILInterpreter(package.program)
    values = interpreter.run({"image": np.zeros((1, 3, 16, 16), np.float32)}, keep_all=True)
    assert "scores" in values and len(values) > 50
    assert interpreter.describe()["ops"] > 50


def test_fp16_emulation_rounds_between_ops():
    # 1 + 2**-11 is not an fp16 number: an fp16 program must lose it, an fp32 one must keep it
    x = np.array([2.0**-11], np.float32)

    def make(dtype):
        return lambda x_: mb.add(x=mb.add(x=x_, y=dtype(1.0)), y=dtype(-1.0))

    program32, outs32 = build(make(np.float32), [x], IOS17)
    program16, outs16 = build(make(np.float16), [x.astype(np.float16)], IOS17)
    assert interpret(program32)[outs32[0].name][0] == pytest.approx(2.0**-11)
    assert interpret(program16)[outs16[0].name][0] == 0.0
