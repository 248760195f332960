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
    return zoo._batch_statistics(zoo._seeded(zoo.MobileNetV2(classes=10)), (1, 3, 32, 32)), (torch.randn(1, 3, 32, 32),)


def transformer_tiny():
    torch.manual_seed(0)
    return zoo.TransformerClassifier(dim=32, heads=4, layers=1, classes=5).eval(), (torch.randn(1, 8, 32),)


def vit_tiny():
    """ViT-style (patch conv, nn.TransformerEncoder with GELU) on 16x16 images: 16 tokens of 32."""
    torch.manual_seed(0)
    return zoo.VisionTransformer().eval(), (torch.randn(1, 3, 16, 16),)


class TokenClassifier(torch.nn.Module):
    """Token ids (int64, as tokenizers give them) -> embedding -> mean -> classes."""

    def __init__(self, vocab: int = 50, dim: int = 16, classes: int = 3) -> None:
        super().__init__()
        self.embedding = torch.nn.Embedding(vocab, dim)
        self.head = torch.nn.Linear(dim, classes)

    def forward(self, ids):
        return self.head(self.embedding(ids).mean(dim=1))


def token_classifier():
    torch.manual_seed(0)
    return TokenClassifier().eval(), (torch.randint(0, 50, (1, 8)),)


def lstm_tiny():
    torch.manual_seed(0)
    return zoo.LSTMClassifier(features=8, hidden=16, classes=3).eval(), (torch.randn(1, 10, 8),)


class SequenceLSTM(torch.nn.Module):
    """An LSTM whose every step's output is used (their mean over time), then a linear head."""

    def __init__(self, features: int = 8, hidden: int = 16, classes: int = 3) -> None:
        super().__init__()
        self.lstm = torch.nn.LSTM(features, hidden, batch_first=True)
        self.head = torch.nn.Linear(hidden, classes)

    def forward(self, sequence):
        out, _ = self.lstm(sequence)
        return self.head(out.mean(dim=1))


def lstm_long():
    """20 steps: litert-torch's unrolled LSTM then joins more tensors than TFLM's CONCATENATION takes (10)."""
    torch.manual_seed(0)
    return SequenceLSTM().eval(), (torch.randn(1, 20, 8),)


def nan_model():
    class Nan(torch.nn.Module):
        def forward(self, x):
            return x * float("nan")

    return Nan(), (torch.randn(1, 4),)


def fp16_overflow_mlp():
    """An MLP whose hidden activations reach ~1.3e5 (fp16 overflows above 65504) while its outputs
    stay below ~100: fp32 computes it exactly enough, an honest fp16 execution computes inf/nan.

    Input: one (1, 8) float tensor. ``fc1`` adds 6e4 to a spread of +-1.2e4 per input, so on
    standard-normal inputs some hidden unit passes 65504 on nearly every sample; ``fc2`` scales
    back down by ~1e-4. Every weight is fp16-representable, so only the activations overflow.
    """
    torch.manual_seed(0)
    net = torch.nn.Sequential()
    net.add_module("fc1", torch.nn.Linear(8, 16))
    net.add_module("act", torch.nn.ReLU())
    net.add_module("fc2", torch.nn.Linear(16, 4))
    with torch.no_grad():
        net.fc1.weight.copy_(torch.randn(16, 8) * 1.2e4)
        net.fc1.bias.fill_(6e4)
        net.fc2.weight.copy_(torch.randn(4, 16) * 2e-4)
        net.fc2.bias.zero_()
    return net.eval(), (torch.randn(1, 8),)


def zero_classifier():
    """A freshly initialised classifier as transformers builds some (EfficientNet, MobileViT):
    the last layer is zero, so the output is exactly 0 for every input."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 5))
    with torch.no_grad():
        net[4].weight.zero_()
        net[4].bias.zero_()
    return net.eval(), (torch.randn(1, 3, 16, 16),)


def constant_classifier():
    """The same with a bias left in: the output is the bias, the same for every input."""
    net, example = zero_classifier()
    with torch.no_grad():
        net[4].bias.copy_(torch.linspace(-1.0, 1.0, 5))
    return net, example


class Magnitude(torch.nn.Module):
    """Two projections combined as a magnitude, sqrt(a^2 + b^2) by torch.hypot: an operator
    coremltools has no converter for."""

    def __init__(self) -> None:
        super().__init__()
        self.real = torch.nn.Linear(8, 4)
        self.imag = torch.nn.Linear(8, 4)

    def forward(self, x):
        return torch.hypot(self.real(x), self.imag(x))


def magnitude():
    torch.manual_seed(0)
    return Magnitude().eval(), (torch.randn(1, 8),)


class Unexportable(torch.nn.Module):
    """Branches on its input's values: torch.export cannot capture data-dependent control flow."""

    def forward(self, x):
        if x.sum() > 0:
            return x * 2
        return x - 1


def unexportable():
    return Unexportable(), (torch.randn(1, 4),)


class SequenceLogits(torch.nn.Module):
    """A transformers sequence classifier taking ``input_ids`` only, returning its logits."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        return self.model(input_ids=input_ids).logits


class ImageLogits(torch.nn.Module):
    """A transformers image classifier taking ``pixel_values``, returning its logits."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return self.model(pixel_values=pixel_values).logits


def distilbert_tiny():
    """transformers' DistilBertForSequenceClassification from a tiny config (vocab 100, 1 layer of
    width 32, 2 heads): int64 token ids of length 8 -> 2 logits. Needs transformers."""
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    torch.manual_seed(0)
    config = DistilBertConfig(vocab_size=100, dim=32, n_layers=1, n_heads=2, hidden_dim=64, max_position_embeddings=16, num_labels=2)
    return SequenceLogits(DistilBertForSequenceClassification(config).eval()).eval(), (torch.randint(0, 100, (1, 8)),)


class WideRangeFeatures(torch.nn.Module):
    """One linear layer whose features span two scales (half of them ``scale`` x the others, the
    "massive activations" of transformers), each half read by its own head. Every int8 recipe
    shares one activation range across the layer's output, so the small half keeps a few int8
    steps (about 5 dB); int16 activations (16x8) keep it (about 44 dB)."""

    def __init__(self, scale: float = 100.0) -> None:
        super().__init__()
        self.hidden = torch.nn.Linear(64, 32)
        self.head = torch.nn.Linear(16, 10)
        self.aux = torch.nn.Linear(16, 4)
        with torch.no_grad():
            self.hidden.weight[16:] *= scale
            self.hidden.bias[16:] *= scale

    def forward(self, x):
        h = self.hidden(x)
        return self.head(h[:, :16]), self.aux(h[:, 16:])


def wide_range_features():
    torch.manual_seed(0)
    return WideRangeFeatures().eval(), (torch.zeros(1, 64),)


def digits_vectors():
    """The digits data set shipped inside scikit-learn, as float32 64-vectors in [0, 1]."""
    from sklearn.datasets import load_digits

    return (load_digits().data / 16.0).astype("float32")


def glitched_digits():
    """The first 512 digits, two of them with a glitch (40 in pixel 0, which blank_corner_mlp
    does not read): calibration data whose input range a few values set."""
    calibration = digits_vectors()[:512].copy()
    calibration[3, 0] = calibration[100, 0] = 40.0
    return calibration


def blank_corner_mlp():
    """A digits MLP that reads nothing from pixel 0 (blank in every real digit: a trained model's
    weights for it decay to zero), so a glitch there in calibration data widens only the input's
    int8 range: what percentile calibration clips."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10)).eval()
    with torch.no_grad():
        model[0].weight[:, 0] = 0
    return model, (torch.zeros(1, 64),)


class _DepthwiseSeparable(torch.nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.dw = torch.nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(channels)
        self.pw = torch.nn.Conv2d(channels, channels, 1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(channels)

    def forward(self, x):
        x = torch.relu(self.bn1(self.dw(x)))
        return torch.relu(self.bn2(self.pw(x)))


class _KeywordSpotter(torch.nn.Module):
    """DS-CNN keyword spotting (49 MFCC frames x 10): a 10x4 strided stem, four depthwise-separable
    blocks, a 24x5 average pool, 12 classes."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(1, 64, (10, 4), stride=2, padding=(4, 1), bias=False)
        self.bn = torch.nn.BatchNorm2d(64)
        self.blocks = torch.nn.Sequential(*[_DepthwiseSeparable(64) for _ in range(4)])
        self.pool = torch.nn.AvgPool2d((24, 5))
        self.fc = torch.nn.Linear(64, 12)

    def forward(self, x):
        x = self.pool(self.blocks(torch.relu(self.bn(self.stem(x)))))
        return self.fc(torch.flatten(x, 1))


def kws_dscnn():
    """Untrained, its batch-norm statistics measured on inputs (issue 28: the average pool's int8
    grid, which LiteRT and onnxruntime keep equal to its input's)."""
    torch.manual_seed(0)
    model = _KeywordSpotter()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # a cumulative average: the statistics actually measured
    model.train()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _ in range(8):
            model(torch.randn(32, 1, 49, 10, generator=generator))
    return model.eval(), (torch.randn(1, 1, 49, 10, generator=generator),)


class _GeluCalledBlock(torch.nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.up, self.down = torch.nn.Linear(width, 2 * width), torch.nn.Linear(2 * width, width)

    def forward(self, x):
        return x + self.down(torch.nn.functional.gelu(self.up(x)))


class GeluCalledNet(torch.nn.Module):
    """GELU called as a function in ``forward`` (in a block's and in the model's own), as
    transformer and audio code often writes it: no nn.GELU module to find."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Linear(16, 32)
        self.block = _GeluCalledBlock(32)
        self.head = torch.nn.Linear(32, 4)

    def forward(self, x):
        return self.head(self.block(torch.nn.functional.gelu(self.stem(x), approximate="tanh")))


def gelu_called():
    torch.manual_seed(0)
    return GeluCalledNet().eval(), (torch.randn(1, 16),)


class WindowMixer(torch.nn.Module):
    """Swin-style window partition and merge (6-D views and transposes) around a per-window
    layer with a GELU called as a function: what LiteRT runs and TFLM refuses (its TRANSPOSE
    takes at most 5 dimensions; it has no GELU kernel)."""

    def __init__(self, size: int = 8, window: int = 4, channels: int = 8, classes: int = 4) -> None:
        super().__init__()
        self.size, self.window, self.channels = size, window, channels
        self.embed = torch.nn.Conv2d(3, channels, 1)
        self.mix = torch.nn.Linear(channels, channels)
        self.head = torch.nn.Linear(size * size * channels, classes)

    def forward(self, x):
        b, s, w, c = x.shape[0], self.size, self.window, self.channels
        x = self.embed(x).permute(0, 2, 3, 1)  # B, H, W, C
        windows = x.reshape(b, s // w, w, s // w, w, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, w * w, c)
        windows = windows + torch.nn.functional.gelu(self.mix(windows))
        x = windows.reshape(b, s // w, s // w, w, w, c).permute(0, 1, 3, 2, 4, 5).reshape(b, s * s * c)
        return self.head(x)


def window_mixer():
    torch.manual_seed(0)
    return WindowMixer().eval(), (torch.randn(1, 3, 8, 8),)


class _Attention(torch.nn.Module):
    """Self-attention as ViTs write it: q, k, v and proj Linear modules, the attention itself in
    this module's own forward."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.query, self.key, self.value = (torch.nn.Linear(dim, dim) for _ in range(3))
        self.proj = torch.nn.Linear(dim, dim)

    def forward(self, x):
        q, k, v = self.query(x), self.key(x), self.value(x)
        weights = torch.softmax(q @ k.transpose(1, 2) * q.shape[-1] ** -0.5, dim=-1)
        return self.proj(weights @ v)


class _PreNormBlock(torch.nn.Module):
    """A pre-norm transformer block (ReLU MLP of 4x the width, as ViTs have)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm1, self.attn = torch.nn.LayerNorm(dim), _Attention(dim)
        self.norm2 = torch.nn.LayerNorm(dim)
        self.fc1, self.fc2 = torch.nn.Linear(dim, hidden), torch.nn.Linear(hidden, dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(torch.relu(self.fc1(self.norm2(x))))


class OffsetAttention(torch.nn.Module):
    """A small ViT whose second block's attention values carry large per-channel offsets (the
    systematic outlier channels trained transformers grow): ``offset`` x a sign per channel added
    to the value projection's bias, and taken back out of the output projection's bias. The
    float function is unchanged and no converter can fold it away (the attention's matmul reads
    the values), but the values and the attention's output now span about 2 x ``offset`` while
    they vary by about 1 per token, which per-tensor int8 cannot carry (edgex's simulation: a few
    dB at full int8). Keeping the value projection, the attention's own ops and the output
    projection wider restores it, float or int16 alike, at about a tenth of the MACs
    (docs/mixed_precision.md)."""

    def __init__(self, image: int = 16, patch: int = 4, dim: int = 32, blocks: int = 2, classes: int = 5, offset: float = 40.0) -> None:
        super().__init__()
        self.patch = torch.nn.Conv2d(3, dim, patch, stride=patch)
        self.blocks = torch.nn.Sequential(*(_PreNormBlock(dim, dim * 4) for _ in range(blocks)))
        self.norm = torch.nn.LayerNorm(dim)
        self.head = torch.nn.Linear(dim, classes)
        with torch.no_grad():
            attn = self.blocks[-1].attn
            shift = offset * torch.where(torch.arange(dim) % 2 == 0, 1.0, -1.0)
            attn.value.bias += shift
            attn.proj.bias -= attn.proj.weight @ shift

    def forward(self, images):
        tokens = self.patch(images).flatten(2).transpose(1, 2)
        return self.head(self.norm(self.blocks(tokens)).mean(dim=1))


def offset_attention(offset: float = 40.0):
    torch.manual_seed(0)
    return OffsetAttention(offset=offset).eval(), (torch.randn(1, 3, 16, 16),)
