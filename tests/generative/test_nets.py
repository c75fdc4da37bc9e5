"""The VAE / autoencoder encoder and decoder: shapes, the backbone contract, unsupported sizes,
and the batch-norm-free variant."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from rlgen.errors import InputError
from rlgen.generative.nets import ConvDecoder, SmallConvEncoder, build_encoder, upsampling_plan
from rlgen.vision.backbones.base import BackboneInputError, feature_shape


@pytest.mark.parametrize(("side", "features"), [(28, 128 * 3 * 3), (32, 128 * 4 * 4),
                                                (64, 128 * 8 * 8)])
def test_small_conv_encoder_contract(side, features):
    encoder = build_encoder("conv", in_channels=3)
    assert isinstance(encoder, SmallConvEncoder)
    x = torch.rand(2, 3, side, side)
    stages = encoder.forward_stages(x)
    assert [s.shape[1] for s in stages] == [fi.channels for fi in encoder.feature_info]
    assert [side // s.shape[-1] for s in stages][:2] == [2, 4]
    assert math.prod(feature_shape(encoder, (3, side, side))) == features
    with pytest.raises(BackboneInputError, match="3 input channels"):
        encoder(torch.rand(1, 1, side, side))


@pytest.mark.parametrize("side", [28, 32, 64])
def test_conv_decoder_shapes(side):
    decoder = ConvDecoder(7, (3, side, side), width=4)
    assert decoder(torch.randn(2, 7)).shape == (2, 3, side, side)


def test_conv_decoder_rejects_unsupported_sizes():
    with pytest.raises(InputError, match="28, 32 or 64"):
        ConvDecoder(7, (1, 30, 30))
    with pytest.raises(ValueError, match="square"):
        ConvDecoder(7, (1, 28, 32))


@pytest.mark.parametrize(("side", "plan"), [(28, (7, 2)), (32, (4, 3)), (56, (7, 3)),
                                            (64, (4, 4)), (96, (6, 4)), (128, (4, 5))])
def test_upsampling_plan(side, plan):
    assert upsampling_plan(side) == plan
    s, k = plan
    assert s * 2**k == side and 4 <= s <= 7


@pytest.mark.parametrize("side", [4, 7, 30, 100])
def test_upsampling_plan_refuses_other_sizes(side):
    with pytest.raises(InputError, match="s \\* 2\\*\\*k"):
        upsampling_plan(side)


def test_without_batch_norm_each_example_is_computed_alone():
    torch.manual_seed(0)
    encoder = build_encoder("conv", 1, width=4, batch_norm=False)
    decoder = ConvDecoder(5, (1, 28, 28), width=4, batch_norm=False)
    for net in (encoder, decoder):
        assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    x, z = torch.rand(6, 1, 28, 28), torch.randn(6, 5)
    # in training mode a batch norm would mix the rows; here halves give the same outputs
    torch.testing.assert_close(encoder(x), torch.cat([encoder(x[:3]), encoder(x[3:])]))
    torch.testing.assert_close(decoder(z), torch.cat([decoder(z[:3]), decoder(z[3:])]))
    assert any(isinstance(m, nn.BatchNorm2d) for m in build_encoder("conv", 1).modules())
