"""The DCGAN discriminator's convolutional trunk (Radford et al. 2015) as a shared backbone.

It lives with the other backbones (not in ``rlgen.generative``) so any consumer can reuse it
and backbones keep depending on nothing but torch; ``rlgen.generative.dcgan`` builds its
discriminator from it.
"""

from __future__ import annotations

from torch import nn

from rlgen.vision.backbones import register_backbone
from rlgen.vision.backbones.base import Backbone, FeatureInfo

DEFAULT_DISCRIMINATOR = "dcgan_discriminator"


def dcgan_init(module: nn.Module) -> None:
    """Radford et al.'s initialization: conv / linear weights N(0, 0.02), batch-norm scales
    N(1, 0.02), biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class DCGANDiscriminatorTrunk(Backbone):
    """The DCGAN discriminator's convolutions: ``num_stages`` 4x4 stride-2 convolutions,
    ``width * 2**i`` channels, batch norm (except on the input layer; ``batch_norm=False``:
    none, with biased convolutions instead) and LeakyReLU 0.2.

    Stages ``stage1..stageN`` have reduction 2, 4, 8, ...; 64x64 with 4 stages -> 512x4x4.
    """

    def __init__(self, in_channels: int = 3, width: int = 64, num_stages: int = 4,
                 batch_norm: bool = True):
        super().__init__()
        if num_stages < 1 or width < 1:
            raise ValueError(f"num_stages and width must be >= 1, got {num_stages}, {width}")
        self.name = DEFAULT_DISCRIMINATOR
        self.in_channels = in_channels
        self.stages = nn.ModuleList()
        self.feature_info = []
        c = in_channels
        for i in range(num_stages):
            out = width * 2**i
            normed = batch_norm and i > 0  # Radford et al.: none on the input layer
            layers: list[nn.Module] = [nn.Conv2d(c, out, 4, 2, 1, bias=not batch_norm)]
            if normed:
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            self.stages.append(nn.Sequential(*layers))
            self.feature_info.append(FeatureInfo(f"stage{i + 1}", out, 2 ** (i + 1)))
            c = out
        # A 4x4 / stride 2 / pad 1 conv maps a side h to h // 2: each stage needs h >= 2.
        self.min_input_size = (2**num_stages, 2**num_stages)
        dcgan_init(self)


@register_backbone(DEFAULT_DISCRIMINATOR)
def dcgan_discriminator(
    in_channels: int = 3, width: int = 64, num_stages: int = 4, batch_norm: bool = True
) -> DCGANDiscriminatorTrunk:
    """DCGAN discriminator trunk (Radford et al. 2015): 4x4/2 convs, BN, LeakyReLU 0.2."""
    return DCGANDiscriminatorTrunk(in_channels, width, num_stages, batch_norm)
