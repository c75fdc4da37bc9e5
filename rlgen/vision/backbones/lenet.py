"""LeNet-5 (LeCun, Bottou, Bengio, Haffner, "Gradient-Based Learning Applied to Document
Recognition", Proc. IEEE 1998), as the paper describes it, plus a modern variant.

Classic ``lenet5`` (32x32 input, e.g. a 28x28 MNIST digit padded by 2 on each side):

=====  ========================================================  =================
layer  what                                                      trainable params
=====  ========================================================  =================
C1     6 maps, 5x5 convolution                                   6*(25+1) = 156
S2     2x2 sum * trainable coefficient + trainable bias, per map  6*2 = 12
C3     16 maps, 5x5, partial connections of the paper's Table I   60*25+16 = 1,516
S4     as S2, 16 maps                                            16*2 = 32
C5     120 maps, 5x5 over all 16 S4 maps (1x1 output at 32x32)   120*(400+1) = 48,120
F6     84 units, fully connected                                 84*(120+1) = 10,164
out    10 Euclidean RBF units with fixed 84-dim +1/-1 codes       0
=====  ========================================================  =================

60,000 trainable parameters in all. Every layer up to F6 is followed by the paper's squashing
function ``f(a) = 1.7159 * tanh(2a/3)`` (Appendix A), chosen so that ``f(+-1) = +-1``. Weights
start uniform in ``+-2.4 / fan_in`` (Appendix C); biases start at zero. The paper scaled pixels
so that the background is -0.1 and the foreground 1.175 (mean about 0, variance about 1).

The output units compute ``y_i = sum_j (x_j - w_ij)^2``: a distance, lower = more likely. The
paper drew the codes ``w_i`` as stylized 7x12 bitmaps of the characters; those drawings are not
reproduced here. Instead each class gets a deterministic pseudo-random +1/-1 code (seeded
generator, stored as a persistent buffer so checkpoints carry it). ``forward`` returns the
negative distances, usable as logits with ``argmax`` and ``F.cross_entropy``;
``rbf_distances`` returns the distances themselves.

The paper's discriminative MAP criterion (Section II-C, Eq. 9) is
``E = y_D + log(exp(-j) + sum_i exp(-y_i))``, where ``D`` is the true class and ``j > 0`` a
constant: cross-entropy on the logits ``-y`` plus a constant "rubbish class" of logit ``-j``
(``lenet5_map_loss``). As ``j -> inf`` it becomes ``F.cross_entropy(-y, target)``.

``lenet5_modern``: the same geometry with max pooling, ReLU, a fully connected C3 and a linear
output layer (61,706 parameters for 1 input channel and 10 classes).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rlgen.vision.backbones import register_backbone, register_model
from rlgen.vision.backbones.base import Backbone, FeatureInfo
from rlgen.vision.layers import BackboneClassifier

#: Table I of the paper: the S2 maps (0-5) each C3 map (0-15) reads. Maps 0-5 take three
#: contiguous maps, 6-11 four contiguous, 12-14 four non-contiguous, 15 all six; breaking the
#: symmetry this way makes the C3 maps extract different features (and saves connections).
C3_TABLE: tuple[tuple[int, ...], ...] = (
    (0, 1, 2), (1, 2, 3), (2, 3, 4), (3, 4, 5), (0, 4, 5), (0, 1, 5),
    (0, 1, 2, 3), (1, 2, 3, 4), (2, 3, 4, 5), (0, 3, 4, 5), (0, 1, 4, 5), (0, 1, 2, 5),
    (0, 1, 3, 4), (1, 2, 4, 5), (0, 2, 3, 5),
    (0, 1, 2, 3, 4, 5),
)  # fmt: skip

RBF_CODE_DIM = 84
RBF_CODE_SEED = 1998


def squash(x: torch.Tensor) -> torch.Tensor:
    """The paper's sigmoid ``1.7159 * tanh(2x/3)`` (LeCun 1998, Appendix A)."""
    return 1.7159 * torch.tanh(x * (2.0 / 3.0))


class Squash(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return squash(x)


def _paper_init_(tensor: torch.Tensor, fan_in: int) -> torch.Tensor:
    # "uniformly distributed between -2.4/F_i and 2.4/F_i", F_i the fan-in of the unit.
    bound = 2.4 / fan_in
    return nn.init.uniform_(tensor, -bound, bound)


class TrainableSubsampling(nn.Module):
    """S2/S4: each unit sums a 2x2 block of one map, multiplies it by the map's trainable
    coefficient and adds the map's trainable bias (2 parameters per map)."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        _paper_init_(self.weight, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        summed = F.avg_pool2d(x, 2) * 4.0
        return summed * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


class PartialConv2d(nn.Module):
    """A convolution where output map ``o`` reads only the input maps ``table[o]``.

    Only the connections that exist are parameters (``weight``: one kernel per connection), so
    parameter counts match the paper; the forward scatters them into a dense, mostly zero
    kernel and runs a single ``conv2d``.
    """

    def __init__(self, in_channels: int, table: tuple[tuple[int, ...], ...], kernel_size: int):
        super().__init__()
        pairs = [(o, i) for o, inputs in enumerate(table) for i in inputs]
        if any(not 0 <= i < in_channels for _, i in pairs):
            raise ValueError(f"connection table refers to input maps outside 0..{in_channels - 1}")
        self.in_channels = in_channels
        self.out_channels = len(table)
        self.kernel_size = kernel_size
        self.register_buffer("out_index", torch.tensor([o for o, _ in pairs]), persistent=False)
        self.register_buffer("in_index", torch.tensor([i for _, i in pairs]), persistent=False)
        self.weight = nn.Parameter(torch.empty(len(pairs), kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(self.out_channels))
        # The paper's init depends on each unit's fan-in, which differs between C3 maps.
        start = 0
        for inputs in table:
            n = len(inputs)
            _paper_init_(self.weight.data[start : start + n], n * kernel_size**2)
            start += n

    def dense_weight(self) -> torch.Tensor:
        k = self.kernel_size
        dense = self.weight.new_zeros(self.out_channels, self.in_channels, k, k)
        return dense.index_put((self.out_index, self.in_index), self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.dense_weight(), self.bias)


class EuclideanRBF(nn.Module):
    """Output units ``y_i = ||x - w_i||^2`` with fixed codes ``w_i`` (a buffer, not trained)."""

    def __init__(self, in_features: int, num_classes: int, seed: int = RBF_CODE_SEED):
        super().__init__()
        self.register_buffer("codes", rbf_codes(num_classes, in_features, seed))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.unsqueeze(1) - self.codes).pow(2).sum(-1)


def rbf_codes(num_classes: int, dim: int = RBF_CODE_DIM, seed: int = RBF_CODE_SEED) -> torch.Tensor:
    """Deterministic +1/-1 codes, one row per class (a stand-in for the paper's bitmaps)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, (num_classes, dim), generator=gen).float() * 2 - 1


class LeNet5(Backbone):
    """LeNet-5's convolutional part, stages C1, S2, C3, S4, C5 (output 120 maps, 1x1 at 32x32).

    ``variant="classic"``: the 1998 paper (trainable subsampling, squashing, Table I for C3).
    ``variant="modern"``: 2x2 max pooling, ReLU, C3 connected to all six S2 maps.
    Valid convolutions: 32 -> 28 -> 14 -> 10 -> 5 -> 1, so inputs must be at least 32x32.
    """

    def __init__(self, in_channels: int = 1, variant: str = "classic"):
        super().__init__()
        if variant not in ("classic", "modern"):
            raise ValueError(f"LeNet5 variant must be 'classic' or 'modern', got {variant!r}")
        self.name = "lenet5" if variant == "classic" else "lenet5_modern"
        self.variant = variant
        self.in_channels = in_channels
        self.min_input_size = (32, 32)
        self.feature_info = [
            FeatureInfo("c1", 6, 1),
            FeatureInfo("s2", 6, 2),
            FeatureInfo("c3", 16, 2),
            FeatureInfo("s4", 16, 4),
            FeatureInfo("c5", 120, 4),
        ]
        classic = variant == "classic"
        self.c1 = nn.Conv2d(in_channels, 6, 5)
        self.s2 = TrainableSubsampling(6) if classic else nn.MaxPool2d(2)
        self.c3 = PartialConv2d(6, C3_TABLE, 5) if classic else nn.Conv2d(6, 16, 5)
        self.s4 = TrainableSubsampling(16) if classic else nn.MaxPool2d(2)
        self.c5 = nn.Conv2d(16, 120, 5)
        self.act = Squash() if classic else nn.ReLU()
        if classic:
            for conv in (self.c1, self.c5):
                _paper_init_(conv.weight.data, conv.weight[0].numel())
                nn.init.zeros_(conv.bias)

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        self.check_input(x)
        # Classic: squashing after every layer (the paper's S2 output "is passed through a
        # sigmoidal function" too); modern: ReLU after the convolutions only.
        pool_act = self.act if self.variant == "classic" else nn.Identity()
        c1 = self.act(self.c1(x))
        s2 = pool_act(self.s2(c1))
        c3 = self.act(self.c3(s2))
        s4 = pool_act(self.s4(c3))
        c5 = self.act(self.c5(s4))
        return [c1, s2, c3, s4, c5]


class LeNet5Classifier(BackboneClassifier):
    """LeNet-5 with F6 and the Euclidean RBF output; ``forward`` gives ``-distance`` logits."""

    def _make_fc(self, num_features: int, num_classes: int) -> nn.Module:
        return EuclideanRBF(num_features, num_classes) if num_classes > 0 else nn.Identity()

    def rbf_distances(self, x: torch.Tensor) -> torch.Tensor:
        """The paper's outputs ``y_i`` (N, num_classes): squared distance to each class code."""
        if self.num_classes == 0:
            raise ValueError("rbf_distances needs an output layer; this model has num_classes=0")
        return self.fc(self.forward_head(self.forward_features(x), pre_logits=True))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.hidden(self.pool(x))
        if pre_logits or self.num_classes == 0:
            return x
        return -self.fc(x)


def lenet5_map_loss(distances: torch.Tensor, target: torch.Tensor, j: float) -> torch.Tensor:
    """The paper's MAP loss (Eq. 9), mean over the batch, from RBF ``distances`` (N, K).

    ``E = y_target + log(exp(-j) + sum_i exp(-y_i))``, computed stably with ``logsumexp``.
    """
    if j <= 0 or not math.isfinite(j):
        raise ValueError(f"j must be a positive finite constant, got {j}")
    rubbish = distances.new_full((distances.shape[0], 1), -j)
    log_z = torch.logsumexp(torch.cat([-distances, rubbish], dim=1), dim=1)
    return (distances.gather(1, target.view(-1, 1)).squeeze(1) + log_z).mean()


@register_backbone("lenet5")
def lenet5_backbone(in_channels: int = 1, **kwargs) -> LeNet5:
    """LeNet-5 (LeCun et al. 1998) C1..C5: trainable subsampling, Table I, 32x32 input."""
    return LeNet5(in_channels, variant="classic", **kwargs)


@register_backbone("lenet5_modern")
def lenet5_modern_backbone(in_channels: int = 1, **kwargs) -> LeNet5:
    """LeNet-5 geometry with max pooling, ReLU and a fully connected C3, 32x32 input."""
    return LeNet5(in_channels, variant="modern", **kwargs)


@register_model("lenet5")
def lenet5(num_classes: int = 10, in_channels: int = 1, **kwargs) -> LeNet5Classifier:
    """LeNet-5 (LeCun et al. 1998): 60,000 parameters, F6 + fixed-code Euclidean RBF output."""
    hidden = nn.Sequential(nn.Linear(120, 84), Squash())
    _paper_init_(hidden[0].weight.data, 120)
    nn.init.zeros_(hidden[0].bias)
    # At 32x32, C5 is 1x1 and the global pool is the identity; larger inputs get averaged.
    return LeNet5Classifier(
        lenet5_backbone(in_channels, **kwargs), num_classes,
        num_features=RBF_CODE_DIM, hidden=hidden, global_pool=True,
    )  # fmt: skip


@register_model("lenet5_modern")
def lenet5_modern(num_classes: int = 10, in_channels: int = 1, **kwargs) -> BackboneClassifier:
    """LeNet-5 with max pooling, ReLU, full C3 and a linear output (61,706 params at 1->10)."""
    hidden = nn.Sequential(nn.Linear(120, 84), nn.ReLU())
    return BackboneClassifier(
        lenet5_modern_backbone(in_channels, **kwargs), num_classes,
        num_features=84, hidden=hidden, global_pool=True,
    )  # fmt: skip
