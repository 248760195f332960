"""Architectures edge users ship, built from ``torch.nn`` alone, with seeded weights.

torchvision does not import beside the CPU torch wheel used here, so the classics are written
out. Batch-norm statistics are seeded away from (0, 1) so that converters really fold them.
"""

from __future__ import annotations

import torch
import torch.nn as nn


def _seeded(model: nn.Module, seed: int = 0) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=generator) * 0.5 + 0.75)
                module.weight.copy_(torch.rand(n, generator=generator) * 0.5 + 0.75)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.1)
    return model.eval()


def _batch_statistics(model: nn.Module, shape: tuple[int, ...], seed: int = 0) -> nn.Module:
    """BatchNorm running statistics measured on a seeded random batch, as training would leave
    them: with made-up statistics a deep untrained network's signal dies out and its output is
    the same for every input (edgex rightly calls such a reference inconclusive)."""
    generator = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average: one batch sets the statistics exactly
    model.train()
    with torch.no_grad():
        model(torch.randn((16, *shape[1:]), generator=generator))
    for norm in norms:
        norm.momentum = 0.1
    return model.eval()


def _init(seed: int) -> None:
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- ResNet


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class ResNet(nn.Module):
    def __init__(self, widths=(64, 128, 256, 512), blocks=(2, 2, 2, 2), classes=1000, stem_stride=2, stem_pool=True) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, widths[0], 7 if stem_stride == 2 else 3, stem_stride, 3 if stem_stride == 2 else 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()]
        if stem_pool:
            layers.append(nn.MaxPool2d(3, 2, 1))
        self.stem = nn.Sequential(*layers)
        stages, cin = [], widths[0]
        for i, (width, count) in enumerate(zip(widths, blocks)):
            for j in range(count):
                stages.append(BasicBlock(cin, width, 2 if (j == 0 and i > 0) else 1))
                cin = width
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


def resnet18():
    _init(0)
    return _seeded(ResNet()), (torch.randn(1, 3, 224, 224),)


def resnet_small():
    _init(1)
    model = ResNet(widths=(32, 64, 128, 256), blocks=(2, 2, 2, 2), classes=100, stem_stride=1, stem_pool=True)
    return _seeded(model, 1), (torch.randn(1, 3, 64, 64),)


# --------------------------------------------------------------------------- MobileNetV2


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_residual = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout),
        ]
        self.block = nn.Sequential(*layers)

    def forward(self, x):
        out = self.block(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    #: (expansion, channels, repeats, stride), width 0.5 of the paper's table
    SETTINGS = ((1, 8, 1, 1), (6, 16, 2, 2), (6, 16, 3, 2), (6, 32, 4, 2), (6, 48, 3, 1), (6, 80, 3, 2), (6, 160, 1, 1))

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6()]
        cin = 16
        for expand, cout, repeats, stride in self.SETTINGS:
            for i in range(repeats):
                layers.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expand))
                cin = cout
        layers += [nn.Conv2d(cin, 640, 1, bias=False), nn.BatchNorm2d(640), nn.ReLU6()]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(640, classes)

    def forward(self, x):
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def mobilenet():
    _init(2)
    return _batch_statistics(_seeded(MobileNetV2(), 2), (1, 3, 96, 96), 2), (torch.randn(1, 3, 96, 96),)


# --------------------------------------------------------------------------- transformer encoder


class TransformerClassifier(nn.Module):
    def __init__(self, dim: int = 64, heads: int = 4, layers: int = 2, classes: int = 10) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=dim * 2, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, tokens):
        return self.head(self.norm(self.encoder(tokens)).mean(dim=1))


def transformer():
    _init(3)
    return TransformerClassifier().eval(), (torch.randn(1, 16, 64),)


class VisionTransformer(nn.Module):
    """ViT-style: a patch convolution, learned positions, nn.TransformerEncoder with GELU (as in
    every ViT MLP), a pooled classification head."""

    def __init__(self, image: int = 16, patch: int = 4, dim: int = 32, heads: int = 4, layers: int = 1, classes: int = 5) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, patch, stride=patch)
        self.position = nn.Parameter(torch.randn(1, (image // patch) ** 2, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=dim * 2, dropout=0.0, activation="gelu", batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, images):
        tokens = self.patch(images).flatten(2).transpose(1, 2) + self.position
        return self.head(self.norm(self.encoder(tokens)).mean(dim=1))


# --------------------------------------------------------------------------- LSTM


class LSTMClassifier(nn.Module):
    def __init__(self, features: int = 16, hidden: int = 32, classes: int = 5) -> None:
        super().__init__()
        self.lstm = nn.LSTM(features, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, sequence):
        out, _ = self.lstm(sequence)
        return self.head(out[:, -1])


def lstm():
    _init(4)
    return LSTMClassifier().eval(), (torch.randn(1, 20, 16),)


# --------------------------------------------------------------------------- DS-CNN (keyword spotting)


class DSCNN(nn.Module):
    """DS-CNN-S of "Hello Edge" (Zhang et al. 2017): 49 frames x 10 MFCC, 12 keywords."""

    def __init__(self, channels: int = 64, blocks: int = 4, classes: int = 12) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(1, channels, (10, 4), (2, 2), (5, 1), bias=False), nn.BatchNorm2d(channels), nn.ReLU()]
        for _ in range(blocks):
            layers += [
                nn.Conv2d(channels, channels, 3, 1, 1, groups=channels, bias=False), nn.BatchNorm2d(channels), nn.ReLU(),
                nn.Conv2d(channels, channels, 1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(),
            ]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, classes)

    def forward(self, mfcc):
        return self.classifier(torch.flatten(self.pool(self.features(mfcc)), 1))


def dscnn():
    _init(5)
    return _seeded(DSCNN(), 5), (torch.randn(1, 1, 49, 10),)
