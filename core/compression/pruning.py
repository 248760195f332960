"""Built-in pruning methods, a plugin like any other: ``l1-unstructured`` and ``l1-structured``.

Both read ``amount`` as the fraction of what is still there to remove in this call (the
weights not yet zero; the channels the model has now), so that the core's iterative schedule
can call them repeatedly. Both keep the final layers (the classifier) and the ``exclude``
patterns whole; ``prune_classifier`` lets l1-unstructured prune the classifier too.

- ``l1-unstructured``: ``torch.nn.utils.prune`` (``global_unstructured`` or ``l1_unstructured``
  per layer) zeroes the smallest-magnitude weights, then ``prune.remove`` makes the masks
  permanent so that export and every converter see plain tensors with exact zeros. Shapes do not
  change: dense runtimes run it no faster; it pays off in compressed size and on sparse kernels.
- ``l1-structured``: torch-pruning's dependency graph removes whole channels (group L1 norm), so
  residual adds, depthwise and grouped convolutions, concatenations and attention heads stay
  consistent. Layers get narrower: fewer parameters and MACs on every runtime.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Sequence

from edgex.core.compression.layers import (
    check_patterns,
    final_weights,
    matches,
    owner_name,
    weight_parameters,
)
from edgex.core.errors import UsageError
from edgex.plugins import CompressionRequest, CompressionResult, CompressorSpec, hookimpl

UNSTRUCTURED = "l1-unstructured"
STRUCTURED = "l1-structured"
SCOPES = ("global", "layer")
#: l1-structured keeps channel counts multiples of this unless told otherwise: convolution and
#: matrix kernels work in blocks of 8 or 16 channels (onnxruntime's NCHWc, XNNPACK, NPUs), and a
#: ResNet left at odd widths ran at about 0.53x the dense latency, rounded at about 0.3x
DEFAULT_ROUND_TO = 8

METHODS = (
    CompressorSpec(
        UNSTRUCTURED,
        "zero the smallest-magnitude weights (torch.nn.utils.prune, masks made permanent): "
        "smaller when compressed, no faster on dense runtimes",
    ),
    CompressorSpec(
        STRUCTURED,
        "remove whole channels with the smallest L1 norm through torch-pruning's dependency graph: "
        "fewer parameters and MACs on every runtime",
    ),
)


@hookimpl
def edgex_compressors():
    return METHODS


@hookimpl
def edgex_compress(request: CompressionRequest) -> CompressionResult | None:
    if request.method == UNSTRUCTURED:
        return prune_unstructured(request)
    if request.method == STRUCTURED:
        return prune_structured(request)
    return None


# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class PruneOptions:
    amount: float
    scope: str = "global"
    exclude: tuple[str, ...] = ()
    prune_classifier: bool = False
    round_to: int | None = None

    @classmethod
    def parse(cls, method: str, options: Any) -> "PruneOptions":
        try:
            amount = float(options["amount"])
        except (KeyError, TypeError, ValueError):
            raise UsageError(f"{method} needs an amount: the fraction to remove, in (0, 1)") from None
        if not 0.0 < amount < 1.0:
            raise UsageError(f"prune amount {amount:g} is outside (0, 1): give the fraction to remove, e.g. 0.5")
        scope = str(options.get("scope") or "global")
        if scope not in SCOPES:
            raise UsageError(f"prune scope {scope!r} is not one of {', '.join(SCOPES)}")
        round_to = options.get("round_to")
        if round_to is not None and int(round_to) < 1:
            raise UsageError(f"--prune-round-to {round_to} must be a positive channel count (1: no rounding)")
        return cls(
            amount=amount,
            scope=scope,
            exclude=tuple(options.get("exclude") or ()),
            prune_classifier=bool(options.get("prune_classifier")),
            round_to=int(round_to) if round_to is not None else None,
        )


def _kept_weights(module: Any, example: Any, options: PruneOptions) -> dict[str, str]:
    """Weight name -> why it stays whole: it is a final layer, or it matches ``--exclude``."""
    check_patterns(options.exclude, module)
    kept = {name: "excluded (--exclude)" for name, _ in weight_parameters(module) if matches(name, options.exclude)}
    for name in final_weights(module, example):
        kept.setdefault(name, "final layer (classifier)")
    return kept


# --------------------------------------------------------------------------- l1-unstructured


def prune_unstructured(request: CompressionRequest) -> CompressionResult:
    import torch
    from torch.nn.utils import prune

    options = PruneOptions.parse(UNSTRUCTURED, request.options)
    if options.round_to is not None:
        raise UsageError("--prune-round-to applies to channel pruning (l1-structured), not to l1-unstructured")
    module = request.module
    kept = _kept_weights(module, request.example_inputs, options)
    if options.prune_classifier:
        kept = {n: why for n, why in kept.items() if not why.startswith("final")}
    targets = [(name, p) for name, p in weight_parameters(module) if name not in kept]
    if not targets:
        what = ", ".join(kept) or "none"
        raise UsageError(
            f"nothing to prune: the model has no weight tensor outside the kept layers ({what}); "
            "the classifier is kept unless you pass --prune-classifier"
        )
    modules = dict(module.named_modules())
    pairs = [(modules[owner_name(name)], name.rpartition(".")[2]) for name, _ in targets]
    with torch.no_grad():
        nonzero = [int((p != 0).sum()) for _, p in targets]
    # ``amount`` is a share of the weights still nonzero: zeros from an earlier step (or from
    # the model itself) rank lowest and are counted on top, so repeated calls keep progressing.
    if options.scope == "global":
        already = sum(p.numel() for _, p in targets) - sum(nonzero)
        prune.global_unstructured(pairs, pruning_method=prune.L1Unstructured, amount=already + round(options.amount * sum(nonzero)))
    else:
        for (owner, attribute), (_, p), alive in zip(pairs, targets, nonzero):
            prune.l1_unstructured(owner, attribute, amount=p.numel() - alive + round(options.amount * alive))
    for owner, attribute in pairs:
        prune.remove(owner, attribute)  # the mask becomes plain zeros in an ordinary Parameter

    total = sum(p.numel() for _, p in targets)
    with torch.no_grad():
        zeros = sum(int((p == 0).sum()) for _, p in targets)  # prune.remove keeps the Parameter objects
    summary = {
        "amount": options.amount,
        "scope": options.scope,
        "prunable_weights": total,
        "sparsity": round(zeros / total, 6),
        "kept": kept,
    }
    messages = ()
    if not any(why.startswith("final") for why in kept.values()) and not options.prune_classifier:
        messages = ("no final layer was found in the autograd graph of the outputs: every weight was pruned",)
    return CompressionResult(module, UNSTRUCTURED, summary, messages)


# --------------------------------------------------------------------------- l1-structured


def _layer_for(module: Any, parameter_name: str) -> Any:
    """What torch-pruning must ignore to keep a weight whole: its layer; for an attention
    block's ``out_proj`` (applied by the ``MultiheadAttention`` itself) that block; for a weight
    a custom module uses functionally, the parameter itself (ignoring the module would ignore
    everything inside it)."""
    import torch.nn as nn

    modules = dict(module.named_modules())
    owner = owner_name(parameter_name)
    parent = owner.rpartition(".")[0]
    if owner and isinstance(modules.get(parent), nn.MultiheadAttention):
        return modules[parent]
    layer = modules[owner]
    if isinstance(layer, _layer_types()):
        return layer
    return module.get_parameter(parameter_name)


def _layer_types() -> tuple[type, ...]:
    import torch.nn as nn

    return (nn.modules.conv._ConvNd, nn.Linear, nn.MultiheadAttention, nn.RNNBase, nn.Embedding,
            nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def _rounded(pruner: Any, group: Any, round_to: int) -> Any:
    """The group with the number of channels it keeps rounded to the nearest multiple of
    ``round_to`` (at least ``round_to``; a layer narrower than that is left whole).

    torch-pruning's own ``round_to`` rounds down, so a 16-channel layer asked to keep 7 keeps 0,
    which its safety check turns into keeping all 16; and it rounds a head's offsets against the
    whole embedding. Groups split into channel groups (attention heads, grouped convolutions) are
    left as torch-pruning made them.
    """
    if round_to <= 1 or pruner._get_channel_groups(group) > 1:
        return group
    graph = pruner.DG
    module, handler = group[0].dep.target.module, group[0].dep.handler
    channels = graph.get_out_channels(module) if graph.is_out_channel_pruning_fn(handler) else graph.get_in_channels(module)
    keep = channels - len(group[0].idxs)
    rounded = min(channels, max(round_to, round_to * int(keep / round_to + 0.5)))
    if rounded == keep:
        return group
    full = graph.get_pruning_group(module, handler, list(range(channels)))
    order = pruner.estimate_importance(full).argsort()  # least important first
    return graph.get_pruning_group(module, handler, sorted(int(i) for i in order[: channels - rounded]))


def _input_guard(module: Any, example: Sequence[Any]) -> Any:
    """The model behind one identity layer per input, traced in its place and ignored.

    torch-pruning's graph does not see the model's inputs: a residual add on a raw input (a
    transformer fed embeddings directly) couples the input's channels to a group that it then
    prunes, and the model breaks. Seen through an ignored layer, such a group touches that layer's
    output channels and is left alone, like any group coupled to an output.
    """
    import torch
    import torch.nn as nn

    class InputGuard(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = module
            self.gates = nn.ModuleList(_identity_layer(x) for x in example)

        def forward(self, *inputs: Any) -> Any:
            return self.model(*[gate(x) for gate, x in zip(self.gates, inputs)])

    with torch.no_grad():
        return InputGuard()


def _identity_layer(x: Any) -> Any:
    """An exact identity on the axis a model takes as channels: axis 1 of image-like inputs
    (convolutions), the last axis of vectors and token sequences (linear layers)."""
    import torch
    import torch.nn as nn

    if not x.is_floating_point() or x.dim() < 2:
        return nn.Identity()
    if x.dim() in (4, 5):
        channels = x.shape[1]
        layer = (nn.Conv2d if x.dim() == 4 else nn.Conv3d)(channels, channels, 1, bias=False)
        layer.weight.copy_(torch.eye(channels).reshape(channels, channels, *([1] * (x.dim() - 2))))
    else:
        features = x.shape[-1]
        layer = nn.Linear(features, features, bias=False)
        layer.weight.copy_(torch.eye(features))
    return layer.to(x.dtype)


def _channels(module: Any, ignored: set[int]) -> int:
    import torch.nn as nn

    total = 0
    for layer in module.modules():
        if id(layer) in ignored:
            continue
        if isinstance(layer, nn.modules.conv._ConvNd):
            total += layer.out_channels
        elif isinstance(layer, nn.Linear):
            total += layer.out_features
    return total


def prune_structured(request: CompressionRequest) -> CompressionResult:
    import torch.nn as nn
    import torch_pruning as tp

    options = PruneOptions.parse(STRUCTURED, request.options)
    if options.prune_classifier:
        raise UsageError("--prune-classifier applies to l1-unstructured: removing a classifier's output channels would change the model's outputs")
    module = request.module
    kept = _kept_weights(module, request.example_inputs, options)
    messages: list[str] = []
    ignored = {id(_layer_for(module, name)): _layer_for(module, name) for name in kept}
    # torch-pruning 1.6.1 cannot remove LSTM/GRU hidden units consistently (index errors): keep them
    for name, layer in module.named_modules():
        if isinstance(layer, nn.RNNBase) and id(layer) not in ignored:
            ignored[id(layer)] = layer
            for weight, _ in layer.named_parameters():
                kept[f"{name}.{weight}" if name else weight] = "recurrent layer (not channel-prunable)"
            messages.append(f"{name}: {type(layer).__name__} kept whole (torch-pruning cannot prune recurrent layers)")
    heads = {layer: layer.num_heads for layer in module.modules() if isinstance(layer, nn.MultiheadAttention)}
    embed_before = {layer: layer.embed_dim for layer in heads}
    roots = [layer for layer in module.modules() if isinstance(layer, (nn.modules.conv._ConvNd, nn.Linear)) and id(layer) not in ignored]
    round_to = options.round_to if options.round_to is not None else DEFAULT_ROUND_TO
    settings: dict[str, Any] = {
        # group L1 norm, mean-normalised within each group so that a global ranking compares
        # channels of layers with different fan-in fairly
        "importance": tp.importance.MagnitudeImportance(p=1),
        "pruning_ratio": options.amount,
        "global_pruning": options.scope == "global",
        "ignored_layers": list(ignored.values()),
        # channels of an attention block are grouped by head: every head keeps the same offsets,
        # the head count is unchanged and embed_dim stays divisible by it
        "num_heads": dict(heads),
        # fresh dicts: torch-pruning updates these defaults in place, leaking between calls
        "in_channel_groups": {},
        "out_channel_groups": {},
    }
    if options.scope == "layer":
        # one scope per layer; torch-pruning's own local mode gives an attention group and the
        # layer it is re-rooted on the same scope name, and then skips the attention group
        settings["pruning_ratio_dict"] = {layer: options.amount for layer in roots}
    example = tuple(request.example_inputs)
    guarded = _input_guard(module, example)
    settings["ignored_layers"] += list(guarded.gates)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its notes on unwrapped parameters are not the user's business
            pruner = tp.pruner.BasePruner(guarded, example, **settings)
    except Exception as exc:
        raise UsageError(f"torch-pruning cannot trace the model's dependency graph: {_first_line(exc)}") from exc
    groups = list(pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers, root_module_types=pruner.root_module_types))
    if not groups:
        raise UsageError(
            "nothing to prune: no channel of this model can be removed without changing its inputs or "
            "outputs (the final layers, excluded and recurrent layers are kept; a model loaded from "
            ".pt2 or TorchScript has no nn layers to prune: compress the model's Python factory)"
        )
    before = _channels(module, set(ignored))
    try:
        for group in pruner.step(interactive=True):
            _rounded(pruner, group, round_to).prune()
    except Exception as exc:
        raise UsageError(f"torch-pruning failed on this model: {_first_line(exc)} (keep the layer with --exclude)") from exc
    after = _channels(module, set(ignored))
    if after == before:
        messages.append(f"no channel was removed: {options.amount:g} of these layers rounds to zero channels")
    attention = [
        {"num_heads": layer.num_heads, "embed_dim_before": embed_before[layer], "embed_dim": layer.embed_dim, "head_dim": layer.head_dim}
        for layer in heads
    ]
    names = {id(layer): name for name, layer in module.named_modules()}
    for entry, layer in zip(attention, heads):
        entry["module"] = names.get(id(layer), "?")
    summary = {
        "amount": options.amount,
        "scope": options.scope,
        "channels_before": before,
        "channels_after": after,
        "kept": kept,
    }
    summary["round_to"] = round_to if round_to > 1 else None
    if attention:
        summary["attention"] = attention
    return CompressionResult(module, STRUCTURED, summary, tuple(messages))


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0][:200]}" if lines else type(exc).__name__
