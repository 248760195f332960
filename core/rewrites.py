"""Target-aware rewrites: small substitutions in the torch model, made before converting it for
a target whose runtime or converter lacks what the model uses (``--rewrite auto``, the default).

A target declares its gaps in ``TargetSpec.lacks`` (names from :data:`GAPS`); a third-party
target opts in by listing them. Each :class:`Rewrite` fills one gap with an exact or
bounded-error equivalent built from ops the target has. None is used on trust: it is applied
to a copy of the model and *proven* by parity against the un-rewritten model on the run's
parity inputs (fp32); a rewrite whose relative output drift exceeds its ``bound``, or that
raises, is skipped and the report says why. The reference every artifact is judged against
stays the un-rewritten model.

Bounds: an exact rewrite (the same function, other ops) may only move the outputs by fp32
reordering, ``EXACT_BOUND`` = 1e-4 of the outputs' peak. The GELU rewrite is the tanh form
of GELU, which differs from PyTorch's erf GELU by at most ``GELU_TANH_MAX_ABS`` (4.73e-4, at
x = +-2.70) per element; its bound is ``APPROXIMATE_BOUND`` = 1e-3 of the outputs' peak, a
quarter of one int8 step of the output range (1/255), so that it can never be what an int8
verdict turns on. docs/rewrites.md has the list.
"""

from __future__ import annotations

import copy
import math
import types
from dataclasses import dataclass, field, replace
from functools import cache
from typing import Any, Callable, Sequence

import numpy as np

from edgex.core.errors import one_line
from edgex.core.types import ReferenceModel, TensorSpec

#: what a target may lack (``TargetSpec.lacks``), and what that means
GAPS = {
    "gelu": "no kernel for GELU (erf or tanh form)",
    "hardswish": "no kernel for hardswish / hardsigmoid",
    "fused-transformer": "its converter cannot read PyTorch's fused transformer fast path",
    "int64-inputs": "takes int32, not int64, integer inputs (token ids)",
    "lstm": "its converter's unrolled nn.LSTM has ops the runtime cannot take: a concatenation of more "
    "inputs than TFLM allows (10), fully-connected layers over the whole sequence (the Edge TPU's are one-dimensional)",
    "transpose-6d": "its TRANSPOSE takes at most 5 dimensions (window attention's partition and merge take 6)",
    "oversized-pool": "pads a pooling window larger than its input up to the window (int8: the sum divided by the "
    "window's area rounds to zero)",
}

#: relative output drift an exact rewrite may cause (fp32 reordering only)
EXACT_BOUND = 1e-4
#: relative output drift a bounded-error rewrite may cause: a quarter of an int8 output step
APPROXIMATE_BOUND = 1e-3
#: the most tensors one concatenation of an unrolled LSTM joins (TFLM's kMaxInputNum is 10)
LSTM_CHUNK = 8
#: max |gelu_tanh(x) - gelu_erf(x)| over all x (measured in float64 on a 1e-5 grid over [-12, 12])
GELU_TANH_MAX_ABS = 4.73e-4


@dataclass
class Draft:
    """The model while it is rewritten: a private copy of the reference's module and the dtype
    each input is fed in (a rewrite may change either)."""

    module: Any
    dtypes: list[str]
    input_names: list[str]
    #: the reference's example inputs (a rewrite that depends on shapes runs the model on them)
    example_inputs: tuple[np.ndarray, ...] = ()


@dataclass(frozen=True)
class Rewrite:
    """One substitution. ``apply`` changes a :class:`Draft` in place and returns what it
    replaced (module paths or input names); an empty list: nothing in this model to rewrite."""

    name: str
    #: the gap (a key of :data:`GAPS`) it fills for the targets that declare it
    gap: str
    description: str
    apply: Callable[[Draft], list[str]]
    #: the largest relative output drift its proof accepts (measured with the rewrites applied
    #: before it, so an exact rewrite goes first)
    bound: float = EXACT_BOUND


# --------------------------------------------------------------------------- the substitutions


#: 2 z = x * (_GELU_LINEAR + _GELU_CUBIC * x^2)
_GELU_LINEAR = 2.0 * math.sqrt(2.0 / math.pi)
_GELU_CUBIC = _GELU_LINEAR * 0.044715


def gelu_tanh_as_sigmoid(x: Any) -> Any:
    """GELU's tanh form, 0.5 x (1 + tanh(z)), written as x * sigmoid(2 z) with
    z = sqrt(2/pi) (x + 0.044715 x^3): multiplies, an add and LOGISTIC, which TFLM and the
    Edge TPU both run; written with tanh the converters fold it back into a GELU op."""
    import torch

    return x * torch.sigmoid(x * (_GELU_LINEAR + _GELU_CUBIC * x * x))


def _replace_children(module: Any, wanted: Callable[[Any], bool], make: Callable[[Any], Any]) -> list[str]:
    """Every submodule for which ``wanted`` is true replaced by ``make(submodule)``, in the mode
    (eval or training) of what it replaces; their paths. A new module starts in training mode:
    left so, the rewritten model is no longer the eval-mode model the user gave."""
    replaced = []
    for parent_path, parent in list(module.named_modules()):
        for name, child in list(parent.named_children()):
            if wanted(child):
                setattr(parent, name, make(child).train(child.training))
                replaced.append(f"{parent_path}.{name}" if parent_path else name)
    return replaced


@cache
def _make_modules() -> tuple[type, type, type]:
    """The replacement modules (classes built on first use: torch is imported only here)."""
    import torch
    from torch import nn

    class GeluTanhSigmoid(nn.Module):
        """GELU, tanh form, as x * sigmoid(2z) (see :func:`gelu_tanh_as_sigmoid`)."""

        def forward(self, x: Any) -> Any:
            return gelu_tanh_as_sigmoid(x)

    class HardsigmoidRelu6(nn.Module):
        """hardsigmoid(x) = relu6(x + 3) / 6: ADD, RELU6, MUL run on every int8 runtime."""

        def forward(self, x: Any) -> Any:
            return torch.nn.functional.relu6(x + 3.0) * (1.0 / 6.0)

    class HardswishRelu6(nn.Module):
        """hardswish(x) = (x / 6) * relu6(x + 3): MUL, ADD (RELU6 fused), MUL; written as
        x * (relu6(x + 3) / 6) litert-torch folds it back into HARD_SWISH."""

        def forward(self, x: Any) -> Any:
            return (x * (1.0 / 6.0)) * torch.nn.functional.relu6(x + 3.0)

    return GeluTanhSigmoid, HardsigmoidRelu6, HardswishRelu6


def _rewrite_gelu(draft: Draft) -> list[str]:
    import torch

    gelu_module, _, _ = _make_modules()
    replaced = _replace_children(draft.module, lambda m: isinstance(m, torch.nn.GELU), lambda m: gelu_module())
    # activations held as the function F.gelu: nn.TransformerEncoderLayer(activation="gelu"),
    # transformers' GELUActivation
    for path, module in draft.module.named_modules():
        for attribute, value in list(vars(module).items()):
            if value is torch.nn.functional.gelu:
                setattr(module, attribute, gelu_tanh_as_sigmoid)
                replaced.append(f"{path}.{attribute}" if path else attribute)
                if hasattr(module, "activation_relu_or_gelu"):
                    # else the layer's fused fast path would keep computing erf GELU in eager runs
                    module.activation_relu_or_gelu = 0
    return replaced + _rewrite_gelu_nodes(draft.module) + _rewrite_gelu_calls(draft)


def _rewrite_gelu_calls(draft: Draft) -> list[str]:
    """GELU called as a function in a module's own ``forward`` (``F.gelu(x)`` written there): no
    module or attribute to replace, and a GELU in every exported graph."""
    return _rewrite_calls(draft, _function_rewrites()(gelu=True))


def _rewrite_calls(draft: Draft, mode: Any) -> list[str]:
    """Calls a ``forward`` makes that ``mode`` (a :func:`_function_rewrites` mode) computes
    otherwise. Found by running the model once on its example inputs with the mode watching;
    then the model's ``forward`` runs under the mode, which every tracer the targets use
    (torch.export, strict or not, and the TorchScript tracer) records as the ops it computes
    instead. Returns ``"<module path>.forward"`` per module a call was made in."""
    import torch

    if not draft.example_inputs:
        return []
    found: dict[str, None] = {}
    stack: list[str] = []

    def left(module: Any, args: Any, output: Any) -> None:  # returns None: the output stays
        stack.pop()

    hooks = []
    for path, module in draft.module.named_modules():
        hooks.append(module.register_forward_pre_hook(lambda m, a, path=path: stack.append(path)))
        hooks.append(module.register_forward_hook(left))
    mode.watching = lambda: found.setdefault(stack[-1] if stack else "")
    try:
        with mode, torch.no_grad():
            draft.module(*[torch.from_numpy(np.asarray(x).astype(d, copy=False)) for x, d in zip(draft.example_inputs, draft.dtypes)])
    except Exception:  # a model that cannot run here is not one to look into: its modules are rewritten still
        found.clear()
    finally:
        mode.watching = None
        for hook in hooks:
            hook.remove()
    if not found:
        return []
    model_class = type(draft.module)

    def forward(self: Any, *args: Any, **kwargs: Any) -> Any:
        with mode:
            return model_class.forward(self, *args, **kwargs)

    # a subclass named as the model's: its state_dict, module paths and repr stay the user's
    draft.module.__class__ = type(model_class.__name__, (model_class,), {"forward": forward, "__module__": model_class.__module__, "__qualname__": model_class.__qualname__})
    return [f"{path}.forward" if path else "forward" for path in found]


def low_rank_permutation(shape: Sequence[int], dims: Sequence[int], most: int = 5) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """The transpose of a ``shape`` tensor by ``dims`` done on at most ``most`` dimensions: (the
    shape to reshape it to first, the permutation of that); None where it needs more. Size-1
    dimensions go (they move no data), and dimensions that stay neighbours, in the same order,
    are merged: a Swin window partition, (0, 1, 3, 2, 4, 5) of (1, 2, 4, 2, 4, C), is (0, 2, 1, 3)
    of (2, 4, 2, 4·C)."""
    index = {d: k for k, d in enumerate(d for d in range(len(shape)) if shape[d] != 1)}
    kept = [index[d] for d in dims if shape[d] != 1]
    sizes = [shape[d] for d in range(len(shape)) if shape[d] != 1]
    runs: list[list[int]] = []
    for d in kept:
        if runs and d == runs[-1][-1] + 1:
            runs[-1].append(d)
        else:
            runs.append([d])
    if not runs:
        return (1,), (0,)
    if len(runs) > most:
        return None
    in_order = sorted(runs, key=lambda run: run[0])
    return tuple(math.prod(sizes[d] for d in run) for run in in_order), tuple(in_order.index(run) for run in runs)


@cache
def _function_rewrites() -> type:
    """A torch function mode computing some calls otherwise: ``gelu``, every ``F.gelu`` as
    :func:`gelu_tanh_as_sigmoid`; ``transposes``, a permute or transpose of more than 5
    dimensions as reshapes around one of at most 5 (:func:`low_rank_permutation`). While its
    ``watching`` is set, each call it changes is reported to it."""
    import torch
    from torch.overrides import TorchFunctionMode

    permutes = (torch.Tensor.permute, torch.permute)
    transposes = (torch.Tensor.transpose, torch.transpose, torch.Tensor.swapaxes, torch.swapaxes)

    class FunctionRewrites(TorchFunctionMode):
        def __init__(self, gelu: bool = False, transposes: bool = False) -> None:
            super().__init__()
            self.gelu, self.transposes = gelu, transposes
            self.watching: Callable[[], Any] | None = None

        def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            kwargs = kwargs or {}
            done = self._otherwise(func, args, kwargs)
            if done is None:
                return func(*args, **kwargs)
            if self.watching is not None:
                self.watching()
            return done

        def _otherwise(self, func: Any, args: Any, kwargs: dict[str, Any]) -> Any:
            """What the call computes instead, or None where it stays as it is."""
            if self.gelu and func is torch.nn.functional.gelu:
                return gelu_tanh_as_sigmoid(args[0])
            if not (self.transposes and (func in permutes or func in transposes) and isinstance(args[0], torch.Tensor) and args[0].dim() > 5):
                return None
            x = args[0]
            if func in permutes:  # x.permute(0, 1, ...), x.permute((0, 1, ...)), torch.permute(x, dims=...)
                dims = list(kwargs.get("dims", args[1] if len(args) == 2 and not isinstance(args[1], int) else args[1:]))
            else:  # x.transpose(a, b), the dimensions given by position, then by name
                first, second = [*args[1:3], *(kwargs[name] for name in ("dim0", "dim1") if name in kwargs)]
                dims = list(range(x.dim()))
                dims[first], dims[second] = dims[second], dims[first]
            dims = [d % x.dim() for d in dims]
            plan = low_rank_permutation(tuple(x.shape), dims)
            if plan is None:
                return None
            merged, order = plan
            return x.reshape(merged).permute(order).reshape([x.shape[d] for d in dims])

    return FunctionRewrites


def _rewrite_high_rank_transposes(draft: Draft) -> list[str]:
    """A permute of 6 or more dimensions (window attention's partition and merge): TFLM's
    TRANSPOSE takes at most 5. The same data movement as reshapes around a transpose of at most
    5 dimensions (exact)."""
    return _rewrite_calls(draft, _function_rewrites()(transposes=True))


def _rewrite_gelu_nodes(root: Any) -> list[str]:
    """GELU calls in traced graphs: a torch.export program (.pt2) reaches edgex as a GraphModule
    whose GELUs are aten.gelu nodes, not modules."""
    import torch

    gelus = (torch.ops.aten.gelu.default, torch.nn.functional.gelu)
    replaced = []
    for path, module in root.named_modules():
        if not isinstance(module, torch.fx.GraphModule):
            continue
        nodes = [n for n in module.graph.nodes if n.op == "call_function" and n.target in gelus]
        for node in nodes:
            node.target, node.args, node.kwargs = gelu_tanh_as_sigmoid, node.args[:1], {}
            replaced.append(f"{path}:{node.name}" if path else node.name)
        if nodes:
            module.recompile()
    return replaced


def _rewrite_hard_activations(draft: Draft) -> list[str]:
    import torch

    _, hardsigmoid, hardswish = _make_modules()
    replaced = _replace_children(draft.module, lambda m: isinstance(m, torch.nn.Hardswish), lambda m: hardswish())
    return replaced + _replace_children(draft.module, lambda m: isinstance(m, torch.nn.Hardsigmoid), lambda m: hardsigmoid())


def _pair(v: Any) -> tuple[int, int]:
    """A pooling size given as one int or as (h, w)."""
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def _covers_input(pool: Any, height: int, width: int) -> bool:
    """Whether ``pool`` (nn.AvgPool2d / nn.MaxPool2d) makes one window over the whole input: no
    padding, a window at least the input's size (larger only with ceil_mode, as torch requires)."""
    kh, kw = _pair(pool.kernel_size)
    if _pair(pool.padding) != (0, 0) or getattr(pool, "divisor_override", None) is not None:
        return False
    if getattr(pool, "dilation", 1) not in (1, (1, 1)):
        return False
    exact = (kh, kw) == (height, width)
    return exact or (bool(pool.ceil_mode) and kh >= height and kw >= width)


@cache
def _global_pool_module() -> type:
    import torch
    from torch import nn

    class GlobalPool(nn.Module):
        """A pooling layer whose window covers its input, as a mean (max) over H and W; any other
        input shape runs the original layer."""

        def __init__(self, pool: Any) -> None:
            super().__init__()
            self.pool = pool

        def forward(self, x: Any) -> Any:
            if x.dim() == 4 and _covers_input(self.pool, int(x.shape[-2]), int(x.shape[-1])):
                if isinstance(self.pool, nn.MaxPool2d):
                    return torch.amax(x, dim=(-2, -1), keepdim=True)
                return torch.mean(x, dim=(-2, -1), keepdim=True)
            return self.pool(x)

    return GlobalPool


def _rewrite_oversized_pools(draft: Draft) -> list[str]:
    """``nn.AvgPool2d(k, ceil_mode=True)`` with k larger than the feature map (transformers'
    EfficientNet pools with ``kernel_size=hidden_dim``, e.g. 1280 on a 7x7 map): litert-torch pads
    the input to k x k and averages over k^2, then scales back up; in int8 the average of a
    window that is almost all padding rounds to zero. Replaced by the global mean it computes.
    Only layers whose window covers their input in a run on the example inputs are replaced."""
    import torch
    from torch import nn

    pools = [(path, m) for path, m in draft.module.named_modules() if type(m) in (nn.AvgPool2d, nn.MaxPool2d)]
    if not pools:
        return []
    covering: set[int] = set()

    def hook(module: Any, args: Any, output: Any) -> None:
        x = args[0] if args else None
        if isinstance(x, torch.Tensor) and x.dim() == 4 and _covers_input(module, int(x.shape[-2]), int(x.shape[-1])):
            if _pair(module.kernel_size) != (int(x.shape[-2]), int(x.shape[-1])):  # a window the size of the input pads nothing
                covering.add(id(module))

    handles = [m.register_forward_hook(hook) for _, m in pools]
    try:
        with torch.no_grad():
            draft.module(*[torch.from_numpy(np.ascontiguousarray(x)).to(getattr(torch, d)) for x, d in zip(draft.example_inputs, draft.dtypes)])
    finally:
        for handle in handles:
            handle.remove()
    make = _global_pool_module()
    return _replace_children(draft.module, lambda m: id(m) in covering, make)


def _forward_without_fast_path(self: Any, *args: Any, **kwargs: Any) -> Any:
    """The module's class forward with the fast path switched off for the call (and the trace)."""
    import torch

    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        return type(self).forward(self, *args, **kwargs)
    finally:
        torch.backends.mha.set_fastpath_enabled(before)


def _rewrite_fused_transformer(draft: Draft) -> list[str]:
    """Transformer layers and attention run their composite forward (the one torch.export sees)
    in every trace: TorchScript tracing otherwise records the fused aten._transformer_encoder_layer_fwd
    / _native_multi_head_attention, which no exporter lowers."""
    from torch import nn

    kinds = (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer, nn.MultiheadAttention)
    replaced = []
    for path, module in draft.module.named_modules():
        if isinstance(module, kinds) and "forward" not in vars(module):
            # bound to the module, so that a deep copy calls the copy
            module.forward = types.MethodType(_forward_without_fast_path, module)
            replaced.append(path or "(root)")
    return replaced


def cat_in_chunks(tensors: Sequence[Any], dim: int, chunk: int = LSTM_CHUNK) -> Any:
    """``torch.cat(tensors, dim)`` as concatenations of at most ``chunk`` tensors each: groups of
    ``chunk``, then the groups' results the same way (recursively), so that no CONCATENATION of
    the converted graph has more inputs than TFLM takes. Between one level's concatenations and
    the next a reshape (a trailing unit axis added, then removed) keeps the TFLite converter from
    folding a concatenation of concatenations along one axis back into one."""
    import torch

    tensors = list(tensors)
    if len(tensors) == 1:
        return tensors[0]
    dim = dim % tensors[0].dim()
    unit_axis = False
    while len(tensors) > chunk:
        groups = [tensors[i : i + chunk] for i in range(0, len(tensors), chunk)]
        joined = [torch.cat(group, dim) if len(group) > 1 else group[0] for group in groups]
        tensors = [x.squeeze(-1) if unit_axis else x.unsqueeze(-1) for x in joined]
        unit_axis = not unit_axis
    joined = torch.cat(tensors, dim)
    return joined.squeeze(-1) if unit_axis else joined


def _lstm_supported(module: Any) -> bool:
    """An nn.LSTM the step-by-step module computes exactly: no projection (proj_size 0), and
    nn.LSTM's own forward (a subclass that overrides it is left alone)."""
    from torch import nn

    return isinstance(module, nn.LSTM) and type(module).forward is nn.LSTM.forward and module.proj_size == 0 and module.mode == "LSTM"


@cache
def _lstm_steps_class() -> type:
    """The step-by-step LSTM (built on first use: torch is imported only here)."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    class LSTMSteps(nn.Module):
        """nn.LSTM (any num_layers, bidirectional, bias, batch_first, given (h0, c0) or none;
        proj_size 0) written out one time step at a time: the gate matmuls on 2-D [batch,
        features] tensors (FULLY_CONNECTED with one-dimensional outputs at batch 1), sigmoid and
        tanh, and the output sequence joined by :func:`cat_in_chunks` (no concatenation of more
        than ``LSTM_CHUNK`` tensors). It holds the LSTM's own parameters under their names, so
        its state_dict is the LSTM's. Returns ``(output, (h_n, c_n))`` in nn.LSTM's shapes."""

        def __init__(self, lstm: nn.LSTM) -> None:
            super().__init__()
            self.input_size, self.hidden_size, self.num_layers = lstm.input_size, lstm.hidden_size, lstm.num_layers
            self.bias, self.batch_first, self.bidirectional = lstm.bias, lstm.batch_first, lstm.bidirectional
            self.dropout = float(lstm.dropout)
            self.directions = 2 if lstm.bidirectional else 1
            for name in lstm._flat_weights_names:
                setattr(self, name, getattr(lstm, name))

        def extra_repr(self) -> str:
            return (f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, bias={self.bias}, "
                    f"batch_first={self.batch_first}, bidirectional={self.bidirectional}, chunk={LSTM_CHUNK}")

        def forward(self, input: Any, hx: Any = None) -> Any:
            if isinstance(input, nn.utils.rnn.PackedSequence):
                raise TypeError("LSTMSteps takes tensors, not a PackedSequence")
            batched = input.dim() == 3
            time_axis = 1 if batched and self.batch_first else 0
            steps_total = input.shape[time_axis]
            if batched:
                steps = [input.select(time_axis, t) for t in range(steps_total)]
            else:  # (L, H_in): a batch of one
                steps = [input[t : t + 1] for t in range(steps_total)]
            h0 = c0 = None
            if hx is not None:
                h0, c0 = hx
                if not batched:
                    h0, c0 = h0.unsqueeze(1), c0.unsqueeze(1)
            h_n, c_n = [], []
            for layer in range(self.num_layers):
                outputs = []
                for direction in range(self.directions):
                    suffix = f"_l{layer}" + ("_reverse" if direction else "")
                    w_ih, w_hh = getattr(self, "weight_ih" + suffix), getattr(self, "weight_hh" + suffix)
                    b_ih = getattr(self, "bias_ih" + suffix) if self.bias else None
                    b_hh = getattr(self, "bias_hh" + suffix) if self.bias else None
                    index = layer * self.directions + direction
                    h = h0[index] if h0 is not None else None
                    c = c0[index] if c0 is not None else None
                    out: list[Any] = [None] * steps_total
                    order = range(steps_total - 1, -1, -1) if direction else range(steps_total)
                    for t in order:
                        gates = F.linear(steps[t], w_ih, b_ih)
                        if h is not None:
                            gates = gates + F.linear(h, w_hh, b_hh)
                        elif b_hh is not None:  # h = 0: h @ W_hh^T + b_hh is b_hh exactly
                            gates = gates + b_hh
                        i, f, g, o = gates.chunk(4, 1)
                        i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
                        c = i * g if c is None else f * c + i * g  # c = 0: f * c is 0 exactly
                        h = o * torch.tanh(c)
                        out[t] = h
                    h_n.append(h)
                    c_n.append(c)
                    outputs.append(out)
                steps = outputs[0] if self.directions == 1 else [torch.cat(pair, 1) for pair in zip(*outputs)]
                if self.dropout and self.training and layer < self.num_layers - 1:
                    steps = [F.dropout(x, self.dropout, True) for x in steps]
            output = cat_in_chunks([x.unsqueeze(time_axis) for x in steps], time_axis)
            h_n = cat_in_chunks([x.unsqueeze(0) for x in h_n], 0)
            c_n = cat_in_chunks([x.unsqueeze(0) for x in c_n], 0)
            if not batched:
                output, h_n, c_n = output.squeeze(1), h_n.squeeze(1), c_n.squeeze(1)
            return output, (h_n, c_n)

    return LSTMSteps


def _rewrite_lstm(draft: Draft) -> list[str]:
    """Every nn.LSTM the step-by-step module computes exactly, replaced by it (one with
    proj_size > 0, or a subclass with its own forward, is left as it is and not listed)."""
    steps = _lstm_steps_class()
    return _replace_children(draft.module, _lstm_supported, steps)


def _rewrite_int64_inputs(draft: Draft) -> list[str]:
    """int64 inputs fed as int32 (embedding lookups take either); the proof shows the model agrees."""
    replaced = []
    for index, dtype in enumerate(draft.dtypes):
        if dtype == "int64":
            draft.dtypes[index] = "int32"
            replaced.append(draft.input_names[index])
    return replaced


#: every rewrite, in the order they are tried: exact ones first, so that a bounded one's proof
#: measures its own drift; for one gap the first whose proof passes is used
REWRITES: tuple[Rewrite, ...] = (
    Rewrite("int32-inputs", "int64-inputs", "int64 inputs (token ids) fed as int32", _rewrite_int64_inputs),
    Rewrite("transformer-composite", "fused-transformer", "transformer layers and attention without PyTorch's fused fast path", _rewrite_fused_transformer),
    Rewrite(
        "lstm-steps", "lstm",
        f"nn.LSTM written out per time step: gate matmuls on [batch, features], sigmoid/tanh, the sequence joined {LSTM_CHUNK} steps at a time",
        _rewrite_lstm,
    ),
    Rewrite("global-pool", "oversized-pool", "a pooling window larger than its input (ceil_mode) as the global mean / max it computes", _rewrite_oversized_pools),
    Rewrite("hard-activations-relu6", "hardswish", "hardswish as (x/6)*relu6(x+3) and hardsigmoid as relu6(x+3)/6", _rewrite_hard_activations),
    Rewrite("transpose-5d", "transpose-6d", "a transpose of more than 5 dimensions as reshapes around one of at most 5 (size-1 dimensions dropped, neighbours merged)", _rewrite_high_rank_transposes),
    Rewrite(
        "gelu-tanh", "gelu",
        f"GELU as its tanh form x*sigmoid(2*sqrt(2/pi)*(x+0.044715x^3)) (at most {GELU_TANH_MAX_ABS:g} from erf GELU per element)",
        _rewrite_gelu, APPROXIMATE_BOUND,
    ),
)


# --------------------------------------------------------------------------- proving and applying


def relative_drift(reference: Sequence[Sequence[np.ndarray]], rewritten: Sequence[Sequence[np.ndarray]]) -> float:
    """max |rewritten - reference| / max |reference| over all samples, the worst output."""
    worst = 0.0
    for index in range(len(reference[0])):
        ref = np.stack([np.asarray(sample[index], dtype=np.float64) for sample in reference])
        got = np.stack([np.asarray(sample[index], dtype=np.float64) for sample in rewritten])
        if ref.shape != got.shape:
            return math.inf
        peak = float(np.max(np.abs(ref))) if ref.size else 0.0
        diff = float(np.max(np.abs(got - ref))) if ref.size else 0.0
        worst = max(worst, diff / peak if peak > 0 else diff)
    return worst


@dataclass
class Rewritten:
    """What a target converts: the model (rewritten, or the reference itself) and the report's
    ``rewrites`` entries (empty when the model has nothing the target lacks)."""

    model: ReferenceModel
    entries: list[dict[str, Any]] = field(default_factory=list)

    def cast(self, batches: Sequence[tuple[np.ndarray, ...]] | None) -> tuple[tuple[np.ndarray, ...], ...] | None:
        """``batches`` in the dtypes the converted model takes (int64 ids as int32)."""
        if batches is None:
            return None
        dtypes = [spec.dtype for spec in self.model.inputs]
        return tuple(tuple(np.asarray(x).astype(dtype, copy=False) for x, dtype in zip(batch, dtypes)) for batch in batches)

    def applied(self) -> tuple[str, ...]:
        """The names of the rewrites applied to the model, in order."""
        return tuple(e["name"] for e in self.entries if e.get("status") == "applied")

    def messages(self) -> list[str]:
        """One sentence per rewrite for the report's messages."""
        lines = []
        for e in self.entries:
            what = ", ".join(e["replaced"][:3]) + (f" and {e['count'] - 3} more" if e["count"] > 3 else "")
            if e["status"] == "applied":
                lines.append(f"rewrite {e['name']} applied to {what}: {e['description']}; fp32 drift {e['drift']:.3g} of the outputs' peak (bound {e['bound']:g})")
            else:
                lines.append(f"rewrite {e['name']} not applied{f' to {what}' if what else ''}: {e['reason']}")
        return lines


class Rewriter:
    """The rewrites of one run: each target's (by its gaps) proven once on the parity inputs and
    shared by the targets with the same gaps. The un-rewritten outputs are computed on first need."""

    def __init__(self, model: ReferenceModel, parity_inputs: Sequence[tuple[np.ndarray, ...]], mode: str = "auto", rewrites: Sequence[Rewrite] | None = None) -> None:
        self.model, self.parity_inputs, self.mode = model, list(parity_inputs), mode
        self.rewrites = tuple(REWRITES if rewrites is None else rewrites)
        self._done: dict[tuple[str, ...], Rewritten] = {}
        self._reference: list[list[np.ndarray]] | None = None

    def _reference_outputs(self) -> list[list[np.ndarray]]:
        from edgex.core.parity import reference_outputs

        if self._reference is None:
            self._reference = reference_outputs(self.model, self.parity_inputs)
        return self._reference

    def _draft(self, start: Draft | None = None) -> Draft:
        if start is not None:
            return Draft(copy.deepcopy(start.module), list(start.dtypes), list(start.input_names), start.example_inputs)
        return Draft(copy.deepcopy(self.model.module), [s.dtype for s in self.model.inputs], [s.name for s in self.model.inputs], tuple(self.model.example_inputs))

    def _prove(self, draft: Draft, rewrite: Rewrite) -> tuple[float | None, str]:
        """The drift of ``draft`` from the un-rewritten model, and why it fails its proof ("" if not)."""
        from edgex.core.parity import torch_outputs

        try:
            for batch in self.parity_inputs:
                for x, dtype in zip(batch, draft.dtypes):
                    if np.issubdtype(np.asarray(x).dtype, np.integer) and np.dtype(dtype).kind == "i":
                        info = np.iinfo(dtype)
                        if np.asarray(x).size and (np.min(x) < info.min or np.max(x) > info.max):
                            return None, f"its proof failed: a parity input holds values outside {dtype}"
            cast = [tuple(np.asarray(x).astype(d, copy=False) for x, d in zip(batch, draft.dtypes)) for batch in self.parity_inputs]
            drift = relative_drift(self._reference_outputs(), torch_outputs(draft.module, cast))
        except Exception as exc:  # a rewrite the model cannot run is one whose proof failed
            return None, f"its proof failed: the rewritten model raised {one_line(exc)}"
        if not drift <= rewrite.bound:  # also NaN
            return drift, f"its proof failed: fp32 drift {drift:.3g} of the outputs' peak exceeds its bound {rewrite.bound:g}"
        return drift, ""

    def for_target(self, lacks: Sequence[str]) -> Rewritten:
        """The model a target lacking ``lacks`` converts, every rewrite used proven first."""
        key = tuple(sorted(set(lacks)))
        if key not in self._done:
            made = self._rewrite(set(key))
            # targets the same rewrites serve convert the same object: what they share is keyed by it (ExportStore)
            same = next((r for r in self._done.values() if r.applied() == made.applied()), None)
            self._done[key] = Rewritten(same.model, made.entries) if same is not None else made
        return self._done[key]

    def _rewrite(self, lacks: set[str]) -> Rewritten:
        wanted = [r for r in self.rewrites if r.gap in lacks]
        if not wanted or self.model.module is None:
            return Rewritten(self.model)  # an ONNX reference has no torch modules to rewrite
        current: Draft | None = None
        #: a copy no rewrite changed, reused by the next (a deep copy of a large model is not free)
        unchanged: Draft | None = None
        filled: set[str] = set()
        entries: list[dict[str, Any]] = []
        for rewrite in wanted:
            if rewrite.gap in filled:
                continue
            entry: dict[str, Any] = {"name": rewrite.name, "gap": rewrite.gap, "description": rewrite.description, "bound": rewrite.bound, "drift": None}
            try:
                draft = unchanged or self._draft(current)
                unchanged = None
                replaced = rewrite.apply(draft)
            except Exception as exc:  # a model it cannot copy or walk: converted as it is
                entries.append({**entry, "replaced": [], "count": 0, "status": "skipped", "reason": f"could not be applied: {one_line(exc)}"})
                continue
            if not replaced:
                unchanged = draft
                continue
            entry.update(replaced=replaced, count=len(replaced))
            if self.mode == "none":
                entry.update(status="skipped", reason="--rewrite none")
            else:
                drift, failure = self._prove(draft, rewrite)
                entry["drift"] = drift
                if failure:
                    entry.update(status="skipped", reason=failure)
                else:
                    entry["status"] = "applied"
                    current = draft
                    filled.add(rewrite.gap)
            entries.append(entry)
        if current is None:
            return Rewritten(self.model, entries)
        inputs = tuple(TensorSpec(s.name, s.shape, d) for s, d in zip(self.model.inputs, current.dtypes))
        examples = tuple(np.asarray(x).astype(d, copy=False) for x, d in zip(self.model.example_inputs, current.dtypes))
        # same spec and sha256: the artifact still stands for the user's model
        return Rewritten(replace(self.model, module=current.module, inputs=inputs, example_inputs=examples), entries)
