"""The digits CNN behind ``examples:digits`` and ``edgex demo``.

Data: scikit-learn's bundled digits set (1,797 labelled 8x8 images, no download), scaled to
[0, 1] and split 75/25 with a fixed seed. Weights: ``digits_cnn.pt`` beside this file, a state
dict (loaded with ``weights_only=True``) made by ``python -m edgex.examples.digits``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

WEIGHTS = Path(__file__).with_name("digits_cnn.pt")
SPLIT_SEED = 0


def build():
    import torch.nn as nn

    class DigitsCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                nn.MaxPool2d(2),
                nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
            )
            self.classifier = nn.Linear(64, 10)

        def forward(self, image):
            return self.classifier(self.features(image))

    return DigitsCNN()


def data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test); x is float32 N x 1 x 8 x 8 in [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=SPLIT_SEED, stratify=y)
    return x_train, y_train, x_test, y_test


def example():
    import torch

    from edgex.examples import Example

    model = build()
    model.load_state_dict(torch.load(WEIGHTS, map_location="cpu", weights_only=True))
    model.eval()
    x_train, _, x_test, y_test = data()
    return Example(
        module=model,
        example_inputs=(torch.from_numpy(x_test[:1]),),
        calibration=(x_train,),  # the training images, unlabelled: int8 calibration and distillation data
        eval_data=(x_test, y_test),
    )


def train(epochs: int = 40, seed: int = 0):
    """Train the CNN from scratch (a few seconds on a CPU)."""
    import torch

    torch.manual_seed(seed)
    x_train, y_train, x_test, y_test = data()
    model = build()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(xt), generator=generator)
        for start in range(0, len(xt), 64):
            batch = order[start : start + 64]
            loss = torch.nn.functional.cross_entropy(model(xt[batch]), yt[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean()
    return model, float(accuracy)


if __name__ == "__main__":
    import torch

    trained, acc = train()
    torch.save(trained.state_dict(), WEIGHTS)
    print(f"saved {WEIGHTS} (test accuracy {acc:.4f})")
