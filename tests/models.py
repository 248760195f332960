"""Small members of each model family, as MODEL factories for the end-to-end tests
(``tests/models.py:resnet_tiny``). The architectures are the zoo's (examples/zoo.py), shrunk."""

import torch

from edgex.examples import zoo


def resnet_tiny():
    torch.manual_seed(0)
    model = zoo.ResNet(widths=(8, 16, 16, 32), blocks=(1, 1, 1, 1), classes=10, stem_stride=1)
    return zoo._seeded(model), (torch.randn(1, 3, 32, 32),)


def mobilenet_tiny():
    torch.manual_seed(0)
    return zoo._seeded(zoo.MobileNetV2(classes=10)), (torch.randn(1, 3, 32, 32),)


def transformer_tiny():
    torch.manual_seed(0)
    return zoo.TransformerClassifier(dim=32, heads=4, layers=1, classes=5).eval(), (torch.randn(1, 8, 32),)


def lstm_tiny():
    torch.manual_seed(0)
    return zoo.LSTMClassifier(features=8, hidden=16, classes=3).eval(), (torch.randn(1, 10, 8),)


def nan_model():
    class Nan(torch.nn.Module):
        def forward(self, x):
            return x * float("nan")

    return Nan(), (torch.randn(1, 4),)
