"""An int8 reference edgex builds itself: the torch model, simulated-quantized.

The artifact's own scales cannot judge the artifact (a coarsened output scale widens its own
tolerance), so the quantization error an honest converter would make is measured here, from the
torch model alone, with the scheme the target uses:

- ``int8`` (full int8, int8 I/O): BatchNorm folded into the convolution before it (as every
  converter does), weights per output channel symmetric int8 ([-127, 127]), activations per
  tensor affine int8 ([-128, 127]) with min/max ranges from the calibration data (of the float
  model), the model's inputs and outputs quantized too. Quantization points are where TFLite
  and ONNX QDQ put them: after a fused conv/linear/add + ReLU/ReLU6, not between; after every
  other computing op (add, mul, concat, pooling, linear, softmax...); never after ops that only
  move values already on the grid (reshape, transpose, max-pool, slice...). Biases stay float
  (int32 in an artifact, whose error is far below one output step).
- ``dynamic-int8``: weights per output channel symmetric int8, activations float.

Where an artifact quantizes otherwise it says so (``ArtifactIO.quantization``) and the simulation
follows: 7-bit weights, symmetric or 16-bit activations, palettes, ops on their input's grid,
small weights left float (Core ML), NNCF's bias correction and float model outputs (OpenVINO).

The simulation runs an ``torch.fx`` interpreter over the ``torch.export`` graph, so programs
loaded from ``.pt2`` work as nn.Modules do. A recurrent op (LSTM, GRU, RNN) is simulated the way
the target says its artifact quantizes one (``ArtifactIO.quantization["recurrent"]``,
:data:`RECURRENT_FORMS`): ``unrolled`` (LiteRT: written out per step by PyTorch's own
decomposition, every linear, sigmoid, tanh, mul and add an int8 op like any other), ``float``
(XNNPACK's and onnxruntime's QDQ quantizers annotate no recurrent op: it runs in float32, its
weights too, and what reads its output quantizes it) or ``int8_weights`` (NNCF and Core ML keep
the op whole on weights int8 per gate row). fp16 always writes recurrences out per step. A target
that declares none gets :class:`CannotSimulate`, naming the op. (A target that converts an LSTM written out per step,
``lstm-steps``, gets the simulation of that rewritten model: ``pipeline.Reference.simulated``.)

:func:`vacuous_reference` says when a reference's outputs cannot judge any artifact at all.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from edgex.core.errors import UsageError

Outputs = list[list[np.ndarray]]  # [sample][output]
SCHEMES = ("int8", "dynamic-int8", "fp16")
EPS32 = 2.0**-23

#: ops whose output holds only values of their input (on its int8 grid): no new quantization point
_MOVES_VALUES = frozenset(
    """view _unsafe_view reshape flatten unflatten permute transpose t squeeze unsqueeze expand
    expand_as contiguous clone select slice narrow split split_with_sizes chunk unbind
    max_pool1d max_pool2d max_pool3d max_pool2d_with_indices max_pool3d_with_indices dropout
    feature_dropout alias detach lift_fresh_copy repeat flip roll pixel_shuffle pixel_unshuffle
    channel_shuffle constant_pad_nd getitem _assert_tensor_metadata _assert_scalar sym_size
    sym_numel""".split()
)
#: activations a converter fuses into the op before them (the int8 range then clamps)
_FUSED_ACTIVATIONS = frozenset({"relu", "relu_", "relu6", "hardtanh", "hardtanh_", "clamp", "clamp_"})
#: ops that take a fused activation (TFLite's fused_activation_function, ONNX QDQ Conv+Relu)
_TAKES_ACTIVATION = frozenset({"conv1d", "conv2d", "conv3d", "convolution", "linear", "add", "add_", "sub", "mul", "batch_norm"})
_CONVOLUTIONS = frozenset({"conv1d", "conv2d", "conv3d", "convolution"})
_TRANSPOSED_CONVOLUTIONS = frozenset({"conv_transpose1d", "conv_transpose2d", "conv_transpose3d"})
#: recurrent ops: their weights live inside one op, which each converter quantizes its own way
_RECURRENT = frozenset({"lstm", "gru", "rnn_tanh", "rnn_relu", "lstm_cell", "gru_cell", "rnn_tanh_cell", "rnn_relu_cell", "_thnn_fused_lstm_cell"})
#: how an artifact quantizes a recurrent op (``ArtifactIO.quantization["recurrent"]``):
#: ``unrolled``: written out per step into int8 linear, sigmoid, tanh, mul, add (LiteRT);
#: ``float``: kept one float32 op, weights float too, its output quantized where it is read
#: (XNNPACK's quantizer, onnxruntime's static QDQ quantizer);
#: ``int8_weights``: kept one op on weights int8 per gate row (NNCF's LSTMSequence, Core ML's lstm)
RECURRENT_FORMS = ("unrolled", "float", "int8_weights")
#: ops that make a tensor of zeros (nn.LSTM's initial state): zeros need no quantization point,
#: and a converter folds what multiplies or adds them away (LiteRT's unrolled LSTM has no f * c0)
_ZEROS = frozenset({"zeros", "zeros_like", "new_zeros"})


class CannotSimulate(UsageError):
    """The model holds something the int8 simulation cannot reproduce honestly."""


class RecurrentOp(CannotSimulate):
    """The model holds a recurrent op, and the target did not say how its artifact quantizes one."""


@dataclass(frozen=True)
class SimulatedReference:
    """The simulated-quantized outputs, and what a judge needs to read them."""

    scheme: str
    #: [sample][output], shaped like ``edgex.core.parity.reference_outputs``
    outputs: Outputs
    #: per output: the (min, max) its int8 quantization was calibrated to (None for dynamic-int8)
    output_ranges: tuple[tuple[float, float] | None, ...]
    quantized_weights: int
    folded_batch_norms: int
    activation_points: int
    calibration_samples: int
    seconds: float
    weight_bits: int = 8
    symmetric_activations: bool = False
    palettize_bits: int | None = None
    #: 16: TFLite's 16x8 mode (int16 activations, symmetric, zero point 0; int8 weights)
    activation_bits: int = 8
    #: conv/linear weights left float (at most ``float_weights_up_to`` elements), and biases corrected (NNCF)
    float_weights: int = 0
    corrected_biases: int = 0
    float_outputs: bool = False
    #: dynamic-int8: each weighted op's input quantized at run time (a dynamic-range kernel's)
    dynamic_inputs: bool = False
    #: every calibrated activation range (:func:`range_diagnostics`), with what is wrong with it
    ranges: tuple[dict[str, Any], ...] = ()
    #: how the model's recurrent ops were simulated (RECURRENT_FORMS), with how many; None without one
    recurrent: str | None = None
    recurrent_ops: int = 0
    #: the torch modules kept wider (``WiderLayers``), at ``"float"`` or ``"int16"``, and how many
    #: of the simulation's quantized nodes (weights and values) they hold
    kept_wider: tuple[str, ...] = ()
    wider_as: str | None = None
    wider_nodes: int = 0

    def flagged_ranges(self) -> list[dict[str, Any]]:
        return [r for r in self.ranges if r["flags"]]

    def output_step(self, index: int) -> float | None:
        """One output step of output ``index`` as calibrated here (range / 255; int16: max|x| / 32767); None without one."""
        bounds = self.output_ranges[index]
        if bounds is None:
            return None
        return int16_scale(*bounds) if self.activation_bits == 16 else affine_qparams(*bounds)[0]

    def describe(self) -> str:
        weights = f"{self.quantized_weights} weights per-channel symmetric int8" + (f" ({self.weight_bits}-bit range)" if self.weight_bits != 8 else "")
        if self.palettize_bits:
            weights = f"{self.quantized_weights} weights palettized to {2 ** self.palettize_bits} k-means values per tensor"
        if self.float_weights:
            weights += f", {self.float_weights} small weights float"
        if self.corrected_biases:
            weights += f", {self.corrected_biases} biases corrected on the calibration data"
        if self.scheme == "fp16":
            how = "weights, inputs and every op's output rounded to fp16, arithmetic inside each op fp32"
        elif self.scheme == "dynamic-int8":
            how = f"{weights}, " + ("each weighted op's input int8 on its own range per row / sample as the kernel runs, other activations float" if self.dynamic_inputs else "activations float")
        else:
            kind = "symmetric int16" if self.activation_bits == 16 else f"{'symmetric ' if self.symmetric_activations else ''}int8"
            io = "int16" if self.activation_bits == 16 else "int8"
            io = f"{io} inputs, float outputs" if self.float_outputs else f"{io} I/O"
            io += " (inputs read only by a float recurrent op stay float)" if self.recurrent == "float" else ""
            how = (
                f"{self.folded_batch_norms} BatchNorms folded, {weights}, "
                f"{self.activation_points} activations per-tensor {kind} (min/max of {self.calibration_samples} calibration samples), {io}"
            )
        if self.recurrent_ops:
            how += (f"; {self.recurrent_ops} recurrent op(s) written out per step (PyTorch's decomposition), quantized like every op" if self.recurrent == "unrolled"
                    else f"; {self.recurrent_ops} recurrent op(s) kept whole, on int8 weights per gate row" if self.recurrent == "int8_weights"
                    else f"; {self.recurrent_ops} recurrent op(s) kept float32, weights too, quantized where their outputs are read")
        if self.kept_wider:
            how += (f"; mixed precision: {', '.join(self.kept_wider)} kept {self.wider_as} ({self.wider_nodes} quantization points), "
                    "int8 where their values cross into int8 ops")
        return f"edgex's own simulated {self.scheme} reference: {how}"


# --------------------------------------------------------------------------- fake quantization


def fake_quant_weight(weight: Any, axis: int = 0, bits: int = 8) -> Any:
    """Per-channel symmetric int8 along ``axis`` ([-127, 127], scale max|w| / 127; with ``bits=7``,
    onnxruntime's reduce_range, [-63, 63]), dequantized."""
    import torch

    top = 2 ** (bits - 1) - 1
    reduce = [d for d in range(weight.ndim) if d != axis]
    peak = weight.detach().abs().amax(dim=reduce) if reduce else weight.detach().abs()
    scale = torch.where(peak > 0, peak / top, torch.ones_like(peak)).to(torch.float32)
    zero = torch.zeros_like(scale, dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(weight.to(torch.float32), scale, zero, axis, -top, top).to(weight.dtype)


def fake_quant_dynamic(x: Any, per_row: bool) -> Any:
    """What a dynamic-range (hybrid) kernel does to its float input as it runs: int8, asymmetric,
    on the range of each row (a fully connected layer's, TFLite's FULLY_CONNECTED and XNNPACK's
    qd8) or of each sample (a convolution's: TFLite's EvalHybridPerChannel quantizes each batch
    element with AsymmetricQuantizeFloats)."""
    import torch

    flat = x.reshape(-1, x.shape[-1]) if per_row else x.reshape(x.shape[0], -1)
    low = flat.amin(dim=1, keepdim=True).clamp(max=0.0)
    high = flat.amax(dim=1, keepdim=True).clamp(min=0.0)
    scale = ((high - low) / 255.0).clamp(min=1e-12)
    zero = -128.0 - torch.round(low / scale)
    return ((torch.clamp(torch.round(flat / scale) + zero, -128, 127) - zero) * scale).reshape(x.shape)


def to_fp16(value: Any) -> Any:
    """An fp32 tensor rounded to fp16's grid, kept fp32 (arithmetic stays fp32, as the fp16 kernels
    of TensorRT, LiteRT and onnxruntime's CPU provider accumulate); anything else as it is."""
    import torch

    if isinstance(value, torch.Tensor) and value.dtype == torch.float32:
        return value.to(torch.float16).to(torch.float32)
    return value


def fake_palettize_weight(weight: Any, bits: int) -> Any:
    """The weight replaced by the nearest of 2**bits values found by k-means over the whole tensor
    (Core ML's per-tensor k-means palettization, which runs scikit-learn's KMeans likewise)."""
    import torch
    from sklearn.cluster import KMeans

    values = weight.detach().to(torch.float32).reshape(-1, 1).numpy()
    clusters = min(2**bits, len(np.unique(values)))
    kmeans = KMeans(n_clusters=clusters, n_init=1, random_state=0).fit(values)
    palette = kmeans.cluster_centers_.astype(np.float32).ravel()
    return torch.from_numpy(palette[kmeans.labels_].reshape(tuple(weight.shape))).to(weight.dtype)


def affine_qparams(low: float, high: float) -> tuple[float, int]:
    """int8 scale and zero point for the range [low, high] (widened to hold 0, as converters do)."""
    low, high = min(low, 0.0), max(high, 0.0)
    scale = max(high - low, 1e-12) / 255.0
    zero = int(np.clip(round(-128 - low / scale), -128, 127))
    return scale, zero


def int16_scale(low: float, high: float) -> float:
    """The step of TFLite's 16x8 activations over [low, high]: symmetric int16, zero point 0."""
    return max(abs(low), abs(high), 1e-12) / 32767.0


def fake_quant_activation(x: Any, low: float, high: float, symmetric: bool = False, bits: int = 8) -> Any:
    """Per-tensor int8 over the calibrated [low, high]: affine, or with ``symmetric`` zero point 0
    and scale max(|low|, |high|) / 127 (TensorRT's scheme); ``bits=16`` is TFLite's 16x8
    activations: symmetric int16, scale max(|low|, |high|) / 32767."""
    import torch

    if bits == 16:
        return torch.fake_quantize_per_tensor_affine(x.to(torch.float32), int16_scale(low, high), 0, -32767, 32767).to(x.dtype)
    if symmetric:
        scale, zero = max(abs(low), abs(high), 1e-12) / 127.0, 0
        return torch.fake_quantize_per_tensor_affine(x.to(torch.float32), scale, zero, -127, 127).to(x.dtype)
    scale, zero = affine_qparams(low, high)
    return torch.fake_quantize_per_tensor_affine(x.to(torch.float32), scale, zero, -128, 127).to(x.dtype)


# --------------------------------------------------------------------------- the graph plan


def _op_name(node: Any) -> str:
    target = node.target
    if node.op != "call_function":
        return ""
    name = getattr(target, "_opname", None) or getattr(target, "__name__", "")
    return str(name)


def _weight_axis(node: Any) -> int | None:
    """Which argument-1 axis holds the output channels, for ops whose argument 1 is a weight."""
    name = _op_name(node)
    if name in _CONVOLUTIONS:
        transposed = name == "convolution" and len(node.args) > 6 and bool(node.args[6])
        return 1 if transposed else 0
    if name in _TRANSPOSED_CONVOLUTIONS:
        return 1
    if name == "linear":
        return 0
    return None


@dataclass
class _Plan:
    weight_axis: dict[Any, int]  # conv/linear node -> output-channel axis of its weight
    folds: dict[Any, Any]  # conv node -> the BatchNorm node folded into it
    folded: set[Any]  # BatchNorm nodes folded away (identity at run time)
    points: set[Any]  # nodes whose output is quantized (int8 scheme)
    inputs: list[Any]  # user input placeholders (quantized in the int8 scheme)
    recurrent_ops: int = 0  # recurrent ops (decomposed or kept float)
    #: a recurrent op is run as one op: batches are never stacked into one call (aten.lstm does not
    #: check its initial state's batch against its input's, baked at batch 1 by the export, and crashes)
    unstackable: bool = False
    #: ``int8_weights``: a recurrent op kept whole computes in float on its weights quantized per
    #: gate row (those over ``float_weights_up_to`` elements), as Core ML's compressed lstm does
    recurrent_weights: bool = False


def _constant(node: Any) -> bool:
    return node is None or getattr(node, "op", None) == "get_attr"


def _plan(graph_module: Any, recurrent: str | None = None, decomposed: int = 0) -> _Plan:
    graph = graph_module.graph
    floats = set()  # float32 values: a recurrent op kept float, its results and what only moves them
    for node in graph.nodes:
        if _op_name(node) in _RECURRENT:
            if recurrent not in ("float", "int8_weights"):
                raise (RecurrentOp if recurrent is None else CannotSimulate)(
                    f"edgex cannot build its own int8 reference for this model: it holds a recurrent op ({_op_name(node)}) "
                    + ("that PyTorch's decomposition did not write out" if recurrent == "unrolled" else
                       "and the target does not say how its artifact quantizes one (ArtifactIO.quantization 'recurrent': "
                       + " or ".join(RECURRENT_FORMS) + ")")
                )
            floats.add(node)
        elif node.op == "call_function" and (_op_name(node) in _MOVES_VALUES) and node.args and node.args[0] in floats:
            floats.add(node)
    zeros = set()  # tensors of zeros (the initial state) and what is computed from them alone
    for node in graph.nodes:
        name, args = _op_name(node), [a for a in node.args if hasattr(a, "op")]
        if name in _ZEROS or (args and ((name in _MOVES_VALUES and args[0] in zeros) or (name in ("mul", "mul_") and any(a in zeros for a in args)))):
            zeros.add(node)
    weight_axis = {n: axis for n in graph.nodes if (axis := _weight_axis(n)) is not None and len(n.args) > 1}
    folds: dict[Any, Any] = {}
    for conv in weight_axis:
        if _op_name(conv) not in _CONVOLUTIONS or weight_axis[conv] != 0 or len(conv.users) != 1:
            continue
        (bn,) = conv.users
        args = list(bn.args)
        # aten.batch_norm(input, weight, bias, running_mean, running_var, training, momentum, eps, cudnn)
        if _op_name(bn) == "batch_norm" and args[0] is conv and len(args) >= 8 and not args[5] and all(_constant(a) for a in args[1:5]) and _constant(conv.args[1]):
            folds[conv] = bn
    folded = set(folds.values())

    def fusable_into_activation(node: Any) -> bool:
        if len(node.users) != 1:
            return False
        (user,) = node.users
        return _op_name(user) in _FUSED_ACTIVATIONS and user.args[0] is node

    def reads_zero(node: Any) -> bool:  # x + 0, x - 0: the converter folds it to x, already on its grid
        return _op_name(node) in ("add", "add_", "sub", "sub_") and len(node.args) > 1 and node.args[1] in zeros or (_op_name(node) in ("add", "add_") and node.args[0] in zeros)

    points: set[Any] = set()
    for node in graph.nodes:
        name = _op_name(node)
        if node in zeros or reads_zero(node) or name in _RECURRENT:
            continue
        if node in floats:  # moved out of a float recurrent op: quantized here, where it is read (its consumer's input)
            if any(u not in floats for u in node.users):
                points.add(node)
            continue
        if node.op != "call_function" or name in _MOVES_VALUES or node in folds:
            if name == "getitem" and _op_name(node.args[0]) not in _MOVES_VALUES:
                points.add(node)  # one result of a multi-output op (e.g. native_layer_norm)
            continue
        head = node.args[0] if node in folded else node
        if (_op_name(head) in _TAKES_ACTIVATION or node in folded) and fusable_into_activation(node):
            continue  # quantized after the fused activation
        points.add(node)

    def read_as_float(node: Any) -> bool:  # an input only a float recurrent op reads (through moves): never quantized
        users = list(node.users)
        return bool(users) and all(_op_name(u) in _RECURRENT or (_op_name(u) in _MOVES_VALUES and read_as_float(u)) for u in users)

    inputs = [n for n in graph.nodes if n.op == "placeholder" and not (recurrent == "float" and floats and read_as_float(n))]
    kept = len(floats & {n for n in graph.nodes if _op_name(n) in _RECURRENT})
    return _Plan(weight_axis, folds, folded, points, inputs, kept or decomposed, bool(kept), recurrent == "int8_weights" and bool(kept))


def _export(module: Any, example_inputs: tuple[np.ndarray, ...], recurrent: str | None = None) -> tuple[Any, int]:
    """The exported graph, and how many recurrent ops were written out per step (``unrolled``)."""
    import torch

    tensors = tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in example_inputs)
    graph_module = module if hasattr(module, "graph") and isinstance(module, torch.fx.GraphModule) else None
    decomposed = 0
    try:
        exported = torch.export.export(module, tensors, strict=False)
        if recurrent == "unrolled":
            exported, decomposed = _unroll_recurrent(exported)
        graph_module = exported.module(check_guards=False)  # the guards pin batch 1; stacked batches are checked in _run
    except Exception as exc:
        if graph_module is None:
            raise CannotSimulate(f"edgex cannot build its own int8 reference: torch.export failed ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})") from exc
    return graph_module, decomposed


def _unroll_recurrent(exported: Any) -> tuple[Any, int]:
    """Recurrent ops written out per step by PyTorch's own decompositions, as litert-torch lowers
    them (its .tflite of an LSTM: one FULLY_CONNECTED over the whole sequence for the input
    projection, then per step FULLY_CONNECTED(h) + ADD, SLICE into gates i, f, g, o, LOGISTIC /
    TANH, MUL, ADD; GRU's r, z, n with n = tanh(W_in x + b_in + r * (W_hn h + b_hn))), and as
    fp16 backends store each step's values (XNNPACK's fp16 LSTM lands 5.7 dB under a simulation
    that rounds only the recurrent op's outputs, on the zoo's LSTM). oneDNN is
    switched off for it: with it on, the LSTM decomposes to one mkldnn_rnn_layer op instead."""
    import torch
    from torch._decomp import get_decompositions

    aten = torch.ops.aten
    count = sum(1 for n in exported.graph.nodes if _op_name(n) in _RECURRENT)
    if not count:
        return exported, 0
    table = get_decompositions([aten.lstm.input, aten.gru.input, aten.rnn_tanh.input, aten.rnn_relu.input])
    with warnings.catch_warnings(), torch.backends.mkldnn.flags(enabled=False):
        warnings.simplefilter("ignore")  # the flags' own note on TF32 for Intel GPUs
        return exported.run_decompositions(table), count


# --------------------------------------------------------------------------- the interpreter


def _consumers(plan: _Plan, node: Any) -> list[Any]:
    """The nodes that read ``node``'s value, through ops that only move values."""
    found = []
    for user in node.users:
        if user.op == "call_function" and _op_name(user) in _MOVES_VALUES and user not in plan.points:
            found.extend(_consumers(plan, user))
        else:
            found.append(user)
    return found


def _inside(plan: _Plan, wider: frozenset[Any]) -> frozenset[Any]:
    """The nodes of ``wider`` whose every consumer (through ops that only move values) lies in
    ``wider`` too: their outputs flow inside the kept layers and take the wider type. A kept
    layer's output read by an int8 op (or a model output) is quantized there as before: a
    converter keeping ops float or int16 inserts a QUANTIZE (QuantizeLinear) on that edge."""
    return frozenset(node for node in wider if all(user in wider for user in _consumers(plan, node)))


#: the bits a value kept wider is quantized to inside a kept layer (``WiderLayers.wider_as``); None: float
WIDER_BITS = {"float": None, "int16": 16}


def _layer_of(node: Any) -> str:
    """The layer a node belongs to: its innermost torch module, ``(model)`` outside any."""
    return _module_of(node) or "(model)"


def nodes_of(plan: _Plan, modules: Iterable[str]) -> frozenset[Any]:
    """The quantized nodes (inputs, values, weighted ops) whose innermost torch module is one of
    ``modules``, as ``WiderLayers.holds`` reads a module path (``(model)``: ops outside any)."""
    modules = frozenset(modules)
    return frozenset(n for n in (*plan.inputs, *plan.points, *plan.weight_axis) if _layer_of(n) in modules)


def modules_within(layers: Iterable[str], modules: Iterable[str]) -> list[str]:
    """Every layer (innermost module) of ``layers`` that is one of ``modules`` or lies inside one:
    what the user's ``--keep-wider MODULE`` keeps."""
    modules = tuple(modules)
    return [layer for layer in layers if any(layer == m or layer.startswith(m + ".") for m in modules)]


def _make_interpreter(graph_module: Any, plan: _Plan, scheme: str, weight_bits: int = 8, symmetric_activations: bool = False, palettize_bits: int | None = None, activation_bits: int = 8, on_input_grid: Iterable[str] = (), float_weights_up_to: int = 0, float_outputs: bool = False, dynamic_inputs: bool = False, wider: frozenset[Any] = frozenset(), wider_bits: int | None = None) -> Any:
    # ``wider``: the nodes of layers an int8 artifact keeps wider (``WiderLayers``): float weights
    # and float values inside them (``wider_bits`` None), or int8 weights and int16 values inside
    # them (16); their boundary values stay int8 (:func:`_inside`)
    inside = _inside(plan, wider) if wider else frozenset()
    # ops whose int8 output the artifact keeps on its input's grid (ArtifactIO.quantization): an
    # average pool of 120 positions then uses ~19 of the 256 steps, which a simulation on the
    # pool's own narrow range does not see (a keyword-spotting CNN simulated 4.9 dB better than
    # any honest .tflite of it)
    on_input_grid = frozenset(on_input_grid)
    # NNCF quantizes the inputs of the ops it quantizes, never a model output (quantize_outputs=False)
    unquantized = _output_sources(graph_module) if float_outputs else frozenset()
    import torch
    from torch.utils._pytree import tree_map

    class Simulator(torch.fx.Interpreter):
        """Runs the graph float (``ranges`` None: records min/max) or simulated-quantized."""

        def __init__(self) -> None:
            super().__init__(graph_module)
            self.unstackable = plan.unstackable
            self.ranges: dict[Any, tuple[float, float]] | None = {}
            #: the 0.1th and 99.9th percentiles seen in calibration, and values outside the range at evaluation
            self.bulk: dict[Any, tuple[float, float]] = {}
            self.outside: dict[Any, list[int]] = {}
            self.calibrating = True
            self.weights: dict[Any, tuple[Any, Any]] = {}
            #: per biased conv/linear: its float output's per-channel (sum, count) in calibration
            #: (bias correction's interpreter only; None elsewhere, which do not pay for it)
            self.channel_sums: dict[Any, tuple[Any, int]] | None = None
            #: per conv/linear: the shift bias correction added to its bias (:func:`_correct_biases`)
            self.bias_shifts: dict[Any, Any] = {}
            self.float_weights: set[Any] = set()
            #: weighted ops of layers kept float (mixed precision): never quantized, never bias-corrected
            self.float_kept = frozenset(n for n in wider if n in plan.weight_axis) if wider_bits is None else frozenset()
            #: per quantized node, (signal, noise) energy its own quantization adds: with
            #: ``noise`` set (:func:`layer_sensitivity`'s pre-ranking), None elsewhere
            self.noise: dict[Any, list[float]] | None = None

        def _note(self, node: Any, exact: Any, quantized: Any) -> None:
            if self.noise is not None:
                seen = self.noise.setdefault(node, [0.0, 0.0])
                seen[0] += float((exact.double() ** 2).sum())
                seen[1] += float(((quantized.double() - exact.double()) ** 2).sum())

        def _weights(self, node: Any, weight: Any, bias: Any) -> tuple[Any, Any]:
            if node in self.weights:
                return self.weights[node]
            if node in plan.folds:
                bn = plan.folds[node]
                gamma, beta, mean, var = (self._value(a) for a in bn.args[1:5])
                eps = float(bn.args[7])
                factor = torch.rsqrt(var + eps) * (gamma if gamma is not None else 1.0)
                weight = weight * factor.reshape(-1, *([1] * (weight.ndim - 1)))
                bias = (bias if bias is not None else 0.0) - mean
                bias = bias * factor + (beta if beta is not None else 0.0)
            if not self.calibrating and scheme == "fp16":
                weight, bias = to_fp16(weight), to_fp16(bias)
            # a weight of at most float_weights_up_to elements stays float: Core ML's compression
            # leaves tensors of 2048 elements or fewer dense (its weight_threshold)
            elif not self.calibrating and (weight.numel() <= float_weights_up_to or (node in wider and wider_bits is None)):
                self.float_weights.add(node)
            elif not self.calibrating:
                if palettize_bits:
                    weight = fake_palettize_weight(weight, palettize_bits)
                else:
                    exact, weight = weight, fake_quant_weight(weight, plan.weight_axis[node], weight_bits)
                    self._note(node, exact, weight)
            cached = (weight, bias)
            if _constant(node.args[1]) and not self.calibrating:
                self.weights[node] = cached
            return cached

        def _value(self, arg: Any) -> Any:
            if arg is None:
                return None
            return self.env[arg] if arg in self.env else self.fetch_attr(arg.target)

        def run_node(self, node: Any) -> Any:
            if node in plan.folded:
                result = self.env[node.args[0]]  # the conv already carries this BatchNorm
            elif plan.recurrent_weights and not self.calibrating and _op_name(node) in _RECURRENT:
                args, kwargs = self.fetch_args_kwargs_from_env(node)
                args = list(args)  # aten.lstm / gru (input, hx, params, ...): each 2-D param a weight, 8-bit
                # (weight_bits is the conv/linear weights': NNCF's 7-bit overflow fix leaves LSTMSequence's)
                args[2] = [fake_quant_weight(p, 0, 8) if p.ndim == 2 and p.numel() > float_weights_up_to else p for p in args[2]]
                result = node.target(*args, **kwargs)
            elif node in plan.weight_axis:
                args, kwargs = self.fetch_args_kwargs_from_env(node)
                args, kwargs = list(args), dict(kwargs)
                if len(args) == 2:  # conv/linear(input, weight, bias=None, ...): bias is the third argument
                    args.append(kwargs.pop("bias", None))
                args[1], args[2] = self._weights(node, args[1], args[2])
                if dynamic_inputs and not self.calibrating and node not in self.float_weights:
                    args[0] = fake_quant_dynamic(args[0], per_row=_op_name(node) == "linear")
                result = node.target(*args, **kwargs)
                if self.channel_sums is not None and self.calibrating and args[2] is not None:
                    sums, count = _channel_sums(result, node)
                    seen = self.channel_sums.get(node)
                    self.channel_sums[node] = (sums + seen[0], count + seen[1]) if seen else (sums, count)
                elif node in self.bias_shifts:
                    result = result + _on_channels(self.bias_shifts[node], result, node)
            else:
                result = super().run_node(node)
            if scheme == "int8" and (node in plan.points or node in plan.inputs) and node not in unquantized and (self.calibrating or node not in inside or wider_bits):
                result = self._observe_or_quantize(node, result, wider_bits if node in inside and not self.calibrating else activation_bits)
            elif scheme == "fp16" and not self.calibrating and node.op != "output":
                result = tree_map(to_fp16, result)  # every value an fp16 backend stores: inputs, constants, op outputs
            return result

        def _observe_or_quantize(self, node: Any, value: Any, bits: int) -> Any:
            if not isinstance(value, torch.Tensor) or not value.is_floating_point() or value.numel() == 0:
                return value
            if self.calibrating:
                low, high = float(value.min()), float(value.max())
                seen = self.ranges.get(node)
                self.ranges[node] = (min(low, seen[0]), max(high, seen[1])) if seen else (low, high)
                flat = value.detach().flatten().float()
                flat = flat[:: flat.numel() // _BULK_SAMPLE + 1]  # a strided sample: quantiles sort
                p_low, p_high = (float(q) for q in torch.quantile(flat, torch.tensor([0.001, 0.999])))
                seen = self.bulk.get(node)
                self.bulk[node] = (min(p_low, seen[0]), max(p_high, seen[1])) if seen else (p_low, p_high)
                return value
            low, high = self.ranges.get(node, (0.0, 0.0))
            if _op_name(node) in on_input_grid:  # on its input's grid, as the artifact keeps it
                low, high = _calibrated_range(node.args[0], self.ranges) or (low, high)
            half_step = int16_scale(low, high) / 2 if bits == 16 else (max(high, 0.0) - min(low, 0.0)) / 510.0
            counts = self.outside.setdefault(node, [0, 0])
            counts[0] += int(((value < low - half_step) | (value > high + half_step)).sum())
            counts[1] += value.numel()
            quantized = fake_quant_activation(value, low, high, symmetric_activations, bits)
            self._note(node, value, quantized)
            return quantized

    return Simulator()


def _channel_axis(node: Any) -> int:
    """The output-channel axis of a conv/linear node's result."""
    return -1 if _op_name(node) == "linear" else 1


def _channel_sums(value: Any, node: Any) -> tuple[Any, int]:
    """Per output channel: the sum of ``value`` (a conv/linear result) and how many values it holds."""
    axis = _channel_axis(node) % value.ndim
    reduce = [d for d in range(value.ndim) if d != axis]
    return value.detach().double().sum(dim=reduce), value.numel() // value.shape[axis]


def _on_channels(per_channel: Any, value: Any, node: Any) -> Any:
    """``per_channel`` shaped to broadcast along the output channels of ``value``."""
    axis = _channel_axis(node) % value.ndim
    return per_channel.to(value.dtype).reshape([-1 if d == axis else 1 for d in range(value.ndim)])


#: NNCF's BiasCorrection leaves a bias alone when its shift is this many times the bias or more
_BIAS_SHIFT_LIMIT = 1000.0
#: ... and measures on the first fifth of the calibration samples (its subset_size x 0.2)
_BIAS_CORRECTION_SUBSET = 0.2


def _correct_biases(weights_only: Any, graph_module: Any, plan: _Plan, calibration: Sequence[tuple[np.ndarray, ...]]) -> dict[Any, Any]:
    """NNCF's full bias correction (``nncf.quantize(fast_bias_correction=False)``): the shift to
    add to each biased conv/linear's bias. Layer after layer in graph order, the float model's
    per-channel output mean minus that of the model with quantized weights (``weights_only``, an
    interpreter quantizing weights as the simulation does; NNCF removes every activation
    FakeQuantize while it corrects), on the first fifth of the calibration samples.

    As NNCF's BiasCorrection does, each layer is run as a sub-graph whose inputs are the values
    recorded at the inputs of the layers to correct: a layer's input is recorded once, by the
    sub-graph of the first corrected layer that reaches it without crossing another layer to
    correct, with the biases corrected up to that layer (NNCF appends each later recording and
    reads the first ones). In a ResNet the skip connection reaches the layer after a residual
    Add from an earlier block, so that layer is corrected for inputs computed with the blocks in
    between uncorrected (NNCF's IRs of the zoo's ResNets sat 1.3-1.7 dB below a correction on
    up-to-date inputs; this reproduces NNCF's biases exactly from the IR's weights); in a chain
    every input is up to date."""
    import torch

    wanted, batches = max(int(sum(len(b[0]) for b in calibration) * _BIAS_CORRECTION_SUBSET), 1), []
    for batch in calibration:
        if wanted > 0:
            batches.append(tuple(a[:wanted] for a in batch))
            wanted -= len(batches[-1][0])
    float_model = _make_interpreter(graph_module, plan, "dynamic-int8")  # calibrating: float
    float_model.channel_sums = {}  # ... and recording each biased layer's output per channel
    with torch.no_grad():
        for batch in batches:  # one call each (_run's stacked call would count the first batch twice)
            float_model.run(*(torch.from_numpy(np.ascontiguousarray(a)) for a in batch))
    channel_sums = float_model.channel_sums
    order = {node: index for index, node in enumerate(weights_only.graph.nodes)}
    # NNCF's order: the graph's; a layer kept float is not quantized, so not corrected (NNCF's ignored scope)
    corrected = [n for n in weights_only.graph.nodes if n in channel_sums and n not in weights_only.float_kept]

    def reached(start: Any) -> set[Any]:  # the inputs of the layers to correct that start reaches first
        found, queue, seen = set(), list(start.users), set()
        while queue:
            node = queue.pop()
            if node in seen:
                continue
            seen.add(node)
            if node in channel_sums:
                found.add(node.args[0])
            else:
                queue.extend(node.users)
        return found

    recorded: dict[Any, list[Any]] = {}  # a layer's input -> its first recording, per batch
    shifts: dict[Any, Any] = {}
    # every input, quantized or not (plan.inputs leaves out one only a float recurrent op reads)
    placeholders = [n for n in graph_module.graph.nodes if n.op == "placeholder"]
    with torch.no_grad():
        for layer in corrected:
            outputs = reached(layer)
            needed, stack = set(), [layer, *outputs]  # the sub-graph: back to recorded layer inputs
            while stack:
                node = stack.pop()
                if node in needed:
                    continue
                needed.add(node)
                for arg in _flat_nodes([node.args, node.kwargs]):
                    if hasattr(arg, "op") and not (node in channel_sums and arg is node.args[0] and arg in recorded):
                        stack.append(arg)
            envs: list[dict[Any, Any]] = [{} for _ in batches]
            for node in sorted(needed, key=order.__getitem__):
                for index, (env, batch) in enumerate(zip(envs, batches)):
                    if node.op == "placeholder":
                        env[node] = torch.from_numpy(np.ascontiguousarray(batch[placeholders.index(node)]))
                        continue
                    read = node.args[0] if node in channel_sums and node.args[0] in recorded else None
                    live = env.get(read)
                    if read is not None:
                        env[read] = recorded[read][index]
                    weights_only.env = env
                    env[node] = weights_only.run_node(node)
                    if read is not None:  # other readers (a skip connection) take the live value
                        del env[read]
                        if live is not None:
                            env[read] = live
                    if node in shifts:
                        env[node] = env[node] + _on_channels(shifts[node], env[node], node)
                if node is layer:
                    sums = [_channel_sums(env[node], node) for env in envs]
                    quantized = sum(s for s, _ in sums) / sum(c for _, c in sums)
                    shift = channel_sums[node][0] / channel_sums[node][1] - quantized
                    bias = weights_only.weights[node][1] if node in weights_only.weights else None
                    if bias is None or float((shift / (bias.double() + torch.finfo(torch.float32).eps)).abs().max()) < _BIAS_SHIFT_LIMIT:
                        shifts[node] = shift
                        for env in envs:
                            env[node] = env[node] + _on_channels(shift, env[node], node)
            for value in outputs:
                recorded.setdefault(value, [env[value] for env in envs])
    weights_only.env = {}
    return shifts


def _run(simulator: Any, batches: Sequence[tuple[np.ndarray, ...]]) -> Outputs:
    """Each batch through the interpreter; stacked into one call when the graph allows it."""
    import torch

    from edgex.core.loading import flatten_outputs

    def call(arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        tensors = [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]
        return [t.detach().numpy() for t in flatten_outputs(simulator.run(*tensors))[1]]

    with torch.no_grad():
        first = call(batches[0])
        if len(batches) > 1 and not simulator.unstackable:
            size = len(batches[0][0])
            try:
                stacked = call([np.concatenate(parts) for parts in zip(*batches)])
            except Exception:
                stacked = None  # shapes baked into the graph (reshapes of batch 1)
            if (
                stacked is not None
                and all(o.ndim > 0 and o.shape[0] == size * len(batches) for o in stacked)
                and all(np.allclose(s[:size], f, rtol=1e-4, atol=1e-5 * max(float(np.max(np.abs(f), initial=0.0)), 1e-30)) for s, f in zip(stacked, first))
            ):
                return [[o[i * size : (i + 1) * size] for o in stacked] for i in range(len(batches))]
        return [first] + [call(b) for b in batches[1:]]


@dataclass
class Calibration:
    """What every simulation of one model on one calibration set shares: the exported graph, its
    quantization plan and the activation ranges calibration set (from the float graph, so they do
    not depend on how weights are quantized). Made once per scheme, model and calibration; each
    weight scheme (bits, symmetric activations, palette, 16-bit activations) then costs one pass
    over the parity batches."""

    scheme: str
    graph_module: Any
    plan: _Plan
    ranges: dict[Any, tuple[float, float]]
    bulk: dict[Any, tuple[float, float]]
    samples: int
    seconds: float
    recurrent: str | None = None
    #: the calibration batches (bias correction runs on them)
    batches: Sequence[tuple[np.ndarray, ...]] = ()


def _calibrated_simulator(calibrated: Calibration, *options: Any, **named: Any) -> Any:
    """An interpreter simulating ``calibrated.scheme`` on the ranges ``calibrated`` holds (read only
    from here on); ``options`` as :func:`_make_interpreter` takes them after the scheme."""
    simulator = _make_interpreter(calibrated.graph_module, calibrated.plan, calibrated.scheme, *options, **named)
    simulator.ranges, simulator.bulk = calibrated.ranges, calibrated.bulk
    simulator.calibrating = False
    return simulator


def _recurrent_form(scheme: str, recurrent: str | None) -> str | None:
    """How ``scheme`` simulates a recurrent op: as the artifact says, but written out per step at
    fp16, where backends store each step's values."""
    return "unrolled" if scheme == "fp16" else recurrent


def calibrate(module: Any, example_inputs: tuple[np.ndarray, ...], calibration: Sequence[tuple[np.ndarray, ...]], scheme: str = "int8", recurrent: str | None = None) -> Calibration:
    """Export ``module`` and record each activation's range on ``calibration`` (``dynamic-int8``:
    no activation is quantized, nothing is run). ``recurrent``: how the artifact quantizes a
    recurrent op (:data:`RECURRENT_FORMS`; None: it does not say). Raises :class:`CannotSimulate`."""
    if scheme not in SCHEMES:
        raise UsageError(f"no simulated reference for scheme {scheme!r}; schemes: {', '.join(SCHEMES)}")
    recurrent = _recurrent_form(scheme, recurrent)
    if recurrent is not None and recurrent not in RECURRENT_FORMS:
        raise UsageError(f"no simulated recurrent form {recurrent!r}; forms: {', '.join(RECURRENT_FORMS)}")
    if scheme == "int8" and not calibration:
        raise UsageError("the simulated int8 reference needs calibration data")
    start = time.perf_counter()
    graph_module, decomposed = _export(module, example_inputs, recurrent)
    plan = _plan(graph_module, recurrent, decomposed)
    observer = _make_interpreter(graph_module, plan, scheme)
    if scheme == "int8":
        _run(observer, calibration)
    samples = sum(len(b[0]) for b in calibration) if scheme == "int8" else 0
    return Calibration(scheme, graph_module, plan, observer.ranges, observer.bulk, samples, time.perf_counter() - start, recurrent=recurrent, batches=list(calibration) if scheme == "int8" else [])


def simulate(
    module: Any,
    example_inputs: tuple[np.ndarray, ...],
    calibration: Sequence[tuple[np.ndarray, ...]],
    batches: Sequence[tuple[np.ndarray, ...]],
    scheme: str = "int8",
    weight_bits: int = 8,
    symmetric_activations: bool = False,
    palettize_bits: int | None = None,
    activation_bits: int = 8,
    calibrated: Calibration | None = None,
    on_input_grid: Iterable[str] = (),
    recurrent: str | None = None,
    float_weights_up_to: int = 0,
    bias_correction: bool = False,
    float_outputs: bool = False,
    dynamic_inputs: bool = False,
    kept_wider: Sequence[str] = (),
    wider_as: str = "float",
) -> SimulatedReference:
    """``module`` run on ``batches`` as an honest ``scheme`` converter would quantize it.

    ``calibration`` (batches shaped like the model's inputs) sets the int8 activation ranges; it is
    unused for ``dynamic-int8``, and where ``calibrated`` (:func:`calibrate` of the same module,
    calibration and scheme) already holds them. ``weight_bits`` 7 is onnxruntime's reduce_range;
    ``symmetric_activations`` is TensorRT's zero-point-0 scheme; ``palettize_bits`` replaces int8
    weights by a k-means palette of 2**bits values per tensor (Core ML); ``activation_bits`` 16 is
    TFLite's 16x8 mode (int16 activations, int8 weights); ``on_input_grid`` names the ops quantized
    on their input's grid (``ArtifactIO.quantization``: average pooling in LiteRT and
    onnxruntime, ``adaptive_avg_pool2d`` in XNNPACK); ``recurrent`` how a recurrent op is
    quantized (:data:`RECURRENT_FORMS`, ``ArtifactIO.quantization``); weights of at most
    ``float_weights_up_to`` elements stay float (Core ML's weight_threshold); ``bias_correction`` is
    NNCF's full bias correction on the calibration data (int8; :func:`_correct_biases`);
    ``float_outputs`` leaves the model's outputs unquantized (NNCF's int8 IR computes its last
    layer's output in float); ``dynamic_inputs`` quantizes each weighted op's input as a
    dynamic-range kernel does at run time (dynamic-int8; :func:`fake_quant_dynamic`);
    ``kept_wider`` the torch modules a mixed-precision artifact keeps at ``wider_as`` ("float" or
    "int16"; ``WiderLayers``). Raises :class:`CannotSimulate` for what it cannot simulate.
    """
    if not batches:
        raise UsageError("the simulated int8 reference needs at least one batch")
    start = time.perf_counter()
    recurrent = _recurrent_form(scheme, recurrent)
    if calibrated is None:
        calibrated = calibrate(module, example_inputs, calibration, scheme, recurrent)
    elif calibrated.scheme != scheme or calibrated.recurrent != recurrent:
        raise UsageError(f"a {calibrated.scheme} calibration (recurrent ops: {calibrated.recurrent}) cannot serve a {scheme} simulation (recurrent ops: {recurrent})")
    graph_module, plan = calibrated.graph_module, calibrated.plan
    wider = nodes_of(plan, kept_wider) if scheme == "int8" else frozenset()
    simulator = _calibrated_simulator(calibrated, weight_bits, symmetric_activations, palettize_bits, activation_bits, on_input_grid, float_weights_up_to, float_outputs, dynamic_inputs and scheme == "dynamic-int8",
                                      wider=wider, wider_bits=WIDER_BITS[wider_as])
    if bias_correction and scheme == "int8":
        weights_only = _make_interpreter(graph_module, plan, "dynamic-int8", weight_bits, palettize_bits=palettize_bits, float_weights_up_to=float_weights_up_to, wider=wider, wider_bits=WIDER_BITS[wider_as])
        weights_only.calibrating = False
        simulator.bias_shifts = _correct_biases(weights_only, graph_module, plan, calibrated.batches)
    outputs = _run(simulator, batches)
    if scheme == "fp16" and not all(np.isfinite(o).all() for sample in outputs for o in sample):
        raise CannotSimulate("an fp16 execution of the model overflows to inf (the fp16 range check says where)")

    output_node = next(n for n in graph_module.graph.nodes if n.op == "output")
    ranges: list[tuple[float, float] | None] = []
    for source in _flat_nodes(output_node.args[0]):
        if _op_name(source) in frozenset(on_input_grid):  # an output pool keeps its input's grid too
            source = source.args[0]
        ranges.append(_calibrated_range(source, simulator.ranges) if scheme == "int8" and not float_outputs else None)
    if len(ranges) != len(outputs[0]):
        ranges = [None] * len(outputs[0])
    return SimulatedReference(
        scheme=scheme,
        outputs=outputs,
        output_ranges=tuple(ranges),
        quantized_weights=len(plan.weight_axis) - len(simulator.float_weights),
        folded_batch_norms=len(plan.folds) if scheme == "int8" else 0,
        activation_points=len(simulator.ranges) if scheme == "int8" else 0,
        calibration_samples=calibrated.samples,
        seconds=time.perf_counter() - start,
        weight_bits=weight_bits,
        symmetric_activations=symmetric_activations,
        palettize_bits=palettize_bits,
        activation_bits=activation_bits,
        float_weights=len(simulator.float_weights),
        corrected_biases=len(simulator.bias_shifts),
        float_outputs=float_outputs and scheme == "int8",
        dynamic_inputs=dynamic_inputs and scheme == "dynamic-int8",
        ranges=range_diagnostics(simulator) if scheme == "int8" else (),
        recurrent=recurrent if plan.recurrent_ops else None,
        recurrent_ops=plan.recurrent_ops,
        kept_wider=tuple(kept_wider) if wider else (),
        wider_as=wider_as if wider else None,
        wider_nodes=len(wider),
    )


def simulated_floor(
    module: Any,
    example_inputs: tuple[np.ndarray, ...],
    calibration: Sequence[tuple[np.ndarray, ...]],
    batches: Sequence[tuple[np.ndarray, ...]],
    reference: Outputs,
    activation_bits: int = 8,
    on_input_grid: Iterable[str] = (),
    recurrent: str | None = None,
    calibrated: Calibration | None = None,
) -> tuple[float, float] | None:
    """What a full-integer artifact of ``module`` must reach on ``batches``: (the SQNR floor its
    verdict will ask, the simulated reference's own SQNR), both the worst output's against
    ``reference`` (the torch outputs on ``batches``); None where the model cannot be simulated.
    A converter's recipe search aims at it (``ConversionRequest.simulated_floor``), so the recipe
    it keeps is judged by the same independent reference as the artifact's verdict. ``calibrated``:
    the run's own calibration of ``module`` on ``calibration`` (:func:`calibrate`), made once."""
    from edgex.core.parity import simulated_sqnr_floor, worst_sqnr

    try:
        sim = simulate(module, example_inputs, calibration, batches, "int8", activation_bits=activation_bits, on_input_grid=on_input_grid, recurrent=recurrent, calibrated=calibrated)
    except CannotSimulate:
        return None
    sqnr_sim = worst_sqnr(reference, sim.outputs)
    return simulated_sqnr_floor("int8", sqnr_sim), sqnr_sim


# --------------------------------------------------------------------------- per-layer sensitivity

#: below this SQNR of the simulation, int8 itself barely carries the model: a report lists the
#: layers it costs most, and the fewest kept float that bring the simulation up to it
INT8_CARRIES_DB = 20.0
#: how many layers a report lists, most sensitive first
SENSITIVE_LAYERS_LISTED = 5
#: parity inputs the sensitivity is measured on (each layer costs one more simulated pass over them)
SENSITIVITY_SAMPLES = 4
#: at most this many layers are measured (one pass each), the noisiest by their own quantization
SENSITIVITY_CANDIDATES = 32
#: the greedy choice of layers kept wider: among the most sensitive this many, at most WIDER_MOST,
#: together at most WIDER_MACS_MOST of the model's multiply-accumulates (what a kept layer costs
#: on the device grows with its MACs: a CPU fallback on coral, int16 kernels on an MCU)
WIDER_CANDIDATES = 8
WIDER_MOST = 4
WIDER_MACS_MOST = 0.15
#: a greedy step whose best candidate gains less than this tries the best WIDER_PAIRS_OF in pairs
WIDER_LOOK_AHEAD_DB = 1.0
WIDER_PAIRS_OF = 6
#: layers no target can keep wider: the model's inputs (the artifact's I/O type is the target's)
#: and ops outside every module (no converter names them)
_NOT_KEPT = frozenset({"input", "(model)"})


def quantization_options(quantization: Mapping[str, Any] | None) -> dict[str, Any]:
    """The int8 simulation's options an artifact's ``ArtifactIO.quantization`` sets for its
    weights and activations (what :class:`LayerSimulation` and :func:`simulated_layers` take)."""
    quantization = quantization or {}
    return {
        "weight_bits": int(quantization.get("weight_bits", 8)),
        "symmetric_activations": bool(quantization.get("symmetric_activations", False)),
        "on_input_grid": tuple(sorted(quantization.get("on_input_grid", ()))),
        "float_outputs": bool(quantization.get("float_outputs", False)),
    }


class LayerSimulation:
    """The int8 simulation of one calibrated model on ``batches``, by layer: ``layers`` maps each
    torch module (the innermost module of each quantized op, ``input`` for the model's inputs,
    ``(model)`` for ops outside any submodule) to its quantized nodes (weights and outputs), and
    :meth:`sqnr` runs the simulation with some layers kept float, against ``reference``."""

    def __init__(self, calibrated: Calibration, batches: Sequence[tuple[np.ndarray, ...]], reference: Outputs, *, weight_bits: int = 8, symmetric_activations: bool = False, on_input_grid: Iterable[str] = (),
                 float_outputs: bool = False, wider_as: str = "float") -> None:
        self.calibrated, self.batches, self.reference = calibrated, batches, reference
        self.options = (weight_bits, symmetric_activations, None, 8, tuple(on_input_grid), 0, float_outputs)
        self.wider_bits = WIDER_BITS[wider_as]
        plan = calibrated.plan
        self.layers: dict[str, set[Any]] = {}
        for node in (*plan.inputs, *plan.points, *plan.weight_axis):
            self.layers.setdefault(_layer_of(node), set()).add(node)

    def sqnr(self, kept: Iterable[str] = (), noise: dict[Any, list[float]] | None = None) -> float:
        """The worst output's SQNR with the layers ``kept`` wider, as a mixed-precision artifact
        keeps them (:func:`_inside`); ``noise`` collects the (signal, noise) energy each quantized
        node adds."""
        from edgex.core.parity import worst_sqnr

        simulator = _calibrated_simulator(self.calibrated, *self.options, wider=nodes_of(self.calibrated.plan, kept), wider_bits=self.wider_bits)
        simulator.noise = noise
        return worst_sqnr(self.reference, _run(simulator, self.batches))


def layer_sensitivity(
    calibrated: Calibration,
    batches: Sequence[tuple[np.ndarray, ...]],
    reference: Outputs,
    *,
    method: str = "leave-out",
    candidates: int = SENSITIVITY_CANDIDATES,
    aim_db: float | None = None,
    weight_bits: int = 8,
    symmetric_activations: bool = False,
    on_input_grid: Iterable[str] = (),
    float_outputs: bool = False,
    wider_as: str = "float",
) -> dict[str, Any]:
    """How much SQNR each layer's int8 quantization costs in edgex's own simulation, on
    ``batches`` against ``reference`` (the torch outputs there), the worst output's.

    A layer is a torch module (:class:`LayerSimulation`). ``leave-out``: every layer quantized but
    that one, kept at ``wider_as`` as a mixed-precision artifact keeps it (its boundary int8); its
    ``gain_db`` is what keeping it wider buys over full int8, measured with every other layer's
    noise present, as keeping it wider would leave them. ``alone``: that
    layer the only one quantized; ``cost_db`` is its SQNR alone (lower: more sensitive). Each
    layer is one more pass over ``batches``: of a model with more than ``candidates`` layers, only
    the ``candidates`` whose own quantization leaves their tensors the lowest SQNR (``local_db``,
    from the full-int8 pass) are measured. Returns the full-int8 SQNR and the layers measured,
    most sensitive first, with their share of the model's multiply-accumulates; with ``aim_db``
    (leave-out) and full int8 below it, also ``keep_wider``: the fewest layers kept float that
    reach it in the simulation (:func:`_greedy_wider`), within WIDER_MACS_MOST of the MACs."""
    if method not in ("leave-out", "alone"):
        raise UsageError(f"no sensitivity method {method!r}; methods: leave-out, alone")
    simulation = LayerSimulation(calibrated, batches, reference, weight_bits=weight_bits, symmetric_activations=symmetric_activations, on_input_grid=on_input_grid,
                                 float_outputs=float_outputs, wider_as=wider_as)
    start = time.perf_counter()
    noise: dict[Any, list[float]] = {}
    full = simulation.sqnr((), noise)
    macs = _macs_per_module(calibrated.graph_module, batches[0])
    total = sum(macs.values()) or 1
    # the candidates: each layer, and each value read across layers with the layers that make
    # and read it (a kept layer's boundary stays int8: only keeping both sides removes that
    # value's quantization); ranked by the worst SQNR their own quantization leaves a tensor
    def local_db(node: Any) -> float:
        signal, error = noise.get(node, (1.0, 0.0))
        return 10 * math.log10(max(signal, 1e-300) / error) if error > 0 else math.inf

    units: dict[tuple[str, ...], float] = {}
    for layer, nodes in simulation.layers.items():
        units[(layer,)] = min((local_db(node) for node in nodes), default=math.inf)
    quantized = {node for nodes in simulation.layers.values() for node in nodes}
    weighted = {_layer_of(node) for node in calibrated.plan.weight_axis}
    for node in calibrated.plan.points:
        unit = _reach(calibrated.plan, node, quantized, weighted)
        if len(unit) > 1:
            units[unit] = min(units.get(unit, math.inf), local_db(node))
    # beyond `candidates` units, only the noisiest by their own quantization are measured
    layers = []
    for unit in sorted(units, key=units.get)[:candidates]:
        if method == "leave-out":
            measured = simulation.sqnr(unit)
        elif len(unit) == 1:
            measured = simulation.sqnr([m for m in simulation.layers if m not in unit])
        else:
            continue  # alone: one layer quantized at a time
        layer = {"module": " + ".join(unit), "modules": list(unit), "macs_share": macs_share(unit, macs, total)}
        if method == "leave-out":
            layer["gain_db"] = round(measured - full, 2) if math.isfinite(measured) else measured
        else:
            layer["cost_db"] = round(measured, 2) if math.isfinite(measured) else measured
        layer["local_db"] = round(units[unit], 2) if math.isfinite(units[unit]) else None
        layers.append(layer)
    layers.sort(key=lambda layer: -layer["gain_db"] if method == "leave-out" else layer["cost_db"])
    found = {"method": method, "wider_as": wider_as, "sqnr_db": round(full, 2), "samples": sum(len(b[0]) for b in batches), "layers": layers, "layers_total": len(simulation.layers)}
    if aim_db is not None and method == "leave-out" and full < aim_db:
        keepable = [tuple(layer["modules"]) for layer in layers if not _NOT_KEPT.intersection(layer["modules"]) and layer["gain_db"] > 0 and layer["macs_share"] <= WIDER_MACS_MOST]
        found["keep_wider"] = _greedy_wider(simulation, full, aim_db, keepable[:WIDER_CANDIDATES], macs, total)
    found["seconds"] = round(time.perf_counter() - start, 2)
    return found


#: mixed precision (``--mixed-precision auto``) starts where full int8's simulation falls below
#: this: an artifact as good as the simulation, less the verdict's margin, would miss the verdict's
#: absolute floor (MIN_SQNR_DB 10 + SIM_SQNR_MARGIN_DB 3; edgex.core.parity)
MIXED_PRECISION_BELOW_DB = 13.0
#: and keeps layers wider until the simulation reaches this: the floor with the verdict's margin
#: again as headroom for the converter's own shortfall against the simulation
MIXED_PRECISION_AIM_DB = 16.0


def choose_wider(
    calibrated: Calibration,
    batches: Sequence[tuple[np.ndarray, ...]],
    reference: Outputs,
    full_db: float,
    *,
    wider_as: str = "float",
    modules: Sequence[str] = (),
    weight_bits: int = 8,
    symmetric_activations: bool = False,
    on_input_grid: Iterable[str] = (),
    float_outputs: bool = False,
) -> dict[str, Any] | None:
    """The layers a mixed-precision int8 artifact keeps at ``wider_as``: the user's ``modules``
    (measured), or, where full int8's simulation (``full_db``, the verdict's, on every parity
    input) is below MIXED_PRECISION_BELOW_DB, the fewest sensitive layers whose keeping brings
    the simulation on ``batches`` to MIXED_PRECISION_AIM_DB (:func:`layer_sensitivity`'s greedy
    choice, within WIDER_MACS_MOST of the MACs); None where full int8 meets its floor, or no
    layer helps. Returns ``modules``, ``macs_share``, ``sqnr_before_db`` and ``sqnr_db`` (the
    simulation on ``batches`` without and with them), ``chosen_by``, ``seconds``."""
    start = time.perf_counter()
    options = {"weight_bits": weight_bits, "symmetric_activations": symmetric_activations, "on_input_grid": tuple(on_input_grid), "float_outputs": float_outputs}
    if modules:
        simulation = LayerSimulation(calibrated, batches, reference, wider_as=wider_as, **options)
        asked, modules = modules, modules_within(simulation.layers, modules)
        if not modules:
            raise UsageError(f"--keep-wider {', '.join(asked)}: no such torch module holds a quantized op of the model (its modules: {', '.join(sorted(simulation.layers)[:12])}, ...)")
        macs = _macs_per_module(calibrated.graph_module, batches[0])
        before, after = simulation.sqnr(), simulation.sqnr(modules)
        return {"modules": list(modules), "chosen_by": "user", "macs_share": macs_share(modules, macs, sum(macs.values())) if macs else None,
                "sqnr_before_db": round(before, 2), "sqnr_db": round(after, 2) if math.isfinite(after) else after, "seconds": round(time.perf_counter() - start, 2)}
    if not full_db < MIXED_PRECISION_BELOW_DB:
        return None
    found = layer_sensitivity(calibrated, batches, reference, aim_db=MIXED_PRECISION_AIM_DB, wider_as=wider_as, **options)
    wider = found.get("keep_wider")
    if not wider or not wider["modules"]:
        return None
    return {"modules": list(wider["modules"]), "chosen_by": "auto", "macs_share": wider["macs_share"], "sqnr_before_db": wider["sqnr_before_db"],
            "sqnr_db": wider["sqnr_db"], "aim_db": MIXED_PRECISION_AIM_DB, "reached": wider["reached"], "seconds": round(time.perf_counter() - start, 2)}


def _reach(plan: _Plan, node: Any, quantized: set[Any], weighted: set[str]) -> tuple[str, ...]:
    """The layers on both sides of ``node``'s value: its own and its readers' (of the
    ``quantized`` nodes); where a reader is a layer without weights of its own (not in
    ``weighted``: an attention's matmuls and softmax, a block's residual add), the value flows on
    through it, so the layers reading what it computes from the value too (values -> attention
    -> output projection: keeping all three keeps both values wide)."""
    found = {_layer_of(node)}
    for reader in _consumers(plan, node):
        if reader not in quantized:
            continue
        module = _layer_of(reader)
        found.add(module)
        if module in weighted or module in _NOT_KEPT:
            continue
        queue, seen = [reader], set()
        while queue:  # through the reader's layer, to the layers its values leave for
            current = queue.pop()
            if current in seen:
                continue
            seen.add(current)
            for user in _consumers(plan, current):
                if _layer_of(user) == module:
                    queue.append(user)
                elif user in quantized:
                    found.add(_layer_of(user))
    return tuple(sorted(found))


def macs_share(modules: Iterable[str], macs: Mapping[str, int], total: int) -> float:
    """The share of ``total`` MACs the ``modules`` hold, of ``macs`` per innermost module."""
    modules = frozenset(modules)
    held = sum(n for module, n in macs.items() if module in modules)
    return round(held / (total or 1), 4)


def _greedy_wider(simulation: LayerSimulation, full: float, aim_db: float, candidates: Sequence[tuple[str, ...]], macs: Mapping[str, int], total: int) -> dict[str, Any]:
    """The fewest layers kept wider that bring the simulation to ``aim_db``: greedy over the
    ``candidates`` (a layer, or the layers on both sides of one value), each step the one whose
    keeping (with those kept before it) reaches the highest SQNR, measured again every step; at
    most WIDER_MOST steps and WIDER_MACS_MOST of the MACs, and no step that gains under 0.1 dB."""
    kept: list[str] = []
    reached = full
    steps = 0

    def adding(unit: tuple[str, ...]) -> list[str]:
        return [*kept, *(m for m in unit if m not in kept)]

    while reached < aim_db and steps < WIDER_MOST:
        trials = {unit: simulation.sqnr(adding(unit)) for unit in candidates if not set(unit) <= set(kept) and macs_share(adding(unit), macs, total) <= WIDER_MACS_MOST}
        if not trials:
            break
        if max(trials.values()) < reached + WIDER_LOOK_AHEAD_DB:
            # no one candidate gains much: a value between two layers stays int8 unless both are
            # kept (values -> attention -> projection), so try the best few in pairs too
            top = sorted(trials, key=lambda unit: -trials[unit])[:WIDER_PAIRS_OF]
            for i, first in enumerate(top):
                for second in top[i + 1:]:
                    pair = tuple(dict.fromkeys((*first, *second)))
                    if macs_share(adding(pair), macs, total) <= WIDER_MACS_MOST:
                        trials[pair] = simulation.sqnr(adding(pair))
        best = max(trials, key=lambda unit: trials[unit])
        if not trials[best] >= reached + 0.1:
            break
        kept, reached, steps = adding(best), trials[best], steps + 1
    return {
        "aim_db": aim_db, "modules": kept, "macs_share": macs_share(kept, macs, total),
        "sqnr_before_db": round(full, 2), "sqnr_db": round(reached, 2) if math.isfinite(reached) else reached, "reached": bool(reached >= aim_db),
    }


def simulated_layers(
    calibrated: Calibration,
    batches: Sequence[tuple[np.ndarray, ...]],
    layers: Sequence[str],
    *,
    weight_bits: int = 8,
    symmetric_activations: bool = False,
    on_input_grid: Iterable[str] = (),
    float_outputs: bool = False,
    kept_wider: Sequence[str] = (),
    wider_as: str = "float",
) -> dict[str, list[np.ndarray]]:
    """Each layer's output in edgex's int8 simulation, per batch: the value of the last op (in
    graph order) inside that torch module, as the simulation leaves it. What ``edgex explain``
    compares an artifact's layers with, to say where the artifact leaves the simulation rather
    than where it leaves fp32 (a mixed-precision artifact's layers ``kept_wider`` at
    ``wider_as``, as it keeps them). A layer no op of the graph belongs to is left out."""
    import torch

    graph_module = calibrated.graph_module
    last: dict[Any, str] = {}
    for layer in layers:
        inside = [n for n in graph_module.graph.nodes if n.op == "call_function" and (_module_of(n) == layer or _module_of(n).startswith(layer + "."))]
        if inside:
            last[inside[-1]] = layer
    simulator = _calibrated_simulator(calibrated, weight_bits, symmetric_activations, None, 8, on_input_grid, 0, float_outputs,
                                      wider=nodes_of(calibrated.plan, kept_wider), wider_bits=WIDER_BITS[wider_as])
    found: dict[str, list[np.ndarray]] = {layer: [] for layer in last.values()}
    run_node = simulator.run_node

    def recording(node: Any) -> Any:
        result = run_node(node)
        if node in last and isinstance(result, torch.Tensor):
            found[last[node]].append(result.detach().numpy().copy())
        return result

    simulator.run_node = recording
    with torch.no_grad():
        for batch in batches:
            simulator.run(*[torch.from_numpy(np.ascontiguousarray(a)) for a in batch])
    return {layer: values for layer, values in found.items() if len(values) == len(batches)}


def _macs_per_module(graph_module: Any, batch: tuple[np.ndarray, ...]) -> dict[str, int]:
    """Multiply-accumulates of one float pass of the exported graph, per innermost module."""
    import torch

    from edgex.core.loading import mac_counter

    counter = mac_counter()
    macs: dict[str, int] = {}

    class Counting(torch.fx.Interpreter):
        def run_node(self, node: Any) -> Any:
            before = counter.flops
            with counter:
                result = super().run_node(node)
            if counter.flops != before:
                module = _layer_of(node)
                macs[module] = macs.get(module, 0) + (counter.flops - before) // 2
            return result

    try:
        with torch.no_grad():
            Counting(graph_module).run(*[torch.from_numpy(np.ascontiguousarray(a)) for a in batch])
    except Exception:  # an op the counter cannot count: shares unknown, not a failed sensitivity
        return {}
    return macs


def describe_sensitivity(sensitivity: Mapping[str, Any], listed: int = SENSITIVE_LAYERS_LISTED) -> str:
    """The most sensitive layers in one line: those whose keeping float gains at least 0.1 dB
    (leave-out), or the lowest alone (alone)."""
    where = f"on {sensitivity['samples']} parity inputs, full int8 {sensitivity['sqnr_db']:.1f} dB"
    if sensitivity["method"] == "alone":
        parts = [f"{layer['module']} ({layer['cost_db']:.1f} dB alone, {100 * layer['macs_share']:.1f}% of MACs)" for layer in sensitivity["layers"][:listed]]
        return f"the layers int8 costs most in edgex's simulation ({where}): " + ", ".join(parts)
    gaining = [layer for layer in sensitivity["layers"] if layer["gain_db"] >= 0.1][:listed]
    if not gaining:
        return f"no one layer kept float gains 0.1 dB in edgex's simulation ({where}): the loss is spread over the model"
    parts = [f"{layer['module']} (+{layer['gain_db']:.1f} dB kept float, {100 * layer['macs_share']:.1f}% of MACs)" for layer in gaining]
    text = f"the layers int8 costs most in edgex's simulation ({where}): " + ", ".join(parts)
    wider = sensitivity.get("keep_wider")
    if wider and wider["modules"]:
        kept = f"keeping {', '.join(wider['modules'])} float ({100 * wider['macs_share']:.1f}% of MACs)"
        text += (f"; {kept} reaches {wider['sqnr_db']:.1f} dB there" if wider["reached"]
                 else f"; even {kept} reaches only {wider['sqnr_db']:.1f} dB there (aim {wider['aim_db']:g} dB)")
    return text


# --------------------------------------------------------------------------- calibration diagnostics

#: values per tensor and calibration batch the percentiles are taken from
_BULK_SAMPLE = 65536
#: a range this many times wider than its middle 99.8% gives the bulk of the values too few steps
OUTLIER_RATIO = 8.0
#: more than this fraction of the parity inputs' values outside the calibrated range: saturated
SATURATED_FRACTION = 0.01

_ADVICE = {
    "degenerate": "the tensor is constant on the calibration data (a dead layer, or data that never exercises it): calibrate on representative inputs",
    "outlier-dominated": "a few outliers set the range, leaving the bulk of the values a few int8 steps: clip the range (percentile calibration), or keep this tensor at 16 bits (16x8), or calibrate on more data",
    "saturated": "inputs exceed what calibration saw, and int8 clips them: calibrate on more, or more representative, data",
}


def _module_of(node: Any) -> str:
    """The innermost torch module a graph node belongs to ('input' for a model input)."""
    if node.op == "placeholder":
        return "input"
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else ""


def range_diagnostics(simulator: Any) -> tuple[dict[str, Any], ...]:
    """Each activation range the calibration set, and its flags: ``degenerate`` (no width),
    ``outlier-dominated`` (wider than OUTLIER_RATIO x its middle 99.8%), ``saturated`` (more
    than SATURATED_FRACTION of the parity inputs' values outside it), each with advice."""
    entries = []
    for node, (low, high) in simulator.ranges.items():
        p_low, p_high = simulator.bulk.get(node, (low, high))
        span, bulk = max(high, 0.0) - min(low, 0.0), max(p_high, 0.0) - min(p_low, 0.0)
        outside, total = simulator.outside.get(node, (0, 0))
        flags = []
        if span <= max(abs(low), abs(high), 1.0) * EPS32:
            flags.append("degenerate")
        elif bulk > 0 and span / bulk > OUTLIER_RATIO:
            flags.append("outlier-dominated")
        if total and outside / total > SATURATED_FRACTION:
            flags.append("saturated")
        entries.append({
            "tensor": node.name, "module": _module_of(node), "low": low, "high": high, "p0.1": p_low, "p99.9": p_high,
            "steps_for_bulk": round(255.0 * bulk / span, 1) if span > 0 else 0.0,
            "outside_on_parity": round(outside / total, 6) if total else 0.0,
            "flags": flags, "advice": [_ADVICE[f] for f in flags],
        })
    return tuple(entries)


def describe_flags(ranges: Sequence[dict[str, Any]]) -> str | None:
    """One sentence for a report: how many ranges are flagged, and the first of them."""
    flagged = [r for r in ranges if r["flags"]]
    if not flagged:
        return None
    first = flagged[0]
    where = f"{first['tensor']} ({first['module']})" if first["module"] else first["tensor"]
    return (
        f"calibration: {len(flagged)} of {len(ranges)} activation ranges flagged, first {where}: {', '.join(first['flags'])} "
        f"[{first['low']:.4g}, {first['high']:.4g}], middle 99.8% [{first['p0.1']:.4g}, {first['p99.9']:.4g}]; {first['advice'][0]} "
        "(every range: int8_reference.ranges in report.json)"
    )


def _flat_nodes(value: Any) -> list[Any]:
    if isinstance(value, (list, tuple)):
        return [n for item in value for n in _flat_nodes(item)]
    if isinstance(value, dict):
        return [n for item in value.values() for n in _flat_nodes(item)]
    return [value]


def _output_sources(graph_module: Any) -> frozenset[Any]:
    """The nodes whose values the model outputs: each output, through the ops that only move values."""
    output_node = next(n for n in graph_module.graph.nodes if n.op == "output")
    sources = set()
    for node in _flat_nodes(output_node.args[0]):
        while hasattr(node, "op") and _op_name(node) in _MOVES_VALUES and node.args:
            node = node.args[0]
        sources.add(node)
    return frozenset(sources)


def _calibrated_range(node: Any, ranges: dict[Any, tuple[float, float]]) -> tuple[float, float] | None:
    """The range an output was quantized to: its own, or that of the value it merely moves."""
    while node is not None and hasattr(node, "op"):
        if node in ranges:
            return ranges[node]
        if _op_name(node) in _MOVES_VALUES and node.args:
            node = node.args[0]
            continue
        return None
    return None


# --------------------------------------------------------------------------- vacuous references


def vacuous_reference(reference_outputs: Outputs, inputs_batches: Sequence[tuple[np.ndarray, ...]], output_names: Sequence[str] | None = None) -> str | None:
    """A one-line reason when the reference's float outputs cannot judge an artifact, else None.

    Flagged only when every float output is vacuous: 0 for every input, the same for every input
    (while the inputs differ), or peaking below float32 resolution of the inputs' peak (e.g.
    outputs ~1e-9 from inputs ~1). One constant output beside real ones (a detector's anchors)
    is a fine model.
    """
    if not reference_outputs or not reference_outputs[0]:
        return None
    names = list(output_names) if output_names else [f"output_{i}" for i in range(len(reference_outputs[0]))]
    input_peak = max((float(np.max(np.abs(a), initial=0.0)) for b in inputs_batches for a in b if np.issubdtype(np.asarray(a).dtype, np.floating)), default=0.0)
    inputs_differ = _differ([np.concatenate([np.asarray(a, np.float64).ravel() for a in b]) for b in inputs_batches])
    reasons = []
    for index, name in enumerate(names):
        values = [np.asarray(sample[index]) for sample in reference_outputs]
        if not np.issubdtype(values[0].dtype, np.floating):
            return None
        peak = max(float(np.max(np.abs(v), initial=0.0)) for v in values)
        if peak == 0.0:
            reasons.append(f"the reference output {name!r} is 0 for every input")
        elif input_peak > 0 and peak < EPS32 * input_peak:
            reasons.append(f"the reference output {name!r} peaks at {peak:.3g}, below float32 resolution of the inputs (peak {input_peak:.3g})")
        elif inputs_differ and not _differ([v.astype(np.float64).ravel() for v in values], 8 * EPS32 * peak):
            reasons.append(f"the reference output {name!r} is the same for every input")
        else:
            return None
    more = f" (and {len(reasons) - 1} more outputs)" if len(reasons) > 1 else ""
    return reasons[0] + more + ": it cannot tell an honest artifact from a broken one"


def _differ(samples: Sequence[np.ndarray], atol: float = 0.0) -> bool:
    if len(samples) < 2:
        return False
    first = samples[0]
    return any(s.shape != first.shape or float(np.max(np.abs(s - first), initial=0.0)) > atol for s in samples[1:])
