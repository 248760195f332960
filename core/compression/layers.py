"""Which weights a pruning method may touch: weight tensors, the final (classifier) layers, and
``--exclude`` patterns. Shared by every built-in method so that they agree on what is kept.
"""

from __future__ import annotations

import fnmatch
from typing import Any, Iterable, Mapping, Sequence

from edgex.core.errors import UsageError

#: autograd nodes that only reshape or retype a tensor: a weight reached through them is still
#: "used directly" by the op above (``linear`` reaches its weight through ``TBackward0``)
_VIEW_NODES = ("TBackward", "ViewBackward", "UnsafeViewBackward", "ReshapeAlias", "PermuteBackward", "TransposeBackward",
               "ExpandBackward", "UnsqueezeBackward", "SqueezeBackward", "ToCopyBackward", "CloneBackward")
_VIEW_DEPTH = 3


def weight_parameters(module: Any) -> list[tuple[str, Any]]:
    """Every floating-point parameter with two or more dimensions (conv kernels, linear and
    attention matrices, LSTM gates): what "the weights" of a model are. Biases and the affine
    parameters of normalisation layers are left out: they are few and pruning them saves nothing.
    """
    seen: set[int] = set()
    found = []
    for name, parameter in module.named_parameters():
        if parameter.dim() >= 2 and parameter.is_floating_point() and id(parameter) not in seen:
            seen.add(id(parameter))
            found.append((name, parameter))
    return found


def owner_name(parameter_name: str) -> str:
    """``features.0.weight`` -> ``features.0`` (the module that holds the parameter)."""
    return parameter_name.rpartition(".")[0]


def final_weights(module: Any, example_inputs: Sequence[Any]) -> list[str]:
    """Names of the weights whose layer produces a model output with no weight layer after it:
    the classifier of a classification net, the head of any other. Found by walking the autograd
    graph back from every output until an op that uses a weight directly, so that anything after
    the last layer (softmax, mean, reshapes, residual adds, batch norm) and models with several
    heads are handled alike. Empty when the outputs do not depend on any weight.
    """
    import torch

    from edgex.core.loading import flatten_outputs

    names = {id(p): n for n, p in module.named_parameters()}
    weights = {id(p) for _, p in weight_parameters(module)}
    flags = [(p, p.requires_grad) for p in module.parameters() if p.is_floating_point()]
    try:
        for parameter, _ in flags:
            parameter.requires_grad_(True)
        with torch.enable_grad():
            _, outputs = flatten_outputs(module(*example_inputs))
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)

    found: list[str] = []
    stack = [t.grad_fn for t in outputs if t.grad_fn is not None]
    seen: set[Any] = set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        used = _weights_used_by(node, weights)
        if used:
            found.extend(names[i] for i in used if names[i] not in found)
            continue
        stack.extend(next_node for next_node, _ in node.next_functions)
    return sorted(found)


def _weights_used_by(node: Any, weights: set[int]) -> list[int]:
    """The weights an autograd node consumes directly (or through a few view ops)."""
    used = []
    for child, _ in node.next_functions:
        depth = 0
        while child is not None and depth < _VIEW_DEPTH and type(child).__name__.startswith(_VIEW_NODES):
            if len(child.next_functions) != 1:
                break
            child = child.next_functions[0][0]
            depth += 1
        variable = getattr(child, "variable", None)  # AccumulateGrad: a leaf parameter
        if variable is not None and id(variable) in weights:
            used.append(id(variable))
    return used


def ancestors(name: str) -> list[str]:
    """``a.b.c`` -> ``["a.b.c", "a.b", "a"]``."""
    parts = name.split(".") if name else []
    return [".".join(parts[:i]) for i in range(len(parts), 0, -1)]


def matches(name: str, patterns: Iterable[str]) -> bool:
    """Whether a module or parameter name, or a module holding it, matches a pattern."""
    return any(fnmatch.fnmatchcase(candidate, pattern) for candidate in ancestors(name) for pattern in patterns)


def check_patterns(patterns: Sequence[str], module: Any) -> None:
    """Every ``--exclude`` pattern must name something in the model: a typo must not silently
    prune the layer the user meant to keep."""
    names = [n for n, _ in module.named_modules() if n] + [n for n, _ in module.named_parameters()]
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in names):
            shown = [n for n, _ in module.named_modules() if n and "." not in n][:8]
            raise UsageError(
                f"--exclude {pattern!r} matches no module of the model (top-level modules: {', '.join(shown) or 'none'}; "
                "patterns are fnmatch patterns on dotted module names, e.g. 'features.0' or 'layers.*')"
            )


def layer_table(before: Any, after: Any, kept: Mapping[str, str]) -> list[dict[str, Any]]:
    """Per weight tensor: shape (and the shape before, where channels were removed), size, the
    fraction of exact zeros, and why it was kept whole (``kept``: name -> reason)."""
    shapes = {name: tuple(p.shape) for name, p in weight_parameters(before)}
    rows = []
    for name, parameter in weight_parameters(after):
        numel = parameter.numel()
        zeros = int((parameter == 0).sum())
        row: dict[str, Any] = {"name": name, "shape": list(parameter.shape)}
        if name in shapes and shapes[name] != tuple(parameter.shape):
            row["shape_before"] = list(shapes[name])
        row.update({"params": numel, "sparsity": round(zeros / numel, 6) if numel else 0.0})
        if name in kept:
            row["kept"] = kept[name]
        rows.append(row)
    return rows

