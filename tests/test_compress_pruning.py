"""The built-in pruning methods on small real models: what they remove, what they keep, and that
the result still runs and keeps its output shapes."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from edgex.core import api
from edgex.core.compression import CompressionStep, count_params
from edgex.core.compression.layers import final_weights, weight_parameters
from edgex.core.errors import UsageError
from edgex.plugins import CompressionResult, CompressorSpec, hookimpl
from edgex.plugins.testing import tiny_cnn


pytestmark = pytest.mark.usefixtures("one_thread")


def compress(model, example, *steps, **kwargs):
    return api.compress(model, list(steps), example_inputs=example, **kwargs)


def sparsity(tensor) -> float:
    return float((tensor == 0).float().mean())


# --------------------------------------------------------------------------- small models


class ResidualNet(nn.Module):
    """Two residual blocks (adds couple channels) and a strided projection."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.a1, self.a2 = nn.Conv2d(16, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)
        self.down = nn.Conv2d(16, 32, 1, stride=2)
        self.b1, self.b2 = nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.Conv2d(32, 32, 3, padding=1)
        self.fc = nn.Linear(32, 5)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.a2(torch.relu(self.a1(x))))
        x = torch.relu(self.down(x) + self.b2(torch.relu(self.b1(x))))
        return self.fc(x.mean((2, 3)))


class DepthwiseNet(nn.Module):
    """MobileNet-style: expand, depthwise, project, with a residual around it."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.expand = nn.Conv2d(16, 48, 1)
        self.depthwise = nn.Conv2d(48, 48, 3, padding=1, groups=48)
        self.project = nn.Conv2d(48, 16, 1)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = x + self.project(torch.relu(self.depthwise(torch.relu(self.expand(x)))))
        return self.head(x.mean((2, 3)))


class ConcatNet(nn.Module):
    """Inception-style: two branches concatenated along channels."""

    def __init__(self) -> None:
        super().__init__()
        self.left, self.right = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(3, 24, 1)
        self.merge = nn.Conv2d(40, 24, 3, padding=1)
        self.fc = nn.Linear(24, 3)

    def forward(self, x):
        x = torch.cat([torch.relu(self.left(x)), torch.relu(self.right(x))], dim=1)
        return self.fc(torch.relu(self.merge(x)).mean((2, 3)))


class AttentionNet(nn.Module):
    """Tokens projected to a residual stream with multi-head attention, then a head."""

    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.embed = nn.Linear(12, dim)
        nn.init.normal_(self.embed.bias)  # distinct values: they identify the kept channels
        layer = nn.TransformerEncoderLayer(dim, heads, dim * 2, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.head = nn.Linear(dim, 6)

    def forward(self, tokens):
        return self.head(self.encoder(self.embed(tokens)).mean(1))


def seeded(cls, *shape):
    torch.manual_seed(0)
    return cls().eval(), (torch.randn(*shape),)


# --------------------------------------------------------------------------- the final layer


def test_final_weights_found_through_ops_after_the_classifier():
    class Heads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Conv2d(3, 8, 3)
            self.cls = nn.Linear(8, 4)
            self.seg = nn.Conv2d(8, 2, 1)
            self.bn = nn.BatchNorm2d(2)

        def forward(self, x):
            h = torch.relu(self.body(x))
            # ops after the last weight layer (softmax, batch norm) are walked through
            return torch.softmax(self.cls(h.mean((2, 3))), 1), self.bn(self.seg(h))

    model = Heads().eval()
    assert final_weights(model, (torch.randn(1, 3, 8, 8),)) == ["cls.weight", "seg.weight"]
    cnn, example = tiny_cnn()
    assert final_weights(cnn, example) == ["7.weight"]
    assert all(p.requires_grad for p in cnn.parameters())  # restored


# --------------------------------------------------------------------------- l1-unstructured


def test_unstructured_global_zeroes_the_share_and_keeps_the_classifier():
    model, example = seeded(ResidualNet, 1, 3, 16, 16)
    pruned, summary = compress(model, example, CompressionStep("l1-unstructured", {"amount": 0.6}))
    weights = dict(weight_parameters(pruned.module))
    body = [p for name, p in weights.items() if name != "fc.weight"]
    zeros = sum(int((p == 0).sum()) for p in body)
    assert zeros == round(0.6 * sum(p.numel() for p in body))
    assert sparsity(weights["fc.weight"]) == 0.0
    # the smallest magnitudes went: every surviving weight is at least as large as any zeroed one
    original = dict(weight_parameters(model))
    removed = torch.cat([original[n][weights[n] == 0].abs() for n in weights if n != "fc.weight"]).detach()
    kept = torch.cat([original[n][weights[n] != 0].abs() for n in weights if n != "fc.weight"]).detach()
    assert float(removed.max()) <= float(kept.min())
    # masks are gone: plain parameters, no forward pre-hooks, nothing named *_orig / *_mask
    assert not any(name.endswith(("_orig", "_mask")) for name in pruned.module.state_dict())
    assert not any(m._forward_pre_hooks for m in pruned.module.modules())
    assert count_params(pruned.module)[0] == count_params(model)[0]
    assert summary["after"]["nonzero_params"] < summary["before"]["nonzero_params"]
    row = {r["name"]: r for r in summary["layers"]}
    assert row["fc.weight"]["kept"].startswith("final layer") and row["fc.weight"]["sparsity"] == 0.0
    # the original is untouched
    assert all(sparsity(p) < 0.01 for _, p in weight_parameters(model))


def test_unstructured_per_layer_prunes_each_layer_by_the_amount():
    model, example = seeded(ConcatNet, 1, 3, 8, 8)
    pruned, summary = compress(model, example, CompressionStep("l1-unstructured", {"amount": 0.5, "scope": "layer"}))
    for name, p in weight_parameters(pruned.module):
        expected = 0.0 if name == "fc.weight" else round(0.5 * p.numel()) / p.numel()
        assert sparsity(p) == pytest.approx(expected), name
    assert summary["scope"] == "layer"


def test_exclude_and_prune_classifier():
    model, example = seeded(ResidualNet, 1, 3, 16, 16)
    pruned, summary = compress(
        model, example, CompressionStep("l1-unstructured", {"amount": 0.5, "exclude": ("stem*", "a?"), "prune_classifier": True})
    )
    weights = dict(weight_parameters(pruned.module))
    for name in ("stem.0.weight", "a1.weight", "a2.weight"):
        assert sparsity(weights[name]) == 0.0, name
    assert sparsity(weights["fc.weight"]) > 0.1
    assert sparsity(weights["b2.weight"]) > 0.2
    kept = {r["name"]: r.get("kept") for r in summary["layers"]}
    assert kept["a1.weight"] == "excluded (--exclude)" and kept["fc.weight"] is None


def test_iterative_unstructured_reaches_the_total_amount():
    model, example = seeded(ConcatNet, 1, 3, 8, 8)
    pruned, summary = compress(model, example, CompressionStep("l1-unstructured", {"amount": 0.75, "steps": 3}))
    body = [p for name, p in weight_parameters(pruned.module) if name != "fc.weight"]
    total = sum(p.numel() for p in body)
    assert sum(int((p == 0).sum()) for p in body) == pytest.approx(0.75 * total, abs=3)
    rounds = [s["round"] for s in summary["steps"]]
    assert rounds == ["1/3", "2/3", "3/3"]
    assert summary["steps"][0]["amount"] == pytest.approx(1 - 0.25 ** (1 / 3))


def test_unstructured_prunes_attention_projections():
    model, example = seeded(AttentionNet, 1, 10, 12)
    pruned, _ = compress(model, example, CompressionStep("l1-unstructured", {"amount": 0.5}))
    attention = pruned.module.encoder.layers[0].self_attn
    assert sparsity(attention.in_proj_weight) > 0.2
    with torch.no_grad():
        assert pruned.module(*example).shape == (1, 6)


# --------------------------------------------------------------------------- l1-structured


def test_structured_residual_net_shrinks_consistently():
    model, example = seeded(ResidualNet, 1, 3, 16, 16)
    pruned, summary = compress(model, example, CompressionStep("l1-structured", {"amount": 0.5}))
    m = pruned.module
    # channels coupled by the residual adds were removed together
    assert m.stem[0].out_channels == m.a2.out_channels == m.a1.in_channels == m.b1.in_channels
    assert m.down.out_channels == m.b2.out_channels == m.fc.in_features
    assert m.fc.out_features == 5
    assert 0.15 < summary["ratios"]["params"] < 0.40
    assert summary["ratios"]["macs"] < 0.45
    with torch.no_grad():
        assert m(*example).shape == (1, 5)
    assert summary["steps"][0]["channels_after"] < summary["steps"][0]["channels_before"]


def test_structured_layer_scope_removes_the_share_of_every_layer():
    model, example = seeded(ResidualNet, 1, 3, 16, 16)
    pruned, _ = compress(model, example, CompressionStep("l1-structured", {"amount": 0.5, "scope": "layer"}))
    m = pruned.module
    assert (m.stem[0].out_channels, m.a1.out_channels, m.b1.out_channels, m.b2.out_channels) == (8, 8, 16, 16)


def test_structured_rounds_channel_counts_to_multiples_of_8_unless_told():
    def net():
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(3, 24, 3, padding=1), nn.ReLU(), nn.Conv2d(24, 40, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(40, 2),
        ).eval()

    example = (torch.randn(1, 3, 8, 8),)
    rounded, summary = compress(net(), example, CompressionStep("l1-structured", {"amount": 0.5, "scope": "layer"}))
    # 12 and 20 channels would be left: the nearest multiples of 8 (halves up) are 16 and 24
    assert (rounded.module[0].out_channels, rounded.module[2].out_channels) == (16, 24)
    assert summary["steps"][0]["round_to"] == 8
    exact, summary = compress(net(), example, CompressionStep("l1-structured", {"amount": 0.5, "scope": "layer", "round_to": 1}))
    assert (exact.module[0].out_channels, exact.module[2].out_channels) == (12, 20)
    assert summary["steps"][0]["round_to"] is None


def test_structured_depthwise_groups_follow_their_channels():
    model, example = seeded(DepthwiseNet, 1, 3, 12, 12)
    pruned, _ = compress(model, example, CompressionStep("l1-structured", {"amount": 0.5, "round_to": 8}))
    m = pruned.module
    assert m.depthwise.groups == m.depthwise.in_channels == m.depthwise.out_channels == m.expand.out_channels
    assert m.depthwise.out_channels < 48 and m.depthwise.out_channels % 8 == 0
    assert m.project.out_channels == m.stem.out_channels < 16
    with torch.no_grad():
        assert m(*example).shape == (1, 4)


def test_structured_concat_maps_branch_channels_into_the_merge():
    model, example = seeded(ConcatNet, 1, 3, 8, 8)
    pruned, _ = compress(model, example, CompressionStep("l1-structured", {"amount": 0.5}))
    m = pruned.module
    assert m.left.out_channels < 16 and m.right.out_channels < 24
    assert m.merge.in_channels == m.left.out_channels + m.right.out_channels
    # removing a channel must remove the merge's matching input slice, not another one
    reference, _ = seeded(ConcatNet, 1, 3, 8, 8)
    left_kept = [int(torch.nonzero((reference.left.bias == b))[0]) for b in m.left.bias]
    right_kept = [int(torch.nonzero((reference.right.bias == b))[0]) for b in m.right.bias]
    columns = left_kept + [16 + i for i in right_kept]
    merge_kept = [int(torch.nonzero((reference.merge.bias == b))[0]) for b in m.merge.bias]
    expected = reference.merge.weight[merge_kept][:, columns]
    assert torch.equal(m.merge.weight, expected)


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_structured_attention_keeps_heads_consistent(scope):
    model, example = seeded(AttentionNet, 1, 10, 12)
    bias = model.embed.bias.detach().clone()
    pruned, summary = compress(model, example, CompressionStep("l1-structured", {"amount": 0.5, "scope": scope}))
    attention = pruned.module.encoder.layers[0].self_attn
    assert attention.num_heads == 4 and attention.embed_dim < 32
    assert attention.embed_dim == 4 * attention.head_dim
    if scope == "layer":
        assert attention.embed_dim == 16
    # the residual stream's kept channels sit at the same offsets in every head
    kept = sorted(int(torch.nonzero(bias == b)[0]) for b in pruned.module.embed.bias)
    per_head = [sorted(k - 8 * h for k in kept if 8 * h <= k < 8 * (h + 1)) for h in range(4)]
    assert all(offsets == per_head[0] for offsets in per_head) and len(per_head[0]) == attention.head_dim
    assert summary["steps"][0]["attention"][0]["embed_dim_before"] == 32
    with torch.no_grad():
        assert pruned.module(*example).shape == (1, 6)


def test_structured_never_prunes_channels_tied_to_an_input():
    """A transformer fed embeddings directly: its residual stream is the input and stays whole."""

    class Direct(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
            self.head = nn.Linear(16, 3)

        def forward(self, tokens):
            return self.head(self.encoder(tokens).mean(1))

    model, example = seeded(Direct, 1, 5, 16)
    pruned, _ = compress(model, example, CompressionStep("l1-structured", {"amount": 0.5}))
    block = pruned.module.encoder.layers[0]
    assert block.self_attn.embed_dim == 16
    assert block.linear1.out_features < 32  # the feed-forward hidden layer is free to shrink
    with torch.no_grad():
        assert pruned.module(*example).shape == (1, 3)


def test_structured_keeps_recurrent_layers_whole():
    class Recurrent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inp = nn.Linear(6, 16)
            self.lstm = nn.LSTM(16, 12, batch_first=True)
            self.out = nn.Linear(12, 3)

        def forward(self, x):
            return self.out(self.lstm(torch.relu(self.inp(x)))[0][:, -1])

    model, example = seeded(Recurrent, 1, 7, 6)
    pruned, summary = compress(model, example, CompressionStep("l1-structured", {"amount": 0.5}))
    assert pruned.module.lstm.hidden_size == 12
    assert pruned.module.inp.out_features == pruned.module.lstm.input_size < 16
    assert any("LSTM kept whole" in m for m in summary["steps"][0]["messages"])


# --------------------------------------------------------------------------- refusals


def test_nothing_prunable_is_a_usage_error():
    model, example = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).eval(), (torch.randn(1, 12),)
    for method in ("l1-unstructured", "l1-structured"):
        with pytest.raises(UsageError, match="nothing to prune"):
            compress(model, example, CompressionStep(method, {"amount": 0.5}))


def test_exclude_matching_nothing_is_a_usage_error():
    model, example = tiny_cnn()
    with pytest.raises(UsageError, match="--exclude 'backbone.*' matches no module"):
        compress(model, example, CompressionStep("l1-structured", {"amount": 0.5, "exclude": ("backbone.*",)}))


def test_unknown_method_lists_the_installed_ones():
    model, example = tiny_cnn()
    with pytest.raises(UsageError, match="l1-structured, l1-unstructured"):
        compress(model, example, CompressionStep("l0-magic", {"amount": 0.5}))


def test_compressing_leaves_the_reference_unchanged():
    model, example = seeded(ResidualNet, 1, 3, 16, 16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    compress(model, example, CompressionStep("l1-structured", {"amount": 0.5}))
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


# --------------------------------------------------------------------------- third-party methods


class GridSnap:
    """A third-party method: registered like any plugin, called through the same stage."""

    @hookimpl
    def edgex_compressors(self):
        return [CompressorSpec("round-to-grid", "snap weights to a grid of 1/8")]

    @hookimpl
    def edgex_compress(self, request):
        if request.method != "round-to-grid":
            return None
        with torch.no_grad():
            for _, p in weight_parameters(request.module):
                p.copy_(torch.round(p * 8) / 8)
        return CompressionResult(request.module, "round-to-grid", {"amount": request.options["amount"], "grid": 0.125})


class Breaker:
    @hookimpl
    def edgex_compressors(self):
        return [CompressorSpec("drop-classes", "a broken method")]

    @hookimpl
    def edgex_compress(self, request):
        request.module[-1] = nn.Linear(16, 3)  # changes the output shape
        return CompressionResult(request.module, "drop-classes")


def test_a_third_party_method_runs_through_the_same_stage():
    from edgex.core.plugin_manager import PluginManager

    manager = PluginManager(load_entry_points=False, extra_plugins=[GridSnap()])
    model, example = tiny_cnn()
    steps = [CompressionStep("round-to-grid", {"amount": 0.5, "steps": 2})]
    pruned, summary = compress(model, example, *steps, plugins=manager)
    assert [s["round"] for s in summary["steps"]] == ["1/2", "2/2"]
    assert summary["steps"][0]["plugin"] == "GridSnap" and summary["steps"][0]["grid"] == 0.125
    assert all(torch.equal(p * 8, torch.round(p * 8)) for _, p in weight_parameters(pruned.module))


def test_a_method_that_changes_the_outputs_is_a_plugin_error():
    from edgex.core.errors import PluginError
    from edgex.core.plugin_manager import PluginManager

    manager = PluginManager(load_entry_points=False, extra_plugins=[Breaker()])
    model, example = tiny_cnn()
    with pytest.raises(PluginError, match="'drop-classes' .* changed the model's output shapes"):
        compress(model, example, CompressionStep("drop-classes", {"amount": 0.5}), plugins=manager)
